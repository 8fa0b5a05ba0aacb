//! The `keel` command line end to end: every bad input gets a clear error and the right exit
//! code, and the task contract (docs/tasks.md) and the commands (docs/cli.md) hold when driven
//! through the binary.
//!
//! Each test works in its own temporary project directory, which is also the working directory of
//! every `keel` it starts, so whatever the tasks write lands there. Store state is checked through
//! `keel status --json`, the way users and scripts see it; what that does not show (an attempt's
//! pid, start time and pipeline version, the event log) is read from the state file through the
//! store.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use insta::assert_snapshot;
use keel_store::Store as _;
use serde_json::Value;

use crate::support::{keel, keel_path, write_pipeline};

const DAY: &str = "2026-01-18";

/// The start of most test pipelines: one phase, no retries, timeouts far beyond any test.
const HEADER: &str = r#"[pipeline]
name = "t"
timezone = "UTC"
partition = "date"

[defaults]
timeout = "20s"
retries = { attempts = 1, initial = "10ms", max = "50ms" }

[phases.main]

"#;

fn pipeline(tasks: &str) -> String {
    format!("{HEADER}{tasks}")
}

/// What one `keel` invocation did.
#[derive(Debug)]
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Ran {
    /// The exit code and output, for snapshots.
    fn transcript(&self) -> String {
        let mut text = format!(
            "exit {}\n",
            self.code.map_or("signal".into(), |code| code.to_string())
        );
        if !self.stderr.is_empty() {
            text.push_str(&format!("--- stderr\n{}", self.stderr));
        }
        if !self.stdout.is_empty() {
            text.push_str(&format!("--- stdout\n{}", self.stdout));
        }
        text
    }
}

/// A temporary project directory holding `keel.toml` (or not), its state and the tasks' files.
struct Project {
    dir: tempfile::TempDir,
    pipeline: PathBuf,
}

impl Project {
    fn new(text: &str) -> Project {
        let dir = tempfile::tempdir().unwrap();
        let pipeline = write_pipeline(dir.path(), text);
        Project { dir, pipeline }
    }

    /// A directory without a pipeline file.
    fn empty() -> Project {
        let dir = tempfile::tempdir().unwrap();
        let pipeline = dir.path().join("keel.toml");
        Project { dir, pipeline }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn file(&self, name: &str) -> PathBuf {
        self.path().join(name)
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.file(name)).unwrap_or_default()
    }

    /// `keel` started in the project directory, bounded in time.
    fn command(&self) -> assert_cmd::Command {
        let mut command = keel();
        command
            .current_dir(self.path())
            .timeout(Duration::from_secs(20));
        command
    }

    /// `keel ARGS…` exactly as given, with the project's path in its output redacted.
    fn raw(&self, args: &[&str]) -> Ran {
        let ran = self.unredacted(args);
        Ran {
            code: ran.code,
            stdout: self.redact(&ran.stdout),
            stderr: self.redact(&ran.stderr),
        }
    }

    /// `keel ARGS…` with its output exactly as printed.
    fn unredacted(&self, args: &[&str]) -> Ran {
        let output = self.command().args(args).output().unwrap();
        Ran {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// `keel SUBCOMMAND <absolute pipeline path> ARGS…`.
    fn keel(&self, subcommand: &str, args: &[&str]) -> Ran {
        let pipeline = self.pipeline.to_str().unwrap();
        let mut all = vec![subcommand, pipeline];
        all.extend_from_slice(args);
        self.raw(&all)
    }

    fn run(&self, args: &[&str]) -> Ran {
        self.keel("run", args)
    }

    /// Replaces the project's path with `[DIR]`, so messages can be snapshotted.
    fn redact(&self, text: &str) -> String {
        let mut text = text.to_string();
        let raw = self.path().display().to_string();
        if let Ok(canonical) = self.path().canonicalize() {
            text = text.replace(&canonical.display().to_string(), "[DIR]");
        }
        text.replace(&raw, "[DIR]")
    }

    /// `keel status --json`, parsed.
    fn status(&self) -> Value {
        let ran = self.keel("status", &["--json"]);
        assert_eq!(ran.code, Some(0), "status --json failed: {}", ran.stderr);
        serde_json::from_str(&ran.stdout)
            .unwrap_or_else(|error| panic!("status --json is not JSON ({error}): {}", ran.stdout))
    }

    /// The newest run of `partition`, as `keel status --json` shows it.
    fn run_json(&self, partition: &str) -> Value {
        let status = self.status();
        status["runs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|run| run["partition"] == partition)
            .cloned()
            .unwrap_or_else(|| panic!("no run of {partition} in {status:#}"))
    }

    /// One task of the newest run of `partition`.
    fn task(&self, partition: &str, name: &str) -> Value {
        let run = self.run_json(partition);
        run["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|task| task["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no task {name} in {run:#}"))
    }

    /// The attempts of the newest run of `partition`, read from the state file.
    fn attempts(&self, partition: &str) -> Vec<keel_store::AttemptRecord> {
        self.read_state(partition, |store, run| async move {
            store.attempts(run).await.unwrap()
        })
    }

    /// The event log of the newest run of `partition`, read from the state file.
    fn events(&self, partition: &str) -> Vec<keel_store::EventRecord> {
        self.read_state(partition, |store, run| async move {
            store.events(run).await.unwrap()
        })
    }

    fn read_state<T, F>(
        &self,
        partition: &str,
        read: impl FnOnce(keel_store::SqliteStore, keel_model::RunId) -> F,
    ) -> T
    where
        F: std::future::Future<Output = T>,
    {
        let run = keel_model::RunId(self.run_json(partition)["id"].as_i64().unwrap());
        let store = keel_store::SqliteStore::open(&self.file(".keel/state.db")).unwrap();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(read(store, run))
    }

    /// `keel status --partition D`: the table, with each task's message.
    fn table(&self, partition: &str) -> String {
        let ran = self.keel("status", &["--partition", partition]);
        assert_eq!(
            ran.code,
            Some(0),
            "status --partition failed: {}",
            ran.stderr
        );
        ran.stdout
    }

    /// `keel logs` of a task; `attempt` None means the latest. The task's output is returned as
    /// printed, its error messages with the project's path redacted.
    fn logs(&self, partition: &str, task: &str, attempt: Option<u32>) -> Ran {
        let attempt = attempt.map(|number| number.to_string());
        let pipeline = self.pipeline.to_str().unwrap();
        let mut args = vec!["logs", pipeline, task, "--partition", partition];
        if let Some(number) = &attempt {
            args.extend(["--attempt", number.as_str()]);
        }
        let ran = self.unredacted(&args);
        Ran {
            code: ran.code,
            stdout: ran.stdout,
            stderr: self.redact(&ran.stderr),
        }
    }

    /// Starts `keel SUBCOMMAND <pipeline> ARGS…` in the background; its output goes to files.
    fn spawn(&self, subcommand: &str, args: &[&str]) -> Background {
        let stdout = std::fs::File::create(self.file(&format!("{subcommand}.stdout"))).unwrap();
        let stderr = std::fs::File::create(self.file(&format!("{subcommand}.stderr"))).unwrap();
        let child = Command::new(keel_path())
            .arg(subcommand)
            .arg(&self.pipeline)
            .args(args)
            .current_dir(self.path())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap();
        Background { child }
    }

    /// The pid a task wrote to `name`, once it is there.
    fn pid_in(&self, name: &str) -> u32 {
        let path = self.file(name);
        wait_until(
            &format!("{name} to be written"),
            Duration::from_secs(10),
            || std::fs::read_to_string(&path).is_ok_and(|text| text.trim().parse::<u32>().is_ok()),
        );
        self.read(name).trim().parse().unwrap()
    }

    /// Every `output.log` under the state directory, with its size.
    fn output_logs(&self) -> Vec<(PathBuf, u64)> {
        self.output_logs_under(&self.file(".keel"))
    }

    /// Every `output.log` under `dir`, with its size.
    fn output_logs_under(&self, dir: &Path) -> Vec<(PathBuf, u64)> {
        fn walk(dir: &Path, found: &mut Vec<(PathBuf, u64)>) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, found);
                } else if path.file_name().is_some_and(|name| name == "output.log") {
                    found.push((path.clone(), entry.metadata().unwrap().len()));
                }
            }
        }
        let mut found = Vec::new();
        walk(dir, &mut found);
        found
    }
}

/// A `keel` running in the background. Dropping it stops it (SIGTERM, then SIGKILL), so a failing
/// test leaves no keel behind.
struct Background {
    child: Child,
}

impl Background {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "keel (pid {}) did not finish within {timeout:?}",
                self.pid()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill_dash_nine(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            signal(self.pid(), libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Kills, on drop, the `sleep` processes whose pids the tasks wrote to these files, in case Keel
/// failed to. Only a process that is still a `sleep` is killed, so a reused pid is left alone.
struct Reap(Vec<PathBuf>);

impl Drop for Reap {
    fn drop(&mut self) {
        for file in &self.0 {
            let Some(pid) = std::fs::read_to_string(file)
                .ok()
                .and_then(|text| text.trim().parse::<u32>().ok())
            else {
                continue;
            };
            let command = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if alive(pid) && String::from_utf8_lossy(&command).contains("sleep") {
                signal(pid, libc::SIGKILL);
            }
        }
    }
}

fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) on a pid this test started or read from its own task's pid file.
    unsafe { libc::kill(pid as libc::pid_t, signal) };
}

/// Whether `pid` is a live process (not gone, not a zombie waiting to be reaped).
fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z') | Some('X') | None)
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// `KEY=value` lines of a task's output, as a map.
fn env_lines(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.to_string(), value.to_string()))
        .collect()
}

fn is_lower_hex(text: &str, length: usize) -> bool {
    text.len() == length
        && text
            .chars()
            .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
}

fn no_panic(ran: &Ran) {
    assert!(
        !ran.stderr.contains("panicked"),
        "keel panicked: {}",
        ran.stderr
    );
    assert!(
        ran.code != Some(101),
        "keel exited 101 (a panic): {}",
        ran.stderr
    );
}

/// A run id, as `status --json` reports it, in the text form messages use.
fn run_id(run: &Value) -> String {
    run["id"].to_string().trim_matches('"').to_string()
}

// ---------------------------------------------------------------------------------------------
// Bad input: a pipeline file that is missing or wrong.

#[test]
fn missing_pipeline_file_names_the_path_and_suggests_keel_init() {
    let project = Project::empty();
    let ran = project.run(&["--partition", DAY]);
    assert_eq!(ran.code, Some(2));
    assert!(ran.stderr.contains("[DIR]/keel.toml"), "{}", ran.stderr);
    assert!(ran.stderr.contains("keel init"), "{}", ran.stderr);
    assert_snapshot!("missing_pipeline_file", ran.transcript());

    // The default PIPELINE is ./keel.toml, and every command that reads it says the same.
    let ran = project.raw(&["validate"]);
    assert_eq!(ran.code, Some(2));
    assert!(
        ran.stderr
            .contains("\"keel.toml\" not found\nhint: create one with `keel init`"),
        "{}",
        ran.stderr
    );
    let ran = project.raw(&["status", "--json"]);
    assert_eq!(ran.code, Some(2));
    assert!(ran.stderr.contains("keel init"), "{}", ran.stderr);
    assert!(
        !project.file(".keel").exists(),
        "no state is created for a missing pipeline"
    );
}

#[test]
fn toml_syntax_error_reports_file_line_and_column() {
    let project = Project::new("[pipeline]\nname = \"t\"\ntimezone = \"UTC\n\n[phases.main]\n");
    let ran = project.keel("validate", &[]);
    assert_eq!(ran.code, Some(2));
    assert!(ran.stderr.contains("keel.toml:3:"), "{}", ran.stderr);
    assert_snapshot!("toml_syntax_error", ran.transcript());
    // `run` refuses the same file the same way, before touching any state.
    let run = project.run(&["--partition", DAY]);
    assert_eq!(run.code, Some(2));
    assert_eq!(run.stderr, ran.stderr);
    assert!(!project.file(".keel").exists());
}

