//! Schedules: 5-field cron expressions read in a pipeline's time zone.
//!
//! A schedule names wall-clock minutes in the pipeline's zone, and fires once for each such
//! minute, across daylight-saving changes:
//! - a minute that occurs twice (the clocks fall back) fires once, at its first occurrence;
//! - a minute that does not exist (the clocks spring forward) fires once, at the first instant
//!   whose local time is past it, which is the end of the gap.
//!
//! So a daily schedule fires exactly once on every local day, whatever its time. The rules are
//! pure: [`Schedule::next_after`] takes an instant and returns the next one, and the caller owns
//! the clock.
//!
//! Fields are `minute hour day-of-month month day-of-week`, each `*`, a number, a range `a-b`,
//! a step `*/n` or `a-b/n`, or a comma-separated list of those. Months and weekdays also take
//! English names (`jan`, `mon`); a weekday of 7 is Sunday, like 0. As in every cron, when both
//! day-of-month and day-of-week are restricted, a day matching either one fires.

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

use crate::Millis;

/// The farthest ahead [`Schedule::next_after`] looks. Every valid expression fires within
/// 4 years (29 February); one that names only impossible days, such as `0 0 31 2 *`, never does.
const HORIZON_DAYS: i64 = 366 * 4 + 1;

/// A parsed schedule with its time zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    expression: String,
    zone: Tz,
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    /// Whether day-of-month and day-of-week were each given as `*`.
    any_day: bool,
    any_weekday: bool,
}

/// Why a schedule was refused; the message says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error(
        "schedule {expression:?} has {found} fields; a schedule has 5: minute hour day-of-month month day-of-week, such as \"0 6 * * *\""
    )]
    FieldCount { expression: String, found: usize },
    #[error("schedule {expression:?}: {field} {value:?} {reason}")]
    Field {
        expression: String,
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("unknown time zone {0:?}; use an IANA name such as \"America/New_York\"")]
    Zone(String),
}

struct FieldDef {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
}

const FIELDS: [FieldDef; 5] = [
    FieldDef {
        name: "minute",
        min: 0,
        max: 59,
        names: &[],
    },
    FieldDef {
        name: "hour",
        min: 0,
        max: 23,
        names: &[],
    },
    FieldDef {
        name: "day-of-month",
        min: 1,
        max: 31,
        names: &[],
    },
    FieldDef {
        name: "month",
        min: 1,
        max: 12,
        names: &[
            "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
        ],
    },
    FieldDef {
        name: "day-of-week",
        min: 0,
        max: 7,
        names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
    },
];

impl Schedule {
    /// Parses a 5-field cron expression for the IANA time zone `zone`.
    pub fn parse(expression: &str, zone: &str) -> Result<Schedule, ScheduleError> {
        let zone: Tz = zone
            .parse()
            .map_err(|_| ScheduleError::Zone(zone.to_string()))?;
        let parts: Vec<&str> = expression.split_whitespace().collect();
        if parts.len() != 5 {
            return Err(ScheduleError::FieldCount {
                expression: expression.to_string(),
                found: parts.len(),
            });
        }
        let mut sets = [0u64; 5];
        for (position, (part, def)) in parts.iter().zip(&FIELDS).enumerate() {
            sets[position] = parse_field(part, def).map_err(|reason| ScheduleError::Field {
                expression: expression.to_string(),
                field: def.name,
                value: part.to_string(),
                reason,
            })?;
        }
        // Sunday is 0 and 7.
        let weekdays = (sets[4] | (sets[4] >> 7)) & 0x7f;
        Ok(Schedule {
            expression: expression.to_string(),
            zone,
            minutes: sets[0],
            hours: sets[1] as u32,
            days: sets[2] as u32,
            months: sets[3] as u16,
            weekdays: weekdays as u8,
            any_day: parts[2] == "*",
            any_weekday: parts[4] == "*",
        })
    }

    pub fn expression(&self) -> &str {
        &self.expression
    }

    pub fn zone(&self) -> Tz {
        self.zone
    }

