//! `keel serve` end to end: the real binary on an accelerated clock (`faketime`, two hours of
//! the pipeline's time a second), living through days of a daily schedule across the spring
//! daylight-saving change, killed with SIGKILL while a scheduled run's task runs, and started
//! again later; and `keel run` handing its runs to a serving Keel.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::{Served, keel_path, wait_for, write_pipeline};

/// Whether `faketime` is installed; `.ci/run` installs it, so under CI its absence fails.
fn faketime_available() -> bool {
    let found = Command::new("faketime")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !found && std::env::var_os("CI").is_some() {
        panic!("faketime is not installed, and CI must run this test (apt-get install faketime)");
    }
    found
}

/// `keel serve` under faketime, starting at `start` (UTC) with the clock 7,200 times as fast.
fn spawn_serve(dir: &Path, start: &str, log: &str) -> Served {
    let log = std::fs::File::create(dir.join(log)).unwrap();
    Command::new("faketime")
        .arg("-f")
        .arg(format!("@{start} x7200"))
        .arg(keel_path())
        .args(["serve", "--addr", "127.0.0.1:0"])
        .arg(dir.join("keel.toml"))
        .env("TZ", "UTC")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .map(Served)
        .unwrap()
}

/// The `keel serve` that `faketime` started: faketime forks it and waits, so killing the
/// `faketime` process would leave Keel running.
fn keel_under(faketime: &Child) -> i32 {
    let path = format!("/proc/{}/task/{}/children", faketime.id(), faketime.id());
    let mut found = None;
    wait_for("faketime to start keel", Duration::from_secs(10), || {
        found = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| text.split_whitespace().next()?.parse().ok());
        found.is_some()
    });
    found.unwrap()
}

/// SIGKILL to the `keel serve` under `faketime`, then waits for both to end.
fn kill_keel(faketime: &mut Served) {
    let keel = keel_under(&faketime.0);
    // SAFETY: killing the process this test started.
    unsafe { libc::kill(keel, libc::SIGKILL) };
    faketime.0.wait().unwrap();
}

