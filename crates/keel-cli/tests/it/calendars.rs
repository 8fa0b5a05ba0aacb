//! Dates in templates and task calendars (`when`), through the binary with real processes.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::support::{keel, write_pipeline};

/// Runs `keel SUBCOMMAND PIPELINE ARGS…` in `dir`; returns the exit code and the output.
fn run_keel(dir: &Path, subcommand: &str, args: &[&str]) -> (Option<i32>, String) {
    let output = keel()
        .current_dir(dir)
        .arg(subcommand)
        .arg(dir.join("keel.toml"))
        .args(args)
        .timeout(Duration::from_secs(30))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), text)
}

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_else(|error| panic!("{name}: {error}"))
}

#[test]
fn date_templates_expand_to_the_partitions_neighbours_and_formats() {
    let dir = tempfile::tempdir().unwrap();
    write_pipeline(
        dir.path(),
        r#"[pipeline]
name = "dates"

[phases.main]

[tasks.echo]
phase = "main"
command = ["sh", "-c", "echo \"$1 $2 $3\" > dates.txt", "sh", "{date-1d}", "{date:%Y%m%d}", "{partition+1d:%d/%m}"]

[tasks.env]
phase = "main"
after = ["echo"]
command = ["sh", "-c", "echo \"$YESTERDAY\" > env.txt"]
env = { YESTERDAY = "{date-1d:%Y_%m_%d}" }
"#,
    );
    let (code, text) = run_keel(dir.path(), "run", &["--partition", "2024-03-01"]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(
        read(dir.path(), "dates.txt").trim(),
        "2024-02-29 20240301 02/03"
    );
    assert_eq!(read(dir.path(), "env.txt").trim(), "2024_02_29");
}

fn status_task(dir: &Path, partition: &str, name: &str) -> Value {
    let (code, text) = run_keel(dir, "status", &["--json", "--partition", partition]);
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

#[test]
fn a_task_runs_only_on_its_weekdays() {
    let dir = tempfile::tempdir().unwrap();
    write_pipeline(
        dir.path(),
        r#"[pipeline]
name = "weekly"

[phases.main]
[phases.after]
after = ["main"]

[tasks.games]
phase = "main"
command = ["sh", "-c", "echo \"$1\" >> games.txt", "sh", "{date}"]
when = { weekdays = ["sun", "wed"] }

[tasks.report]
phase = "after"
command = ["sh", "-c", "echo \"$1\" >> report.txt", "sh", "{date}"]
"#,
    );
    // 2026-01-21 is a Wednesday, 2026-01-22 a Thursday.
    let (code, text) = run_keel(dir.path(), "run", &["--partition", "2026-01-21"]);
    assert_eq!(code, Some(0), "{text}");
    let (code, text) = run_keel(dir.path(), "run", &["--partition", "2026-01-22"]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(read(dir.path(), "games.txt"), "2026-01-21\n");
    assert_eq!(read(dir.path(), "report.txt"), "2026-01-21\n2026-01-22\n");
    let games = status_task(dir.path(), "2026-01-22", "games");
    assert_eq!(games["outcome"], "skipped", "{games:#}");
    assert_eq!(
        games["message"], "not a scheduled weekday: runs on sun, wed",
        "{games:#}"
    );
}

#[test]
fn a_weekday_typo_is_a_config_error_with_a_suggestion() {
    let dir = tempfile::tempdir().unwrap();
    write_pipeline(
        dir.path(),
        r#"[pipeline]
name = "weekly"

[phases.main]

[tasks.games]
phase = "main"
command = ["true"]
when = { weekdays = ["wdn"] }
"#,
    );
    let (code, text) = run_keel(dir.path(), "validate", &[]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("did you mean \"wed\"?"), "{text}");
}

#[test]
fn the_when_command_runs_or_skips_the_task_by_its_exit() {
    let dir = tempfile::tempdir().unwrap();
    // A game on the 21st only; the check runs beside the pipeline file with the task's env.
    std::fs::write(
        dir.path().join("is-game-day.sh"),
        "#!/bin/sh\necho \"asked $1 $SEASON\" >> asked.txt\nif [ \"$1\" = 20260121 ]; then exit 0; fi\necho \"no game on $1\"\nexit 1\n",
    )
    .unwrap();
    let executable = std::os::unix::fs::PermissionsExt::from_mode(0o755);
    std::fs::set_permissions(dir.path().join("is-game-day.sh"), executable).unwrap();
    write_pipeline(
        dir.path(),
        r#"[pipeline]
name = "games"

[phases.main]
[phases.after]
after = ["main"]

[tasks.recap]
phase = "main"
command = ["sh", "-c", "echo \"$1\" >> recaps.txt", "sh", "{date}"]
env = { SEASON = "2026" }
when = { command = ["./is-game-day.sh", "{date:%Y%m%d}"] }

[tasks.report]
phase = "after"
command = ["sh", "-c", "echo \"$1\" >> report.txt", "sh", "{date}"]
"#,
    );
    for day in ["2026-01-21", "2026-01-22"] {
        let (code, text) = run_keel(dir.path(), "run", &["--partition", day]);
        assert_eq!(code, Some(0), "{text}");
    }
    assert_eq!(read(dir.path(), "recaps.txt"), "2026-01-21\n");
    assert_eq!(read(dir.path(), "report.txt"), "2026-01-21\n2026-01-22\n");
    assert_eq!(
        read(dir.path(), "asked.txt"),
        "asked 20260121 2026\nasked 20260122 2026\n"
    );
    let recap = status_task(dir.path(), "2026-01-22", "recap");
    assert_eq!(recap["outcome"], "skipped", "{recap:#}");
    let message = recap["message"].as_str().unwrap_or_default();
    assert!(message.contains("no game on 20260122"), "{recap:#}");
}
