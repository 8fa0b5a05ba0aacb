//! Request tokens: the token server a running Keel (`keel run`, `keel serve`) opens for its
//! tasks, and `keel token`, the client a task calls before each request to a rate-limited or
//! metered resource (docs/pipeline.md, "Request tokens and quotas").
//!
//! The decisions are [`keel_engine::policy::RequestTokens`]' (pure, fed the time); this module
//! only reads the clock, sleeps, talks over the socket and stores quota use. The server runs on a
//! thread and runtime of its own, so nothing a task does through it can block the engine's loop:
//! each connection is its own task, its request is read with a size cap and a timeout, and at
//! most [`MAX_CONNECTIONS`] are served at once (more are refused at once, with a message).
//!
//! The socket is `<state dir>/tokens/<pipeline>.sock`, in a directory only the user can enter
//! (0700), itself 0600. A socket left by a Keel that was killed is found stale (nothing answers)
//! and replaced; one that answers belongs to a live Keel of the same state, which keeps it.

use std::collections::HashMap;
use std::io::Read as _;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use keel_engine::policy::{QuotaAlert, RequestTokens, Take};
use keel_model::{Millis, PipelineSpec, QuotaWindow, ResourceSpec};
use keel_store::AnyStore;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::Exit;

/// The variable that gives a task the socket's path.
pub const SOCKET_VARIABLE: &str = "KEEL_TOKEN_SOCKET";
/// The longest request line the server reads; a request is a few dozen bytes.
const MAX_REQUEST_BYTES: u64 = 4096;
/// How long a client has to send its request once connected.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; a task cannot exhaust Keel's descriptors through the socket.
const MAX_CONNECTIONS: usize = 512;
/// The longest wait a client may ask for.
const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);
/// The exit code of `keel token` when the token cannot be had now (the timeout passed, the
/// quota is used up): 75, which a task that passes it on makes *not ready*.
pub const EXIT_LATER: u8 = 75;

#[derive(Debug, Serialize, Deserialize)]
struct TokenRequest {
    resource: String,
    count: u32,
    timeout_ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct TokenAnswer {
    granted: bool,
    /// `unknown`, `timeout`, `quota`, `busy` or `bad_request` when not granted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refused: Option<String>,
    message: String,
}

/// One pipeline's token server: its resources' token state.
struct Served {
    pipeline: String,
    zone: String,
    /// A pipeline spec not yet taken up: the first one, or a reloaded one. The server reads its
    /// stored quota use before it answers the next request.
    pending: Mutex<Option<PipelineSpec>>,
    /// Held while a pending spec is taken up, so that a request arriving meanwhile waits for
    /// the resources instead of finding none.
    loading: tokio::sync::Mutex<()>,
    resources: Mutex<HashMap<String, (ResourceSpec, RequestTokens)>>,
    store: AnyStore,
}

/// The servers this process opened, by socket path, so an engine built again for the same
/// pipeline (a reload, an API action) shares the one server and the sockets are removed on exit.
static SERVERS: Mutex<Vec<(PathBuf, Arc<Served>)>> = Mutex::new(Vec::new());

fn millis_now() -> Millis {
    crate::state::now_millis()
}

/// Whether any resource of `spec` is taken with `keel token`: request tokens or a quota.
fn wants_tokens(spec: &PipelineSpec) -> bool {
    spec.resources
        .iter()
        .any(|resource| !resource.tokens.is_attempt() || resource.quota.is_some())
}

/// Opens (or takes up) the token server of `spec` in `state_dir` and returns the variable tasks
/// get, or nothing when no resource needs it.
pub fn serve_for(
    spec: &PipelineSpec,
    state_dir: &Path,
    store: &AnyStore,
) -> Result<Option<(String, String)>> {
    if !wants_tokens(spec) {
        return Ok(None);
    }
    let dir = state_dir.join("tokens");
    let path = dir.join(format!("{}.sock", spec.name));
    let variable = (SOCKET_VARIABLE.to_string(), path.display().to_string());
    let mut servers = SERVERS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((_, served)) = servers.iter().find(|(known, _)| *known == path) {
        *served.pending.lock().unwrap_or_else(|p| p.into_inner()) = Some(spec.clone());
        return Ok(Some(variable));
    }
    // A socket path longer than the kernel's limit (108 bytes) cannot be bound.
    if path.as_os_str().len() > 100 {
        return Err(Exit::usage(format!(
            "the token socket path {} is too long for a Unix socket; keep the state directory shorter (--state)",
            path.display()
        )));
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("cannot create the token socket directory {}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("cannot restrict {} to its owner", dir.display()))?;
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            // A live Keel of this state (one that handed its run over, say) serves it already.
            return Ok(Some(variable));
        }
        std::fs::remove_file(&path)
            .with_context(|| format!("cannot remove the stale token socket {}", path.display()))?;
    }
    let listener = std::os::unix::net::UnixListener::bind(&path)
        .with_context(|| format!("cannot open the token socket {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {} to its owner", path.display()))?;
    listener.set_nonblocking(true)?;
    let served = Arc::new(Served {
        pipeline: spec.name.clone(),
        zone: spec.timezone.clone(),
        pending: Mutex::new(Some(spec.clone())),
        loading: tokio::sync::Mutex::new(()),
        resources: Mutex::new(HashMap::new()),
        store: store.for_another_runtime(),
    });
    servers.push((path.clone(), served.clone()));
    std::thread::Builder::new()
        .name("keel-tokens".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    eprintln!("keel: the token server cannot start its runtime: {error}");
                    return;
                }
            };
            runtime.block_on(accept_loop(listener, served));
        })
        .context("cannot start the token server's thread")?;
    Ok(Some(variable))
}

