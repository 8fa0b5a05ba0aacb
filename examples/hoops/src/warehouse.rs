//! The SQLite warehouse every task reads and writes: one file, WAL mode and a busy timeout so
//! tasks running at once wait for each other instead of failing with "database is locked".
//!
//! Like the cloud warehouses the original pipeline used, the tables declare no unique keys:
//! every task replaces its partition (DELETE the date, INSERT, in one transaction) and then
//! checks its natural key for duplicates before committing, failing permanently if any.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};

use crate::date::Date;
use crate::outcome::TaskError;

/// How long a task waits for another task's write transaction before giving up.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = r#"
-- Bookkeeping: one row per (task, date) that finished, with the number of games it saw.
CREATE TABLE partitions (task TEXT NOT NULL, date TEXT NOT NULL, outcome TEXT NOT NULL,
    games INTEGER NOT NULL, rows INTEGER NOT NULL, message TEXT NOT NULL, finished_at INTEGER NOT NULL);
CREATE INDEX partitions_task_date ON partitions (task, date);

-- scrape
CREATE TABLE raw_json (source TEXT NOT NULL, date TEXT NOT NULL, body TEXT NOT NULL,
    fetched_at INTEGER NOT NULL);
CREATE INDEX raw_json_date ON raw_json (date, source);

-- raw
CREATE TABLE raw_games (date TEXT NOT NULL, game_id TEXT NOT NULL, home TEXT NOT NULL,
    away TEXT NOT NULL, tipoff TEXT, status TEXT, home_score INTEGER, away_score INTEGER,
    overtime INTEGER);
CREATE INDEX raw_games_date ON raw_games (date);
CREATE TABLE raw_boxscores (date TEXT NOT NULL, game_id TEXT NOT NULL, player_id TEXT NOT NULL,
    name TEXT, team TEXT NOT NULL, opponent TEXT NOT NULL, home INTEGER NOT NULL,
    minutes INTEGER NOT NULL, points INTEGER NOT NULL, rebounds INTEGER, assists INTEGER,
    fgm INTEGER, fga INTEGER, tpm INTEGER, tpa INTEGER, ftm INTEGER, fta INTEGER);
CREATE INDEX raw_boxscores_date ON raw_boxscores (date);
CREATE TABLE raw_injuries (date TEXT NOT NULL, player_id TEXT NOT NULL, name TEXT,
    team TEXT NOT NULL, status TEXT NOT NULL, injury TEXT);
CREATE INDEX raw_injuries_date ON raw_injuries (date);
CREATE TABLE raw_props (date TEXT NOT NULL, game_id TEXT NOT NULL, player_id TEXT NOT NULL,
    name TEXT, team TEXT NOT NULL, opponent TEXT NOT NULL, home INTEGER NOT NULL,
    market TEXT NOT NULL, line REAL NOT NULL, over_price INTEGER, under_price INTEGER);
CREATE INDEX raw_props_date ON raw_props (date);

-- analytics
CREATE TABLE team_offense (date TEXT NOT NULL, game_id TEXT NOT NULL, team TEXT NOT NULL,
    opponent TEXT NOT NULL, home INTEGER NOT NULL, points INTEGER NOT NULL, fgm INTEGER,
    fga INTEGER, fg_pct REAL, tpm INTEGER, ftm INTEGER, fta INTEGER, possessions REAL,
    off_rating REAL);
CREATE INDEX team_offense_date ON team_offense (date);
CREATE TABLE team_defense (date TEXT NOT NULL, game_id TEXT NOT NULL, team TEXT NOT NULL,
    opponent TEXT NOT NULL, points_allowed INTEGER NOT NULL, opp_fgm INTEGER, opp_fga INTEGER,
    opp_fg_pct REAL, opp_tpm INTEGER, def_rating REAL);
CREATE INDEX team_defense_date ON team_defense (date);
CREATE INDEX team_defense_team ON team_defense (team, date);
CREATE TABLE player_game_summary (date TEXT NOT NULL, game_id TEXT NOT NULL,
    player_id TEXT NOT NULL, name TEXT, team TEXT NOT NULL, opponent TEXT NOT NULL,
    home INTEGER NOT NULL, minutes INTEGER NOT NULL, points INTEGER NOT NULL, rebounds INTEGER,
    assists INTEGER, pts_per_min REAL, team_share REAL, prop_line REAL, went_over INTEGER);