    /// The first instant strictly after `after` at which the schedule fires, in milliseconds
    /// since the Unix epoch; `None` if it never fires again.
    pub fn next_after(&self, after: Millis) -> Option<Millis> {
        let after_utc = DateTime::<Utc>::from_timestamp_millis(after)?;
        let local = after_utc.with_timezone(&self.zone).naive_local();
        // Whole minutes: the next candidate is the minute after the one `after` is in.
        let mut candidate = local.with_second(0)?.with_nanosecond(0)? + Duration::minutes(1);
        let limit = candidate + Duration::days(HORIZON_DAYS);
        while candidate < limit {
            let next = self.next_matching_minute(candidate, limit)?;
            let fires = self.instant_of(next)?;
            if fires > after {
                return Some(fires);
            }
            // The second pass of a repeated hour: this minute already fired the first time.
            candidate = next + Duration::minutes(1);
        }
        None
    }

    /// Every instant in `(after, until]` at which the schedule fires, oldest first, at most
    /// `cap` of them (the oldest ones).
    pub fn fires_between(&self, after: Millis, until: Millis, cap: usize) -> Vec<Millis> {
        let mut fires = Vec::new();
        let mut cursor = after;
        while fires.len() < cap {
            match self.next_after(cursor) {
                Some(next) if next <= until => {
                    fires.push(next);
                    cursor = next;
                }
                _ => break,
            }
        }
        fires
    }

    /// The local date of an instant in the schedule's zone, moved by `offset_days`: the
    /// partition a run fired at `instant` processes.
    pub fn partition_of(&self, instant: Millis, offset_days: i64) -> Option<NaiveDate> {
        let local = DateTime::<Utc>::from_timestamp_millis(instant)?.with_timezone(&self.zone);
        local
            .date_naive()
            .checked_add_signed(Duration::days(offset_days))
    }

    /// The first local minute at or after `from` (and before `limit`) that the fields match.
    fn next_matching_minute(
        &self,
        mut from: NaiveDateTime,
        limit: NaiveDateTime,
    ) -> Option<NaiveDateTime> {
        while from < limit {
            let date = from.date();
            if !self.matches_day(date) {
                from = date.succ_opt()?.and_hms_opt(0, 0, 0)?;
                continue;
            }
            if self.hours & (1 << from.hour()) == 0 {
                from = from.with_minute(0)? + Duration::hours(1);
                continue;
            }
            if self.minutes & (1 << from.minute()) == 0 {
                from += Duration::minutes(1);
                continue;
            }
            return Some(from);
        }
        None
    }

    fn matches_day(&self, date: NaiveDate) -> bool {
        if self.months & (1 << date.month()) == 0 {
            return false;
        }
        let by_day = self.days & (1 << date.day()) != 0;
        let by_weekday = self.weekdays & (1 << date.weekday().num_days_from_sunday()) != 0;
        match (self.any_day, self.any_weekday) {
            (true, true) => true,
            (false, true) => by_day,
            (true, false) => by_weekday,
            (false, false) => by_day || by_weekday,
        }
    }

    /// When the local minute `minute` happens: its first occurrence, or, if the clocks skip it,
    /// the first instant after the skip.
    fn instant_of(&self, minute: NaiveDateTime) -> Option<Millis> {
        resolve_local(self.zone, minute)
    }
}

/// When the local time `local` happens in `zone`: its first occurrence when the clocks fall
/// back, or, when they spring forward over it, the first instant after the gap (the local
/// minute after it that exists). `None` only for a date out of chrono's range.
pub fn resolve_local(zone: Tz, local: NaiveDateTime) -> Option<Millis> {
    let mut probe = local;
    // A gap is at most a few hours long; look a day ahead at most.
    for _ in 0..(24 * 60) {
        if let Some(resolved) = zone.from_local_datetime(&probe).earliest() {
            return Some(resolved.timestamp_millis());
        }
        probe += Duration::minutes(1);
    }
    None
}

/// Parses one field into a bit set of the values it names.
fn parse_field(text: &str, def: &FieldDef) -> Result<u64, String> {
    let mut set = 0u64;
    for item in text.split(',') {
        if item.is_empty() {
            return Err("has an empty item in its list".into());
        }
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => {
                let step: u32 =
                    step.parse().ok().filter(|step| *step > 0).ok_or_else(|| {
                        format!("has step {step:?}; a step is a whole number from 1")
                    })?;
                (range, step)
            }
            None => (item, 1),
        };
        let (low, high) = if range == "*" {
            (def.min, def.max)
        } else if let Some((low, high)) = range.split_once('-') {
            (value(low, def)?, value(high, def)?)
        } else {
            let single = value(range, def)?;
            // `5/15` means from 5 to the end, every 15.
            (single, if step > 1 { def.max } else { single })
        };
        if low > high {
            return Err(format!(
                "has the range {low}-{high}, which runs backwards; write the smaller value first"
            ));
        }
        let mut current = low;
        while current <= high {
            set |= 1 << current;
            current += step;
        }
    }
    Ok(set)
}