#[test]
fn unknown_field_gets_a_did_you_mean() {
    let project = Project::new(&pipeline(
        r#"[tasks.fetch]
phase = "main"
command = ["true"]
timout = "5m"
"#,
    ));
    let ran = project.keel("validate", &[]);
    assert_eq!(ran.code, Some(2));
    assert!(
        ran.stderr.contains(r#"did you mean "timeout"?"#),
        "{}",
        ran.stderr
    );
    assert_snapshot!("unknown_field", ran.transcript());
}

#[test]
fn cycle_is_printed_as_a_path() {
    let project = Project::new(&pipeline(
        r#"[tasks.a]
phase = "main"
command = ["true"]
after = ["b"]

[tasks.b]
phase = "main"
command = ["true"]
after = ["a"]
"#,
    ));
    let ran = project.keel("validate", &[]);
    assert_eq!(ran.code, Some(2));
    assert!(ran.stderr.contains("a → b → a"), "{}", ran.stderr);
    assert_snapshot!("cycle", ran.transcript());
}

#[test]
fn unknown_dependency_gets_a_did_you_mean() {
    let project = Project::new(&pipeline(
        r#"[tasks.player_summary]
phase = "main"
command = ["true"]

[tasks.ml_features]
phase = "main"
command = ["true"]
after = ["player_summry"]
"#,
    ));
    let ran = project.keel("validate", &[]);
    assert_eq!(ran.code, Some(2));
    assert!(
        ran.stderr
            .contains(r#"unknown dependency "player_summry" in task "ml_features""#),
        "{}",
        ran.stderr
    );
    assert!(
        ran.stderr.contains(r#"did you mean "player_summary"?"#),
        "{}",
        ran.stderr
    );
    assert_snapshot!("unknown_dependency", ran.transcript());
}

#[test]
fn several_errors_in_one_file_are_all_reported_in_one_run() {
    let project = Project::new(
        r#"[pipeline]
name = "t"
timezone = "Mars/Olympus_Mons"
partition = "date"

[defaults]
timeout = "10 parsecs"

[phases.main]

[tasks.summary]
phase = "mian"
command = ["true"]
retries = { atempts = 3 }

[tasks.report]
phase = "main"
command = ["true"]
after = ["sumary"]
"#,
    );
    let ran = project.keel("validate", &[]);
    assert_eq!(ran.code, Some(2));
    for needle in [
        "Mars/Olympus_Mons",
        "10 parsecs",
        r#""mian""#,
        r#""atempts""#,
        r#""sumary""#,
        "5 errors in",
    ] {
        assert!(
            ran.stderr.contains(needle),
            "{needle:?} missing from:\n{}",
            ran.stderr
        );
    }
    assert_snapshot!("several_errors", ran.transcript());
}

#[test]
fn validate_accepts_the_keel_init_starter_and_it_runs() {
    let project = Project::empty();
    let ran = project.raw(&["init"]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert!(project.pipeline.exists());

    let ran = project.raw(&["validate"]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert!(ran.stdout.contains("keel.toml is valid"), "{}", ran.stdout);
    assert!(ran.stderr.is_empty(), "{}", ran.stderr);

    // init refuses to overwrite a pipeline without --force.
    let again = project.raw(&["init"]);
    assert_ne!(again.code, Some(0));
    assert!(
        again.stderr.contains("already exists\nhint: pass --force"),
        "{}",
        again.stderr
    );

    let ran = project.raw(&["run", "--partition", DAY]);
    assert_eq!(ran.code, Some(0), "{}", ran.transcript());
    let run = project.run_json(DAY);
    assert_eq!(run["state"], "succeeded");
    assert_eq!(run["tasks"].as_array().unwrap().len(), 4);
}

// ---------------------------------------------------------------------------------------------
// Bad input at run time.

#[test]
fn command_not_found_is_failed_permanent_and_never_retried() {
    let project = Project::new(&pipeline(
        r#"[tasks.fetch]
phase = "main"
command = ["no-such-program-keel-test", "--flag"]
retries = { attempts = 3, initial = "10ms" }
"#,
    ));
    let ran = project.run(&["--partition", DAY]);
    no_panic(&ran);
    assert_eq!(ran.code, Some(1), "{}", ran.transcript());
    let task = project.task(DAY, "fetch");
    assert_eq!(task["outcome"], "failed_permanent", "{task}");
    assert_eq!(task["attempts"], 1, "{task}");
    assert_eq!(project.run_json(DAY)["state"], "failed");
    let table = project.table(DAY);
    assert!(
        table.contains("command not found: no-such-program-keel-test"),
        "{table}"
    );
}

#[test]
fn state_directory_under_a_regular_file_is_a_clear_error() {
    let project = Project::new(&pipeline(
        "[tasks.a]\nphase = \"main\"\ncommand = [\"true\"]\n",
    ));
    std::fs::write(project.file("plain-file"), "not a directory").unwrap();
    let state = project.file("plain-file/sub/state.db");
    let ran = project.run(&["--partition", DAY, "--state", state.to_str().unwrap()]);
    no_panic(&ran);
    assert_eq!(ran.code, Some(1));
    assert!(
        ran.stderr.contains("[DIR]/plain-file/sub"),
        "{}",
        ran.stderr
    );
    assert_snapshot!("state_directory_under_a_file", ran.transcript());
    assert_eq!(project.read("plain-file"), "not a directory");
}

/// Regression: the lock-file error printed its OS error twice ("…: No such file or directory
/// (os error 2); check that the state directory is writable: No such file or directory (os error
/// 2)"), because `LockError::Io` formats its source and anyhow prints the source chain again.
#[test]
fn state_directory_that_cannot_be_written_names_the_path_once_with_its_cause() {
    let project = Project::new(&pipeline(
        "[tasks.a]\nphase = \"main\"\ncommand = [\"true\"]\n",
    ));
    let ran = project.run(&["--partition", DAY, "--state", "/proc/self/state.db"]);
    no_panic(&ran);
    assert_eq!(ran.code, Some(1), "{}", ran.stderr);
    assert!(ran.stderr.contains("/proc/self"), "{}", ran.stderr);
    assert_eq!(
        ran.stderr
            .lines()
            .filter(|line| line.starts_with("error: "))
            .count(),
        1,
        "one error: {}",
        ran.stderr
    );
    assert_eq!(
        ran.stderr.matches("os error").count(),
        1,
        "the cause once: {}",
        ran.stderr
    );
    assert_eq!(
        ran.stderr.matches("(os error").count(),
        1,
        "the cause is given once: {}",
        ran.stderr
    );
}

/// The names in `dir`, sorted; empty if it does not exist.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Regression: Keel opened `keel.lock` following links and truncated it for its pid, so a link
/// planted in the state directory made it overwrite the file the link pointed to.
#[test]
fn a_lock_file_that_is_a_symbolic_link_is_refused_and_its_target_left_alone() {
    let project = Project::new(&pipeline(
        "[tasks.a]\nphase = \"main\"\ncommand = [\"touch\", \"a.ran\"]\n",
    ));
    std::fs::create_dir(project.file(".keel")).unwrap();
    std::fs::write(project.file("precious.txt"), "precious contents\n").unwrap();
    std::os::unix::fs::symlink(
        project.file("precious.txt"),
        project.file(".keel/keel.lock"),
    )
    .unwrap();
    let ran = project.run(&["--partition", DAY]);
    no_panic(&ran);
    assert_eq!(ran.code, Some(1), "{}", ran.transcript());
    assert_eq!(
        ran.stderr,
        "error: the lock file \"[DIR]/.keel/keel.lock\" is a symbolic link\nhint: keel follows no links in its state directory, so remove it and try again\n"
    );
    assert_eq!(project.read("precious.txt"), "precious contents\n");
    assert!(!project.file("a.ran").exists(), "no task ran");
}

/// Regression: a state directory that every user may write to, such as /tmp, was used as it
/// was: another user could plant links or files among Keel's before Keel made them.
#[test]
fn a_state_directory_writable_by_every_user_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let project = Project::new(&pipeline(
        "[tasks.a]\nphase = \"main\"\ncommand = [\"touch\", \"a.ran\"]\n",
    ));
    let shared = project.file("shared");
    std::fs::create_dir(&shared).unwrap();
    let state = shared.join("state.db");
    let state = state.to_str().unwrap();
    for (mode, hint) in [
        (0o777, "make it private with `chmod 700 [DIR]/shared`"),
        (0o1777, "keep the state in a directory of your own"),
    ] {
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(mode)).unwrap();
        let ran = project.run(&["--partition", DAY, "--state", state]);
        no_panic(&ran);
        assert_eq!(ran.code, Some(1), "mode {mode:o}: {}", ran.transcript());
        assert!(
            ran.stderr.starts_with(&format!(
                "error: state directory \"[DIR]/shared\" is writable by every user (mode {mode:o})"
            )),
            "{}",
            ran.stderr
        );
        assert!(ran.stderr.contains(hint), "{}", ran.stderr);
        assert_eq!(listing(&shared), Vec::<String>::new(), "nothing was made");
    }
    assert!(!project.file("a.ran").exists(), "no task ran");
    // Made private, it is used.
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o700)).unwrap();
    let ran = project.run(&["--partition", DAY, "--state", state]);
    assert_eq!(ran.code, Some(0), "{}", ran.transcript());
}

/// Regression: the state directory was made 0755 and the database, its journal and the lock
/// 0644, so every user of the machine could read the tasks' output, results and messages.
#[test]
fn a_new_state_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    // The task reports the modes while Keel holds the database open, when its -wal and -shm
    // files exist.
    let project = Project::new(&pipeline(
        r#"[tasks.a]
phase = "main"
command = ["sh", "-c", "stat -c '%a %n' .keel .keel/state.db .keel/state.db-wal .keel/state.db-shm .keel/keel.lock > modes.txt"]
"#,
    ));
    let ran = project.run(&["--partition", DAY]);
    assert_eq!(ran.code, Some(0), "{}", ran.transcript());
    assert_eq!(
        project.read("modes.txt"),
        "700 .keel\n600 .keel/state.db\n600 .keel/state.db-wal\n600 .keel/state.db-shm\n600 .keel/keel.lock\n"
    );
    let mode = |name: &str| {
        std::fs::metadata(project.file(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode(".keel"), 0o700);
    assert_eq!(mode(".keel/state.db"), 0o600);
    assert_eq!(mode(".keel/keel.lock"), 0o600);

    // A state in a directory that exists already: the directory is left as it was.
    let other = Project::new(&pipeline(
        "[tasks.a]\nphase = \"main\"\ncommand = [\"true\"]\n",
    ));
    std::fs::create_dir(other.file("mine")).unwrap();
    std::fs::set_permissions(other.file("mine"), std::fs::Permissions::from_mode(0o750)).unwrap();
    let state = other.file("mine/state.db");
    let ran = other.run(&["--partition", DAY, "--state", state.to_str().unwrap()]);
    assert_eq!(ran.code, Some(0), "{}", ran.transcript());
    let mode_in_other = |name: &str| {
        std::fs::metadata(other.file(name))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode_in_other("mine"), 0o750);
    assert_eq!(mode_in_other("mine/state.db"), 0o600);
}

/// Sets `dir` and everything under it to `dir_mode` and `file_mode`, owned by `owner` if given.
/// Directories are changed after what they hold, so that taking their write bit away comes last.
fn set_tree_modes(dir: &Path, owner: Option<u32>, dir_mode: u32, file_mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            set_tree_modes(&path, owner, dir_mode, file_mode);
        } else {
            std::os::unix::fs::chown(&path, owner, owner).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(file_mode)).unwrap();
        }
    }
    std::os::unix::fs::chown(dir, owner, owner).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(dir_mode)).unwrap();
}

/// Regression: `keel status` and `keel logs` opened the state as `keel run` does, to write it
/// (the journal mode, migrations), so both failed on a state directory the user may only read,
/// for example one kept by a service account. They now open it read-only.
///
/// Permissions do not bind root, so when the tests run as root the state is handed to `nobody`,
/// made read-only, and `keel` runs as `nobody`.
#[test]
fn status_and_logs_read_a_state_directory_they_may_not_write_to() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let project = Project::new(&pipeline(
        "[tasks.a]\nphase = \"main\"\ncommand = [\"sh\", \"-c\", \"echo hello from a\"]\n",
    ));
    assert_eq!(project.run(&["--partition", DAY]).code, Some(0));
    const NOBODY: u32 = 65534;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let as_root = unsafe { libc::geteuid() } == 0;
    let owner = as_root.then_some(NOBODY);
    std::fs::set_permissions(project.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&project.pipeline, std::fs::Permissions::from_mode(0o644)).unwrap();
    let state = project.file(".keel");
    let before = (
        listing(&state),
        std::fs::read(state.join("state.db")).unwrap(),
    );
    set_tree_modes(&state, owner, 0o500, 0o400);
    // Whatever happens below, give the state back so that the directory can be removed.
    struct Restore(PathBuf);
    impl Drop for Restore {
        fn drop(&mut self) {
            set_tree_modes(&self.0, Some(0), 0o700, 0o600);
        }
    }
    let _restore = as_root.then(|| Restore(state.clone()));

    // The checkout (and its target directory) may sit where `nobody` cannot reach, such as
    // under /root: `nobody` runs a copy of the binary from a directory it can enter.
    let reader_binary = tempfile::tempdir().unwrap();
    let keel_for_reader = if as_root {
        std::fs::set_permissions(reader_binary.path(), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        let copy = reader_binary.path().join("keel");
        std::fs::copy(keel_path(), &copy).unwrap();
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
        copy
    } else {
        keel_path()
    };
    let keel_as_reader = |args: &[&str]| {
        let mut command = Command::new(&keel_for_reader);
        command
            .arg(args[0])
            .arg(&project.pipeline)
            .args(&args[1..])
            .current_dir(project.path());
        if as_root {
            command.uid(NOBODY).gid(NOBODY);
        }
        // A test running beside this one may fork while the copy's write descriptor is open,
        // and its child holds it until it execs: running the copy then fails with "text file
        // busy" for a moment.
        let mut tries = 0;
        let output = loop {
            match command.output() {
                Err(error) if error.raw_os_error() == Some(libc::ETXTBSY) && tries < 50 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                result => break result.unwrap(),
            }
        };
        Ran {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: project.redact(&String::from_utf8_lossy(&output.stderr)),
        }
    };
    let table = keel_as_reader(&["status", "--partition", DAY]);
    assert_eq!(table.code, Some(0), "{}", table.transcript());
    assert!(table.stdout.contains("succeeded"), "{}", table.stdout);
    let list = keel_as_reader(&["status"]);
    assert_eq!(list.code, Some(0), "{}", list.transcript());
    let json = keel_as_reader(&["status", "--json"]);
    assert_eq!(json.code, Some(0), "{}", json.transcript());
    let json: Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(json["runs"][0]["state"], "succeeded", "{json:#}");
    let logs = keel_as_reader(&["logs", "a", "--partition", DAY]);
    assert_eq!(logs.code, Some(0), "{}", logs.transcript());
    assert_eq!(logs.stdout, "hello from a\n");

    let after = (
        listing(&state),
        std::fs::read(state.join("state.db")).unwrap(),
    );
    assert!(
        after == before,
        "the state changed: {:?} → {:?}",
        before.0,
        after.0
    );
}