CREATE INDEX player_game_summary_date ON player_game_summary (date);
CREATE INDEX player_game_summary_player ON player_game_summary (player_id, date);
CREATE TABLE upcoming_player_context (date TEXT NOT NULL, game_id TEXT NOT NULL,
    player_id TEXT NOT NULL, name TEXT, team TEXT NOT NULL, opponent TEXT NOT NULL,
    home INTEGER NOT NULL, line REAL, over_price INTEGER, under_price INTEGER,
    injury_status TEXT NOT NULL, injuries_known INTEGER NOT NULL);
CREATE INDEX upcoming_player_context_date ON upcoming_player_context (date);
CREATE TABLE upcoming_team_context (date TEXT NOT NULL, game_id TEXT NOT NULL,
    team TEXT NOT NULL, opponent TEXT NOT NULL, home INTEGER NOT NULL, tipoff TEXT,
    games_before INTEGER NOT NULL, last_game_date TEXT);
CREATE INDEX upcoming_team_context_date ON upcoming_team_context (date);

-- precompute
CREATE TABLE rolling_averages (date TEXT NOT NULL, player_id TEXT NOT NULL,
    games INTEGER NOT NULL, avg5 REAL, avg10 REAL, sd10 REAL, minutes10 REAL);
CREATE INDEX rolling_averages_date ON rolling_averages (date);
CREATE TABLE opponent_defense (date TEXT NOT NULL, team TEXT NOT NULL, opponent TEXT NOT NULL,
    opp_games INTEGER NOT NULL, opp_allowed10 REAL, league_allowed REAL, def_factor REAL NOT NULL);
CREATE INDEX opponent_defense_date ON opponent_defense (date);
CREATE TABLE rest_days (date TEXT NOT NULL, team TEXT NOT NULL, last_game_date TEXT,
    rest_days INTEGER, back_to_back INTEGER NOT NULL, games_last7 INTEGER NOT NULL);
CREATE INDEX rest_days_date ON rest_days (date);
CREATE TABLE player_form (date TEXT NOT NULL, player_id TEXT NOT NULL, team TEXT NOT NULL,
    games INTEGER NOT NULL, form REAL, trend TEXT NOT NULL, base_projection REAL);
CREATE INDEX player_form_date ON player_form (date);
CREATE TABLE feature_store (date TEXT NOT NULL, player_id TEXT NOT NULL, game_id TEXT NOT NULL,
    name TEXT, team TEXT NOT NULL, opponent TEXT NOT NULL, home INTEGER NOT NULL, line REAL,
    injury_status TEXT NOT NULL, games INTEGER NOT NULL, avg5 REAL, avg10 REAL, sd10 REAL,
    form REAL, base_projection REAL, def_factor REAL NOT NULL, rest_days INTEGER,
    back_to_back INTEGER NOT NULL);
CREATE INDEX feature_store_date ON feature_store (date);

-- predictions, export, grading
CREATE TABLE predictions (date TEXT NOT NULL, player_id TEXT NOT NULL, game_id TEXT NOT NULL,
    name TEXT, team TEXT NOT NULL, opponent TEXT NOT NULL, line REAL NOT NULL,
    projection REAL NOT NULL, edge REAL NOT NULL, pick TEXT NOT NULL, confidence REAL NOT NULL);
CREATE INDEX predictions_date ON predictions (date);
CREATE TABLE exports (date TEXT NOT NULL, path TEXT NOT NULL, picks INTEGER NOT NULL,
    bytes INTEGER NOT NULL);
CREATE TABLE grades (date TEXT NOT NULL, player_id TEXT NOT NULL, line REAL NOT NULL,
    projection REAL NOT NULL, pick TEXT NOT NULL, actual INTEGER NOT NULL,
    correct INTEGER NOT NULL, abs_error REAL NOT NULL);
CREATE INDEX grades_date ON grades (date);
CREATE TABLE grading_summary (date TEXT NOT NULL, graded INTEGER NOT NULL,
    correct INTEGER NOT NULL, accuracy REAL, mae REAL);
"#;

