//! raw: the scraped JSON of one date into typed raw tables, replacing the date's partition in
//! one transaction so a rerun never duplicates a row.

use rusqlite::{Transaction, params};
use serde_json::Value;

use super::Ctx;
use crate::date::Date;
use crate::outcome::{Report, TaskError};
use crate::warehouse::{self, Table};

/// The scrape task's marker and JSON for `date`; not ready until the scrape has run.
fn scraped(
    conn: &rusqlite::Connection,
    scrape_task: &str,
    source: &str,
    date: Date,
) -> Result<(i64, Value), TaskError> {
    let marker = warehouse::require(conn, scrape_task, date)?;
    if marker.games == 0 {
        // A day without games keeps no JSON: there is nothing to load.
        return Ok((0, Value::Null));
    }
    let body: String = conn
        .query_row(
            "SELECT body FROM raw_json WHERE source = ?1 AND date = ?2",
            params![source, date.to_string()],
            |r| r.get(0),
        )
        .map_err(|e| match e {
            rusqlite::Error::QueryReturnedNoRows => {
                TaskError::NotReady(format!("no scraped {source} for {date} yet"))
            }
            e => e.into(),
        })?;
    let json: Value = serde_json::from_str(&body).map_err(|e| {
        TaskError::Permanent(format!(
            "the scraped {source} for {date} is not valid JSON: {e}"
        ))
    })?;
    Ok((marker.games, json))
}

fn list<'v>(v: &'v Value, field: &str) -> Result<&'v [Value], TaskError> {
    v[field]
        .as_array()
        .map(Vec::as_slice)
        .ok_or_else(|| TaskError::Permanent(format!("scraped JSON has no {field:?} list")))
}

fn text<'v>(v: &'v Value, field: &str) -> Result<&'v str, TaskError> {
    v[field]
        .as_str()
        .ok_or_else(|| TaskError::Permanent(format!("scraped record has no text {field:?}: {v}")))
}

fn int(v: &Value, field: &str) -> Result<i64, TaskError> {
    v[field].as_i64().ok_or_else(|| {
        TaskError::Permanent(format!("scraped record has no integer {field:?}: {v}"))
    })
}

fn num(v: &Value, field: &str) -> Result<f64, TaskError> {
    v[field]
        .as_f64()
        .ok_or_else(|| TaskError::Permanent(format!("scraped record has no number {field:?}: {v}")))
}

fn flag(v: &Value, field: &str) -> Result<bool, TaskError> {
    v[field].as_bool().ok_or_else(|| {
        TaskError::Permanent(format!("scraped record has no boolean {field:?}: {v}"))
    })
}

