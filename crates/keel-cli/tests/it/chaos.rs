//! `keel chaos` end to end: a short campaign over the hoops pipeline under a real `keel serve`,
//! with a `kill -9` of serve on one of its days, checked against the store, serve's logs and
//! the ledger every task appends to as it ends.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use crate::support::{keel, keel_path};

fn plan(seed: u64, days: u32) -> Value {
    let output = keel()
        .args(["chaos", "--plan-only", "--json", "--days"])
        .arg(days.to_string())
        .args(["--seed", &seed.to_string()])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).unwrap()
}

fn classes(plan: &Value) -> Vec<String> {
    plan["plan"]
        .as_array()
        .unwrap()
        .iter()
        .map(|day| day["class"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_same_seed_gives_the_same_plan() {
    assert_eq!(plan(4, 30), plan(4, 30));
    assert_ne!(classes(&plan(4, 30)), classes(&plan(5, 30)));
    // A shorter campaign is the start of a longer one with the same seed.
    assert_eq!(classes(&plan(4, 5))[..], classes(&plan(4, 30))[..5]);
}

#[test]
fn a_short_campaign_heals_a_kill_of_keel_and_its_report_agrees_with_the_store() {
    // The first seed whose three days hold a kill of Keel.
    let (seed, planned) = (1..100)
        .map(|seed| (seed, plan(seed, 3)))
        .find(|(_, plan)| classes(plan).iter().any(|class| class == "kill_keel"))
        .expect("a seed with a kill in three days");
    let dir = tempfile::tempdir().unwrap();
    let kept = dir.path().join("campaign");
    let output = keel()
        .args([
            "chaos",
            "--days",
            "3",
            "--json",
            "--seed",
            &seed.to_string(),
        ])
        .arg("--keep")
        .arg(&kept)
        .timeout(Duration::from_secs(300))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    // The plan it ran is the plan --plan-only printed, and it said so day by day.
    assert_eq!(report["plan"], planned["plan"]);
    for day in planned["plan"].as_array().unwrap() {
        assert!(
            stderr.contains(day["date"].as_str().unwrap()),
            "no progress line for {day}:\n{stderr}"
        );
    }
    assert!(
        stderr.contains("keel serve killed and restarted"),
        "{stderr}"
    );
    assert_eq!(report["targets_met"], true, "{report:#}");

    // The store: one run per planned date, each succeeded, no task left incomplete.
    let status = keel()
        .args(["status", "--all", "--json"])
        .arg(kept.join("keel.toml"))
        .output()
        .unwrap();
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    let runs = status["runs"].as_array().unwrap();
    let mut partitions: Vec<&str> = runs
        .iter()
        .map(|run| run["partition"].as_str().unwrap())
        .collect();
    partitions.sort();
    let dates: Vec<&str> = planned["plan"]
        .as_array()
        .unwrap()
        .iter()
        .map(|day| day["date"].as_str().unwrap())
        .collect();
    assert_eq!(partitions, dates, "one run per simulated day");
    for run in runs {
        assert_eq!(run["state"], "succeeded", "{run:#}");
        for task in run["tasks"].as_array().unwrap() {
            assert!(
                ["succeeded", "no_data"].contains(&task["outcome"].as_str().unwrap()),
                "{task}"
            );
        }
    }
    // The report's counts are the store's: every day green without a human.
    let healable = &report["healable"];
    let healable_days = planned["plan"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|day| !["clean", "metric_regression"].contains(&day["class"].as_str().unwrap()))
        .count();
    assert_eq!(healable["days"], healable_days);
    assert_eq!(healable["green_without_human"], healable_days);
    assert_eq!(healable["manual_interventions"], 0);
    let kill = report["classes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|row| row["class"] == "kill_keel")
        .unwrap();
    assert_eq!(
        (kill["days"].as_u64(), kill["green_without_human"].as_u64()),
        (Some(1), Some(1))
    );
    assert!(
        kill["recovery_p95_ms"].as_i64().unwrap() < 5 * 60_000,
        "{kill}"
    );

    // The killed Keel: a second serve took the killed day's run up and finished it.
    let killed_date = planned["plan"]
        .as_array()
        .unwrap()
        .iter()
        .find(|day| day["class"] == "kill_keel")
        .unwrap()["date"]
        .as_str()
        .unwrap()
        .to_string();
    let first = std::fs::read_to_string(kept.join("serve-1.log")).unwrap();
    let second = std::fs::read_to_string(kept.join("serve-2.log")).unwrap();
    let run_line = format!("hoops {killed_date}: run ");
    assert!(
        second
            .lines()
            .any(|line| line.contains(&run_line) && line.contains("taken up")),
        "the restarted serve took the killed day's run up:\n{second}"
    );
    assert!(
        !first
            .lines()
            .any(|line| line.contains(&run_line) && line.contains("finished")),
        "the kill came before the killed day's run finished:\n{first}"
    );

    // The ledger: every task of every day ran to a good end exactly once, through the kill
    // too (a task that ended while Keel was down was not run again); the other lines are the
    // planned crash (exit 1) and corrupt result.
    let ledger = std::fs::read_to_string(kept.join("ledger")).unwrap();
    let mut good: BTreeMap<(String, String), usize> = BTreeMap::new();
    for line in ledger.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words.len(), 3, "{line}");
        if words[2] == "0" {
            *good
                .entry((words[0].to_string(), words[1].to_string()))
                .or_default() += 1;
        }
    }
    for run in runs {
        let date = run["partition"].as_str().unwrap();
        for task in run["tasks"].as_array().unwrap() {
            let key = (date.to_string(), task["name"].as_str().unwrap().to_string());
            assert_eq!(good.get(&key), Some(&1), "{key:?} in:\n{ledger}");
        }
    }
    assert_eq!(good.len(), runs.len() * 22, "{ledger}");
    // Nothing of the campaign is left running: its serve is gone, the state lock is free.
    let holder = std::process::Command::new(keel_path())
        .args(["status", "--json"])
        .arg(kept.join("keel.toml"))
        .output()
        .unwrap();
    assert!(holder.status.success(), "{holder:?}");
}
