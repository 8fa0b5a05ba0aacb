//! `hoops self-test`: the smoke test Keel's preflight runs. It generates a season, checks its
//! invariants, serves it on a loopback port, runs every task over a few dates into a scratch
//! warehouse, and checks what came out.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::date::Date;
use crate::faults::Faults;
use crate::feed::Feed;
use crate::season::{self, Season};
use crate::tasks::{self, Ctx, PIPELINE};
use crate::warehouse;

const SEED: u64 = 7;

/// The self-test runs the season's first days, so that the last ones have history to predict
/// from, then Thanksgiving, which never has games.
const DAYS: i32 = 6;

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn check(ok: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if ok { Ok(()) } else { Err(what()) }
}

/// Returns a line per check on success, or the first failure.
pub fn run() -> Result<Vec<String>, String> {
    let mut log = Vec::new();

    let season = Season::generate(SEED);
    check(
        season.fingerprint() == Season::generate(SEED).fingerprint(),
        || "the season is not deterministic".into(),
    )?;
    check(season.teams.len() == 30, || "expected 30 teams".into())?;
    let off = season.days.iter().filter(|d| d.games.is_empty()).count();
    check(off > 0 && off < season.days.len() / 4, || {
        format!("{off} days without games is implausible")
    })?;
    let thanksgiving: Date = "2026-11-26".parse().expect("valid");
    check(season.games_on(thanksgiving) == 0, || {
        "Thanksgiving has games".into()
    })?;
    check(
        season.games_on(season::season_end().add_days(1)) == 0,
        || "a date outside the season has games".into(),
    )?;
    for day in &season.days {
        for prop in &day.props {
            check(prop.line.fract() == 0.5, || {
                format!("prop line {} is not x.5", prop.line)
            })?;
        }
    }
    log.push(format!(
        "season {SEED}: {} days, {off} without games, fingerprint {:016x}",
        season.days.len(),
        season.fingerprint()
    ));

    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("hoops-self-test-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let scratch = Scratch(dir);
    let feed = Feed::start("127.0.0.1:0", SEED, Faults::none(), false)
        .map_err(|e| format!("cannot start the feed on loopback: {e}"))?;
    let ctx = Ctx {
        warehouse: scratch.0.join("hoops.db"),
        feed: Some(feed.url()),
        export_dir: Some(scratch.0.join("exports")),
        retry_after_cap: Duration::ZERO,
        http_timeout: Duration::from_secs(5),
        heartbeat: None,
    };

    let mut dates: Vec<String> = (0..DAYS)
        .map(|i| season::season_start().add_days(i).to_string())
        .collect();
    dates.push(thanksgiving.to_string());
    let mut last_grading = None;
    for date in &dates {
        let date = date.as_str();
        let games = season.games_on(date.parse().expect("valid"));
        for (task, _) in PIPELINE {
            let report = tasks::run(task, date, &ctx).map_err(|e| format!("{task} {date}: {e}"))?;
            check(report.no_data == (games == 0), || {
                format!(
                    "{task} {date}: no_data = {} with {games} games",
                    report.no_data
                )
            })?;
            if *task == "grading" && report.metrics.get("graded").and_then(|v| v.as_i64()) > Some(0)
            {
                last_grading = Some(report);
            }
        }
        log.push(format!(
            "{date}: {} tasks ran, {games} games",
            PIPELINE.len()
        ));
    }

    let grading = last_grading.ok_or("no date graded any pick")?;
    let accuracy = grading
        .metrics
        .get("accuracy")
        .and_then(|v| v.as_f64())
        .unwrap_or(-1.0);
    check((0.0..=1.0).contains(&accuracy), || {
        format!("accuracy {accuracy} out of range")
    })?;
    log.push(format!("grading: {}", grading.message));

    // Rerunning a task leaves the warehouse as it was.
    let conn = warehouse::open(&ctx.warehouse).map_err(|e| e.to_string())?;
    let count = |conn: &rusqlite::Connection| -> Result<i64, String> {
        let mut total = 0;
        for table in warehouse::tables(conn).map_err(|e| e.to_string())? {
            total += conn
                .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| {
                    r.get::<_, i64>(0)
                })
                .map_err(|e| e.to_string())?;
        }
        Ok(total)
    };
    let before = count(&conn)?;
    let rerun = &dates[DAYS as usize - 1];
    for (task, _) in PIPELINE {
        tasks::run(task, rerun, &ctx).map_err(|e| format!("rerun {task}: {e}"))?;
    }
    let after = count(&conn)?;
    check(before == after, || {
        format!("a rerun changed the row count: {before} → {after}")
    })?;
    log.push(format!("rerun of {rerun}: {before} rows before and after"));
    drop(feed);
    Ok(log)
}
