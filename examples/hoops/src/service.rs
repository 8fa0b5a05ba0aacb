//! `hoops serve`: the processors behind HTTP on loopback, the way the real pipeline runs them as
//! containerised services that its orchestrator calls. Each request runs the same code as
//! `hoops <task> <date>` (`tasks::run`) on the service's own warehouse, feed and export
//! directory, and answers with what the command would have written to `KEEL_RESULT`.
//!
//! | route | answer |
//! |---|---|
//! | `POST /process/TASK` with `{"date": "YYYY-MM-DD"}` | 200 and the result document (`outcome`, `rows`, `metrics`, `message`) |
//! | the same, when the data is not there yet | 503 with `Retry-After` |
//! | the same, on a transient failure (the feed down, the warehouse locked) | 500 |
//! | the same, when the request or the data is wrong for good | 400 (bad JSON), 422 (bad date, unknown task, permanent failure) |
//! | `GET /ready` | 200 `{"ready": true}`, the health probe |
//! | `GET /stats` | requests by status and connections accepted |
//!
//! With `HOOPS_SERVICE_TOKEN` set, `/process` needs `Authorization: Bearer TOKEN` (401
//! otherwise); `/ready` and `/stats` stay open, like a health probe behind a load balancer.
//!
//! One thread per connection, HTTP/1.1 keep-alive (the connection stays open until the client
//! closes it or stays idle for 30 s), so a pooled client reuses its connections.

use std::collections::BTreeMap;
use std::io::{self, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{Value, json};

use crate::http::{self, Request, Response};
use crate::outcome::TaskError;
use crate::tasks::{self, Ctx};

/// Connections served at once; more get a 503 and are closed.
const MAX_CONNECTIONS: usize = 256;
/// An idle keep-alive connection is closed after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// What a not-ready answer asks the caller to wait, in seconds.
const NOT_READY_RETRY_AFTER: u64 = 1;

/// What the service runs with: where its processors find their data, and the token callers
/// must present.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub ctx: Ctx,
    /// `HOOPS_SERVICE_TOKEN`: when set, `/process` needs `Authorization: Bearer TOKEN`.
    pub token: Option<String>,
    /// Print a line per request on stderr.
    pub log: bool,
}

struct State {
    config: ServiceConfig,
    stats: Mutex<BTreeMap<u16, u64>>,
    connections_accepted: AtomicU64,
    connections_open: AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A running service. Dropping it stops accepting connections.
pub struct Service {
    state: Arc<State>,
    server: http::Listening,
}

impl Service {
    /// Binds `addr` (loopback only; port 0 picks a free port) and serves the processors.
    pub fn start(addr: &str, config: ServiceConfig) -> io::Result<Service> {
        let state = Arc::new(State {
            config,
            stats: Mutex::new(BTreeMap::new()),
            connections_accepted: AtomicU64::new(0),
            connections_open: AtomicUsize::new(0),
        });
        let server = {
            let state = state.clone();
            http::Listening::start(addr, "hoops-serve", move |stream, shutdown| {
                serve_connection(stream, &state, shutdown)
            })?
        };
        Ok(Service { state, server })
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// `{"requests": {"200": n, …}, "connections": n}`, as `GET /stats` answers.
    pub fn stats(&self) -> Value {
        stats(&self.state)
    }

    /// Blocks until the server is stopped (for a command that runs until killed).
    pub fn wait(self) {
        self.server.wait();
    }

    pub fn stop(&mut self) {
        self.server.stop();
    }
}

fn stats(state: &State) -> Value {
    let by_status: serde_json::Map<String, Value> = lock(&state.stats)
        .iter()
        .map(|(status, count)| (status.to_string(), json!(count)))
        .collect();
    json!({
        "requests": by_status,
        "connections": state.connections_accepted.load(Ordering::SeqCst),
    })
}

struct Decrement<'a>(&'a AtomicUsize);

impl Drop for Decrement<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn serve_connection(stream: TcpStream, state: &State, shutdown: &AtomicBool) {
    state.connections_accepted.fetch_add(1, Ordering::SeqCst);
    let active = state.connections_open.fetch_add(1, Ordering::SeqCst) + 1;
    let _guard = Decrement(&state.connections_open);
    let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
    let _ = stream.set_nodelay(true);
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    if active > MAX_CONNECTIONS {
        let resp = error(503, "busy", "too many connections; try again shortly")
            .with_header("Retry-After", NOT_READY_RETRY_AFTER.to_string());
        let _ = http::write_response(&mut writer, &resp, false);
        return;
    }
    let mut reader = BufReader::new(stream);
    loop {
        let req = match http::read_request(&mut reader) {
            Ok(Some(req)) => req,
            Ok(None) => return,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                let resp = error(400, "bad_request", &e.to_string());
                let _ = http::write_response(&mut writer, &resp, false);
                return;
            }
            Err(_) => return,
        };
        let keep_alive = req.keep_alive() && !shutdown.load(Ordering::SeqCst);
        let resp = handle(state, &req);
        *lock(&state.stats).entry(resp.status).or_default() += 1;
        if state.config.log {
            eprintln!(
                "hoops serve: {} {} -> {}",
                req.method, req.path, resp.status
            );
        }
        if http::write_response(&mut writer, &resp, keep_alive).is_err() || !keep_alive {
            return;
        }
    }
}

