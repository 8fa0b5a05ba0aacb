//! The feed: the synthetic season served as JSON over HTTP/1.1 on loopback, with switchable
//! faults. A thread per connection, keep-alive, and a control endpoint to change the faults
//! while it runs.
//!
//! | route | answer |
//! |---|---|
//! | `GET /scoreboard/DATE` (or `/schedule/DATE`) | the day's games with final scores |
//! | `GET /boxscores/DATE` | every game's player lines |
//! | `GET /boxscores/DATE/GAME_ID` | one game's player lines |
//! | `GET /injuries/DATE` | the injury report of the teams playing that day |
//! | `GET /props/DATE` | points over/under lines |
//! | `GET /control/faults` | the current fault SPEC |
//! | `POST` or `PUT /control/faults` | replace the faults with the SPEC in the body (plain text, or `{"spec": "..."}`) |
//! | `DELETE /control/faults` | clear every fault |
//! | `GET /control/stats` | request counts by status |
//! | `GET /health` | `{"ok": true}` |
//!
//! Faults only touch the data routes, never `/control` or `/health`.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::date::Date;
use crate::faults::{Faults, Late};
use crate::http::{self, Request, Response};
use crate::rng;
use crate::season::{Season, Source};

/// Connections served at once; more get a 503 and are closed.
const MAX_CONNECTIONS: usize = 256;
/// An idle keep-alive connection is closed after this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

struct State {
    seed: u64,
    season: Season,
    /// The faults, when they were set, and the data-request counter then (where `outage` and
    /// `storm` count from).
    faults: Mutex<(Faults, Instant, u64)>,
    late_counts: Mutex<HashMap<Date, u64>>,
    counter: AtomicU64,
    stats: Mutex<BTreeMap<u16, u64>>,
    connections: AtomicUsize,
    log: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A running feed. Dropping it stops accepting connections.
pub struct Feed {
    state: Arc<State>,
    server: http::Listening,
}

impl Feed {
    /// Binds `addr` (loopback only; port 0 picks a free port) and serves the season of `seed`.
    pub fn start(addr: &str, seed: u64, faults: Faults, log: bool) -> io::Result<Feed> {
        let state = Arc::new(State {
            seed,
            season: Season::generate(seed),
            faults: Mutex::new((faults, Instant::now(), 0)),
            late_counts: Mutex::new(HashMap::new()),
            counter: AtomicU64::new(0),
            stats: Mutex::new(BTreeMap::new()),
            connections: AtomicUsize::new(0),
            log,
        });
        let server = {
            let state = state.clone();
            http::Listening::start(addr, "hoops-feed", move |stream, shutdown| {
                serve_connection(stream, &state, shutdown)
            })?
        };
        Ok(Feed { state, server })
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// `http://127.0.0.1:PORT`, the value for `HOOPS_FEED`.
    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr())
    }

    pub fn faults(&self) -> Faults {
        lock(&self.state.faults).0.clone()
    }

    pub fn set_faults(&self, faults: Faults) {
        set_faults(&self.state, faults);
    }

    /// Blocks until the server is stopped (for a command that runs until killed).
    pub fn wait(self) {
        self.server.wait();
    }

    pub fn stop(&mut self) {
        self.server.stop();
    }
}

fn set_faults(state: &State, faults: Faults) {
    let counter = state.counter.load(Ordering::SeqCst);
    *lock(&state.faults) = (faults, Instant::now(), counter);
    lock(&state.late_counts).clear();
}

fn serve_connection(stream: TcpStream, state: &State, shutdown: &AtomicBool) {
    let active = state.connections.fetch_add(1, Ordering::SeqCst) + 1;
    let _guard = Decrement(&state.connections);
    let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
    let _ = stream.set_nodelay(true);
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    if active > MAX_CONNECTIONS {
        let resp = Response::json(
            503,
            &json!({"error": "busy", "message": "too many connections"}),
        );
        let _ = http::write_response(&mut writer, &resp, false);
        return;
    }
    let mut reader = BufReader::new(stream);
    loop {
        let req = match http::read_request(&mut reader) {
            Ok(Some(req)) => req,
            Ok(None) => return,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                let resp = Response::json(
                    400,
                    &json!({"error": "bad_request", "message": e.to_string()}),
                );
                let _ = http::write_response(&mut writer, &resp, false);
                return;
            }
            Err(_) => return,
        };
        let keep_alive = req.keep_alive() && !shutdown.load(Ordering::SeqCst);
        let resp = handle(state, &req);
        *lock(&state.stats).entry(resp.status).or_default() += 1;
        if state.log {
            eprintln!("hoops feed: {} {} -> {}", req.method, req.path, resp.status);
        }
        if http::write_response(&mut writer, &resp, keep_alive).is_err() || !keep_alive {
            return;
        }
    }
}

struct Decrement<'a>(&'a AtomicUsize);

impl Drop for Decrement<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn error(status: u16, code: &str, message: impl Into<String>) -> Response {
    Response::json(status, &json!({"error": code, "message": message.into()}))
}

