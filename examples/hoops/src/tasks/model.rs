//! predictions, export and grading.
//!
//! The model is deliberately simple: a recent-form projection, adjusted for the opponent's
//! defence, home court and rest, shrunk toward the bookmaker's line when the player has little
//! history. The pick is the side of the line the projection falls on; the confidence grows
//! with the edge measured in the player's own standard deviations.

use std::io::Write;

use rusqlite::params;
use serde_json::json;

use super::Ctx;
use crate::date::Date;
use crate::outcome::{Report, TaskError};
use crate::warehouse::{self, Table};

/// Games of history at which the projection and the line weigh the same.
const SHRINK_GAMES: f64 = 3.0;

/// The features a prediction needs for one player.
#[derive(Debug, Clone, PartialEq)]
pub struct Features {
    pub line: f64,
    pub games: i64,
    pub base_projection: f64,
    pub sd10: Option<f64>,
    pub def_factor: f64,
    pub home: bool,
}

/// `(projection, pick, confidence)` for one player.
pub fn predict(f: &Features) -> (f64, &'static str, f64) {
    let raw = f.base_projection * f.def_factor * if f.home { 1.015 } else { 0.985 };
    let games = f.games.max(0) as f64;
    let weight = games / (games + SHRINK_GAMES);
    let projection = round(weight * raw + (1.0 - weight) * f.line, 2);
    let edge = projection - f.line;
    let pick = if edge >= 0.0 { "over" } else { "under" };
    let spread = f.sd10.unwrap_or(6.0).max(3.0);
    let confidence = (1.0 / (1.0 + (-1.6 * edge.abs() / spread).exp())).min(0.99);
    (projection, pick, round(confidence, 3))
}

fn round(x: f64, places: i32) -> f64 {
    let k = 10f64.powi(places);
    (x * k).round() / k
}

pub fn predictions(ctx: &Ctx, date: Date) -> Result<Report, TaskError> {
    predict_into(ctx, date, None)
}

/// One player's prediction: `hoops predictions DATE PLAYER`, the per-player form keel.toml runs
/// once per player the feature store lists. It replaces only that player's row, and marks
/// `predictions[PLAYER]` done; export and grading take either form.
pub fn predict_player(ctx: &Ctx, date: Date, player: &str) -> Result<Report, TaskError> {
    if player.is_empty() || player.len() > 64 {
        return Err(TaskError::Permanent(format!(
            "{player:?} is not a player id"
        )));
    }
    predict_into(ctx, date, Some(player))
}

