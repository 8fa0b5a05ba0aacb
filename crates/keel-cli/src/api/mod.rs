//! The HTTP API of `keel serve`: JSON over HTTP/1.1, beside the engine in the same process.
//!
//! It runs on a thread and a runtime of its own and reads the state through its own store
//! connections, never through the engine, so no client can hold up the scheduler's loop. Actions
//! (trigger, retry, cancel, accept) go through the same functions as the CLI's commands and land
//! in the store, where the serving engine takes them up on its next poll. Every error is a JSON
//! body `{"error": "...", "hint": "..."}`; bad input never gets a 500.

mod actions;
mod auth;
mod openapi;
pub(crate) mod reads;
mod streams;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use keel_model::{Millis, PipelineSpec, RunId};
use keel_store::{AnyStore, RunRecord, Store};
use serde_json::{Value, json};

use crate::Exit;
use crate::state::StatePaths;

pub use auth::{TokenSource, load_or_create as load_or_create_token};
pub(crate) use reads::degraded_because;

/// Where the API's own lines go: serve's logger, set when the API starts.
static LOGGER: std::sync::OnceLock<crate::serve_log::Logger> = std::sync::OnceLock::new();

/// A warning in serve's log (text or JSON, as serve was asked).
fn log(line: &str) {
    match LOGGER.get() {
        Some(logger) => logger.warn(line),
        None => crate::serve_log::Logger::new(crate::serve_log::LogFormat::Text).warn(line),
    }
}

/// The largest request body accepted; anything bigger gets a 413.
const MAX_BODY: usize = 64 * 1024;

/// One pipeline the API serves.
pub struct ServedPipeline {
    /// The version in use: a reload of the pipeline file swaps it.
    pub spec: Arc<RwLock<Arc<PipelineSpec>>>,
    pub paths: StatePaths,
    /// Reads: a connection of the API's own.
    pub reader: AnyStore,
    /// Actions: another connection of the API's own.
    pub writer: AnyStore,
    /// Stamped by the engine's loop on every turn ([`keel_engine::Engine::set_heartbeat`]).
    pub heartbeat: Arc<AtomicI64>,
    /// Whether the pipeline file in use is valid, and why not.
    pub health: Arc<RwLock<PipelineHealth>>,
    /// Actions on this pipeline are taken one at a time, as two CLI commands would be by the
    /// store's transactions: two triggers of one partition must not both create a run.
    pub actions: tokio::sync::Mutex<()>,
}

/// Whether the pipeline a serving Keel runs is valid. A reload that fails to validate keeps the
/// running version and sets `valid: false` with the reason, which `/ready` reports.
#[derive(Debug, Clone, Default)]
pub struct PipelineHealth {
    pub valid: bool,
    pub reason: Option<String>,
}

impl PipelineHealth {
    pub fn valid() -> PipelineHealth {
        PipelineHealth {
            valid: true,
            reason: None,
        }
    }
}

/// Everything the handlers share.
pub struct ApiContext {
    pub pipelines: Vec<ServedPipeline>,
    /// The bearer token mutating requests need.
    pub token: String,
    /// How old the engine's heartbeat may be before `/ready` says the scheduler is stuck.
    pub heartbeat_max_age: Duration,
    /// Renders `/metrics` in the OpenMetrics text format.
    pub metrics: Arc<dyn Fn() -> String + Send + Sync>,
    /// Serve's logger, for the API's own lines (a request Keel failed, the API stopping).
    pub logger: crate::serve_log::Logger,
    /// Set once serve was asked to stop (it drains): `/ready` turns 503, so a load balancer or
    /// an orchestrator stops sending work before the API goes away.
    pub stopping: Arc<std::sync::atomic::AtomicBool>,
    /// The state's work queue, when it is in PostgreSQL: `/api/cluster` reads the workers and
    /// their leases from it.
    pub cluster: Option<keel_store::WorkQueue>,
}

type Context = Arc<ApiContext>;

