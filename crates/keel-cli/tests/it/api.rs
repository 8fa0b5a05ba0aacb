//! The HTTP API of `keel serve`, end to end: the real binary on a free loopback port, spoken to
//! over HTTP/1.1 by a small client written here. Runs are triggered, retried, cancelled and
//! accepted through the API and watched finish through it; bad requests get 4xx JSON; the event
//! stream delivers and resumes; logs are capped; the token stays out of the log.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{keel_path, write_pipeline};

/// A gated phase whose `flaky` task fails until the file `fixed` exists (the run ends
/// degraded), a task with output to cap, and a task that sleeps while the file `slow` exists.
const PIPELINE: &str = r#"[pipeline]
name = "ops"
timezone = "UTC"
partition = "date"

[defaults]
timeout = "2m"
retries = { attempts = 1, initial = "10ms", max = "50ms" }

[phases.fetch]
gate = { required = ["steady"], min = "50%", grace = "1m" }

[phases.use]
after = ["fetch"]

[tasks.steady]
phase = "fetch"
command = ["sh", "-c", "seq 1 2000"]

[tasks.flaky]
phase = "fetch"
command = ["sh", "-c", "test -f fixed || exit 65"]

[tasks.report]
phase = "use"
command = ["sh", "-c", "echo report; while [ -f slow ]; do sleep 0.05; done; echo done"]
"#;

pub const TOKEN: &str = "test-token-0123456789abcdef";

/// A `keel serve` this test started; killed when dropped, so a failing test leaves nothing
/// running.
pub struct Served {
    child: Child,
    pub addr: String,
    log: PathBuf,
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Served {
    /// `keel serve DIR/keel.toml` on a free loopback port, once it logged its address.
    pub fn start(dir: &Path, token: Option<&str>) -> Served {
        let log = dir.join("serve.log");
        let file = std::fs::File::create(&log).unwrap();
        let mut command = Command::new(keel_path());
        command
            .arg("serve")
            .arg(dir.join("keel.toml"))
            .args(["--addr", "127.0.0.1:0", "--grace", "1s"])
            .env_remove("KEEL_API_TOKEN")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        if let Some(token) = token {
            command.env("KEEL_API_TOKEN", token);
        }
        let child = command.spawn().unwrap();
        let mut served = Served {
            child,
            addr: String::new(),
            log,
        };
        let mut addr = None;
        wait_for("keel serve to log its address", || {
            addr = std::fs::read_to_string(&served.log).ok().and_then(|text| {
                let start = text.find("API on http://")? + "API on http://".len();
                let rest = &text[start..];
                let end = rest.find(|c: char| c == ';' || c.is_whitespace())?;
                Some(rest[..end].to_string())
            });
            addr.is_some()
        });
        served.addr = addr.unwrap();
        served
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn get(&self, path: &str) -> Reply {
        request(&self.addr, "GET", path, &[], None)
    }

    pub fn post(&self, path: &str, body: Value) -> Reply {
        let auth = format!("Bearer {TOKEN}");
        request(
            &self.addr,
            "POST",
            path,
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            Some(body.to_string().as_bytes()),
        )
    }

    /// Waits until run `id` is in `state`, through the API.
    pub fn wait_for_state(&self, id: i64, state: &str) -> Value {
        let mut last = Value::Null;
        wait_for(&format!("run {id} to be {state}"), || {
            last = self.get(&format!("/api/pipelines/ops/runs/{id}")).json();
            last["state"] == state
        });
        last
    }
}

pub fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(40);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "not JSON ({error}), status {}: {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A 4xx with the API's error body; returns the error message.
    fn client_error(&self, status: u16) -> String {
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(self.header("content-type"), Some("application/json"));
        let body = self.json();
        let hint = body["hint"].as_str().unwrap_or_default();
        assert!(!hint.is_empty(), "no hint in {body}");
        body["error"].as_str().unwrap().to_string()
    }
}

/// One HTTP/1.1 request on its own connection, read to the end.
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Reply {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let body = body.unwrap_or_default();
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    parse_reply(&raw)
}

fn parse_reply(raw: &[u8]) -> Reply {
    let split = raw
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| {
            let (name, value) = line.split_once(':')?;
            Some((name.trim().to_lowercase(), value.trim().to_string()))
        })
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(name, value)| name == "transfer-encoding" && value.contains("chunked"));
    if chunked {
        body = unchunk(&body);
    }
    Reply {
        status,
        headers,
        body,
    }
}