fn ledger(dir: &Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("ledger"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn status(dir: &Path) -> Value {
    let output = Command::new(keel_path())
        .args(["status", "--all", "--json"])
        .arg(dir.join("keel.toml"))
        .output()
        .unwrap();
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "status --json: {error}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn logs(dir: &Path) -> String {
    ["serve1.log", "serve2.log", "serve3.log"]
        .iter()
        .map(|name| std::fs::read_to_string(dir.join(name)).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// A daily 02:30 schedule in New York for the day before, from Saturday 2026-03-07 00:00
/// (EST) to Monday 2026-03-09 07:00 (EDT): it fires on the 7th at 02:30 EST, on the 8th at
/// 03:00 EDT (02:30 does not exist that night) and on the 9th at 02:30 EDT. Keel is killed with
/// SIGKILL twice on the way and started again hours of pipeline time later each time; every
/// scheduled day runs exactly once, and a restart fires nothing again.
///
/// Each Keel runs on its own accelerated clock, so no attempt is left running across a kill
/// here (a supervisor would keep the clock of the Keel that started it); killing Keel while
/// attempts run is what `crash.rs` and `storm.rs` do on the real clock.
#[test]
fn serve_runs_each_scheduled_day_once_across_dst_and_kills() {
    if !faketime_available() {
        eprintln!("skipped: faketime is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root: PathBuf = dir.path().to_path_buf();
    write_pipeline(
        &root,
        r#"[pipeline]
name = "daily"
timezone = "America/New_York"
schedule = "30 2 * * *"
schedule_partition = "-1d"
catchup = "all"

[phases.load]
[tasks.load]
phase = "load"
command = ["sh", "-c", "echo \"start {date} $$\" >> ledger; echo \"end {date} $$\" >> ledger"]
"#,
    );
    let ended = |partition: &str| {
        let line = format!("end {partition}");
        ledger(&root).iter().any(|entry| entry.starts_with(&line))
    };
    // 05:00Z is midnight in New York. The first fire comes 2.5 pipeline hours later.
    let mut first = spawn_serve(&root, "2026-03-07 05:00:00", "serve1.log");
    wait_for("the first scheduled run", Duration::from_secs(60), || {
        ended("2026-03-06")
    });
    kill_keel(&mut first);
    // Back in the evening: the night's fire (03:00 EDT) and the next one (02:30 EDT).
    let mut second = spawn_serve(&root, "2026-03-07 20:00:00", "serve2.log");
    wait_for("the second scheduled run", Duration::from_secs(60), || {
        ended("2026-03-07")
    });
    kill_keel(&mut second);
    // Down through the next fire: the third Keel catches up on it when it starts.
    let mut third = spawn_serve(&root, "2026-03-09 09:00:00", "serve3.log");
    wait_for("the missed run", Duration::from_secs(60), || {
        ended("2026-03-08")
    });
    // Some more pipeline hours: nothing fires again.
    std::thread::sleep(Duration::from_secs(2));
    kill_keel(&mut third);

    let status = status(&root);
    let runs = status["runs"].as_array().unwrap();
    let mut partitions: Vec<&str> = runs
        .iter()
        .map(|run| run["partition"].as_str().unwrap())
        .collect();
    partitions.sort_unstable();
    assert_eq!(
        partitions,
        ["2026-03-06", "2026-03-07", "2026-03-08"],
        "one run per scheduled day\n{}",
        logs(&root)
    );
    for run in runs {
        assert_eq!(run["state"], "succeeded", "{run}");
        assert_eq!(run["tasks"][0]["attempts"], 1, "{run}");
    }
    let lines = ledger(&root);
    assert_eq!(lines.len(), 6, "each day's task ran once: {lines:?}");
    // The fires, as the log tells them, at their local times: 02:30 EST, 03:00 EDT (the end
    // of the skipped hour), and the missed 02:30 EDT caught up at the third start.
    let log = logs(&root);
    for fired in [
        "2026-03-06: the schedule fired for 2026-03-07 02:30 EST",
        "2026-03-07: the schedule fired for 2026-03-08 03:00 EDT",
        "2026-03-08: the schedule fired for 2026-03-09 02:30 EDT",
    ] {
        assert_eq!(
            log.lines().filter(|line| line.contains(fired)).count(),
            1,
            "{fired}, once:\n{log}"
        );
    }
    assert!(
        log.lines().any(|line| line.starts_with("2026-03-09T09:0")
            && line.contains("2026-03-08: the schedule fired")),
        "the missed fire is caught up when the third Keel starts:\n{log}"
    );
}

/// `keel run` while `keel serve` holds the state hands its run over and follows it to the end,
/// with the same table and exit code as if it ran it; `--detach` only queues.
#[test]
fn keel_run_hands_its_run_to_a_serving_keel_and_follows_it() {
    let dir = tempfile::tempdir().unwrap();
    let root: PathBuf = dir.path().to_path_buf();
    write_pipeline(
        &root,
        r#"[pipeline]
name = "handed"
partition = "none"

[phases.a]
[tasks.ok]
phase = "a"
command = ["sh", "-c", "echo $PPID >> ran"]

[tasks.bad]
phase = "a"
command = ["sh", "-c", "exit 65"]
"#,
    );
    let log = std::fs::File::create(root.join("serve.log")).unwrap();
    let mut serve = Command::new(keel_path())
        .args(["serve", "--addr", "127.0.0.1:0"])
        .arg(root.join("keel.toml"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .map(Served)
        .unwrap();
    wait_for("keel serve to start", Duration::from_secs(30), || {
        std::fs::read_to_string(root.join("serve.log"))
            .unwrap_or_default()
            .contains("keel serve: pipeline")
    });
    let run = Command::new(keel_path())
        .args(["run", "--partition", "none"])
        .arg(root.join("keel.toml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(
        run.status.code(),
        Some(1),
        "a failed task fails the run\n{stdout}\n{stderr}"
    );
    assert!(stderr.contains("keel serve holds this state"), "{stderr}");
    assert!(
        stdout.contains("failed_permanent") && stdout.contains("succeeded"),
        "the run's table: {stdout}"
    );
    let detached = Command::new(keel_path())
        .args(["run", "--partition", "none", "--rerun", "--detach"])
        .arg(root.join("keel.toml"))
        .output()
        .unwrap();
    assert_eq!(detached.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&detached.stdout).contains("queued run 2"));
    wait_for("the queued run to be run", Duration::from_secs(30), || {
        std::fs::read_to_string(root.join("ran"))
            .unwrap_or_default()
            .lines()
            .count()
            == 2
    });
    // SIGTERM stops serve cleanly.
    // SAFETY: signalling the child this test started.
    unsafe { libc::kill(serve.0.id() as i32, libc::SIGTERM) };
    let code = serve.0.wait().unwrap().code();
    assert_eq!(
        code,
        Some(0),
        "{}",
        std::fs::read_to_string(root.join("serve.log")).unwrap()
    );
}
