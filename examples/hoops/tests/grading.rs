//! Grading on a hand-built fixture: known predictions and known results give a known
//! accuracy and MAE, exactly.

mod common;

use hoops::tasks::{self, Ctx};
use hoops::warehouse;
use rusqlite::params;
use serde_json::json;

const DATE: &str = "2026-11-03";

/// Five predictions; four players played.
///
/// | player | line | projection | pick | actual | correct | |error| |
/// |---|---|---|---|---|---|---|
/// | A | 20.5 | 23.0 | over | 25 | yes | 2.0 |
/// | B | 15.5 | 14.0 | under | 18 | no | 4.0 |
/// | C | 10.5 | 12.5 | over | 11 | yes | 1.5 |
/// | D | 8.5 | 7.0 | under | 7 | yes | 0.0 |
/// | E | 30.5 | 28.0 | under | did not play | — | — |
///
/// Accuracy 3/4 = 0.75, MAE (2 + 4 + 1.5 + 0) / 4 = 1.875, 4 graded, 1 ungraded.
fn fixture(path: &std::path::Path) {
    let conn = warehouse::open(path).unwrap();
    for (task, games) in [("predictions", 2), ("load_boxscores", 2)] {
        conn.execute(
            "INSERT INTO partitions (task, date, outcome, games, rows, message, finished_at)
             VALUES (?1, ?2, 'succeeded', ?3, 0, '', 0)",
            params![task, DATE, games],
        )
        .unwrap();
    }
    let predictions = [
        ("A", 20.5, 23.0, "over", Some(25)),
        ("B", 15.5, 14.0, "under", Some(18)),
        ("C", 10.5, 12.5, "over", Some(11)),
        ("D", 8.5, 7.0, "under", Some(7)),
        ("E", 30.5, 28.0, "under", None),
    ];
    for (player, line, projection, pick, actual) in predictions {
        conn.execute(
            "INSERT INTO predictions (date, player_id, game_id, name, team, opponent, line,
             projection, edge, pick, confidence)
             VALUES (?1, ?2, 'G1', ?2, 'AAA', 'BBB', ?3, ?4, ?4 - ?3, ?5, 0.6)",
            params![DATE, player, line, projection, pick],
        )
        .unwrap();
        if let Some(points) = actual {
            conn.execute(
                "INSERT INTO raw_boxscores (date, game_id, player_id, name, team, opponent, home,
                 minutes, points) VALUES (?1, 'G1', ?2, ?2, 'AAA', 'BBB', 1, 30, ?3)",
                params![DATE, player, points],
            )
            .unwrap();
        }
    }
    // Another date's rows must not leak into this one.
    conn.execute(
        "INSERT INTO raw_boxscores (date, game_id, player_id, name, team, opponent, home,
         minutes, points) VALUES ('2026-11-02', 'G0', 'E', 'E', 'AAA', 'BBB', 1, 30, 40)",
        [],
    )
    .unwrap();
}

#[test]
fn grading_a_known_fixture_gives_known_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hoops.db");
    fixture(&path);
    let ctx = Ctx {
        warehouse: path.clone(),
        ..Ctx::default()
    };
    let report = tasks::run("grading", DATE, &ctx).unwrap();
    assert!(!report.no_data);
    assert_eq!(report.rows, 4);
    assert_eq!(
        serde_json::Value::Object(report.metrics.clone()),
        json!({"accuracy": 0.75, "mae": 1.875, "graded": 4, "correct": 3, "ungraded": 1})
    );

    let conn = warehouse::open(&path).unwrap();
    let grades: Vec<(String, i64, i64, f64)> = conn
        .prepare("SELECT player_id, actual, correct, abs_error FROM grades WHERE date = ?1 ORDER BY player_id")
        .unwrap()
        .query_map([DATE], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        grades,
        [
            ("A".to_string(), 25, 1, 2.0),
            ("B".to_string(), 18, 0, 4.0),
            ("C".to_string(), 11, 1, 1.5),
            ("D".to_string(), 7, 1, 0.0),
        ]
    );
    let summary: (i64, i64, f64, f64) = conn
        .query_row(
            "SELECT graded, correct, accuracy, mae FROM grading_summary WHERE date = ?1",
            [DATE],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert_eq!(summary, (4, 3, 0.75, 1.875));
}

#[test]
fn the_binary_writes_the_metrics_to_keel_result_and_reruns_change_nothing() {
    let env = common::Env::new("");
    fixture(&env.warehouse());
    let first = env.task("grading", DATE);
    assert_eq!(first.code, 0, "{first:#?}");
    let counts = env.row_counts();
    let second = env.task("grading", DATE);
    assert_eq!(second.code, 0, "{second:#?}");
    assert_eq!(env.row_counts(), counts);
    for outcome in [first, second] {
        let result = outcome.result.expect("a result file");
        assert_eq!(
            result["metrics"],
            json!({"accuracy": 0.75, "mae": 1.875, "graded": 4, "correct": 3, "ungraded": 1})
        );
        assert_eq!(result["rows"], 4);
        assert!(result.get("outcome").is_none(), "{result}");
    }
}

#[test]
fn grading_before_the_predictions_is_not_ready() {
    let env = common::Env::new("");
    let outcome = env.task("grading", DATE);
    assert_eq!(outcome.code, 75, "{outcome:#?}");
    assert!(
        outcome.stderr.contains("predictions has not run"),
        "{}",
        outcome.stderr
    );
}