fn unchunk(mut data: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n").unwrap();
        let size_text = String::from_utf8_lossy(&data[..line_end]).into_owned();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
        data = &data[line_end + 2..];
        if size == 0 {
            return body;
        }
        body.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

/// A streaming GET whose response head has been read: the server is sending its body.
pub fn open_stream(
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (BufReader<TcpStream>, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream);
    let mut content_type = String::new();
    let mut line = String::new();
    loop {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "no response head");
        let text = line.trim_end();
        if text.is_empty() {
            return (reader, content_type);
        }
        if let Some(value) = text.to_lowercase().strip_prefix("content-type:") {
            content_type = value.trim().to_string();
        }
    }
}

/// The `id:` lines of an event stream, read until `count` arrived (or a deadline passes).
fn stream_event_ids(
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    count: usize,
) -> Vec<(i64, String)> {
    let (mut reader, content_type) = open_stream(addr, path, headers);
    assert_eq!(content_type, "text/event-stream");
    read_events(&mut reader, count)
}

/// Events of an open stream, as (id, kind), until `count` arrived (or a deadline passes).
fn read_events(reader: &mut BufReader<TcpStream>, count: usize) -> Vec<(i64, String)> {
    let mut events = Vec::new();
    let mut id = None;
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut line = String::new();
    while events.len() < count && Instant::now() < deadline {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        let text = line.trim_end();
        if let Some(value) = text.strip_prefix("id: ") {
            id = value.parse::<i64>().ok();
        }
        if let Some(data) = text.strip_prefix("data: ") {
            let data: Value = serde_json::from_str(data).unwrap();
            assert_eq!(Some(data["seq"].as_i64().unwrap()), id, "id and seq agree");
            events.push((id.unwrap(), data["kind"].as_str().unwrap().to_string()));
        }
    }
    events
}

pub fn run_id_of(reply: &Reply) -> i64 {
    assert_eq!(reply.status, 202, "{}", reply.text());
    reply.json()["runs"][0]["run"].as_i64().unwrap()
}

