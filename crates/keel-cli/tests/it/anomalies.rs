//! The accuracy collapse, end to end: a grading task reports its accuracy each day (between
//! 0.39 and 0.50), then 9 right of 48 (0.1875) on one date. `keel history` flags that date as
//! an anomaly with its baseline, in the table and in JSON; the usual days are not flagged, and
//! a `no_data` day stays out of the baseline.

use serde_json::Value;

use crate::support::{keel, write_pipeline};

const PIPELINE: &str = r#"[pipeline]
name = "graded"
timezone = "UTC"
partition = "date"

[phases.grade]
[tasks.grading]
phase = "grade"
command = ["sh", "grade.sh", "{date}"]
"#;

#[test]
fn a_collapsed_accuracy_is_flagged_with_its_baseline() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_pipeline(root, PIPELINE);
    std::fs::write(
        root.join("grade.sh"),
        r#"f=accuracy/$1
if [ ! -e "$f" ]; then echo '{"outcome": "no_data"}' > "$KEEL_RESULT"
else printf '{"rows": 48, "metrics": {"accuracy": %s}}' "$(cat "$f")" > "$KEEL_RESULT"; fi
"#,
    )
    .unwrap();
    std::fs::create_dir(root.join("accuracy")).unwrap();
    let usual = [
        0.42, 0.45, 0.39, 0.47, 0.50, 0.44, 0.41, 0.46, 0.43, 0.48, 0.40, 0.45,
    ];
    let start = chrono::NaiveDate::from_ymd_opt(2026, 2, 1).unwrap();
    let collapse = "2026-02-26";
    for offset in 0..28 {
        let date = (start + chrono::Duration::days(offset)).to_string();
        if date == "2026-02-10" {
            continue; // no games: no_data
        }
        let accuracy = if date == collapse {
            9.0 / 48.0
        } else {
            usual[offset as usize % usual.len()]
        };
        std::fs::write(root.join("accuracy").join(&date), accuracy.to_string()).unwrap();
    }
    let ran = keel()
        .current_dir(root)
        .args(["run", "--from", "2026-02-01", "--to", "2026-02-28"])
        .output()
        .unwrap();
    assert_eq!(ran.status.code(), Some(0), "{ran:?}");

    let history = keel()
        .current_dir(root)
        .args([
            "history",
            "grading",
            "--from",
            "2026-02-01",
            "--to",
            "2026-02-28",
            "--json",
        ])
        .output()
        .unwrap();
    assert_eq!(history.status.code(), Some(0));
    let document: Value = serde_json::from_slice(&history.stdout).unwrap();
    let anomalies = document["anomalies"].as_array().unwrap();
    let accuracy: Vec<&Value> = anomalies
        .iter()
        .filter(|anomaly| anomaly["metric"] == "accuracy")
        .collect();
    assert_eq!(accuracy.len(), 1, "{anomalies:#?}");
    assert_eq!(accuracy[0]["partition"], collapse);
    assert_eq!(accuracy[0]["value"], 0.1875);
    assert!(accuracy[0]["score"].as_f64().unwrap() < -5.0);
    let describe = accuracy[0]["describe"].as_str().unwrap();
    assert!(
        describe.starts_with("accuracy 0.19, usual 0.4"),
        "{describe}"
    );
    assert!(
        !anomalies.iter().any(|anomaly| anomaly["metric"] == "rows"),
        "rows were 48 every day: {anomalies:#?}"
    );

    let table = keel()
        .current_dir(root)
        .args([
            "history",
            "grading",
            "--from",
            "2026-02-01",
            "--to",
            "2026-02-28",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains(&format!("{collapse} run ")) && text.contains("accuracy 0.19, usual"),
        "{text}"
    );
}
