//! The feed's faults, and how the tasks answer them with the task contract's outcomes.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::Env;
use hoops::faults::Faults;
use hoops::feed::Feed;
use hoops::http::Client;
use hoops::season::{Season, Source};
use hoops::tasks::PIPELINE;
use serde_json::json;

/// A game day of seed 7.
const DAY: &str = "2026-10-21";

fn client(env: &Env) -> Client {
    Client::new(&env.feed.url(), Duration::from_secs(5)).unwrap()
}

#[test]
fn a_date_without_games_is_no_data_for_every_task() {
    // A game day switched off by the fault, Thanksgiving, and a date outside the season.
    let env = Env::new(&format!("no_games={DAY}"));
    for date in [DAY, "2026-11-26", "2027-07-01"] {
        for (task, outcome) in env.pipeline(date) {
            assert_eq!(outcome.code, 0, "{task} {date}: {outcome:#?}");
            assert_eq!(
                outcome.result,
                Some(
                    json!({"outcome": "no_data", "message": format!("no games on {date}"), "rows": 0})
                ),
                "{task} {date}"
            );
        }
        assert!(!env.export_dir().join(format!("picks-{date}.json")).exists());
    }
}

#[test]
fn a_429_exits_75() {
    let env = Env::new("429=1,retry_after=0");
    let outcome = env.task("scrape_schedule", DAY);
    assert_eq!(outcome.code, 75, "{outcome:#?}");
    let message = outcome.result.unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains("429"), "{message}");
    assert_eq!(env.run(&["ready", "schedule", DAY]).code, 75);
}

#[test]
fn a_short_retry_after_is_waited_out_once_before_exiting_75() {
    let mut env = Env::new("429=1,retry_after=1");
    env.extra.push(("HOOPS_RETRY_AFTER_CAP".into(), "2".into()));
    let started = Instant::now();
    let outcome = env.task("scrape_props", DAY);
    assert_eq!(outcome.code, 75, "{outcome:#?}");
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(
        outcome.stderr.contains("waiting 1s as asked"),
        "{}",
        outcome.stderr
    );
}

#[test]
fn the_control_endpoint_flips_faults_during_a_run() {
    let env = Env::new("");
    let mut http = client(&env);
    assert_eq!(env.task("scrape_schedule", DAY).code, 0);

    let resp = http.request("POST", "/control/faults", b"500=1").unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json_body().unwrap(), json!({"faults": "500=1"}));
    assert_eq!(
        env.task("scrape_schedule", DAY).code,
        1,
        "a 500 is transient"
    );

    let resp = http
        .request(
            "PUT",
            "/control/faults",
            br#"{"spec": "429=1,retry_after=0"}"#,
        )
        .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(env.task("scrape_schedule", DAY).code, 75);
    let current = http.get("/control/faults").unwrap().json_body().unwrap();
    assert_eq!(current, json!({"faults": "429=1,retry_after=0"}));

    let bad = http
        .request("POST", "/control/faults", b"explode=1")
        .unwrap();
    assert_eq!(bad.status, 400);
    assert_eq!(
        env.feed.faults().to_string(),
        "429=1,retry_after=0",
        "a bad SPEC changes nothing"
    );

    assert_eq!(
        http.request("DELETE", "/control/faults", b"")
            .unwrap()
            .status,
        200
    );
    assert_eq!(env.task("scrape_schedule", DAY).code, 0);

    // The control routes are never faulted, and the stats count what happened.
    env.feed.set_faults(Faults::parse("500=1,429=1").unwrap());
    let stats = http.get("/control/stats").unwrap().json_body().unwrap();
    assert_eq!(stats["by_status"]["500"], 1);
    // The 429 run asked twice: a Retry-After of 0 s is within the cap, so it is waited out once.
    assert_eq!(stats["by_status"]["429"], 2);
    assert_eq!(http.get("/health").unwrap().status, 200);
    // One keep-alive connection carried every request above.
    assert_eq!(http.connects, 1);
}

#[test]
fn late_props_are_not_ready_until_posted() {
    let env = Env::new("late_props=2");
    assert_eq!(env.run(&["ready", "props", DAY]).code, 75);
    let early = env.task("scrape_props", DAY);
    assert_eq!(early.code, 75, "{early:#?}");
    assert_eq!(env.run(&["ready", "props", DAY]).code, 0);
    assert_eq!(env.task("scrape_props", DAY).code, 0);
    // Other sources were never late.
    assert_eq!(env.run(&["ready", "boxscores", DAY]).code, 0);

    env.feed
        .set_faults(Faults::parse("late_props=300ms").unwrap());
    assert_eq!(env.run(&["ready", "props", DAY]).code, 75);
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(env.run(&["ready", "props", DAY]).code, 0);
}

