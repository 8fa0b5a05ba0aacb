//! Repeating tasks: `repeat = { every = "3m", from = "19:00", until = "02:00" }` runs a task
//! again and again inside a window of the partition's date, in the pipeline's time zone
//! (docs/pipeline.md, "Repeating tasks"). The rules are pure: the window of a date and the
//! repetition due after an instant, on times the caller passes in.

use std::fmt;
use std::time::Duration;

use chrono::{NaiveDate, NaiveTime};
use chrono_tz::Tz;

use crate::Millis;
use crate::schedule::resolve_local;

/// A wall-clock time of day, to the minute, as written in `keel.toml` (`"19:00"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TimeOfDay {
    pub hour: u8,
    pub minute: u8,
}

impl TimeOfDay {
    /// Reads `"HH:MM"` (24-hour clock); `None` for anything else.
    pub fn parse(text: &str) -> Option<TimeOfDay> {
        let (hour, minute) = text.split_once(':')?;
        if hour.len() != 2 || minute.len() != 2 {
            return None;
        }
        let hour: u8 = hour.parse().ok()?;
        let minute: u8 = minute.parse().ok()?;
        (hour < 24 && minute < 60).then_some(TimeOfDay { hour, minute })
    }

    fn naive(self) -> NaiveTime {
        NaiveTime::from_hms_opt(u32::from(self.hour), u32::from(self.minute), 0)
            .expect("hour and minute checked when parsed")
    }

    /// When this time happens on `date` in `zone`, DST-correct: the first occurrence of a time
    /// the clocks pass twice, the end of the gap for a time they skip.
    pub fn on(self, date: NaiveDate, zone: Tz) -> Option<Millis> {
        resolve_local(zone, date.and_time(self.naive()))
    }

    /// When this time happens on the date of `partition` (`YYYY-MM-DD`) in the IANA zone
    /// `zone`; `None` for a partition that is not a date or an unknown zone.
    pub fn on_partition(self, partition: &str, zone: &str) -> Option<Millis> {
        let date = NaiveDate::parse_from_str(partition, "%Y-%m-%d").ok()?;
        self.on(date, zone.parse().ok()?)
    }
}

impl fmt::Display for TimeOfDay {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{:02}:{:02}", self.hour, self.minute)
    }
}

impl serde::Serialize for TimeOfDay {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// `freeze_after`: when a task stops being run again by Keel on its own (retries, late reruns).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(untagged)]
pub enum FreezeSpec {
    /// `freeze_after = "19:00"`: that local time on the partition's date.
    At(TimeOfDay),
    /// `freeze_after = { task = "grading", delay = "30m" }`: `delay` after another task of the
    /// same run ended complete (succeeded, no data or skipped).
    AfterTask { task: String, delay: Duration },
}

impl FreezeSpec {
    /// The local time of an `At` freeze.
    pub fn time(&self) -> Option<TimeOfDay> {
        match self {
            FreezeSpec::At(time) => Some(*time),
            FreezeSpec::AfterTask { .. } => None,
        }
    }
}

impl fmt::Display for FreezeSpec {
    /// How a note names the freeze: `19:00`, or `30m after "grading" ended`.
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FreezeSpec::At(time) => write!(formatter, "{time}"),
            FreezeSpec::AfterTask { task, delay } if delay.is_zero() => {
                write!(formatter, "the end of {task:?}")
            }
            FreezeSpec::AfterTask { task, delay } => write!(
                formatter,
                "{} after the end of {task:?}",
                crate::format_duration(*delay)
            ),
        }
    }
}

/// `repeat = { every, from, until }`: the task runs at `from` on the partition's date, then
/// every `every`, while that is before `until` (on the next day when `until` is not after
/// `from`: a window may cross midnight). Each repetition is one attempt; the task completes
/// when the window ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RepeatSpec {
    pub every: Duration,
    pub from: TimeOfDay,
    pub until: TimeOfDay,
}

/// The instants a repeat window of one partition opens and closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepeatWindow {
    pub opens: Millis,
    pub closes: Millis,
}

impl RepeatSpec {
    /// Whether the window ends on the day after the partition's date.
    pub fn crosses_midnight(&self) -> bool {
        self.until <= self.from
    }

    /// The window of the partition `partition` (`YYYY-MM-DD`) in the IANA time zone `zone`;
    /// `None` for a partition that is not a date or a zone that is unknown (both are refused
    /// when the pipeline is read; the task then runs once, like any task).
    pub fn window(&self, partition: &str, zone: &str) -> Option<RepeatWindow> {
        let zone: Tz = zone.parse().ok()?;
        let date = NaiveDate::parse_from_str(partition, "%Y-%m-%d").ok()?;
        let until_date = if self.crosses_midnight() {
            date.succ_opt()?
        } else {
            date
        };
        Some(RepeatWindow {
            opens: self.from.on(date, zone)?,
            closes: self.until.on(until_date, zone)?,
        })
    }

