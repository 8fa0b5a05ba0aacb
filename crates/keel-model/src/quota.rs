//! The calendar period a quota counts over (`quota = "500/month"`): which day or month an
//! instant falls in, in the pipeline's time zone, and when that period ends.

use chrono::{Datelike, LocalResult, NaiveDate, TimeZone};
use chrono_tz::Tz;

use crate::{Millis, QuotaPeriod};

/// One period of a quota: `key` names it (`2026-12` for a month, `2026-12-02` for a day) and is
/// what use is stored under; `start` and `end` bound it in milliseconds since the epoch, `end`
/// excluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaWindow {
    pub key: String,
    pub start: Millis,
    pub end: Millis,
}

impl QuotaWindow {
    /// The period of `period` that holds `now`, in the zone named `zone` (an IANA name such as
    /// `America/New_York`; an unknown name, which validation refuses, reads as UTC).
    ///
    /// ```
    /// use keel_model::{QuotaPeriod, QuotaWindow};
    /// // 2026-12-01T03:00Z is still November 30th in New York.
    /// let window = QuotaWindow::at(1_796_094_000_000, "America/New_York", QuotaPeriod::Month);
    /// assert_eq!(window.key, "2026-11");
    /// ```
    pub fn at(now: Millis, zone: &str, period: QuotaPeriod) -> QuotaWindow {
        let zone: Tz = zone.parse().unwrap_or(Tz::UTC);
        let now_seconds = now.div_euclid(1000);
        let local = zone
            .timestamp_opt(now_seconds, 0)
            .single()
            .unwrap_or_else(|| zone.timestamp_opt(0, 0).unwrap())
            .date_naive();
        let (key, first, next) = match period {
            QuotaPeriod::Day => (
                local.format("%Y-%m-%d").to_string(),
                local,
                local.succ_opt().unwrap_or(local),
            ),
            QuotaPeriod::Month => {
                let first = local.with_day(1).unwrap_or(local);
                let next = if first.month() == 12 {
                    NaiveDate::from_ymd_opt(first.year() + 1, 1, 1)
                } else {
                    NaiveDate::from_ymd_opt(first.year(), first.month() + 1, 1)
                }
                .unwrap_or(first);
                (local.format("%Y-%m").to_string(), first, next)
            }
        };
        QuotaWindow {
            key,
            start: start_of_day(zone, first),
            end: start_of_day(zone, next),
        }
    }
}

/// The first instant of `date` in `zone`: midnight, or the first minute after a DST gap that
/// swallows midnight.
fn start_of_day(zone: Tz, date: NaiveDate) -> Millis {
    let mut time = date.and_hms_opt(0, 0, 0).unwrap_or_default();
    for _ in 0..=180 {
        match zone.from_local_datetime(&time) {
            LocalResult::Single(at) | LocalResult::Ambiguous(at, _) => {
                return at.timestamp_millis();
            }
            LocalResult::None => time += chrono::Duration::minutes(1),
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> Millis {
        chrono::DateTime::parse_from_rfc3339(text)
            .unwrap()
            .timestamp_millis()
    }

    #[test]
    fn a_month_runs_from_local_midnight_to_local_midnight() {
        let window = QuotaWindow::at(
            utc("2026-12-31T23:30:00-05:00"),
            "America/New_York",
            QuotaPeriod::Month,
        );
        assert_eq!(window.key, "2026-12");
        assert_eq!(window.start, utc("2026-12-01T00:00:00-05:00"));
        assert_eq!(window.end, utc("2027-01-01T00:00:00-05:00"));
        // The same instant is already January in UTC.
        assert_eq!(
            QuotaWindow::at(window.end - 1, "UTC", QuotaPeriod::Month).key,
            "2027-01"
        );
    }

    #[test]
    fn a_day_across_a_dst_change_is_23_or_25_hours() {
        let spring = QuotaWindow::at(
            utc("2026-03-08T12:00:00-04:00"),
            "America/New_York",
            QuotaPeriod::Day,
        );
        assert_eq!(spring.key, "2026-03-08");
        assert_eq!(spring.end - spring.start, 23 * 3_600_000);
        let autumn = QuotaWindow::at(
            utc("2026-11-01T12:00:00-05:00"),
            "America/New_York",
            QuotaPeriod::Day,
        );
        assert_eq!(autumn.end - autumn.start, 25 * 3_600_000);
    }

    #[test]
    fn a_zone_whose_midnight_is_skipped_starts_the_day_at_the_first_minute_that_exists() {
        // Santiago springs forward at 00:00 on 2026-09-06: the day starts at 01:00 local.
        let window = QuotaWindow::at(
            utc("2026-09-06T12:00:00-03:00"),
            "America/Santiago",
            QuotaPeriod::Day,
        );
        assert_eq!(window.start, utc("2026-09-06T01:00:00-03:00"));
    }
}