#[test]
fn a_missing_source_is_permanent_and_the_rest_of_the_pipeline_copes() {
    let env = Env::new(&format!("missing=injuries@{DAY}"));
    let all = env.pipeline(DAY);
    for (task, outcome) in &all {
        let expected = match task.as_str() {
            "scrape_injuries" => 65,
            // Keel would mark it upstream_failed; run by hand it waits for its input.
            "load_injuries" => 75,
            _ => 0,
        };
        assert_eq!(outcome.code, expected, "{task}: {outcome:#?}");
    }
    let scrape = &all.iter().find(|(t, _)| t == "scrape_injuries").unwrap().1;
    assert!(
        scrape.stderr.contains("missing from the feed"),
        "{}",
        scrape.stderr
    );
    let context = &all
        .iter()
        .find(|(t, _)| t == "upcoming_player_context")
        .unwrap()
        .1;
    let message = context.result.as_ref().unwrap()["message"]
        .as_str()
        .unwrap();
    assert!(message.contains("no injury report"), "{message}");
    assert_eq!(all.len(), PIPELINE.len());
}

#[test]
fn latency_slows_data_but_not_control() {
    let env = Env::new("latency=80ms");
    let mut http = client(&env);
    let started = Instant::now();
    assert_eq!(http.get(&format!("/scoreboard/{DAY}")).unwrap().status, 200);
    assert!(started.elapsed() >= Duration::from_millis(80));
    let started = Instant::now();
    assert_eq!(http.get("/control/faults").unwrap().status, 200);
    assert!(started.elapsed() < Duration::from_millis(80));
}

#[test]
fn fault_decisions_are_deterministic_from_the_seed() {
    let statuses = || {
        let feed = Feed::start(
            "127.0.0.1:0",
            7,
            Faults::parse("429=0.3,500=0.2").unwrap(),
            false,
        )
        .unwrap();
        let mut http = Client::new(&feed.url(), Duration::from_secs(5)).unwrap();
        (0..40)
            .map(|_| http.get(&format!("/props/{DAY}")).unwrap().status)
            .collect::<Vec<_>>()
    };
    let first = statuses();
    assert_eq!(first, statuses());
    for status in [200, 429, 500] {
        assert!(first.contains(&status), "{first:?}");
    }
}

#[test]
fn bad_input_is_permanent() {
    let env = Env::new("");
    for args in [
        &["predictions", "2026-13-01"][..],
        &["scrape_props", "yesterday"],
        &["ready", "weather", DAY],
        &["ready", "props", "2026-02-30"],
        &["no_such_task", DAY],
        &["predictions"],
    ] {
        let outcome = env.run(args);
        assert_eq!(outcome.code, 65, "{args:?}: {outcome:#?}");
    }
    // Only loopback: refused before any connection is attempted.
    let mut cmd = env.command(&["scrape_schedule", DAY]);
    cmd.env("HOOPS_FEED", "http://10.1.2.3:80");
    let outcome = common::run_bounded(cmd, &env.dir.path().join("none.json"));
    assert_eq!(outcome.code, 65, "{outcome:#?}");
    assert!(outcome.stderr.contains("loopback"), "{}", outcome.stderr);
    // A task whose input has not been produced yet is not ready, not failed.
    assert_eq!(env.task("predictions", DAY).code, 75);
    assert_eq!(env.task("load_props", DAY).code, 75);
}

#[test]
fn scrapes_touch_the_heartbeat_file() {
    let mut env = Env::new("");
    let beat = env.dir.path().join("heartbeat");
    env.extra
        .push(("KEEL_HEARTBEAT".into(), beat.display().to_string()));
    assert_eq!(env.task("scrape_boxscores", DAY).code, 0);
    assert!(beat.exists());
}

#[test]
fn the_feed_binary_serves_on_port_zero_and_prints_its_address() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hoops"))
        .args([
            "feed",
            "--addr",
            "127.0.0.1:0",
            "--seed",
            "7",
            "--faults",
            "latency=1ms",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(20));
    let checked = (|| {
        let line = line.map_err(|e| format!("no address line: {e}"))?;
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .ok_or_else(|| format!("first line is {line:?}"))?
            .to_string();
        let mut http = Client::new(&format!("http://{addr}"), Duration::from_secs(5))?;
        let resp = http
            .get("/scoreboard/2026-11-03")
            .map_err(|e| e.to_string())?;
        let expected =
            Season::generate(7).view(Source::Scoreboard, "2026-11-03".parse().unwrap(), false);
        if resp.status != 200 || resp.json_body()? != expected {
            return Err(format!("unexpected answer {resp:?}"));
        }
        let faults = http
            .get("/control/faults")
            .map_err(|e| e.to_string())?
            .json_body()?;
        if faults != json!({"faults": "latency=1ms"}) {
            return Err(format!("faults {faults}"));
        }
        Ok(())
    })();
    let _ = child.kill();
    let _ = child.wait();
    checked.unwrap();
}

#[test]
fn the_feed_refuses_non_loopback_addresses() {
    let out = Command::new(env!("CARGO_BIN_EXE_hoops"))
        .args(["feed", "--addr", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("loopback"));
}

#[test]
fn the_feed_stops_when_its_stdin_closes_if_asked() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hoops"))
        .args(["feed", "--addr", "127.0.0.1:0", "--exit-on-eof"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
    drop(child.stdin.take());
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(line.starts_with("listening on 127.0.0.1:"), "{line:?}");
    assert!(status.expect("the feed exited on EOF").success());
}
