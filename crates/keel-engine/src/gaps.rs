//! Gap detection: which partitions the pipeline's schedule should have made by now, and which of
//! them are missing, failed or stale. `keel gaps` lists them; `keel serve` repairs them when
//! `backfill = { auto = true }` (see `Engine::serve`).
//!
//! Repairs are counted in the store as fires of the trigger `backfill:PARTITION#N`, the `N`th
//! repair of that partition, recorded in the same transaction as the run it starts (as a
//! schedule's fire is). A Keel killed at any instant therefore neither forgets a repair it made
//! nor makes one twice, and the tries a partition has had, and the repairs made today, are read
//! back from the store rather than kept in memory.

use std::collections::BTreeSet;

use keel_model::schedule::{Schedule, resolve_local};
use keel_model::{BackfillSpec, Millis, RunId, RunState, ScheduleSpec};
use keel_store::{Store, StoreResult};

const DAY: Millis = 86_400_000;

/// An unfinished run older than this is stale: it is not getting anywhere by itself.
pub const STALE_AFTER: Millis = DAY;

/// The most fires looked at to list the expected partitions (a 3-minute schedule over 30 days
/// fires 14,400 times).
const MAX_FIRES: usize = 2_000_000;

/// The fire trigger that records the `number`th repair of `partition`.
pub fn repair_trigger(partition: &str, number: u32) -> String {
    format!("backfill:{partition}#{number}")
}

/// Why a partition is a gap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GapKind {
    /// The schedule should have made it, and there is no run of it.
    Missing,
    /// Its latest run failed.
    Failed,
    /// Its latest run has been unfinished for longer than a day.
    Stale,
}

impl GapKind {
    pub fn as_str(self) -> &'static str {
        match self {
            GapKind::Missing => "missing",
            GapKind::Failed => "failed",
            GapKind::Stale => "stale",
        }
    }
}

/// One partition that should exist and is not complete.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Gap {
    pub partition: String,
    pub kind: GapKind,
    /// Its latest run, if it has one.
    pub run: Option<RunId>,
    /// What is wrong, for people: `no run`, `run 12 failed: …`, `run 12 unfinished for 30 h`.
    pub detail: String,
    /// The repair runs it has had so far.
    pub repairs: u32,
    /// Whether an automatic repair may still start a run for it: a missing or failed partition
    /// with tries left. A stale run is left to a person (it may be waiting on purpose).
    pub repairable: bool,
}

/// The partitions the schedule fired for in the last `lookback_days` up to `now` (and not before
/// `from`), oldest first.
pub fn expected_partitions(
    schedule: &Schedule,
    spec: &ScheduleSpec,
    backfill: &BackfillSpec,
    now: Millis,
) -> Vec<String> {
    let start = now - Millis::from(backfill.lookback_days) * DAY;
    let mut partitions = BTreeSet::new();
    for fire in schedule.fires_between(start, now, MAX_FIRES) {
        if let Some(date) = schedule.partition_of(fire, spec.partition_offset_days) {
            let date = date.to_string();
            if backfill.from.as_ref().is_none_or(|from| date >= *from) {
                partitions.insert(date);
            }
        }
    }
    partitions.into_iter().collect()
}

/// The gaps among `expected`, oldest first, judged at `now`.
pub async fn find_gaps<S: Store>(
    store: &S,
    pipeline: &str,
    expected: &[String],
    backfill: &BackfillSpec,
    now: Millis,
) -> StoreResult<Vec<Gap>> {
    let mut gaps = Vec::new();
    for partition in expected {
        let latest = store.latest_run(pipeline, partition).await?;
        let (kind, detail) = match &latest {
            None => (GapKind::Missing, "no run".to_string()),
            Some(run) if run.state == RunState::Failed => (
                GapKind::Failed,
                match &run.message {
                    Some(message) => format!("run {} failed: {message}", run.id),
                    None => format!("run {} failed", run.id),
                },
            ),
            Some(run) if !run.state.is_finished() && now - run.created_at > STALE_AFTER => (
                GapKind::Stale,
                format!(
                    "run {} {} for {} h",
                    run.id,
                    run.state,
                    (now - run.created_at) / 3_600_000
                ),
            ),
            Some(_) => continue,
        };
        let repairs = repairs_of(store, pipeline, partition, backfill.tries)
            .await?
            .len() as u32;
        gaps.push(Gap {
            partition: partition.clone(),
            kind,
            run: latest.map(|run| run.id),
            detail,
            repairs,
            repairable: kind != GapKind::Stale && repairs < backfill.tries,
        });
    }
    Ok(gaps)
}

