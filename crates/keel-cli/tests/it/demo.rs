//! `keel demo` end to end: the reference pipeline against a faulty feed, through the binary.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::api::request;
use crate::support::{Served, keel, keel_path, wait_for};

#[test]
fn the_demo_runs_three_dates_heals_the_faults_and_leaves_its_state() {
    let dir = tempfile::tempdir().unwrap();
    let output = keel()
        .args(["demo", "--days", "3", "--start", "2026-11-09", "--dir"])
        .arg(dir.path())
        .timeout(std::time::Duration::from_secs(120))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for date in ["2026-11-09", "2026-11-10", "2026-11-11"] {
        assert!(
            stdout.contains(&format!("{date}  succeeded")),
            "{date} did not succeed:\n{stdout}"
        );
    }
    // 2026-11-11 is switched to a day without games by the default faults.
    assert!(
        stdout.contains("2026-11-11  succeeded 22 tasks") && stdout.contains("no games"),
        "{stdout}"
    );
    // Late props are not ready on the first checks: the sensor waited for them, and
    // scrape_props started only then.
    assert!(
        stdout.contains("waited for scrape_props: its sensor said not ready"),
        "{stdout}"
    );
    // It says how to inspect the state, with commands that run as printed, pasted in a shell
    // started elsewhere: the keel under test is not on PATH, so they name it by its path.
    let hints: Vec<&str> = stdout
        .split("inspect it with:\n")
        .nth(1)
        .unwrap_or_default()
        .lines()
        .map_while(|line| line.strip_prefix("  "))
        .collect();
    assert_eq!(hints.len(), 4, "{stdout}");
    let elsewhere = tempfile::tempdir().unwrap();
    for hint in hints {
        let pasted = std::process::Command::new("sh")
            .args(["-c", hint])
            .current_dir(elsewhere.path())
            .output()
            .unwrap();
        assert!(
            pasted.status.success(),
            "{hint}: {}",
            String::from_utf8_lossy(&pasted.stderr)
        );
    }

    // The state is left in place, and `keel status` reads it.
    let pipeline = dir.path().join("keel.toml");
    let status = keel()
        .args(["status", "--json"])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert!(status.status.success());
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let runs = json["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3);
    for run in runs {
        assert_eq!(run["state"], "succeeded", "{run}");
        assert_eq!(run["tasks"].as_array().unwrap().len(), 22);
    }
    // The picks were exported for the game days.
    assert!(dir.path().join("exports").read_dir().unwrap().count() >= 2);
    // No feed is left running: its port is closed once the demo has exited.
    let log = std::fs::read_to_string(dir.path().join("feed.log")).unwrap();
    let address = log
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or("")
        .trim_end_matches(['.', ',', ';']);
    if !address.is_empty() {
        assert!(
            std::net::TcpStream::connect(address).is_err(),
            "the feed on {address} is still listening"
        );
    }
}

/// `keel demo --serve` leaves the hoops pipeline running under `keel serve` on an accelerated
/// clock, prints where to look, and answers there: `/ready` (its scheduler check allowing for
/// the faster clock), the runs its schedule started, and `/metrics` that Prometheus can parse.
/// An interrupt stops it cleanly, feed and all.
#[test]
fn demo_serve_runs_the_schedule_unattended_and_says_where_to_look() {
    let dir = tempfile::tempdir().unwrap();
    let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
    let mut demo = Command::new(keel_path())
        .args([
            "demo",
            "--serve",
            "--speed",
            "720",
            "--addr",
            "127.0.0.1:0",
            "--days",
            "2",
            "--dir",
        ])
        .arg(dir.path().join("demo"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let stdout = BufReader::new(demo.stdout.take().unwrap());
    let demo = Served(demo);
    let mut printed = Vec::new();
    for line in stdout.lines() {
        let line = line.unwrap();
        let done = line.starts_with("stop with Ctrl-C");
        printed.push(line);
        if done {
            break;
        }
    }
    let printed = printed.join("\n");
    let ready_line = printed
        .lines()
        .find(|line| line.trim_end().ends_with("readiness, with its checks"))
        .unwrap_or_else(|| panic!("no /ready URL in:\n{printed}"));
    let url = ready_line.split_whitespace().next().unwrap();
    let addr = url
        .strip_prefix("http://")
        .and_then(|rest| rest.strip_suffix("/ready"))
        .unwrap_or_else(|| panic!("{url:?} is not http://ADDR/ready"))
        .to_string();
    assert!(
        printed.contains(&format!("http://{addr}/metrics")),
        "{printed}"
    );
    wait_for("/ready to answer 200", Duration::from_secs(60), || {
        request(&addr, "GET", "/ready", &[], None).status == 200
    });
    // The two dates ran before serve started, and the dashboard opens on them.
    let root = request(&addr, "GET", "/", &[], None);
    assert_eq!(root.status, 303, "{}", root.text());
    let grid = request(&addr, "GET", "/ui/hoops", &[], None);
    assert_eq!(grid.status, 200);
    let page = grid.text();
    for date in ["2026-11-08", "2026-11-09"] {
        assert!(
            page.contains(&format!(r#"<tr data-partition="{date}">"#)),
            "no row of {date} in the grid:\n{page}"
        );
    }
    // A day is 120 s: the first 06:00 run (of the date after them, 2026-11-10) comes 5 s after
    // the start.
    wait_for("a scheduled run to finish", Duration::from_secs(90), || {
        let runs = request(&addr, "GET", "/api/pipelines/hoops/runs", &[], None).json();
        runs["runs"].as_array().is_some_and(|runs| {
            runs.iter()
                .any(|run| run["partition"] == "2026-11-10" && run["state"] == "succeeded")
        })
    });
    let metrics = request(&addr, "GET", "/metrics", &[], None);
    assert_eq!(metrics.status, 200);
    let text = metrics.text();
    let lines = text.lines().map(|line| Ok(line.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("/metrics parses");
    let finished: f64 = scrape
        .samples
        .iter()
        .filter(|sample| sample.metric == "keel_runs_finished_total")
        .filter(|sample| sample.labels.get("pipeline") == Some("hoops"))
        .map(|sample| match sample.value {
            prometheus_parse::Value::Counter(count) | prometheus_parse::Value::Untyped(count) => {
                count
            }
            _ => 0.0,
        })
        .sum();
    assert!(finished >= 1.0, "{text}");
    // An interrupt stops serve through the demo, which then exits with serve's code.
    let mut demo = demo;
    // SAFETY: signalling the child this test started.
    unsafe { libc::kill(demo.0.id() as i32, libc::SIGINT) };
    let status = demo.0.wait().unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "{}",
        std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default()
    );
}

/// `keel demo --http`: the same pipeline as HTTP tasks calling a `hoops serve` the demo starts,
/// with a token generated for the run. Every date succeeds, the service answered every task
/// over pooled connections, and it is gone once the demo has exited. The port keel-http.toml
/// names is held here (or by someone else), so the demo must move the service and its copy of
/// the pipeline to a free one.
#[test]
fn the_demo_over_http_runs_the_dates_against_hoops_serve_on_pooled_connections() {
    let _taken = std::net::TcpListener::bind(hoops::cli::SERVICE_ADDR);
    let dir = tempfile::tempdir().unwrap();
    let output = keel()
        .args([
            "demo",
            "--http",
            "--days",
            "2",
            "--start",
            "2026-11-09",
            "--dir",
        ])
        .arg(dir.path())
        .timeout(std::time::Duration::from_secs(120))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "demo --http failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("as HTTP tasks"), "{stdout}");
    for date in ["2026-11-09", "2026-11-10"] {
        assert!(
            stdout.contains(&format!("{date}  succeeded 22 tasks")),
            "{date} did not succeed:\n{stdout}"
        );
    }
    // "hoops serve answered 44 requests (200 ×43, 503 ×1) over 4 connections"
    let served = stdout
        .lines()
        .find_map(|line| line.strip_prefix("hoops serve answered "))
        .unwrap_or_else(|| panic!("no service summary in:\n{stdout}"));
    let number = |text: &str| -> u64 { text.split_whitespace().next().unwrap().parse().unwrap() };
    let requests = number(served);
    let connections = number(served.rsplit(" over ").next().unwrap());
    assert!(requests >= 2 * 21, "{served}");
    assert!(
        (1..=10).contains(&connections),
        "the pool did not reuse its connections: {served}"
    );
    let address = stdout
        .lines()
        .find_map(|line| line.strip_prefix("hoops serve on "))
        .and_then(|rest| rest.split([',', ' ']).next())
        .unwrap_or_else(|| panic!("no service address in:\n{stdout}"))
        .to_string();

    // The runs are in the state of keel-http.toml, each task an HTTP task that succeeded.
    let pipeline = dir.path().join("keel-http.toml");
    let status = keel()
        .args(["status", "--json"])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert!(status.status.success());
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let runs = json["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{json}");
    for run in runs {
        assert_eq!(run["state"], "succeeded", "{run}");
        assert_eq!(run["tasks"].as_array().unwrap().len(), 22);
    }
    assert!(dir.path().join("exports").read_dir().unwrap().count() >= 1);
    assert!(
        stdout.contains(&format!("({} was taken;", hoops::cli::SERVICE_ADDR)),
        "{stdout}"
    );
    assert_ne!(address, hoops::cli::SERVICE_ADDR);
    let copy = std::fs::read_to_string(&pipeline).unwrap();
    assert!(
        copy.contains(&format!("http://{address}/process/{{task}}")),
        "{copy}"
    );
    // The service required the token the demo generated, and none is left listening.
    let log = std::fs::read_to_string(dir.path().join("service.log")).unwrap();
    assert!(log.contains("bearer token required"), "{log}");
    assert!(
        std::net::TcpStream::connect(&address).is_err(),
        "hoops serve on {address} is still listening"
    );
}
