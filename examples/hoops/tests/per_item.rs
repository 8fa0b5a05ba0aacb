//! The per-item forms keel.toml fans out: one box score per game and one prediction per
//! player give the warehouse exactly what the whole-date tasks give, and the picks file is the
//! same byte for byte.

mod common;

use serde_json::Value;

/// The date compared; the two before it give the players a history to predict from.
const DATE: &str = "2026-10-22";
const BEFORE: [&str; 2] = ["2026-10-20", "2026-10-21"];

/// Runs the pipeline for `DATE` in pipeline order, the box scores and predictions per item when
/// `per_item`; returns the warehouse's raw box scores and predictions, and the picks file.
fn run(per_item: bool) -> (Vec<String>, Vec<String>, Vec<u8>) {
    let env = common::Env::new("");
    for date in BEFORE {
        env.pipeline_ok(date);
    }
    for level in common::LEVELS {
        for task in *level {
            match (*task, per_item) {
                ("scrape_boxscores", true) => {
                    let schedule = env.task("scrape_schedule", DATE);
                    let items = schedule.result.unwrap()["items"].clone();
                    let games = items.as_array().expect("the scoreboard lists its games");
                    assert!(!games.is_empty());
                    for game in games {
                        let key = game["key"].as_str().unwrap();
                        let outcome = env.run(&["scrape_boxscores", DATE, key]);
                        assert_eq!(outcome.code, 0, "{key}: {outcome:#?}");
                    }
                }
                ("predictions", true) => {
                    let store = env.task("feature_store", DATE);
                    let players = store.result.unwrap()["items"].clone();
                    let players = players.as_array().expect("the feature store lists players");
                    assert!(players.len() > 10, "{players:?}");
                    for player in players {
                        let player = player.as_str().unwrap();
                        let outcome = env.run(&["predictions", DATE, player]);
                        assert_eq!(outcome.code, 0, "{player}: {outcome:#?}");
                    }
                }
                (task, _) => {
                    let outcome = env.task(task, DATE);
                    assert_eq!(outcome.code, 0, "{task}: {outcome:#?}");
                }
            }
        }
    }
    let conn = rusqlite::Connection::open(env.warehouse()).unwrap();
    let rows = |sql: &str| -> Vec<String> {
        conn.prepare(sql)
            .unwrap()
            .query_map([], |r| r.get::<_, String>(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let boxscores =
        rows("SELECT game_id || ' ' || player_id || ' ' || points FROM raw_boxscores ORDER BY 1");
    let predictions = rows(
        "SELECT player_id || ' ' || pick || ' ' || projection || ' ' || confidence
         FROM predictions ORDER BY 1",
    );
    let picks = std::fs::read(env.export_dir().join(format!("picks-{DATE}.json"))).unwrap();
    (boxscores, predictions, picks)
}

#[test]
fn per_game_and_per_player_runs_give_what_the_whole_date_tasks_give() {
    let whole = run(false);
    let per_item = run(true);
    assert!(!whole.0.is_empty() && !whole.1.is_empty());
    assert_eq!(per_item.0, whole.0, "raw box scores");
    assert_eq!(per_item.1, whole.1, "predictions");
    assert_eq!(per_item.2, whole.2, "the picks file");
}

#[test]
fn a_bad_item_is_a_permanent_failure_naming_it() {
    let env = common::Env::new("");
    let bad_game = env.run(&["scrape_boxscores", DATE, "../etc"]);
    assert_eq!(bad_game.code, 65, "{bad_game:#?}");
    assert!(
        bad_game.stderr.contains("not a game id"),
        "{}",
        bad_game.stderr
    );
    let other = env.run(&["load_boxscores", DATE, "x"]);
    assert_eq!(
        other.code, 65,
        "a task without per-item form refuses an item"
    );
    let result: Option<Value> = bad_game.result;
    assert!(
        result.unwrap()["message"]
            .as_str()
            .unwrap()
            .contains("../etc")
    );
}