/// Removes the sockets this process opened; called when the command ends.
pub fn remove_sockets() {
    let servers = SERVERS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    for (path, _) in servers.iter() {
        let _ = std::fs::remove_file(path);
    }
}

async fn load_resources(
    spec: &PipelineSpec,
    store: &AnyStore,
) -> Result<HashMap<String, (ResourceSpec, RequestTokens)>> {
    let now = millis_now();
    let stored = store
        .quota_uses(&spec.name)
        .await
        .context("cannot read the quota use from the state")?;
    let mut resources = HashMap::new();
    for resource in &spec.resources {
        let mut tokens = RequestTokens::new(resource, now);
        if let Some((_, period, used)) = stored.iter().find(|(name, ..)| *name == resource.name) {
            tokens.resume(period, *used);
        }
        resources.insert(resource.name.clone(), (resource.clone(), tokens));
    }
    Ok(resources)
}

async fn accept_loop(listener: std::os::unix::net::UnixListener, served: Arc<Served>) {
    let listener = match tokio::net::UnixListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("keel: the token server cannot listen: {error}");
            return;
        }
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors, say: wait a little rather than spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let served = served.clone();
        match slots.clone().try_acquire_owned() {
            Ok(permit) => {
                tokio::spawn(async move {
                    serve_connection(stream, &served).await;
                    drop(permit);
                });
            }
            Err(_) => {
                tokio::spawn(async move {
                    let answer = refusal(
                        "busy",
                        "Keel is serving too many token requests at once; try again".into(),
                    );
                    let _ = write_answer(stream, &answer).await;
                });
            }
        }
    }
}

fn refusal(kind: &str, message: String) -> TokenAnswer {
    TokenAnswer {
        granted: false,
        refused: Some(kind.to_string()),
        message,
    }
}

async fn write_answer(mut stream: tokio::net::UnixStream, answer: &TokenAnswer) -> Result<()> {
    let mut line = serde_json::to_vec(answer)?;
    line.push(b'\n');
    tokio::time::timeout(REQUEST_TIMEOUT, stream.write_all(&line)).await??;
    Ok(())
}

async fn serve_connection(stream: tokio::net::UnixStream, served: &Served) {
    let (read_half, write_half) = stream.into_split();
    let mut reader = BufReader::new(read_half.take(MAX_REQUEST_BYTES));
    let mut line = String::new();
    let read = tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await;
    let answer = match read {
        Err(_) => refusal("bad_request", "no request within 5s".into()),
        Ok(Err(error)) => refusal("bad_request", format!("cannot read the request: {error}")),
        Ok(Ok(_)) if !line.ends_with('\n') => refusal(
            "bad_request",
            format!("the request must be one line of at most {MAX_REQUEST_BYTES} bytes"),
        ),
        Ok(Ok(_)) => match serde_json::from_str::<TokenRequest>(&line) {
            Err(error) => refusal("bad_request", format!("the request is not valid: {error}")),
            Ok(request) => take(served, request).await,
        },
    };
    let Ok(stream) = read_half_unsplit(reader, write_half) else {
        return;
    };
    let _ = write_answer(stream, &answer).await;
}

fn read_half_unsplit(
    reader: BufReader<tokio::io::Take<tokio::net::unix::OwnedReadHalf>>,
    write_half: tokio::net::unix::OwnedWriteHalf,
) -> Result<tokio::net::UnixStream> {
    Ok(reader.into_inner().into_inner().reunite(write_half)?)
}

/// Takes up a pending spec, with its stored quota use.
async fn take_up_pending(served: &Served) -> Result<(), String> {
    let _loading = served.loading.lock().await;
    let pending = served
        .pending
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    let Some(spec) = pending else {
        return Ok(());
    };
    match load_resources(&spec, &served.store).await {
        Ok(resources) => {
            *served.resources.lock().unwrap_or_else(|p| p.into_inner()) = resources;
            Ok(())
        }
        Err(error) => {
            // Try again on the next request rather than count from zero.
            *served.pending.lock().unwrap_or_else(|p| p.into_inner()) = Some(spec);
            Err(format!("{error:#}"))
        }
    }
}

