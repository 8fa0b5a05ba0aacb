//! Checks, SLOs, the health score and the daily report, end to end with real runs: 28 dates
//! of a grading task whose accuracy collapses once (a `warn` check and an anomaly), a flaky
//! task that fails its first attempt every day and heals on its retry, and a load whose `block`
//! check on rows fails once, leaving its partition `failed` and its downstream task
//! `upstream_failed`. `keel status`, `keel slo`, `keel health` and `keel report` read that state.

use serde_json::Value;

use crate::support::{keel, write_pipeline};

const PIPELINE: &str = r#"[pipeline]
name = "graded"
timezone = "UTC"
partition = "date"

[slo.hands_off]
kind = "success"
objective = "99%"

[slo.quick]
kind = "latency"
max = "1h"
objective = "99%"

[slo.fresh]
kind = "freshness"
by = "10:00"
objective = "99%"

[phases.load]
[phases.grade]
after = ["load"]

[tasks.flaky]
phase = "load"
command = ["sh", "flaky.sh", "{date}"]
retries = { attempts = 3, initial = "10ms", max = "10ms" }

[tasks.loader]
phase = "load"
command = ["sh", "load.sh", "{date}"]
retries = { attempts = 1 }
checks = [{ rows = { min = 10 }, severity = "block" }]

[tasks.grading]
phase = "grade"
command = ["sh", "grade.sh", "{date}"]
checks = [{ metric = "accuracy", min = 0.30, severity = "warn" }]
"#;

const COLLAPSE: &str = "2026-02-26";
const SHORT: &str = "2026-02-14";

fn keel_json(root: &std::path::Path, args: &[&str]) -> Value {
    let output = keel().current_dir(root).args(args).output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{args:?}: {output:?}");
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("{args:?}: {error}: {output:?}"))
}

