//! `keel serve --log-format json` and trace export end to end: the real binary runs a small
//! pipeline, every line it writes on stderr is parsed as JSON, and (with the `otlp` feature) a
//! collector on loopback receives one trace per run and one span per attempt, whose ids are
//! those of the `TRACEPARENT` each attempt was given.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{keel_path, write_pipeline};

/// Two tasks; `flaky` fails its first attempt with a message that needs escaping, then
/// succeeds. Each attempt appends its `TRACEPARENT` to `parents`.
const PIPELINE: &str = r#"[pipeline]
name = "logged"
partition = "none"

[phases.a]
[tasks.ok]
phase = "a"
command = ["sh", "-c", "echo $TRACEPARENT >> parents"]

[tasks.flaky]
phase = "a"
command = ["sh", "-c", "echo $TRACEPARENT >> parents; test -f once || {{ touch once; printf 'bad \"quote\" \\\\ tab\\there' >&2; exit 3; }}"]
retries = { attempts = 3, initial = "50ms" }
"#;

/// A `keel serve` this test started; killed when dropped, so a failing test leaves nothing
/// running.
struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl Served {
    /// SIGTERM, then the exit code; bounded in time.
    fn stop(mut self) -> Option<i32> {
        // SAFETY: signalling the child this test started.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "keel serve did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn wait_for(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Queues a run of the pipeline in `root` and starts `keel serve` on it with `args`, its
/// stderr going to `serve.log`.
fn serve_queued_run(root: &Path, args: &[&str], env: &[(&str, &str)]) -> Served {
    write_pipeline(root, PIPELINE);
    let queued = Command::new(keel_path())
        .args(["run", "--detach", "--partition", "none"])
        .arg(root.join("keel.toml"))
        .output()
        .unwrap();
    assert_eq!(queued.status.code(), Some(0), "{queued:?}");
    let log = std::fs::File::create(root.join("serve.log")).unwrap();
    let mut command = Command::new(keel_path());
    command
        .args(["serve", "--addr", "127.0.0.1:0"])
        .args(args)
        .arg(root.join("keel.toml"))
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    for (name, value) in env {
        command.env(name, value);
    }
    command.spawn().map(Served).unwrap()
}

fn log_text(root: &Path) -> String {
    std::fs::read_to_string(root.join("serve.log")).unwrap_or_default()
}

/// Every line of serve's stderr, each of which must be one JSON object.
fn json_lines(root: &Path) -> Vec<Value> {
    log_text(root)
        .lines()
        .map(|line| {
            serde_json::from_str::<Value>(line)
                .unwrap_or_else(|error| panic!("not a JSON line ({error}): {line:?}"))
        })
        .collect()
}

/// The `TRACEPARENT` values the attempts were given: (trace id, parent span id) each.
fn traceparents(root: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(root.join("parents"))
        .unwrap()
        .lines()
        .map(|line| {
            let parts: Vec<&str> = line.split('-').collect();
            assert_eq!(parts.len(), 4, "{line}");
            assert_eq!((parts[0], parts[3]), ("00", "01"), "{line}");
            (parts[1].to_string(), parts[2].to_string())
        })
        .collect()
}

fn text<'a>(line: &'a Value, field: &str) -> &'a str {
    line[field]
        .as_str()
        .unwrap_or_else(|| panic!("no string {field:?} in {line}"))
}