/// The predictions of `date`: every player's, or only `player`'s.
fn predict_into(ctx: &Ctx, date: Date, player: Option<&str>) -> Result<Report, TaskError> {
    let mut conn = warehouse::open(&ctx.warehouse)?;
    let games = warehouse::require(&conn, "feature_store", date)?.games;
    let d = date.to_string();
    let mut skipped = 0u64;
    let (task, table) = match player {
        None => (
            "predictions".to_string(),
            Table::new("predictions", "player_id"),
        ),
        Some(player) => (
            format!("predictions[{player}]"),
            Table {
                name: "predictions",
                key: "player_id",
                scope: format!("AND player_id = '{}'", player.replace('\'', "''")),
            },
        ),
    };
    if player.is_some() && games > 0 {
        let known: i64 = conn.query_row(
            "SELECT COUNT(*) FROM feature_store WHERE date = ?1 AND player_id = ?2",
            params![d, player],
            |r| r.get(0),
        )?;
        if known == 0 {
            return Err(TaskError::Permanent(format!(
                "player {:?} is not in the feature store of {date}",
                player.unwrap_or_default()
            )));
        }
    }
    let rows = warehouse::replace_partition(&mut conn, &task, date, games, &[table], |tx| {
        type Row = (
            String,
            String,
            String,
            String,
            String,
            bool,
            Option<f64>,
            String,
        );
        type Num = (i64, Option<f64>, Option<f64>, f64);
        let mut stmt = tx.prepare(
            "SELECT player_id, game_id, name, team, opponent, home, line, injury_status,
                    games, base_projection, sd10, def_factor
             FROM feature_store WHERE date = ?1 AND (?2 IS NULL OR player_id = ?2)
             ORDER BY player_id",
        )?;
        let candidates: Vec<(Row, Num)> = stmt
            .query_map(params![d, player], |r| {
                Ok((
                    (
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                        r.get(7)?,
                    ),
                    (r.get(8)?, r.get(9)?, r.get(10)?, r.get(11)?),
                ))
            })?
            .collect::<Result<_, _>>()?;
        let mut insert = tx.prepare(
            "INSERT INTO predictions (date, player_id, game_id, name, team, opponent, line,
             projection, edge, pick, confidence)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )?;
        let mut rows = 0;
        for ((player, game, name, team, opponent, home, line, status), (g, base, sd10, def)) in
            candidates
        {
            let (Some(line), Some(base)) = (line, base) else {
                skipped += 1;
                continue;
            };
            if status == "out" || g < 1 {
                skipped += 1;
                continue;
            }
            let features = Features {
                line,
                games: g,
                base_projection: base,
                sd10,
                def_factor: def,
                home,
            };
            let (projection, pick, confidence) = predict(&features);
            rows += insert.execute(params![
                d,
                player,
                game,
                name,
                team,
                opponent,
                line,
                projection,
                round(projection - line, 2),
                pick,
                confidence
            ])? as u64;
        }
        Ok(rows)
    })?;
    if games == 0 {
        return Ok(Report::no_games(date));
    }
    if let Some(player) = player {
        let message = if rows == 0 {
            format!("no pick for {player}: not enough history, no line, or ruled out")
        } else {
            format!("pick for {player}")
        };
        return Ok(Report::ok(rows, message)
            .metric("picks", rows)
            .metric("skipped", skipped));
    }
    let (overs, mean_conf): (i64, Option<f64>) = conn.query_row(
        "SELECT COALESCE(SUM(pick = 'over'), 0), AVG(confidence) FROM predictions WHERE date = ?1",
        params![d],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok(Report::ok(
        rows,
        format!(
            "{rows} picks ({overs} over); {skipped} players without enough history or ruled out"
        ),
    )
    .metric("picks", rows)
    .metric("overs", overs)
    .metric("skipped", skipped)
    .metric("mean_confidence", mean_conf.map_or(0.0, |c| round(c, 4))))
}

/// The games of `date` once its predictions are made, by the whole-date task or per player:
/// not ready until one of them has run.
fn predicted_games(conn: &rusqlite::Connection, date: Date) -> Result<i64, TaskError> {
    if let Some(marker) = warehouse::marker(conn, "predictions", date)? {
        return Ok(marker.games);
    }
    let per_player: i64 = conn.query_row(
        "SELECT COUNT(*) FROM partitions WHERE date = ?1 AND task LIKE 'predictions[%'",
        params![date.to_string()],
        |r| r.get(0),
    )?;
    let features = warehouse::marker(conn, "feature_store", date)?;
    match features {
        // Per player: the feature store's players, each predicted on its own.
        Some(features) if per_player > 0 => return Ok(features.games),
        // A day without games lists no players: there is nothing to predict.
        Some(features) if features.games == 0 => return Ok(0),
        _ => {}
    }
    Err(TaskError::NotReady(format!(
        "predictions has not run for {date} yet"
    )))
}