impl ApiContext {
    /// The served pipeline named `name`, or a 404 that names those there are.
    pub(crate) fn pipeline(&self, name: &str) -> Result<&ServedPipeline, ApiError> {
        if let Some(found) = self
            .pipelines
            .iter()
            .find(|served| served.spec().name == name)
        {
            return Ok(found);
        }
        let names: Vec<String> = self
            .pipelines
            .iter()
            .map(|served| served.spec().name.clone())
            .collect();
        let suggestion = keel_model::closest(name, names.iter().map(String::as_str))
            .map(|close| format!("did you mean {close:?}? "))
            .unwrap_or_default();
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no pipeline {name:?} is served here"),
            format!(
                "{suggestion}served pipelines: {}; GET /api/pipelines lists them",
                names.join(", ")
            ),
        ))
    }
}

impl ServedPipeline {
    /// The pipeline version in use now.
    pub fn spec(&self) -> Arc<PipelineSpec> {
        self.spec
            .read()
            .map(|spec| spec.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// The run `id` of this pipeline, or a 404.
    pub(crate) async fn run(&self, id: i64) -> Result<RunRecord, ApiError> {
        match self.reader.run(RunId(id)).await {
            Ok(record) if record.pipeline == self.spec().name => Ok(record),
            Ok(_) | Err(keel_store::StoreError::NoSuchRun(_)) => Err(self.no_run(id)),
            Err(error) => Err(ApiError::internal(error.into())),
        }
    }

    pub(crate) fn no_run(&self, id: i64) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no run {id} of pipeline {:?}", self.spec().name),
            format!(
                "GET /api/pipelines/{}/runs lists its runs",
                self.spec().name
            ),
        )
    }

    /// `task` if the pipeline has it, else a 404 with the closest name.
    pub(crate) fn check_task(&self, task: &str) -> Result<(), ApiError> {
        let spec = self.spec();
        if spec.task(task).is_some() {
            return Ok(());
        }
        let names: Vec<&str> = spec.tasks.iter().map(|task| task.name.as_str()).collect();
        let suggestion = keel_model::closest(task, names.iter().copied())
            .map(|close| format!("did you mean {close:?}? "))
            .unwrap_or_default();
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("unknown task {task:?} in pipeline {:?}", spec.name),
            format!("{suggestion}its tasks: {}", names.join(", ")),
        ))
    }
}

/// An error answered as `{"error": ..., "hint": ...}` with its status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: String,
    hint: String,
}

impl ApiError {
    pub(crate) fn new(
        status: StatusCode,
        error: impl Into<String>,
        hint: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            error: error.into(),
            hint: hint.into(),
        }
    }

    pub(crate) fn bad_request(error: impl Into<String>, hint: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, error, hint)
    }

    /// A failure of Keel itself (the store cannot be read, say): a 500, logged.
    pub(crate) fn internal(error: anyhow::Error) -> ApiError {
        let message = format!("{error:#}");
        log(&format!("keel serve: API request failed: {message}"));
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            message,
            "this is a problem of the serving Keel, not of the request; see its log",
        )
    }

    /// An error of the code the CLI shares: what the CLI refuses as a usage error (exit 2) is
    /// the client's to fix and gets `status`; a run still running gets a 409; anything else
    /// is Keel's own failure.
    fn from_command(error: anyhow::Error, status: StatusCode) -> ApiError {
        if let Some(exit) = error.downcast_ref::<Exit>()
            && exit.code == 2
        {
            return ApiError::with_hint(status, &exit.message);
        }
        if let Some(invalid) = error.downcast_ref::<crate::Invalid>() {
            return ApiError::new(
                StatusCode::CONFLICT,
                format!("{}: {}", invalid.summary, invalid.errors.join("; ")),
                "fix the pipeline's files; keel validate lists every problem",
            );
        }
        if let Some(active @ keel_engine::EngineError::RunActive { .. }) =
            error.downcast_ref::<keel_engine::EngineError>()
        {
            return ApiError::with_hint(StatusCode::CONFLICT, &active.to_string());
        }
        ApiError::internal(error)
    }

    /// `what is wrong; what to do`, split as the CLI shows it.
    fn with_hint(status: StatusCode, message: &str) -> ApiError {
        let (what, hint) = crate::report::split_hint(message);
        ApiError::new(
            status,
            what,
            hint.unwrap_or("see /api/openapi.json for what this endpoint accepts"),
        )
    }

    /// The status, the message and the hint, for a page that shows the error.
    pub(crate) fn parts(&self) -> (StatusCode, &str, &str) {
        (self.status, &self.error, &self.hint)
    }

    fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token",
            "send `Authorization: Bearer TOKEN` with the token from KEEL_API_TOKEN or the api-token file beside the state, as keel serve's log says",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = axum::Json(json!({ "error": self.error, "hint": self.hint }));
        let mut response = (self.status, body).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> ApiError {
        ApiError::new(
            client_status(rejection.status()),
            format!("bad path: {}", rejection.body_text()),
            "run ids and attempt numbers are positive integers; see /api/openapi.json",
        )
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> ApiError {
        ApiError::new(
            client_status(rejection.status()),
            format!("bad query: {}", rejection.body_text()),
            "see the parameters of this endpoint in /api/openapi.json",
        )
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> ApiError {
        let status = client_status(rejection.status());
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::new(
                status,
                format!("the request body is larger than {MAX_BODY} bytes"),
                "send a smaller JSON object",
            );
        }
        ApiError::new(
            status,
            format!("cannot read the request body: {}", rejection.body_text()),
            "send the body again",
        )
    }
}

