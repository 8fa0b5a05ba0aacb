//! The cluster view of a `keel serve` that runs no pipeline's API: a worker, and a standby
//! scheduler until it takes over. It answers `/health`, `/ready`, `/api/cluster` and the
//! dashboard's cluster page (`/ui/cluster`), read from the state's work queue, so any serve of
//! the cluster shows the whole of it: its workers, their leases and load, and the queue.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use serde_json::json;

use crate::api::{ApiError, ApiServer};
use crate::dashboard::{Chrome, cluster};
use crate::serve_log::Logger;

/// What this serve is, as its cluster view says: `worker` or `standby scheduler`.
#[derive(Clone)]
struct Shown {
    queue: keel_store::WorkQueue,
    role: &'static str,
}

/// How long `/ready` waits for the database.
const READY_LIMIT: Duration = Duration::from_secs(2);

/// Serves the cluster view of `queue` on `addr` until the returned server is stopped or
/// dropped, and logs where.
pub fn start(
    addr: &str,
    queue: keel_store::WorkQueue,
    role: &'static str,
    logger: &Logger,
) -> anyhow::Result<ApiServer> {
    crate::api::log_to(logger);
    let (bound, server) = crate::api::serve(addr, router(queue, role))?;
    logger.info(&format!(
        "keel serve: {role}: cluster view on http://{bound} (/api/cluster, /ui/cluster)"
    ));
    Ok(server)
}

fn router(queue: keel_store::WorkQueue, role: &'static str) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/cluster") }))
        .route("/ui", get(|| async { Redirect::to("/ui/cluster") }))
        .route("/ui/cluster", get(page))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/api/cluster", get(api))
        .merge(crate::dashboard::assets())
        .fallback(not_found)
        .with_state(Arc::new(Shown { queue, role }))
}

async fn health(State(shown): State<Arc<Shown>>) -> Response {
    axum::Json(json!({ "status": "ok", "role": shown.role })).into_response()
}

/// Ready when the database answers: a worker that cannot reach it claims nothing.
async fn ready(State(shown): State<Arc<Shown>>) -> Response {
    let reached = tokio::time::timeout(READY_LIMIT, shown.queue.cluster()).await;
    let (status, ok, detail) = match reached {
        Ok(Ok(_)) => (
            StatusCode::OK,
            true,
            "the state's database answers".to_string(),
        ),
        Ok(Err(error)) => (StatusCode::SERVICE_UNAVAILABLE, false, error.to_string()),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            false,
            format!(
                "the state's database did not answer within {} s",
                READY_LIMIT.as_secs()
            ),
        ),
    };
    let body = json!({
        "ready": ok,
        "role": shown.role,
        "checks": [{ "name": "store", "ok": ok, "detail": detail }],
    });
    (status, axum::Json(body)).into_response()
}

async fn api(State(shown): State<Arc<Shown>>) -> Result<axum::Json<serde_json::Value>, ApiError> {
    let view = shown
        .queue
        .cluster()
        .await
        .map_err(|error| ApiError::internal(error.into()))?;
    Ok(axum::Json(crate::api::reads::cluster_json(
        &view,
        super::wall_millis(),
    )))
}

async fn page(State(shown): State<Arc<Shown>>) -> Response {
    let chrome = Chrome::bare(format!("seen from a {}", shown.role));
    let time = |at: keel_model::Millis| {
        chrono::DateTime::from_timestamp_millis(at)
            .map(|time| time.format("%Y-%m-%d %H:%M:%S UTC").to_string())
            .unwrap_or_default()
    };
    match cluster::render(chrome, &shown.queue, time).await {
        Ok(page) => page,
        Err(error) => error.into_response(),
    }
}

async fn not_found(State(shown): State<Arc<Shown>>, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no endpoint at {:?} on a {}",
            crate::display::printable(uri.path()),
            shown.role
        ),
        "a worker or a standby scheduler serves /health, /ready, /api/cluster and /ui/cluster; the active scheduler serves the whole API",
    )
}