#[test]
fn json_logs_are_one_object_a_line_with_the_run_task_attempt_and_span() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let serve = serve_queued_run(root, &["--log-format", "json"], &[]);
    wait_for("the run to finish", Duration::from_secs(30), || {
        log_text(root).contains("run 1 finished")
    });
    assert_eq!(serve.stop(), Some(0), "{}", log_text(root));
    let lines = json_lines(root);
    for line in &lines {
        let ts = text(line, "ts");
        assert!(
            chrono::DateTime::parse_from_rfc3339(ts).is_ok() && ts.ends_with('Z'),
            "ts is RFC 3339 UTC: {line}"
        );
        assert!(
            ["info", "warn", "error"].contains(&text(line, "level")),
            "{line}"
        );
        assert!(!text(line, "msg").is_empty(), "{line}");
        assert_eq!(text(line, "pipeline"), "logged", "{line}");
    }
    let messages: Vec<&str> = lines.iter().map(|line| text(line, "msg")).collect();
    assert!(
        messages[0].starts_with("keel serve: pipeline logged"),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|msg| msg.starts_with("keel: stopping")),
        "{messages:?}"
    );
    assert!(
        messages.last().unwrap().starts_with("keel serve: stopped"),
        "{messages:?}"
    );

    let parents = traceparents(root);
    assert_eq!(parents.len(), 3, "ok once, flaky twice: {parents:?}");
    let trace_id = parents[0].0.clone();
    assert!(
        parents.iter().all(|(trace, _)| *trace == trace_id),
        "one trace per run"
    );
    let attempt_lines: Vec<&Value> = lines
        .iter()
        .filter(|line| line.get("attempt").is_some())
        .collect();
    for line in &attempt_lines {
        assert_eq!(line["run"], 1, "{line}");
        assert_eq!(text(line, "partition"), "none", "{line}");
        assert!(["ok", "flaky"].contains(&text(line, "task")), "{line}");
        assert_eq!(text(line, "trace_id"), trace_id, "{line}");
        let span = text(line, "span_id");
        assert!(
            parents.iter().any(|(_, parent)| parent == span),
            "an attempt's span is the parent id of its TRACEPARENT: {line}"
        );
    }
    let started = |task: &str, attempt: u64| {
        attempt_lines
            .iter()
            .find(|line| {
                text(line, "task") == task
                    && line["attempt"] == attempt
                    && text(line, "msg").ends_with("started")
            })
            .unwrap_or_else(|| panic!("no start of {task} attempt {attempt}: {lines:?}"))
    };
    let spans = [started("ok", 1), started("flaky", 1), started("flaky", 2)]
        .map(|line| text(line, "span_id").to_string());
    assert_ne!(spans[1], spans[2], "each attempt has its own span");

    let failed = attempt_lines
        .iter()
        .find(|line| line["outcome"] == "failed")
        .expect("the failed attempt is logged");
    assert_eq!(text(failed, "level"), "warn");
    assert_eq!(text(failed, "task"), "flaky");
    assert_eq!(failed["attempt"], 1);
    assert_eq!(text(failed, "span_id"), spans[1]);
    assert!(failed["retry_at"].is_string(), "{failed}");
    assert!(
        text(failed, "msg").contains(r#"bad "quote" \ tab"#),
        "the task's message survives escaping: {failed}"
    );

    let finished = lines
        .iter()
        .find(|line| text(line, "msg") == "run 1 finished succeeded")
        .expect("the run's end is logged");
    assert_eq!(text(finished, "outcome"), "succeeded");
    assert_eq!(text(finished, "trace_id"), trace_id);
    let root_span = text(finished, "span_id");
    assert!(
        !spans.iter().any(|span| span == root_span),
        "the run's root span is none of its attempts'"
    );
    let loaded = lines
        .iter()
        .find(|line| text(line, "msg").starts_with("run 1 taken up"))
        .expect("the run's start is logged");
    assert_eq!(
        text(loaded, "span_id"),
        root_span,
        "a run keeps its root span"
    );
}

/// A Keel killed with SIGKILL while an attempt runs, and started again, names the same spans:
/// the run keeps its root span, and the attempt it adopts keeps the span of its TRACEPARENT.
#[test]
fn a_restarted_serve_names_the_same_run_and_attempt_spans() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_pipeline(
        root,
        r#"[pipeline]
name = "logged"
partition = "none"

[phases.a]
[tasks.slow]
phase = "a"
command = ["sh", "-c", "echo $TRACEPARENT >> parents; n=0; while [ ! -f go ] && [ $n -lt 600 ]; do sleep 0.05; n=$((n+1)); done"]
"#,
    );
    let start = |log: &str| {
        let log = std::fs::File::create(root.join(log)).unwrap();
        Command::new(keel_path())
            .args(["serve", "--addr", "127.0.0.1:0", "--log-format", "json"])
            .arg(root.join("keel.toml"))
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map(Served)
            .unwrap()
    };
    let read = |log: &str| -> Vec<Value> {
        std::fs::read_to_string(root.join(log))
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("{line:?}")))
            .collect()
    };
    let queued = Command::new(keel_path())
        .args(["run", "--detach", "--partition", "none"])
        .arg(root.join("keel.toml"))
        .output()
        .unwrap();
    assert_eq!(queued.status.code(), Some(0), "{queued:?}");
    let mut first = start("serve1.log");
    wait_for("the attempt to start", Duration::from_secs(30), || {
        std::fs::read_to_string(root.join("parents")).is_ok()
    });
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let second = start("serve2.log");
    wait_for("the attempt to be adopted", Duration::from_secs(30), || {
        read("serve2.log")
            .iter()
            .any(|line| text(line, "msg").contains("adopted"))
    });
    std::fs::write(root.join("go"), "").unwrap();
    wait_for("the run to finish", Duration::from_secs(30), || {
        read("serve2.log")
            .iter()
            .any(|line| text(line, "msg") == "run 1 finished succeeded")
    });
    assert_eq!(second.stop(), Some(0));
    let parents = traceparents(root);
    assert_eq!(parents.len(), 1, "the attempt ran once: {parents:?}");
    let (trace_id, attempt_span) = &parents[0];
    let (before, after) = (read("serve1.log"), read("serve2.log"));
    let root_span = |lines: &[Value]| {
        let loaded = lines
            .iter()
            .find(|line| text(line, "msg").starts_with("run 1 taken up"))
            .expect("the run is taken up");
        assert_eq!(text(loaded, "trace_id"), trace_id);
        text(loaded, "span_id").to_string()
    };
    assert_eq!(root_span(&before), root_span(&after));
    for lines in [&before, &after] {
        for line in lines.iter().filter(|line| line["task"] == "slow") {
            assert_eq!(text(line, "trace_id"), trace_id, "{line}");
            assert_eq!(text(line, "span_id"), attempt_span, "{line}");
        }
    }
    let finished = after
        .iter()
        .find(|line| line["task"] == "slow" && line["outcome"] == "succeeded")
        .expect("the adopted attempt's end is logged");
    assert!(
        finished["duration_ms"].as_i64().unwrap() > 0,
        "timed from its start before the restart: {finished}"
    );
}