/// A rejection's status, held to the 4xx range: what the client sent is what was wrong.
fn client_status(status: StatusCode) -> StatusCode {
    if status.is_client_error() {
        status
    } else {
        StatusCode::BAD_REQUEST
    }
}

/// Refuses a mutating request without the right bearer token.
fn authorize(context: &ApiContext, headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    if auth::authorized(headers, &context.token) {
        Ok(())
    } else {
        Err(ApiError::unauthorized())
    }
}

/// A JSON body, or `T::default()` when there is none (an empty body is an empty object).
fn parse_body<T: serde::de::DeserializeOwned + Default>(
    body: Result<axum::body::Bytes, BytesRejection>,
) -> Result<T, ApiError> {
    let body = body?;
    // No body at all is the empty request. Anything else must be a JSON object: whitespace alone
    // is not JSON (a JSON text holds a value), so it is refused like any other bad JSON.
    if body.is_empty() {
        return Ok(T::default());
    }
    let hint = "send a JSON object with the fields this endpoint lists in /api/openapi.json";
    let value: Value = serde_json::from_slice(&body)
        .map_err(|error| ApiError::bad_request(format!("bad JSON body: {error}"), hint))?;
    // A struct would also take an array of its fields in order: only an object is a body here.
    if !value.is_object() {
        let kind = match value {
            Value::Array(_) => "an array",
            Value::String(_) => "a string",
            Value::Number(_) => "a number",
            Value::Bool(_) => "a boolean",
            _ => "null",
        };
        return Err(ApiError::bad_request(
            format!("bad JSON body: {kind}, not an object"),
            hint,
        ));
    }
    serde_json::from_value(value)
        .map_err(|error| ApiError::bad_request(format!("bad JSON body: {error}"), hint))
}

/// The API's routes over `context`.
pub fn router(context: Arc<ApiContext>) -> Router {
    let pipeline = Router::new()
        .route("/runs", get(reads::runs).post(actions::trigger))
        .route("/runs/{run}", get(reads::run))
        .route("/runs/{run}/retry", post(actions::retry))
        .route("/runs/{run}/cancel", post(actions::cancel))
        .route("/runs/{run}/accept", post(actions::accept))
        .route(
            "/runs/{run}/tasks/{task}/attempts/{attempt}/log",
            get(streams::log),
        )
        .route("/tasks/{task}/history", get(reads::history))
        .route("/health-score", get(reads::health_score))
        .route("/events", get(streams::events));
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/api/openapi.json", get(openapi))
        .route("/api/pipelines", get(reads::pipelines))
        .route("/api/health-score", get(reads::health_scores))
        .route("/api/cluster", get(reads::cluster))
        .nest("/api/pipelines/{pipeline}", pipeline)
        .merge(crate::dashboard::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(context)
}

async fn not_found(uri: Uri) -> Response {
    if uri.path() == "/ui" || uri.path().starts_with("/ui/") {
        return crate::dashboard::PageError(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no page at {:?}", crate::display::printable(uri.path())),
            "the dashboard's pages start at /ui/PIPELINE; / opens the first pipeline's grid",
        ))
        .into_response();
    }
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no endpoint at {:?}", crate::display::printable(uri.path())),
        "GET /api/openapi.json describes every endpoint",
    )
    .into_response()
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "method {method} is not allowed on {:?}",
            crate::display::printable(uri.path())
        ),
        "the Allow header lists the methods it takes; /api/openapi.json describes them",
    )
}

