//! Service level objectives (`[slo.NAME]` in the pipeline file, docs/health.md): what counts as
//! a good partition or run, and how many bad ones the objective allows over its period. The
//! arithmetic of budgets and burn rates is in keel-health; this is the declaration.

use std::time::Duration;

use chrono::{NaiveDate, NaiveDateTime};
use chrono_tz::Tz;

use crate::{Millis, TimeOfDay};

/// The default period an SLO's budget is counted over.
pub const DEFAULT_SLO_PERIOD: Duration = Duration::from_secs(30 * 24 * 3600);

/// One `[slo.NAME]`.
#[derive(Debug, Clone, PartialEq)]
pub struct SloSpec {
    pub name: String,
    pub kind: SloKind,
    /// The share of good events the objective asks for, in `(0, 1)`: `"99.9%"` is 0.999.
    pub objective: f64,
    /// The window the error budget is counted over.
    pub period: Duration,
}

/// What an SLO counts.
#[derive(Debug, Clone, PartialEq)]
pub enum SloKind {
    /// The partition for date D succeeded by `by` (local time) on D + `days_after`.
    Freshness { by: TimeOfDay, days_after: u32 },
    /// A run of the pipeline ended, succeeded or degraded, within `max` of its creation.
    Latency { max: Duration },
    /// A partition finished `succeeded` without a human: no `keel retry`, `keel accept` or
    /// cancel.
    Success,
}

impl SloKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            SloKind::Freshness { .. } => "freshness",
            SloKind::Latency { .. } => "latency",
            SloKind::Success => "success",
        }
    }
}

impl SloSpec {
    /// When the partition of `date` is due under a freshness SLO, in `zone`; `None` for other
    /// kinds.
    ///
    /// ```
    /// use keel_model::{SloKind, SloSpec, TimeOfDay};
    /// let slo = SloSpec {
    ///     name: "fresh".into(),
    ///     kind: SloKind::Freshness { by: TimeOfDay { hour: 10, minute: 0 }, days_after: 1 },
    ///     objective: 0.99,
    ///     period: keel_model::DEFAULT_SLO_PERIOD,
    /// };
    /// let date = chrono::NaiveDate::from_ymd_opt(2026, 12, 1).unwrap();
    /// // 2026-12-02 10:00 in New York is 15:00 UTC.
    /// assert_eq!(slo.due(date, chrono_tz::America::New_York), Some(1_796_223_600_000));
    /// ```
    pub fn due(&self, date: NaiveDate, zone: Tz) -> Option<Millis> {
        let SloKind::Freshness { by, days_after } = &self.kind else {
            return None;
        };
        let day = date.checked_add_days(chrono::Days::new(u64::from(*days_after)))?;
        let local = NaiveDateTime::new(
            day,
            chrono::NaiveTime::from_hms_opt(u32::from(by.hour), u32::from(by.minute), 0)?,
        );
        crate::schedule::resolve_local(zone, local)
    }

    /// The target, as `keel slo` shows it: `succeeded by 10:00 the next day`.
    pub fn target(&self) -> String {
        match &self.kind {
            SloKind::Freshness { by, days_after } => {
                let day = match days_after {
                    0 => "the same day".to_string(),
                    1 => "the next day".to_string(),
                    days => format!("{days} days later"),
                };
                format!("partition succeeded by {by} {day}")
            }
            SloKind::Latency { max } => {
                format!("run ended within {}", crate::format_duration(*max))
            }
            SloKind::Success => "partition succeeded without a human".to_string(),
        }
    }
}