pub fn export(ctx: &Ctx, date: Date) -> Result<Report, TaskError> {
    let mut conn = warehouse::open(&ctx.warehouse)?;
    let games = predicted_games(&conn, date)?;
    let d = date.to_string();
    let dir = ctx.export_dir();
    let path = dir.join(format!("picks-{d}.json"));
    let mut picks = 0u64;
    let rows = warehouse::replace_partition(
        &mut conn,
        "export",
        date,
        games,
        &[Table::new("exports", "date")],
        |tx| {
            let mut stmt = tx.prepare(
                "SELECT player_id, name, team, opponent, game_id, line, pick, projection,
                        confidence
                 FROM predictions WHERE date = ?1 ORDER BY confidence DESC, player_id",
            )?;
            let list: Vec<serde_json::Value> = stmt
                .query_map(params![d], |r| {
                    Ok(json!({
                        "player_id": r.get::<_, String>(0)?,
                        "name": r.get::<_, String>(1)?,
                        "team": r.get::<_, String>(2)?,
                        "opponent": r.get::<_, String>(3)?,
                        "game_id": r.get::<_, String>(4)?,
                        "line": r.get::<_, f64>(5)?,
                        "pick": r.get::<_, String>(6)?,
                        "projection": r.get::<_, f64>(7)?,
                        "confidence": r.get::<_, f64>(8)?,
                    }))
                })?
                .collect::<Result<_, _>>()?;
            picks = list.len() as u64;
            // No timestamps: a rerun writes the same bytes.
            let doc = json!({"date": d, "market": "points", "picks": list});
            let text = serde_json::to_string_pretty(&doc).expect("JSON serialises");
            write_atomically(&dir, &path, text.as_bytes())?;
            Ok(tx.execute(
                "INSERT INTO exports (date, path, picks, bytes) VALUES (?1, ?2, ?3, ?4)",
                params![
                    d,
                    path.display().to_string(),
                    picks as i64,
                    text.len() as i64
                ],
            )? as u64)
        },
    )?;
    if games == 0 {
        return Ok(Report::no_games(date));
    }
    Ok(
        Report::ok(rows, format!("{picks} picks written to {}", path.display()))
            .metric("picks", picks),
    )
}