/// `keel status` and `keel logs` on a state they could write to leave it exactly as it was: no
/// -wal, -shm or lock file is made, the database is not written.
#[test]
fn status_and_logs_leave_no_file_behind_in_a_state_directory() {
    let project = Project::new(&pipeline(
        "[tasks.a]\nphase = \"main\"\ncommand = [\"sh\", \"-c\", \"echo hello from a\"]\n",
    ));
    assert_eq!(project.run(&["--partition", DAY]).code, Some(0));
    let state = project.file(".keel");
    let snapshot = || {
        let database = state.join("state.db");
        (
            listing(&state),
            std::fs::read(&database).unwrap(),
            std::fs::metadata(&database).unwrap().modified().unwrap(),
        )
    };
    let before = snapshot();
    assert_eq!(before.0, ["attempts", "keel.lock", "state.db"]);
    for args in [&["--partition", DAY][..], &["--json"][..], &[][..]] {
        let ran = project.keel("status", args);
        assert_eq!(ran.code, Some(0), "status {args:?}: {}", ran.transcript());
    }
    assert_eq!(project.logs(DAY, "a", None).stdout, "hello from a\n");
    assert!(
        snapshot() == before,
        "the state changed: {:?} → {:?}",
        before.0,
        snapshot().0
    );
}

/// 8 KiB of bytes from a fixed generator: never a valid SQLite header.
fn garbage(length: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..length)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

#[test]
fn corrupt_state_file_is_refused_and_left_untouched() {
    let project = Project::new(&pipeline(
        "[tasks.a]\nphase = \"main\"\ncommand = [\"true\"]\n",
    ));
    let bytes = garbage(8192);
    let database = project.file("state.db");
    std::fs::write(&database, &bytes).unwrap();
    let state = database.to_str().unwrap();

    let ran = project.run(&["--partition", DAY, "--state", state]);
    no_panic(&ran);
    assert_eq!(ran.code, Some(1));
    assert!(ran.stderr.contains("[DIR]/state.db"), "{}", ran.stderr);
    assert_snapshot!("corrupt_state_file", ran.transcript());

    let status = project.keel("status", &["--json", "--state", state]);
    no_panic(&status);
    assert_eq!(status.code, Some(1));
    assert_eq!(status.stderr, ran.stderr);

    assert_eq!(
        std::fs::read(&database).unwrap(),
        bytes,
        "the file is left untouched"
    );
    assert!(!project.file("state.db-wal").exists());
    assert!(!project.file("a.ran").exists());
}

#[test]
fn damaged_keel_database_is_reported_corrupt_and_left_untouched() {
    let project = Project::new(&pipeline(
        "[tasks.a]\nphase = \"main\"\ncommand = [\"true\"]\n",
    ));
    assert_eq!(project.run(&["--partition", DAY]).code, Some(0));
    // Keep the header page, wreck the rest.
    let database = project.file(".keel/state.db");
    let mut bytes = std::fs::read(&database).unwrap();
    assert!(bytes.len() > 4096);
    let length = bytes.len();
    bytes[4096..].copy_from_slice(&garbage(length - 4096));
    std::fs::write(&database, &bytes).unwrap();

    for args in [&["--json"][..], &["--partition", DAY][..]] {
        let ran = project.keel("status", args);
        no_panic(&ran);
        assert_eq!(ran.code, Some(1), "{}", ran.transcript());
        assert!(
            ran.stderr
                .contains(r#"state store "[DIR]/.keel/state.db" is corrupt"#),
            "{}",
            ran.stderr
        );
        assert!(
            ran.stderr.contains("restore it from a backup"),
            "{}",
            ran.stderr
        );
    }
    let ran = project.run(&["--partition", "2026-01-19"]);
    no_panic(&ran);
    assert_eq!(ran.code, Some(1), "{}", ran.transcript());
    assert!(ran.stderr.contains("is corrupt"), "{}", ran.stderr);
    assert_eq!(
        std::fs::read(&database).unwrap(),
        bytes,
        "the file is left untouched"
    );
}

/// Creates an SQLite database of another application with `tables` tables.
fn foreign_database(path: &Path, tables: usize) {
    let script = format!(
        "import sqlite3, sys\nconnection = sqlite3.connect(sys.argv[1])\nfor n in range({tables}):\n    connection.execute(f'create table t{{n}} (id integer primary key, name text)')\n    connection.execute(f\"insert into t{{n}} (name) values ('ann')\")\nconnection.commit()\nconnection.close()\n"
    );
    let status = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(path)
        .status()
        .expect("python3 runs");
    assert!(status.success());
}

#[test]
fn foreign_sqlite_database_is_refused_and_left_untouched() {
    let project = Project::new(&pipeline(
        "[tasks.a]\nphase = \"main\"\ncommand = [\"touch\", \"a.ran\"]\n",
    ));
    let database = project.file("other-app.db");
    foreign_database(&database, 2);
    let before = std::fs::read(&database).unwrap();
    let state = database.to_str().unwrap();

    let ran = project.run(&["--partition", DAY, "--state", state]);
    no_panic(&ran);
    assert_eq!(ran.code, Some(1));
    assert_snapshot!("foreign_sqlite_database", ran.transcript());
    let status = project.keel("status", &["--json", "--state", state]);
    assert_eq!(status.code, Some(1));
    assert_eq!(status.stderr, ran.stderr);

    assert_eq!(
        std::fs::read(&database).unwrap(),
        before,
        "the file is left untouched"
    );
    assert!(!project.file("other-app.db-wal").exists());
    assert!(!project.file("a.ran").exists(), "no task ran");
}

/// Regression: `state = "/etc/passwd"` was refused, but only after `keel.lock` had been made
/// beside it. The state file is checked before anything is made in its directory.
#[test]
fn a_state_file_that_is_not_keels_is_refused_leaving_its_directory_as_it_was() {
    let project = Project::new(&pipeline(
        "[tasks.a]\nphase = \"main\"\ncommand = [\"touch\", \"a.ran\"]\n",
    ));
    let etc = project.file("etc");
    std::fs::create_dir(&etc).unwrap();
    let passwd = "root:x:0:0:root:/root:/bin/bash\n".repeat(40);
    std::fs::write(etc.join("passwd"), &passwd).unwrap();
    foreign_database(&etc.join("other-app.db"), 1);
    let other_app = std::fs::read(etc.join("other-app.db")).unwrap();
    let before = listing(&etc);

    for name in ["passwd", "other-app.db"] {
        let state = etc.join(name);
        let state = state.to_str().unwrap();
        for (what, ran) in [
            ("run", project.run(&["--partition", DAY, "--state", state])),
            (
                "retry",
                project.keel("retry", &["a", "--partition", DAY, "--state", state]),
            ),
        ] {
            no_panic(&ran);
            assert_eq!(ran.code, Some(1), "{what} {name}: {}", ran.transcript());
            assert!(
                ran.stderr.contains("is not a Keel state database"),
                "{what} {name}: {}",
                ran.stderr
            );
            assert_eq!(listing(&etc), before, "{what} {name} left files behind");
        }
    }
    assert_eq!(std::fs::read_to_string(etc.join("passwd")).unwrap(), passwd);
    assert_eq!(std::fs::read(etc.join("other-app.db")).unwrap(), other_app);
    assert!(!project.file("a.ran").exists(), "no task ran");
}

/// Regression: the foreign-database error said "it holds 1 tables".
#[test]
fn foreign_database_with_one_table_says_table_not_tables() {
    let project = Project::new(&pipeline(
        "[tasks.a]\nphase = \"main\"\ncommand = [\"true\"]\n",
    ));
    let database = project.file("other-app.db");
    foreign_database(&database, 1);
    let ran = project.run(&["--partition", DAY, "--state", database.to_str().unwrap()]);
    assert_eq!(ran.code, Some(1));
    assert!(
        ran.stderr.contains("it holds 1 table and"),
        "{}",
        ran.stderr
    );
}

#[test]
fn second_run_on_the_same_state_is_refused_while_one_is_running() {
    let project = Project::new(&pipeline(
        r#"[tasks.slow]
phase = "main"
command = ["sh", "-c", "echo started >> slow.ledger; sleep 3; echo finished >> slow.ledger"]

[tasks.after_slow]
phase = "main"
command = ["sh", "-c", "echo ran >> after_slow.ledger"]
after = ["slow"]
"#,
    ));
    let mut first = project.spawn("run", &["--partition", DAY]);
    // Wait for the task itself before asking for status: see
    // status_while_the_first_run_creates_the_state_never_fails.
    wait_until("the slow task to start", Duration::from_secs(10), || {
        project.read("slow.ledger") == "started\n"
    });
    let status = project.status();
    assert_eq!(status["runs"][0]["state"], "running", "{status:#}");
    assert_eq!(
        status["runs"][0]["tasks"][0]["state"], "running",
        "{status:#}"
    );

    let expected = format!(
        "another keel is running this pipeline (pid {})",
        first.pid()
    );
    for (what, ran) in [
        (
            "run of the same partition",
            project.run(&["--partition", DAY]),
        ),
        (
            "run of another partition",
            project.run(&["--partition", "2026-01-19"]),
        ),
        (
            "run with --rerun",
            project.run(&["--partition", DAY, "--rerun"]),
        ),
        (
            "retry",
            project.keel("retry", &["slow", "--partition", DAY]),
        ),
    ] {
        no_panic(&ran);
        assert_ne!(ran.code, Some(0), "{what}: {}", ran.transcript());
        assert!(ran.stderr.contains(&expected), "{what}: {}", ran.stderr);
    }
    let ran = project.run(&["--partition", DAY]);
    assert_snapshot!(
        "second_run_refused",
        ran.transcript().replace(&first.pid().to_string(), "[PID]")
    );

    // The first run is unharmed: it completes, and the store shows exactly one run.
    let status = first.wait(Duration::from_secs(15));
    assert!(
        status.success(),
        "first run: {status}\n{}",
        project.read("run.stderr")
    );
    let runs = project.status()["runs"].as_array().unwrap().clone();
    assert_eq!(runs.len(), 1, "{runs:#?}");
    assert_eq!(runs[0]["state"], "succeeded");
    for task in runs[0]["tasks"].as_array().unwrap() {
        assert_eq!(task["outcome"], "succeeded", "{task}");
        assert_eq!(task["attempts"], 1, "{task}");
    }
    assert_eq!(project.read("slow.ledger"), "started\nfinished\n");
    assert_eq!(project.read("after_slow.ledger"), "ran\n");
}

/// Regression: `keel status` while the very first `keel run` was creating the state failed with
/// "state store error: table runs already exists": both processes read `user_version` 0 before
/// taking the write lock, and both ran the migrations.
#[test]
fn status_while_the_first_run_creates_the_state_never_fails() {
    let mut failures = Vec::new();
    for _ in 0..10 {
        let project = Project::new(&pipeline(
            "[tasks.a]\nphase = \"main\"\ncommand = [\"true\"]\n",
        ));
        let mut run = project.spawn("run", &["--partition", DAY]);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let finished = run.child.try_wait().unwrap().is_some();
            let ran = project.keel("status", &["--json"]);
            if ran.code != Some(0) {
                failures.push(ran.stderr);
            }
            if finished || Instant::now() > deadline {
                break;
            }
        }
        let status = run.wait(Duration::from_secs(10));
        assert!(status.success(), "{}", project.read("run.stderr"));
        assert_eq!(project.run_json(DAY)["state"], "succeeded");
    }
    assert!(
        failures.is_empty(),
        "status failed {} times: {failures:#?}",
        failures.len()
    );
}

#[test]
fn bad_partition_value_exits_2() {
    let project = Project::new(&pipeline(
        "[tasks.a]\nphase = \"main\"\ncommand = [\"touch\", \"a.ran\"]\n",
    ));
    // Badly written: how to write a date. (Written right but no such day: why, in
    // messages::a_well_written_date_that_does_not_exist_says_so.)
    for partition in ["someday", "18/01/2026", ""] {
        let ran = project.run(&["--partition", partition]);
        assert_eq!(
            ran.code,
            Some(2),
            "--partition {partition:?}: {}",
            ran.transcript()
        );
        assert!(ran.stderr.contains("YYYY-MM-DD"), "{}", ran.stderr);
    }
    assert_snapshot!(
        "bad_partition",
        project.run(&["--partition", "someday"]).transcript()
    );
    let ran = project.keel("status", &["--partition", "someday"]);
    assert_eq!(ran.code, Some(2), "{}", ran.transcript());
    assert!(!project.file("a.ran").exists());
    assert_eq!(project.status()["runs"], serde_json::json!([]));
}

