//! Alerts end to end: the real `keel serve` with a task that fails, a webhook receiver on
//! 127.0.0.1 run by the test, and a `command` sink that appends what it gets to a file. The
//! failure alerts once on both sinks; once the task is fixed, one `resolved` follows.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{keel_path, write_pipeline};

/// A `keel serve` this test started, killed when dropped.
struct Served(Child);

impl Drop for Served {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// One request the receiver got: its request line, headers and body.
struct Received {
    request_line: String,
    headers: Vec<String>,
    body: String,
}

/// A tiny HTTP/1.1 server on 127.0.0.1 that answers 200 to every request and hands each one
/// to the test. It stops by itself after `limit`.
fn receiver(limit: Duration) -> (u16, mpsc::Receiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let (sender, received) = mpsc::channel();
    std::thread::spawn(move || {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            let Ok((stream, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            stream.set_nonblocking(false).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut reader = BufReader::new(stream);
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            let mut headers = Vec::new();
            let mut length = 0;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() || line.trim().is_empty() {
                    break;
                }
                if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = value.trim().parse().unwrap_or(0);
                }
                headers.push(line.trim().to_string());
            }
            let mut body = vec![0; length];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            let mut stream = reader.into_inner();
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            let _ = sender.send(Received {
                request_line: request_line.trim().to_string(),
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
    });
    (port, received)
}

fn wait_for(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn queue_run(root: &Path, rerun: bool) {
    let mut command = Command::new(keel_path());
    command.args(["run", "--partition", "none", "--detach"]);
    if rerun {
        command.arg("--rerun");
    }
    let output = command.arg(root.join("keel.toml")).output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn command_sink_lines(root: &Path) -> Vec<Value> {
    std::fs::read_to_string(root.join("alerts.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

const PIPELINE: &str = r#"[pipeline]
name = "alerting"
partition = "none"

[defaults]
retries = { attempts = 1 }

[phases.main]

[tasks.extract]
phase = "main"
command = ["sh", "-c", "exit 0"]

[tasks.load]
phase = "main"
command = ["sh", "-c", "if [ -f fixed ]; then exit 0; fi; echo 'warehouse refused the load' >&2; exit 1"]

[alerts]
webhook = { url_env = "KEEL_TEST_ALERT_WEBHOOK" }
command = ["sh", "-c", "cat >> alerts.jsonl"]
max_per_hour = 5
timeout = "5s"
"#;

#[test]
fn a_failing_task_alerts_both_sinks_once_and_resolves_once_when_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    write_pipeline(&root, PIPELINE);
    let (port, received) = receiver(Duration::from_secs(90));
    let hook = format!("http://127.0.0.1:{port}/hooks/T0001/secret-path");
    let log = std::fs::File::create(root.join("serve.log")).unwrap();
    let _serve = Command::new(keel_path())
        .args(["serve", "--addr", "127.0.0.1:0"])
        .arg(root.join("keel.toml"))
        .env("KEEL_TEST_ALERT_WEBHOOK", &hook)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .map(Served)
        .unwrap();
    let serve_log = || std::fs::read_to_string(root.join("serve.log")).unwrap_or_default();
    wait_for("keel serve to start", Duration::from_secs(30), || {
        serve_log().contains("keel serve: pipeline")
    });

    queue_run(&root, false);
    let alert = received
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| {
            panic!(
                "no alert reached the webhook; serve's log:\n{}",
                serve_log()
            )
        });
    assert_eq!(alert.request_line, "POST /hooks/T0001/secret-path HTTP/1.1");
    assert!(
        alert
            .headers
            .iter()
            .any(|header| header.eq_ignore_ascii_case("content-type: application/json")),
        "{:?}",
        alert.headers
    );
    let payload: Value = serde_json::from_str(&alert.body).unwrap();
    assert!(
        payload["text"]
            .as_str()
            .unwrap()
            .starts_with("[keel] alerting load: retries_exhausted (none): load ended failed"),
        "{payload}"
    );
    let fields = &payload["keel"];
    assert_eq!(fields["status"], "firing");
    assert_eq!(fields["pipeline"], "alerting");
    assert_eq!(fields["kind"], "retries_exhausted");
    assert_eq!(fields["subject"], "load");
    assert_eq!(fields["partition"], "none");
    assert_eq!(fields["run"], "1");
    assert_eq!(fields["suppressed"], 0);

    wait_for("the command sink's line", Duration::from_secs(30), || {
        !command_sink_lines(&root).is_empty()
    });
    assert_eq!(command_sink_lines(&root), vec![payload.clone()]);

    // Fixed: the next run succeeds and one resolved message follows on each sink.
    std::fs::write(root.join("fixed"), "").unwrap();
    queue_run(&root, true);
    let resolved = received
        .recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| {
            panic!(
                "no resolution reached the webhook; serve's log:\n{}",
                serve_log()
            )
        });
    let resolved: Value = serde_json::from_str(&resolved.body).unwrap();
    assert_eq!(resolved["keel"]["status"], "resolved", "{resolved}");
    assert_eq!(resolved["keel"]["kind"], "retries_exhausted");
    assert_eq!(resolved["keel"]["subject"], "load");
    assert!(
        resolved["text"]
            .as_str()
            .unwrap()
            .starts_with("[keel] resolved: alerting load: retries_exhausted"),
        "{resolved}"
    );
    wait_for(
        "the command sink's resolution",
        Duration::from_secs(30),
        || command_sink_lines(&root).len() == 2,
    );
    assert_eq!(command_sink_lines(&root)[1], resolved);
    // Nothing more: one alert, one resolution.
    assert!(received.recv_timeout(Duration::from_millis(500)).is_err());
    assert!(
        !serve_log().contains("secret-path"),
        "the webhook URL reached the log:\n{}",
        serve_log()
    );
}

/// A webhook whose URL variable is missing stops `keel serve` at once, naming the variable.
#[test]
fn serve_refuses_a_webhook_whose_variable_is_not_set() {
    let dir = tempfile::tempdir().unwrap();
    write_pipeline(dir.path(), PIPELINE);
    let mut serve = Command::new(keel_path())
        .args(["serve", "--addr", "127.0.0.1:0"])
        .arg(dir.path().join("keel.toml"))
        .env_remove("KEEL_TEST_ALERT_WEBHOOK")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("serve.log")).unwrap())
        .spawn()
        .map(Served)
        .unwrap();
    let mut code = None;
    wait_for("keel serve to refuse", Duration::from_secs(30), || {
        code = serve.0.try_wait().unwrap().map(|status| status.code());
        code.is_some()
    });
    let stderr = std::fs::read_to_string(dir.path().join("serve.log")).unwrap();
    assert_eq!(code, Some(Some(1)), "{stderr}");
    assert!(
        stderr.contains("\"KEEL_TEST_ALERT_WEBHOOK\", which is not set"),
        "{stderr}"
    );
}

/// A run that ends `degraded` alerts once its grace is over, and `keel accept`, run by another
/// process while serve holds the state, resolves it.
#[test]
fn a_degraded_run_alerts_after_its_grace_and_resolves_when_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    write_pipeline(
        &root,
        r#"[pipeline]
name = "gated"
partition = "none"

[defaults]
retries = { attempts = 1 }

[phases.scrape]
gate = { min = "50%" }

[phases.report]
after = ["scrape"]

[tasks.boxscores]
phase = "scrape"
command = ["sh", "-c", "exit 0"]

[tasks.injuries]
phase = "scrape"
command = ["sh", "-c", "exit 1"]

[tasks.summary]
phase = "report"
command = ["sh", "-c", "exit 0"]

[alerts]
command = ["sh", "-c", "cat >> alerts.jsonl"]
degraded_grace = "0s"
"#,
    );
    let log = std::fs::File::create(root.join("serve.log")).unwrap();
    let _serve = Command::new(keel_path())
        .args(["serve", "--addr", "127.0.0.1:0"])
        .arg(root.join("keel.toml"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .map(Served)
        .unwrap();
    let serve_log = || std::fs::read_to_string(root.join("serve.log")).unwrap_or_default();
    wait_for("keel serve to start", Duration::from_secs(30), || {
        serve_log().contains("keel serve: pipeline")
    });
    queue_run(&root, false);
    let kinds = |root: &Path| -> Vec<(String, String)> {
        command_sink_lines(root)
            .iter()
            .map(|line| {
                let status = line["keel"]["status"].as_str().unwrap().to_string();
                (line["keel"]["kind"].as_str().unwrap().to_string(), status)
            })
            .collect()
    };
    wait_for("the degraded run's alert", Duration::from_secs(30), || {
        kinds(&root).contains(&("run_degraded".into(), "firing".into()))
    });
    assert!(
        kinds(&root).contains(&("retries_exhausted".into(), "firing".into())),
        "{:?}",
        kinds(&root)
    );
    let accept = Command::new(keel_path())
        .args([
            "accept",
            "--partition",
            "none",
            "--reason",
            "injuries feed down today",
        ])
        .arg(root.join("keel.toml"))
        .output()
        .unwrap();
    assert_eq!(
        accept.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&accept.stderr)
    );
    wait_for(
        "the degraded run's resolution",
        Duration::from_secs(30),
        || kinds(&root).contains(&("run_degraded".into(), "resolved".into())),
    );
    std::thread::sleep(Duration::from_millis(1500));
    let told = kinds(&root);
    let degraded: Vec<_> = told
        .iter()
        .filter(|(kind, _)| kind == "run_degraded")
        .collect();
    assert_eq!(degraded.len(), 2, "one alert and one resolution: {told:?}");
}

/// What `keel serve` tells about results: a grading task's accuracy collapses on one date after
/// 21 usual ones (run before serve started; an anomaly alerts from three weeks of baseline), and the run serve takes up for that date alerts
/// the anomaly once, with its baseline, and the failed `warn` check.
#[test]
fn an_anomaly_and_a_failed_check_alert_with_their_baseline() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    write_pipeline(
        &root,
        r#"[pipeline]
name = "graded"
timezone = "UTC"

[phases.grade]

[tasks.grading]
phase = "grade"
command = ["sh", "grade.sh", "{date}"]
checks = [{ metric = "accuracy", min = 0.3, severity = "warn" }]

[alerts]
command = ["sh", "-c", "cat >> alerts.jsonl"]
"#,
    );
    std::fs::write(
        root.join("grade.sh"),
        "case $1 in 2026-03-15) a=0.19;; *) a=0.4$(( $(echo $1 | cut -c10) % 8 ));; esac\nprintf '{\"rows\": 48, \"metrics\": {\"accuracy\": %s}}' $a > \"$KEEL_RESULT\"\n",
    )
    .unwrap();
    let history = Command::new(keel_path())
        .args(["run", "--from", "2026-02-22", "--to", "2026-03-14"])
        .arg(root.join("keel.toml"))
        .output()
        .unwrap();
    assert_eq!(history.status.code(), Some(0), "{history:?}");
    let log = std::fs::File::create(root.join("serve.log")).unwrap();
    let _serve = Command::new(keel_path())
        .args(["serve", "--addr", "127.0.0.1:0"])
        .arg(root.join("keel.toml"))
        .current_dir(&root)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .map(Served)
        .unwrap();
    let serve_log = || std::fs::read_to_string(root.join("serve.log")).unwrap_or_default();
    wait_for("keel serve to start", Duration::from_secs(30), || {
        serve_log().contains("keel serve: pipeline")
    });
    let queued = Command::new(keel_path())
        .args(["run", "--partition", "2026-03-15", "--detach"])
        .arg(root.join("keel.toml"))
        .output()
        .unwrap();
    assert_eq!(queued.status.code(), Some(0), "{queued:?}");
    let of_kind = |kind: &str| -> Vec<Value> {
        command_sink_lines(&root)
            .into_iter()
            .filter(|line| line["keel"]["kind"] == kind)
            .collect()
    };
    wait_for("the anomaly's alert", Duration::from_secs(30), || {
        !of_kind("anomaly").is_empty()
    });
    let anomaly = &of_kind("anomaly")[0]["keel"];
    assert_eq!(anomaly["subject"], "grading accuracy");
    assert_eq!(anomaly["partition"], "2026-03-15");
    let detail = anomaly["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("grading: accuracy 0.19, usual 0.4") && detail.ends_with("over 21 days"),
        "{detail}"
    );
    let warned = of_kind("check_warned");
    assert_eq!(warned.len(), 1, "{warned:#?}");
    assert_eq!(
        warned[0]["keel"]["detail"],
        "grading: accuracy 0.19 is below the minimum 0.3"
    );
    // Told once: the next ticks find nothing new.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(of_kind("anomaly").len(), 1);
    assert!(serve_log().contains("warn check failed: accuracy 0.19 is below the minimum 0.3"));
}