fn load(
    ctx: &Ctx,
    task: &str,
    scrape_task: &str,
    source: &str,
    date: Date,
    table: Table,
    insert: impl FnOnce(&Transaction<'_>, &Value) -> Result<u64, TaskError>,
) -> Result<Report, TaskError> {
    let mut conn = warehouse::open(&ctx.warehouse)?;
    let (games, json) = scraped(&conn, scrape_task, source, date)?;
    let name = table.name;
    let rows = warehouse::replace_partition(&mut conn, task, date, games, &[table], |tx| {
        insert(tx, &json)
    })?;
    if games == 0 {
        return Ok(Report::no_games(date));
    }
    Ok(Report::ok(rows, format!("{} into {name}", crate::rows(rows))).metric("games", games))
}

pub fn load_schedule(ctx: &Ctx, date: Date) -> Result<Report, TaskError> {
    let d = date.to_string();
    load(
        ctx,
        "load_schedule",
        "scrape_schedule",
        "scoreboard",
        date,
        Table::new("raw_games", "game_id"),
        |tx, json| {
            let mut stmt = tx.prepare(
                "INSERT INTO raw_games (date, game_id, home, away, tipoff, status, home_score,
                 away_score, overtime) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?;
            let mut rows = 0;
            for g in list(json, "games")? {
                rows += stmt.execute(params![
                    d,
                    text(g, "game_id")?,
                    text(g, "home")?,
                    text(g, "away")?,
                    text(g, "tipoff")?,
                    text(g, "status")?,
                    int(g, "home_score")?,
                    int(g, "away_score")?,
                    flag(g, "overtime")?,
                ])? as u64;
            }
            Ok(rows)
        },
    )
}

/// The scraped box scores of `date`, `{"games": [...]}`, and the day's games: from the whole-date
/// scrape, from the per-game one (`boxscores/GAME` rows), or both (a game scraped on its own
/// wins). With the per-game form, a game that was not scraped is missing from the list: the
/// task quorum in keel.toml decides whether that is enough.
fn scraped_boxscores(conn: &rusqlite::Connection, date: Date) -> Result<(i64, Value), TaskError> {
    let d = date.to_string();
    let mut games: Vec<Value> = Vec::new();
    let whole = warehouse::marker(conn, "scrape_boxscores", date)?;
    let mut day_games = None;
    if whole.is_some() {
        let (count, json) = scraped(conn, "scrape_boxscores", "boxscores", date)?;
        day_games = Some(count);
        if count > 0 {
            games.extend(list(&json, "games")?.iter().cloned());
        }
    }
    let mut stmt = conn.prepare(
        "SELECT source, body FROM raw_json WHERE date = ?1 AND source LIKE 'boxscores/%'
         ORDER BY source",
    )?;
    let per_game: Vec<(String, String)> = stmt
        .query_map(params![d], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (source, body) in per_game {
        let game: Value = serde_json::from_str(&body).map_err(|e| {
            TaskError::Permanent(format!(
                "the scraped {source} for {date} is not valid JSON: {e}"
            ))
        })?;
        let id = game["game_id"].clone();
        games.retain(|g| g["game_id"] != id);
        games.push(game);
    }
    let day_games = match day_games {
        Some(count) => count,
        None if games.is_empty() => {
            // Nothing scraped either way: on a day without games the scoreboard says so.
            let schedule = warehouse::require(conn, "scrape_schedule", date)?;
            if schedule.games > 0 {
                return Err(TaskError::NotReady(format!(
                    "no scraped boxscores for {date} yet"
                )));
            }
            0
        }
        None => warehouse::require(conn, "scrape_schedule", date)?.games,
    };
    games.sort_by(|a, b| a["game_id"].as_str().cmp(&b["game_id"].as_str()));
    Ok((day_games, serde_json::json!({ "games": games })))
}

pub fn load_boxscores(ctx: &Ctx, date: Date) -> Result<Report, TaskError> {
    let d = date.to_string();
    let mut conn = warehouse::open(&ctx.warehouse)?;
    let (games, json) = scraped_boxscores(&conn, date)?;
    let loaded_games = json["games"].as_array().map_or(0, Vec::len) as i64;
    let rows = warehouse::replace_partition(
        &mut conn,
        "load_boxscores",
        date,
        games,
        &[Table::new("raw_boxscores", "game_id, player_id")],
        |tx| insert_boxscores(tx, &d, &json),
    )?;
    if games == 0 {
        return Ok(Report::no_games(date));
    }
    let missing = (games - loaded_games).max(0);
    let message = if missing > 0 {
        format!(
            "{} into raw_boxscores; {missing} of {games} games not scraped",
            crate::rows(rows)
        )
    } else {
        format!("{} into raw_boxscores", crate::rows(rows))
    };
    Ok(Report::ok(rows, message)
        .metric("games", games)
        .metric("missing_games", missing))
}

fn insert_boxscores(tx: &Transaction<'_>, d: &str, json: &Value) -> Result<u64, TaskError> {
    let mut stmt = tx.prepare(
                "INSERT INTO raw_boxscores (date, game_id, player_id, name, team, opponent, home,
                 minutes, points, rebounds, assists, fgm, fga, tpm, tpa, ftm, fta)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
            )?;
    let mut rows = 0;
    for g in list(json, "games")? {
        let game_id = text(g, "game_id")?;
        for p in list(g, "players")? {
            rows += stmt.execute(params![
                d,
                game_id,
                text(p, "player_id")?,
                text(p, "name")?,
                text(p, "team")?,
                text(p, "opponent")?,
                flag(p, "home")?,
                int(p, "minutes")?,
                int(p, "points")?,
                int(p, "rebounds")?,
                int(p, "assists")?,
                int(p, "fgm")?,
                int(p, "fga")?,
                int(p, "tpm")?,
                int(p, "tpa")?,
                int(p, "ftm")?,
                int(p, "fta")?,
            ])? as u64;
        }
    }
    Ok(rows)
}

pub fn load_injuries(ctx: &Ctx, date: Date) -> Result<Report, TaskError> {
    let d = date.to_string();
    load(
        ctx,
        "load_injuries",
        "scrape_injuries",
        "injuries",
        date,
        Table::new("raw_injuries", "player_id"),
        |tx, json| {
            let mut stmt = tx.prepare(
                "INSERT INTO raw_injuries (date, player_id, name, team, status, injury)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            let mut rows = 0;
            for i in list(json, "injuries")? {
                rows += stmt.execute(params![
                    d,
                    text(i, "player_id")?,
                    text(i, "name")?,
                    text(i, "team")?,
                    text(i, "status")?,
                    text(i, "injury")?,
                ])? as u64;
            }
            Ok(rows)
        },
    )
}

pub fn load_props(ctx: &Ctx, date: Date) -> Result<Report, TaskError> {
    let d = date.to_string();
    load(
        ctx,
        "load_props",
        "scrape_props",
        "props",
        date,
        Table::new("raw_props", "player_id, market"),
        |tx, json| {
            let mut stmt = tx.prepare(
                "INSERT INTO raw_props (date, game_id, player_id, name, team, opponent, home,
                 market, line, over_price, under_price)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?;
            let mut rows = 0;
            for p in list(json, "props")? {
                rows += stmt.execute(params![
                    d,
                    text(p, "game_id")?,
                    text(p, "player_id")?,
                    text(p, "name")?,
                    text(p, "team")?,
                    text(p, "opponent")?,
                    flag(p, "home")?,
                    text(p, "market")?,
                    num(p, "line")?,
                    int(p, "over_price")?,
                    int(p, "under_price")?,
                ])? as u64;
            }
            Ok(rows)
        },
    )
}
