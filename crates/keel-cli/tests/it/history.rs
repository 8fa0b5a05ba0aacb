//! History and visibility, end to end: every run of a partition in `keel status`, `keel history`
//! of one task across partitions, `rows` and `metrics` in the tables and JSON, the event log
//! (`keel events`, followed while a run goes on), `keel logs` of any run and of a sensor, real
//! attempts apart from checks and probes, time spent working, and the summary line of a range.
//!
//! Tables are snapshotted with their borders and padding taken out and every duration written
//! `[T]`, since how long a task took differs from one run to the next.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use insta::assert_snapshot;
use serde_json::Value;

use crate::support::{keel, keel_path, write_pipeline};

const DAY: &str = "2026-01-18";

const HEADER: &str = r#"[pipeline]
name = "t"
timezone = "UTC"
partition = "date"

[defaults]
timeout = "20s"
retries = { attempts = 1, initial = "10ms", max = "50ms" }

[phases.main]

"#;

/// What one `keel` invocation did.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Ran {
    /// The exit code and output, with tables and durations made stable, for snapshots.
    fn transcript(&self) -> String {
        let mut text = format!("exit {}\n", self.code.map_or(-1, |code| code));
        if !self.stderr.is_empty() {
            text.push_str(&format!("--- stderr\n{}", stable(&self.stderr)));
        }
        if !self.stdout.is_empty() {
            text.push_str(&format!("--- stdout\n{}", stable(&self.stdout)));
        }
        text
    }
}

/// A temporary project: `keel.toml`, its state, and whatever its tasks write.
struct Project {
    dir: tempfile::TempDir,
}