/// When each repair of `partition` was made, first to last, at most `tries`.
async fn repairs_of<S: Store>(
    store: &S,
    pipeline: &str,
    partition: &str,
    tries: u32,
) -> StoreResult<Vec<Millis>> {
    let mut made = Vec::new();
    for number in 1..=tries {
        match store
            .last_fire(pipeline, &repair_trigger(partition, number))
            .await?
        {
            Some(at) => made.push(at),
            None => break,
        }
    }
    Ok(made)
}

/// How many repairs of the `expected` partitions were made since `since`.
pub async fn repairs_since<S: Store>(
    store: &S,
    pipeline: &str,
    expected: &[String],
    tries: u32,
    since: Millis,
) -> StoreResult<u32> {
    let mut count = 0;
    for partition in expected {
        count += repairs_of(store, pipeline, partition, tries)
            .await?
            .into_iter()
            .filter(|at| *at >= since)
            .count() as u32;
    }
    Ok(count)
}

/// The start of `now`'s local day in the schedule's time zone: the per-day repair budget's
/// window.
pub fn local_day_start(schedule: &Schedule, now: Millis) -> Millis {
    schedule
        .partition_of(now, 0)
        .and_then(|date| date.and_hms_opt(0, 0, 0))
        .and_then(|midnight| resolve_local(schedule.zone(), midnight))
        .unwrap_or(now - now.rem_euclid(DAY))
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_model::Catchup;

    fn utc(text: &str) -> Millis {
        chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M")
            .unwrap()
            .and_utc()
            .timestamp_millis()
    }

    fn spec(cron: &str, offset: i64) -> ScheduleSpec {
        ScheduleSpec {
            cron: cron.into(),
            partition_offset_days: offset,
            catchup: Catchup::Latest,
            backfill: None,
        }
    }

    #[test]
    fn the_expected_partitions_follow_the_schedule_its_offset_and_the_first_date() {
        // Weekdays at 06:00 New York time, for the day before.
        let spec = spec("0 6 * * mon-fri", -1);
        let schedule = Schedule::parse(&spec.cron, "America/New_York").unwrap();
        let backfill = BackfillSpec {
            lookback_days: 10,
            ..BackfillSpec::default()
        };
        // Thursday 2026-11-12 12:00 UTC (07:00 in New York): that morning's fire is in.
        let now = utc("2026-11-12 12:00");
        let expected = expected_partitions(&schedule, &spec, &backfill, now);
        assert_eq!(
            expected,
            [
                "2026-11-02",
                "2026-11-03",
                "2026-11-04",
                "2026-11-05",
                "2026-11-08",
                "2026-11-09",
                "2026-11-10",
                "2026-11-11"
            ]
        );
        // Before that morning's fire (05:00 in New York), the 11th is not expected yet.
        let early = expected_partitions(&schedule, &spec, &backfill, utc("2026-11-12 10:00"));
        assert_eq!(early.last().map(String::as_str), Some("2026-11-10"));
        // `from` is the pipeline's first date.
        let from = BackfillSpec {
            from: Some("2026-11-09".into()),
            ..backfill
        };
        assert_eq!(
            expected_partitions(&schedule, &spec, &from, now),
            ["2026-11-09", "2026-11-10", "2026-11-11"]
        );
    }

    #[test]
    fn a_schedule_firing_every_few_minutes_expects_each_date_once() {
        let spec = spec("*/3 * * * *", 0);
        let schedule = Schedule::parse(&spec.cron, "UTC").unwrap();
        let backfill = BackfillSpec {
            lookback_days: 3,
            ..BackfillSpec::default()
        };
        let expected = expected_partitions(&schedule, &spec, &backfill, utc("2026-11-12 00:10"));
        assert_eq!(
            expected,
            ["2026-11-09", "2026-11-10", "2026-11-11", "2026-11-12"]
        );
    }

    #[test]
    fn the_repair_budgets_day_starts_at_local_midnight_across_dst() {
        let schedule = Schedule::parse("0 6 * * *", "America/New_York").unwrap();
        // 2026-11-01 is the night the clocks fall back: midnight was still UTC-4.
        assert_eq!(
            local_day_start(&schedule, utc("2026-11-01 18:00")),
            utc("2026-11-01 04:00")
        );
        assert_eq!(
            local_day_start(&schedule, utc("2026-11-02 03:00")),
            utc("2026-11-01 04:00"),
            "22:00 in New York is still the 1st"
        );
        assert_eq!(
            local_day_start(&schedule, utc("2026-11-02 06:00")),
            utc("2026-11-02 05:00")
        );
    }
}
