//! HTTP tasks end to end: `keel run` sending real requests to a scripted HTTP/1.1 server on
//! loopback, which counts its connections and records what it received. Every status class,
//! `Retry-After`, a timeout, connection reuse, a bearer token from the environment and one from
//! a token command (never shown), a cancel while the request is in flight, and `kill -9` of
//! Keel during a request (the attempt is lost and sent again with the same Idempotency-Key).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use crate::support::{keel_path, wait_for, write_pipeline};

/// A request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: HashMap<String, String>,
    body: String,
}

/// What the server answers: status, extra headers, body.
type Answer = (u16, Vec<(&'static str, String)>, String);

/// A scripted HTTP/1.1 server with keep-alive on a free loopback port, answering from a
/// function of the request and how many times its path was asked before. Paths under `/hold`
/// wait until the `release` flag is set (or the client goes away).
struct Server {
    addr: String,
    connections: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    release: Arc<AtomicBool>,
}

impl Server {
    fn start(answer: impl Fn(&Seen, usize) -> Answer + Send + Sync + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let connections = Arc::new(AtomicUsize::new(0));
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let release = Arc::new(AtomicBool::new(false));
        let answer = Arc::new(answer);
        let (counter, log, gate) = (connections.clone(), seen.clone(), release.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                counter.fetch_add(1, Ordering::SeqCst);
                let (answer, log, gate) = (answer.clone(), log.clone(), gate.clone());
                std::thread::spawn(move || serve_connection(stream, &*answer, &log, &gate));
            }
        });
        Server {
            addr,
            connections,
            seen,
            release,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve_connection(
    stream: TcpStream,
    answer: &(dyn Fn(&Seen, usize) -> Answer + Send + Sync),
    log: &Mutex<Vec<Seen>>,
    release: &AtomicBool,
) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or_default().to_string();
        let path = parts.next().unwrap_or_default().to_string();
        let mut headers = HashMap::new();
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_string());
            }
        }
        let length: usize = headers
            .get("content-length")
            .and_then(|value| value.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let request = Seen {
            method,
            path: path.clone(),
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        };
        let before = {
            let mut log = log.lock().unwrap();
            let before = log
                .iter()
                .filter(|seen| seen.path.split('?').next() == path.split('?').next())
                .count();
            log.push(request.clone());
            before
        };
        if path.starts_with("/hold") {
            while !release.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
                // A peer that went away ends the hold: a cancelled or killed request.
                let mut probe = [0u8; 1];
                writer.set_nonblocking(true).unwrap();
                let gone = matches!(writer.peek(&mut probe), Ok(0));
                writer.set_nonblocking(false).unwrap();
                if gone {
                    return;
                }
            }
        }
        let (status, extra, body) = answer(&request, before);
        let mut response = format!(
            "HTTP/1.1 {status} X\r\ncontent-length: {}\r\ncontent-type: application/json\r\n",
            body.len()
        );
        for (name, value) in extra {
            response.push_str(&format!("{name}: {value}\r\n"));
        }
        response.push_str("\r\n");
        response.push_str(&body);
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

fn run(pipeline: &Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(keel_path())
        .arg("run")
        .arg(pipeline)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn status_json(pipeline: &Path) -> Value {
    let output = Command::new(keel_path())
        .args(["status", "--json"])
        .arg(pipeline)
        .output()
        .unwrap();
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|_| panic!("status --json: {}", String::from_utf8_lossy(&output.stderr)))
}

fn task<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["runs"][0]["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|task| task["name"] == name)
        .unwrap_or_else(|| panic!("no task {name} in {status}"))
}

const TOKEN: &str = "tok-9f8e7d6c5b4a";