fn handle(state: &State, req: &Request) -> Response {
    let path = req.path.split('?').next().unwrap_or("");
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let method = req.method.as_str();
    match (method, segments.as_slice()) {
        ("GET", ["health"]) => Response::json(200, &json!({"ok": true, "seed": state.seed})),
        ("GET", ["control", "faults"]) => {
            Response::json(200, &json!({"faults": lock(&state.faults).0.to_string()}))
        }
        ("POST" | "PUT", ["control", "faults"]) => {
            let body = String::from_utf8_lossy(&req.body);
            let spec = if body.trim_start().starts_with('{') {
                match serde_json::from_str::<serde_json::Value>(&body) {
                    Ok(v) => v["spec"].as_str().unwrap_or("").to_string(),
                    Err(e) => return error(400, "bad_spec", format!("invalid JSON: {e}")),
                }
            } else {
                body.into_owned()
            };
            match Faults::parse(&spec) {
                Ok(faults) => {
                    let canonical = faults.to_string();
                    set_faults(state, faults);
                    if state.log {
                        eprintln!("hoops feed: faults now {canonical}");
                    }
                    Response::json(200, &json!({"faults": canonical}))
                }
                Err(e) => error(400, "bad_spec", e),
            }
        }
        ("DELETE", ["control", "faults"]) => {
            set_faults(state, Faults::none());
            Response::json(200, &json!({"faults": "none"}))
        }
        ("GET", ["control", "stats"]) => {
            let by_status: BTreeMap<String, u64> = lock(&state.stats)
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect();
            Response::json(
                200,
                &json!({
                    "data_requests": state.counter.load(Ordering::SeqCst),
                    "by_status": by_status,
                    "faults": lock(&state.faults).0.to_string(),
                }),
            )
        }
        (_, [source, date]) if Source::parse(source).is_some() => {
            if method != "GET" {
                return error(405, "method_not_allowed", "data routes are GET only");
            }
            data(state, Source::parse(source).expect("checked"), date, None)
        }
        (_, ["boxscores", date, game]) => {
            if method != "GET" {
                return error(405, "method_not_allowed", "data routes are GET only");
            }
            data(state, Source::Boxscores, date, Some(game))
        }
        (_, ["control", ..] | ["health"]) => error(405, "method_not_allowed", "wrong method"),
        _ => error(404, "no_route", format!("no route for {path}")),
    }
}

fn data(state: &State, source: Source, date: &str, game: Option<&str>) -> Response {
    let n = state.counter.fetch_add(1, Ordering::SeqCst);
    let (faults, since, base) = {
        let guard = lock(&state.faults);
        (guard.0.clone(), guard.1, guard.2)
    };
    let since_set = n.saturating_sub(base);
    if let Some((lo, hi)) = faults.latency {
        let extra = (hi - lo).mul_f64(rng::unit(state.seed, 3, n));
        thread::sleep(lo + extra);
    }
    if since_set < faults.outage {
        return error(500, "internal", "the feed is down (injected outage)");
    }
    if since_set < faults.outage + faults.storm {
        return error(429, "rate_limited", "slow down (injected storm)")
            .with_header("Retry-After", faults.retry_after.to_string());
    }
    if rng::unit(state.seed, 1, n) < faults.rate_500 {
        return error(500, "internal", "the feed failed (injected fault)");
    }
    if rng::unit(state.seed, 2, n) < faults.rate_429 {
        return error(429, "rate_limited", "slow down (injected fault)")
            .with_header("Retry-After", faults.retry_after.to_string());
    }
    let Ok(date) = date.parse::<Date>() else {
        return error(
            400,
            "bad_date",
            format!("invalid date {date:?}: expected YYYY-MM-DD"),
        );
    };
    if faults.is_missing(source, date) {
        return error(
            404,
            "not_found",
            format!("{} for {date}: missing from the feed", source.as_str()),
        );
    }
    if source == Source::Props {
        let not_yet = match faults.late_props {
            Some(Late::Requests(k)) => {
                let mut counts = lock(&state.late_counts);
                let seen = counts.entry(date).or_default();
                *seen += 1;
                (*seen <= k).then_some(1)
            }
            Some(Late::For(d)) => {
                let elapsed = since.elapsed();
                (elapsed < d).then(|| (d - elapsed).as_secs_f64().ceil().max(1.0) as u64)
            }
            None => None,
        };
        if let Some(retry_after) = not_yet {
            return error(
                404,
                "not_yet_available",
                format!("props for {date} are not posted yet"),
            )
            .with_header("Retry-After", retry_after.to_string());
        }
    }
    let hide = faults.hides_games(date);
    match game {
        Some(game) => match state.season.boxscore(date, game, hide) {
            Some(body) => Response::json(200, &body),
            None => error(404, "not_found", format!("no game {game} on {date}")),
        },
        None => Response::json(200, &state.season.view(source, date, hide)),
    }
}
