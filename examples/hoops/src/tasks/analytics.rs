//! analytics: five tables computed from the raw tables of one date.
//!
//! `team_offense` runs before `player_game_summary`, which needs each team's total points.
//! `upcoming_player_context` uses injuries when they were loaded, and says so when they were
//! not (a permanently missing injury report must not stop the pipeline).

use rusqlite::params;

use super::Ctx;
use crate::date::Date;
use crate::outcome::{Report, TaskError};
use crate::warehouse::{self, Table};

/// The common shape of a SQL task: check the upstream markers, replace the partition with
/// one `INSERT … SELECT` (the date bound as `?1`, `extra` as `?2`), report.
pub(super) struct SqlTask<'a> {
    pub task: &'a str,
    /// The upstream task whose marker says how many games the date has.
    pub games_from: &'a str,
    /// Other upstream tasks that must have run for the date.
    pub requires: &'a [&'a str],
    pub table: Table,
    pub sql: &'a str,
    pub extra: i64,
}

impl SqlTask<'_> {
    pub fn run(self, ctx: &Ctx, date: Date) -> Result<Report, TaskError> {
        let mut conn = warehouse::open(&ctx.warehouse)?;
        let games = warehouse::require(&conn, self.games_from, date)?.games;
        for upstream in self.requires {
            warehouse::require(&conn, upstream, date)?;
        }
        let d = date.to_string();
        let name = self.table.name;
        let rows =
            warehouse::replace_partition(&mut conn, self.task, date, games, &[self.table], |tx| {
                let mut stmt = tx.prepare(self.sql)?;
                let rows = if stmt.parameter_count() >= 2 {
                    stmt.execute(params![d, self.extra])?
                } else {
                    stmt.execute(params![d])?
                };
                Ok(rows as u64)
            })?;
        if games == 0 {
            return Ok(Report::no_games(date));
        }
        Ok(Report::ok(rows, format!("{} into {name}", crate::rows(rows))).metric("games", games))
    }
}

pub fn team_offense(ctx: &Ctx, date: Date) -> Result<Report, TaskError> {
    SqlTask {
        task: "team_offense",
        games_from: "load_boxscores",
        requires: &[],
        table: Table::new("team_offense", "game_id, team"),
        sql: "INSERT INTO team_offense (date, game_id, team, opponent, home, points, fgm, fga,
                  fg_pct, tpm, ftm, fta, possessions, off_rating)
              SELECT date, game_id, team, opponent, MAX(home), SUM(points), SUM(fgm), SUM(fga),
                  ROUND(1.0 * SUM(fgm) / MAX(SUM(fga), 1), 4), SUM(tpm), SUM(ftm), SUM(fta),
                  ROUND(SUM(fga) + 0.44 * SUM(fta), 1),
                  ROUND(100.0 * SUM(points) / MAX(SUM(fga) + 0.44 * SUM(fta), 1), 2)
              FROM raw_boxscores WHERE date = ?1
              GROUP BY date, game_id, team, opponent",
        extra: 0,
    }
    .run(ctx, date)
}

pub fn team_defense(ctx: &Ctx, date: Date) -> Result<Report, TaskError> {
    SqlTask {
        task: "team_defense",
        games_from: "load_boxscores",
        requires: &[],
        table: Table::new("team_defense", "game_id, team"),
        sql: "INSERT INTO team_defense (date, game_id, team, opponent, points_allowed, opp_fgm,
                  opp_fga, opp_fg_pct, opp_tpm, def_rating)
              SELECT date, game_id, opponent, team, SUM(points), SUM(fgm), SUM(fga),
                  ROUND(1.0 * SUM(fgm) / MAX(SUM(fga), 1), 4), SUM(tpm),
                  ROUND(100.0 * SUM(points) / MAX(SUM(fga) + 0.44 * SUM(fta), 1), 2)
              FROM raw_boxscores WHERE date = ?1
              GROUP BY date, game_id, opponent, team",
        extra: 0,
    }
    .run(ctx, date)
}