#[test]
fn checks_slos_score_and_report_over_real_runs() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_pipeline(root, PIPELINE);
    std::fs::write(
        root.join("flaky.sh"),
        "test -e flaky.$1 && exit 0; touch flaky.$1; exit 1\n",
    )
    .unwrap();
    std::fs::write(
        root.join("load.sh"),
        format!(
            "if [ \"$1\" = {SHORT} ]; then rows=5; else rows=48; fi\nprintf '{{\"rows\": %s}}' $rows > \"$KEEL_RESULT\"\n"
        ),
    )
    .unwrap();
    std::fs::write(
        root.join("grade.sh"),
        format!(
            "case $(( $(echo $1 | cut -c9-10 | sed 's/^0//') % 4 )) in 0) a=0.42;; 1) a=0.45;; 2) a=0.39;; *) a=0.47;; esac\nif [ \"$1\" = {COLLAPSE} ]; then a=0.1875; fi\nprintf '{{\"rows\": 48, \"metrics\": {{\"accuracy\": %s}}}}' $a > \"$KEEL_RESULT\"\n"
        ),
    )
    .unwrap();
    let ran = keel()
        .current_dir(root)
        .args(["run", "--from", "2026-02-01", "--to", "2026-02-28"])
        .output()
        .unwrap();
    assert_eq!(ran.status.code(), Some(1), "one partition fails: {ran:?}");

    // The failed check ends the load failed_check; the task after it never ran.
    let status = keel_json(root, &["status", "--json", "--partition", SHORT]);
    let tasks = status["runs"][0]["tasks"].as_array().unwrap();
    let outcome = |name: &str| {
        tasks.iter().find(|task| task["name"] == name).unwrap()["outcome"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(status["runs"][0]["state"], "failed");
    assert_eq!(outcome("loader"), "failed_check");
    assert_eq!(outcome("grading"), "upstream_failed");
    assert_eq!(outcome("flaky"), "succeeded");

    // keel status flags the collapse against the partitions it shows.
    let listed = keel_json(root, &["status", "--json", "--limit", "28"]);
    let anomalies = listed["anomalies"].as_array().expect("anomalies listed");
    assert!(
        anomalies
            .iter()
            .any(|anomaly| anomaly["partition"] == COLLAPSE
                && anomaly["task"] == "grading"
                && anomaly["metric"] == "accuracy"),
        "{anomalies:#?}"
    );

    let slo = keel_json(root, &["slo", "--json"]);
    let by_name = |name: &str| -> Value {
        slo["slos"]
            .as_array()
            .unwrap()
            .iter()
            .find(|each| each["name"] == name)
            .cloned()
            .unwrap()
    };
    let hands_off = by_name("hands_off");
    assert_eq!(hands_off["events"], 28);
    assert_eq!(hands_off["bad"], 1);
    assert_eq!(hands_off["bad_events"][0]["partition"], SHORT);
    // 1 bad of 28 at 99% overspends the 0.28 allowed.
    assert!(hands_off["remaining"].as_f64().unwrap() < 0.0);
    let quick = by_name("quick");
    assert_eq!(
        (quick["events"].clone(), quick["bad"].clone()),
        (28.into(), 1.into())
    );
    // February's deadlines fell long before the 30 days the budget counts (freshness is
    // judged on a manual clock in the unit tests).
    let fresh = by_name("fresh");
    assert_eq!(fresh["events"], 0, "{fresh:#}");

    let health = keel_json(root, &["health", "--json"]);
    let score = health["score"].as_f64().unwrap();
    assert!((0.0..=10.0).contains(&score), "{health:#}");
    let dimension = |name: &str| -> Value {
        health["dimensions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|each| each["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no dimension {name}: {health:#}"))
    };
    let success = dimension("success without a human");
    assert!((success["value"].as_f64().unwrap() - 27.0 / 28.0).abs() < 1e-9);
    assert_eq!(
        success["evidence"],
        "27 of 28 finished partitions succeeded without a human"
    );
    assert_eq!(dimension("freshness")["value"], Value::Null);
    assert!(
        dimension("recovery time")["evidence"]
            .as_str()
            .unwrap()
            .starts_with("28 healed failures"),
        "{health:#}"
    );
    // 27 graded and 28 loaded attempts were checked; one of each failed.
    assert_eq!(
        dimension("check results")["evidence"],
        "2 failed checks in 55 checked attempts"
    );
    assert!(dimension("anomalies")["value"].as_f64().unwrap() < 1.0);
    for each in health["dimensions"].as_array().unwrap() {
        assert!(each["weight"].as_f64().unwrap() > 0.0);
    }

    let today = chrono::Utc::now().date_naive().to_string();
    let report = keel_json(root, &["report", "--json", "--date", &today]);
    assert_eq!(report["date"], today);
    assert_eq!(report["runs"].as_array().unwrap().len(), 28);
    let healed = report["healed"].as_array().unwrap();
    assert_eq!(healed.len(), 28, "the flaky task healed on each date");
    assert_eq!(healed[0]["task"], "flaky");
    assert_eq!(healed[0]["failures"], serde_json::json!(["failed"]));
    let needs = report["needs_human"].as_array().unwrap();
    assert_eq!(needs.len(), 1, "{needs:#?}");
    assert_eq!(needs[0]["partition"], SHORT);
    assert_eq!(
        needs[0]["why"],
        format!("failed: loader failed_check; fix and `keel retry --partition {SHORT} loader`")
    );
    let checks = report["checks"].as_array().unwrap();
    assert_eq!(checks.len(), 2, "{checks:#?}");
    assert!(checks.iter().any(|check| check["partition"] == COLLAPSE
        && check["severity"] == "warn"
        && check["describe"] == "accuracy 0.1875 is below the minimum 0.3"));
    assert!(
        report["anomalies"]
            .as_array()
            .unwrap()
            .iter()
            .any(|anomaly| anomaly["partition"] == COLLAPSE)
    );
    assert_eq!(report["slos"].as_array().unwrap().len(), 3);
    assert_eq!(report["score"]["score"], health["score"]);

    // The text and HTML forms say the same.
    let text = keel()
        .current_dir(root)
        .args(["report", "--date", &today])
        .output()
        .unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(text.contains("needs a human (1):"), "{text}");
    assert!(
        text.contains("flaky healed after 1 retry (failed)"),
        "{text}"
    );
    let html = keel()
        .current_dir(root)
        .args(["report", "--html", "--date", &today])
        .output()
        .unwrap();
    let html = String::from_utf8(html.stdout).unwrap();
    assert!(html.starts_with("<!doctype html>") && html.contains("<h2>needs a human</h2>"));
}

#[test]
fn the_health_commands_answer_before_any_run() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_pipeline(root, PIPELINE);
    let health = keel_json(root, &["health", "--json"]);
    assert_eq!(health["score"], Value::Null);
    let slo = keel_json(root, &["slo", "--json"]);
    assert_eq!(slo["slos"][0]["events"], 0);
    assert_eq!(slo["slos"][0]["remaining"], 1.0);
    let report = keel_json(root, &["report", "--json", "--date", "2026-02-01"]);
    assert_eq!(report["runs"], serde_json::json!([]));
    let bad_date = keel()
        .current_dir(root)
        .args(["report", "--date", "yesterday-ish"])
        .output()
        .unwrap();
    assert_eq!(bad_date.status.code(), Some(2));
}