/// The error that ends serve is JSON too, with its hint, and serve exits as it would in text
/// mode.
#[test]
fn json_logs_report_the_error_that_ends_serve_as_json() {
    let dir = tempfile::tempdir().unwrap();
    write_pipeline(
        dir.path(),
        "[pipeline]\nname = \"broken\"\n\n[tasks.a]\ncommand = [\"true\"]\nretries = { tries = 2 }\n",
    );
    let output = Command::new(keel_path())
        .args(["serve", "--addr", "127.0.0.1:0", "--log-format", "json"])
        .arg(dir.path().join("keel.toml"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<Value> = stderr
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("{line:?}")))
        .collect();
    assert!(!lines.is_empty());
    for line in &lines {
        assert_eq!(text(line, "level"), "error", "{line}");
        assert!(!text(line, "msg").starts_with("error:"), "{line}");
    }
    assert!(
        lines
            .iter()
            .any(|line| text(line, "msg").contains("keel.toml:6") && line["hint"].is_string()),
        "{stderr}"
    );
}

#[cfg(not(feature = "otlp"))]
#[test]
fn otlp_endpoint_without_the_feature_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    write_pipeline(dir.path(), PIPELINE);
    let output = Command::new(keel_path())
        .args(["serve", "--otlp-endpoint", "http://127.0.0.1:4318"])
        .arg(dir.path().join("keel.toml"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--features otlp"), "{stderr}");
}

#[cfg(feature = "otlp")]
mod otlp {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// An OTLP/HTTP collector on loopback: it keeps each request's path and JSON body and
    /// answers 200.
    struct Collector {
        address: String,
        received: Arc<Mutex<Vec<(String, Value)>>>,
    }

    impl Collector {
        fn start() -> Collector {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let address = format!("http://{}", listener.local_addr().unwrap());
            let received = Arc::new(Mutex::new(Vec::new()));
            let kept = received.clone();
            // The thread ends with the test process.
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(stream) = stream else { continue };
                    stream
                        .set_read_timeout(Some(Duration::from_secs(10)))
                        .unwrap();
                    let mut reader = BufReader::new(stream);
                    let mut request_line = String::new();
                    reader.read_line(&mut request_line).unwrap();
                    let mut length = 0;
                    loop {
                        let mut header = String::new();
                        reader.read_line(&mut header).unwrap();
                        let header = header.trim_end();
                        if header.is_empty() {
                            break;
                        }
                        if let Some((name, value)) = header.split_once(':')
                            && name.eq_ignore_ascii_case("content-length")
                        {
                            length = value.trim().parse().unwrap();
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).unwrap();
                    let path = request_line.split_whitespace().nth(1).unwrap().to_string();
                    let body: Value = serde_json::from_slice(&body).unwrap();
                    kept.lock().unwrap().push((path, body));
                    let mut stream = reader.into_inner();
                    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
                }
            });
            Collector { address, received }
        }

        /// Every span received, from every request.
        fn spans(&self) -> Vec<Value> {
            let received = self.received.lock().unwrap();
            let mut spans = Vec::new();
            for (path, body) in received.iter() {
                assert_eq!(path, "/v1/traces");
                for resource in body["resourceSpans"].as_array().unwrap() {
                    for scope in resource["scopeSpans"].as_array().unwrap() {
                        spans.extend(scope["spans"].as_array().unwrap().iter().cloned());
                    }
                }
            }
            spans
        }
    }

    fn attribute<'a>(span: &'a Value, key: &str) -> &'a Value {
        let found = span["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|attribute| attribute["key"] == key)
            .unwrap_or_else(|| panic!("no attribute {key} in {span}"));
        &found["value"]
    }

    fn nanos(span: &Value, field: &str) -> u128 {
        span[field].as_str().unwrap().parse().unwrap()
    }

    /// One trace per run, one span per attempt, their parent the run's root span, and their ids
    /// those of the `TRACEPARENT` each attempt printed.
    #[test]
    fn otlp_export_sends_the_run_as_a_trace_and_each_attempt_as_a_span() {
        let collector = Collector::start();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let serve = serve_queued_run(root, &["--otlp-endpoint", &collector.address], &[]);
        wait_for("the run's trace", Duration::from_secs(30), || {
            collector
                .spans()
                .iter()
                .any(|span| span.get("parentSpanId").is_none())
        });
        assert_eq!(serve.stop(), Some(0), "{}", log_text(root));
        let spans = collector.spans();
        let parents = traceparents(root);
        assert_eq!(spans.len(), 4, "a root span and three attempts: {spans:#?}");
        let trace_id = &parents[0].0;
        for span in &spans {
            assert_eq!(
                span["traceId"],
                *trace_id.as_str(),
                "one trace per run: {span}"
            );
            assert!(nanos(span, "startTimeUnixNano") <= nanos(span, "endTimeUnixNano"));
            assert_eq!(attribute(span, "keel.pipeline")["stringValue"], "logged");
            assert_eq!(attribute(span, "keel.partition")["stringValue"], "none");
        }
        let roots: Vec<&Value> = spans
            .iter()
            .filter(|span| span.get("parentSpanId").is_none())
            .collect();
        assert_eq!(roots.len(), 1);
        let run = roots[0];
        assert_eq!(attribute(run, "keel.outcome")["stringValue"], "succeeded");
        assert_eq!(run["status"]["code"], 1);
        let mut attempt_spans: Vec<String> = Vec::new();
        for span in spans
            .iter()
            .filter(|span| span.get("parentSpanId").is_some())
        {
            assert_eq!(span["parentSpanId"], run["spanId"], "{span}");
            assert!(nanos(run, "startTimeUnixNano") <= nanos(span, "startTimeUnixNano"));
            assert!(nanos(span, "endTimeUnixNano") <= nanos(run, "endTimeUnixNano"));
            let task = attribute(span, "keel.task")["stringValue"]
                .as_str()
                .unwrap();
            let attempt = attribute(span, "keel.attempt")["intValue"]
                .as_str()
                .unwrap();
            let outcome = attribute(span, "keel.outcome")["stringValue"]
                .as_str()
                .unwrap();
            let expected = match (task, attempt) {
                ("flaky", "1") => ("failed", 2),
                ("ok", "1") | ("flaky", "2") => ("succeeded", 1),
                other => panic!("unexpected attempt {other:?}"),
            };
            assert_eq!(
                (outcome, span["status"]["code"].as_i64().unwrap()),
                (expected.0, expected.1)
            );
            attempt_spans.push(span["spanId"].as_str().unwrap().to_string());
        }
        let mut printed: Vec<String> = parents.into_iter().map(|(_, span)| span).collect();
        printed.sort();
        attempt_spans.sort();
        assert_eq!(
            attempt_spans, printed,
            "the spans are those of the TRACEPARENTs"
        );
    }

    /// An endpoint serve cannot use stops it at start, naming where the endpoint came from.
    #[test]
    fn otlp_endpoint_that_is_not_http_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        write_pipeline(dir.path(), PIPELINE);
        let output = Command::new(keel_path())
            .args(["serve", "--addr", "127.0.0.1:0"])
            .arg(dir.path().join("keel.toml"))
            .env(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "https://collector.example:4318",
            )
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.starts_with(
                "error: OTEL_EXPORTER_OTLP_ENDPOINT \"https://collector.example:4318\""
            ),
            "{stderr}"
        );
        assert!(
            stderr.contains("hint: keel exports over plain http only"),
            "{stderr}"
        );
    }

    /// A collector that is down costs spans, never the run: serve says so once and carries on.
    /// The endpoint comes from the standard variable here.
    #[test]
    fn otlp_export_to_a_collector_that_is_down_drops_spans_and_serve_carries_on() {
        let address = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", listener.local_addr().unwrap())
        };
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let serve = serve_queued_run(
            root,
            &["--log-format", "json"],
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", &address)],
        );
        wait_for(
            "the run and a failed export",
            Duration::from_secs(30),
            || {
                let log = log_text(root);
                log.contains("run 1 finished succeeded") && log.contains("trace export")
            },
        );
        assert_eq!(serve.stop(), Some(0), "{}", log_text(root));
        let lines = json_lines(root);
        let failures: Vec<&Value> = lines
            .iter()
            .filter(|line| text(line, "msg").starts_with("trace export"))
            .collect();
        assert_eq!(failures.len(), 1, "said once: {lines:#?}");
        assert_eq!(text(failures[0], "level"), "warn");
        assert!(
            lines
                .iter()
                .any(|line| text(line, "msg").contains("spans could not be sent")),
            "{lines:#?}"
        );
    }
}
