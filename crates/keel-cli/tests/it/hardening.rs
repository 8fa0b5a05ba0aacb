//! Hardening, end to end through the `keel` binary: a result file that is a pipe, a link to an
//! endless device or far too large fails its attempt at once instead of wedging Keel.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{keel_path, write_pipeline};

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
