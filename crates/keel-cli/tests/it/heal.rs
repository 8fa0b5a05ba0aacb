//! Remediation from downstream, end to end with real processes: a prediction task's accuracy
//! check heals the scrape upstream of it. Bad data written once is scraped again and the run
//! succeeds, with the heal in the event log; data that stays bad ends the run after the heal
//! budget, with exactly one `heal_exhausted` alert from `keel serve`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::{keel, keel_path, serve_on_free_port, wait_for, write_pipeline};

const PIPELINE: &str = r#"[pipeline]
name = "healing"
partition = "none"
heal = { budget = 2 }

[defaults]
retries = { attempts = 1 }

[phases.scrape]
[phases.model]
after = ["scrape"]

[tasks.scrape_boxscores]
phase = "scrape"
command = ["sh", "scrape.sh"]

[tasks.predictions]
phase = "model"
command = ["sh", "predict.sh"]
checks = [{ metric = "accuracy", min = 0.3, severity = "block", heal = ["scrape_boxscores"] }]

[alerts]
command = ["sh", "-c", "cat >> alerts.jsonl"]
"#;

/// The scrape writes `bad` data on its first run when `bad_once` exists, always when
/// `always_bad` does, and good data otherwise; predictions grade what the scrape wrote. Both
/// append their name to `ledger`.
fn write_tasks(root: &Path) {
    std::fs::write(
        root.join("scrape.sh"),
        r#"echo scrape >> ledger
runs=$(grep -c scrape ledger)
if [ -e always_bad ] || { [ -e bad_once ] && [ "$runs" = 1 ]; }; then echo bad > boxscores
else echo good > boxscores; fi
"#,
    )
    .unwrap();
    std::fs::write(
        root.join("predict.sh"),
        r#"echo predict >> ledger
if [ "$(cat boxscores)" = good ]; then accuracy=0.47; else accuracy=0.1875; fi
printf '{"rows": 48, "metrics": {"accuracy": %s}}' "$accuracy" > "$KEEL_RESULT"
"#,
    )
    .unwrap();
}

fn ledger(root: &Path) -> Vec<String> {
    std::fs::read_to_string(root.join("ledger"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn events(root: &Path) -> Vec<Value> {
    let output = keel()
        .current_dir(root)
        .args(["events", "--json"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn of_kind<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|event| event["kind"] == kind)
        .collect()
}

#[test]
fn bad_data_written_once_is_healed_upstream_and_the_run_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_pipeline(root, PIPELINE);
    write_tasks(root);
    std::fs::write(root.join("bad_once"), "").unwrap();
    let ran = keel().current_dir(root).args(["run"]).output().unwrap();
    assert_eq!(ran.status.code(), Some(0), "{ran:?}");
    assert_eq!(ledger(root), ["scrape", "predict", "scrape", "predict"]);

    let events = events(root);
    let heals = of_kind(&events, "heal_requested");
    assert_eq!(heals.len(), 1, "{events:#?}");
    assert_eq!(heals[0]["task"], "predictions");
    let detail: Value = serde_json::from_str(heals[0]["detail"].as_str().unwrap()).unwrap();
    assert_eq!(detail["heal"], serde_json::json!(["scrape_boxscores"]));
    assert_eq!(detail["used"], 1);
    assert_eq!(detail["budget"], 2);
    assert_eq!(of_kind(&events, "check_failed").len(), 1);
    assert!(of_kind(&events, "heal_exhausted").is_empty());

    // The daily report tells how it healed.
    let today = chrono::Utc::now().date_naive().to_string();
    let report = keel()
        .current_dir(root)
        .args(["report", "--json", "--date", &today])
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&report.stdout).unwrap();
    let healed = report["healed"].as_array().unwrap();
    assert_eq!(healed.len(), 1, "{report:#}");
    assert_eq!(healed[0]["task"], "predictions");
    assert_eq!(
        healed[0]["upstream"],
        serde_json::json!(["scrape_boxscores"])
    );
    assert!(
        healed[0]["describe"]
            .as_str()
            .unwrap()
            .ends_with(", scrape_boxscores run again upstream"),
        "{report:#}"
    );

    // Status shows the run succeeded, each task on its second attempt, none charged.
    let status = keel()
        .current_dir(root)
        .args(["status", "--json"])
        .output()
        .unwrap();
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    let run = &status["runs"][0];
    assert_eq!(run["state"], "succeeded", "{status:#}");
    for task in run["tasks"].as_array().unwrap() {
        assert_eq!(task["outcome"], "succeeded", "{task:#}");
        assert_eq!(task["attempts"], 2, "{task:#}");
    }
}

#[test]
fn a_permanently_bad_input_ends_after_the_budget_with_exactly_one_alert() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    write_pipeline(&root, PIPELINE);
    write_tasks(&root);
    std::fs::write(root.join("always_bad"), "").unwrap();
    let (_serve, _addr) =
        serve_on_free_port(&[&root.join("keel.toml")], &root.join("serve.log"), &[]);
    let queued = Command::new(keel_path())
        .args(["run", "--partition", "none", "--detach"])
        .arg(root.join("keel.toml"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(queued.status.code(), Some(0), "{queued:?}");
    let serve_log = || std::fs::read_to_string(root.join("serve.log")).unwrap_or_default();
    let alerts = || -> Vec<Value> {
        std::fs::read_to_string(root.join("alerts.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    };
    wait_for("the heal_exhausted alert", Duration::from_secs(60), || {
        !alerts().is_empty()
    });
    wait_for("the run to fail", Duration::from_secs(30), || {
        of_kind(&events(&root), "run_state")
            .iter()
            .any(|event| event["detail"].as_str().unwrap_or("").starts_with("failed"))
    });
    // Give any second alert the time to arrive: there must be none.
    std::thread::sleep(Duration::from_secs(2));
    let alerts = alerts();
    assert_eq!(alerts.len(), 1, "{alerts:#?}\n{}", serve_log());
    assert_eq!(alerts[0]["keel"]["kind"], "heal_exhausted");
    assert_eq!(alerts[0]["keel"]["subject"], "predictions");
    let text = alerts[0]["text"].as_str().unwrap();
    assert!(
        text.contains("predictions ended failed_check with its heal budget spent (2 of 2)"),
        "{text}"
    );
    // The budget of two heals, then the task's own attempt: three of each, no more.
    assert_eq!(
        ledger(&root),
        [
            "scrape", "predict", "scrape", "predict", "scrape", "predict"
        ]
    );
    let events = events(&root);
    assert_eq!(of_kind(&events, "heal_requested").len(), 2);
    assert_eq!(of_kind(&events, "heal_exhausted").len(), 1);
}
