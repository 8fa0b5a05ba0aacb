//! The fault plan of `keel chaos`: which fault class strikes which simulated day, at which task
//! and how hard, drawn from the seed alone (pure: no I/O, no clock), so the same seed always
//! gives the same plan.

use chrono::NaiveDate;
use keel_engine::{Random, SplitMix64};
use serde_json::{Value, json};

/// A kind of fault the campaign plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FaultClass {
    /// No fault: the control group.
    Clean,
    /// The feed answers 500 to its next N requests.
    FeedOutage,
    /// The feed answers 429 to its next N requests.
    RateLimitStorm,
    /// The date's props are posted only after N requests for them.
    LateData,
    /// A task exits 1 before doing anything, once.
    Crash,
    /// A task sleeps past its timeout, once.
    Hang,
    /// The serving Keel is killed with SIGKILL once N attempts have started, and started again.
    KillKeel,
    /// A task does its work and then writes garbage to its result file, once.
    CorruptResult,
    /// Grading reports a far lower accuracy for the date: the run succeeds, the data is wrong.
    MetricRegression,
}

impl FaultClass {
    pub const ALL: [FaultClass; 9] = [
        FaultClass::Clean,
        FaultClass::FeedOutage,
        FaultClass::RateLimitStorm,
        FaultClass::LateData,
        FaultClass::Crash,
        FaultClass::Hang,
        FaultClass::KillKeel,
        FaultClass::CorruptResult,
        FaultClass::MetricRegression,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FaultClass::Clean => "clean",
            FaultClass::FeedOutage => "feed_outage",
            FaultClass::RateLimitStorm => "429_storm",
            FaultClass::LateData => "late_data",
            FaultClass::Crash => "crash",
            FaultClass::Hang => "hang",
            FaultClass::KillKeel => "kill_keel",
            FaultClass::CorruptResult => "corrupt_result",
            FaultClass::MetricRegression => "metric_regression",
        }
    }

    /// Whether Keel can heal the fault by itself. A regressed metric is wrong data that ran
    /// fine: only a person can judge and fix it, so its alerts are the ones that should come.
    pub fn healable(self) -> bool {
        !matches!(self, FaultClass::MetricRegression | FaultClass::Clean)
    }
}

/// Tasks a crash or a corrupt result file may strike: whole-date tasks with retries, neither
/// frozen (export) nor under canary rollout (predictions).
pub const TASK_TARGETS: &[&str] = &[
    "load_schedule",
    "load_injuries",
    "load_props",
    "team_offense",
    "team_defense",
    "player_game_summary",
    "upcoming_player_context",
    "upcoming_team_context",
    "rolling_averages",
    "opponent_defense",
    "rest_days",
    "player_form",
    "feature_store",
];

/// Tasks a hang may strike; the campaign's copy of the pipeline gives them a short timeout
/// ([`HANG_TIMEOUT`]), since a timeout is real time whatever Keel's clock does.
pub const HANG_TARGETS: &[&str] = &["team_defense", "opponent_defense", "rest_days"];

/// The timeout of [`HANG_TARGETS`] in the campaign's copy of the pipeline.
pub const HANG_TIMEOUT: &str = "3s";

/// The task whose metric a regression lowers.
pub const REGRESSION_TARGET: &str = "grading";

/// Days of history before a regression can be told: an anomaly alerts from a baseline of 21
/// partitions (`alerts::watch::MIN_POINTS_TO_ALERT`), and a day without games adds none, so
/// four weeks leave room for a week of them.
pub const REGRESSION_FROM_DAY: usize = 28;

/// One simulated day of the plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayPlan {
    pub date: NaiveDate,
    pub class: FaultClass,
    /// The task a task-level fault strikes.
    pub target: Option<String>,
    /// How hard: requests failed, polls refused, or attempts started before the kill.
    pub amount: u64,
}

impl DayPlan {
    /// What the day does, in a few words.
    pub fn describe(&self) -> String {
        match self.class {
            FaultClass::Clean => "no fault".to_string(),
            FaultClass::FeedOutage => format!("the feed answers 500 to {} requests", self.amount),
            FaultClass::RateLimitStorm => {
                format!("the feed answers 429 to {} requests", self.amount)
            }
            FaultClass::LateData => format!("props posted after {} requests", self.amount),
            FaultClass::Crash => format!("{} exits 1 once", self.target_name()),
            FaultClass::Hang => format!("{} hangs past its timeout once", self.target_name()),
            FaultClass::KillKeel => {
                format!(
                    "kill -9 of keel serve after {} attempts started",
                    self.amount
                )
            }
            FaultClass::CorruptResult => {
                format!("{} writes a corrupt result file once", self.target_name())
            }
            FaultClass::MetricRegression => {
                format!("{} reports accuracy at 30%", self.target_name())
            }
        }
    }

    fn target_name(&self) -> &str {
        self.target.as_deref().unwrap_or("?")
    }

    /// The feed's fault SPEC for the day (`hoops feed --faults`).
    pub fn feed_faults(&self) -> String {
        match self.class {
            FaultClass::FeedOutage => format!("outage={}", self.amount),
            FaultClass::RateLimitStorm => format!("storm={}", self.amount),
            FaultClass::LateData => format!("late_props={}", self.amount),
            _ => "none".to_string(),
        }
    }