impl Project {
    fn new(tasks: &str) -> Project {
        let dir = tempfile::tempdir().unwrap();
        write_pipeline(dir.path(), &format!("{HEADER}{tasks}"));
        Project { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `keel ARGS…` in the project directory, bounded in time, with the project's path redacted.
    fn keel(&self, args: &[&str]) -> Ran {
        let output = keel()
            .current_dir(self.path())
            .timeout(Duration::from_secs(30))
            .args(args)
            .output()
            .unwrap();
        let redact = |bytes: &[u8]| {
            let text = String::from_utf8_lossy(bytes).into_owned();
            let canonical = self.path().canonicalize().unwrap();
            text.replace(&canonical.display().to_string(), "[DIR]")
                .replace(&self.path().display().to_string(), "[DIR]")
        };
        let ran = Ran {
            code: output.status.code(),
            stdout: redact(&output.stdout),
            stderr: redact(&output.stderr),
        };
        assert!(
            !ran.stderr.contains("panicked") && ran.code != Some(101),
            "keel panicked: {}",
            ran.stderr
        );
        ran
    }

    /// `keel ARGS…` that must exit 0; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let ran = self.keel(args);
        assert_eq!(ran.code, Some(0), "keel {args:?}: {}", ran.transcript());
        ran.stdout
    }

    fn json(&self, args: &[&str]) -> Value {
        let stdout = self.ok(args);
        serde_json::from_str(&stdout).unwrap_or_else(|error| panic!("not JSON ({error}): {stdout}"))
    }

    /// Starts `keel ARGS…` in the background; stopped when dropped.
    fn spawn(&self, args: &[&str]) -> Background {
        let child = Command::new(keel_path())
            .args(args)
            .current_dir(self.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Background(child)
    }
}

/// A `keel` in the background, killed if the test ends before it does.
struct Background(Child);

impl Background {
    fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "keel did not finish in {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Whether a word is a duration as Keel prints one: `850ms`, `12.3s`, `4m05s`, `2h10m`.
fn is_duration(word: &str) -> bool {
    let number =
        |text: &str| !text.is_empty() && text.chars().all(|c| c.is_ascii_digit() || c == '.');
    if let Some(rest) = word.strip_suffix("ms") {
        return number(rest);
    }
    if let Some(rest) = word.strip_suffix('s') {
        return number(rest)
            || rest
                .split_once('m')
                .is_some_and(|(m, s)| number(m) && number(s));
    }
    word.strip_suffix('m')
        .and_then(|rest| rest.split_once('h'))
        .is_some_and(|(h, m)| number(h) && number(m))
}

/// Output made stable: table borders and padding out (cells joined with ` | `), every duration
/// `[T]`, event times `[TIME]` and attempt owners `[OWNER]`.
fn stable(text: &str) -> String {
    let mut lines = Vec::new();
    for line in text.lines() {
        if line.starts_with(['┌', '╞', '├', '└']) {
            continue;
        }
        let line = if line.starts_with('│') {
            line.trim_matches('│')
                .split(['│', '┆'])
                .map(str::trim)
                .collect::<Vec<_>>()
                .join(" | ")
        } else {
            line.to_string()
        };
        let mut words: Vec<String> = Vec::new();
        for (index, word) in line.split(' ').enumerate() {
            let previous = words.last().map(String::as_str);
            let shown = if is_duration(word) {
                "[T]"
            } else if index == 0 && word.starts_with("20") && word.contains('T') {
                "[TIME]"
            } else if previous == Some("owner") {
                "[OWNER]"
            } else if previous == Some("version") {
                "[VERSION]"
            } else if word.len() >= 12 && word.chars().all(|c| c.is_ascii_digit()) {
                "[MILLIS]"
            } else {
                word
            };
            words.push(shown.to_string());
        }
        lines.push(words.join(" ").trim_end().to_string());
    }
    lines.join("\n") + "\n"
}

// ---------------------------------------------------------------------------------------------
// Item 1: every run of a partition, one run, a range, and what --limit left out.

#[test]
fn status_shows_every_run_of_a_partition_one_run_and_a_range() {
    let project = Project::new(
        "[tasks.a]\nphase = \"main\"\ncommand = [\"sh\", \"-c\", \"echo run {run_id}\"]\n",
    );
    project.ok(&["run", "--partition", DAY]);
    project.ok(&["run", "--partition", DAY, "--rerun"]);
    project.ok(&["run", "--partition", "2026-01-20"]);

    let newest = project.keel(&["status", "--partition", DAY]);
    assert!(newest.stdout.contains("run 2 ·") && !newest.stdout.contains("run 1 ·"));
    let every = project.keel(&["status", "--partition", DAY, "--all"]);
    let older = project.keel(&["status", "--run", "1"]);
    let list = project.keel(&["status", "--all"]);
    let range = project.keel(&["status", "--from", "2026-01-17", "--to", "2026-01-20"]);
    let text = [every, older, list, range]
        .iter()
        .map(Ran::transcript)
        .collect::<Vec<_>>()
        .join("\n");
    assert_snapshot!("status_every_run", text);

    let json = project.json(&["status", "--all", "--json"]);
    let ids: Vec<i64> = json["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|run| run["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [3, 2, 1], "newest partition first, newest run first");
}

#[test]
fn status_says_what_the_limit_left_out_and_how_to_see_it() {
    let project = Project::new("[tasks.a]\nphase = \"main\"\ncommand = [\"true\"]\n");
    project.ok(&["run", "--from", "2026-01-01", "--to", "2026-01-03"]);
    let limited = project.keel(&["status", "--limit", "1"]);
    let one_more = project.keel(&["status", "--limit", "2"]);
    let json = project.json(&["status", "--limit", "1", "--json"]);
    assert_eq!(json["omitted"], 2, "{json}");
    assert_eq!(json["runs"].as_array().unwrap().len(), 1);
    let unlimited = project.json(&["status", "--json"]);
    assert!(unlimited.get("omitted").is_none(), "{unlimited}");
    let text = [limited, one_more]
        .iter()
        .map(Ran::transcript)
        .collect::<Vec<_>>()
        .join("\n");
    assert_snapshot!("status_limit", text);
}

#[test]
fn status_of_a_run_that_does_not_exist_is_a_clear_error() {
    let project = Project::new("[tasks.a]\nphase = \"main\"\ncommand = [\"true\"]\n");
    project.ok(&["run", "--partition", DAY]);
    let ran = project.keel(&["status", "--run", "7"]);
    assert_eq!(ran.code, Some(2));
    let conflicting = project.keel(&["status", "--run", "1", "--partition", DAY]);
    assert_eq!(conflicting.code, Some(2));
    assert_snapshot!("status_unknown_run", ran.transcript());
}

// ---------------------------------------------------------------------------------------------
// Items 2 and 3: `keel history`, and rows and metrics in status.

/// A task that reports rows and metrics that depend on the partition, and no data on the 19th.
const REPORTING: &str = r#"[tasks.grade]
phase = "main"
command = ["sh", "-c", '''case {date} in
  *-19) echo '{{"outcome":"no_data","message":"no games","rows":0}}' > "$KEEL_RESULT" ;;
  *-20) exit 1 ;;
  *) echo '{{"rows":18,"metrics":{{"accuracy":0.5,"picks":12}}}}' > "$KEEL_RESULT" ;;
esac''']

[tasks.publish]
phase = "main"
command = ["true"]
after = ["grade"]
"#;

#[test]
fn history_shows_one_task_across_partitions_with_rows_and_metrics() {
    let project = Project::new(REPORTING);
    let ran = project.keel(&["run", "--from", "2026-01-18", "--to", "2026-01-20"]);
    assert_eq!(ran.code, Some(1), "{}", ran.transcript());
    let history = project.keel(&["history", "grade"]);
    let ranged = project.keel(&[
        "history",
        "grade",
        "--from",
        "2026-01-19",
        "--to",
        "2026-01-19",
    ]);
    let text = [history, ranged]
        .iter()
        .map(Ran::transcript)
        .collect::<Vec<_>>()
        .join("\n");
    assert_snapshot!("history", text);

    let json = project.json(&["history", "grade", "--json"]);
    assert_eq!(json["task"], "grade");
    let runs = json["runs"].as_array().unwrap();
    let partitions: Vec<&str> = runs
        .iter()
        .map(|run| run["partition"].as_str().unwrap())
        .collect();
    assert_eq!(partitions, ["2026-01-20", "2026-01-19", "2026-01-18"]);
    assert_eq!(runs[0]["outcome"], "failed");
    assert_eq!(runs[1]["outcome"], "no_data");
    assert_eq!(runs[1]["rows"], 0);
    assert_eq!(runs[2]["rows"], 18);
    assert_eq!(
        runs[2]["metrics"],
        serde_json::json!({"accuracy": 0.5, "picks": 12})
    );
    assert_eq!(runs[2]["attempts"], 1);
}

#[test]
fn history_of_an_unknown_task_lists_the_tasks_and_suggests_one() {
    let project = Project::new(REPORTING);
    let ran = project.keel(&["history", "grdae"]);
    assert_eq!(ran.code, Some(2));
    let far = project.keel(&["history", "standings"]);
    assert_eq!(far.code, Some(2));
    let text = [ran, far]
        .iter()
        .map(Ran::transcript)
        .collect::<Vec<_>>()
        .join("\n");
    assert_snapshot!("history_unknown_task", text);
    // Before any run, a known task has no history yet; that is not an error.
    assert!(
        project
            .ok(&["history", "grade"])
            .contains("has not run yet")
    );
}

#[test]
fn status_shows_rows_and_metrics_in_the_table_and_the_json() {
    let project = Project::new(REPORTING);
    project.ok(&["run", "--partition", DAY]);
    let table = project.keel(&["status", "--partition", DAY]);
    assert_snapshot!("status_rows_and_metrics", table.transcript());
    let json = project.json(&["status", "--json"]);
    let grade = &json["runs"][0]["tasks"][0];
    assert_eq!(grade["rows"], 18, "{grade}");
    assert_eq!(
        grade["metrics"],
        serde_json::json!({"accuracy": 0.5, "picks": 12})
    );
    let publish = &json["runs"][0]["tasks"][1];
    assert_eq!(publish["rows"], Value::Null, "{publish}");
    assert_eq!(publish["metrics"], Value::Null, "{publish}");
}

// ---------------------------------------------------------------------------------------------
// Item 4: the event log.

#[test]
fn events_prints_the_log_readable_and_as_json_lines() {
    let project = Project::new(
        "[tasks.a]\nphase = \"main\"\ncommand = [\"true\"]\n\n[tasks.b]\nphase = \"main\"\ncommand = [\"true\"]\nafter = [\"a\"]\n",
    );
    project.ok(&["run", "--partition", DAY]);
    project.ok(&["run", "--partition", "2026-01-19"]);
    let readable = project.keel(&["events", "--partition", DAY]);
    assert_snapshot!("events", readable.transcript());

    let lines = project.ok(&["events", "--json"]);
    let events: Vec<Value> = lines
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|error| panic!("{error}: {line}")))
        .collect();
    let seqs: Vec<i64> = events
        .iter()
        .map(|event| event["seq"].as_i64().unwrap())
        .collect();
    assert!(
        seqs.windows(2).all(|pair| pair[0] < pair[1]),
        "in order: {seqs:?}"
    );
    assert!(
        events
            .iter()
            .any(|event| event["partition"] == "2026-01-19")
    );
    for key in [
        "seq",
        "at",
        "time",
        "run",
        "partition",
        "task",
        "attempt_id",
        "kind",
        "detail",
    ] {
        assert!(
            events[0].get(key).is_some(),
            "an event has {key}: {}",
            events[0]
        );
    }
    let one_run = project.ok(&["events", "--run", "2", "--json"]);
    assert!(
        one_run.lines().all(|line| line.contains(r#""run":2"#)),
        "{one_run}"
    );
    let unknown = project.keel(&["events", "--run", "9"]);
    assert_eq!(unknown.code, Some(2), "{}", unknown.transcript());
}

#[test]
fn events_follow_prints_events_as_they_happen_and_ends_with_the_run() {
    let project = Project::new(
        r#"[tasks.slow]
phase = "main"
command = ["sh", "-c", "touch started; sleep 1"]

[tasks.after]
phase = "main"
command = ["true"]
after = ["slow"]
"#,
    );
    let mut run = project.spawn(&["run", "--partition", DAY]);
    wait_until("the slow task to start", Duration::from_secs(10), || {
        project.path().join("started").exists()
    });
    let started = Instant::now();
    let followed = project.keel(&["events", "--partition", DAY, "--follow", "--json"]);
    assert_eq!(followed.code, Some(0), "{}", followed.transcript());
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "--follow waited for the run: {:?}",
        started.elapsed()
    );
    assert_eq!(run.wait(Duration::from_secs(20)), Some(0));
    let kinds: Vec<String> = followed
        .stdout
        .lines()
        .map(|line| {
            serde_json::from_str::<Value>(line).unwrap()["kind"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        kinds.first().map(String::as_str),
        Some("run_created"),
        "{kinds:?}"
    );
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("run_state"),
        "{kinds:?}"
    );
    let after_done = followed
        .stdout
        .lines()
        .any(|line| line.contains(r#""task":"after""#) && line.contains("task_done"));
    assert!(
        after_done,
        "events after --follow started are printed: {kinds:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Item 5: logs of the newest run, of any run, and of a sensor.

#[test]
fn logs_default_to_the_newest_run_and_take_a_run() {
    let project = Project::new(
        "[tasks.a]\nphase = \"main\"\ncommand = [\"sh\", \"-c\", \"echo output of run {run_id} on {date}\"]\n",
    );
    project.ok(&["run", "--partition", DAY]);
    project.ok(&["run", "--partition", "2026-01-17"]);
    project.ok(&["run", "--partition", DAY, "--rerun"]);
    assert_eq!(
        project.ok(&["logs", "a"]),
        "output of run 3 on 2026-01-18\n"
    );
    assert_eq!(
        project.ok(&["logs", "a", "--run", "1"]),
        "output of run 1 on 2026-01-18\n"
    );
    assert_eq!(
        project.ok(&["logs", "a", "--partition", "2026-01-17"]),
        "output of run 2 on 2026-01-17\n"
    );
    let missing = project.keel(&["logs", "a", "--run", "8"]);
    assert_eq!(missing.code, Some(2), "{}", missing.transcript());
}

#[test]
fn logs_sensor_prints_the_output_of_the_last_poll() {
    let project = Project::new(
        r#"[tasks.late]
phase = "main"
command = ["echo", "the task ran"]
wait_for = { command = ["sh", "-c", "n=$(cat polls 2>/dev/null || echo 0); n=$((n+1)); echo $n > polls; echo poll $n; test $n -ge 3 || exit 75"], every = "20ms", deadline = "10s" }

[tasks.plain]
phase = "main"
command = ["true"]
"#,
    );
    project.ok(&["run", "--partition", DAY]);
    assert_eq!(project.ok(&["logs", "late", "--sensor"]), "poll 3\n");
    assert_eq!(project.ok(&["logs", "late"]), "the task ran\n");
    let table = project.ok(&["status", "--partition", DAY]);
    assert!(table.contains("1 (+3 polls)"), "{table}");
    let no_sensor = project.keel(&["logs", "plain", "--sensor"]);
    assert_eq!(no_sensor.code, Some(2));
    assert_snapshot!("logs_no_sensor", no_sensor.transcript());
}

// ---------------------------------------------------------------------------------------------
// Item 6: attempts apart from checks and probes; time spent working.

#[test]
fn attempts_count_real_attempts_with_checks_and_probes_apart() {
    let project = Project::new(
        r#"[resources.feed]
breaker = { failures = 1, cooldown = "50ms" }

[tasks.checks]
phase = "main"
command = ["sh", "-c", "test {attempt} -ge 3 || exit 75"]
deadline = "10s"

[tasks.probed]
phase = "main"
uses = ["feed"]
command = ["sh", "-c", "test {attempt} -ge 3"]
retries = { attempts = 2, initial = "10ms", max = "50ms" }
"#,
    );
    project.ok(&["run", "--partition", DAY]);
    let table = project.keel(&["status", "--partition", DAY]);
    assert_snapshot!("attempts_checks_probes", table.transcript());
    let json = project.json(&["status", "--json"]);
    let task = |name: &str| {
        json["runs"][0]["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|task| task["name"] == name)
            .cloned()
            .unwrap()
    };
    let checks = task("checks");
    assert_eq!(
        (checks["attempts"].as_u64(), checks["checks"].as_u64()),
        (Some(3), Some(2))
    );
    // Attempt 1 fails and opens the breaker; attempt 2 is its probe and fails, using up none of
    // the 2 attempts; attempt 3, the next probe, succeeds.
    let probed = task("probed");
    assert_eq!(
        (probed["attempts"].as_u64(), probed["probes"].as_u64()),
        (Some(3), Some(1))
    );
    assert_eq!(probed["outcome"], "succeeded");
}

#[test]
fn time_is_time_spent_working_not_the_wait_before_a_manual_retry() {
    let project = Project::new(
        r#"[tasks.fixable]
phase = "main"
command = ["sh", "-c", "test -e fixed"]
"#,
    );
    assert_eq!(project.keel(&["run", "--partition", DAY]).code, Some(1));
    std::thread::sleep(Duration::from_millis(1500));
    std::fs::write(project.path().join("fixed"), "").unwrap();
    project.ok(&["retry", "fixable", "--partition", DAY]);
    let json = project.json(&["status", "--json"]);
    let task = &json["runs"][0]["tasks"][0];
    assert_eq!(task["attempts"], 2, "{task}");
    let worked = task["time_ms"].as_i64().unwrap();
    assert!(
        worked < 1000,
        "two quick attempts, not the 1.5 s between them: {worked} ms"
    );
}

#[test]
fn a_running_task_shows_its_elapsed_time() {
    let project = Project::new(
        "[tasks.slow]\nphase = \"main\"\ncommand = [\"sh\", \"-c\", \"touch started; sleep 3\"]\n",
    );
    let mut run = project.spawn(&["run", "--partition", DAY]);
    wait_until("the slow task to start", Duration::from_secs(10), || {
        project.path().join("started").exists()
    });
    let elapsed = || {
        let json = project.json(&["status", "--json"]);
        let task = json["runs"][0]["tasks"][0].clone();
        assert_eq!(task["state"], "running", "{task}");
        task["time_ms"].as_i64().unwrap()
    };
    let first = elapsed();
    std::thread::sleep(Duration::from_millis(300));
    let second = elapsed();
    assert!(
        second >= first + 250,
        "the time counts up while it runs: {first} then {second}"
    );
    let table = project.ok(&["status", "--partition", DAY]);
    let row = table.lines().find(|line| line.contains("slow")).unwrap();
    assert!(
        row.contains("running")
            && row
                .split('┆')
                .nth(4)
                .is_some_and(|cell| is_duration(cell.trim())),
        "{row}"
    );
    assert_eq!(run.wait(Duration::from_secs(20)), Some(0));
}

// ---------------------------------------------------------------------------------------------
// Item 7: a range command ends with one summary line.

#[test]
fn range_commands_end_with_one_summary_line() {
    let project = Project::new(
        r#"[tasks.a]
phase = "main"
command = ["sh", "-c", "case {date} in *-20) test -e fixed ;; esac"]
"#,
    );
    let ran = project.keel(&["run", "--from", "2026-01-18", "--to", "2026-01-20"]);
    assert_eq!(ran.code, Some(1));
    let again = project.keel(&["run", "--from", "2026-01-18", "--to", "2026-01-20"]);
    std::fs::write(project.path().join("fixed"), "").unwrap();
    let retried = project.keel(&["retry", "a", "--from", "2026-01-19", "--to", "2026-01-21"]);
    assert_eq!(retried.code, Some(0), "{}", retried.transcript());
    let status = project.keel(&["status", "--from", "2026-01-20", "--to", "2026-01-21"]);
    let one = project.keel(&["run", "--from", "2026-01-18", "--to", "2026-01-18"]);
    let last_lines = [ran, again, retried, status, one]
        .iter()
        .map(|ran| {
            format!(
                "exit {:?}: {}",
                ran.code,
                ran.stdout.lines().last().unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert_snapshot!("range_summaries", last_lines);
    let none = project.keel(&["retry", "a", "--from", "2026-02-01", "--to", "2026-02-02"]);
    assert_eq!(none.code, Some(2), "{}", none.transcript());
}
