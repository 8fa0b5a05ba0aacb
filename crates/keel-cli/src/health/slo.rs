//! The pipeline's SLOs judged from its runs: each partition or run becomes an event, good or
//! bad, at the time it became known (a success when it happened, a missed deadline at the
//! deadline), and keel-health counts the budget and the burn rates over those events at `now`.

use chrono::NaiveDate;
use chrono_tz::Tz;
use keel_health::slo::{Budget, Event, budget};
use keel_model::{Millis, RunState, SloKind, SloSpec};
use serde_json::{Value, json};

use super::facts::Facts;

/// One event with what it was about, for the report and `keel slo`.
#[derive(Debug, Clone, PartialEq)]
pub struct Judged {
    pub event: Event,
    pub partition: String,
    /// Why a bad event is bad: `succeeded 10:42, due 10:00`.
    pub why: String,
}

/// An SLO at `now`: its budget and the bad events of its period.
#[derive(Debug, Clone)]
pub struct SloStatus {
    pub spec: SloSpec,
    pub budget: Budget,
    /// The bad events of the period, newest first.
    pub bad: Vec<Judged>,
}

/// The events of `slo` known at `now`, oldest first. `scheduled` says the pipeline runs every
/// day (it has a schedule), so a day without a run is a missed partition too.
pub fn events(slo: &SloSpec, facts: &Facts, zone: Tz, scheduled: bool, now: Millis) -> Vec<Judged> {
    let mut judged = Vec::new();
    match &slo.kind {
        SloKind::Freshness { .. } => {
            let mut dates: Vec<NaiveDate> = facts
                .runs
                .iter()
                .filter_map(|run| NaiveDate::parse_from_str(run.partition(), "%Y-%m-%d").ok())
                .collect();
            dates.sort_unstable();
            dates.dedup();
            if scheduled && let Some(first) = dates.first().copied() {
                // Every day from the first partition on, whether it ran or not.
                dates = first
                    .iter_days()
                    .take_while(|date| slo.due(*date, zone).is_some_and(|due| due <= now))
                    .collect();
            }
            for date in dates {
                let Some(due) = slo.due(date, zone) else {
                    continue;
                };
                let partition = date.format("%Y-%m-%d").to_string();
                let succeeded_at = facts
                    .runs_of(&partition)
                    .filter(|run| run.state() == RunState::Succeeded)
                    .filter_map(|run| run.view.record.finished_at)
                    .min();
                let local = |at: Millis| {
                    chrono::DateTime::from_timestamp_millis(at)
                        .map(|at| at.with_timezone(&zone).format("%Y-%m-%d %H:%M").to_string())
                        .unwrap_or_default()
                };
                match succeeded_at {
                    Some(at) if at <= due => judged.push(Judged {
                        event: Event { at, good: true },
                        partition,
                        why: String::new(),
                    }),
                    _ if due > now => {}
                    Some(at) => judged.push(Judged {
                        event: Event {
                            at: due,
                            good: false,
                        },
                        partition,
                        why: format!("succeeded {}, due {}", local(at), local(due)),
                    }),
                    None => judged.push(Judged {
                        event: Event {
                            at: due,
                            good: false,
                        },
                        partition,
                        why: format!("not succeeded by {}", local(due)),
                    }),
                }
            }
        }
        SloKind::Latency { max } => {
            let max = max.as_millis() as Millis;
            for run in &facts.runs {
                let record = &run.view.record;
                let took = record.finished_at.map(|at| at - record.created_at);
                let ended_well = matches!(record.state, RunState::Succeeded | RunState::Degraded);
                let (at, good, why) = match took {
                    Some(took) if took <= max && ended_well => {
                        (record.created_at + took, true, String::new())
                    }
                    Some(took) if took <= max => (
                        record.created_at + took,
                        false,
                        format!("run {} ended {}", record.id, record.state),
                    ),
                    Some(took) => (
                        record.created_at + took.min(max),
                        false,
                        format!(
                            "run {} took {}",
                            record.id,
                            keel_model::format_duration(std::time::Duration::from_millis(
                                took as u64
                            ))
                        ),
                    ),
                    None if now - record.created_at > max => (
                        record.created_at + max,
                        false,
                        format!("run {} still running", record.id),
                    ),
                    None => continue,
                };
                judged.push(Judged {
                    event: Event { at, good },
                    partition: record.partition.clone(),
                    why,
                });
            }
        }
        SloKind::Success => {
            for newest in facts.newest_per_partition() {
                let Some(at) = newest.view.record.finished_at else {
                    continue;
                };
                let humans: Vec<String> = facts
                    .runs_of(newest.partition())
                    .flat_map(|run| run.human.iter().map(|human| human.what.clone()))
                    .collect();
                let good = newest.state() == RunState::Succeeded && humans.is_empty();
                let why = if good {
                    String::new()
                } else if humans.is_empty() {
                    format!("run {} ended {}", newest.view.record.id, newest.state())
                } else {
                    format!("needed {}", humans.join(", "))
                };
                judged.push(Judged {
                    event: Event { at, good },
                    partition: newest.partition().to_string(),
                    why,
                });
            }
        }
    }
    judged.retain(|judged| judged.event.at <= now);
    judged.sort_by_key(|judged| judged.event.at);
    judged
}