/// Waits for the tokens, up to the request's timeout.
async fn take(served: &Served, request: TokenRequest) -> TokenAnswer {
    if let Err(error) = take_up_pending(served).await {
        return refusal(
            "unavailable",
            format!("Keel cannot read its quota use: {error}"),
        );
    }
    let timeout = Duration::from_millis(request.timeout_ms).min(MAX_WAIT);
    let deadline = millis_now().saturating_add(timeout.as_millis() as Millis);
    let count = request.count.max(1);
    loop {
        let now = millis_now();
        let decision = {
            let mut resources = served.resources.lock().unwrap_or_else(|p| p.into_inner());
            if !resources.contains_key(&request.resource) {
                let mut names: Vec<&str> = resources.keys().map(String::as_str).collect();
                names.sort_unstable();
                let suggestion =
                    keel_model::closest(&request.resource, resources.keys().map(String::as_str))
                        .map(|name| format!("did you mean {name:?}? "))
                        .unwrap_or_default();
                return refusal(
                    "unknown",
                    format!(
                        "pipeline {:?} has no resource {:?}; {suggestion}its resources are: {}",
                        served.pipeline,
                        request.resource,
                        names.join(", ")
                    ),
                );
            }
            let Some((spec, tokens)) = resources.get_mut(&request.resource) else {
                continue;
            };
            if spec.rate.is_none() && spec.quota.is_none() {
                // Nothing limits it: grant at once.
                return TokenAnswer {
                    granted: true,
                    refused: None,
                    message: String::new(),
                };
            }
            let window = spec
                .quota
                .map(|quota| QuotaWindow::at(now, &served.zone, quota.period));
            let window = window.unwrap_or(QuotaWindow {
                key: String::new(),
                start: 0,
                end: Millis::MAX,
            });
            (tokens.try_take(count, now, &window), window.key)
        };
        match decision {
            (Take::Granted { used, alert }, period) => {
                // Only a resource with a quota counts its use.
                if used.is_some() {
                    record_use(served, &request.resource, &period, count).await;
                }
                if let Some(alert) = alert {
                    report_alert(served, &request.resource, &alert);
                }
                return TokenAnswer {
                    granted: true,
                    refused: None,
                    message: String::new(),
                };
            }
            (
                Take::Exhausted {
                    used,
                    limit,
                    resets_at,
                },
                period,
            ) => {
                return refusal(
                    "quota",
                    format!(
                        "the quota of resource {:?} is used up for {period} ({used} of {limit}); it resets at {}",
                        request.resource,
                        local_time(resets_at, &served.zone)
                    ),
                );
            }
            (Take::Wait(until), _) => {
                if until > deadline {
                    return refusal(
                        "timeout",
                        format!(
                            "no token of resource {:?} within {}; its rate allows the next one in {}",
                            request.resource,
                            keel_model::format_duration(timeout),
                            keel_model::format_duration(Duration::from_millis(
                                until.saturating_sub(now).max(0) as u64
                            ))
                        ),
                    );
                }
                let pause = until.saturating_sub(now).clamp(1, 60_000) as u64;
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        }
    }
}

/// `2026-12-01 00:00 EST`: an instant in the pipeline's zone.
fn local_time(at: Millis, zone: &str) -> String {
    use chrono::TimeZone;
    let zone: chrono_tz::Tz = zone.parse().unwrap_or(chrono_tz::Tz::UTC);
    match zone.timestamp_millis_opt(at) {
        chrono::LocalResult::Single(time) => time.format("%Y-%m-%d %H:%M %Z").to_string(),
        _ => "the end of the period".to_string(),
    }
}

async fn record_use(served: &Served, resource: &str, period: &str, count: u32) {
    if let Err(error) = served
        .store
        .add_quota_use(&served.pipeline, resource, period, count, millis_now())
        .await
    {
        eprintln!("keel: cannot record the quota use of resource {resource:?}: {error}");
    }
}

fn report_alert(served: &Served, resource: &str, alert: &QuotaAlert) {
    let text = match alert {
        QuotaAlert::Warning {
            used,
            limit,
            period,
        } => format!(
            "resource {resource:?} of pipeline {:?} has used {used} of its quota of {limit} for {period}",
            served.pipeline
        ),
        QuotaAlert::Exhausted {
            used,
            limit,
            period,
        } => format!(
            "resource {resource:?} of pipeline {:?} has used up its quota ({used} of {limit}) for {period}; keel token refuses it until the period ends",
            served.pipeline
        ),
    };
    eprintln!("keel: quota: {text}");
}

/// Where one resource's quota stands in its current period (`keel status`, quota alerts).
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaStanding {
    pub resource: String,
    /// The period counted now: `2026-12` or `2026-12-02`.
    pub period: String,
    pub used: u32,
    pub limit: u32,
    /// The share at which it is reported, when `warn` is set.
    pub warn: Option<f64>,
    /// When the period ends and the count starts again.
    pub resets_at: Millis,
}

impl QuotaStanding {
    /// Used up: `keel token` refuses the resource until `resets_at`.
    pub fn exhausted(&self) -> bool {
        self.used >= self.limit
    }

    /// Past its `warn` share.
    pub fn warned(&self) -> bool {
        self.warn
            .is_some_and(|warn| f64::from(self.used) >= warn * f64::from(self.limit))
    }

    /// `odds_api 412/500 for 2026-12 (82%; warns at 80%)`.
    pub fn describe(&self) -> String {
        let share = if self.limit == 0 {
            100.0
        } else {
            f64::from(self.used) * 100.0 / f64::from(self.limit)
        };
        let mut text = format!(
            "{} {}/{} for {} ({share:.0}%",
            self.resource, self.used, self.limit, self.period
        );
        if let Some(warn) = self.warn {
            text.push_str(&format!("; warns at {:.0}%", warn * 100.0));
        }
        if self.exhausted() {
            text.push_str("; used up");
        }
        text.push(')');
        text
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "resource": self.resource,
            "period": self.period,
            "used": self.used,
            "limit": self.limit,
            "warn": self.warn,
            "resets_at": self.resets_at,
            "warned": self.warned(),
            "exhausted": self.exhausted(),
        })
    }
}

