//! Dependencies across dates (`after = ["summary@-1d"]`), through the binary with real
//! processes: a range waits for the day before, `keel status` says what a task waits for, and a
//! failed day before fails a hard entry and is missing for a soft one.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use crate::support::{Served, keel, keel_path, wait_for, write_pipeline};

const PIPELINE: &str = r#"[pipeline]
name = "crossdate"

[defaults]
retries = { attempts = 1 }

[phases.main]

# Fails on 2026-11-29; on the other dates it waits (bounded) for the test's "go" file.
[tasks.summary]
phase = "main"
command = ["sh", "-c", "test {date} != 2026-11-29 || exit 1; for i in $(seq 300); do test -f go && break; sleep 0.05; done; echo {date} > summary-{date}.txt"]

[tasks.rolling]
phase = "main"
command = ["sh", "-c", "echo \"{date} yesterday=[$(cat summary-{date-1d}.txt 2>/dev/null)]\" >> rolling.txt"]
after = ["summary@-1d"]

[tasks.rolling_soft]
phase = "main"
command = ["sh", "-c", "echo \"{date} missing=[$KEEL_MISSING]\" >> rolling_soft.txt"]
after = [{ task = "summary@-1d", soft = true }]
"#;

fn status(dir: &Path, partition: &str) -> String {
    let output = keel()
        .current_dir(dir)
        .args(["status"])
        .arg(dir.join("keel.toml"))
        .args(["--partition", partition])
        .timeout(Duration::from_secs(30))
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Each task's (outcome, message) in the partition's latest run, from `keel status --json`.
fn task_of(dir: &Path, partition: &str, name: &str) -> (String, String) {
    let output = keel()
        .current_dir(dir)
        .args(["status"])
        .arg(dir.join("keel.toml"))
        .args(["--json", "--partition", partition])
        .timeout(Duration::from_secs(30))
        .output()
        .unwrap();
    let status: Value = serde_json::from_slice(&output.stdout).unwrap();
    let task = status["runs"][0]["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|task| task["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {status}"))
        .clone();
    (
        task["outcome"].as_str().unwrap_or("none").to_string(),
        task["message"].as_str().unwrap_or_default().to_string(),
    )
}

fn lines(dir: &Path, name: &str) -> Vec<String> {
    let mut lines: Vec<String> = std::fs::read_to_string(dir.join(name))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

#[test]
fn a_range_waits_for_the_day_before_and_a_failed_day_fails_only_hard_entries() {
    let dir = tempfile::tempdir().unwrap();
    write_pipeline(dir.path(), PIPELINE);
    let child = std::process::Command::new(keel_path())
        .current_dir(dir.path())
        .arg("run")
        .arg(dir.path().join("keel.toml"))
        .args(["--from", "2026-11-28", "--to", "2026-11-30"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut run = Served(child);
    // 2026-11-28's summary waits for "go": 2026-11-29's rolling waits for it, and says so.
    wait_for("the waiting message", Duration::from_secs(30), || {
        status(dir.path(), "2026-11-29").contains("waiting for summary on 2026-11-28")
    });
    assert!(
        lines(dir.path(), "rolling.txt")
            .iter()
            .all(|line| !line.starts_with("2026-11-29"))
    );
    std::fs::write(dir.path().join("go"), "").unwrap();
    let mut code = None;
    wait_for("keel run to end", Duration::from_secs(60), || {
        code = run.0.try_wait().unwrap().map(|status| status.code());
        code.is_some()
    });
    assert_eq!(code, Some(Some(1)), "summary failed on 2026-11-29");
    // The first date has no day before; the second read the first's summary.
    assert_eq!(
        lines(dir.path(), "rolling.txt"),
        [
            "2026-11-28 yesterday=[]",
            "2026-11-29 yesterday=[2026-11-28]"
        ]
    );
    let (outcome, message) = task_of(dir.path(), "2026-11-30", "rolling");
    assert_eq!(outcome, "upstream_failed");
    assert_eq!(
        message,
        "summary on 2026-11-29 ended failed; retry it there, then retry this task"
    );
    assert_eq!(
        lines(dir.path(), "rolling_soft.txt"),
        [
            "2026-11-28 missing=[]",
            "2026-11-29 missing=[]",
            "2026-11-30 missing=[summary@-1d]"
        ]
    );
}