/// Every SLO of the pipeline at `now`.
pub fn statuses(
    slos: &[SloSpec],
    facts: &Facts,
    zone: Tz,
    scheduled: bool,
    now: Millis,
) -> Vec<SloStatus> {
    slos.iter()
        .map(|slo| {
            let judged = events(slo, facts, zone, scheduled, now);
            let plain: Vec<Event> = judged.iter().map(|judged| judged.event).collect();
            let period = slo.period.as_millis() as Millis;
            let budget = budget(&plain, slo.objective, now, period);
            let mut bad: Vec<Judged> = judged
                .into_iter()
                .filter(|judged| !judged.event.good && judged.event.at > now - period)
                .collect();
            bad.reverse();
            SloStatus {
                spec: slo.clone(),
                budget,
                bad,
            }
        })
        .collect()
}

impl SloStatus {
    /// What burns, as an alert says it: `fast burn (1 h at 1000.0, 5 min at 1000.0)`; `None`
    /// when nothing does.
    pub fn burning(&self) -> Option<String> {
        if self.budget.burning.is_empty() {
            return None;
        }
        let rules: Vec<String> = self
            .budget
            .burning
            .iter()
            .map(|(rule, long, short)| {
                format!(
                    "{} ({} at {long:.1}, {} at {short:.1})",
                    rule.name,
                    keel_model::format_duration(std::time::Duration::from_millis(rule.long as u64)),
                    keel_model::format_duration(std::time::Duration::from_millis(
                        rule.short as u64
                    )),
                )
            })
            .collect();
        let last = self
            .bad
            .first()
            .map(|judged| format!("; last: {} {}", judged.partition, judged.why))
            .unwrap_or_default();
        Some(format!(
            "{}: {}; {} of the budget left{last}",
            self.spec.name,
            rules.join(", "),
            percent(self.budget.remaining)
        ))
    }

    pub fn to_json(&self) -> Value {
        let budget = &self.budget;
        json!({
            "name": self.spec.name,
            "kind": self.spec.kind.as_str(),
            "target": self.spec.target(),
            "objective": self.spec.objective,
            "period_s": self.spec.period.as_secs(),
            "events": budget.total,
            "bad": budget.bad,
            "allowed": budget.allowed,
            // Overspent without limit when nothing was allowed: null rather than -infinity.
            "remaining": budget.remaining.is_finite().then_some(budget.remaining),
            "burning": budget.burning.iter().map(|(rule, long, short)| json!({
                "rule": rule.name,
                "long_window_s": rule.long / 1000,
                "short_window_s": rule.short / 1000,
                "threshold": rule.rate,
                "long_rate": long,
                "short_rate": short,
            })).collect::<Vec<_>>(),
            "bad_events": self.bad.iter().take(10).map(|judged| json!({
                "partition": judged.partition,
                "at": judged.event.at,
                "why": judged.why,
            })).collect::<Vec<_>>(),
        })
    }

    /// One line: `fresh_by_ten  freshness  99%  29/30 good  budget 33% left  fast burn`.
    pub fn line(&self) -> String {
        let budget = &self.budget;
        let burning = if budget.burning.is_empty() {
            String::new()
        } else {
            let names: Vec<&str> = budget.burning.iter().map(|(rule, ..)| rule.name).collect();
            format!(", burning: {}", names.join(", "))
        };
        format!(
            "{} ({}, objective {}): {} of {} good over {}, {} bad allowed; budget {} left{burning}",
            self.spec.name,
            self.spec.target(),
            percent(self.spec.objective),
            budget.total - budget.bad,
            budget.total,
            keel_model::format_duration(self.spec.period),
            format_number(budget.allowed),
            percent(budget.remaining),
        )
    }
}

/// `0.999` as `99.9%`; an overspent budget as `-120%`.
pub fn percent(share: f64) -> String {
    if !share.is_finite() {
        return "none (overspent)".to_string();
    }
    format!("{}%", (share * 1000.0).round() / 10.0)
}

fn format_number(value: f64) -> String {
    format!("{}", (value * 100.0).round() / 100.0)
}