/// Every quota of `spec` as it stands at `now`, from the stored use (`quota_uses`: resource,
/// period, used); a period with no stored use has used none.
pub fn quota_standings(
    spec: &PipelineSpec,
    uses: &[(String, String, u32)],
    now: Millis,
) -> Vec<QuotaStanding> {
    spec.resources
        .iter()
        .filter_map(|resource| {
            let quota = resource.quota?;
            let window = QuotaWindow::at(now, &spec.timezone, quota.period);
            let used = uses
                .iter()
                .find(|(name, period, _)| *name == resource.name && *period == window.key)
                .map_or(0, |(_, _, used)| *used);
            Some(QuotaStanding {
                resource: resource.name.clone(),
                period: window.key,
                used,
                limit: quota.limit,
                warn: quota.warn,
                resets_at: window.end,
            })
        })
        .collect()
}

/// `keel token RESOURCE`: asks the running Keel for `count` tokens, waiting up to `timeout`.
pub fn token(resource: &str, count: u32, timeout: &str) -> Result<u8> {
    let timeout = keel_model::parse_duration(timeout).map_err(|error| {
        Exit::usage(format!(
            "invalid --timeout {timeout:?}: {error}; write a duration such as \"30s\" or \"5m\""
        ))
    })?;
    let Some(path) = std::env::var_os(SOCKET_VARIABLE) else {
        return Err(Exit::usage(format!(
            "{SOCKET_VARIABLE} is not set; keel token runs inside a task that keel run or keel serve started, for a resource with tokens = \"request\" or a quota"
        )));
    };
    let path = PathBuf::from(path);
    let unreachable = |error: std::io::Error| {
        anyhow::Error::new(Exit {
            code: 1,
            message: format!(
                "cannot reach Keel's token server at {}: {error}; is the keel run or keel serve that started this task still running?",
                path.display()
            ),
        })
    };
    let mut stream = std::os::unix::net::UnixStream::connect(&path).map_err(unreachable)?;
    let request = TokenRequest {
        resource: resource.to_string(),
        count,
        timeout_ms: timeout.as_millis().min(u128::from(u64::MAX)) as u64,
    };
    let mut line = serde_json::to_vec(&request)?;
    line.push(b'\n');
    use std::io::{BufRead, Write};
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    // The server answers by the timeout; the margin covers a busy machine.
    stream.set_read_timeout(Some(timeout.min(MAX_WAIT) + Duration::from_secs(10)))?;
    stream.write_all(&line).map_err(unreachable)?;
    let mut answer = String::new();
    std::io::BufReader::new(&stream)
        .take(MAX_REQUEST_BYTES)
        .read_line(&mut answer)
        .map_err(unreachable)?;
    let answer: TokenAnswer = serde_json::from_str(&answer).map_err(|_| {
        unreachable(std::io::Error::other(
            "the connection closed without an answer",
        ))
    })?;
    if answer.granted {
        return Ok(0);
    }
    let code = match answer.refused.as_deref() {
        Some("timeout" | "quota" | "busy") => EXIT_LATER,
        Some("unknown" | "bad_request") => 2,
        _ => 1,
    };
    Err(anyhow::Error::new(Exit {
        code,
        message: answer.message,
    }))
}