fn write_atomically(
    dir: &std::path::Path,
    path: &std::path::Path,
    bytes: &[u8],
) -> Result<(), TaskError> {
    let fail =
        |e: std::io::Error| TaskError::Transient(format!("cannot write {}: {e}", path.display()));
    std::fs::create_dir_all(dir).map_err(fail)?;
    let tmp = path.with_extension(format!("json.tmp{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(fail)?;
    f.write_all(bytes).map_err(fail)?;
    f.write_all(b"\n").map_err(fail)?;
    f.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}

/// The grading of one date, as stored in `grading_summary` and reported as metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct Grade {
    pub graded: i64,
    pub correct: i64,
    pub accuracy: Option<f64>,
    pub mae: Option<f64>,
    /// Predictions whose player has no box score line (did not play).
    pub ungraded: i64,
}

/// The date `HOOPS_DEGRADE` names, if any: grading replays that date as if the model had gone
/// wrong (the 18.75% accuracy day), so that Keel's anomaly detection can be seen to flag it.
pub fn degraded_date() -> Result<Option<Date>, TaskError> {
    match std::env::var("HOOPS_DEGRADE") {
        Ok(text) if !text.is_empty() => text.parse().map(Some).map_err(|_| {
            TaskError::Permanent(format!(
                "HOOPS_DEGRADE is {text:?}, not a date; write YYYY-MM-DD, such as 2026-11-12, or unset it"
            ))
        }),
        _ => Ok(None),
    }
}

/// The share of right picks on a degraded date: 3 of 16, 18.75%.
const DEGRADED_RIGHT: (usize, usize) = (3, 16);

/// The degraded model of `HOOPS_DEGRADE`: of the date's graded picks, 3 in 16 (to the nearest
/// pick, spread evenly in player order) are on the right side of the line and the rest on the
/// wrong one.
fn degrade_grades(tx: &rusqlite::Transaction<'_>, date: &str) -> Result<(), TaskError> {
    let graded: Vec<(String, f64, i64)> = tx
        .prepare("SELECT player_id, line, actual FROM grades WHERE date = ?1 ORDER BY player_id")?
        .query_map(params![date], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let (right_of, out_of) = DEGRADED_RIGHT;
    let total = graded.len();
    let right_picks = (total * right_of + out_of / 2) / out_of;
    // Pick `position` is right when the count of right picks so far steps up there.
    let right_before = |position: usize| position * right_picks / total.max(1);
    for (position, (player, line, actual)) in graded.iter().enumerate() {
        let right = right_before(position + 1) > right_before(position);
        let over_is_right = (*actual as f64) > *line;
        let pick = if right == over_is_right {
            "over"
        } else {
            "under"
        };
        tx.execute(
            "UPDATE grades SET pick = ?3, correct = ?4 WHERE date = ?1 AND player_id = ?2",
            params![date, player, pick, i64::from(right)],
        )?;
    }
    Ok(())
}

pub fn grading(ctx: &Ctx, date: Date) -> Result<Report, TaskError> {
    let degraded = degraded_date()? == Some(date);
    let mut conn = warehouse::open(&ctx.warehouse)?;
    let predicted_games = predicted_games(&conn, date)?;
    // The actual results: the same date's box scores, which exist from the next day on.
    let results = warehouse::require(&conn, "load_boxscores", date)?;
    let games = if predicted_games == 0 {
        0
    } else {
        results.games
    };
    let d = date.to_string();
    let mut grade = None;
    warehouse::replace_partition(
        &mut conn,
        "grading",
        date,
        games,
        &[
            Table::new("grades", "player_id"),
            Table::new("grading_summary", "date"),
        ],
        |tx| {
            let rows = tx.execute(
                "INSERT INTO grades (date, player_id, line, projection, pick, actual, correct,
                 abs_error)
                 SELECT p.date, p.player_id, p.line, p.projection, p.pick, b.points,
                     CASE WHEN (b.points > p.line) = (p.pick = 'over') THEN 1 ELSE 0 END,
                     ABS(p.projection - b.points)
                 FROM predictions p
                 JOIN raw_boxscores b ON b.date = p.date AND b.player_id = p.player_id
                 WHERE p.date = ?1",
                params![d],
            )? as u64;
            if degraded {
                degrade_grades(tx, &d)?;
            }
            let (graded, correct, mae): (i64, i64, Option<f64>) = tx.query_row(
                "SELECT COUNT(*), COALESCE(SUM(correct), 0), AVG(abs_error) FROM grades
                 WHERE date = ?1",
                params![d],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            let predicted: i64 = tx.query_row(
                "SELECT COUNT(*) FROM predictions WHERE date = ?1",
                params![d],
                |r| r.get(0),
            )?;
            let accuracy = (graded > 0).then(|| round(correct as f64 / graded as f64, 4));
            let mae = mae.map(|m| round(m, 4));
            tx.execute(
                "INSERT INTO grading_summary (date, graded, correct, accuracy, mae)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![d, graded, correct, accuracy, mae],
            )?;
            grade = Some(Grade {
                graded,
                correct,
                accuracy,
                mae,
                ungraded: predicted - graded,
            });
            Ok(rows + 1)
        },
    )?;
    let Some(g) = grade else {
        return Ok(Report::no_games(date));
    };
    let message = match g.accuracy {
        Some(a) => format!(
            "graded {} picks: {} correct ({:.1}%), MAE {:.2} points",
            g.graded,
            g.correct,
            a * 100.0,
            g.mae.unwrap_or(0.0)
        ),
        None => "no picks to grade".to_string(),
    };
    let mut report = Report::ok(g.graded as u64, message)
        .metric("graded", g.graded)
        .metric("correct", g.correct)
        .metric("ungraded", g.ungraded);
    if let (Some(accuracy), Some(mae)) = (g.accuracy, g.mae) {
        report = report.metric("accuracy", accuracy).metric("mae", mae);
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn features(line: f64, base: f64, games: i64) -> Features {
        Features {
            line,
            games,
            base_projection: base,
            sd10: Some(5.0),
            def_factor: 1.0,
            home: true,
        }
    }

    #[test]
    fn picks_the_side_of_the_projection() {
        let (p, pick, c) = predict(&features(20.5, 26.0, 10));
        assert!(p > 20.5, "{p}");
        assert_eq!(pick, "over");
        assert!(c > 0.5 && c < 1.0, "{c}");
        let (_, pick, _) = predict(&features(20.5, 15.0, 10));
        assert_eq!(pick, "under");
    }

    #[test]
    fn little_history_shrinks_toward_the_line() {
        let (few, _, c_few) = predict(&features(20.5, 30.0, 1));
        let (many, _, c_many) = predict(&features(20.5, 30.0, 10));
        assert!(few < many);
        assert!(c_few < c_many);
    }
}
