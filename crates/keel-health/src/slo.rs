//! Service level objectives as numbers: error budgets and multi-window burn rates.
//!
//! An SLO counts events, each good or bad: a partition fresh by its deadline or not, a run
//! inside its latency target or not, a partition finished without a human or not. Over the
//! SLO's period (30 days by default) the share of bad events may be at most `1 - objective`:
//! that is the error budget. The burn rate over a window is the share of bad events in it
//! divided by that allowance: 1 spends the budget exactly over the period, 14.4 spends 2% of a
//! 30-day budget in one hour.
//!
//! Alerts follow the multi-window rule of the Google SRE workbook: a fast burn when both the
//! last hour and the last 5 minutes burn at 14.4 or more (the short window stops the alert soon
//! after the problem ends), a slow burn when both the last 6 hours and the last 30 minutes burn
//! at 6 or more.

/// One event an SLO counts: when it happened and whether it met the objective.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    /// Milliseconds since the Unix epoch.
    pub at: i64,
    pub good: bool,
}

const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;

/// A pair of windows and the burn rate both must reach.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BurnRule {
    pub name: &'static str,
    pub long: i64,
    pub short: i64,
    pub rate: f64,
}

/// The workbook's two rules for a 30-day budget.
pub const RULES: [BurnRule; 2] = [
    BurnRule {
        name: "fast burn",
        long: HOUR,
        short: 5 * MINUTE,
        rate: 14.4,
    },
    BurnRule {
        name: "slow burn",
        long: 6 * HOUR,
        short: 30 * MINUTE,
        rate: 6.0,
    },
];

/// Where an SLO stands at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    pub objective: f64,
    /// Events in the period.
    pub total: usize,
    pub bad: usize,
    /// Bad events the period allows: `(1 - objective) × total`.
    pub allowed: f64,
    /// The share of the budget left, 1 = untouched, 0 = spent, below 0 = overspent.
    pub remaining: f64,
    /// The rules that fire now, with the burn rates of their long and short windows.
    pub burning: Vec<(BurnRule, f64, f64)>,
}

/// The burn rate over the window `(now - window, now]`: the share of bad events divided by the
/// allowed share. `None` when the window holds no event.
pub fn burn_rate(events: &[Event], objective: f64, now: i64, window: i64) -> Option<f64> {
    let inside = events
        .iter()
        .filter(|event| event.at > now - window && event.at <= now);
    let (total, bad) = inside.fold((0usize, 0usize), |(total, bad), event| {
        (total + 1, bad + usize::from(!event.good))
    });
    (total > 0).then(|| (bad as f64 / total as f64) / (1.0 - objective).max(f64::EPSILON))
}

/// The budget over `period` ending at `now`, and the burn rules that fire.
pub fn budget(events: &[Event], objective: f64, now: i64, period: i64) -> Budget {
    let inside: Vec<&Event> = events
        .iter()
        .filter(|event| event.at > now - period && event.at <= now)
        .collect();
    let total = inside.len();
    let bad = inside.iter().filter(|event| !event.good).count();
    let allowed = (1.0 - objective) * total as f64;
    let remaining = if total == 0 {
        1.0
    } else if allowed <= 0.0 {
        if bad == 0 { 1.0 } else { f64::NEG_INFINITY }
    } else {
        1.0 - bad as f64 / allowed
    };
    let burning = RULES
        .iter()
        .filter_map(|rule| {
            let long = burn_rate(events, objective, now, rule.long)?;
            let short = burn_rate(events, objective, now, rule.short)?;
            (long >= rule.rate && short >= rule.rate).then_some((*rule, long, short))
        })
        .collect();
    Budget {
        objective,
        total,
        bad,
        allowed,
        remaining,
        burning,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 24 * HOUR;

    fn events(count: usize, bad_every: usize, start: i64, step: i64) -> Vec<Event> {
        (0..count)
            .map(|index| Event {
                at: start + index as i64 * step,
                good: bad_every == 0 || index % bad_every != 0,
            })
            .collect()
    }

    #[test]
    fn a_budget_counts_what_the_period_allows() {
        // 1,000 events over 30 days at 99%: 10 bad allowed; 5 bad spend half.
        let mut all = events(1000, 0, 1, 30 * DAY / 1000);
        for event in all.iter_mut().take(5) {
            event.good = false;
        }
        let now = 30 * DAY;
        let budget = budget(&all, 0.99, now, 30 * DAY);
        assert_eq!((budget.total, budget.bad), (1000, 5));
        assert!((budget.allowed - 10.0).abs() < 1e-9);
        assert!((budget.remaining - 0.5).abs() < 1e-9);
        assert!(budget.burning.is_empty());
    }

    #[test]
    fn a_burst_of_failures_fires_the_fast_rule_and_it_stops_soon_after() {
        // A good event a minute for a day, then 20 minutes of failures.
        let mut all = events(24 * 60, 0, 0, MINUTE);
        let outage_start = 24 * 60 * MINUTE;
        all.extend((0..20).map(|minute| Event {
            at: outage_start + minute * MINUTE,
            good: false,
        }));
        let now = outage_start + 19 * MINUTE;
        let during = budget(&all, 0.999, now, 30 * DAY);
        let names: Vec<&str> = during.burning.iter().map(|(rule, ..)| rule.name).collect();
        assert_eq!(names, ["fast burn", "slow burn"]);
        // Good events again: five minutes clear the fast rule's short window, thirty the slow
        // rule's, and nothing fires, though the budget stays spent.
        all.extend((20..60).map(|minute| Event {
            at: outage_start + minute * MINUTE,
            good: true,
        }));
        let names_at = |minute: i64| -> Vec<&str> {
            budget(&all, 0.999, outage_start + minute * MINUTE, 30 * DAY)
                .burning
                .iter()
                .map(|(rule, ..)| rule.name)
                .collect()
        };
        assert_eq!(names_at(29), ["slow burn"]);
        assert!(names_at(55).is_empty());
        assert!(budget(&all, 0.999, outage_start + 55 * MINUTE, 30 * DAY).remaining < 0.0);
    }

    #[test]
    fn no_events_burn_nothing() {
        assert_eq!(burn_rate(&[], 0.999, 0, HOUR), None);
        let budget = budget(&[], 0.999, 0, 30 * DAY);
        assert_eq!(budget.remaining, 1.0);
        assert!(budget.burning.is_empty());
    }
}
