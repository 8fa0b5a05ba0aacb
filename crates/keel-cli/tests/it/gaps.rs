//! Gap detection with the real binary: `keel gaps` lists the partitions the schedule should have
//! made that are missing or failed, and `keel serve` with `backfill = { auto = true }` repairs
//! them when it starts, oldest first.

use std::time::Duration;

use serde_json::Value;

use crate::support::{Served, keel, keel_path, wait_for, write_pipeline};

/// A pipeline scheduled at midnight UTC for the day before, looking back five days; its one
/// task writes the partition to `ledger` and fails for the date in `bad` when that file exists.
fn pipeline(auto: bool) -> String {
    format!(
        r#"[pipeline]
name = "gapped"
timezone = "UTC"
partition = "date"
schedule = "0 0 * * *"
schedule_partition = "-1d"
catchup = "none"
backfill = {{ auto = {auto}, max_per_day = 10, lookback = "5d", tries = 1 }}

[phases.main]
[tasks.load]
phase = "main"
command = ["sh", "-c", "if [ -e bad ] && [ \"$(cat bad)\" = {{date}} ]; then echo no feed for {{date}} >&2; exit 65; fi; echo {{date}} >> ledger"]
"#
    )
}

fn days_ago(days: i64) -> String {
    (chrono::Utc::now().date_naive() - chrono::Duration::days(days)).to_string()
}

fn gaps_json(root: &std::path::Path) -> (Value, i32) {
    let output = keel()
        .current_dir(root)
        .args(["gaps", "--json"])
        .output()
        .unwrap();
    let code = output.status.code().unwrap();
    let document = serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "{error}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (document, code)
}

fn kinds(document: &Value) -> Vec<(String, String)> {
    document["gaps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|gap| {
            (
                gap["partition"].as_str().unwrap().to_string(),
                gap["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn keel_gaps_lists_missing_and_failed_partitions_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_pipeline(root, &pipeline(false));
    // Before anything ran, every expected partition is missing.
    let (document, code) = gaps_json(root);
    assert_eq!(code, 1);
    assert_eq!(document["expected"], 5);
    assert_eq!(document["gaps"].as_array().unwrap().len(), 5);

    std::fs::write(root.join("bad"), days_ago(2)).unwrap();
    for partition in [days_ago(1), days_ago(2)] {
        keel()
            .current_dir(root)
            .args(["run", "--partition", &partition])
            .assert()
            .code(if partition == days_ago(2) { 1 } else { 0 });
    }
    let (document, code) = gaps_json(root);
    assert_eq!(code, 1);
    assert_eq!(
        kinds(&document),
        [
            (days_ago(5), "missing".to_string()),
            (days_ago(4), "missing".to_string()),
            (days_ago(3), "missing".to_string()),
            (days_ago(2), "failed".to_string()),
        ]
    );
    let failed = &document["gaps"][3];
    assert!(
        failed["detail"].as_str().unwrap().contains("failed"),
        "{failed}"
    );
    assert_eq!(failed["repairable"], true);

    // The table says what to do while repairs are not automatic.
    let output = keel().current_dir(root).arg("gaps").output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("4 of 5 expected partitions"), "{text}");
    assert!(text.contains("backfill is not automatic"), "{text}");
}

#[test]
fn serve_repairs_the_gaps_at_start_and_the_one_it_cannot_is_left_for_a_person() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let path = write_pipeline(root, &pipeline(true));
    std::fs::write(root.join("bad"), days_ago(3)).unwrap();
    let log = root.join("serve.log");
    // Keel's clock from 00:30 today, an hour every 3 s: gaps are looked for at start and then
    // hourly, so the repair's failure is judged 3 s later.
    let start = format!("{}T00:30:00Z", days_ago(0));
    let served = Served(
        std::process::Command::new(keel_path())
            .arg("serve")
            .arg(&path)
            .args(["--addr", "127.0.0.1:0", "--grace", "1s"])
            .args(["--clock-speed", "1200", "--clock-start", &start])
            .current_dir(root)
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(root.join("serve.err")).unwrap())
            .spawn()
            .unwrap(),
    );
    // Four partitions repaired once each; the 3rd fails again and, with its one try spent, is
    // told once in the log (the alert path) and left.
    wait_for("the repairs to run", Duration::from_secs(60), || {
        let ledger = std::fs::read_to_string(root.join("ledger")).unwrap_or_default();
        ledger.lines().count() == 4
    });
    // Each partition ran once; they run side by side, so the ledger's order is any.
    let ledger = std::fs::read_to_string(root.join("ledger")).unwrap();
    let mut dates: Vec<&str> = ledger.lines().collect();
    dates.sort();
    assert_eq!(dates, [days_ago(5), days_ago(4), days_ago(2), days_ago(1)]);
    // The repairs were started oldest first: run ids rise with the partition.
    let output = keel()
        .current_dir(root)
        .args(["status", "--json", "--limit", "10"])
        .output()
        .unwrap();
    let status: Value = serde_json::from_slice(&output.stdout).unwrap();
    let mut runs: Vec<(i64, String)> = status["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|run| {
            (
                run["id"].as_i64().unwrap(),
                run["partition"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    runs.sort();
    let partitions: Vec<&str> = runs
        .iter()
        .map(|(_, partition)| partition.as_str())
        .collect();
    assert_eq!(
        partitions,
        [
            days_ago(5),
            days_ago(4),
            days_ago(3),
            days_ago(2),
            days_ago(1)
        ],
        "oldest first: {status}"
    );
    wait_for("the gap to be reported", Duration::from_secs(60), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default()
            + &std::fs::read_to_string(root.join("serve.err")).unwrap_or_default();
        text.contains("backfill: partition")
            && text.contains(&format!("partition {} is still failed", days_ago(3)))
    });
    drop(served);
    let (document, code) = gaps_json(root);
    assert_eq!(code, 1);
    assert_eq!(kinds(&document), [(days_ago(3), "failed".to_string())]);
    assert_eq!(document["gaps"][0]["repairs"], 1);
    assert_eq!(document["gaps"][0]["repairable"], false);
}