pub fn player_game_summary(ctx: &Ctx, date: Date) -> Result<Report, TaskError> {
    SqlTask {
        task: "player_game_summary",
        games_from: "load_boxscores",
        requires: &["team_offense"],
        table: Table::new("player_game_summary", "player_id"),
        sql: "INSERT INTO player_game_summary (date, game_id, player_id, name, team, opponent,
                  home, minutes, points, rebounds, assists, pts_per_min, team_share, prop_line,
                  went_over)
              SELECT b.date, b.game_id, b.player_id, b.name, b.team, b.opponent, b.home,
                  b.minutes, b.points, b.rebounds, b.assists,
                  ROUND(1.0 * b.points / MAX(b.minutes, 1), 4),
                  ROUND(1.0 * b.points / MAX(t.points, 1), 4),
                  p.line,
                  CASE WHEN p.line IS NULL THEN NULL WHEN b.points > p.line THEN 1 ELSE 0 END
              FROM raw_boxscores b
              JOIN team_offense t ON t.date = b.date AND t.game_id = b.game_id AND t.team = b.team
              LEFT JOIN raw_props p ON p.date = b.date AND p.player_id = b.player_id
                  AND p.market = 'points'
              WHERE b.date = ?1",
        extra: 0,
    }
    .run(ctx, date)
}

pub fn upcoming_player_context(ctx: &Ctx, date: Date) -> Result<Report, TaskError> {
    let injuries_known = {
        let conn = warehouse::open(&ctx.warehouse)?;
        warehouse::marker(&conn, "load_injuries", date)?.is_some()
    };
    let report = SqlTask {
        task: "upcoming_player_context",
        games_from: "load_props",
        requires: &[],
        table: Table::new("upcoming_player_context", "player_id"),
        sql: "INSERT INTO upcoming_player_context (date, game_id, player_id, name, team, opponent,
                  home, line, over_price, under_price, injury_status, injuries_known)
              SELECT p.date, p.game_id, p.player_id, p.name, p.team, p.opponent, p.home, p.line,
                  p.over_price, p.under_price, COALESCE(i.status, 'available'), ?2
              FROM raw_props p
              LEFT JOIN raw_injuries i ON i.date = p.date AND i.player_id = p.player_id
              WHERE p.date = ?1 AND p.market = 'points'",
        extra: i64::from(injuries_known),
    }
    .run(ctx, date)?;
    if injuries_known || report.no_data {
        Ok(report)
    } else {
        let message = format!(
            "{}; no injury report loaded for {date}, so every player counts as available",
            report.message
        );
        Ok(Report { message, ..report })
    }
}

pub fn upcoming_team_context(ctx: &Ctx, date: Date) -> Result<Report, TaskError> {
    SqlTask {
        task: "upcoming_team_context",
        games_from: "load_schedule",
        requires: &[],
        table: Table::new("upcoming_team_context", "team"),
        sql: "INSERT INTO upcoming_team_context (date, game_id, team, opponent, home, tipoff,
                  games_before, last_game_date)
              WITH sides AS (
                  SELECT date, game_id, tipoff, home AS team, away AS opponent, 1 AS home
                  FROM raw_games WHERE date = ?1
                  UNION ALL
                  SELECT date, game_id, tipoff, away, home, 0 FROM raw_games WHERE date = ?1
              )
              SELECT s.date, s.game_id, s.team, s.opponent, s.home, s.tipoff,
                  (SELECT COUNT(*) FROM raw_games h
                   WHERE h.date < s.date AND (h.home = s.team OR h.away = s.team)),
                  (SELECT MAX(h.date) FROM raw_games h
                   WHERE h.date < s.date AND (h.home = s.team OR h.away = s.team))
              FROM sides s",
        extra: 0,
    }
    .run(ctx, date)
}