    /// The repetition due after one that ended at `now`: the first time `opens + k × every`
    /// strictly after `now`, so a repetition that ran long skips the times it overran instead
    /// of catching up in a burst. `None` once that is not before the window closes.
    pub fn next_due(&self, window: RepeatWindow, now: Millis) -> Option<Millis> {
        let every = (self.every.as_millis() as Millis).max(1);
        let next = if now < window.opens {
            window.opens
        } else {
            window.opens + ((now - window.opens) / every + 1) * every
        };
        (next < window.closes).then_some(next)
    }

    /// The number, from 1, of the repetition due at or last due before `at`.
    pub fn repetition_at(&self, window: RepeatWindow, at: Millis) -> u64 {
        let every = (self.every.as_millis() as Millis).max(1);
        ((at - window.opens).max(0) / every + 1) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Millis = 60_000;

    fn spec(every_minutes: u64, from: &str, until: &str) -> RepeatSpec {
        RepeatSpec {
            every: Duration::from_secs(every_minutes * 60),
            from: TimeOfDay::parse(from).unwrap(),
            until: TimeOfDay::parse(until).unwrap(),
        }
    }

    fn utc(text: &str) -> Millis {
        chrono::DateTime::parse_from_rfc3339(text)
            .unwrap()
            .timestamp_millis()
    }

    #[test]
    fn times_of_day_are_read_strictly() {
        assert_eq!(
            TimeOfDay::parse("19:05"),
            Some(TimeOfDay {
                hour: 19,
                minute: 5
            })
        );
        for bad in ["24:00", "7:00", "19:60", "19", "19:00:00", "ab:cd", ""] {
            assert_eq!(TimeOfDay::parse(bad), None, "{bad}");
        }
        assert_eq!(TimeOfDay::parse("00:00").unwrap().to_string(), "00:00");
    }

    #[test]
    fn a_window_crossing_midnight_ends_on_the_next_day() {
        let zone = "America/New_York";
        let window = spec(3, "19:00", "02:00")
            .window("2026-01-15", zone)
            .unwrap();
        assert_eq!(window.opens, utc("2026-01-16T00:00:00Z"));
        assert_eq!(window.closes, utc("2026-01-16T07:00:00Z"));
        let same_day = spec(3, "09:00", "17:00")
            .window("2026-01-15", zone)
            .unwrap();
        assert_eq!(same_day.closes - same_day.opens, 8 * 60 * MINUTE);
        assert_eq!(spec(3, "09:00", "17:00").window("none", zone), None);
    }

    #[test]
    fn windows_are_dst_correct() {
        let zone = "America/New_York";
        // 2026-03-08: the clocks spring forward at 02:00, so the night is an hour shorter and
        // 02:30 does not exist: the window closes at the end of the gap, 03:00 EDT.
        let spring = spec(3, "19:00", "02:30")
            .window("2026-03-07", zone)
            .unwrap();
        assert_eq!(spring.opens, utc("2026-03-08T00:00:00Z"));
        assert_eq!(spring.closes, utc("2026-03-08T07:00:00Z"));
        // 2026-11-01: the clocks fall back at 02:00, so 01:30 happens twice; the window closes
        // at the first, and the night is an hour longer than the wall clock says.
        let fall = spec(3, "19:00", "01:30")
            .window("2026-10-31", zone)
            .unwrap();
        assert_eq!(fall.opens, utc("2026-10-31T23:00:00Z"));
        assert_eq!(fall.closes, utc("2026-11-01T05:30:00Z"));
    }

    #[test]
    fn the_next_repetition_is_on_the_grid_and_inside_the_window() {
        let repeat = spec(3, "19:00", "20:00");
        let window = RepeatWindow {
            opens: 0,
            closes: 60 * MINUTE,
        };
        assert_eq!(repeat.next_due(window, -5 * MINUTE), Some(0));
        assert_eq!(repeat.next_due(window, 0), Some(3 * MINUTE));
        // A repetition that ended at 4m10s: the next is at 6m, on the grid.
        assert_eq!(
            repeat.next_due(window, 4 * MINUTE + 10_000),
            Some(6 * MINUTE)
        );
        // One that overran past 9m skips 9m rather than running twice at once.
        assert_eq!(repeat.next_due(window, 9 * MINUTE + 1), Some(12 * MINUTE));
        assert_eq!(repeat.next_due(window, 57 * MINUTE), None);
        assert_eq!(repeat.next_due(window, 90 * MINUTE), None);
        assert_eq!(repeat.repetition_at(window, 0), 1);
        assert_eq!(repeat.repetition_at(window, 7 * MINUTE), 3);
    }
}