/// Opens (creating if needed) the warehouse and brings its schema up to date.
pub fn open(path: &Path) -> Result<Connection, TaskError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| {
            TaskError::Transient(format!("cannot create {}: {e}", parent.display()))
        })?;
    }
    let mut conn = Connection::open(path).map_err(|e| {
        TaskError::Transient(format!("cannot open warehouse {}: {e}", path.display()))
    })?;
    // The busy timeout first, so even switching to WAL waits for other writers.
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // Switching a new file to WAL while other tasks open it too can fail with SQLITE_BUSY
    // at once, without the busy handler (SQLite will not wait where waiting could deadlock).
    // Those first-run races are brief: try again for as long as the busy timeout.
    let give_up = std::time::Instant::now() + BUSY_TIMEOUT;
    let mode: String = loop {
        match conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0)) {
            Err(error)
                if error.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
                    && std::time::Instant::now() < give_up =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => break other?,
        }
    };
    if !mode.eq_ignore_ascii_case("wal") && !mode.eq_ignore_ascii_case("memory") {
        return Err(TaskError::Transient(format!(
            "warehouse {} refused WAL mode (journal_mode = {mode})",
            path.display()
        )));
    }
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    migrate(&mut conn)?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<(), TaskError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version == SCHEMA_VERSION {
        return Ok(());
    }
    if version > SCHEMA_VERSION {
        return Err(TaskError::Permanent(format!(
            "the warehouse has schema version {version}; this hoops knows only {SCHEMA_VERSION}"
        )));
    }
    // IMMEDIATE: concurrent first runs queue here instead of racing to create the tables.
    let give_up = std::time::Instant::now() + BUSY_TIMEOUT;
    let tx = loop {
        match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
            Err(error)
                if error.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
                    && std::time::Instant::now() < give_up =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => break other?,
        }
    };
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version < SCHEMA_VERSION {
        tx.execute_batch(SCHEMA)?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    }
    tx.commit()?;
    Ok(())
}

/// Every table of the warehouse, for tests and reports.
pub fn tables(conn: &Connection) -> Result<Vec<String>, TaskError> {
    let mut stmt =
        conn.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")?;
    let names = stmt
        .query_map([], |r| r.get(0))?
        .collect::<Result<Vec<String>, _>>()?;
    Ok(names)
}

pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A table a task owns for a date, with the natural key that must be unique per date.
#[derive(Debug, Clone)]
pub struct Table {
    pub name: &'static str,
    /// Comma-separated key columns.
    pub key: &'static str,
    /// Extra SQL narrowing the partition, e.g. `AND source = 'props'`.
    pub scope: String,
}

impl Table {
    pub fn new(name: &'static str, key: &'static str) -> Table {
        Table {
            name,
            key,
            scope: String::new(),
        }
    }
}

/// What a finished task left for its downstream tasks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    pub outcome: String,
    pub games: i64,
    pub rows: i64,
}

pub fn marker(conn: &Connection, task: &str, date: Date) -> Result<Option<Marker>, TaskError> {
    Ok(conn
        .query_row(
            "SELECT outcome, games, rows FROM partitions WHERE task = ?1 AND date = ?2
             ORDER BY finished_at DESC LIMIT 1",
            params![task, date.to_string()],
            |r| {
                Ok(Marker {
                    outcome: r.get(0)?,
                    games: r.get(1)?,
                    rows: r.get(2)?,
                })
            },
        )
        .optional()?)
}

/// The marker of an upstream task; not ready (exit 75) while it has not run for the date.
pub fn require(conn: &Connection, task: &str, date: Date) -> Result<Marker, TaskError> {
    marker(conn, task, date)?
        .ok_or_else(|| TaskError::NotReady(format!("{task} has not run for {date} yet")))
}

