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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use keel_model::{RunId, TimeOfDay};
    use keel_store::{RunRecord, RunView};

    use super::*;
    use crate::health::facts::{Human, RunFacts};

    const MINUTE: Millis = 60_000;
    const HOUR: Millis = 60 * MINUTE;
    const DAY: Millis = 24 * HOUR;
    /// 2026-11-01 00:00 UTC.
    const START: Millis = 1_793_491_200_000;

    /// A run of the date `day` days after 2026-11-01, created at 06:00 the next day and ended
    /// `took` later in `state`.
    fn run(day: i64, state: RunState, took: Millis) -> RunFacts {
        let date = NaiveDate::from_ymd_opt(2026, 11, 1).unwrap() + chrono::Duration::days(day);
        let created_at = START + (day + 1) * DAY + 6 * HOUR;
        RunFacts {
            view: RunView {
                record: RunRecord {
                    id: RunId(day + 1),
                    pipeline: "hoops".into(),
                    partition: date.to_string(),
                    version: "v".into(),
                    state,
                    trace_id: String::new(),
                    created_at,
                    finished_at: Some(created_at + took),
                    cancel_requested: false,
                    message: None,
                    pass: None,
                },
                tasks: Vec::new(),
                attempts: Vec::new(),
                kinds: Default::default(),
                accepted: None,
            },
            human: Vec::new(),
            check_failures: Vec::new(),
            heals: Vec::new(),
        }
    }

    fn slo(kind: SloKind, objective: f64) -> SloSpec {
        SloSpec {
            name: "objective".into(),
            kind,
            objective,
            period: Duration::from_secs(30 * 24 * 3600),
        }
    }

    fn burning_at(slo: &SloSpec, facts: &Facts, now: Millis) -> Vec<&'static str> {
        statuses(std::slice::from_ref(slo), facts, chrono_tz::UTC, true, now)[0]
            .budget
            .burning
            .iter()
            .map(|(rule, ..)| rule.name)
            .collect()
    }

    #[test]
    fn a_partition_that_needed_a_human_burns_fast_then_slowly_then_not_at_all() {
        // 29 good days, then day 29's run fails at 07:00 the next morning.
        let mut facts = Facts {
            runs: (0..29)
                .map(|day| run(day, RunState::Succeeded, HOUR))
                .collect(),
        };
        facts.runs.push(run(29, RunState::Failed, HOUR));
        let success = slo(SloKind::Success, 0.99);
        let failed_at = START + 30 * DAY + 7 * HOUR;
        assert!(burning_at(&success, &facts, failed_at - MINUTE).is_empty());
        assert_eq!(
            burning_at(&success, &facts, failed_at + 2 * MINUTE),
            ["fast burn", "slow burn"]
        );
        // Past the fast rule's 5 minutes, the slow rule still fires for its 30.
        assert_eq!(
            burning_at(&success, &facts, failed_at + 20 * MINUTE),
            ["slow burn"]
        );
        assert!(burning_at(&success, &facts, failed_at + 40 * MINUTE).is_empty());
        let status = &statuses(&[success], &facts, chrono_tz::UTC, true, failed_at + HOUR)[0];
        assert_eq!((status.budget.total, status.budget.bad), (30, 1));
        assert_eq!(status.bad[0].why, "run 30 ended failed");
        // 1 bad of 30 at 99% spends 1 / 0.3 of the budget: overspent.
        assert!(status.budget.remaining < 0.0);
    }

    #[test]
    fn a_human_makes_a_success_bad_and_says_who() {
        let mut retried = run(0, RunState::Succeeded, HOUR);
        retried.human.push(Human {
            at: START + DAY + 8 * HOUR,
            what: "keel retry load".into(),
        });
        let facts = Facts {
            runs: vec![retried, run(1, RunState::Succeeded, HOUR)],
        };
        let judged = events(
            &slo(SloKind::Success, 0.99),
            &facts,
            chrono_tz::UTC,
            true,
            START + 10 * DAY,
        );
        assert_eq!(
            judged
                .iter()
                .map(|judged| judged.event.good)
                .collect::<Vec<_>>(),
            [false, true]
        );
        assert_eq!(judged[0].why, "needed keel retry load");
    }

    #[test]
    fn freshness_counts_late_and_missing_partitions_at_their_deadline() {
        // Due at 10:00 the day after the date; runs end at 07:00 except day 1's at 11:00, and
        // day 2 never ran (the pipeline is scheduled, so its absence counts).
        let fresh = slo(
            SloKind::Freshness {
                by: TimeOfDay {
                    hour: 10,
                    minute: 0,
                },
                days_after: 1,
            },
            0.9,
        );
        let facts = Facts {
            runs: vec![
                run(0, RunState::Succeeded, HOUR),
                run(1, RunState::Succeeded, 5 * HOUR),
                run(3, RunState::Succeeded, HOUR),
            ],
        };
        let due_day_2 = START + 3 * DAY + 10 * HOUR;
        let judged = events(&fresh, &facts, chrono_tz::UTC, true, due_day_2 + DAY);
        let verdicts: Vec<(String, bool)> = judged
            .iter()
            .map(|judged| (judged.partition.clone(), judged.event.good))
            .collect();
        assert_eq!(
            verdicts,
            [
                ("2026-11-01".to_string(), true),
                ("2026-11-02".to_string(), false),
                ("2026-11-03".to_string(), false),
                ("2026-11-04".to_string(), true),
            ]
        );
        assert_eq!(
            judged[1].why,
            "succeeded 2026-11-03 11:00, due 2026-11-03 10:00"
        );
        assert_eq!(judged[2].why, "not succeeded by 2026-11-04 10:00");
        assert_eq!(judged[2].event.at, due_day_2);
        // Before its deadline a partition that has not run yet is not judged.
        let early = events(&fresh, &facts, chrono_tz::UTC, true, due_day_2 - MINUTE);
        assert_eq!(early.len(), 2);
        // Unscheduled, only the partitions that ran are judged.
        assert_eq!(
            events(&fresh, &facts, chrono_tz::UTC, false, due_day_2 + DAY).len(),
            3
        );
    }

    #[test]
    fn latency_counts_slow_failed_and_overdue_runs() {
        let overnight = slo(
            SloKind::Latency {
                max: Duration::from_secs(6 * 3600),
            },
            0.95,
        );
        let mut running = run(3, RunState::Running, 0);
        running.view.record.finished_at = None;
        let started = running.view.record.created_at;
        let facts = Facts {
            runs: vec![
                run(0, RunState::Succeeded, 5 * HOUR),
                run(1, RunState::Degraded, 7 * HOUR),
                run(2, RunState::Failed, HOUR),
                running,
            ],
        };
        let judged = events(&overnight, &facts, chrono_tz::UTC, true, started + 7 * HOUR);
        let verdicts: Vec<(bool, &str)> = judged
            .iter()
            .map(|judged| (judged.event.good, judged.why.as_str()))
            .collect();
        assert_eq!(
            verdicts,
            [
                (true, ""),
                (false, "run 2 took 7h00m"),
                (false, "run 3 ended failed"),
                (false, "run 4 still running"),
            ]
        );
        assert!(events(&overnight, &facts, chrono_tz::UTC, true, started + 5 * HOUR).len() == 3);
    }

    /// The serve tick's path: what burns goes to the alert book, which alerts once when the
    /// burn starts and resolves once when it stops.
    #[test]
    fn the_tick_alerts_a_burn_once_and_resolves_it_once() {
        let mut facts = Facts {
            runs: (0..29)
                .map(|day| run(day, RunState::Succeeded, HOUR))
                .collect(),
        };
        facts.runs.push(run(29, RunState::Failed, HOUR));
        let slos = [slo(SloKind::Success, 0.99)];
        let failed_at = START + 30 * DAY + 7 * HOUR;
        let mut book = crate::alerts::book::AlertBook::new(
            "hoops",
            crate::alerts::book::AlertPolicy {
                max_per_hour: 5,
                degraded_grace: HOUR,
                breaker_open_for: HOUR,
            },
        );
        let mut told = Vec::new();
        // A tick a minute for an hour and a half on a manual clock.
        for minute in -5..90 {
            let now = failed_at + minute * MINUTE;
            for (name, burning) in
                crate::alerts::watch::burning(&slos, &facts, chrono_tz::UTC, true, now)
            {
                told.extend(book.slo_burn(&name, burning, now));
            }
        }
        assert_eq!(told.len(), 2, "{told:#?}");
        assert_eq!(told[0].status, crate::alerts::book::Status::Firing);
        assert_eq!(told[0].at, failed_at);
        assert!(
            told[0]
                .detail
                .starts_with("objective: fast burn (1h00m at 100.0, 5m00s at 100.0), slow burn"),
            "{}",
            told[0].detail
        );
        assert_eq!(told[1].status, crate::alerts::book::Status::Resolved);
        assert_eq!(told[1].at, failed_at + 30 * MINUTE);
    }
}