#[test]
fn api_triggers_a_run_and_shows_it_its_log_and_its_events() {
    let project = tempfile::tempdir().unwrap();
    let dir = project.path();
    write_pipeline(dir, PIPELINE);
    std::fs::write(dir.join("fixed"), "").unwrap();
    // No KEEL_API_TOKEN: serve makes one, private to its user, and says where, not what.
    let served = Served::start(dir, None);
    let token_file = dir.join(".keel/api-token");
    let mode = std::fs::metadata(&token_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let token = std::fs::read_to_string(&token_file)
        .unwrap()
        .trim()
        .to_string();
    assert_eq!(token.len(), 64);
    assert!(
        served
            .log_text()
            .contains(&token_file.display().to_string())
    );

    assert_eq!(served.get("/health").json(), json!({ "status": "ok" }));
    // Not ready until the scheduler loop has turned once (503, saying so), then ready.
    let mut ready = served.get("/ready");
    wait_for("/ready", || {
        ready = served.get("/ready");
        let body = ready.json();
        assert!(
            ready.status == 200 && body["status"] == "ready"
                || ready.status == 503 && body["status"] == "not_ready",
            "{body}"
        );
        ready.status == 200
    });
    let body = ready.json();
    let checks: Vec<&str> = body["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|check| check["name"].as_str().unwrap())
        .collect();
    assert_eq!(checks, ["store", "scheduler", "pipeline"]);
    let metrics = served.get("/metrics");
    assert_eq!(
        metrics.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    let openapi = served.get("/api/openapi.json").json();
    assert_eq!(openapi["openapi"], "3.1.0");
    assert!(openapi["paths"]["/api/pipelines/{pipeline}/runs"]["post"].is_object());
    let pipelines = served.get("/api/pipelines").json();
    assert_eq!(pipelines["pipelines"][0]["name"], "ops");
    assert_eq!(pipelines["pipelines"][0]["timezone"], "UTC");

    // Without the token, or with another, nothing is queued.
    let body = json!({ "partition": "2026-01-18" });
    let refused = request(
        &served.addr,
        "POST",
        "/api/pipelines/ops/runs",
        &[],
        Some(body.to_string().as_bytes()),
    );
    refused.client_error(401);
    assert_eq!(refused.header("www-authenticate"), Some("Bearer"));
    let wrong = request(
        &served.addr,
        "POST",
        "/api/pipelines/ops/runs",
        &[("Authorization", "Bearer not-the-token")],
        Some(body.to_string().as_bytes()),
    );
    wrong.client_error(401);
    assert_eq!(
        served.get("/api/pipelines/ops/runs").json()["runs"],
        json!([])
    );

    let auth = format!("Bearer {token}");
    let queued = request(
        &served.addr,
        "POST",
        "/api/pipelines/ops/runs",
        &[("Authorization", &auth)],
        Some(body.to_string().as_bytes()),
    );
    let id = run_id_of(&queued);
    assert_eq!(queued.json()["runs"][0]["queued"], "created");
    let run = served.wait_for_state(id, "succeeded");
    assert_eq!(run["partition"], "2026-01-18");
    assert_eq!(run["degraded_because"], json!([]));
    let tasks: Vec<&str> = run["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|task| task["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(tasks, ["succeeded", "succeeded", "succeeded"]);
    assert_eq!(run["attempts"].as_array().unwrap().len(), 3);
    assert!(run["finished_at"].as_i64().unwrap() >= run["created_at"].as_i64().unwrap());

    // Listed, filtered by state and by partition.
    let listed = served.get("/api/pipelines/ops/runs?state=succeeded&partition=2026-01-18");
    assert_eq!(listed.json()["runs"][0]["id"], id);
    let none = served.get("/api/pipelines/ops/runs?state=failed");
    assert_eq!(none.json()["runs"], json!([]));
    let history = served.get("/api/pipelines/ops/tasks/steady/history").json();
    assert_eq!(history["task"], "steady");
    assert_eq!(history["runs"][0]["run"], id);

    // The health score, as `keel health --json` has it: the one run succeeded untouched.
    let score = served.get("/api/pipelines/ops/health-score").json();
    assert_eq!(score["pipeline"], "ops");
    assert_eq!(score["dimensions"][0]["name"], "success without a human");
    assert_eq!(score["dimensions"][0]["value"], 1.0);
    assert!(score["score"].as_f64().is_some(), "{score:#}");
    let every = served.get("/api/health-score").json();
    assert_eq!(every["pipelines"][0], score);
    assert_eq!(served.get("/api/pipelines/nope/health-score").status, 404);

    // The log: all of it, then capped to its end.
    let log_path = format!("/api/pipelines/ops/runs/{id}/tasks/steady/attempts/1/log");
    let full = served.get(&log_path);
    let expected: String = (1..=2000).map(|n| format!("{n}\n")).collect();
    assert_eq!(full.text(), expected);
    assert_eq!(full.header("x-keel-log-truncated"), Some("false"));
    let capped = served.get(&format!("{log_path}?max_bytes=10"));
    assert_eq!(capped.text(), "1999\n2000\n");
    assert_eq!(capped.body.len(), 10);
    assert_eq!(capped.header("x-keel-log-truncated"), Some("true"));
    assert_eq!(
        capped.header("x-keel-log-size"),
        Some(expected.len().to_string().as_str())
    );
    // Following an attempt that has ended sends what it wrote and ends.
    assert_eq!(
        served.get(&format!("{log_path}?follow=true")).text(),
        expected
    );

    // Events: from the start, then resumed after one of them by Last-Event-ID.
    let events = stream_event_ids(&served.addr, "/api/pipelines/ops/events", &[], 5);
    assert_eq!(events.len(), 5, "{events:?}");
    assert!(events.windows(2).all(|pair| pair[0].0 < pair[1].0));
    let third = events[2].0.to_string();
    let resumed = stream_event_ids(
        &served.addr,
        "/api/pipelines/ops/events",
        &[("Last-Event-ID", &third)],
        2,
    );
    assert_eq!(resumed, events[3..5].to_vec());
    let after = stream_event_ids(
        &served.addr,
        &format!("/api/pipelines/ops/events?after={third}&run={id}"),
        &[],
        1,
    );
    assert_eq!(after[0], events[3]);

    // The token is nowhere in serve's log.
    assert!(!served.log_text().contains(&token), "{}", served.log_text());
}

#[test]
fn api_retries_cancels_and_accepts_runs() {
    let project = tempfile::tempdir().unwrap();
    let dir = project.path();
    write_pipeline(dir, PIPELINE);
    let served = Served::start(dir, Some(TOKEN));
    assert!(served.log_text().contains("KEEL_API_TOKEN"));
    assert!(!dir.join(".keel/api-token").exists());

    // `flaky` fails; the gate opens without it: degraded, and the run says why.
    let id = run_id_of(&served.post(
        "/api/pipelines/ops/runs",
        json!({ "partition": "2026-01-18" }),
    ));
    let run = served.wait_for_state(id, "degraded");
    let reasons = run["degraded_because"].to_string();
    assert!(
        reasons.contains("the gate of phase fetch opened without flaky"),
        "{reasons}"
    );
    assert!(reasons.contains("task flaky ended failed"), "{reasons}");

    // Accept needs who; then it is recorded and shown.
    served
        .post(&format!("/api/pipelines/ops/runs/{id}/accept"), json!({}))
        .client_error(400);
    // Over 200 characters as sent is too long, even when trimming would bring it under.
    let padded = format!("\u{b}{}", "a".repeat(200));
    served
        .post(
            &format!("/api/pipelines/ops/runs/{id}/accept"),
            json!({ "by": padded }),
        )
        .client_error(400);
    let accepted = served.post(
        &format!("/api/pipelines/ops/runs/{id}/accept"),
        json!({ "by": "alice", "reason": "feed outage" }),
    );
    assert_eq!(accepted.status, 200, "{}", accepted.text());
    assert_eq!(accepted.json()["accepted"], "by alice: feed outage");
    let run = served.get(&format!("/api/pipelines/ops/runs/{id}")).json();
    assert_eq!(run["accepted"], "by alice: feed outage");

    // Retry with no tasks named retries the failed one, which now succeeds.
    std::fs::write(dir.join("fixed"), "").unwrap();
    let retried = served.post(&format!("/api/pipelines/ops/runs/{id}/retry"), json!({}));
    assert_eq!(retried.status, 202, "{}", retried.text());
    assert_eq!(retried.json()["tasks"], json!(["flaky"]));
    served.wait_for_state(id, "succeeded");
    served
        .post(
            &format!("/api/pipelines/ops/runs/{id}/accept"),
            json!({ "by": "bob" }),
        )
        .client_error(409);
    served
        .post(&format!("/api/pipelines/ops/runs/{id}/cancel"), json!({}))
        .client_error(409);

    // A range of two partitions is queued as two runs.
    let range = served.post(
        "/api/pipelines/ops/runs",
        json!({ "from": "2026-01-19", "to": "2026-01-20", "only": ["steady"] }),
    );
    assert_eq!(range.status, 202, "{}", range.text());
    let runs = range.json()["runs"].as_array().unwrap().clone();
    assert_eq!(runs.len(), 2);
    for run in &runs {
        served.wait_for_state(run["run"].as_i64().unwrap(), "partial");
    }

    // Cancel a run while its last task sleeps.
    std::fs::write(dir.join("slow"), "").unwrap();
    let id = run_id_of(&served.post(
        "/api/pipelines/ops/runs",
        json!({ "partition": "2026-01-21" }),
    ));
    wait_for("report to start", || {
        let run = served.get(&format!("/api/pipelines/ops/runs/{id}")).json();
        run["tasks"][2]["state"] == "running"
    });
    let cancelled = served.post(&format!("/api/pipelines/ops/runs/{id}/cancel"), json!({}));
    assert_eq!(cancelled.status, 202, "{}", cancelled.text());
    assert_eq!(cancelled.json()["cancel_requested"], true);
    served.wait_for_state(id, "cancelled");
    // The retry of an older run than the partition's newest is refused.
    let again = run_id_of(&served.post(
        "/api/pipelines/ops/runs",
        json!({ "partition": "2026-01-18", "rerun": true }),
    ));
    assert_ne!(again, 1);
    served
        .post(
            "/api/pipelines/ops/runs/1/retry",
            json!({ "tasks": ["steady"] }),
        )
        .client_error(409);
}

#[test]
fn api_answers_bad_requests_with_json_errors() {
    let project = tempfile::tempdir().unwrap();
    let dir = project.path();
    write_pipeline(dir, PIPELINE);
    let served = Served::start(dir, Some(TOKEN));
    let get_errors = [
        ("/api/pipelines/nope/runs", 404, "no pipeline \"nope\""),
        ("/api/pipelines/ops/runs/abc", 400, "bad path"),
        ("/api/pipelines/ops/runs/12345", 404, "no run 12345"),
        ("/api/pipelines/ops/runs?limit=0", 400, "limit 0"),
        ("/api/pipelines/ops/runs?limit=many", 400, "bad query"),
        (
            "/api/pipelines/ops/runs?lmit=3",
            400,
            "unknown field `lmit`",
        ),
        (
            "/api/pipelines/ops/runs?state=fine",
            400,
            "unknown run state",
        ),
        (
            "/api/pipelines/ops/runs?partition=2026-02-30",
            400,
            "2026-02-30",
        ),
        (
            "/api/pipelines/ops/runs?from=2026-01-01",
            400,
            "from and to go together",
        ),
        (
            "/api/pipelines/ops/tasks/stedy/history",
            404,
            "unknown task \"stedy\"",
        ),
        (
            "/api/pipelines/ops/runs/1/tasks/steady/attempts/1/log?max_bytes=0",
            400,
            "max_bytes 0",
        ),
        (
            "/api/pipelines/ops/runs/1/tasks/steady/attempts/x/log",
            400,
            "bad path",
        ),
        ("/api/pipelines/ops/events?after=x", 400, "bad query"),
        ("/nothing/here", 404, "no endpoint"),
    ];
    let mut bodies = Vec::new();
    for (path, status, wanted) in get_errors {
        let reply = served.get(path);
        let error = reply.client_error(status);
        assert!(error.contains(wanted), "{path}: {error}");
        bodies.push(
            json!({ "request": format!("GET {path}"), "status": status, "body": reply.json() }),
        );
    }
    let stale = request(
        &served.addr,
        "GET",
        "/api/pipelines/ops/events",
        &[("Last-Event-ID", "yesterday")],
        None,
    );
    assert!(stale.client_error(400).contains("Last-Event-ID"));
    let wrong_method = request(&served.addr, "DELETE", "/api/pipelines/ops/runs", &[], None);
    wrong_method.client_error(405);
    assert_eq!(wrong_method.header("allow"), Some("GET,HEAD,POST"));

    let post_errors: [(&str, &[u8], u16, &str); 8] = [
        (
            "/api/pipelines/ops/runs",
            b"{not json",
            400,
            "bad JSON body",
        ),
        (
            "/api/pipelines/ops/runs",
            b"[\"2026-01-18\"]",
            400,
            "an array, not an object",
        ),
        (
            "/api/pipelines/ops/runs",
            b"{\"partition\": 7}",
            400,
            "bad JSON body",
        ),
        (
            "/api/pipelines/ops/runs",
            b"{\"partiton\": \"2026-01-01\"}",
            400,
            "unknown field",
        ),
        (
            "/api/pipelines/ops/runs",
            b"{\"only\": [\"nosuch\"]}",
            400,
            "nosuch",
        ),
        (
            "/api/pipelines/ops/runs",
            b"{\"partition\": \"x\", \"from\": \"y\"}",
            400,
            "partition cannot be given with from/to",
        ),
        ("/api/pipelines/ops/runs/5/cancel", b"", 404, "no run 5"),
        (
            "/api/pipelines/ops/runs/5/accept",
            b"null",
            400,
            "null, not an object",
        ),
    ];
    let auth = format!("Bearer {TOKEN}");
    for (path, body, status, wanted) in post_errors {
        let reply = request(
            &served.addr,
            "POST",
            path,
            &[("Authorization", &auth)],
            Some(body),
        );
        let error = reply.client_error(status);
        let body = String::from_utf8_lossy(body);
        assert!(error.contains(wanted), "{path} {body}: {error}");
        bodies.push(json!({ "request": format!("POST {path} {body}"), "status": status, "body": reply.json() }));
    }
    // The wording is part of the API.
    insta::assert_json_snapshot!("api_errors", bodies);
    let huge = vec![b' '; 100_000];
    let reply = request(
        &served.addr,
        "POST",
        "/api/pipelines/ops/runs",
        &[("Authorization", &auth)],
        Some(&huge),
    );
    assert!(reply.client_error(413).contains("larger than"));
    // Nothing of that queued a run, and serve is still there.
    assert_eq!(
        served.get("/api/pipelines/ops/runs").json()["runs"],
        json!([])
    );
    assert_eq!(served.get("/health").status, 200);
}

#[test]
fn serve_refuses_an_address_it_cannot_listen_on_before_running_anything() {
    let project = tempfile::tempdir().unwrap();
    let dir = project.path();
    write_pipeline(dir, PIPELINE);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    for (given, wanted) in [
        (addr.as_str(), "cannot listen on"),
        ("localhost", "is not an address"),
    ] {
        let log = dir.join("refused.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(keel_path())
            .arg("serve")
            .arg(dir.join("keel.toml"))
            .args(["--addr", given])
            .env("KEEL_API_TOKEN", TOKEN)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        // Held by a guard, so a serve that wrongly started is killed when the test fails.
        let mut served = Served {
            child,
            addr: String::new(),
            log: log.clone(),
        };
        let mut status = None;
        wait_for("keel serve to refuse the address", || {
            status = served.child.try_wait().unwrap();
            status.is_some()
        });
        let stderr = served.log_text();
        assert_eq!(status.unwrap().code(), Some(2), "{stderr}");
        assert!(stderr.contains(wanted), "{stderr}");
        assert!(stderr.contains("hint: "), "{stderr}");
    }
}

#[test]
fn api_streams_live_events_and_a_log_as_it_grows() {
    let project = tempfile::tempdir().unwrap();
    let dir = project.path();
    write_pipeline(dir, PIPELINE);
    std::fs::write(dir.join("fixed"), "").unwrap();
    std::fs::write(dir.join("slow"), "").unwrap();
    let served = Served::start(dir, Some(TOKEN));
    // The stream is open (its head read) before anything happens: what it delivers is live.
    let (mut events, content_type) = open_stream(&served.addr, "/api/pipelines/ops/events", &[]);
    assert_eq!(content_type, "text/event-stream");
    let id = run_id_of(&served.post(
        "/api/pipelines/ops/runs",
        json!({ "partition": "2026-01-18" }),
    ));
    let live = read_events(&mut events, 2);
    assert_eq!(live[0].1, "run_created", "{live:?}");

    wait_for("report to run", || {
        served.get(&format!("/api/pipelines/ops/runs/{id}")).json()["tasks"][2]["state"]
            == "running"
    });
    let path = format!("/api/pipelines/ops/runs/{id}/tasks/report/attempts/1/log?follow=true");
    let (mut log, content_type) = open_stream(&served.addr, &path, &[]);
    assert_eq!(content_type, "text/plain; charset=utf-8");
    // What the task wrote so far arrives while it still runs...
    let mut line = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while line.trim_end() != "report" {
        assert!(Instant::now() < deadline, "the log's first line never came");
        line.clear();
        assert!(log.read_line(&mut line).unwrap() > 0, "the log ended early");
    }
    assert_eq!(
        served.get(&format!("/api/pipelines/ops/runs/{id}")).json()["state"],
        "running"
    );
    // ...and the rest once it writes it; the response ends when the attempt has.
    std::fs::remove_file(dir.join("slow")).unwrap();
    let mut rest = Vec::new();
    log.read_to_end(&mut rest).unwrap();
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.contains("done\n"), "{rest:?}");
    assert!(
        rest.ends_with("0\r\n\r\n"),
        "the chunked body ends: {rest:?}"
    );
    served.wait_for_state(id, "succeeded");
}

#[test]
fn api_log_starts_at_the_byte_from_names_and_follows_from_there() {
    let project = tempfile::tempdir().unwrap();
    let dir = project.path();
    write_pipeline(dir, PIPELINE);
    std::fs::write(dir.join("fixed"), "").unwrap();
    std::fs::write(dir.join("slow"), "").unwrap();
    let served = Served::start(dir, Some(TOKEN));
    let id = run_id_of(&served.post(
        "/api/pipelines/ops/runs",
        json!({ "partition": "2026-01-18" }),
    ));
    let log_path = format!("/api/pipelines/ops/runs/{id}/tasks/steady/attempts/1/log");
    wait_for("steady to end", || {
        served.get(&format!("/api/pipelines/ops/runs/{id}")).json()["tasks"][0]["state"] == "done"
    });
    let expected: String = (1..=2000).map(|n| format!("{n}\n")).collect();
    // From a byte to the end, or max_bytes of it.
    let from = served.get(&format!("{log_path}?from=10"));
    assert_eq!(from.status, 200);
    assert_eq!(from.text(), expected[10..]);
    assert_eq!(from.header("x-keel-log-truncated"), Some("true"));
    let piece = served.get(&format!("{log_path}?from=10&max_bytes=5"));
    assert_eq!(piece.text(), expected[10..15]);
    // Past the end: nothing yet, not an error; the size says where the end is.
    let past = served.get(&format!("{log_path}?from={}", expected.len() + 100));
    assert_eq!(past.status, 200);
    assert_eq!(past.text(), "");
    assert_eq!(
        past.header("x-keel-log-size"),
        Some(expected.len().to_string().as_str())
    );
    // A byte no log could reach is refused, not sought (the fuzzer found a 500 there).
    for query in ["from=3153158138167910", "from=3153158138167910&follow=true"] {
        let far = served.get(&format!("{log_path}?{query}"));
        assert_eq!(far.status, 400, "{}", far.text());
        assert!(far.text().contains("out of range"), "{}", far.text());
    }
    // Followed from a byte of an attempt that ended: the rest, then the end.
    assert_eq!(
        served
            .get(&format!("{log_path}?follow=true&from=10"))
            .text(),
        expected[10..]
    );
    let bad = served.get(&format!("{log_path}?from=-1"));
    assert!(bad.client_error(400).contains("from"));

    // A running attempt followed from where a page showing it ended gets only what came after.
    wait_for("report to run", || {
        served.get(&format!("/api/pipelines/ops/runs/{id}")).json()["tasks"][2]["state"]
            == "running"
    });
    let report = format!("/api/pipelines/ops/runs/{id}/tasks/report/attempts/1/log");
    wait_for("report's first line", || {
        served.get(&report).text() == "report\n"
    });
    let (mut followed, _) = open_stream(&served.addr, &format!("{report}?follow=true&from=7"), &[]);
    std::fs::remove_file(dir.join("slow")).unwrap();
    let mut rest = Vec::new();
    followed.read_to_end(&mut rest).unwrap();
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.contains("done\n"), "{rest:?}");
    assert!(!rest.contains("report"), "{rest:?}");
    served.wait_for_state(id, "succeeded");
}
