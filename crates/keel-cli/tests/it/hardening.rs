//! Hardening, end to end through the `keel` binary: an attempt whose supervisor is killed never
//! runs beside its next attempt, not even through a daemon its task started, a result file that
//! is a pipe, a link to an endless device or far too large fails its attempt at once instead of
//! wedging Keel, and a daemon that leaves the task's process group does not outlive its attempt.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keel_model::{Outcome, RunId};
use keel_store::{AttemptRecord, SqliteStore, Store};
use serde_json::Value;

use crate::support::{keel_path, write_pipeline};

/// The one-letter state of `pid` (`R`, `S`, `Z`…), or `None` when there is no such process.
fn state_of(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.trim_start().chars().next()
}

/// Whether `pid` can still run. A zombie has ended; it only waits to be collected, which the
/// first process of some containers never does.
fn is_running(pid: i32) -> bool {
    state_of(pid).is_some_and(|state| !matches!(state, 'Z' | 'X'))
}

/// Kills the processes it holds when dropped, so that a failing test leaves nothing running.
struct Leftovers(Vec<i32>);

impl Drop for Leftovers {
    fn drop(&mut self) {
        for pid in &self.0 {
            if is_running(*pid) {
                // SAFETY: killing a process that a task of this test started.
                unsafe { libc::kill(*pid, libc::SIGKILL) };
            }
        }
    }
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

/// A directory holding one pipeline, run for the partition `none`.
struct Pipeline {
    _dir: tempfile::TempDir,
    root: PathBuf,
    path: PathBuf,
}

impl Pipeline {
    /// An empty directory; [`Pipeline::write`] puts the pipeline file in it.
    fn new() -> Pipeline {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        Pipeline {
            path: root.join("keel.toml"),
            root,
            _dir: dir,
        }
    }

    /// Writes the pipeline `name` with one phase; `tasks` are `(name, extra fields, script)`,
    /// and every task runs its script under `sh -c`.
    fn write(&self, name: &str, defaults: &str, tasks: &[(&str, &str, String)]) {
        let mut text = format!(
            "[pipeline]\nname = \"{name}\"\npartition = \"none\"\n\n[defaults]\n{defaults}\n\n[phases.only]\n\n"
        );
        for (task, extra, script) in tasks {
            // Rust's debug quoting of an ASCII script is a valid TOML basic string.
            text.push_str(&format!(
                "[tasks.{task}]\nphase = \"only\"\n{extra}command = [\"sh\", \"-c\", {script:?}]\n\n"
            ));
        }
        write_pipeline(&self.root, &text);
    }

