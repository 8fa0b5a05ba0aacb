//! Soft inputs (`KEEL_MISSING`) and targeted reconciliation (`inputs`), through the binary with
//! real processes.

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
        .timeout(Duration::from_secs(60))
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

/// Each task's outcome in the partition's latest run, from `keel status --json`.
fn outcomes(dir: &Path, partition: &str) -> Vec<(String, String)> {
    let (code, text) = run_keel(dir, "status", &["--json", "--partition", partition]);
    assert_eq!(code, Some(0), "{text}");
    let status: Value = serde_json::from_str(&text).unwrap();
    status["runs"][0]["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|task| {
            (
                task["name"].as_str().unwrap().to_string(),
                task["outcome"].as_str().unwrap_or("none").to_string(),
            )
        })
        .collect()
}

fn outcome_of(outcomes: &[(String, String)], name: &str) -> String {
    outcomes
        .iter()
        .find(|(task, _)| task == name)
        .map(|(_, outcome)| outcome.clone())
        .unwrap_or_else(|| panic!("no task {name} in {outcomes:?}"))
}

#[test]
fn a_task_runs_without_a_soft_input_that_failed_and_is_told_which() {
    let dir = tempfile::tempdir().unwrap();
    write_pipeline(
        dir.path(),
        r#"[pipeline]
name = "soft"

[defaults]
retries = { attempts = 1 }

[phases.main]

[tasks.odds_lines]
phase = "main"
command = ["sh", "-c", "echo 'the odds feed is down' >&2; exit 1"]

[tasks.box_scores]
phase = "main"
command = ["true"]

[tasks.player_props]
phase = "main"
command = ["sh", "-c", "echo \"missing=[$KEEL_MISSING]\" >> props.txt"]
after = ["box_scores", { task = "odds_lines", soft = true }]

[tasks.odds_report]
phase = "main"
command = ["sh", "-c", "echo ran >> odds_report.txt"]
after = ["odds_lines"]

[tasks.team_props]
phase = "main"
command = ["sh", "-c", "echo \"missing=[$KEEL_MISSING]\" >> team.txt"]
after = [{ task = "box_scores", soft = true }]
"#,
    );
    let (code, text) = run_keel(dir.path(), "run", &["--partition", "2026-01-21"]);
    assert_eq!(code, Some(1), "odds_lines failed, so the run did: {text}");
    assert_eq!(read(dir.path(), "props.txt"), "missing=[odds_lines]\n");
    assert_eq!(read(dir.path(), "team.txt"), "missing=[]\n");
    assert!(
        !dir.path().join("odds_report.txt").exists(),
        "a hard input blocks"
    );
    let outcomes = outcomes(dir.path(), "2026-01-21");
    assert_eq!(outcome_of(&outcomes, "player_props"), "succeeded");
    assert_eq!(outcome_of(&outcomes, "odds_report"), "upstream_failed");
    assert_eq!(outcome_of(&outcomes, "odds_lines"), "failed");
}

#[test]
fn a_late_task_reruns_only_what_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    // a5 lands late: it waits (bounded) until both precompute tasks have run without it.
    write_pipeline(
        dir.path(),
        r#"[pipeline]
name = "targeted"

[defaults]
retries = { attempts = 1 }

[phases.analytics]
gate = { required = ["a1"], min = "50%", grace = "0s" }
[phases.precompute]
after = ["analytics"]
[phases.predictions]
after = ["precompute"]

[tasks.a1]
phase = "analytics"
command = ["true"]

[tasks.a5]
phase = "analytics"
command = ["sh", "-c", "for i in $(seq 300); do [ -s features.txt ] && [ -s shots.txt ] && [ -s board.txt ] && exit 0; sleep 0.1; done; exit 1"]

[tasks.features]
phase = "precompute"
command = ["sh", "-c", "echo ran >> features.txt"]
inputs = ["a1"]

[tasks.shots]
phase = "precompute"
command = ["sh", "-c", "echo ran >> shots.txt"]
inputs = ["a5"]

[tasks.predict]
phase = "predictions"
command = ["sh", "-c", "echo ran >> predict.txt"]
inputs = ["features"]

[tasks.board]
phase = "predictions"
command = ["sh", "-c", "echo ran >> board.txt"]
"#,
    );
    let (code, text) = run_keel(dir.path(), "run", &["--partition", "2026-01-21"]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(read(dir.path(), "features.txt"), "ran\n", "reads a1 only");
    assert_eq!(
        read(dir.path(), "predict.txt"),
        "ran\n",
        "reads features only"
    );
    assert_eq!(read(dir.path(), "shots.txt"), "ran\nran\n", "reads a5");
    assert_eq!(
        read(dir.path(), "board.txt"),
        "ran\nran\n",
        "reads everything"
    );
    let outcomes = outcomes(dir.path(), "2026-01-21");
    assert!(
        outcomes.iter().all(|(_, outcome)| outcome == "succeeded"),
        "{outcomes:?}"
    );
}

#[test]
fn a_tiered_gate_opens_at_its_later_tier_and_the_event_log_says_which() {
    let dir = tempfile::tempdir().unwrap();
    // slow lands only once report has run without it, so the gate can only have opened at its
    // second tier (50%, from 1s into the run); the first asks for every task.
    write_pipeline(
        dir.path(),
        r#"[pipeline]
name = "tiered"

[defaults]
retries = { attempts = 1 }

[phases.analytics]
gate = { tiers = [{ after = "0s", min = "100%" }, { after = "1s", min = "50%", required = ["fast"] }] }
[phases.publish]
after = ["analytics"]

[tasks.fast]
phase = "analytics"
command = ["true"]

[tasks.slow]
phase = "analytics"
command = ["sh", "-c", "for i in $(seq 300); do [ -s report.txt ] && exit 0; sleep 0.1; done; exit 1"]

[tasks.report]
phase = "publish"
command = ["sh", "-c", "echo ran >> report.txt"]
"#,
    );
    let (code, text) = run_keel(dir.path(), "run", &["--partition", "2026-01-21"]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(
        read(dir.path(), "report.txt"),
        "ran\nran\n",
        "without slow, then again once it landed"
    );
    let (code, events) = run_keel(dir.path(), "events", &["--partition", "2026-01-21"]);
    assert_eq!(code, Some(0), "{events}");
    assert!(
        events.contains(
            "downstream proceeds without slow (tier 2 of 2: after 1.0s, min 50%, required fast)"
        ),
        "{events}"
    );
}
