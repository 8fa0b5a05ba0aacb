//! scrape: fetch one source for one date from the feed and keep the JSON as it came, in
//! `raw_json`, replacing what an earlier run fetched.

use rusqlite::params;
use serde_json::{Value, json};

use super::Ctx;
use crate::date::Date;
use crate::outcome::{Report, TaskError};
use crate::season::Source;
use crate::warehouse::{self, Table};

pub fn scrape(ctx: &Ctx, source: Source, task: &str, date: Date) -> Result<Report, TaskError> {
    let mut feed = ctx.feed_client()?;
    // The scoreboard lists the day's games as items, for the tasks that run once per game.
    let mut items = None;
    let (body, games, records) = match source {
        Source::Scoreboard => {
            let v = feed.get_json(&format!("/scoreboard/{date}"))?;
            let listed = array(&v, "games")?;
            let n = listed.len();
            items = Some(
                listed
                    .iter()
                    .map(|g| {
                        json!({
                            "key": g["game_id"],
                            "home": g["home"],
                            "away": g["away"],
                        })
                    })
                    .collect::<Vec<_>>(),
            );
            (v, n, n)
        }
        Source::Boxscores => {
            // The scoreboard says which games to fetch; each box score is its own request on
            // the same keep-alive connection.
            let board = feed.get_json(&format!("/scoreboard/{date}"))?;
            let mut games = Vec::new();
            let mut players = 0;
            for g in array(&board, "games")? {
                let id = g["game_id"].as_str().ok_or_else(|| {
                    TaskError::Permanent("a scoreboard game has no game_id".into())
                })?;
                let box_score = feed.get_json(&format!("/boxscores/{date}/{id}"))?;
                players += array(&box_score, "players")?.len();
                games.push(box_score);
            }
            let n = games.len();
            (
                json!({"date": date.to_string(), "games": games}),
                n,
                players,
            )
        }
        Source::Injuries | Source::Props => {
            let v = feed.get_json(&format!("/{}/{date}", source.as_str()))?;
            let n = v["games"].as_u64().ok_or_else(|| {
                TaskError::Permanent(format!("{} for {date} has no games count", source.as_str()))
            })? as usize;
            let list = if source == Source::Injuries {
                "injuries"
            } else {
                "props"
            };
            let records = array(&v, list)?.len();
            (v, n, records)
        }
    };
    if body["date"].as_str() != Some(date.to_string().as_str()) {
        return Err(TaskError::Permanent(format!(
            "the feed answered for {:?} when asked for {date}",
            body["date"]
        )));
    }

    let mut conn = warehouse::open(&ctx.warehouse)?;
    let table = Table {
        name: "raw_json",
        key: "source",
        scope: format!("AND source = '{}'", source.as_str()),
    };
    let text = body.to_string();
    let bytes = text.len();
    warehouse::replace_partition(&mut conn, task, date, games as i64, &[table], |tx| {
        Ok(tx.execute(
            "INSERT INTO raw_json (source, date, body, fetched_at) VALUES (?1, ?2, ?3, ?4)",
            params![
                source.as_str(),
                date.to_string(),
                text,
                warehouse::now_secs()
            ],
        )? as u64)
    })?;
    if games == 0 {
        return Ok(Report::no_games(date));
    }
    let report = Report::ok(
        records as u64,
        format!("{records} {} records from {games} games", source.as_str()),
    );
    let report = match items {
        Some(items) => report.items(items),
        None => report,
    };
    Ok(report
        .metric("games", games)
        .metric("requests", feed.client.requests)
        .metric("connections", feed.client.connects)
        .metric("bytes", bytes)
        .metric("waited_s", feed.waited.as_secs_f64()))
}

fn array<'v>(v: &'v Value, field: &str) -> Result<&'v Vec<Value>, TaskError> {
    v[field]
        .as_array()
        .ok_or_else(|| TaskError::Permanent(format!("the feed's answer has no {field:?} list")))
}

/// One game's box score: `hoops scrape_boxscores DATE GAME`, the per-game form keel.toml runs
/// once per game the scoreboard lists. It keeps the JSON as `boxscores/GAME` in `raw_json` and
/// marks `scrape_boxscores[GAME]` done; `load_boxscores` takes every game scraped so.
pub fn scrape_boxscore_game(ctx: &Ctx, date: Date, game: &str) -> Result<Report, TaskError> {
    let valid = !game.is_empty()
        && game.len() <= 32
        && game
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid {
        return Err(TaskError::Permanent(format!("{game:?} is not a game id")));
    }
    let mut feed = ctx.feed_client()?;
    let box_score = feed.get_json(&format!("/boxscores/{date}/{game}"))?;
    if box_score["game_id"].as_str() != Some(game) {
        return Err(TaskError::Permanent(format!(
            "the feed answered for game {:?} when asked for {game}",
            box_score["game_id"]
        )));
    }
    let players = array(&box_score, "players")?.len();
    let source = format!("boxscores/{game}");
    let mut conn = warehouse::open(&ctx.warehouse)?;
    let table = Table {
        name: "raw_json",
        key: "source",
        scope: format!("AND source = '{source}'"),
    };
    let text = box_score.to_string();
    let bytes = text.len();
    let task = format!("scrape_boxscores[{game}]");
    warehouse::replace_partition(&mut conn, &task, date, 1, &[table], |tx| {
        Ok(tx.execute(
            "INSERT INTO raw_json (source, date, body, fetched_at) VALUES (?1, ?2, ?3, ?4)",
            params![source, date.to_string(), text, warehouse::now_secs()],
        )? as u64)
    })?;
    Ok(Report::ok(
        players as u64,
        format!("{players} player lines of game {game}"),
    )
    .metric("requests", feed.client.requests)
    .metric("bytes", bytes)
    .metric("waited_s", feed.waited.as_secs_f64()))
}

/// The live scoreboard of `date`: keel.toml runs it every 3 minutes while games are on
/// (`repeat`). Each poll keeps the latest answer as `live` in `raw_json`, replacing the last.
pub fn live_scores(ctx: &Ctx, date: Date) -> Result<Report, TaskError> {
    let mut feed = ctx.feed_client()?;
    let board = feed.get_json(&format!("/scoreboard/{date}"))?;
    let listed = array(&board, "games")?;
    let games = listed.len();
    let final_games = listed
        .iter()
        .filter(|g| g["status"].as_str() == Some("final"))
        .count();
    let mut conn = warehouse::open(&ctx.warehouse)?;
    let table = Table {
        name: "raw_json",
        key: "source",
        scope: "AND source = 'live'".to_string(),
    };
    let text = board.to_string();
    warehouse::replace_partition(
        &mut conn,
        "live_scores",
        date,
        games as i64,
        &[table],
        |tx| {
            Ok(tx.execute(
                "INSERT INTO raw_json (source, date, body, fetched_at) VALUES ('live', ?1, ?2, ?3)",
                params![date.to_string(), text, warehouse::now_secs()],
            )? as u64)
        },
    )?;
    if games == 0 {
        return Ok(Report::no_games(date));
    }
    Ok(Report::ok(
        games as u64,
        format!("{final_games} of {games} games final"),
    )
    .metric("games", games)
    .metric("final", final_games))
}