fn error(status: u16, code: &str, message: &str) -> Response {
    Response::json(status, &json!({"error": code, "message": message}))
}

fn handle(state: &State, req: &Request) -> Response {
    let path = req.path.split('?').next().unwrap_or_default();
    match (req.method.as_str(), path) {
        ("GET" | "HEAD", "/ready") => Response::json(200, &json!({"ready": true})),
        ("GET", "/stats") => Response::json(200, &stats(state)),
        (_, "/ready" | "/stats") => error(405, "method_not_allowed", "use GET"),
        (method, path) if path.starts_with("/process/") => {
            if method != "POST" {
                return error(
                    405,
                    "method_not_allowed",
                    &format!(
                        "{method} {path}: use POST with a JSON body {{\"date\": \"YYYY-MM-DD\"}}"
                    ),
                )
                .with_header("Allow", "POST");
            }
            if let Some(token) = &state.config.token
                && !authorized(req, token)
            {
                return error(
                    401,
                    "unauthorized",
                    "send Authorization: Bearer TOKEN with the token in HOOPS_SERVICE_TOKEN",
                )
                .with_header("WWW-Authenticate", "Bearer");
            }
            process(&state.config.ctx, &path["/process/".len()..], &req.body)
        }
        _ => error(
            404,
            "not_found",
            &format!(
                "no route {} {path}; use POST /process/TASK, GET /ready or GET /stats",
                req.method
            ),
        ),
    }
}

/// Whether the request carries `Authorization: Bearer TOKEN`, compared in constant time.
fn authorized(req: &Request, token: &str) -> bool {
    let Some(presented) = req
        .header("authorization")
        .and_then(|value| value.strip_prefix("Bearer "))
    else {
        return false;
    };
    let (presented, token) = (presented.trim().as_bytes(), token.as_bytes());
    presented.len() == token.len()
        && presented
            .iter()
            .zip(token)
            .fold(0u8, |difference, (a, b)| difference | (a ^ b))
            == 0
}

/// Runs `task` for the date in `body` and answers the way Keel reads an HTTP task's response.
pub fn process(ctx: &Ctx, task: &str, body: &[u8]) -> Response {
    if !tasks::is_task(task) {
        return error(
            422,
            "unknown_task",
            &format!("unknown task {task:?}; `hoops tasks` lists them"),
        );
    }
    let document: Value = match serde_json::from_slice(body) {
        Ok(document) => document,
        Err(e) => {
            return error(
                400,
                "bad_json",
                &format!("the body is not JSON ({e}); send {{\"date\": \"YYYY-MM-DD\"}}"),
            );
        }
    };
    let Some(date) = document.get("date").and_then(Value::as_str) else {
        return error(
            422,
            "bad_date",
            "the body has no \"date\" string; send {\"date\": \"YYYY-MM-DD\"}",
        );
    };
    if let Err(e) = tasks::parse_date(date) {
        return error(422, "bad_date", e.message());
    }
    // A processor that panics fails this request, not the service.
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| tasks::run(task, date, ctx)))
        .unwrap_or_else(|_| {
            Err(TaskError::Transient(format!(
                "the {task} processor panicked on {date}; see the service's log"
            )))
        });
    match outcome {
        Ok(report) => Response::json(200, &report.to_json()),
        Err(TaskError::NotReady(message)) => error(503, "not_ready", &message)
            .with_header("Retry-After", NOT_READY_RETRY_AFTER.to_string()),
        Err(TaskError::Transient(message)) => error(500, "transient", &message),
        Err(TaskError::Permanent(message)) => error(422, "permanent", &message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> Request {
        Request {
            method: "POST".into(),
            path: "/process/grading".into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: Vec::new(),
        }
    }

    #[test]
    fn only_the_exact_bearer_token_is_authorized() {
        assert!(authorized(
            &request(&[("Authorization", "Bearer s3cret")]),
            "s3cret"
        ));
        assert!(!authorized(
            &request(&[("Authorization", "Bearer s3cre")]),
            "s3cret"
        ));
        assert!(!authorized(
            &request(&[("Authorization", "Bearer s3cret2")]),
            "s3cret"
        ));
        assert!(!authorized(
            &request(&[("Authorization", "Basic s3cret")]),
            "s3cret"
        ));
        assert!(!authorized(&request(&[]), "s3cret"));
    }
}
