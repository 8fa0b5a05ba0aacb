//! What a task starts with, driven through the binary with real processes: its working directory,
//! whatever directory `keel` starts in, its environment (`env`, `env_file`, `inherit_env`), how
//! sensor errors end a task, and partitions named relative to today in the pipeline's zone.

use std::path::PathBuf;
use std::time::Duration;

use chrono::TimeZone;
use serde_json::Value;

use crate::support::{keel, write_pipeline};

const DAY: &str = "2026-01-18";

/// A project directory, and `keel` started from `/` with the pipeline's absolute path, the way
/// cron starts it.
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

    /// The project's directory as the kernel names it (`pwd` prints this).
    fn path(&self) -> PathBuf {
        self.dir.path().canonicalize().unwrap()
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name))
            .unwrap_or_else(|error| panic!("{name}: {error}"))
    }

    fn command(&self, subcommand: &str, args: &[&str]) -> assert_cmd::Command {
        let mut command = keel();
        command
            .current_dir("/")
            .arg(subcommand)
            .arg(&self.pipeline)
            .args(args)
            .timeout(Duration::from_secs(30));
        command
    }

    /// Runs `keel SUBCOMMAND PIPELINE ARGS…`; returns the exit code and stdout and stderr.
    fn keel(&self, subcommand: &str, args: &[&str]) -> (Option<i32>, String) {
        let output = self.command(subcommand, args).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.code(), text)
    }

    fn task(&self, partition: &str, name: &str) -> Value {
        let (code, text) = self.keel("status", &["--json", "--partition", partition]);
        assert_eq!(code, Some(0), "{text}");
        let status: Value = serde_json::from_str(&text).unwrap();
        status["runs"][0]["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|task| task["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no task {name} in {status:#}"))
    }
}

fn pipeline(defaults: &str, tasks: &str) -> String {
    format!(
        r#"[pipeline]
name = "ctx"

[defaults]
timeout = "20s"
retries = {{ attempts = 1, initial = "10ms", max = "50ms" }}
{defaults}

[phases.main]

{tasks}"#
    )
}

/// Reported: `cd / && keel run /srv/p/keel.toml` ran every task in `/`, so relative paths broke
/// and cron runs differed from manual ones. Tasks now run beside the pipeline file, or in their
/// `cwd`, relative to it, and a program path with a "/" is found from there.
#[test]
fn tasks_run_in_the_pipeline_directory_wherever_keel_starts() {
    let project = Project::new(&pipeline(
        "",
        r#"[tasks.here]
phase = "main"
command = ["sh", "-c", "pwd > here.txt; echo \"$PWD\" > here.pwd"]

[tasks.script]
phase = "main"
command = ["./bin/hello.sh", "{date}"]

[tasks.moved]
phase = "main"
command = ["sh", "-c", "pwd > moved.txt"]
cwd = "work/{date}"
"#,
    ));
    std::fs::create_dir_all(project.path().join("bin")).unwrap();
    let script = project.path().join("bin/hello.sh");
    std::fs::write(&script, "#!/bin/sh\necho \"hello $1\" > hello.txt\n").unwrap();
    let executable = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(&script, executable).unwrap();
    let work = project.path().join("work").join(DAY);
    std::fs::create_dir_all(&work).unwrap();
    let (code, text) = project.keel("run", &["--partition", DAY]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(
        project.read("here.txt").trim(),
        project.path().display().to_string()
    );
    assert_eq!(
        project.read("here.pwd").trim(),
        project.path().display().to_string()
    );
    assert_eq!(project.read("hello.txt").trim(), format!("hello {DAY}"));
    let moved = std::fs::read_to_string(work.join("moved.txt")).unwrap();
    assert_eq!(moved.trim(), work.display().to_string());
}

#[test]
fn a_missing_working_directory_fails_the_task_for_good_without_retries() {
    let project = Project::new(&pipeline(
        "",
        r#"[tasks.lost]
phase = "main"
command = ["touch", "ran.txt"]
cwd = "nowhere/{date}"
retries = { attempts = 5 }
"#,
    ));
    let (code, text) = project.keel("run", &["--partition", DAY]);
    assert_eq!(code, Some(1), "{text}");
    let task = project.task(DAY, "lost");
    assert_eq!(task["outcome"], "failed_permanent");
    assert_eq!(task["attempts"], 1, "not retried: {task:#}");
    let expected = format!(
        "working directory {:?} does not exist",
        project
            .path()
            .join("nowhere")
            .join(DAY)
            .display()
            .to_string()
    );
    let message = task["message"].as_str().unwrap();
    assert!(message.starts_with(&expected), "{message}");
    assert!(!project.path().join("ran.txt").exists());
}

#[test]
fn env_and_env_file_reach_the_task_and_the_tasks_own_entries_win() {
    let project = Project::new(&pipeline(
        r#"env = { A = "from defaults", B = "from defaults" }
env_file = "conf/.env""#,
        r#"[tasks.show]
phase = "main"
command = ["sh", "-c", "echo \"$A|$B|$C|$D|$E|$PYTHONUNBUFFERED|$KEEL_TASK\" > env.txt"]
env = { B = "from the task", C = "day {date}" }

[tasks.python]
phase = "main"
command = ["sh", "-c", "echo \"$PYTHONUNBUFFERED\" > python.txt"]
env = { PYTHONUNBUFFERED = "" }
"#,
    ));
    std::fs::create_dir(project.path().join("conf")).unwrap();
    std::fs::write(
        project.path().join("conf/.env"),
        "# shared settings\nB=from the file\nD=\"from the file\"\nexport E=exported\n",
    )
    .unwrap();
    let (code, text) = project.keel("run", &["--partition", DAY]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(
        project.read("env.txt").trim(),
        format!("from defaults|from the task|day {DAY}|from the file|exported|1|show")
    );
    assert_eq!(
        project.read("python.txt").trim(),
        "",
        "a task that sets PYTHONUNBUFFERED keeps its value"
    );
}

/// `inherit_env` makes a task's environment independent of where `keel` was started: a list
/// lets through only its names, `false` nothing, and the default everything.
#[test]
fn inherit_env_decides_which_of_keels_variables_a_task_sees() {
    let project = Project::new(&pipeline(
        "",
        r#"[tasks.listed]
phase = "main"
command = ["sh", "-c", "echo \"${{HIDDEN_FROM_TASKS:-unset}} ${{SHOWN_TO_TASKS:-unset}} ${{PATH:+path}} $KEEL_TASK\" > listed.txt"]
inherit_env = ["PATH", "SHOWN_TO_TASKS"]

[tasks.nothing]
phase = "main"
command = ["env"]
inherit_env = false

[tasks.everything]
phase = "main"
command = ["sh", "-c", "echo \"${{HIDDEN_FROM_TASKS:-unset}} ${{SHOWN_TO_TASKS:-unset}}\" > everything.txt"]
"#,
    ));
    let output = project
        .command("run", &["--partition", DAY])
        .env("HIDDEN_FROM_TASKS", "hidden")
        .env("SHOWN_TO_TASKS", "shown")
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(project.read("listed.txt").trim(), "unset shown path listed");
    // Without PATH, a program is looked for in /bin and /usr/bin.
    let (code, text) = project.keel("logs", &["nothing", "--partition", DAY]);
    assert_eq!(code, Some(0), "{text}");
    let names: Vec<&str> = text
        .lines()
        .filter_map(|line| line.split_once('=').map(|(name, _)| name))
        .collect();
    assert!(names.contains(&"KEEL_TASK"), "{text}");
    for absent in ["HIDDEN_FROM_TASKS", "SHOWN_TO_TASKS", "PATH", "HOME"] {
        assert!(
            !names.contains(&absent),
            "{absent} reached the task: {text}"
        );
    }
    assert_eq!(project.read("everything.txt").trim(), "hidden shown");
}

/// Keel's own `KEEL_*` variables (a passphrase, a token) never reach a task that inherits
/// Keel's environment: only the contract's `KEEL_*` variables do.
#[test]
fn keels_own_variables_are_not_inherited_by_tasks() {
    let project = Project::new(&pipeline(
        "",
        r#"[tasks.inherits]
phase = "main"
command = ["sh", "-c", "echo \"${{KEEL_SECRETS_PASSPHRASE:-unset}} ${{OTHER:-unset}} $KEEL_TASK\" > inherits.txt"]
"#,
    ));
    let output = project
        .command("run", &["--partition", DAY])
        .env("KEEL_SECRETS_PASSPHRASE", "correct horse battery staple")
        .env("OTHER", "other")
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(project.read("inherits.txt").trim(), "unset other inherits");
}

#[test]
fn a_broken_env_file_stops_validate_and_run_naming_the_file_and_line() {
    let project = Project::new(&pipeline(
        "env_file = \".env\"",
        "[tasks.a]\nphase = \"main\"\ncommand = [\"touch\", \"ran.txt\"]\n",
    ));
    let env_file = project.dir.path().join(".env");
    for (subcommand, args) in [("validate", &[][..]), ("run", &["--partition", DAY][..])] {
        let (code, text) = project.keel(subcommand, args);
        assert_eq!(code, Some(2), "{subcommand}: {text}");
        assert!(
            text.contains(&format!(
                "cannot read env file {:?}, the env_file of task \"a\": it does not exist",
                env_file.display().to_string()
            )),
            "{subcommand}: {text}"
        );
    }
    std::fs::write(&env_file, "GOOD=1\nsecret-looking-line-without-equals\n").unwrap();
    let (code, text) = project.keel("run", &["--partition", DAY]);
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains(&format!(
            "invalid line in env file ({}:2:1): the line has no \"=\"",
            env_file.display()
        )),
        "{text}"
    );
    assert!(!text.contains("secret-looking"), "{text}");
    assert!(!project.path().join("ran.txt").exists(), "nothing ran");
}

/// Reported: a sensor that crashed (exit 1, a traceback) was taken for "not ready" and polled
/// until its deadline, hours later. It is now a sensor error: retried under the task's retry
/// policy, and the task fails with the sensor's last output once the attempts are spent.
#[test]
fn a_failing_sensor_fails_the_task_with_its_output_and_exit_65_is_no_data() {
    let project = Project::new(&pipeline(
        "",
        r#"[tasks.fetch]
phase = "main"
command = ["touch", "fetch.ran"]
retries = { attempts = 2, initial = "10ms", max = "20ms" }
wait_for = { command = ["sh", "-c", "echo polled >> polls.txt; echo 'feed down for {date}' >&2; exit 3"], every = "50ms", deadline = "1h" }

[tasks.holiday]
phase = "main"
command = ["touch", "holiday.ran"]
wait_for = { command = ["sh", "-c", "exit 65"], every = "50ms" }
"#,
    ));
    let (code, text) = project.keel("run", &["--partition", DAY]);
    assert_eq!(code, Some(1), "{text}");
    let fetch = project.task(DAY, "fetch");
    assert_eq!(fetch["outcome"], "failed", "{fetch:#}");
    assert_eq!(fetch["attempts"], 0, "the task itself never ran");
    let message = fetch["message"].as_str().unwrap();
    assert!(
        message.contains("failed 2 times")
            && message.contains("exited with code 3")
            && message.contains(&format!("feed down for {DAY}")),
        "{message}"
    );
    assert_eq!(project.read("polls.txt").lines().count(), 2);
    assert!(!project.path().join("fetch.ran").exists());
    let holiday = project.task(DAY, "holiday");
    assert_eq!(holiday["outcome"], "no_data", "{holiday:#}");
    assert!(!project.path().join("holiday.ran").exists());
}

/// The date in `zone` now.
fn today_in(zone: chrono_tz::Tz) -> chrono::NaiveDate {
    zone.from_utc_datetime(&chrono::Utc::now().naive_utc())
        .date_naive()
}

/// `today`, `yesterday` and `-2d`/`+1d` are dates in the pipeline's time zone. Kiritimati is 14
/// hours ahead of UTC, so for most of the day its date is not the machine's.
#[test]
fn partition_words_resolve_in_the_pipelines_time_zone() {
    let zone = chrono_tz::Pacific::Kiritimati;
    let project = Project::new(
        r#"[pipeline]
name = "far"
timezone = "Pacific/Kiritimati"

[phases.main]

[tasks.a]
phase = "main"
command = ["sh", "-c", "echo {date} >> dates.txt"]
"#,
    );
    for (word, offset) in [("today", 0), ("yesterday", -1), ("-2d", -2), ("+1d", 1)] {
        let before = today_in(zone);
        let (code, text) = project.keel("run", &["--partition", word]);
        let after = today_in(zone);
        assert_eq!(code, Some(0), "{word}: {text}");
        let ran = project.read("dates.txt");
        let got = ran.lines().last().unwrap();
        let expected = |today: chrono::NaiveDate| {
            (today + chrono::Duration::days(offset))
                .format("%Y-%m-%d")
                .to_string()
        };
        // Only if Kiritimati's midnight passed during the run may the later date be right.
        assert!(
            got == expected(before) || (before != after && got == expected(after)),
            "{word} ran {got}, expected {} in Kiritimati",
            expected(before)
        );
    }
    let before = today_in(zone);
    std::fs::remove_file(project.dir.path().join("dates.txt")).unwrap();
    let (code, text) = project.keel("run", &["--from", "-2d", "--to", "yesterday", "--rerun"]);
    let after = today_in(zone);
    assert_eq!(code, Some(0), "{text}");
    let mut dates: Vec<String> = project
        .read("dates.txt")
        .lines()
        .map(str::to_string)
        .collect();
    dates.sort();
    let range = |today: chrono::NaiveDate| {
        [-2, -1].map(|offset| {
            (today + chrono::Duration::days(offset))
                .format("%Y-%m-%d")
                .to_string()
        })
    };
    assert!(
        dates == range(before) || (before != after && dates == range(after)),
        "{dates:?}"
    );
    for refused in ["-2", "2d", "+-1d", "-1 d", "Today", "-1w"] {
        let (code, text) = project.keel("run", &["--partition", refused]);
        assert_eq!(code, Some(2), "{refused}: {text}");
        assert!(text.contains("today, yesterday"), "{refused}: {text}");
    }
}
