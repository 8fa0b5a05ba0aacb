//! precompute: five tasks in three levels, ending in the feature store.
//!
//! | level | tasks | reads |
//! |---|---|---|
//! | 1 | `rolling_averages`, `opponent_defense`, `rest_days` | analytics of this date and earlier ones |
//! | 2 | `player_form` | rolling averages, rest days |
//! | 3 | `feature_store` | everything above, one row per player with a prop line |
//!
//! History means dates before the partition only, so a date's features never see its own
//! results.

use rusqlite::{Transaction, params};

use super::Ctx;
use super::analytics::SqlTask;
use crate::date::Date;
use crate::outcome::{Report, TaskError};
use crate::warehouse::{self, Table};

fn round(x: f64, places: i32) -> f64 {
    let k = 10f64.powi(places);
    (x * k).round() / k
}

fn mean(xs: &[f64]) -> Option<f64> {
    (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
}

/// Population standard deviation; needs two values.
fn sd(xs: &[f64]) -> Option<f64> {
    let m = mean(xs)?;
    (xs.len() >= 2)
        .then(|| (xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / xs.len() as f64).sqrt())
}

/// Shared shape of the Rust-computed tasks.
fn rust_task(
    ctx: &Ctx,
    task: &str,
    date: Date,
    games_from: &str,
    requires: &[&str],
    table: Table,
    fill: impl FnOnce(&Transaction<'_>, &str) -> Result<u64, TaskError>,
) -> Result<Report, TaskError> {
    let mut conn = warehouse::open(&ctx.warehouse)?;
    let games = warehouse::require(&conn, games_from, date)?.games;
    for upstream in requires {
        warehouse::require(&conn, upstream, date)?;
    }
    let name = table.name;
    let d = date.to_string();
    let rows =
        warehouse::replace_partition(&mut conn, task, date, games, &[table], |tx| fill(tx, &d))?;
    if games == 0 {
        return Ok(Report::no_games(date));
    }
    Ok(Report::ok(rows, format!("{} into {name}", crate::rows(rows))).metric("games", games))
}

pub fn rolling_averages(ctx: &Ctx, date: Date) -> Result<Report, TaskError> {
    rust_task(
        ctx,
        "rolling_averages",
        date,
        "upcoming_player_context",
        &["player_game_summary"],
        Table::new("rolling_averages", "player_id"),
        |tx, d| {
            let players: Vec<String> = tx
                .prepare(
                    "SELECT player_id FROM upcoming_player_context WHERE date = ?1
                     ORDER BY player_id",
                )?
                .query_map(params![d], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            let mut history = tx.prepare(
                "SELECT points, minutes FROM player_game_summary
                 WHERE player_id = ?1 AND date < ?2 ORDER BY date DESC LIMIT 10",
            )?;
            let mut insert = tx.prepare(
                "INSERT INTO rolling_averages (date, player_id, games, avg5, avg10, sd10, minutes10)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            let mut rows = 0;
            for player in players {
                let last: Vec<(f64, f64)> = history
                    .query_map(params![player, d], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<_, _>>()?;
                let points: Vec<f64> = last.iter().map(|(p, _)| *p).collect();
                let minutes: Vec<f64> = last.iter().map(|(_, m)| *m).collect();
                let five = &points[..points.len().min(5)];
                rows += insert.execute(params![
                    d,
                    player,
                    points.len() as i64,
                    mean(five).map(|x| round(x, 3)),
                    mean(&points).map(|x| round(x, 3)),
                    sd(&points).map(|x| round(x, 3)),
                    mean(&minutes).map(|x| round(x, 2)),
                ])? as u64;
            }
            Ok(rows)
        },
    )
}

pub fn opponent_defense(ctx: &Ctx, date: Date) -> Result<Report, TaskError> {
    let month_ago = date.add_days(-30).to_string();
    rust_task(
        ctx,
        "opponent_defense",
        date,
        "upcoming_team_context",
        &[],
        Table::new("opponent_defense", "team"),
        |tx, d| {
            let league: Option<f64> = tx.query_row(
                "SELECT AVG(points_allowed) FROM team_defense WHERE date < ?1 AND date >= ?2",
                params![d, month_ago],
                |r| r.get(0),
            )?;
            let matchups: Vec<(String, String)> = tx
                .prepare(
                    "SELECT team, opponent FROM upcoming_team_context WHERE date = ?1 ORDER BY team",
                )?
                .query_map(params![d], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            let mut allowed = tx.prepare(
                "SELECT points_allowed FROM team_defense WHERE team = ?1 AND date < ?2
                 ORDER BY date DESC LIMIT 10",
            )?;
            let mut insert = tx.prepare(
                "INSERT INTO opponent_defense (date, team, opponent, opp_games, opp_allowed10,
                 league_allowed, def_factor) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            let mut rows = 0;
            for (team, opponent) in matchups {
                let last: Vec<f64> = allowed
                    .query_map(params![opponent, d], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                let avg = mean(&last);
                let factor = match (avg, league) {
                    (Some(avg), Some(league)) if last.len() >= 3 && league > 0.0 => {
                        round((avg / league).clamp(0.85, 1.15), 4)
                    }
                    _ => 1.0,
                };
                rows += insert.execute(params![
                    d,
                    team,
                    opponent,
                    last.len() as i64,
                    avg.map(|x| round(x, 2)),
                    league.map(|x| round(x, 2)),
                    factor,
                ])? as u64;
            }
            Ok(rows)
        },
    )
}

pub fn rest_days(ctx: &Ctx, date: Date) -> Result<Report, TaskError> {
    let week_ago = date.add_days(-7).to_string();
    rust_task(
        ctx,
        "rest_days",
        date,
        "upcoming_team_context",
        &[],
        Table::new("rest_days", "team"),
        |tx, d| {
            let teams: Vec<(String, Option<String>)> = tx
                .prepare(
                    "SELECT team, last_game_date FROM upcoming_team_context WHERE date = ?1
                     ORDER BY team",
                )?
                .query_map(params![d], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            let mut recent = tx.prepare(
                "SELECT COUNT(*) FROM raw_games WHERE date >= ?1 AND date < ?2
                 AND (home = ?3 OR away = ?3)",
            )?;
            let mut insert = tx.prepare(
                "INSERT INTO rest_days (date, team, last_game_date, rest_days, back_to_back,
                 games_last7) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )?;
            let mut rows = 0;
            for (team, last) in teams {
                let rest = match &last {
                    Some(last) => Some(
                        date.days_since(last.parse::<Date>().map_err(|e| {
                            TaskError::Permanent(format!("upcoming_team_context: {e}"))
                        })?) - 1,
                    ),
                    None => None,
                };
                let games_last7: i64 =
                    recent.query_row(params![week_ago, d, team], |r| r.get(0))?;
                rows +=
                    insert.execute(params![d, team, last, rest, rest == Some(0), games_last7])?
                        as u64;
            }
            Ok(rows)
        },
    )
}

pub fn player_form(ctx: &Ctx, date: Date) -> Result<Report, TaskError> {
    rust_task(
        ctx,
        "player_form",
        date,
        "rolling_averages",
        &["rest_days"],
        Table::new("player_form", "player_id"),
        |tx, d| {
            type Row = (String, String, i64, Option<f64>, Option<f64>, Option<bool>);
            let players: Vec<Row> = tx
                .prepare(
                    "SELECT r.player_id, u.team, r.games, r.avg5, r.avg10, rd.back_to_back
                     FROM rolling_averages r
                     JOIN upcoming_player_context u ON u.date = r.date AND u.player_id = r.player_id
                     LEFT JOIN rest_days rd ON rd.date = r.date AND rd.team = u.team
                     WHERE r.date = ?1 ORDER BY r.player_id",
                )?
                .query_map(params![d], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                })?
                .collect::<Result<_, _>>()?;
            let mut insert = tx.prepare(
                "INSERT INTO player_form (date, player_id, team, games, form, trend, base_projection)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            let mut rows = 0;
            for (player, team, games, avg5, avg10, b2b) in players {
                let form = match (avg5, avg10) {
                    (Some(a5), Some(a10)) if games >= 3 => Some(round(a5 - a10, 3)),
                    _ => None,
                };
                let trend = match form {
                    None => "unknown",
                    Some(f) if f > 2.0 => "hot",
                    Some(f) if f < -2.0 => "cold",
                    Some(_) => "steady",
                };
                let tired = if b2b == Some(true) { 0.96 } else { 1.0 };
                let base = match (avg5, avg10) {
                    (Some(a5), Some(a10)) => Some(round((0.6 * a5 + 0.4 * a10) * tired, 3)),
                    _ => None,
                };
                rows += insert.execute(params![d, player, team, games, form, trend, base])? as u64;
            }
            Ok(rows)
        },
    )
}

/// The feature store of `date`, listing its players as items: the per-player `predictions`
/// of keel.toml (`expand = { from = "feature_store" }`) runs once for each.
pub fn feature_store(ctx: &Ctx, date: Date) -> Result<Report, TaskError> {
    let report = feature_store_table(ctx, date)?;
    if report.no_data {
        return Ok(report);
    }
    let conn = warehouse::open(&ctx.warehouse)?;
    let mut stmt =
        conn.prepare("SELECT player_id FROM feature_store WHERE date = ?1 ORDER BY player_id")?;
    let players: Vec<serde_json::Value> = stmt
        .query_map(params![date.to_string()], |r| r.get::<_, String>(0))?
        .map(|player| player.map(serde_json::Value::String))
        .collect::<Result<_, _>>()?;
    Ok(report.items(players))
}

fn feature_store_table(ctx: &Ctx, date: Date) -> Result<Report, TaskError> {
    SqlTask {
        task: "feature_store",
        games_from: "player_form",
        requires: &["opponent_defense", "rest_days", "rolling_averages"],
        table: Table::new("feature_store", "player_id"),
        sql:
            "INSERT INTO feature_store (date, player_id, game_id, name, team, opponent, home, line,
                  injury_status, games, avg5, avg10, sd10, form, base_projection, def_factor,
                  rest_days, back_to_back)
              SELECT u.date, u.player_id, u.game_id, u.name, u.team, u.opponent, u.home, u.line,
                  u.injury_status, COALESCE(r.games, 0), r.avg5, r.avg10, r.sd10, f.form,
                  f.base_projection, COALESCE(o.def_factor, 1.0), rd.rest_days,
                  COALESCE(rd.back_to_back, 0)
              FROM upcoming_player_context u
              LEFT JOIN rolling_averages r ON r.date = u.date AND r.player_id = u.player_id
              LEFT JOIN player_form f ON f.date = u.date AND f.player_id = u.player_id
              LEFT JOIN opponent_defense o ON o.date = u.date AND o.team = u.team
              LEFT JOIN rest_days rd ON rd.date = u.date AND rd.team = u.team
              WHERE u.date = ?1",
        extra: 0,
    }
    .run(ctx, date)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats() {
        assert_eq!(mean(&[]), None);
        assert_eq!(mean(&[2.0, 4.0]), Some(3.0));
        assert_eq!(sd(&[5.0]), None);
        assert_eq!(sd(&[2.0, 4.0]), Some(1.0));
        assert_eq!(round(1.23456, 2), 1.23);
    }
}