fn value(text: &str, def: &FieldDef) -> Result<u32, String> {
    let lower = text.to_ascii_lowercase();
    if let Some(position) = def.names.iter().position(|name| *name == lower) {
        // Names count from the field's first value: January is 1, Sunday is 0.
        return Ok(position as u32 + def.min);
    }
    let number: u32 = text.parse().map_err(|_| {
        let names = if def.names.is_empty() {
            String::new()
        } else {
            format!(" or a name such as {:?}", def.names[0])
        };
        format!(
            "is not a number; use {}-{}{names}, `*`, a range `a-b`, a step `*/n` or a list",
            def.min, def.max
        )
    })?;
    if number < def.min || number > def.max {
        return Err(format!("is out of range; use {} to {}", def.min, def.max));
    }
    Ok(number)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Milliseconds of a UTC time.
    fn utc(text: &str) -> Millis {
        NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M")
            .unwrap()
            .and_utc()
            .timestamp_millis()
    }

    fn local(schedule: &Schedule, instant: Millis) -> String {
        DateTime::<Utc>::from_timestamp_millis(instant)
            .unwrap()
            .with_timezone(&schedule.zone)
            .format("%Y-%m-%d %H:%M %Z")
            .to_string()
    }

    fn fires(schedule: &Schedule, from: &str, until: &str) -> Vec<String> {
        schedule
            .fires_between(utc(from), utc(until), 10_000)
            .into_iter()
            .map(|instant| local(schedule, instant))
            .collect()
    }

    #[test]
    fn a_daily_schedule_fires_once_on_each_local_day_across_spring_forward() {
        // New York skips 02:00-03:00 on 2026-03-08.
        let at_0230 = Schedule::parse("30 2 * * *", "America/New_York").unwrap();
        assert_eq!(
            fires(&at_0230, "2026-03-06 12:00", "2026-03-10 12:00"),
            [
                "2026-03-07 02:30 EST",
                "2026-03-08 03:00 EDT", // 02:30 does not exist: the end of the gap
                "2026-03-09 02:30 EDT",
                "2026-03-10 02:30 EDT",
            ]
        );
        let at_0600 = Schedule::parse("0 6 * * *", "America/New_York").unwrap();
        assert_eq!(
            fires(&at_0600, "2026-03-07 00:00", "2026-03-10 00:00"),
            [
                "2026-03-07 06:00 EST",
                "2026-03-08 06:00 EDT",
                "2026-03-09 06:00 EDT"
            ]
        );
    }

    #[test]
    fn a_daily_schedule_fires_once_on_each_local_day_across_fall_back() {
        // New York repeats 01:00-02:00 on 2026-11-01.
        let at_0130 = Schedule::parse("30 1 * * *", "America/New_York").unwrap();
        assert_eq!(
            fires(&at_0130, "2026-10-30 12:00", "2026-11-03 12:00"),
            [
                "2026-10-31 01:30 EDT",
                "2026-11-01 01:30 EDT", // the first occurrence only
                "2026-11-02 01:30 EST",
                "2026-11-03 01:30 EST",
            ]
        );
        // Asked during the repeated hour, after the first 01:30: tomorrow's, not a second one.
        let second_pass = utc("2026-11-01 06:10"); // 01:10 EST, the second 01:10
        assert_eq!(
            local(&at_0130, at_0130.next_after(second_pass).unwrap()),
            "2026-11-02 01:30 EST"
        );
    }

    #[test]
    fn every_local_day_of_a_year_gets_exactly_one_run() {
        for zone in ["America/New_York", "Europe/London", "Australia/Lord_Howe"] {
            for expression in ["30 2 * * *", "0 1 * * *", "59 23 * * *", "0 0 * * *"] {
                let schedule = Schedule::parse(expression, zone).unwrap();
                let runs =
                    schedule.fires_between(utc("2025-12-31 12:00"), utc("2027-01-01 12:00"), 1000);
                let mut days: Vec<NaiveDate> = runs
                    .iter()
                    .map(|run| schedule.partition_of(*run, 0).unwrap())
                    .filter(|day| day.year() == 2026)
                    .collect();
                let count = days.len();
                days.dedup();
                assert_eq!(days.len(), count, "{zone} {expression}: a day ran twice");
                assert_eq!(count, 365, "{zone} {expression}: a day was skipped");
            }
        }
    }

    #[test]
    fn fields_lists_ranges_steps_and_names() {
        let schedule = Schedule::parse("*/20 9-10 * * mon-fri", "UTC").unwrap();
        // 2026-12-04 is a Friday.
        assert_eq!(
            fires(&schedule, "2026-12-04 08:00", "2026-12-07 09:30"),
            [
                "2026-12-04 09:00 UTC",
                "2026-12-04 09:20 UTC",
                "2026-12-04 09:40 UTC",
                "2026-12-04 10:00 UTC",
                "2026-12-04 10:20 UTC",
                "2026-12-04 10:40 UTC",
                "2026-12-07 09:00 UTC",
                "2026-12-07 09:20 UTC",
            ]
        );
        let sundays = Schedule::parse("0 12 * * 7", "UTC").unwrap();
        assert_eq!(
            fires(&sundays, "2026-12-01 00:00", "2026-12-14 00:00"),
            ["2026-12-06 12:00 UTC", "2026-12-13 12:00 UTC"]
        );
        // Day-of-month or day-of-week: the 1st, and Mondays.
        let either = Schedule::parse("0 0 1 * mon", "UTC").unwrap();
        assert_eq!(
            fires(&either, "2026-11-29 00:00", "2026-12-08 00:00"),
            [
                "2026-11-30 00:00 UTC",
                "2026-12-01 00:00 UTC",
                "2026-12-07 00:00 UTC"
            ]
        );
        let leap = Schedule::parse("0 0 29 feb *", "UTC").unwrap();
        assert_eq!(
            fires(&leap, "2026-01-01 00:00", "2029-01-01 00:00"),
            ["2028-02-29 00:00 UTC"]
        );
        let never = Schedule::parse("0 0 31 2 *", "UTC").unwrap();
        assert_eq!(never.next_after(utc("2026-01-01 00:00")), None);
        let offset = Schedule::parse("5/20 * * * *", "UTC").unwrap();
        assert_eq!(
            fires(&offset, "2026-12-01 00:00", "2026-12-01 01:00"),
            [
                "2026-12-01 00:05 UTC",
                "2026-12-01 00:25 UTC",
                "2026-12-01 00:45 UTC"
            ]
        );
    }

    #[test]
    fn the_partition_is_the_local_date_moved_by_the_offset() {
        let schedule = Schedule::parse("0 17 * * *", "America/New_York").unwrap();
        let fired = schedule.next_after(utc("2026-12-01 12:00")).unwrap();
        assert_eq!(local(&schedule, fired), "2026-12-01 17:00 EST");
        // 22:00 UTC is still the 1st in New York.
        assert_eq!(
            schedule.partition_of(fired, 1).unwrap().to_string(),
            "2026-12-02"
        );
        assert_eq!(
            schedule.partition_of(fired, -1).unwrap().to_string(),
            "2026-11-30"
        );
    }

    #[test]
    fn bad_expressions_say_what_is_wrong() {
        let error = |text: &str| Schedule::parse(text, "UTC").unwrap_err().to_string();
        assert_eq!(
            error("0 6 * *"),
            "schedule \"0 6 * *\" has 4 fields; a schedule has 5: minute hour day-of-month month day-of-week, such as \"0 6 * * *\""
        );
        assert_eq!(
            error("60 6 * * *"),
            "schedule \"60 6 * * *\": minute \"60\" is out of range; use 0 to 59"
        );
        assert_eq!(
            error("0 6 * * funday"),
            "schedule \"0 6 * * funday\": day-of-week \"funday\" is not a number; use 0-7 or a name such as \"sun\", `*`, a range `a-b`, a step `*/n` or a list"
        );
        assert_eq!(
            error("0 10-2 * * *"),
            "schedule \"0 10-2 * * *\": hour \"10-2\" has the range 10-2, which runs backwards; write the smaller value first"
        );
        assert_eq!(
            error("*/0 * * * *"),
            "schedule \"*/0 * * * *\": minute \"*/0\" has step \"0\"; a step is a whole number from 1"
        );
        assert_eq!(
            Schedule::parse("0 6 * * *", "Mars/Base")
                .unwrap_err()
                .to_string(),
            "unknown time zone \"Mars/Base\"; use an IANA name such as \"America/New_York\""
        );
        assert!(Schedule::parse("0 6 * JAN,Dec *", "UTC").is_ok());
    }
}