async fn openapi() -> Response {
    axum::Json(openapi::document()).into_response()
}

async fn health() -> axum::Json<Value> {
    axum::Json(json!({ "status": "ok" }))
}

async fn metrics(State(context): State<Context>) -> Response {
    let render = context.metrics.clone();
    // Rendering walks every metric: off the runtime thread, like a store read.
    match tokio::task::spawn_blocking(move || render()).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(error) => ApiError::internal(anyhow::anyhow!("rendering the metrics failed: {error}"))
            .into_response(),
    }
}

/// How long the store check of `/ready` may take.
const STORE_CHECK_LIMIT: Duration = Duration::from_secs(2);

/// One check of `/ready`.
fn check(name: &str, pipeline: &str, ok: bool, detail: String) -> Value {
    json!({ "name": name, "pipeline": pipeline, "ok": ok, "detail": detail })
}

impl ApiContext {
    /// Whether `served`'s scheduler starts work at `now`, as `/ready` judges it: not while
    /// serve stops, nor when its loop's heartbeat is too old; and why.
    pub(crate) fn scheduler_status(&self, served: &ServedPipeline, now: Millis) -> (bool, String) {
        if self.stopping.load(Ordering::Relaxed) {
            return (
                false,
                "keel serve is stopping: it starts nothing new".to_string(),
            );
        }
        scheduler_check(
            now,
            served.heartbeat.load(Ordering::Relaxed),
            self.heartbeat_max_age,
        )
    }
}

impl ServedPipeline {
    /// Whether the pipeline file in use is valid, as `/ready` reports it, and why not.
    pub(crate) fn pipeline_status(&self) -> (bool, String) {
        let health = self
            .health
            .read()
            .map(|health| health.clone())
            .unwrap_or_default();
        let detail = match (&health.valid, &health.reason) {
            (true, _) => "the pipeline file is valid".to_string(),
            (false, Some(reason)) => reason.clone(),
            (false, None) => "the pipeline file is not valid".to_string(),
        };
        (health.valid, detail)
    }
}

/// Whether the engine's loop turned recently enough at `now`: its last stamp (0 before its first
/// turn) against the age allowed.
fn scheduler_check(now: Millis, heartbeat: Millis, max_age: Duration) -> (bool, String) {
    if heartbeat == 0 {
        return (false, "the scheduler loop has not started yet".into());
    }
    let age = (now - heartbeat).max(0);
    let limit = max_age.as_millis() as i64;
    if age <= limit {
        (true, format!("the scheduler loop turned {age} ms ago"))
    } else {
        (
            false,
            format!(
                "the scheduler loop last turned {age} ms ago, more than the {limit} ms allowed"
            ),
        )
    }
}

async fn ready(State(context): State<Context>) -> Response {
    let now = crate::state::now_millis();
    let mut checks = Vec::new();
    for served in &context.pipelines {
        let spec = served.spec();
        let name = spec.name.as_str();
        let reached =
            tokio::time::timeout(STORE_CHECK_LIMIT, served.reader.events_after(i64::MAX, 1)).await;
        checks.push(match reached {
            Ok(Ok(_)) => check("store", name, true, "the state answers".into()),
            Ok(Err(error)) => check(
                "store",
                name,
                false,
                format!("the state cannot be read: {error}"),
            ),
            Err(_) => check(
                "store",
                name,
                false,
                format!(
                    "the state did not answer within {} s",
                    STORE_CHECK_LIMIT.as_secs()
                ),
            ),
        });
        let (ok, detail) = context.scheduler_status(served, now);
        checks.push(check("scheduler", name, ok, detail));
        let (ok, detail) = served.pipeline_status();
        checks.push(check("pipeline", name, ok, detail));
    }
    let ready = checks.iter().all(|check| check["ok"] == true);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if ready { "ready" } else { "not_ready" },
        "checks": checks,
    });
    (status, axum::Json(body)).into_response()
}