    fn file(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Starts `keel run`, its output kept in `keel.log`.
    fn spawn_run(&self) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.file("keel.log"))
            .unwrap();
        Command::new(keel_path())
            .args(["run", "--partition", "none"])
            .arg(&self.path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// Waits for `keel` to exit and returns its exit code; past `limit` it is killed and the
    /// test fails: Keel must never hang.
    fn wait(&self, child: &mut Child, limit: Duration) -> i32 {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status
                    .code()
                    .unwrap_or_else(|| panic!("keel died from a signal: {status}"));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "keel did not finish within {limit:?}; it is wedged\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.file("keel.log")).unwrap_or_default()
    }

    /// The run as `keel status --json` shows it.
    fn run_json(&self) -> Value {
        let output = Command::new(keel_path())
            .args(["status", "--json", "--partition", "none"])
            .arg(&self.path)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let json: Value = serde_json::from_slice(&output.stdout).unwrap();
        json["runs"][0].clone()
    }

    fn task_json(&self, task: &str) -> Value {
        let run = self.run_json();
        run["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|entry| entry["name"] == task)
            .cloned()
            .unwrap_or_else(|| panic!("no task {task} in {run}"))
    }

    /// The attempts recorded so far; empty before the run exists.
    fn attempts(&self) -> Vec<AttemptRecord> {
        let database = self.root.join(".keel").join("state.db");
        if !database.exists() {
            return Vec::new();
        }
        let Ok(store) = SqliteStore::open(&database) else {
            return Vec::new();
        };
        block_on(async {
            let runs = store
                .list_runs("orphans", Some("none"), 1)
                .await
                .unwrap_or_default();
            match runs.first() {
                Some(run) => store.attempts(RunId(run.id.0)).await.unwrap_or_default(),
                None => Vec::new(),
            }
        })
    }

    /// Waits until `path` holds a pid and returns it.
    fn wait_for_pid(&self, path: &Path, keel: &mut Child) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(pid) = std::fs::read_to_string(path)
                .ok()
                .and_then(|text| text.trim().parse().ok())
            {
                return pid;
            }
            if let Some(status) = keel.try_wait().unwrap() {
                panic!(
                    "keel ended ({status}) before {} was written\n{}",
                    path.display(),
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} was never written\n{}",
                path.display(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until the store knows the supervisor pid of attempt `number`, and returns it.
    fn supervisor_of(&self, number: u32) -> i32 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(pid) = self
                .attempts()
                .iter()
                .find(|attempt| attempt.number == number)
                .and_then(|attempt| attempt.pid)
            {
                return pid as i32;
            }
            assert!(
                Instant::now() < deadline,
                "the store never learned the supervisor's pid\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The pipeline of the supervisor tests: one task that appends `start ATTEMPT NANOS` to the
/// ledger, then `previous PID STATE NANOS` for the background sleep of every earlier attempt as
/// it finds it (its state letter from /proc, or `gone`), then sleeps in the background and
/// appends `end ATTEMPT NANOS` once the sleep is over.
fn orphans_pipeline() -> Pipeline {
    let pipeline = Pipeline::new();
    let script = format!(
        r#"echo start $KEEL_ATTEMPT $(date +%s%N) >> {ledger}
for f in {root}/sleeper.*; do
  [ -e "$f" ] && echo previous $(cat "$f") $(cut -d' ' -f3 /proc/$(cat "$f")/stat 2>/dev/null || echo gone) $(date +%s%N) >> {ledger}
done
sleep 3 &
echo $! > {root}/sleeper.$KEEL_ATTEMPT
wait
echo end $KEEL_ATTEMPT $(date +%s%N) >> {ledger}"#,
        ledger = pipeline.file("ledger").display(),
        root = pipeline.root.display()
    );
    pipeline.write(
        "orphans",
        "timeout = \"60s\"\nretries = { attempts = 3, initial = \"10ms\", max = \"50ms\" }",
        &[("work", "", script)],
    );
    pipeline
}

/// What the ledger of [`orphans_pipeline`] shows.
struct Ledger {
    lines: Vec<Vec<String>>,
}

impl Ledger {
    fn read(pipeline: &Pipeline) -> Ledger {
        let text = std::fs::read_to_string(pipeline.file("ledger")).unwrap_or_default();
        Ledger {
            lines: text
                .lines()
                .map(|line| line.split_whitespace().map(str::to_string).collect())
                .collect(),
        }
    }

    /// When attempt `attempt` wrote its `what` line (`start` or `end`).
    fn at(&self, what: &str, attempt: u32) -> Option<u128> {
        self.lines
            .iter()
            .find(|fields| {
                fields.len() == 3 && fields[0] == what && fields[1] == attempt.to_string()
            })
            .map(|fields| fields[2].parse().unwrap())
    }

    /// How the second attempt found the first one's background sleep: a state letter or `gone`.
    fn previous_seen(&self, pid: i32) -> Option<String> {
        self.lines
            .iter()
            .find(|fields| {
                fields.len() == 4 && fields[0] == "previous" && fields[1] == pid.to_string()
            })
            .map(|fields| fields[2].clone())
    }
}

/// Checks that attempt 1, whose supervisor was killed, never ran beside attempt 2, and that the
/// run still succeeded exactly once.
fn assert_no_overlap(pipeline: &Pipeline, first_sleeper: i32, code: i32) {
    let log = pipeline.log();
    assert_eq!(code, 0, "the run succeeds in the end\n{log}");
    let ledger = Ledger::read(pipeline);
    let text = std::fs::read_to_string(pipeline.file("ledger")).unwrap_or_default();
    let first_start = ledger.at("start", 1).expect("attempt 1 started");
    let second_start = ledger
        .at("start", 2)
        .unwrap_or_else(|| panic!("attempt 2 started\n{text}\n{log}"));
    assert!(first_start < second_start, "{text}");
    // Attempt 1's task was killed with its supervisor's death: it never finished its body, and
    // certainly not while attempt 2 ran.
    if let Some(first_end) = ledger.at("end", 1) {
        assert!(
            first_end < second_start,
            "attempt 1 ended its body after attempt 2 started: they overlapped\n{text}"
        );
    }
    assert_eq!(
        ledger.at("end", 1),
        None,
        "attempt 1 was killed mid-task, so it never wrote its end\n{text}"
    );
    // When attempt 2 began, attempt 1's background sleep was already dead.
    let seen = ledger
        .previous_seen(first_sleeper)
        .unwrap_or_else(|| panic!("attempt 2 looked for attempt 1's sleep\n{text}"));
    assert!(
        seen == "gone" || seen == "Z",
        "attempt 2 started while attempt 1's task still ran (its sleep was in state {seen})\n{text}"
    );
    assert!(
        !is_running(first_sleeper),
        "attempt 1's task process {first_sleeper} is dead"
    );
    assert!(ledger.at("end", 2).is_some(), "attempt 2 finished\n{text}");

    let run = pipeline.run_json();
    assert_eq!(run["state"], "succeeded", "{run}");
    let attempts = pipeline.attempts();
    let successes = attempts
        .iter()
        .filter(|attempt| attempt.outcome == Some(Outcome::Succeeded))
        .count();
    assert_eq!(successes, 1, "exactly one success: {attempts:?}");
    assert_eq!(
        attempts[0].outcome,
        Some(Outcome::Lost),
        "the attempt whose supervisor died is lost: {attempts:?}"
    );
}

/// Regression: a supervisor killed by SIGKILL (an operator, the OOM killer) while its task ran
/// made Keel record the attempt `lost` and start the next one at once, beside the orphaned task,
/// which no timeout watched any more. Now the task's process group is killed, and gone, before
/// the attempt is reported.
#[test]
fn a_killed_supervisor_never_leaves_its_task_running_beside_the_next_attempt() {
    let pipeline = orphans_pipeline();
    let mut leftovers = Leftovers(Vec::new());
    let mut keel = pipeline.spawn_run();
    let first_sleeper = pipeline.wait_for_pid(&pipeline.file("sleeper.1"), &mut keel);
    leftovers.0.push(first_sleeper);
    let supervisor = pipeline.supervisor_of(1);
    // SAFETY: killing the supervisor of the attempt this test started.
    unsafe { libc::kill(supervisor, libc::SIGKILL) };
    let code = pipeline.wait(&mut keel, Duration::from_secs(120));
    assert_no_overlap(&pipeline, first_sleeper, code);
}

/// The same, found by the next Keel: the supervisor is killed while no Keel runs, and the Keel
/// started afterwards must end the orphaned task before it retries the attempt.
#[test]
fn a_supervisor_killed_while_keel_was_down_has_its_task_ended_before_the_retry() {
    let pipeline = orphans_pipeline();
    let mut leftovers = Leftovers(Vec::new());
    let mut keel = pipeline.spawn_run();
    let first_sleeper = pipeline.wait_for_pid(&pipeline.file("sleeper.1"), &mut keel);
    leftovers.0.push(first_sleeper);
    let supervisor = pipeline.supervisor_of(1);
    keel.kill().unwrap();
    keel.wait().unwrap();
    // SAFETY: killing the supervisor of the attempt this test started.
    unsafe { libc::kill(supervisor, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while is_running(supervisor) {
        assert!(Instant::now() < deadline, "the supervisor did not die");
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut keel = pipeline.spawn_run();
    let code = pipeline.wait(&mut keel, Duration::from_secs(120));
    assert_no_overlap(&pipeline, first_sleeper, code);
}

/// Regression: a cleanup job that removed a running attempt's directory while Keel was down made
/// the next Keel take the attempt for never started and run attempt 2 beside attempt 1. The
/// store's record that the attempt started (its supervisor's pid) wins over the missing files.
#[test]
fn an_attempt_whose_directory_was_removed_is_waited_for_before_the_retry() {
    let pipeline = orphans_pipeline();
    let mut leftovers = Leftovers(Vec::new());
    let mut keel = pipeline.spawn_run();
    let first_sleeper = pipeline.wait_for_pid(&pipeline.file("sleeper.1"), &mut keel);
    leftovers.0.push(first_sleeper);
    let supervisor = pipeline.supervisor_of(1);
    keel.kill().unwrap();
    keel.wait().unwrap();
    let attempt = pipeline
        .attempts()
        .into_iter()
        .find(|attempt| attempt.number == 1)
        .expect("attempt 1 is recorded");
    std::fs::remove_dir_all(&attempt.dir).unwrap();
    assert!(is_running(supervisor), "attempt 1 still runs");
    let mut keel = pipeline.spawn_run();
    let code = pipeline.wait(&mut keel, Duration::from_secs(120));
    let log = pipeline.log();
    assert_eq!(code, 0, "the run succeeds in the end\n{log}");
    let text = std::fs::read_to_string(pipeline.file("ledger")).unwrap_or_default();
    let ledger = Ledger::read(&pipeline);
    // Attempt 1 was left to run its course; attempt 2 started only after it had ended.
    let first_end = ledger.at("end", 1).expect("attempt 1 ran to its end");
    let second_start = ledger
        .at("start", 2)
        .unwrap_or_else(|| panic!("attempt 2 started\n{text}\n{log}"));
    assert!(
        first_end < second_start,
        "attempts 1 and 2 overlapped\n{text}"
    );
    let attempts = pipeline.attempts();
    assert_eq!(attempts[0].outcome, Some(Outcome::Lost), "{attempts:?}");
    let message = attempts[0].message.as_deref().unwrap_or_default();
    assert!(message.contains("directory was removed"), "{message}");
    let successes = attempts
        .iter()
        .filter(|attempt| attempt.outcome == Some(Outcome::Succeeded))
        .count();
    assert_eq!(successes, 1, "{attempts:?}");
}

/// Runs a one-task pipeline whose task exits 0 after making its result file with `script`, and
/// returns the task's entry in `keel status --json`. Keel must finish on its own, well within
/// the limit, however the result file was made.
fn result_file_run(script: &str) -> Value {
    let pipeline = Pipeline::new();
    pipeline.write(
        "results",
        "timeout = \"60s\"\nretries = { attempts = 1 }",
        &[("report", "", format!("{script}; exit 0"))],
    );
    let mut keel = pipeline.spawn_run();
    let code = pipeline.wait(&mut keel, Duration::from_secs(60));
    assert_eq!(
        code,
        1,
        "the attempt fails, so the run does\n{}",
        pipeline.log()
    );
    pipeline.task_json("report")
}

fn assert_failed_naming_the_file(task: &Value, what: &str) {
    assert_eq!(task["outcome"], "failed", "{task}");
    let message = task["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("result.json") && message.contains(what),
        "the message names the file and says what is wrong: {message}"
    );
}

/// Regression: a result file made a named pipe blocked Keel's read of it for good.
#[test]
fn a_result_file_that_is_a_named_pipe_fails_the_attempt_instead_of_wedging_keel() {
    let task = result_file_run("mkfifo \"$KEEL_RESULT\"");
    assert_failed_naming_the_file(&task, "named pipe");
}

/// Regression: a result file linked to /dev/zero made Keel read without end.
#[test]
fn a_result_file_linked_to_dev_zero_fails_the_attempt_instead_of_being_read_forever() {
    let task = result_file_run("ln -s /dev/zero \"$KEEL_RESULT\"");
    assert_failed_naming_the_file(&task, "symbolic link");
}

/// Regression: a result file of any size was read whole into Keel's memory. Past 1 MiB the
/// attempt fails, saying so.
#[test]
fn a_result_file_over_the_cap_fails_the_attempt_naming_the_cap() {
    // Keel expands `{…}` templates in commands, so literal braces are doubled.
    let task = result_file_run(
        "{{ printf '{{\"message\": \"'; head -c 2097152 /dev/zero | tr '\\000' x; printf '\"}}'; }} > \"$KEEL_RESULT\"",
    );
    assert_failed_naming_the_file(&task, "1 MiB");
}

/// Regression: `keel logs` read the output log with a plain read, so a task that replaced it
/// (the attempt directory is the task's to write in: its result file lives there) with a link to
/// `/dev/zero` or with a named pipe made `keel logs` read for ever or hang. It now refuses, at
/// once, naming what it found.
#[test]
fn keel_logs_refuses_an_output_log_a_task_replaced_with_a_link_or_a_pipe() {
    for (plant, what) in [
        (
            "ln -s /dev/zero \"$(dirname \"$KEEL_RESULT\")/output.log\"",
            "symbolic link",
        ),
        (
            "mkfifo \"$(dirname \"$KEEL_RESULT\")/output.log\"",
            "named pipe",
        ),
    ] {
        let pipeline = Pipeline::new();
        pipeline.write(
            "logs",
            "timeout = \"60s\"\nretries = { attempts = 1 }",
            &[("quiet", "", format!("{plant}; exit 0"))],
        );
        let mut keel = pipeline.spawn_run();
        let code = pipeline.wait(&mut keel, Duration::from_secs(60));
        assert_eq!(code, 0, "{}", pipeline.log());
        let mut logs = Command::new(keel_path())
            .arg("logs")
            .arg(&pipeline.path)
            .args(["quiet", "--partition", "none"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = logs.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = logs.kill();
                panic!("keel logs hung on an output log that is a {what}");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut logs.stderr.take().unwrap(), &mut stderr).unwrap();
        assert_eq!(status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("output.log") && stderr.contains(what),
            "the error names the file and what it is: {stderr}"
        );
    }
}

/// Regression: a task's daemon that calls `setsid` leaves the task's process group, so the
/// group kill missed it and it outlived its attempt and its timeout. Two tasks start such a
/// daemon and write its pid: one then exits 0, the other runs into its timeout. After the run,
/// neither daemon may be running.
#[test]
fn a_daemon_that_left_the_task_group_does_not_outlive_its_attempt() {
    let pipeline = Pipeline::new();
    let daemon = |name: &str, then: &str| {
        format!(
            "setsid sh -c 'echo $$ > {pid}; exec sleep 1000' & while [ ! -s {pid} ]; do sleep 0.01; done; {then}",
            pid = pipeline.file(&format!("{name}.pid")).display()
        )
    };
    pipeline.write(
        "daemons",
        "retries = { attempts = 1 }",
        &[
            ("exits", "timeout = \"60s\"\n", daemon("exits", "exit 0")),
            (
                "times_out",
                "timeout = \"1s\"\n",
                daemon("times_out", "sleep 60"),
            ),
        ],
    );
    let mut keel = pipeline.spawn_run();
    let code = pipeline.wait(&mut keel, Duration::from_secs(120));
    let mut leftovers = Leftovers(Vec::new());
    let mut pids = Vec::new();
    for name in ["exits", "times_out"] {
        let pid: i32 = std::fs::read_to_string(pipeline.file(&format!("{name}.pid")))
            .unwrap_or_else(|_| panic!("{name} started its daemon\n{}", pipeline.log()))
            .trim()
            .parse()
            .unwrap();
        leftovers.0.push(pid);
        pids.push((name, pid));
    }
    assert_eq!(
        code,
        1,
        "the timed-out task fails the run\n{}",
        pipeline.log()
    );
    assert_eq!(pipeline.task_json("exits")["outcome"], "succeeded");
    assert_eq!(pipeline.task_json("times_out")["outcome"], "timed_out");
    for (name, pid) in pids {
        assert!(
            !is_running(pid),
            "the daemon of {name} (pid {pid}) ended with its attempt"
        );
    }
}

/// Regression: a task's daemon that called `setsid` (a new session, out of the task's process
/// group) outlived its attempt when the attempt's supervisor was killed with SIGKILL: it was
/// handed to the system's first process, no timeout watched it any more, and the attempt's
/// retry ran beside it. Attempt 1 starts such a daemon and sleeps; its supervisor is killed;
/// attempt 2 notes in the ledger whether attempt 1's daemon still runs as it starts.
#[test]
fn a_killed_supervisor_never_leaves_its_tasks_setsid_daemon_running_beside_the_retry() {
    let pipeline = Pipeline::new();
    let script = format!(
        r#"echo start $KEEL_ATTEMPT $(date +%s%N) >> {ledger}
for f in {root}/daemon.*; do
  [ -e "$f" ] && echo previous $(cat "$f") $(cut -d' ' -f3 /proc/$(cat "$f")/stat 2>/dev/null || echo gone) $(date +%s%N) >> {ledger}
done
if [ "$KEEL_ATTEMPT" = 1 ]; then
  setsid sh -c 'echo $$ > {root}/daemon.tmp; mv {root}/daemon.tmp {root}/daemon.1; exec sleep 300' &
  sleep 60
fi
echo end $KEEL_ATTEMPT $(date +%s%N) >> {ledger}"#,
        ledger = pipeline.file("ledger").display(),
        root = pipeline.root.display()
    );
    pipeline.write(
        "orphans",
        "timeout = \"120s\"\nretries = { attempts = 3, initial = \"10ms\", max = \"50ms\" }",
        &[("work", "", script)],
    );
    let mut leftovers = Leftovers(Vec::new());
    let mut keel = pipeline.spawn_run();
    let daemon = pipeline.wait_for_pid(&pipeline.file("daemon.1"), &mut keel);
    leftovers.0.push(daemon);
    let supervisor = pipeline.supervisor_of(1);
    // SAFETY: killing the supervisor of the attempt this test started.
    unsafe { libc::kill(supervisor, libc::SIGKILL) };
    let code = pipeline.wait(&mut keel, Duration::from_secs(120));
    let log = pipeline.log();
    let text = std::fs::read_to_string(pipeline.file("ledger")).unwrap_or_default();
    assert_eq!(code, 0, "the run succeeds in the end\n{log}\n{text}");
    let ledger = Ledger::read(&pipeline);
    assert!(ledger.at("start", 2).is_some(), "attempt 2 ran\n{text}");
    let seen = ledger
        .previous_seen(daemon)
        .unwrap_or_else(|| panic!("attempt 2 looked for attempt 1's daemon\n{text}"));
    assert!(
        seen == "gone" || seen == "Z",
        "attempt 2 started while attempt 1's setsid daemon still ran (in state {seen})\n{text}"
    );
    assert!(
        !is_running(daemon),
        "attempt 1's setsid daemon (pid {daemon}) is dead once keel has handled the loss"
    );
    let attempts = pipeline.attempts();
    assert_eq!(attempts[0].outcome, Some(Outcome::Lost), "{attempts:?}");
    assert_eq!(
        attempts
            .iter()
            .filter(|attempt| attempt.outcome == Some(Outcome::Succeeded))
            .count(),
        1,
        "{attempts:?}"
    );
}