#[test]
fn from_after_to_exits_2() {
    let project = Project::new(&pipeline(
        "[tasks.a]\nphase = \"main\"\ncommand = [\"touch\", \"a.ran\"]\n",
    ));
    let ran = project.run(&["--from", "2026-01-20", "--to", "2026-01-18"]);
    assert_eq!(ran.code, Some(2));
    assert_snapshot!("from_after_to", ran.transcript());
    // A bad date in the range is a usage error too, and --from without --to is refused by clap.
    assert_eq!(
        project
            .run(&["--from", "2026-01-18", "--to", "2026-01-1x"])
            .code,
        Some(2)
    );
    assert_eq!(project.run(&["--from", "2026-01-18"]).code, Some(2));
    assert!(!project.file("a.ran").exists());
    assert_eq!(project.status()["runs"], serde_json::json!([]));
}

/// Regression: chrono's `%Y-%m-%d` took `2026-2-3`, `+2026-01-01` and `0000-01-01` and
/// rewrote them, so a run could be made for a partition nobody typed. Exactly `YYYY-MM-DD`, a
/// real date from year 1000 to 9999, is accepted wherever a date is given.
#[test]
fn partitions_must_be_written_exactly_as_yyyy_mm_dd() {
    let project = Project::new(&pipeline(
        "[tasks.a]\nphase = \"main\"\ncommand = [\"touch\", \"a.ran\"]\n",
    ));
    let refused = [
        "2026-2-3",
        "2026-02-3",
        "+2026-01-01",
        "0000-01-01",
        "0999-12-31",
        "02026-01-18",
        " 2026-01-18",
        "2026-01-18 ",
        "2026/01/18",
        "2026-02-29",
        "\u{ff12}026-01-18",
    ];
    for value in refused {
        let commands: [(&str, Vec<&str>); 7] = [
            ("run --partition", vec!["run", "--partition", value]),
            ("run --from", vec!["run", "--from", value, "--to", DAY]),
            ("run --to", vec!["run", "--from", DAY, "--to", value]),
            ("status --partition", vec!["status", "--partition", value]),
            ("logs --partition", vec!["logs", "a", "--partition", value]),
            (
                "retry --partition",
                vec!["retry", "a", "--partition", value],
            ),
            ("cancel --partition", vec!["cancel", "--partition", value]),
        ];
        for (what, args) in commands {
            let mut all = vec![args[0], project.pipeline.to_str().unwrap()];
            all.extend_from_slice(&args[1..]);
            let ran = project.raw(&all);
            no_panic(&ran);
            assert_eq!(ran.code, Some(2), "{what} {value:?}: {}", ran.transcript());
            // A date written right that does not exist says why instead of how to write it.
            let explained = if value == "2026-02-29" {
                "February 2026 has 28 days"
            } else {
                "YYYY-MM-DD"
            };
            assert!(
                ran.stderr.contains(&format!("{value:?}")) && ran.stderr.contains(explained),
                "{what} {value:?} names the value and the form: {}",
                ran.stderr
            );
        }
    }
    assert!(!project.file("a.ran").exists(), "no task ran");
    assert_eq!(project.status()["runs"], serde_json::json!([]));

    let messages = ["2026-2-3", "0000-01-01", "2026-02-29"]
        .iter()
        .map(|value| project.run(&["--partition", value]).transcript())
        .collect::<Vec<_>>()
        .join("\n");
    assert_snapshot!("partitions_not_written_as_yyyy_mm_dd", messages);

    // The canonical form still works, at both ends of the year range.
    for value in ["1000-01-01", "9999-12-31", "2028-02-29"] {
        let ran = project.run(&["--partition", value]);
        assert_eq!(ran.code, Some(0), "{value}: {}", ran.transcript());
    }
    let partitions: Vec<String> = project.status()["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|run| run["partition"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(partitions.len(), 3, "{partitions:?}");
    for value in ["1000-01-01", "9999-12-31", "2028-02-29"] {
        assert!(partitions.contains(&value.to_string()), "{partitions:?}");
    }
}

/// Regression: `--grace` took any duration that fit in 64 bits of milliseconds, while every
/// duration in the pipeline file is at most 365 days.
#[test]
fn grace_longer_than_365_days_exits_2() {
    let project = Project::new(&pipeline(
        "[tasks.a]\nphase = \"main\"\ncommand = [\"touch\", \"a.ran\"]\n",
    ));
    for grace in ["366d", "99999999999999999999s"] {
        let ran = project.run(&["--partition", DAY, "--grace", grace]);
        assert_eq!(ran.code, Some(2), "--grace {grace}: {}", ran.transcript());
        assert_eq!(
            ran.stderr,
            format!("error: --grace {grace:?} is too long\nhint: it must be at most 365d\n")
        );
        let ran = project.keel("retry", &["a", "--partition", DAY, "--grace", grace]);
        assert_eq!(
            ran.code,
            Some(2),
            "retry --grace {grace}: {}",
            ran.transcript()
        );
    }
    assert!(!project.file("a.ran").exists(), "no task ran");
    assert_eq!(
        project.run(&["--partition", DAY, "--grace", "365d"]).code,
        Some(0)
    );
}

#[test]
fn only_with_an_unknown_task_exits_2_with_did_you_mean() {
    let project = Project::new(&pipeline(
        "[tasks.fetch_orders]\nphase = \"main\"\ncommand = [\"touch\", \"fetched\"]\n",
    ));
    let ran = project.run(&["--partition", DAY, "--only", "fetch_order"]);
    assert_eq!(ran.code, Some(2));
    assert!(
        ran.stderr.contains(r#"did you mean "fetch_orders"?"#),
        "{}",
        ran.stderr
    );
    assert_snapshot!("only_unknown_task", ran.transcript());
    assert!(!project.file("fetched").exists());
    assert_eq!(
        project.status()["runs"],
        serde_json::json!([]),
        "no run was created"
    );
}

#[test]
fn retry_of_an_unknown_task_exits_2_with_did_you_mean() {
    let project = Project::new(&pipeline(
        "[tasks.fetch_orders]\nphase = \"main\"\ncommand = [\"true\"]\n",
    ));
    assert_eq!(project.run(&["--partition", DAY]).code, Some(0));
    let ran = project.keel("retry", &["fetch_order", "--partition", DAY]);
    assert_eq!(ran.code, Some(2));
    assert_snapshot!("retry_unknown_task", ran.transcript());
    assert_eq!(
        project.task(DAY, "fetch_orders")["attempts"],
        1,
        "nothing was re-run"
    );
}

#[test]
fn retry_of_a_partition_without_a_run_exits_2() {
    let project = Project::new(&pipeline(
        "[tasks.fetch_orders]\nphase = \"main\"\ncommand = [\"true\"]\n",
    ));
    assert_eq!(project.run(&["--partition", DAY]).code, Some(0));
    let ran = project.keel("retry", &["fetch_orders", "--partition", "2026-01-20"]);
    assert_eq!(ran.code, Some(2));
    assert_snapshot!("retry_without_a_run", ran.transcript());
}

#[test]
fn logs_of_a_missing_attempt_is_a_clear_error() {
    let project = Project::new(&pipeline(
        r#"[tasks.flaky]
phase = "main"
command = ["sh", "-c", "echo try {attempt}; exit 1"]
retries = { attempts = 2, initial = "10ms" }

[tasks.downstream]
phase = "main"
command = ["true"]
after = ["flaky"]
"#,
    ));
    assert_eq!(project.run(&["--partition", DAY]).code, Some(1));
    let run = run_id(&project.run_json(DAY));

    let ran = project.logs(DAY, "flaky", Some(5));
    no_panic(&ran);
    assert_ne!(ran.code, Some(0));
    assert!(
        ran.stderr.contains("it has attempts 1, 2"),
        "{}",
        ran.stderr
    );
    let no_attempts = project.logs(DAY, "downstream", None);
    assert_ne!(no_attempts.code, Some(0));
    let no_run = project.logs("2026-01-19", "flaky", None);
    assert_ne!(no_run.code, Some(0));
    assert!(
        no_run.stderr.contains("keel run --partition 2026-01-19"),
        "{}",
        no_run.stderr
    );

    let text = [ran, no_attempts, no_run]
        .iter()
        .map(Ran::transcript)
        .collect::<Vec<_>>()
        .join("\n")
        .replace(&format!("run {run}"), "run [RUN]");
    assert_snapshot!("logs_missing_attempt", text);
}

/// Regression: `keel logs` with a misspelt task said only `unknown task "flakey" in pipeline "t"`,
/// while `run --only` and `retry` suggest the closest name.
#[test]
fn logs_of_an_unknown_task_exits_2_with_did_you_mean() {
    let project = Project::new(&pipeline(
        "[tasks.flaky]\nphase = \"main\"\ncommand = [\"true\"]\n",
    ));
    assert_eq!(project.run(&["--partition", DAY]).code, Some(0));
    let ran = project.logs(DAY, "flakey", None);
    assert_eq!(ran.code, Some(2), "{}", ran.transcript());
    assert!(
        ran.stderr.contains(r#"unknown task "flakey""#),
        "{}",
        ran.stderr
    );
    assert!(
        ran.stderr.contains(r#"did you mean "flaky"?"#),
        "{}",
        ran.stderr
    );
}

#[test]
fn malformed_result_file_fails_the_attempt_naming_the_file_and_the_parse_error() {
    let project = Project::new(&pipeline(
        r#"[tasks.report]
phase = "main"
command = ["sh", "-c", "echo 'rows: many' > \"$KEEL_RESULT\""]
"#,
    ));
    // Run from the project directory with the default pipeline, so paths in messages are short
    // enough for the table's message column.
    let ran = project.raw(&["run", "--partition", DAY]);
    no_panic(&ran);
    assert_eq!(ran.code, Some(1), "{}", ran.transcript());
    let task = project.task(DAY, "report");
    assert_eq!(task["outcome"], "failed", "{task}");
    let table = project.table(DAY);
    assert!(
        table.contains("result.json"),
        "the message names the file:\n{table}"
    );
    assert!(
        table.contains("line 1 column"),
        "the message gives the parse error:\n{table}"
    );
}

// ---------------------------------------------------------------------------------------------
// Behaviour: exit codes and typed outcomes.

#[test]
fn run_exits_0_when_every_task_succeeds() {
    let project = Project::new(&pipeline(
        r#"[tasks.a]
phase = "main"
command = ["true"]

[tasks.b]
phase = "main"
command = ["sh", "-c", "exit 0"]
after = ["a"]
"#,
    ));
    let ran = project.run(&["--partition", DAY]);
    assert_eq!(ran.code, Some(0), "{}", ran.transcript());
    assert!(
        ran.stdout.contains("succeeded"),
        "the summary table is printed: {}",
        ran.stdout
    );
    assert_eq!(project.run_json(DAY)["state"], "succeeded");
}

#[test]
fn run_exits_1_when_a_task_fails() {
    let project = Project::new(&pipeline(
        r#"[tasks.a]
phase = "main"
command = ["true"]

[tasks.b]
phase = "main"
command = ["sh", "-c", "exit 3"]
"#,
    ));
    let ran = project.run(&["--partition", DAY]);
    assert_eq!(ran.code, Some(1), "{}", ran.transcript());
    let run = project.run_json(DAY);
    assert_eq!(run["state"], "failed");
    assert_eq!(project.task(DAY, "a")["outcome"], "succeeded");
    assert_eq!(project.task(DAY, "b")["outcome"], "failed");
}

#[test]
fn exit_65_is_failed_permanent_after_one_attempt() {
    let project = Project::new(&pipeline(
        r#"[tasks.bad_data]
phase = "main"
command = ["sh", "-c", "echo attempt >> bad_data.ledger; exit 65"]
retries = { attempts = 3, initial = "10ms" }
"#,
    ));
    let ran = project.run(&["--partition", DAY]);
    assert_eq!(ran.code, Some(1));
    let task = project.task(DAY, "bad_data");
    assert_eq!(task["outcome"], "failed_permanent", "{task}");
    assert_eq!(task["attempts"], 1, "{task}");
    assert_eq!(project.read("bad_data.ledger"), "attempt\n");
}

#[test]
fn other_exit_codes_are_retried_up_to_the_attempts_then_failed() {
    let project = Project::new(&pipeline(
        r#"[tasks.flaky]
phase = "main"
command = ["sh", "-c", "echo {attempt} >> flaky.ledger; exit 1"]
retries = { attempts = 3, initial = "10ms", max = "50ms" }
"#,
    ));
    let ran = project.run(&["--partition", DAY]);
    assert_eq!(ran.code, Some(1));
    let task = project.task(DAY, "flaky");
    assert_eq!(task["outcome"], "failed", "{task}");
    assert_eq!(task["attempts"], 3, "{task}");
    assert_eq!(project.read("flaky.ledger"), "1\n2\n3\n");
}

#[test]
fn a_transient_failure_that_recovers_succeeds_on_a_later_attempt() {
    let project = Project::new(&pipeline(
        r#"[tasks.flaky]
phase = "main"
command = ["sh", "-c", "test {attempt} -ge 2"]
retries = { attempts = 3, initial = "10ms", max = "50ms" }
"#,
    ));
    assert_eq!(project.run(&["--partition", DAY]).code, Some(0));
    let task = project.task(DAY, "flaky");
    assert_eq!(task["outcome"], "succeeded", "{task}");
    assert_eq!(task["attempts"], 2, "{task}");
}

#[test]
fn no_data_result_is_recorded_and_downstream_still_runs() {
    let project = Project::new(&pipeline(
        r#"[tasks.scrape]
phase = "main"
command = ["sh", "-c", '''echo '{{"outcome":"no_data","message":"no games today","rows":0}}' > "$KEEL_RESULT"''']

[tasks.load]
phase = "main"
command = ["touch", "load.ran"]
after = ["scrape"]
"#,
    ));
    let ran = project.run(&["--partition", DAY]);
    assert_eq!(
        ran.code,
        Some(0),
        "no_data is not a failure: {}",
        ran.transcript()
    );
    let scrape = project.task(DAY, "scrape");
    assert_eq!(scrape["outcome"], "no_data", "{scrape}");
    assert_eq!(scrape["attempts"], 1);
    assert_eq!(project.task(DAY, "load")["outcome"], "succeeded");
    assert!(project.file("load.ran").exists());
    assert_eq!(project.run_json(DAY)["state"], "succeeded");
}

#[test]
fn exit_75_is_not_ready_and_retried_uncharged_until_the_deadline() {
    let project = Project::new(&pipeline(
        r#"[tasks.never_ready]
phase = "main"
command = ["sh", "-c", "echo check >> never_ready.ledger; exit 75"]
deadline = "300ms"
retries = { attempts = 2, initial = "20ms", max = "100ms" }

[tasks.ready_on_third_check]
phase = "main"
command = ["sh", "-c", "test {attempt} -ge 3 || exit 75"]
deadline = "10s"
retries = { attempts = 1, initial = "20ms", max = "100ms" }
"#,
    ));
    let started = Instant::now();
    let ran = project.run(&["--partition", DAY]);
    let elapsed = started.elapsed();
    assert_eq!(ran.code, Some(1), "{}", ran.transcript());
    assert!(
        elapsed >= Duration::from_millis(300),
        "the deadline was not waited for: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(10),
        "the deadline did not end it: {elapsed:?}"
    );

    let never = project.task(DAY, "never_ready");
    assert_eq!(never["outcome"], "not_ready", "{never}");
    let checks = never["attempts"].as_u64().unwrap();
    assert!(
        checks > 2,
        "not_ready must not use up the 2 attempts: {never}"
    );
    assert_eq!(
        project.read("never_ready.ledger").lines().count() as u64,
        checks
    );
    let table = project.table(DAY);
    assert!(
        table.contains("deadline"),
        "the message says the deadline passed:\n{table}"
    );

    // Checks are not charged: with attempts = 1 the third check can still succeed.
    let ready = project.task(DAY, "ready_on_third_check");
    assert_eq!(ready["outcome"], "succeeded", "{ready}");
    assert_eq!(ready["attempts"], 3, "{ready}");
}

#[test]
fn a_not_ready_policy_asks_every_interval_max_times_past_the_deadline() {
    let project = Project::new(&pipeline(
        r#"[tasks.never_ready]
phase = "main"
command = ["sh", "-c", "date +%s%N >> never_ready.ledger; exit 75"]
deadline = "10ms"
retries = { attempts = 2, initial = "10ms", max = "10ms" }
not_ready = { every = "700ms", max = 3 }

[tasks.ready_on_second_check]
phase = "main"
command = ["sh", "-c", "test {attempt} -ge 2 || exit 75"]
not_ready = { every = "300ms", max = 5 }
"#,
    ));
    let ran = project.run(&["--partition", DAY]);
    assert_eq!(ran.code, Some(1), "{}", ran.transcript());

    let never = project.task(DAY, "never_ready");
    assert_eq!(never["outcome"], "not_ready", "{never}");
    assert_eq!(
        never["attempts"], 3,
        "max checks, past the 10ms deadline: {never}"
    );
    let stamps: Vec<u128> = project
        .read("never_ready.ledger")
        .lines()
        .map(|line| line.trim().parse().unwrap())
        .collect();
    assert_eq!(stamps.len(), 3);
    for pair in stamps.windows(2) {
        assert!(
            pair[1] - pair[0] >= 700_000_000,
            "asked again sooner than every: {stamps:?}"
        );
    }
    let table = project.table(DAY);
    assert!(table.contains("3 times at most"), "{table}");

    let ready = project.task(DAY, "ready_on_second_check");
    assert_eq!(ready["outcome"], "succeeded", "{ready}");
    assert_eq!(ready["attempts"], 2, "{ready}");
}

#[test]
fn downstream_of_a_failure_is_upstream_failed() {
    let project = Project::new(
        r#"[pipeline]
name = "t"
timezone = "UTC"

[defaults]
retries = { attempts = 1 }

[phases.scrape]
[phases.load]
after = ["scrape"]

[tasks.fetch]
phase = "scrape"
command = ["sh", "-c", "exit 65"]

[tasks.sibling]
phase = "scrape"
command = ["true"]

[tasks.parse]
phase = "scrape"
command = ["touch", "parse.ran"]
after = ["fetch"]

[tasks.load]
phase = "load"
command = ["touch", "load.ran"]
"#,
    );
    let ran = project.run(&["--partition", DAY]);
    assert_eq!(ran.code, Some(1));
    for name in ["parse", "load"] {
        let task = project.task(DAY, name);
        assert_eq!(task["outcome"], "upstream_failed", "{task}");
        assert_eq!(task["attempts"], 0, "{task}");
        assert!(!project.file(&format!("{name}.ran")).exists());
    }
    assert_eq!(project.task(DAY, "sibling")["outcome"], "succeeded");
    let table = project.table(DAY);
    assert!(
        table.contains(r#"upstream task "fetch" ended failed_permanent"#),
        "{table}"
    );
}

#[test]
fn timeout_kills_the_task_and_the_processes_it_spawned() {
    let project = Project::new(&pipeline(
        r#"[tasks.hangs]
phase = "main"
command = ["sh", "-c", "sleep 30 & echo $! > grandchild.pid; echo $$ > child.pid; sleep 30"]
timeout = "300ms"
"#,
    ));
    let _reap = Reap(vec![
        project.file("grandchild.pid"),
        project.file("child.pid"),
    ]);
    let started = Instant::now();
    let ran = project.run(&["--partition", DAY]);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(ran.code, Some(1), "{}", ran.transcript());
    let task = project.task(DAY, "hangs");
    assert_eq!(task["outcome"], "timed_out", "{task}");
    assert_eq!(task["attempts"], 1);
    assert!(project.table(DAY).contains("timed out after 300ms"));

    let (child, grandchild) = (
        project.pid_in("child.pid"),
        project.pid_in("grandchild.pid"),
    );
    wait_until(
        "the timed-out task and its child to be gone",
        Duration::from_secs(5),
        || !alive(child) && !alive(grandchild),
    );
}

#[test]
fn a_silent_task_is_stalled_but_output_or_heartbeat_keeps_a_task_alive() {
    let project = Project::new(&pipeline(
        r#"[tasks.silent]
phase = "main"
command = ["sh", "-c", "echo $$ > silent.pid; exec sleep 30"]
heartbeat = "300ms"

[tasks.chatty]
phase = "main"
command = ["sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do echo tick $i; sleep 0.1; done"]
heartbeat = "600ms"

[tasks.touches]
phase = "main"
command = ["sh", "-c", "for i in 1 2 3 4 5 6 7 8 9 10 11 12; do touch \"$KEEL_HEARTBEAT\"; sleep 0.1; done"]
heartbeat = "600ms"
"#,
    ));
    let _reap = Reap(vec![project.file("silent.pid")]);
    let started = Instant::now();
    let ran = project.run(&["--partition", DAY]);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(ran.code, Some(1), "{}", ran.transcript());
    let silent = project.task(DAY, "silent");
    assert_eq!(silent["outcome"], "stalled", "{silent}");
    assert_eq!(silent["attempts"], 1);
    assert!(project.table(DAY).contains("no sign of life for 300ms"));
    let pid = project.pid_in("silent.pid");
    wait_until(
        "the stalled task to be killed",
        Duration::from_secs(5),
        || !alive(pid),
    );
    for name in ["chatty", "touches"] {
        let task = project.task(DAY, name);
        assert_eq!(task["outcome"], "succeeded", "{task}");
    }
}

// ---------------------------------------------------------------------------------------------
// Behaviour: the task contract.

#[test]
fn tasks_get_the_keel_environment() {
    let project = Project::new(
        r#"[pipeline]
name = "env_test"
timezone = "UTC"

[defaults]
retries = { attempts = 2, initial = "10ms", max = "50ms" }

[phases.main]

[tasks.dump]
phase = "main"
command = ["sh", "-c", "env | grep -E '^(KEEL_|TRACEPARENT=)' | sort; touch \"$KEEL_HEARTBEAT\" && echo heartbeat=touched; test $KEEL_ATTEMPT -ge 2"]
"#,
    );
    assert_eq!(project.run(&["--partition", DAY]).code, Some(0));
    assert_eq!(project.run(&["--partition", "2026-01-19"]).code, Some(0));
    let run = run_id(&project.run_json(DAY));

    let first = project.logs(DAY, "dump", Some(1));
    let second = project.logs(DAY, "dump", Some(2));
    let other_day = project.logs("2026-01-19", "dump", None);
    for ran in [&first, &second, &other_day] {
        assert_eq!(ran.code, Some(0), "{}", ran.transcript());
    }
    let (first, second, other_day) = (
        env_lines(&first.stdout),
        env_lines(&second.stdout),
        env_lines(&other_day.stdout),
    );

    for (attempt, env) in [("1", &first), ("2", &second)] {
        assert_eq!(env["KEEL_PIPELINE"], "env_test");
        assert_eq!(env["KEEL_RUN_ID"], run);
        assert_eq!(env["KEEL_TASK"], "dump");
        assert_eq!(env["KEEL_PARTITION"], DAY);
        assert_eq!(env["KEEL_ATTEMPT"], attempt);
        assert_eq!(env["heartbeat"], "touched", "KEEL_HEARTBEAT can be touched");
        for key in ["KEEL_RESULT", "KEEL_HEARTBEAT"] {
            let path = Path::new(&env[key]);
            assert!(path.is_absolute(), "{key} = {path:?}");
            assert!(
                path.parent().unwrap().is_dir(),
                "{key} is in an existing directory: {path:?}"
            );
        }
        assert!(
            env["KEEL_RESULT"].ends_with("result.json"),
            "{}",
            env["KEEL_RESULT"]
        );
        assert_ne!(env["KEEL_RESULT"], env["KEEL_HEARTBEAT"]);

        let traceparent: Vec<&str> = env["TRACEPARENT"].split('-').collect();
        assert_eq!(traceparent.len(), 4, "{}", env["TRACEPARENT"]);
        assert_eq!(traceparent[0], "00");
        assert!(
            is_lower_hex(traceparent[1], 32) && traceparent[1] != "0".repeat(32),
            "trace id {}",
            traceparent[1]
        );
        assert!(
            is_lower_hex(traceparent[2], 16) && traceparent[2] != "0".repeat(16),
            "parent id {}",
            traceparent[2]
        );
        assert!(is_lower_hex(traceparent[3], 2), "flags {}", traceparent[3]);
    }
    // Each attempt writes its own result file.
    assert_ne!(first["KEEL_RESULT"], second["KEEL_RESULT"]);
    // The idempotency key is stable for (pipeline, task, partition) and differs across partitions.
    assert!(!first["KEEL_IDEMPOTENCY_KEY"].is_empty());
    assert_eq!(
        first["KEEL_IDEMPOTENCY_KEY"],
        second["KEEL_IDEMPOTENCY_KEY"]
    );
    assert_ne!(
        first["KEEL_IDEMPOTENCY_KEY"],
        other_day["KEEL_IDEMPOTENCY_KEY"]
    );
    assert_eq!(other_day["KEEL_PARTITION"], "2026-01-19");
}

/// Regression: KEEL_RESULT and KEEL_HEARTBEAT were relative to keel's working directory when the
/// pipeline was given as a relative path (the default `keel.toml`), so a task that changed
/// directory wrote its result nowhere and its outcome was lost.
#[test]
fn result_file_works_after_the_task_changes_directory() {
    let project = Project::new(&pipeline(
        r#"[tasks.scrape]
phase = "main"
command = ["sh", "-c", '''cd / && echo '{{"outcome":"no_data","rows":0}}' > "$KEEL_RESULT" && touch "$KEEL_HEARTBEAT"''']
"#,
    ));
    let ran = project.raw(&["run", "--partition", DAY]);
    assert_eq!(ran.code, Some(0), "{}", ran.transcript());
    let task = project.task(DAY, "scrape");
    assert_eq!(
        task["outcome"],
        "no_data",
        "{task}\n{}",
        project.logs(DAY, "scrape", None).transcript()
    );
}

#[test]
fn templates_are_expanded_in_commands() {
    let project = Project::new(&pipeline(
        r#"[tasks.tmpl]
phase = "main"
command = ["echo", "date={date}", "partition={partition}", "task={task}", "attempt={attempt}", "run={run_id}", "literal={{braces}}"]

[tasks.per_attempt]
phase = "main"
command = ["sh", "-c", "echo attempt={attempt} env=$KEEL_ATTEMPT; test {attempt} -ge 2"]
retries = { attempts = 2, initial = "10ms" }
"#,
    ));
    assert_eq!(project.run(&["--partition", DAY]).code, Some(0));
    let run = run_id(&project.run_json(DAY));
    let logs = project.logs(DAY, "tmpl", None);
    assert_eq!(
        logs.stdout,
        format!("date={DAY} partition={DAY} task=tmpl attempt=1 run={run} literal={{braces}}\n")
    );
    assert_eq!(
        project.logs(DAY, "per_attempt", Some(1)).stdout,
        "attempt=1 env=1\n"
    );
    assert_eq!(
        project.logs(DAY, "per_attempt", Some(2)).stdout,
        "attempt=2 env=2\n"
    );
}

/// Regression: launched through the attempt host, no attempt got a `started_at` or a `pid`: the
/// host did not say which supervisor it forked, and the engine recorded a start only with a pid.
/// Each task writes its parent's pid, which is its supervisor's.
#[test]
fn every_attempt_records_its_start_and_its_supervisors_pid() {
    let project = Project::new(&pipeline(
        r#"[tasks.first]
phase = "main"
command = ["sh", "-c", "echo $PPID >> first.parent"]

[tasks.second]
phase = "main"
after = ["first"]
command = ["sh", "-c", "echo $PPID >> second.parent"]

[tasks.flaky]
phase = "main"
command = ["sh", "-c", "echo $PPID >> flaky.parent; test {attempt} -ge 2"]
retries = { attempts = 2, initial = "10ms" }
"#,
    ));
    let ran = project.run(&["--partition", DAY]);
    assert_eq!(ran.code, Some(0), "{}", ran.transcript());
    let attempts = project.attempts(DAY);
    assert_eq!(attempts.len(), 4, "{attempts:#?}");
    for attempt in &attempts {
        let parents: Vec<u32> = project
            .read(&format!("{}.parent", attempt.task))
            .lines()
            .map(|line| line.parse().unwrap())
            .collect();
        let started_at = attempt.started_at.unwrap_or_else(|| {
            panic!(
                "{} attempt {} has no start time",
                attempt.task, attempt.number
            )
        });
        assert!(started_at >= attempt.claimed_at, "{attempt:#?}");
        assert_eq!(
            attempt.pid,
            Some(parents[attempt.number as usize - 1]),
            "{} attempt {}: the recorded pid is its supervisor's",
            attempt.task,
            attempt.number
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Behaviour: the command line.

#[test]
fn a_finished_partition_is_not_run_again_unless_rerun() {
    let project = Project::new(&pipeline(
        "[tasks.count]\nphase = \"main\"\ncommand = [\"sh\", \"-c\", \"echo {run_id} >> count.ledger\"]\n",
    ));
    assert_eq!(project.run(&["--partition", DAY]).code, Some(0));
    let first = run_id(&project.run_json(DAY));

    let again = project.run(&["--partition", DAY]);
    assert_eq!(again.code, Some(0), "{}", again.transcript());
    assert!(
        again.stdout.contains("already finished as succeeded"),
        "{}",
        again.stdout
    );
    assert!(again.stdout.contains("--rerun"), "{}", again.stdout);
    assert_eq!(
        project.read("count.ledger"),
        format!("{first}\n"),
        "no work was done"
    );

    let rerun = project.run(&["--partition", DAY, "--rerun"]);
    assert_eq!(rerun.code, Some(0), "{}", rerun.transcript());
    let second = run_id(&project.run_json(DAY));
    assert_ne!(first, second, "--rerun makes a new run");
    assert_eq!(project.read("count.ledger"), format!("{first}\n{second}\n"));
    // status shows the newest run of each partition.
    let run = project.run_json(DAY);
    assert_eq!(run["state"], "succeeded");
    assert_eq!(project.status()["runs"].as_array().unwrap().len(), 1);
}

#[test]
fn only_runs_the_named_tasks_and_skips_the_others() {
    let project = Project::new(
        r#"[pipeline]
name = "t"
timezone = "UTC"

[phases.one]
[phases.two]
after = ["one"]

[tasks.a]
phase = "one"
command = ["sh", "-c", "echo a >> ran.ledger"]

[tasks.b]
phase = "two"
command = ["sh", "-c", "echo b >> ran.ledger"]

[tasks.c]
phase = "one"
command = ["sh", "-c", "echo c >> ran.ledger"]

[tasks.d]
phase = "two"
command = ["sh", "-c", "echo d >> ran.ledger"]
"#,
    );
    let ran = project.run(&["--partition", DAY, "--only", "b", "c"]);
    assert_eq!(ran.code, Some(0), "{}", ran.transcript());
    let mut ran_tasks: Vec<String> = project
        .read("ran.ledger")
        .lines()
        .map(String::from)
        .collect();
    ran_tasks.sort();
    assert_eq!(ran_tasks, ["b", "c"]);
    for (name, outcome, attempts) in [
        ("a", "skipped", 0),
        ("b", "succeeded", 1),
        ("c", "succeeded", 1),
        ("d", "skipped", 0),
    ] {
        let task = project.task(DAY, name);
        assert_eq!(task["outcome"], outcome, "{task}");
        assert_eq!(task["attempts"], attempts, "{task}");
    }
}

#[test]
fn from_to_runs_every_partition_of_the_range() {
    let project = Project::new(&pipeline(
        "[tasks.a]\nphase = \"main\"\ncommand = [\"sh\", \"-c\", \"echo {partition} >> ran.ledger\"]\n",
    ));
    let ran = project.run(&["--from", "2026-01-31", "--to", "2026-02-02"]);
    assert_eq!(ran.code, Some(0), "{}", ran.transcript());
    let mut partitions: Vec<String> = project
        .read("ran.ledger")
        .lines()
        .map(String::from)
        .collect();
    partitions.sort();
    assert_eq!(partitions, ["2026-01-31", "2026-02-01", "2026-02-02"]);
    let status = project.status();
    let mut stored: Vec<(String, String)> = status["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|run| {
            (
                run["partition"].as_str().unwrap().to_string(),
                run["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    stored.sort();
    assert_eq!(
        stored,
        [
            ("2026-01-31".to_string(), "succeeded".to_string()),
            ("2026-02-01".to_string(), "succeeded".to_string()),
            ("2026-02-02".to_string(), "succeeded".to_string())
        ]
    );
}

/// Regression: `keel status` printed a task's message as it was, and a message can quote the
/// task's output or result file: an escape sequence in it was acted on by the terminal (here it
/// would set the window title, colour the rest red, clear the screen and reverse the text).
#[test]
fn status_tables_show_control_characters_escaped_while_json_keeps_them() {
    let project = Project::new(&pipeline(
        r#"[tasks.a]
phase = "main"
command = ["sh", "-c", '''printf '%s' '{{"outcome":"no_data","message":"\u001b]0;pwned\u0007\u001b[31mred\u001b[0m \u009b2J \u202egnp.exe two\nlines\ttab"}}' > "$KEEL_RESULT"''']
"#,
    ));
    assert_eq!(project.run(&["--partition", DAY]).code, Some(0));
    let message =
        "\u{1b}]0;pwned\u{7}\u{1b}[31mred\u{1b}[0m \u{9b}2J \u{202e}gnp.exe two\nlines\ttab";
    assert_eq!(project.task(DAY, "a")["message"], message, "JSON is exact");

    let table = project.table(DAY);
    for raw in ['\u{1b}', '\u{7}', '\u{9b}', '\u{202e}'] {
        assert!(
            !table.contains(raw),
            "{raw:?} reached the terminal: {table:?}"
        );
    }
    assert!(
        table.contains(r"\u{1b}]0;pwned\u{7}\u{1b}[31mred\u{1b}[0m \u{9b}2J \u{202e}gnp.exe"),
        "{table}"
    );
    assert!(
        table.contains("two lines tab"),
        "a line break does not split the cell: {table}"
    );
}

#[test]
fn status_json_has_the_contract_shape() {
    let project = Project::new(
        r#"[pipeline]
name = "t"
timezone = "UTC"

[defaults]
retries = { attempts = 1 }

[phases.extract]
[phases.load]
after = ["extract"]

[tasks.orders]
phase = "extract"
command = ["true"]

[tasks.games]
phase = "extract"
command = ["sh", "-c", '''echo '{{"outcome":"no_data","rows":0}}' > "$KEEL_RESULT"''']

[tasks.broken]
phase = "extract"
command = ["sh", "-c", "exit 65"]

[tasks.warehouse]
phase = "load"
command = ["true"]
"#,
    );
    assert_eq!(project.run(&["--partition", DAY]).code, Some(1));
    let mut status = project.status();

    let runs = status["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1);
    for key in ["id", "partition", "state", "tasks"] {
        assert!(runs[0].get(key).is_some(), "run has {key}: {}", runs[0]);
    }
    for task in runs[0]["tasks"].as_array().unwrap() {
        for key in ["name", "phase", "outcome", "attempts"] {
            assert!(task.get(key).is_some(), "task has {key}: {task}");
        }
    }
    for run in status["runs"].as_array_mut().unwrap() {
        run["id"] = "[ID]".into();
        if run.get("version").is_some() {
            run["version"] = "[VERSION]".into();
        }
        for task in run["tasks"].as_array_mut().unwrap() {
            if task
                .get("time_ms")
                .is_some_and(|time| time.as_i64().is_some())
            {
                task["time_ms"] = "[TIME]".into();
            }
            // The task's version (its spec's hash) is shown, not pinned.
            if task.get("task_version").is_some() {
                task["task_version"] = "[TASK VERSION]".into();
            }
        }
    }
    assert_snapshot!(
        "status_json",
        serde_json::to_string_pretty(&status).unwrap()
    );

    // Before any run, the shape is the same with no runs.
    let empty = Project::new(&pipeline(
        "[tasks.a]\nphase = \"main\"\ncommand = [\"true\"]\n",
    ));
    assert_eq!(empty.status(), serde_json::json!({ "runs": [] }));
}

#[test]
fn logs_prints_stdout_and_stderr_and_attempt_selects_one() {
    let project = Project::new(&pipeline(
        r#"[tasks.noisy]
phase = "main"
command = ["sh", "-c", "echo out {attempt}; echo err {attempt} >&2; test {attempt} -ge 2"]
retries = { attempts = 2, initial = "10ms" }
"#,
    ));
    assert_eq!(project.run(&["--partition", DAY]).code, Some(0));
    let latest = project.logs(DAY, "noisy", None);
    assert_eq!(latest.code, Some(0), "{}", latest.transcript());
    assert!(
        latest.stdout.contains("out 2") && latest.stdout.contains("err 2"),
        "{}",
        latest.stdout
    );
    assert!(!latest.stdout.contains("out 1"), "{}", latest.stdout);
    let first = project.logs(DAY, "noisy", Some(1));
    assert_eq!(first.code, Some(0), "{}", first.transcript());
    assert!(
        first.stdout.contains("out 1") && first.stdout.contains("err 1"),
        "{}",
        first.stdout
    );
    assert!(!first.stdout.contains("out 2"), "{}", first.stdout);
}

/// Regression: attempt directories were `attempts/<run>/<task>.<n>` beside the state file, and
/// run ids start at 1 in every state file, so two `--state` files in one directory shared
/// `attempts/1/greet.1`: the second run's output was appended to the first one's, and `keel
/// logs` of either state printed both.
#[test]
fn two_state_files_in_one_directory_keep_their_attempts_apart() {
    let project = Project::new(&pipeline(
        r#"[tasks.greet]
phase = "main"
command = ["sh", "-c", "echo hello from $WHICH"]
"#,
    ));
    let pipeline = project.pipeline.to_str().unwrap();
    for which in ["a", "b"] {
        let state = format!("{which}.db");
        let output = project
            .command()
            .env("WHICH", which)
            .args(["run", pipeline, "--partition", DAY, "--state", &state])
            .output()
            .unwrap();
        assert_eq!(
            output.status.code(),
            Some(0),
            "run with {state}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    for which in ["a", "b"] {
        let state = format!("{which}.db");
        let logs = project.unredacted(&[
            "logs",
            pipeline,
            "greet",
            "--partition",
            DAY,
            "--state",
            &state,
        ]);
        assert_eq!(logs.code, Some(0), "{}", logs.transcript());
        assert_eq!(
            logs.stdout,
            format!("hello from {which}\n"),
            "keel logs of {state} prints its own attempt's output only"
        );
    }
    let logs = project
        .output_logs_under(&project.file("attempts"))
        .into_iter()
        .map(|(path, _)| path)
        .collect::<Vec<_>>();
    assert_eq!(logs.len(), 2, "one attempt directory per state: {logs:?}");
}

/// Regression: deleting the state file and running again started run 1 afresh in the old run
/// 1's attempt directory, so the new attempt read the old attempt's result file as its own and
/// ended `no_data` though it wrote none.
#[test]
fn a_state_file_made_again_starts_in_fresh_attempt_directories() {
    let project = Project::new(&pipeline(
        r#"[tasks.load]
phase = "main"
command = ["sh", "-c", '''if test -e second; then echo second; else echo first; echo '{{"outcome":"no_data"}}' > "$KEEL_RESULT"; fi''']
"#,
    ));
    assert_eq!(project.run(&["--partition", DAY]).code, Some(0));
    assert_eq!(project.task(DAY, "load")["outcome"], "no_data");

    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(project.file(&format!(".keel/state.db{suffix}")));
    }
    std::fs::write(project.file("second"), "").unwrap();
    let ran = project.run(&["--partition", DAY]);
    assert_eq!(ran.code, Some(0), "{}", ran.transcript());
    let load = project.task(DAY, "load");
    assert_eq!(
        load["outcome"], "succeeded",
        "the new attempt wrote no result file and must not see the old one: {load}"
    );
    assert_eq!(run_id(&project.run_json(DAY)), "1", "run ids started again");
    let logs = project.logs(DAY, "load", None);
    assert_eq!(logs.stdout, "second\n", "{}", logs.transcript());

    let mut outputs: Vec<String> = project
        .output_logs()
        .iter()
        .map(|(path, _)| std::fs::read_to_string(path).unwrap())
        .collect();
    outputs.sort();
    assert_eq!(
        outputs,
        ["first\n", "second\n"],
        "the old attempt's directory is left as it was, beside the new one"
    );
}

#[test]
fn captured_output_is_capped() {
    // 11 MB of output against the 10 MiB cap.
    let project = Project::new(&pipeline(
        r#"[tasks.loud]
phase = "main"
command = ["sh", "-c", "head -c 11000000 /dev/zero | tr '\\0' x; echo; echo the-end"]
"#,
    ));
    assert_eq!(project.run(&["--partition", DAY]).code, Some(0));
    assert_eq!(project.task(DAY, "loud")["outcome"], "succeeded");
    let logs = project.output_logs();
    assert_eq!(logs.len(), 1, "{logs:?}");
    let cap = 10 * 1024 * 1024;
    assert!(
        logs[0].1 <= cap + 200,
        "the log file is bounded: {} bytes",
        logs[0].1
    );
    assert!(
        logs[0].1 >= cap,
        "the log keeps output up to the cap: {} bytes",
        logs[0].1
    );
    let printed = project.logs(DAY, "loud", None);
    assert_eq!(printed.code, Some(0));
    assert!(!printed.stdout.contains("the-end"));
    assert!(
        printed
            .stdout
            .trim_end()
            .ends_with("[keel: output truncated at 10485760 bytes]")
    );
}

#[test]
fn retry_reruns_the_task_and_its_downstream_once_the_cause_is_fixed() {
    let project = Project::new(
        r#"[pipeline]
name = "t"
timezone = "UTC"

[defaults]
retries = { attempts = 1 }

[phases.one]
[phases.two]
after = ["one"]

[tasks.fetch]
phase = "one"
command = ["sh", "-c", "echo fetch >> ran.ledger; test -e fixed || exit 65"]

[tasks.other]
phase = "one"
command = ["sh", "-c", "echo other >> ran.ledger"]

[tasks.load]
phase = "two"
command = ["sh", "-c", "echo load >> ran.ledger"]
"#,
    );
    assert_eq!(project.run(&["--partition", DAY]).code, Some(1));
    let failed = project.run_json(DAY);
    assert_eq!(failed["state"], "failed");
    assert_eq!(project.task(DAY, "load")["outcome"], "upstream_failed");

    // Retrying before the fix fails again.
    let ran = project.keel("retry", &["fetch", "--partition", DAY]);
    assert_eq!(ran.code, Some(1), "{}", ran.transcript());

    std::fs::write(project.file("fixed"), "").unwrap();
    let ran = project.keel("retry", &["fetch", "--partition", DAY]);
    assert_eq!(ran.code, Some(0), "{}", ran.transcript());
    assert!(ran.stderr.contains("retrying fetch"), "{}", ran.stderr);
    let run = project.run_json(DAY);
    assert_eq!(run["state"], "succeeded", "{run:#}");
    assert_eq!(
        run["id"], failed["id"],
        "the failed run itself is completed"
    );
    for name in ["fetch", "other", "load"] {
        assert_eq!(project.task(DAY, name)["outcome"], "succeeded");
    }
    let ledger = project.read("ran.ledger");
    let count = |name: &str| ledger.lines().filter(|line| *line == name).count();
    assert_eq!(
        (count("fetch"), count("other"), count("load")),
        (3, 1, 1),
        "{ledger}"
    );
}

/// Regression: a task added to the pipeline file after its run was created had no row in the
/// run, so `keel retry` of it printed "retrying", exited 0 and ran nothing (the run read it back
/// as skipped). Now it joins the run and runs, with what is downstream of it, and the attempts
/// and the event log record that they ran a newer pipeline than the run was created with.
#[test]
fn retry_of_a_task_added_after_the_run_was_created_adds_it_and_runs_it() {
    let original = pipeline(
        r#"[tasks.fetch]
phase = "main"
command = ["sh", "-c", "echo fetch >> ran.ledger"]
"#,
    );
    let project = Project::new(&original);
    assert_eq!(project.run(&["--partition", DAY]).code, Some(0));
    let created = project.run_json(DAY);
    let old_version = created["version"].as_str().unwrap().to_string();

    write_pipeline(
        project.path(),
        &format!(
            r#"{original}
[tasks.enrich]
phase = "main"
after = ["fetch"]
command = ["sh", "-c", "echo enrich >> ran.ledger; touch enriched.marker"]

[tasks.publish]
phase = "main"
after = ["enrich"]
command = ["sh", "-c", "echo publish >> ran.ledger"]
"#
        ),
    );
    let validated = project.keel("validate", &[]);
    let new_version = validated
        .stdout
        .trim()
        .rsplit(' ')
        .next()
        .unwrap()
        .to_string();
    assert_ne!(new_version, old_version, "{}", validated.stdout);

    let ran = project.keel("retry", &["enrich", "--partition", DAY]);
    assert_eq!(ran.code, Some(0), "{}", ran.transcript());
    assert!(
        ran.stderr
            .contains(&format!("the retried tasks run version {new_version}")),
        "{}",
        ran.stderr
    );
    assert!(
        project.file("enriched.marker").exists(),
        "the added task's command really ran"
    );
    let run = project.run_json(DAY);
    assert_eq!(run["id"], created["id"], "the existing run is completed");
    assert_eq!(run["state"], "succeeded", "{run:#}");
    for name in ["enrich", "publish"] {
        let task = project.task(DAY, name);
        assert_eq!(
            (task["state"].as_str(), task["outcome"].as_str()),
            (Some("done"), Some("succeeded")),
            "{task}"
        );
        assert_eq!(task["attempts"], 1, "{task}");
    }
    assert_eq!(
        project.read("ran.ledger"),
        "fetch\nenrich\npublish\n",
        "fetch is not downstream of enrich and does not run again"
    );

    let versions: Vec<(String, Option<String>)> = project
        .attempts(DAY)
        .into_iter()
        .map(|attempt| (attempt.task, attempt.version))
        .collect();
    assert_eq!(
        versions,
        [
            ("fetch".to_string(), Some(old_version.clone())),
            ("enrich".to_string(), Some(new_version.clone())),
            ("publish".to_string(), Some(new_version.clone())),
        ]
    );
    let events = project.events(DAY);
    let added: Vec<&str> = events
        .iter()
        .filter(|event| event.kind == "task_added")
        .filter_map(|event| event.task.as_deref())
        .collect();
    assert_eq!(added, ["enrich", "publish"]);
    let expected = format!("the retry uses pipeline version {new_version} (was {old_version})");
    assert!(
        events.iter().any(|event| event.detail == expected),
        "no event says {expected:?}: {events:#?}"
    );
}

/// Regression: `keel retry` started the new attempt with the same number, in the same directory,
/// as the failed one: its output was appended to the failed attempt's `output.log`, its exit
/// record replaced the failed one's, and `keel logs --attempt 2` said "it has attempts 1, 1".
#[test]
fn retry_keeps_the_failed_attempts_output_and_numbers_the_new_attempt_after_it() {
    let project = Project::new(&pipeline(
        r#"[tasks.fetch]
phase = "main"
command = ["sh", "-c", "if test -e fixed; then echo fetch-fixed; else echo fetch-broken; exit 65; fi"]
"#,
    ));
    assert_eq!(project.run(&["--partition", DAY]).code, Some(1));
    std::fs::write(project.file("fixed"), "").unwrap();
    let retry = project.keel("retry", &["fetch", "--partition", DAY]);
    assert_eq!(retry.code, Some(0), "{}", retry.transcript());

    let latest = project.logs(DAY, "fetch", None);
    assert_eq!(
        latest.stdout, "fetch-fixed\n",
        "the latest attempt is the retry alone"
    );
    let second = project.logs(DAY, "fetch", Some(2));
    assert_eq!(
        second.stdout,
        "fetch-fixed\n",
        "the retry is attempt 2: {}",
        second.transcript()
    );
    let first = project.logs(DAY, "fetch", Some(1));
    assert_eq!(
        first.stdout,
        "fetch-broken\n",
        "attempt 1 keeps its own output: {}",
        first.transcript()
    );
    assert_eq!(
        project.output_logs().len(),
        2,
        "{:?}",
        project.output_logs()
    );
}

#[test]
fn cancel_from_another_process_stops_the_running_attempt() {
    let project = Project::new(&pipeline(
        r#"[tasks.long]
phase = "main"
command = ["sh", "-c", "echo $$ > long.pid; exec sleep 30"]

[tasks.later]
phase = "main"
command = ["touch", "later.ran"]
after = ["long"]
"#,
    ));
    let _reap = Reap(vec![project.file("long.pid")]);
    let mut run = project.spawn("run", &["--partition", DAY]);
    let pid = project.pid_in("long.pid");
    wait_until("the run to be running", Duration::from_secs(10), || {
        project.run_json(DAY)["state"] == "running"
    });

    let started = Instant::now();
    let ran = project.keel("cancel", &["--partition", DAY]);
    assert_eq!(ran.code, Some(0), "{}", ran.transcript());
    assert!(ran.stdout.contains("is cancelled"), "{}", ran.stdout);
    let status = run.wait(Duration::from_secs(15));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(status.code(), Some(1), "a cancelled run is not a success");

    let state = project.run_json(DAY);
    assert_eq!(state["state"], "cancelled", "{state:#}");
    let long = project.task(DAY, "long");
    assert_eq!(long["outcome"], "cancelled", "{long}");
    assert_eq!(long["attempts"], 1);
    assert_eq!(project.task(DAY, "later")["outcome"], "cancelled");
    assert!(!project.file("later.ran").exists());
    wait_until(
        "the cancelled attempt to be stopped",
        Duration::from_secs(5),
        || !alive(pid),
    );
}

#[test]
fn cancel_with_no_keel_running_settles_the_run_and_stops_its_orphaned_attempt() {
    let project = Project::new(&pipeline(
        r#"[tasks.long]
phase = "main"
command = ["sh", "-c", "echo $$ > long.pid; exec sleep 30"]

[tasks.later]
phase = "main"
command = ["touch", "later.ran"]
after = ["long"]
"#,
    ));
    let _reap = Reap(vec![project.file("long.pid")]);
    let mut run = project.spawn("run", &["--partition", DAY]);
    let pid = project.pid_in("long.pid");
    run.kill_dash_nine();
    assert!(alive(pid), "the attempt outlives a killed keel");
    assert_eq!(project.run_json(DAY)["state"], "running");

    let ran = project.keel("cancel", &["--partition", DAY]);
    assert_eq!(ran.code, Some(0), "{}", ran.transcript());
    assert!(ran.stdout.contains("is cancelled"), "{}", ran.stdout);
    assert_eq!(project.run_json(DAY)["state"], "cancelled");
    assert_eq!(project.task(DAY, "long")["outcome"], "cancelled");
    assert_eq!(project.task(DAY, "later")["outcome"], "cancelled");
    wait_until(
        "the orphaned attempt to be stopped",
        Duration::from_secs(5),
        || !alive(pid),
    );

    // Cancelling it again, or a finished run, does nothing and says so.
    let again = project.keel("cancel", &["--partition", DAY]);
    assert_eq!(again.code, Some(0), "{}", again.transcript());
    assert!(
        again
            .stdout
            .contains("already finished as cancelled; nothing to cancel"),
        "{}",
        again.stdout
    );
}

#[test]
fn cancel_without_a_run_is_a_clear_error() {
    let project = Project::new(&pipeline(
        "[tasks.a]\nphase = \"main\"\ncommand = [\"true\"]\n",
    ));
    let no_state = project.keel("cancel", &["--partition", DAY]);
    assert_ne!(no_state.code, Some(0));
    assert_eq!(project.run(&["--partition", DAY]).code, Some(0));
    let no_run = project.keel("cancel", &["--partition", "2026-01-19"]);
    assert_ne!(no_run.code, Some(0));
    let finished = project.keel("cancel", &["--partition", DAY]);
    assert_eq!(finished.code, Some(0));
    let run = run_id(&project.run_json(DAY));
    let text = [no_state, no_run, finished]
        .iter()
        .map(Ran::transcript)
        .collect::<Vec<_>>()
        .join("\n")
        .replace(&format!("run {run}"), "run [RUN]");
    assert_snapshot!("cancel_without_a_run", text);
}

#[test]
fn output_that_is_not_a_terminal_has_no_escape_codes() {
    let project = Project::new(&pipeline(
        r#"[tasks.ok]
phase = "main"
command = ["sh", "-c", "echo fine"]

[tasks.flaky]
phase = "main"
command = ["sh", "-c", "exit 1"]
retries = { attempts = 2, initial = "10ms" }

[tasks.slow]
phase = "main"
command = ["sleep", "0.4"]
"#,
    ));
    let ran = project.run(&["--partition", DAY]);
    assert_eq!(ran.code, Some(1));
    assert!(
        !ran.stderr.contains('\x1b'),
        "stderr has escape codes: {:?}",
        ran.stderr
    );
    assert!(
        !ran.stdout.contains('\x1b'),
        "stdout has escape codes: {:?}",
        ran.stdout
    );
    assert!(
        ran.stdout.contains("flaky"),
        "the summary table is still printed: {}",
        ran.stdout
    );
}

/// `keel bench --scale-case`, the process the scale benchmark starts for each case, runs the
/// case's pipeline as `keel run` does and writes its wall time, CPU time and its own peak memory.
#[test]
fn a_scale_benchmark_case_runs_its_pipeline_and_reports_its_own_figures() {
    let dir = tempfile::tempdir().unwrap();
    let case = dir.path().join("case");
    keel()
        .args([
            "bench",
            "--scale-case",
            "dag:120",
            "--concurrency",
            "4",
            "--dir",
        ])
        .arg(&case)
        .assert()
        .success();
    let measured = std::fs::read_to_string(case.join("measured")).unwrap();
    let figures: Vec<u128> = measured
        .split_whitespace()
        .map(|field| field.parse().unwrap())
        .collect();
    let [wall_nanos, cpu_nanos, peak_kib] = figures[..] else {
        panic!("three figures: {measured:?}")
    };
    assert!(wall_nanos > 0 && cpu_nanos > 0, "{measured:?}");
    // The binary and its runtime alone take more than a MiB.
    assert!(peak_kib > 1024, "{measured:?}");
    let output = keel()
        .args(["status", "--json", "--partition", "none"])
        .arg(case.join("keel.toml"))
        .output()
        .unwrap();
    let json: Value = serde_json::from_slice(&output.stdout).unwrap();
    let run = &json["runs"][0];
    assert_eq!(run["state"], "succeeded", "{run}");
    let tasks = run["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 120);
    assert!(tasks.iter().all(|task| task["outcome"] == "succeeded"));
    let pipeline = std::fs::read_to_string(case.join("keel.toml")).unwrap();
    assert!(
        pipeline.contains("[tasks.t1_0]") && pipeline.contains("after = [\"t0_0\", \"t0_3\"]"),
        "the second level waits for two tasks of the first:\n{pipeline}"
    );
}

/// `keel run --pass NAME` runs the pass's tasks with its params and `KEEL_PASS`, in a run of
/// its own beside the partition's finished run; `keel status` and `keel history` show each
/// run's pass, `keel status --pass` shows only that pass's, and an unknown pass is a usage
/// error with the closest name.
#[test]
fn a_pass_runs_by_hand_and_shows_apart() {
    let project = Project::new(&pipeline(
        r#"[tasks.fetch]
phase = "main"
command = ["sh", "-c", "echo \"fetch [$KEEL_PASS] {param.mode}\" >> ledger"]

[tasks.predict]
phase = "main"
after = ["fetch"]
command = ["sh", "-c", "echo \"predict [$KEEL_PASS] {param.mode} {pass}\" >> ledger"]

[passes.same_day]
schedule = "30 10 * * *"
tasks = ["predict"]
params = { mode = "same_day" }
"#,
    ));
    let main = project.run(&["--partition", DAY]);
    assert_eq!(main.code, Some(0), "{}", main.transcript());
    let pass = project.run(&["--partition", DAY, "--pass", "same_day"]);
    assert_eq!(pass.code, Some(0), "{}", pass.transcript());
    assert_eq!(
        project.read("ledger"),
        "fetch [] \npredict []  \npredict [same_day] same_day same_day\n",
        "the pass ran only its task, with its pass and params"
    );
    let again = project.run(&["--partition", DAY, "--pass", "same_day"]);
    assert_eq!(again.code, Some(0));
    assert!(
        again.stdout.contains("of pass same_day already finished"),
        "{}",
        again.transcript()
    );

    let status = project.status();
    let runs: Vec<(Value, Value)> = status["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|run| (run["pass"].clone(), run["state"].clone()))
        .collect();
    assert_eq!(
        runs,
        vec![
            (Value::from("same_day"), Value::from("succeeded")),
            (Value::Null, Value::from("succeeded")),
        ],
        "{status:#}"
    );
    let only_pass = project.keel("status", &["--pass", "same_day", "--json"]);
    let only_pass: Value = serde_json::from_str(&only_pass.stdout).unwrap();
    let passes: Vec<&Value> = only_pass["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|run| &run["pass"])
        .collect();
    assert_eq!(passes, vec![&Value::from("same_day")]);
    let table = project.keel("status", &[]);
    assert!(
        table.stdout.contains("2026-01-18 (pass same_day)"),
        "{}",
        table.stdout
    );
    let history = project.keel("history", &["predict", "--json"]);
    let history: Value = serde_json::from_str(&history.stdout).unwrap();
    let history_passes: Vec<&Value> = history["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|run| &run["pass"])
        .collect();
    assert_eq!(history_passes, vec![&Value::from("same_day"), &Value::Null]);

    // Queued with --detach, the pass's run is taken up by the next `keel run --pass`.
    let queued = project.run(&[
        "--partition",
        "2026-01-19",
        "--pass",
        "same_day",
        "--detach",
    ]);
    assert_eq!(queued.code, Some(0), "{}", queued.transcript());
    assert!(
        queued.stdout.starts_with("queued run "),
        "{}",
        queued.stdout
    );
    let resumed = project.run(&["--partition", "2026-01-19", "--pass", "same_day"]);
    assert_eq!(resumed.code, Some(0), "{}", resumed.transcript());
    assert!(
        resumed.stderr.contains("resuming unfinished run"),
        "{}",
        resumed.transcript()
    );
    assert!(
        project
            .read("ledger")
            .ends_with("predict [same_day] same_day same_day\n"),
        "{}",
        project.read("ledger")
    );

    let unknown_run = project.run(&["--partition", DAY, "--pass", "sameday"]);
    let unknown_status = project.keel("status", &["--pass", "nope"]);
    assert_snapshot!(format!(
        "{}\n{}",
        unknown_run.transcript(),
        unknown_status.transcript()
    ));
}

/// The instant of a UTC timestamp, in milliseconds.
fn utc_millis(text: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(text)
        .unwrap()
        .timestamp_millis()
}

#[test]
fn a_repeating_task_waits_for_its_window_repeats_on_its_grid_and_completes_when_it_closes() {
    let project = Project::new(&pipeline(
        r#"[tasks.live_scores]
phase = "main"
command = ["sh", "-c", "echo {attempt} >> live.ledger; test {attempt} -eq 2"]
repeat = { every = "20s", from = "23:59", until = "00:00" }

[tasks.after_the_window]
phase = "main"
after = ["live_scores"]
command = ["true"]
"#,
    ));
    // Keel's clock starts 3 s before the window opens and runs ten times as fast, so the
    // one-minute window (repetitions at 23:59:00, :20 and :40) takes about 6 s.
    let output = assert_cmd::Command::new("faketime")
        .args(["-f", "@2026-01-18 23:58:57 x10"])
        .arg(keel_path())
        .args([
            "run",
            project.pipeline.to_str().unwrap(),
            "--partition",
            DAY,
        ])
        .current_dir(project.path())
        .timeout(Duration::from_secs(40))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert_eq!(project.read("live.ledger"), "1\n2\n3\n");

    let live = project.task(DAY, "live_scores");
    assert_eq!(live["outcome"], "succeeded", "the second succeeded: {live}");
    let opens = utc_millis("2026-01-18T23:59:00Z");
    let closes = utc_millis("2026-01-19T00:00:00Z");
    let attempts = project.attempts(DAY);
    let starts: Vec<i64> = attempts
        .iter()
        .filter(|attempt| attempt.task == "live_scores")
        .map(|attempt| attempt.claimed_at)
        .collect();
    assert_eq!(starts.len(), 3, "{starts:?}");
    for (index, start) in starts.iter().enumerate() {
        let due = opens + index as i64 * 20_000;
        assert!(
            (due..due + 20_000).contains(start),
            "repetition {} not at its time on the grid: {start} (due {due})",
            index + 1
        );
    }
    let downstream = attempts
        .iter()
        .find(|attempt| attempt.task == "after_the_window")
        .expect("downstream ran");
    assert!(
        downstream.claimed_at >= closes - 20_000,
        "downstream waited for the last repetition: {}",
        downstream.claimed_at
    );
    let message = live["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("an earlier repetition succeeded"),
        "{live}"
    );
}

#[test]
fn a_past_partition_runs_a_repeating_task_once() {
    let project = Project::new(&pipeline(
        r#"[tasks.live_scores]
phase = "main"
command = ["sh", "-c", "echo {attempt} >> live.ledger"]
repeat = { every = "1s", from = "19:00", until = "02:00" }
"#,
    ));
    let ran = project.run(&["--partition", DAY]);
    assert_eq!(ran.code, Some(0), "{}", ran.transcript());
    assert_eq!(project.read("live.ledger"), "1\n");
}

#[test]
fn a_frozen_task_is_not_rerun_when_a_waived_task_lands_late() {
    let project = Project::new(
        r#"[pipeline]
name = "t"
timezone = "UTC"
partition = "date"

[defaults]
timeout = "20s"
retries = { attempts = 3, initial = "10ms", max = "50ms" }

[phases.scrape]
gate = { required = ["fast"], grace = "0s" }

[phases.publish]
after = ["scrape"]

[tasks.fast]
phase = "scrape"
command = ["true"]

[tasks.slow]
phase = "scrape"
command = ["sh", "-c", "sleep 1"]

[tasks.published]
phase = "publish"
command = ["sh", "-c", "echo {attempt} >> published.ledger"]
freeze_after = "18:00"

[tasks.report]
phase = "publish"
command = ["sh", "-c", "echo {attempt} >> report.ledger"]

[tasks.frozen_failure]
phase = "scrape"
command = ["sh", "-c", "echo {attempt} >> frozen_failure.ledger; exit 1"]
freeze_after = "18:00"
"#,
    );
    // 18:00 on 2026-01-18 is long past: the freezes are in force from the start.
    let ran = project.run(&["--partition", DAY]);
    assert_eq!(ran.code, Some(3), "degraded: {}", ran.transcript());
    assert_eq!(
        project.read("report.ledger"),
        "1\n2\n",
        "not frozen: run again"
    );
    assert_eq!(
        project.read("published.ledger"),
        "1\n",
        "frozen: not run again"
    );
    let published = project.task(DAY, "published");
    assert_eq!(published["outcome"], "succeeded", "{published}");
    assert_eq!(
        published["message"],
        "frozen at 18:00: not rerun after upstream task \"slow\" landed late"
    );
    assert_eq!(project.read("frozen_failure.ledger"), "1\n", "not retried");
    let failure = project.task(DAY, "frozen_failure");
    assert_eq!(failure["outcome"], "failed", "{failure}");
    let message = failure["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("frozen at 18:00: not retried after it ended failed"),
        "{failure}"
    );
}

#[test]
fn a_task_frozen_after_another_ends_is_not_rerun_once_that_one_ended() {
    let project = Project::new(
        r#"[pipeline]
name = "t"
timezone = "UTC"
partition = "date"

[defaults]
timeout = "20s"

[phases.scrape]
gate = { required = ["fast"], grace = "0s" }

[phases.publish]
after = ["scrape"]

[tasks.fast]
phase = "scrape"
command = ["true"]

[tasks.slow]
phase = "scrape"
command = ["sh", "-c", "sleep 1"]

[tasks.export]
phase = "publish"
command = ["sh", "-c", "echo {attempt} >> export.ledger"]

[tasks.picks]
phase = "publish"
command = ["sh", "-c", "echo {attempt} >> picks.ledger"]
freeze_after = { task = "export" }

[tasks.notes]
phase = "publish"
command = ["sh", "-c", "echo {attempt} >> notes.ledger"]
freeze_after = { task = "export", delay = "1h" }
"#,
    );
    let ran = project.run(&["--partition", DAY]);
    assert_eq!(ran.code, Some(0), "{}", ran.transcript());
    assert_eq!(
        project.read("export.ledger"),
        "1\n2\n",
        "not frozen: run again"
    );
    assert_eq!(
        project.read("picks.ledger"),
        "1\n",
        "frozen once export ended: not run again"
    );
    let picks = project.task(DAY, "picks");
    assert_eq!(picks["outcome"], "succeeded", "{picks}");
    assert_eq!(
        picks["message"],
        "frozen when \"export\" ended: not rerun after upstream task \"slow\" landed late"
    );
    assert_eq!(
        project.read("notes.ledger"),
        "1\n2\n",
        "an hour after export ended has not come: run again"
    );
}

#[test]
fn every_sensor_of_a_list_passes_in_order_before_the_first_attempt() {
    let project = Project::new(&pipeline(
        r#"[tasks.sensed]
phase = "main"
command = ["sh", "-c", "echo task >> sensors.ledger"]
wait_for = [
    { command = ["sh", "-c", "echo odds >> sensors.ledger"] },
    { command = ["sh", "-c", "echo lineups >> sensors.ledger; test -e lineups.flag && exit 0; touch lineups.flag; exit 75"], every = "10ms", max = "20ms" },
]
"#,
    ));
    let ran = project.run(&["--partition", DAY]);
    assert_eq!(ran.code, Some(0), "{}", ran.transcript());
    assert_eq!(
        project.read("sensors.ledger"),
        "odds\nlineups\nlineups\ntask\n",
        "the second sensor is polled again until it passes, then the task runs"
    );
    let sensed = project.task(DAY, "sensed");
    assert_eq!(sensed["attempts"], 1, "{sensed}");
    assert_eq!(sensed["sensor_polls"], 3, "{sensed}");
}