#[test]
fn http_tasks_map_every_status_class_honour_retry_after_time_out_and_keep_tokens_secret() {
    let server = Server::start(|request, before| {
        let path = request.path.split('?').next().unwrap_or_default();
        match path {
            "/ok" => (
                200,
                vec![],
                format!(
                    r#"{{"rows": 5, "metrics": {{"accuracy": 0.5}}, "message": "echo {}"}}"#,
                    request
                        .headers
                        .get("authorization")
                        .cloned()
                        .unwrap_or_default()
                ),
            ),
            "/missing" => (404, vec![], r#"{"error": "no such game"}"#.into()),
            "/bad" => (400, vec![], r#"{"error": "bad date"}"#.into()),
            "/flaky" if before == 0 => (500, vec![], "boom".into()),
            "/busy" if before == 0 => (
                429,
                vec![("retry-after", "1".to_string())],
                "slow down".into(),
            ),
            "/slow" => {
                std::thread::sleep(Duration::from_secs(3));
                (200, vec![], "{}".into())
            }
            _ => (200, vec![], "[1, 2, 3]".into()),
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let pipeline = write_pipeline(
        dir.path(),
        &format!(
            r#"[pipeline]
name = "calls"
timezone = "UTC"
partition = "date"

[defaults]
timeout = "30s"
retries = {{ attempts = 3, initial = "10ms", max = "20ms" }}

[phases.all]

[tasks.ok]
phase = "all"
http = {{ url = "{ok}", json = {{ date = "{{date}}", kind = "summary" }}, headers = {{ X-Source = "keel-{{task}}" }}, query = {{ day = "{{date}}" }}, auth = {{ bearer_env = "SVC_TOKEN" }} }}

[tasks.missing]
phase = "all"
http = {{ url = "{missing}", on_status = {{ "404" = "no_data" }} }}

[tasks.bad]
phase = "all"
http = {{ url = "{bad}", method = "PUT", body = "date={{date}}", content_type = "text/plain" }}

[tasks.flaky]
phase = "all"
http = {{ url = "{flaky}" }}

[tasks.busy]
phase = "all"
http = {{ url = "{busy}" }}

[tasks.slow]
phase = "all"
timeout = "1s"
retries = {{ attempts = 1 }}
http = {{ url = "{slow}" }}

[tasks.listing]
phase = "all"
http = {{ url = "{listing}", auth = {{ token_command = ["sh", "-c", "echo run >> {token_runs}; echo tok-from-a-command"], token_ttl = "1m" }} }}

[tasks.listing_again]
phase = "all"
after = ["listing"]
http = {{ url = "{listing}", auth = {{ token_command = ["sh", "-c", "echo run >> {token_runs}; echo tok-from-a-command"], token_ttl = "1m" }} }}

[tasks.basic]
phase = "all"
http = {{ url = "{basic}", auth = {{ basic_user = "keel", basic_password_env = "SVC_TOKEN" }} }}
"#,
            token_runs = dir.path().join("token-runs").display(),
            basic = server.url("/ok?basic=1"),
            ok = server.url("/ok"),
            missing = server.url("/missing"),
            bad = server.url("/bad"),
            flaky = server.url("/flaky"),
            busy = server.url("/busy"),
            slow = server.url("/slow"),
            listing = server.url("/listing"),
        ),
    );
    let output = run(
        &pipeline,
        &["--partition", "2026-03-01"],
        &[("SVC_TOKEN", TOKEN)],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        !stderr.contains(TOKEN) && !stdout.contains(TOKEN),
        "{stdout}\n{stderr}"
    );
    let status = status_json(&pipeline);
    let outcome = |name: &str| {
        task(&status, name)["outcome"]
            .as_str()
            .unwrap_or("?")
            .to_string()
    };
    assert_eq!(outcome("ok"), "succeeded", "{status}");
    assert_eq!(task(&status, "ok")["rows"], 5);
    assert_eq!(outcome("missing"), "no_data");
    assert_eq!(outcome("bad"), "failed_permanent");
    assert_eq!(outcome("flaky"), "succeeded");
    assert_eq!(task(&status, "flaky")["attempts"], 2);
    assert_eq!(outcome("busy"), "succeeded");
    assert_eq!(outcome("slow"), "timed_out");
    assert_eq!(
        outcome("listing"),
        "succeeded",
        "a JSON list says nothing to Keel"
    );
    assert!(
        task(&status, "bad")["message"]
            .as_str()
            .unwrap()
            .contains("answered 400"),
        "{status}"
    );
    // The request went out as written, with Keel's headers.
    let seen = server.seen();
    let ok = seen
        .iter()
        .find(|seen| seen.path.starts_with("/ok?day="))
        .unwrap();
    assert_eq!(ok.method, "POST");
    assert_eq!(ok.path, "/ok?day=2026-03-01");
    assert_eq!(ok.headers["x-source"], "keel-ok");
    assert_eq!(ok.headers["authorization"], format!("Bearer {TOKEN}"));
    assert_eq!(ok.headers["idempotency-key"], "calls:ok:2026-03-01");
    assert!(ok.headers["traceparent"].starts_with("00-"));
    let body: Value = serde_json::from_str(&ok.body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"date": "2026-03-01", "kind": "summary"})
    );
    let bad = seen.iter().find(|seen| seen.path == "/bad").unwrap();
    assert_eq!(
        (bad.method.as_str(), bad.body.as_str()),
        ("PUT", "date=2026-03-01")
    );
    let listing = seen.iter().find(|seen| seen.path == "/listing").unwrap();
    assert_eq!(
        listing.headers["authorization"],
        "Bearer tok-from-a-command"
    );
    // The token command ran once: the second task took the token from the cache (ttl 1m).
    assert_eq!(
        seen.iter().filter(|seen| seen.path == "/listing").count(),
        2
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("token-runs")).unwrap(),
        "run\n",
        "the token was fetched once for both tasks"
    );
    // Basic authentication: user and password from the environment, the password never shown.
    let basic = seen
        .iter()
        .find(|seen| seen.path == "/ok?basic=1")
        .expect("the basic-auth task's request");
    assert_eq!(
        basic.headers["authorization"],
        format!("Basic {}", base64_of(&format!("keel:{TOKEN}")))
    );
    assert_eq!(outcome("basic"), "succeeded", "{status}");
    assert!(
        task(&status, "basic")["message"]
            .as_str()
            .unwrap()
            .contains("echo Basic ***"),
        "the base64 form of the credential is hidden too: {status}"
    );
    // 429 with Retry-After: 1 is not ready (no attempt used), asked again no sooner than 1 s.
    let busy: Vec<&Seen> = seen.iter().filter(|seen| seen.path == "/busy").collect();
    assert_eq!(busy.len(), 2);
    let events = Command::new(keel_path())
        .args(["events", "--json"])
        .arg(&pipeline)
        .output()
        .unwrap();
    let events = String::from_utf8_lossy(&events.stdout);
    let attempts = attempts_of(&pipeline, dir.path(), "calls");
    let busy_first = attempts
        .iter()
        .find(|attempt| attempt["task"] == "busy" && attempt["number"] == 1)
        .unwrap();
    assert_eq!(busy_first["outcome"], "not_ready", "{busy_first}");
    assert!(
        busy_first["message"]
            .as_str()
            .unwrap()
            .contains("the service asked to be called again in 1.0s"),
        "{busy_first}"
    );
    // The token is in no event, no status, no log: the service echoed it in its message and
    // its body, and Keel wrote *** instead.
    assert!(!events.contains(TOKEN));
    assert!(!status.to_string().contains(TOKEN));
    assert!(
        task(&status, "ok")["message"]
            .as_str()
            .unwrap()
            .contains("echo Bearer ***"),
        "{status}"
    );
    let log = Command::new(keel_path())
        .args(["logs"])
        .arg(&pipeline)
        .args(["ok", "--partition", "2026-03-01"])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&log.stdout);
    assert!(log.contains("> POST"), "{log}");
    assert!(log.contains("> authorization: ***"), "{log}");
    assert!(log.contains("< 200"), "{log}");
    assert!(!log.contains(TOKEN), "{log}");
    for file in walk(dir.path()) {
        let text = String::from_utf8_lossy(&std::fs::read(&file).unwrap_or_default()).into_owned();
        assert!(!text.contains(TOKEN), "the token is in {}", file.display());
    }
}

/// The attempts of run 1, with their messages, as `keel serve`'s API shows them.
fn attempts_of(pipeline: &Path, dir: &Path, name: &str) -> Vec<Value> {
    let (_served, addr) =
        crate::support::serve_on_free_port(&[pipeline], &dir.join("serve.log"), &[]);
    let run = crate::api::request(
        &addr,
        "GET",
        &format!("/api/pipelines/{name}/runs/1"),
        &[],
        None,
    )
    .json();
    run["attempts"].as_array().cloned().unwrap_or_default()
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn http_tasks_reuse_pooled_connections() {
    let server = Server::start(|_, _| (200, vec![], "{}".into()));
    let dir = tempfile::tempdir().unwrap();
    let mut text = String::from(
        "[pipeline]\nname = \"pooled\"\npartition = \"none\"\n\n[defaults]\nconcurrency = 4\n\n[resources.svc]\nconcurrency = 4\n\n[phases.all]\n\n",
    );
    for index in 0..40 {
        text.push_str(&format!(
            "[tasks.t{index}]\nphase = \"all\"\nuses = [\"svc\"]\nhttp = {{ url = \"{}\" }}\n\n",
            server.url(&format!("/t{index}"))
        ));
    }
    let pipeline = write_pipeline(dir.path(), &text);
    let output = run(&pipeline, &[], &[]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(server.seen().len(), 40);
    let connections = server.connections.load(Ordering::SeqCst);
    assert!(
        connections <= 8,
        "40 requests, at most 4 at once, opened {connections} connections: they were not reused"
    );
}

const HELD: &str = r#"[pipeline]
name = "held"
timezone = "UTC"
partition = "date"

[defaults]
timeout = "1m"

[phases.all]

[tasks.call]
phase = "all"
http = { url = "URL" }
"#;

#[test]
fn a_request_in_flight_is_cancelled_and_one_whose_keel_was_killed_is_lost_and_sent_again() {
    let server = Server::start(|_, _| (200, vec![], r#"{"rows": 1}"#.into()));
    let dir = tempfile::tempdir().unwrap();
    let pipeline = write_pipeline(dir.path(), &HELD.replace("URL", &server.url("/hold")));

    // kill -9 of Keel while the service holds the request.
    let mut keel = Command::new(keel_path())
        .arg("run")
        .arg(&pipeline)
        .args(["--partition", "2026-03-01"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the request to arrive", Duration::from_secs(30), || {
        server.seen().len() == 1
    });
    keel.kill().unwrap();
    keel.wait().unwrap();
    server.release.store(true, Ordering::SeqCst);
    let output = run(&pipeline, &["--partition", "2026-03-01"], &[]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let status = status_json(&pipeline);
    let call = task(&status, "call");
    assert_eq!(call["outcome"], "succeeded", "{status}");
    let attempts = attempts_of(&pipeline, dir.path(), "held");
    assert_eq!(attempts[0]["outcome"], "lost", "{attempts:?}");
    assert!(
        attempts[0]["message"]
            .as_str()
            .unwrap()
            .contains("in flight when keel stopped"),
        "{attempts:?}"
    );
    assert_eq!(attempts[1]["outcome"], "succeeded", "{attempts:?}");
    let seen = server.seen();
    assert_eq!(seen.len(), 2, "sent once more after the loss");
    assert_eq!(
        seen[0].headers["idempotency-key"], seen[1].headers["idempotency-key"],
        "the same key both times, so the service can tell"
    );

    // A cancel while the request is in flight ends it cancelled.
    server.release.store(false, Ordering::SeqCst);
    let mut keel = Command::new(keel_path())
        .arg("run")
        .arg(&pipeline)
        .args(["--partition", "2026-03-02"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for("the request to arrive", Duration::from_secs(30), || {
        server.seen().len() == 3
    });
    let cancel = Command::new(keel_path())
        .arg("cancel")
        .arg(&pipeline)
        .args(["--partition", "2026-03-02"])
        .output()
        .unwrap();
    assert_eq!(
        cancel.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&cancel.stderr)
    );
    let code = keel.wait().unwrap().code();
    assert_eq!(code, Some(1), "a cancelled run ends keel run with 1");
    let status = Command::new(keel_path())
        .args(["status", "--json", "--partition", "2026-03-02"])
        .arg(&pipeline)
        .output()
        .unwrap();
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(task(&status, "call")["outcome"], "cancelled", "{status}");
    assert_eq!(status["runs"][0]["state"], "cancelled");
}

#[test]
fn an_http_sensor_waits_through_not_ready_statuses_and_its_on_status_can_say_no_data() {
    let server = Server::start(
        |request, before| match request.path.split('?').next().unwrap() {
            "/data-ready" if before < 2 => (404, vec![], "not yet".into()),
            "/data-ready" => (200, vec![], "{}".into()),
            "/gone" => (410, vec![], "season over".into()),
            _ => (200, vec![], r#"{"rows": 3}"#.into()),
        },
    );
    let dir = tempfile::tempdir().unwrap();
    let pipeline = write_pipeline(
        dir.path(),
        &format!(
            r#"[pipeline]
name = "sensed"
timezone = "UTC"
partition = "date"

[phases.all]

[tasks.load]
phase = "all"
http = {{ url = "{load}" }}
wait_for = {{ http = {{ url = "{ready}", query = {{ date = "{{date}}" }} }}, every = "10ms", max = "20ms", deadline = "1m" }}

[tasks.archive]
phase = "all"
http = {{ url = "{load}" }}
wait_for = {{ http = {{ url = "{gone}", on_status = {{ "410" = "no_data" }} }}, every = "10ms" }}
"#,
            load = server.url("/load"),
            ready = server.url("/data-ready"),
            gone = server.url("/gone"),
        ),
    );
    let output = run(&pipeline, &["--partition", "2026-03-01"], &[]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let status = status_json(&pipeline);
    assert_eq!(task(&status, "load")["outcome"], "succeeded", "{status}");
    assert_eq!(task(&status, "load")["rows"], 3);
    assert_eq!(
        task(&status, "load")["attempts"],
        1,
        "the 404s used no attempt"
    );
    assert_eq!(task(&status, "archive")["outcome"], "no_data", "{status}");
    assert_eq!(
        task(&status, "archive")["attempts"],
        0,
        "no data: it never ran"
    );
    let seen = server.seen();
    let polls: Vec<&Seen> = seen
        .iter()
        .filter(|seen| seen.path.starts_with("/data-ready"))
        .collect();
    assert_eq!(polls.len(), 3, "{polls:?}");
    assert_eq!(polls[0].path, "/data-ready?date=2026-03-01");
    assert_eq!(
        seen.iter().filter(|seen| seen.path == "/load").count(),
        1,
        "only the task whose data was ready was called"
    );
}

#[test]
fn tasks_using_a_resource_wait_for_its_ready_probe_without_using_attempts() {
    let server = Server::start(|request, before| match request.path.as_str() {
        "/ready" if before < 2 => (503, vec![], "warming up".into()),
        _ => (200, vec![], "{}".into()),
    });
    let dir = tempfile::tempdir().unwrap();
    let pipeline = write_pipeline(
        dir.path(),
        &format!(
            r#"[pipeline]
name = "probed"
timezone = "UTC"
partition = "date"

[resources.svc]
ready = {{ url = "{ready}", every = "50ms", timeout = "2s" }}

[phases.all]

[tasks.first]
phase = "all"
uses = ["svc"]
command = ["true"]

[tasks.second]
phase = "all"
uses = ["svc"]
http = {{ url = "{work}" }}
"#,
            ready = server.url("/ready"),
            work = server.url("/work"),
        ),
    );
    let output = run(&pipeline, &["--partition", "2026-03-01"], &[]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let status = status_json(&pipeline);
    for name in ["first", "second"] {
        assert_eq!(task(&status, name)["outcome"], "succeeded", "{status}");
        assert_eq!(task(&status, name)["attempts"], 1, "{status}");
    }
    let seen = server.seen();
    let probes = seen.iter().filter(|seen| seen.path == "/ready").count();
    assert!(
        probes >= 3,
        "two failed probes, then one that passed: {seen:?}"
    );
    let first_work = seen.iter().position(|seen| seen.path == "/work").unwrap();
    let passing_probe = seen
        .iter()
        .enumerate()
        .filter(|(_, seen)| seen.path == "/ready")
        .nth(2)
        .map(|(index, _)| index)
        .unwrap();
    assert!(
        passing_probe < first_work,
        "no request before the probe passed: {seen:?}"
    );
    // The dashboard's resources page shows the probe.
    let (_served, addr) =
        crate::support::serve_on_free_port(&[&pipeline], &dir.path().join("serve.log"), &[]);
    let page = crate::api::request(&addr, "GET", "/ui/probed/resources", &[], None).text();
    assert!(
        page.contains(&format!(
            "GET {} before tasks start; an answer holds for 50ms",
            server.url("/ready")
        )),
        "{page}"
    );
}

/// Standard base64 with padding, for the expected basic-auth header.
fn base64_of(text: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = text.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for index in 0..4 {
            if index <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * index) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
