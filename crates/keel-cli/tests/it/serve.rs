//! `keel serve` end to end: the real binary on an accelerated clock (`faketime`, two hours of
//! the pipeline's time a second), living through days of a daily schedule across the spring
//! daylight-saving change, killed with SIGKILL while a scheduled run's task runs, and started
//! again later; and `keel run` handing its runs to a serving Keel.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{keel_path, write_pipeline};

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
fn spawn_serve(dir: &Path, start: &str, log: &str) -> Child {
    let log = std::fs::File::create(dir.join(log)).unwrap();
    Command::new("faketime")
        .arg("-f")
        .arg(format!("@{start} x7200"))
        .arg(keel_path())
        .arg("serve")
        .arg(dir.join("keel.toml"))
        .env("TZ", "UTC")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

fn wait_for(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
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
    ["serve1.log", "serve2.log"]
        .iter()
        .map(|name| std::fs::read_to_string(dir.join(name)).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// A daily 02:30 schedule in New York for the day before, from Saturday 2026-03-07 00:00
/// (EST) to Monday 2026-03-09 04:00 (EDT): it fires on the 7th at 02:30 EST, on the 8th at
/// 03:00 EDT (02:30 does not exist that night) and on the 9th at 02:30 EDT. The first Keel is
/// killed with SIGKILL while the first run's task runs; the second starts hours of pipeline time
/// later, adopts that attempt, and catches up. Every partition runs exactly once.
#[test]
fn serve_runs_each_scheduled_day_once_across_dst_and_a_kill() {
    if !faketime_available() {
        eprintln!("skipped: faketime is not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root: PathBuf = dir.path().to_path_buf();
    // Each task appends to the ledger when it starts and ends. The first run's task waits for
    // `go`, so that Keel can be killed while it runs.
    write_pipeline(
        &root,
        r#"[pipeline]
name = "daily"
timezone = "America/New_York"
schedule = "30 2 * * *"
schedule_partition = "-1d"
catchup = "all"

[defaults]
timeout = "30d"
deadline = "30d"

[phases.load]
[tasks.load]
phase = "load"
command = ["sh", "-c", "echo \"start {date} $$\" >> ledger; if [ {date} = 2026-03-06 ]; then while [ ! -e go ]; do sleep 36; done; fi; echo \"end {date} $$\" >> ledger"]
"#,
    );
    let mut first = spawn_serve(&root, "2026-03-07 05:00:00", "serve1.log");
    wait_for(
        "the first scheduled task to start",
        Duration::from_secs(30),
        || {
            ledger(&root)
                .iter()
                .any(|line| line.starts_with("start 2026-03-06"))
        },
    );
    // SIGKILL, while the attempt runs.
    first.kill().unwrap();
    first.wait().unwrap();
    // Keel comes back in the afternoon; the attempt's supervisor kept the task alive.
    let mut second = spawn_serve(&root, "2026-03-07 18:00:00", "serve2.log");
    wait_for(
        "the second keel to take the run up",
        Duration::from_secs(30),
        || {
            std::fs::read_to_string(root.join("serve2.log"))
                .unwrap_or_default()
                .contains("taken up")
        },
    );
    std::fs::write(root.join("go"), "").unwrap();
    wait_for(
        "three partitions to succeed",
        Duration::from_secs(90),
        || {
            let runs = status(&root)["runs"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            runs.len() >= 3 && runs.iter().all(|run| run["state"] == "succeeded")
        },
    );
    // A little more pipeline time: no fire comes twice.
    std::thread::sleep(Duration::from_secs(2));
    second.kill().unwrap();
    second.wait().unwrap();

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
        let task = &run["tasks"][0];
        assert_eq!(task["outcome"], "succeeded", "{run}");
        assert_eq!(
            task["attempts"], 1,
            "the killed Keel's attempt was adopted, not run again: {run}"
        );
    }
    let lines = ledger(&root);
    for partition in ["2026-03-06", "2026-03-07", "2026-03-08"] {
        let starts = lines
            .iter()
            .filter(|line| line.starts_with(&format!("start {partition}")))
            .count();
        let ends = lines
            .iter()
            .filter(|line| line.starts_with(&format!("end {partition}")))
            .count();
        assert_eq!((starts, ends), (1, 1), "{partition} ran once: {lines:?}");
    }
    // The fires, as the log tells them, at their local times.
    let log = logs(&root);
    for fired in [
        "2026-03-07T07:30", // 02:30 EST
        "2026-03-08T07:00", // 03:00 EDT, the end of the skipped hour
        "2026-03-09T06:30", // 02:30 EDT
    ] {
        assert!(
            log.lines()
                .any(|line| line.starts_with(fired) && line.contains("the schedule fired")),
            "a fire at {fired}Z:\n{log}"
        );
    }
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
        .arg("serve")
        .arg(root.join("keel.toml"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
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
    unsafe { libc::kill(serve.id() as i32, libc::SIGTERM) };
    let code = serve.wait().unwrap().code();
    assert_eq!(
        code,
        Some(0),
        "{}",
        std::fs::read_to_string(root.join("serve.log")).unwrap()
    );
}