/// Replaces `task`'s partition of `tables` for `date` in one IMMEDIATE transaction: delete the
/// date, let `fill` insert, check every table's key for duplicates, record the marker, commit.
/// A duplicate rolls everything back and fails permanently.
pub fn replace_partition(
    conn: &mut Connection,
    task: &str,
    date: Date,
    games: i64,
    tables: &[Table],
    fill: impl FnOnce(&Transaction<'_>) -> Result<u64, TaskError>,
) -> Result<u64, TaskError> {
    let d = date.to_string();
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for t in tables {
        tx.execute(
            &format!("DELETE FROM {} WHERE date = ?1 {}", t.name, t.scope),
            params![d],
        )?;
    }
    let rows = if games > 0 { fill(&tx)? } else { 0 };
    for t in tables {
        check_duplicates(&tx, t, date)?;
    }
    let (outcome, message) = if games > 0 {
        ("succeeded", crate::rows(rows))
    } else {
        ("no_data", format!("no games on {date}"))
    };
    tx.execute(
        "DELETE FROM partitions WHERE task = ?1 AND date = ?2",
        params![task, d],
    )?;
    tx.execute(
        "INSERT INTO partitions (task, date, outcome, games, rows, message, finished_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![task, d, outcome, games, rows as i64, message, now_secs()],
    )?;
    check_duplicates(
        &tx,
        &Table {
            name: "partitions",
            key: "task",
            scope: format!("AND task = '{}'", task.replace('\'', "''")),
        },
        date,
    )?;
    tx.commit()?;
    Ok(rows)
}

/// `GROUP BY key HAVING COUNT(*) > 1` over one date: a permanent failure naming the keys.
pub fn check_duplicates(conn: &Connection, t: &Table, date: Date) -> Result<(), TaskError> {
    let key_count = t.key.split(',').count();
    let sql = format!(
        "SELECT {key}, COUNT(*) FROM {name} WHERE date = ?1 {scope} GROUP BY {key}
         HAVING COUNT(*) > 1 ORDER BY {key} LIMIT 3",
        key = t.key,
        name = t.name,
        scope = t.scope
    );
    let mut stmt = conn.prepare(&sql)?;
    let dups = stmt
        .query_map(params![date.to_string()], |r| {
            let mut parts = Vec::with_capacity(key_count);
            for i in 0..key_count {
                parts.push(match r.get::<_, SqlValue>(i)? {
                    SqlValue::Text(s) => s,
                    SqlValue::Integer(n) => n.to_string(),
                    SqlValue::Real(x) => x.to_string(),
                    SqlValue::Null => "NULL".into(),
                    SqlValue::Blob(_) => "<blob>".into(),
                });
            }
            Ok((parts.join(", "), r.get::<_, i64>(key_count)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    if dups.is_empty() {
        return Ok(());
    }
    let listed: Vec<String> = dups.iter().map(|(k, n)| format!("({k}) ×{n}")).collect();
    Err(TaskError::Permanent(format!(
        "duplicate rows in {} for {date} on ({}): {}; nothing was written",
        t.name,
        t.key,
        listed.join(", ")
    )))
}

#[cfg(test)]
mod tests {

    #[test]
    fn many_tasks_opening_a_new_warehouse_at_once_all_succeed() {
        // Regression: a first run's scrapes, opening the new warehouse together, failed with
        // "database is locked" from the switch to WAL mode (CI, examples/hoops/tests/pipeline.rs).
        for round in 0..10 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join(format!("warehouse-{round}.db"));
            let handles: Vec<_> = (0..12)
                .map(|_| {
                    let path = path.clone();
                    std::thread::spawn(move || open(&path).map(|_| ()))
                })
                .collect();
            for handle in handles {
                handle.join().unwrap().unwrap();
            }
        }
    }

    use super::*;

    fn temp_db() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let conn = open(&dir.path().join("w.db")).unwrap();
        (dir, conn)
    }

    #[test]
    fn opens_in_wal_mode_with_schema() {
        let (_dir, conn) = temp_db();
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        assert!(
            tables(&conn)
                .unwrap()
                .contains(&"feature_store".to_string())
        );
    }

    #[test]
    fn replacing_is_idempotent_and_duplicates_roll_back() {
        let (_dir, mut conn) = temp_db();
        let date: Date = "2026-11-03".parse().unwrap();
        let table = [Table::new("exports", "date")];
        for _ in 0..2 {
            replace_partition(&mut conn, "export", date, 1, &table, |tx| {
                tx.execute(
                    "INSERT INTO exports VALUES ('2026-11-03', 'a.json', 1, 10)",
                    [],
                )?;
                Ok(1)
            })
            .unwrap();
        }
        let count = |conn: &Connection| -> i64 {
            conn.query_row("SELECT COUNT(*) FROM exports", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(count(&conn), 1);
        let err = replace_partition(&mut conn, "export", date, 1, &table, |tx| {
            for _ in 0..2 {
                tx.execute(
                    "INSERT INTO exports VALUES ('2026-11-03', 'a.json', 1, 10)",
                    [],
                )?;
            }
            Ok(2)
        })
        .unwrap_err();
        assert_eq!(err.exit_code(), 65, "{err}");
        assert!(err.message().contains("duplicate rows in exports"), "{err}");
        assert_eq!(count(&conn), 1, "the failed write was rolled back");
        assert_eq!(marker(&conn, "export", date).unwrap().unwrap().rows, 1);
    }
}
