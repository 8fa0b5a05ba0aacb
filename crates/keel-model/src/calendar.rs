//! A task's calendar (`when`, docs/pipeline.md): the weekdays of the partition's date it runs
//! on, and a command that decides before its first attempt. On any other weekday a run settles
//! the task `skipped` when it is created.

use chrono::{Datelike, NaiveDate, Weekday};

/// The weekday names `when.weekdays` takes, Monday first, as [`Weekday`] counts them.
pub const WEEKDAY_NAMES: &[&str] = &["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// `when = { weekdays = ["sun", "wed"], command = ["is-game-day", "{date}"] }`, either or both.
///
/// ```
/// use chrono::Weekday;
/// use keel_model::CalendarSpec;
/// let calendar = CalendarSpec { weekdays: vec![Weekday::Sun, Weekday::Wed], command: None };
/// assert_eq!(calendar.skip_reason("2026-01-21"), None); // a Wednesday
/// assert_eq!(
///     calendar.skip_reason("2026-01-22").as_deref(),
///     Some("not a scheduled weekday: runs on sun, wed")
/// );
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CalendarSpec {
    /// The weekdays the task runs on, as written (validated, without repeats); empty for
    /// every day, when only `command` decides.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        serialize_with = "weekday_names"
    )]
    pub weekdays: Vec<Weekday>,
    /// Run before the task's first attempt (templates not expanded): exit 0 runs the task,
    /// exit 1 settles it `skipped`, anything else is an error, as a sensor's is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
}

impl CalendarSpec {
    /// Why a run of `partition` skips the task: `None` when the task runs that day. A partition
    /// that is no `YYYY-MM-DD` date has no weekday, and the task runs (keel-config refuses
    /// weekdays in a pipeline whose partition is `none`).
    pub fn skip_reason(&self, partition: &str) -> Option<String> {
        let date = NaiveDate::parse_from_str(partition, "%Y-%m-%d").ok()?;
        if self.weekdays.is_empty() || self.weekdays.contains(&date.weekday()) {
            return None;
        }
        let names: Vec<&str> = self.weekdays.iter().map(|day| weekday_name(*day)).collect();
        Some(format!(
            "not a scheduled weekday: runs on {}",
            names.join(", ")
        ))
    }
}

/// The name `when.weekdays` writes for `day`: `mon` … `sun`.
pub fn weekday_name(day: Weekday) -> &'static str {
    WEEKDAY_NAMES[day.num_days_from_monday() as usize]
}

/// The weekday `name` (`mon` … `sun`) stands for.
pub fn parse_weekday(name: &str) -> Option<Weekday> {
    let position = WEEKDAY_NAMES.iter().position(|known| *known == name)?;
    Weekday::try_from(u8::try_from(position).ok()?).ok()
}

fn weekday_names<S: serde::Serializer>(days: &[Weekday], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(days.iter().map(|day| weekday_name(*day)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weekdays_of_the_partitions_date_decide() {
        let calendar = CalendarSpec {
            weekdays: vec![Weekday::Sat, Weekday::Sun],
            command: None,
        };
        // 2024-02-29 was a Thursday, 2024-03-02 a Saturday, 2024-12-29 a Sunday.
        assert!(calendar.skip_reason("2024-02-29").is_some());
        assert_eq!(calendar.skip_reason("2024-03-02"), None);
        assert_eq!(calendar.skip_reason("2024-12-29"), None);
        assert_eq!(
            calendar.skip_reason("2025-01-01").as_deref(),
            Some("not a scheduled weekday: runs on sat, sun")
        );
        assert_eq!(calendar.skip_reason("none"), None);
        let decided_by_command = CalendarSpec {
            weekdays: Vec::new(),
            command: Some(vec!["is-game-day".into()]),
        };
        assert_eq!(decided_by_command.skip_reason("2025-01-01"), None);
    }

    #[test]
    fn weekday_names_round_trip() {
        for name in WEEKDAY_NAMES {
            assert_eq!(parse_weekday(name).map(weekday_name), Some(*name));
        }
        assert_eq!(parse_weekday("Mon"), None);
        assert_eq!(parse_weekday("monday"), None);
    }
}
