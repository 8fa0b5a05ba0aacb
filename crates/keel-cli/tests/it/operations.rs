//! Recovery and safety of operations, end to end: reading and cancelling with a broken or
//! missing pipeline file, `--only` on a partition that never ran, and a closed output pipe.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{keel_path, write_pipeline};

const DAY: &str = "2026-01-18";

fn pipeline(tasks: &str) -> String {
    format!(
        r#"[pipeline]
name = "ops"
timezone = "UTC"
partition = "date"

[defaults]
timeout = "20s"
retries = {{ attempts = 1, initial = "10ms", max = "50ms" }}

[phases.main]

{tasks}"#
    )
}

/// What one `keel` invocation did.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn transcript(&self) -> String {
        format!(
            "exit {:?}\n--- stderr\n{}--- stdout\n{}",
            self.code, self.stderr, self.stdout
        )
    }
}

/// `keel ARGS…` run in `dir`, bounded in time.
fn keel_in(dir: &Path, args: &[&str]) -> Ran {
    let output = assert_cmd::Command::new(keel_path())
        .current_dir(dir)
        .args(args)
        .timeout(Duration::from_secs(30))
        .output()
        .unwrap();
    Ran {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn status_json(dir: &Path, partition: &str) -> Value {
    let ran = keel_in(dir, &["status", "--partition", partition, "--json"]);
    assert_eq!(ran.code, Some(0), "{}", ran.transcript());
    let document: Value = serde_json::from_str(&ran.stdout).unwrap();
    document["runs"][0].clone()
}

fn outcome(run: &Value, task: &str) -> Value {
    run["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["name"] == task)
        .map(|row| row["outcome"].clone())
        .unwrap_or(Value::Null)
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        !matches!(state, Some('Z') | Some('X') | None)
    })
}

/// A process this test started; killed on drop so a failing test leaves nothing behind.
struct Background(Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Kills the `sleep` whose pid a task wrote, on drop, in case Keel failed to.
struct Reap(PathBuf);

impl Drop for Reap {
    fn drop(&mut self) {
        if let Some(pid) = std::fs::read_to_string(&self.0)
            .ok()
            .and_then(|text| text.trim().parse::<i32>().ok())
        {
            let command = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if alive(pid as u32) && String::from_utf8_lossy(&command).contains("sleep") {
                // SAFETY: kill(2) on the pid this test's own task wrote.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// The read commands and what a breakage leaves them showing, with a file that is `broken`.
fn assert_reads_without_file(dir: &Path, what: &str) {
    let status = keel_in(dir, &["status"]);
    assert_eq!(status.code, Some(0), "{what}: {}", status.transcript());
    assert!(
        status
            .stderr
            .starts_with("warning: keel.toml does not validate ("),
        "{what}: {}",
        status.transcript()
    );
    assert!(
        status.stdout.contains(DAY),
        "{what}: {}",
        status.transcript()
    );
    let run = status_json(dir, DAY);
    assert_eq!(run["state"], "succeeded", "{what}: {run:#}");
    assert_eq!(outcome(&run, "hello"), "succeeded", "{what}: {run:#}");

    let logs = keel_in(dir, &["logs", "hello", "--partition", DAY]);
    assert_eq!(logs.code, Some(0), "{what}: {}", logs.transcript());
    assert_eq!(logs.stdout, "hello from keel\n", "{what}");

    let events = keel_in(dir, &["events"]);
    assert_eq!(events.code, Some(0), "{what}: {}", events.transcript());
    assert!(
        events.stdout.contains("hello: attempt 1 succeeded"),
        "{what}: {}",
        events.transcript()
    );

    let history = keel_in(dir, &["history", "hello"]);
    assert_eq!(history.code, Some(0), "{what}: {}", history.transcript());
    assert!(
        history.stdout.contains("task hello · phase main"),
        "{what}: {}",
        history.transcript()
    );
}

#[test]
fn status_logs_events_and_history_read_the_state_with_a_broken_or_missing_file() {
    let project = tempfile::tempdir().unwrap();
    let dir = project.path();
    let valid = pipeline(
        r#"[tasks.hello]
phase = "main"
command = ["sh", "-c", "echo hello from keel"]
"#,
    );
    write_pipeline(dir, &valid);
    let ran = keel_in(dir, &["run", "--partition", DAY]);
    assert_eq!(ran.code, Some(0), "{}", ran.transcript());

    // A file that is still TOML, and one that is not: the state is read either way.
    write_pipeline(dir, &valid.replace("timezone", "timezon"));
    assert_reads_without_file(dir, "an unknown field");
    write_pipeline(dir, "[pipeline\nname = ");
    assert_reads_without_file(dir, "a file that is not TOML");
    std::fs::remove_file(dir.join("keel.toml")).unwrap();
    assert_reads_without_file(dir, "a missing file");

    // Several pipelines in one state: which one is asked for, and `--pipeline-name` says it.
    let other = dir.join("other");
    std::fs::create_dir(&other).unwrap();
    let state = dir.join(".keel/state.db");
    let state = state.to_str().unwrap();
    write_pipeline(
        &other,
        &pipeline("[tasks.x]\nphase = \"main\"\ncommand = [\"true\"]\n")
            .replace("\"ops\"", "\"other\""),
    );
    let ran = keel_in(&other, &["run", "--state", state, "--partition", DAY]);
    assert_eq!(ran.code, Some(0), "{}", ran.transcript());
    let ambiguous = keel_in(dir, &["status"]);
    assert_eq!(ambiguous.code, Some(2), "{}", ambiguous.transcript());
    assert!(
        ambiguous.stderr.contains(
            "holds several pipelines (ops, other)\nhint: say which with --pipeline-name NAME"
        ),
        "{}",
        ambiguous.transcript()
    );
    let named = keel_in(
        dir,
        &["status", "--pipeline-name", "ops", "--partition", DAY],
    );
    assert_eq!(named.code, Some(0), "{}", named.transcript());
    assert!(named.stdout.contains("hello"), "{}", named.transcript());
}

#[test]
fn cancel_settles_a_run_whose_keel_died_when_the_file_no_longer_validates() {
    let project = tempfile::tempdir().unwrap();
    let dir = project.path();
    let valid = pipeline(
        r#"[tasks.long]
phase = "main"
command = ["sh", "-c", "echo $$ > long.pid; exec sleep 30"]

[tasks.later]
phase = "main"
command = ["touch", "later.ran"]
after = ["long"]
"#,
    );
    write_pipeline(dir, &valid);
    let _reap = Reap(dir.join("long.pid"));
    let mut run = Background(
        Command::new(keel_path())
            .current_dir(dir)
            .args(["run", "--partition", DAY])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until("long.pid", Duration::from_secs(10), || {
        std::fs::read_to_string(dir.join("long.pid"))
            .is_ok_and(|text| text.trim().parse::<u32>().is_ok())
    });
    let pid: u32 = std::fs::read_to_string(dir.join("long.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    run.0.kill().unwrap();
    run.0.wait().unwrap();

    write_pipeline(
        dir,
        &valid.replace("[tasks.later]", "[tasks.later]\nbogus = 1"),
    );
    let cancel = keel_in(dir, &["cancel", "--partition", DAY]);
    assert_eq!(cancel.code, Some(0), "{}", cancel.transcript());
    assert!(
        cancel
            .stderr
            .contains("warning: keel.toml does not validate"),
        "{}",
        cancel.transcript()
    );
    assert!(
        cancel.stdout.contains("is cancelled"),
        "{}",
        cancel.transcript()
    );
    let state = status_json(dir, DAY);
    assert_eq!(state["state"], "cancelled", "{state:#}");
    assert_eq!(outcome(&state, "long"), "cancelled", "{state:#}");
    assert_eq!(outcome(&state, "later"), "cancelled", "{state:#}");
    wait_until(
        "the orphaned attempt to stop",
        Duration::from_secs(5),
        || !alive(pid),
    );
    assert!(!dir.join("later.ran").exists());
}

/// `keel ARGS…` in `dir` with stdout and stderr into pipes whose reading ends are closed before
/// Keel writes: its exit code and whether it panicked can only be seen from the code.
fn keel_into_closed_pipes(dir: &Path, args: &[&str]) -> Option<i32> {
    let mut child = Command::new(keel_path())
        .current_dir(dir)
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    drop(child.stderr.take());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        assert!(Instant::now() < deadline, "keel {args:?} did not end");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Regression: `keel status | head -1` panicked with "failed printing to stdout" (exit 101).
#[test]
fn a_reader_that_closes_early_ends_keel_quietly_with_its_own_exit_code() {
    let project = tempfile::tempdir().unwrap();
    let dir = project.path();
    write_pipeline(
        dir,
        &pipeline(
            r#"[tasks.hello]
phase = "main"
command = ["sh", "-c", "echo hello from keel"]

[tasks.broken]
phase = "main"
command = ["sh", "-c", "exit 65"]
"#,
        ),
    );
    // The run still runs to the end and exits with its own code: 1, a task failed for good.
    assert_eq!(
        keel_into_closed_pipes(dir, &["run", "--from", "2026-01-16", "--to", DAY]),
        Some(1)
    );
    let run = status_json(dir, DAY);
    assert_eq!(outcome(&run, "hello"), "succeeded", "{run:#}");
    assert_eq!(outcome(&run, "broken"), "failed_permanent", "{run:#}");
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["status", "--partition", DAY],
        &["events"],
        &["events", "--json"],
        &["history", "hello"],
        &["logs", "hello", "--partition", DAY],
        &["validate"],
    ] {
        assert_eq!(keel_into_closed_pipes(dir, args), Some(0), "keel {args:?}");
    }
    // An error with nowhere to be written still gets its exit code.
    assert_eq!(
        keel_into_closed_pipes(dir, &["status", "--partition", "2026-13-01"]),
        Some(2)
    );
}

/// Regression: `keel run --only X` on a partition that never ran recorded the other tasks
/// `skipped` and the run `succeeded`, so a later plain `keel run` did nothing for them.
#[test]
fn only_on_a_new_partition_ends_partial_and_a_plain_run_runs_what_was_left_out() {
    let project = tempfile::tempdir().unwrap();
    let dir = project.path();
    write_pipeline(
        dir,
        &pipeline(
            r#"[tasks.extract]
phase = "main"
command = ["sh", "-c", "echo extract >> ran.ledger"]

[tasks.load]
phase = "main"
command = ["sh", "-c", "echo load >> ran.ledger"]
after = ["extract"]

[tasks.report]
phase = "main"
command = ["sh", "-c", "echo report >> ran.ledger"]
"#,
        ),
    );
    let ledger = || std::fs::read_to_string(dir.join("ran.ledger")).unwrap_or_default();

    let only = keel_in(dir, &["run", "--partition", DAY, "--only", "load"]);
    assert_eq!(only.code, Some(0), "{}", only.transcript());
    assert_eq!(ledger(), "load\n");
    let run = status_json(dir, DAY);
    assert_eq!(run["state"], "partial", "{run:#}");
    assert_eq!(
        run["message"],
        "2 left out by --only: extract, report; a plain `keel run` of the partition runs them"
    );
    assert_eq!(outcome(&run, "extract"), "skipped");

    // `--only` again takes up only what it names; the rest stays left out.
    let report = keel_in(dir, &["run", "--partition", DAY, "--only", "report"]);
    assert_eq!(report.code, Some(0), "{}", report.transcript());
    assert_eq!(ledger(), "load\nreport\n");
    assert_eq!(status_json(dir, DAY)["state"], "partial");

    // A plain run runs the rest, and load again, since it ran before its upstream extract.
    let plain = keel_in(dir, &["run", "--partition", DAY]);
    assert_eq!(plain.code, Some(0), "{}", plain.transcript());
    assert_eq!(ledger(), "load\nreport\nextract\nload\n");
    let run = status_json(dir, DAY);
    assert_eq!(run["state"], "succeeded", "{run:#}");
    assert_eq!(run["id"], 1, "the same run, carried on: {run:#}");

    let again = keel_in(dir, &["run", "--partition", DAY]);
    assert_eq!(again.code, Some(0), "{}", again.transcript());
    assert!(
        again.stdout.contains("already finished as succeeded"),
        "{}",
        again.transcript()
    );
    assert_eq!(
        ledger(),
        "load\nreport\nextract\nload\n",
        "each task once more at most"
    );
}

/// A pipeline whose run ends degraded: `flaky` fails for good, and the gate lets `use` go on.
const DEGRADED: &str = r#"[pipeline]
name = "ops"
timezone = "UTC"
partition = "date"

[defaults]
timeout = "20s"
retries = { attempts = 1, initial = "10ms", max = "50ms" }

[phases.fetch]
gate = { required = ["steady"], min = "50%", grace = "1m" }

[phases.use]
after = ["fetch"]

[tasks.steady]
phase = "fetch"
command = ["true"]

[tasks.flaky]
phase = "fetch"
command = ["sh", "-c", "exit 65"]

[tasks.report]
phase = "use"
command = ["true"]
"#;

fn keel_as(dir: &Path, user: &str, args: &[&str]) -> Ran {
    let output = assert_cmd::Command::new(keel_path())
        .current_dir(dir)
        .env("USER", user)
        .args(args)
        .timeout(Duration::from_secs(30))
        .output()
        .unwrap();
    Ran {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[test]
fn accept_records_who_and_why_a_degraded_run_is_acceptable() {
    let project = tempfile::tempdir().unwrap();
    let dir = project.path();
    write_pipeline(dir, DEGRADED);
    let ran = keel_in(dir, &["run", "--partition", DAY]);
    assert_eq!(ran.code, Some(3), "{}", ran.transcript());
    let ran = keel_in(dir, &["run", "--partition", "2026-01-19"]);
    assert_eq!(ran.code, Some(3), "{}", ran.transcript());

    let accepted = keel_as(
        dir,
        "alice",
        &[
            "accept",
            "--partition",
            DAY,
            "--reason",
            "feed outage, refilled by hand",
        ],
    );
    assert_eq!(accepted.code, Some(0), "{}", accepted.transcript());
    assert_eq!(
        accepted.stdout,
        "accepted run 1 of partition 2026-01-18 as degraded, by alice: feed outage, refilled by hand\n"
    );
    let run = status_json(dir, DAY);
    assert_eq!(run["state"], "degraded", "the state stays: {run:#}");
    assert_eq!(run["accepted"], "by alice: feed outage, refilled by hand");
    assert!(status_json(dir, "2026-01-19").get("accepted").is_none());
    let table = keel_in(dir, &["status", "--partition", DAY]);
    assert!(
        table
            .stdout
            .contains("degraded (accepted by alice: feed outage, refilled by hand)"),
        "{}",
        table.transcript()
    );
    let list = keel_in(dir, &["status"]);
    assert!(
        list.stdout.contains("degraded (accepted)"),
        "{}",
        list.transcript()
    );
    let events = keel_in(dir, &["events", "--partition", DAY]);
    assert!(
        events
            .stdout
            .contains("accepted: by alice: feed outage, refilled by hand"),
        "{}",
        events.transcript()
    );

    // Only a degraded run can be accepted; a partition without a run has nothing to accept.
    write_pipeline(dir, &DEGRADED.replace("exit 65", "exit 0"));
    let ran = keel_in(dir, &["run", "--partition", "2026-01-20"]);
    assert_eq!(ran.code, Some(0), "{}", ran.transcript());
    let refused = keel_as(dir, "alice", &["accept", "--partition", "2026-01-20"]);
    assert_eq!(refused.code, Some(2), "{}", refused.transcript());
    assert_eq!(
        refused.stderr,
        "error: run 3 of partition 2026-01-20 is succeeded\nhint: only a degraded run can be accepted\n"
    );
    let none = keel_as(dir, "alice", &["accept", "--partition", "2026-01-21"]);
    assert_eq!(none.code, Some(2), "{}", none.transcript());
    assert!(
        none.stderr.contains("no run of partition 2026-01-21"),
        "{}",
        none.transcript()
    );

    // A retry that leaves the run degraded again needs a new acceptance.
    write_pipeline(dir, DEGRADED);
    let retried = keel_in(dir, &["retry", "--partition", DAY, "flaky"]);
    assert_eq!(retried.code, Some(3), "{}", retried.transcript());
    assert!(status_json(dir, DAY).get("accepted").is_none());
}

#[test]
fn retry_failed_retries_each_failed_or_degraded_partition_of_a_range_and_cancel_takes_a_range() {
    let project = tempfile::tempdir().unwrap();
    let dir = project.path();
    let text = DEGRADED
        .replace(
            r#"command = ["true"]
"#,
            r#"command = ["sh", "-c", "echo {task} {date} >> ran.ledger"]
"#,
        )
        .replace(
            r#"["sh", "-c", "exit 65"]"#,
            r#"["sh", "-c", "test -f fixed || exit 65; echo {task} {date} >> ran.ledger"]"#,
        );
    write_pipeline(dir, &text);
    std::fs::write(dir.join("fixed"), "").unwrap();
    let ran = keel_in(dir, &["run", "--partition", "2026-01-16"]);
    assert_eq!(ran.code, Some(0), "{}", ran.transcript());
    std::fs::remove_file(dir.join("fixed")).unwrap();
    let ran = keel_in(dir, &["run", "--from", "2026-01-17", "--to", DAY]);
    assert_eq!(ran.code, Some(3), "{}", ran.transcript());
    let count = |line: &str| {
        std::fs::read_to_string(dir.join("ran.ledger"))
            .unwrap_or_default()
            .lines()
            .filter(|each| *each == line)
            .count()
    };

    let named = keel_in(dir, &["retry", "--failed", "--partition", DAY, "flaky"]);
    assert_eq!(named.code, Some(2), "{}", named.transcript());
    assert!(
        named.stderr.contains("keel retry --failed names no tasks"),
        "{}",
        named.transcript()
    );

    std::fs::write(dir.join("fixed"), "").unwrap();
    let retried = keel_in(
        dir,
        &[
            "retry",
            "--failed",
            "--from",
            "2026-01-16",
            "--to",
            "2026-01-19",
        ],
    );
    assert_eq!(retried.code, Some(0), "{}", retried.transcript());
    assert!(
        retried
            .stderr
            .contains("retrying flaky in run 2 of partition 2026-01-17")
            && retried
                .stderr
                .contains("retrying flaky in run 3 of partition 2026-01-18"),
        "{}",
        retried.transcript()
    );
    assert!(
        !retried.stderr.contains("2026-01-16"),
        "{}",
        retried.transcript()
    );
    for day in ["2026-01-16", "2026-01-17", DAY] {
        assert_eq!(status_json(dir, day)["state"], "succeeded", "{day}");
        assert_eq!(count(&format!("steady {day}")), 1, "{day}: steady ran once");
        assert_eq!(
            count(&format!("flaky {day}")),
            1,
            "{day}: flaky succeeded once"
        );
    }
    // report ran when the gate let it go on, and again once flaky landed.
    assert_eq!(count("report 2026-01-17"), 2);
    let nothing = keel_in(
        dir,
        &["retry", "--failed", "--from", "2026-01-16", "--to", DAY],
    );
    assert_eq!(nothing.code, Some(0), "{}", nothing.transcript());
    assert!(
        nothing.stdout.contains("nothing to retry"),
        "{}",
        nothing.transcript()
    );

    // Cancel over a range: the unfinished runs of it, here queued ones nobody executes.
    let queued = keel_in(
        dir,
        &[
            "run",
            "--detach",
            "--from",
            "2026-01-20",
            "--to",
            "2026-01-22",
        ],
    );
    assert_eq!(queued.code, Some(0), "{}", queued.transcript());
    let only_failing = keel_in(
        dir,
        &[
            "cancel",
            "--failed",
            "--from",
            "2026-01-20",
            "--to",
            "2026-01-22",
        ],
    );
    assert_eq!(only_failing.code, Some(0), "{}", only_failing.transcript());
    assert_eq!(only_failing.stdout, "no run to cancel\n");
    assert_ne!(status_json(dir, "2026-01-21")["state"], "cancelled");
    let cancel = keel_in(dir, &["cancel", "--from", DAY, "--to", "2026-01-21"]);
    assert_eq!(cancel.code, Some(0), "{}", cancel.transcript());
    assert_eq!(
        cancel.stdout,
        "run 3 of partition 2026-01-18 already finished as succeeded; nothing to cancel\n\
         run 4 of partition 2026-01-20 is cancelled\n\
         run 5 of partition 2026-01-21 is cancelled\n"
    );
    assert_ne!(status_json(dir, "2026-01-22")["state"], "cancelled");
}

/// The most partitions that had begun and not ended at once, from a ledger of
/// `begin DATE` / `end DATE` lines.
fn most_partitions_at_once(ledger: &str) -> usize {
    let mut open = std::collections::HashSet::new();
    let mut most = 0;
    for line in ledger.lines() {
        match line.split_once(' ') {
            Some(("begin", date)) => {
                open.insert(date.to_string());
            }
            Some(("end", date)) => {
                open.remove(date);
            }
            _ => panic!("unexpected ledger line {line:?}"),
        }
        most = most.max(open.len());
    }
    most
}

#[test]
fn sequential_and_max_active_partitions_bound_the_partitions_of_a_range_running_at_once() {
    let project = tempfile::tempdir().unwrap();
    let dir = project.path();
    // Two tasks per partition, so a partition is open from its first task's start to its last
    // task's end; plenty of concurrency, so only the partition bound holds them back.
    let tasks = r#"[tasks.first]
phase = "main"
command = ["sh", "-c", "echo begin {date} >> ledger; sleep 0.2"]

[tasks.second]
phase = "main"
command = ["sh", "-c", "sleep 0.2; echo end {date} >> ledger"]
after = ["first"]
"#;
    write_pipeline(dir, &pipeline(tasks));
    let ledger = || std::fs::read_to_string(dir.join("ledger")).unwrap_or_default();

    let ran = keel_in(
        dir,
        &["run", "--sequential", "--from", "2026-01-16", "--to", DAY],
    );
    assert_eq!(ran.code, Some(0), "{}", ran.transcript());
    assert_eq!(
        ledger(),
        "begin 2026-01-16\nend 2026-01-16\nbegin 2026-01-17\nend 2026-01-17\nbegin 2026-01-18\nend 2026-01-18\n",
        "one partition after another, in date order"
    );

    std::fs::remove_file(dir.join("ledger")).unwrap();
    write_pipeline(
        dir,
        &pipeline(tasks).replace(
            "partition = \"date\"",
            "partition = \"date\"\nmax_active_partitions = 2",
        ),
    );
    let ran = keel_in(dir, &["run", "--from", "2026-02-01", "--to", "2026-02-05"]);
    assert_eq!(ran.code, Some(0), "{}", ran.transcript());
    let lines = ledger();
    assert_eq!(lines.lines().count(), 10, "{lines}");
    assert_eq!(most_partitions_at_once(&lines), 2, "{lines}");
    assert!(
        lines.starts_with("begin 2026-02-01\nbegin 2026-02-02\n")
            || lines.starts_with("begin 2026-02-02\nbegin 2026-02-01\n"),
        "{lines}"
    );
}

/// The directory of run `run` under the state's attempts directory.
fn run_dir(dir: &Path, run: u32) -> PathBuf {
    let attempts = dir.join(".keel/attempts");
    let store = std::fs::read_dir(&attempts)
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .path();
    store.join(run.to_string())
}

#[test]
fn gc_removes_old_finished_runs_attempt_directories_and_keeps_their_rows() {
    let project = tempfile::tempdir().unwrap();
    let dir = project.path();
    write_pipeline(
        dir,
        &pipeline(
            r#"[tasks.hello]
phase = "main"
command = ["sh", "-c", "if test {date} = 2026-01-20; then echo $$ > long.pid; exec sleep 30; fi; echo hello from keel"]
"#,
        ),
    );
    for day in ["2026-01-16", "2026-01-17"] {
        let ran = keel_in(dir, &["run", "--partition", day]);
        assert_eq!(ran.code, Some(0), "{}", ran.transcript());
    }
    assert!(run_dir(dir, 1).join("hello.1/output.log").exists());

    // A Keel executing the state: gc refuses and removes nothing.
    let _reap = Reap(dir.join("long.pid"));
    let mut running = Background(
        Command::new(keel_path())
            .current_dir(dir)
            .args(["run", "--partition", "2026-01-20"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until("long.pid", Duration::from_secs(10), || {
        std::fs::read_to_string(dir.join("long.pid")).is_ok_and(|text| !text.trim().is_empty())
    });
    let refused = keel_in(dir, &["gc", "--older-than", "0s"]);
    assert_eq!(refused.code, Some(1), "{}", refused.transcript());
    assert!(
        refused.stderr.contains("another keel is running"),
        "{}",
        refused.transcript()
    );
    assert!(run_dir(dir, 1).exists());
    // Killed, it leaves its run unfinished, with its attempt still running: gc leaves it alone.
    running.0.kill().unwrap();
    running.0.wait().unwrap();

    let dry = keel_in(dir, &["gc", "--older-than", "0s", "--dry-run"]);
    assert_eq!(dry.code, Some(0), "{}", dry.transcript());
    assert!(
        dry.stdout
            .starts_with("would remove 2 attempt directories (")
            && dry
                .stdout
                .ends_with(") of 2 runs finished more than 0s ago\n"),
        "{}",
        dry.transcript()
    );
    assert!(run_dir(dir, 1).exists() && run_dir(dir, 2).exists());

    let gc = keel_in(dir, &["gc", "--older-than", "0s"]);
    assert_eq!(gc.code, Some(0), "{}", gc.transcript());
    assert_eq!(gc.stdout.replace("removed", "would remove"), dry.stdout);
    assert!(!run_dir(dir, 1).exists() && !run_dir(dir, 2).exists());
    assert!(
        run_dir(dir, 3).join("hello.1").exists(),
        "the unfinished run is kept"
    );
    assert_eq!(
        status_json(dir, "2026-01-16")["state"],
        "succeeded",
        "the rows stay"
    );
    let events = keel_in(dir, &["events", "--partition", "2026-01-16"]);
    assert!(
        events
            .stdout
            .contains("pruned: removed 1 attempt directories, "),
        "{}",
        events.transcript()
    );
    let logs = keel_in(dir, &["logs", "hello", "--partition", "2026-01-16"]);
    assert!(
        logs.stderr.contains("captured no output"),
        "{}",
        logs.transcript()
    );
    let again = keel_in(dir, &["gc", "--older-than", "30d"]);
    assert_eq!(again.code, Some(0), "{}", again.transcript());
    assert_eq!(
        again.stdout,
        "removed 0 attempt directories (0 bytes) of 0 runs finished more than 30d ago\n"
    );
    let twice = keel_in(dir, &["gc", "--older-than", "0s"]);
    assert!(
        twice.stdout.contains("of 0 runs"),
        "pruned runs are not pruned again: {}",
        twice.transcript()
    );
}