    /// The day's `HOOPS_CHAOS` knob, if it has one.
    pub fn knob(&self) -> Option<String> {
        let kind = match self.class {
            FaultClass::Crash => "crash",
            FaultClass::Hang => "hang",
            FaultClass::CorruptResult => "corrupt",
            FaultClass::MetricRegression => "regress",
            _ => return None,
        };
        Some(format!("{kind}={}@{}", self.target_name(), self.date))
    }

    pub fn to_json(&self) -> Value {
        json!({
            "date": self.date.to_string(),
            "class": self.class.as_str(),
            "target": self.target,
            "amount": self.amount,
            "what": self.describe(),
        })
    }
}

/// The plan of `days` days from `first`. Every run of nine days holds each class once, in an
/// order drawn from the seed, so even a short campaign meets most classes; a regression drawn
/// before [`REGRESSION_FROM_DAY`] becomes a clean day.
pub fn plan(seed: u64, first: NaiveDate, days: u32) -> Vec<DayPlan> {
    let mut random = SplitMix64::new(seed ^ 0xC4A0_5EED);
    let mut pick = |below: usize| ((random.unit() * below as f64) as usize).min(below - 1);
    let mut order: Vec<FaultClass> = Vec::new();
    let mut out = Vec::new();
    for index in 0..days as usize {
        if order.is_empty() {
            order = FaultClass::ALL.to_vec();
            // Fisher–Yates, from the seed.
            for i in (1..order.len()).rev() {
                let j = pick(i + 1);
                order.swap(i, j);
            }
        }
        let mut class = order.pop().expect("refilled above");
        if class == FaultClass::MetricRegression && index < REGRESSION_FROM_DAY {
            class = FaultClass::Clean;
        }
        let (target, amount) = match class {
            FaultClass::Crash | FaultClass::CorruptResult => {
                (Some(TASK_TARGETS[pick(TASK_TARGETS.len())].to_string()), 1)
            }
            FaultClass::Hang => (Some(HANG_TARGETS[pick(HANG_TARGETS.len())].to_string()), 1),
            FaultClass::MetricRegression => (Some(REGRESSION_TARGET.to_string()), 1),
            FaultClass::FeedOutage => (None, 3 + pick(4) as u64),
            FaultClass::RateLimitStorm => (None, 4 + pick(7) as u64),
            FaultClass::LateData => (None, 3 + pick(6) as u64),
            FaultClass::KillKeel => (None, 2 + pick(9) as u64),
            FaultClass::Clean => (None, 0),
        };
        out.push(DayPlan {
            date: first + chrono::Duration::days(index as i64),
            class,
            target,
            amount,
        });
    }
    out
}

/// The `HOOPS_CHAOS` list of a whole plan.
pub fn knobs(plan: &[DayPlan]) -> String {
    let knobs: Vec<String> = plan.iter().filter_map(DayPlan::knob).collect();
    if knobs.is_empty() {
        "none".to_string()
    } else {
        knobs.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn first() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 1).unwrap()
    }

    #[test]
    fn the_same_seed_gives_the_same_plan_and_another_seed_another() {
        assert_eq!(plan(1, first(), 60), plan(1, first(), 60));
        assert_ne!(plan(1, first(), 60), plan(2, first(), 60));
        // A shorter campaign is the start of the longer one.
        assert_eq!(plan(5, first(), 10)[..], plan(5, first(), 60)[..10]);
    }

    #[test]
    fn every_nine_days_hold_every_healable_class() {
        let days = plan(3, first(), 63);
        for block in days.chunks(9) {
            for class in FaultClass::ALL.iter().filter(|class| class.healable()) {
                assert!(
                    block.iter().any(|day| day.class == *class),
                    "{class:?} missing from {block:?}"
                );
            }
        }
        assert!(
            days[..REGRESSION_FROM_DAY]
                .iter()
                .all(|day| day.class != FaultClass::MetricRegression)
        );
        assert!(
            days.iter()
                .any(|day| day.class == FaultClass::MetricRegression)
        );
    }

    #[test]
    fn targets_and_amounts_stay_in_their_ranges() {
        for day in plan(9, first(), 200) {
            match day.class {
                FaultClass::Hang => {
                    assert!(HANG_TARGETS.contains(&day.target.as_deref().unwrap()))
                }
                FaultClass::Crash | FaultClass::CorruptResult => {
                    assert!(TASK_TARGETS.contains(&day.target.as_deref().unwrap()))
                }
                FaultClass::FeedOutage => assert!((3..=6).contains(&day.amount)),
                FaultClass::RateLimitStorm => assert!((4..=10).contains(&day.amount)),
                FaultClass::LateData => assert!((3..=8).contains(&day.amount)),
                FaultClass::KillKeel => assert!((2..=10).contains(&day.amount)),
                _ => {}
            }
        }
        let days = plan(9, first(), 30);
        let knobs = knobs(&days);
        assert_eq!(
            knobs.split(',').count(),
            days.iter().filter(|day| day.knob().is_some()).count()
        );
        hoops::chaos::Chaos::parse(&knobs).expect("the knobs parse as hoops reads them");
    }
}
