//! The whole pipeline over a few dates, each level's tasks running at once on one warehouse
//! file; then every task again, which must leave every table's row count unchanged.

mod common;

use std::collections::BTreeMap;

use hoops::tasks::PIPELINE;

const DATES: [&str; 3] = ["2026-10-20", "2026-10-21", "2026-10-22"];

#[test]
fn rerunning_every_task_leaves_every_row_count_unchanged() {
    let env = common::Env::new("");
    let mut first_rows = BTreeMap::new();
    for date in DATES {
        for (task, outcome) in env.pipeline_ok(date) {
            let result = outcome.result.expect("every task writes KEEL_RESULT");
            assert!(result["rows"].is_u64(), "{task}: {result}");
            assert!(result.get("outcome").is_none(), "{task} {date}: {result}");
            first_rows.insert((task, date), result["rows"].clone());
        }
    }
    let counts = env.row_counts();
    let count = |table: &str| counts.iter().find(|(t, _)| t == table).unwrap().1;
    for table in [
        "raw_games",
        "raw_boxscores",
        "raw_props",
        "player_game_summary",
        "feature_store",
        "predictions",
        "grades",
    ] {
        assert!(count(table) > 0, "{table} is empty");
    }
    assert_eq!(count("partitions") as usize, PIPELINE.len() * DATES.len());
    let export = env.export_dir().join(format!("picks-{}.json", DATES[2]));
    let exported = std::fs::read(&export).expect("export wrote the picks file");

    for date in DATES {
        for (task, _) in PIPELINE {
            let again = env.task(task, date);
            assert_eq!(again.code, 0, "{task} {date}: {again:#?}");
            let rows = &again.result.as_ref().unwrap()["rows"];
            assert_eq!(
                rows,
                &first_rows[&(task.to_string(), date)],
                "{task} {date}"
            );
        }
    }
    assert_eq!(env.row_counts(), counts, "a rerun changed a row count");
    assert_eq!(
        std::fs::read(&export).unwrap(),
        exported,
        "a rerun changed the export"
    );

    // The export is what predictions made, best first.
    let doc: serde_json::Value = serde_json::from_slice(&exported).unwrap();
    let picks = doc["picks"].as_array().unwrap();
    assert!(!picks.is_empty());
    let confidences: Vec<f64> = picks
        .iter()
        .map(|p| p["confidence"].as_f64().unwrap())
        .collect();
    assert!(confidences.windows(2).all(|w| w[0] >= w[1]));
    for pick in picks {
        let c = pick["confidence"].as_f64().unwrap();
        assert!((0.5..1.0).contains(&c), "{pick}");
        assert!(["over", "under"].contains(&pick["pick"].as_str().unwrap()));
    }

    // Grading reports its metrics to Keel.
    let grading = env.task("grading", DATES[2]).result.unwrap();
    let metrics = &grading["metrics"];
    assert!(metrics["graded"].as_u64().unwrap() > 0, "{grading}");
    let accuracy = metrics["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&accuracy));
    assert!(metrics["mae"].as_f64().unwrap() > 0.0);
}

#[test]
fn self_test_passes() {
    let env = common::Env::new("");
    let outcome = env.run(&["self-test"]);
    assert_eq!(outcome.code, 0, "{outcome:#?}");
    assert!(
        outcome.stdout.contains("self-test: ok"),
        "{}",
        outcome.stdout
    );
}