/// The API, answering on a thread of its own with its own runtime: however many clients it has
/// and whatever they ask, the engine's loop on the main runtime never waits for it.
pub struct ApiServer {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ApiServer {
    /// Closes the listener and every connection (event streams included), and waits for the
    /// API's thread to end.
    pub fn stop(mut self) {
        self.shut();
    }

    fn shut(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.shut();
    }
}

/// Binds `addr` and serves the API on its own thread until [`ApiServer::stop`]. Returns the
/// bound address (a port of 0 picks a free one).
/// Where the API's own lines (a request Keel failed, the API stopping) go.
pub fn log_to(logger: &crate::serve_log::Logger) {
    let _ = LOGGER.set(logger.clone());
}

pub fn start(
    addr: &str,
    context: Arc<ApiContext>,
) -> anyhow::Result<(std::net::SocketAddr, ApiServer)> {
    log_to(&context.logger);
    serve(addr, router(context))
}

/// Binds `addr` and serves `app` on its own thread until [`ApiServer::stop`]: the API, or the
/// cluster view of a worker or a standby scheduler.
pub fn serve(addr: &str, app: Router) -> anyhow::Result<(std::net::SocketAddr, ApiServer)> {
    let parsed: std::net::SocketAddr = addr.parse().map_err(|_| {
        Exit::usage(format!(
            "--addr {:?} is not an address; write it as IP:PORT, such as 127.0.0.1:8080 (port 0 picks a free port)",
            crate::display::printable(addr)
        ))
    })?;
    let listener = std::net::TcpListener::bind(parsed).map_err(|error| {
        Exit::usage(format!(
            "cannot listen on {parsed}: {error}; pick another port with --addr, or stop what uses it"
        ))
    })?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("keel-api".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    log(&format!("keel serve: the API cannot start: {error}"));
                    return;
                }
            };
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(error) => {
                        log(&format!("keel serve: the API cannot start: {error}"));
                        return;
                    }
                };
                tokio::select! {
                    served = async { axum::serve(listener, app).await } => {
                        if let Err(error) = served {
                            log(&format!("keel serve: the API stopped: {error}"));
                        }
                    }
                    _ = stopped => {}
                }
            });
            // Store reads still running are abandoned with the connections that asked for them.
            runtime.shutdown_timeout(Duration::from_secs(1));
        })?;
    Ok((
        bound,
        ApiServer {
            stop: Some(stop),
            thread: Some(thread),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheduler_is_alive_while_its_heartbeat_is_recent() {
        let max_age = Duration::from_secs(15);
        let start = 1_700_000_000_000;
        assert!(!scheduler_check(start, 0, max_age).0);
        assert!(scheduler_check(start, start, max_age).0);
        assert!(scheduler_check(start + 15_000, start, max_age).0);
        let (ok, detail) = scheduler_check(start + 15_001, start, max_age);
        assert!(!ok);
        assert!(detail.contains("15001 ms"), "{detail}");
        // A heartbeat from a clock a little ahead is fresh, not negative.
        assert!(scheduler_check(start, start + 500, max_age).0);
    }

    #[derive(serde::Deserialize, Default, Debug, PartialEq)]
    struct Probe {
        #[serde(default)]
        tasks: Vec<String>,
    }

    fn parse(bytes: &'static [u8]) -> Result<Probe, ApiError> {
        parse_body(Ok(axum::body::Bytes::from_static(bytes)))
    }

    #[test]
    fn no_body_is_empty_and_any_byte_is_judged_as_json() {
        assert_eq!(parse(b"").unwrap(), Probe::default());
        // Whitespace alone is not a JSON text (schemathesis ST201 on trigger).
        assert!(parse(b"\n").is_err());
        assert!(parse(b" \t\r\n").is_err());
        assert_eq!(parse(b" {} \n").unwrap(), Probe::default());
        // A form feed or vertical tab is ASCII whitespace, but not JSON's.
        assert!(parse(b"\x0c").is_err());
        assert!(parse(b"\x0b").is_err());
        assert_eq!(
            parse(b"{\"tasks\":[\"a\"]}").unwrap().tasks,
            vec!["a".to_string()]
        );
        assert!(parse(b"[]").is_err());
    }
}
