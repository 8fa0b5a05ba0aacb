//! The health score of a pipeline from its runs: six named dimensions, each with its weight and
//! the evidence it was computed from (keel-health does the weighing).

use chrono_tz::Tz;
use keel_health::score::{Dimension, Score, ratio, score, within};
use keel_model::{Millis, Outcome, PipelineSpec, SloKind};
use serde_json::{Value, json};

use super::facts::Facts;

const MINUTE: f64 = 60_000.0;
const DAY: Millis = 24 * 3_600_000;
/// The window the score looks at.
pub const WINDOW: Millis = 30 * DAY;

/// The score at `now` over the runs of the last 30 days.
pub fn health_score(spec: &PipelineSpec, facts: &Facts, zone: Tz, now: Millis) -> Score {
    let facts = Facts {
        runs: facts
            .runs
            .iter()
            .filter(|run| {
                run.view.record.created_at > now - WINDOW && run.view.record.created_at <= now
            })
            .cloned()
            .collect(),
    };
    let newest = facts.newest_per_partition();
    let finished: Vec<_> = newest
        .iter()
        .filter(|run| run.view.record.finished_at.is_some())
        .collect();

    // Success without a human: the product's first goal (99.9%).
    let hands_off = finished.iter().filter(|run| {
        run.hands_off_success()
            && facts
                .runs_of(run.partition())
                .all(|earlier| earlier.human.is_empty())
    });
    let hands_off = hands_off.count();
    let success = Dimension {
        name: "success without a human",
        weight: 3.0,
        value: ratio(hands_off, finished.len()),
        evidence: format!(
            "{hands_off} of {} finished partitions succeeded without a human",
            finished.len()
        ),
    };

    // Freshness: the freshness SLOs' good share, if the pipeline declares any.
    let freshness_slos: Vec<_> = spec
        .slos
        .iter()
        .filter(|slo| matches!(slo.kind, SloKind::Freshness { .. }))
        .cloned()
        .collect();
    let freshness = if freshness_slos.is_empty() {
        Dimension {
            name: "freshness",
            weight: 2.0,
            value: None,
            evidence: "no freshness SLO declared ([slo.NAME] kind = \"freshness\")".to_string(),
        }
    } else {
        let statuses =
            super::slo::statuses(&freshness_slos, &facts, zone, spec.schedule.is_some(), now);
        let (good, total) = statuses.iter().fold((0, 0), |(good, total), status| {
            (
                good + status.budget.total - status.budget.bad,
                total + status.budget.total,
            )
        });
        Dimension {
            name: "freshness",
            weight: 2.0,
            value: ratio(good, total),
            evidence: format!("{good} of {total} partitions fresh by their deadline"),
        }
    };

    // Recovery time: how long Keel took to heal what it healed (target 5 minutes).
    let healed: Vec<_> = facts.runs.iter().flat_map(|run| run.healed()).collect();
    let recovery = if healed.is_empty() {
        Dimension {
            name: "recovery time",
            weight: 1.5,
            value: None,
            evidence: "nothing needed healing".to_string(),
        }
    } else {
        let mean = healed.iter().map(|one| one.recovery as f64).sum::<f64>() / healed.len() as f64;
        Dimension {
            name: "recovery time",
            weight: 1.5,
            value: Some(within(mean / MINUTE, 5.0, 60.0)),
            evidence: format!(
                "{} healed failures, mean recovery {:.1} min (target 5)",
                healed.len(),
                mean / MINUTE
            ),
        }
    };

    // Alert load: manual interventions a week (target under 1).
    let interventions: usize = facts.runs.iter().map(|run| run.human.len()).sum();
    let weeks = (WINDOW as f64 / (7 * DAY) as f64).max(1.0);
    let first = facts.runs.first().map(|run| run.view.record.created_at);
    let span_weeks = first.map_or(weeks, |first| {
        ((now - first) as f64 / (7 * DAY) as f64).clamp(1.0, weeks)
    });
    let per_week = interventions as f64 / span_weeks;
    let alert_load = Dimension {
        name: "alert load",
        weight: 1.0,
        value: (!facts.runs.is_empty()).then(|| within(per_week, 1.0, 7.0)),
        evidence: format!(
            "{interventions} manual interventions, {per_week:.1} a week (target under 1)"
        ),
    };

    // Check results: the share of checked attempts that passed every check.
    let checked_tasks: Vec<&str> = spec
        .tasks
        .iter()
        .filter(|task| !task.checks.is_empty())
        .map(|task| task.name.as_str())
        .collect();
    let mut judged = 0;
    for run in &facts.runs {
        judged += run
            .view
            .attempts
            .iter()
            .filter(|attempt| {
                checked_tasks.contains(&attempt.task.as_str())
                    && matches!(
                        attempt.outcome,
                        Some(Outcome::Succeeded | Outcome::FailedCheck)
                    )
            })
            .count();
    }
    let failed_checks: usize = facts
        .runs
        .iter()
        .map(|run| {
            run.check_failures
                .iter()
                .filter(|(subject, ..)| !subject.starts_with("phase "))
                .count()
        })
        .sum();
    let failed_checks = failed_checks.min(judged);
    let checks = Dimension {
        name: "check results",
        weight: 1.0,
        value: ratio(judged - failed_checks, judged),
        evidence: if judged == 0 {
            "no attempt of a task with checks".to_string()
        } else {
            format!("{failed_checks} failed checks in {judged} checked attempts")
        },
    };

    // Anomalies: the share of judged values that were usual.
    let views: Vec<keel_store::RunView> = newest.iter().map(|run| run.view.clone()).collect();
    let found = crate::anomalies::in_view(&views, now);
    let values: usize = views
        .iter()
        .flat_map(|view| view.tasks.iter())
        .filter(|row| row.outcome == Some(Outcome::Succeeded))
        .count();
    let anomalies = Dimension {
        name: "anomalies",
        weight: 1.0,
        value: (values > 0).then(|| 1.0 - (found.len() as f64 / values as f64).min(1.0)),
        evidence: format!("{} anomalies in {values} succeeded task runs", found.len()),
    };

    score(vec![
        success, freshness, recovery, alert_load, checks, anomalies,
    ])
}

pub fn to_json(score: &Score) -> Value {
    json!({
        "score": score.score,
        "dimensions": score.dimensions.iter().map(|dimension| json!({
            "name": dimension.name,
            "weight": dimension.weight,
            "value": dimension.value,
            "evidence": dimension.evidence,
        })).collect::<Vec<_>>(),
    })
}

/// The score and a table of its dimensions, as `keel health` prints them.
pub fn render(score: &Score) -> String {
    let mut out = match score.score {
        Some(value) => format!("health score {value:.1}/10\n"),
        None => "health score: nothing to judge yet\n".to_string(),
    };
    for dimension in &score.dimensions {
        let value = match dimension.value {
            Some(value) => format!("{:.2}", value),
            None => "  - ".to_string(),
        };
        out.push_str(&format!(
            "  {:<24} weight {:<3} {value}  {}\n",
            dimension.name, dimension.weight, dimension.evidence
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use keel_model::{AttemptId, RunId, RunState, TaskState};
    use keel_store::{AttemptRecord, RunRecord, RunView, TaskRunRecord};

    use super::*;
    use crate::health::facts::{Human, RunFacts};

    const MINUTE: Millis = 60_000;
    /// 2026-11-01 00:00 UTC.
    const START: Millis = 1_793_491_200_000;

    fn attempt(run: i64, number: u32, outcome: Outcome, finished_at: Millis) -> AttemptRecord {
        AttemptRecord {
            id: AttemptId(run * 10 + i64::from(number)),
            run: RunId(run),
            pipeline: "hoops".into(),
            partition: String::new(),
            task: "load".into(),
            number,
            lease_owner: String::new(),
            lease_epoch: 1,
            not_before: None,
            claimed_at: finished_at - MINUTE,
            started_at: Some(finished_at - MINUTE),
            finished_at: Some(finished_at),
            outcome: Some(outcome),
            exit_code: None,
            rows: None,
            metrics: None,
            message: None,
            pid: None,
            dir: String::new(),
            version: None,
            task_version: None,
        }
    }

    /// A run of day `day` whose task `load` ran `attempts` (outcome, minutes after creation).
    fn run(day: i64, state: RunState, attempts: &[(Outcome, i64)]) -> RunFacts {
        let created_at = START + day * DAY;
        let last = attempts
            .last()
            .map_or(Outcome::Succeeded, |(outcome, _)| *outcome);
        RunFacts {
            view: RunView {
                record: RunRecord {
                    id: RunId(day + 1),
                    pipeline: "hoops".into(),
                    partition: format!("2026-11-{:02}", day + 1),
                    version: "v".into(),
                    state,
                    trace_id: String::new(),
                    created_at,
                    finished_at: Some(created_at + 60 * MINUTE),
                    cancel_requested: false,
                    message: None,
                    pass: None,
                },
                tasks: vec![TaskRunRecord {
                    run: RunId(day + 1),
                    task: "load".into(),
                    phase: "p".into(),
                    state: TaskState::Done,
                    outcome: Some(last),
                    attempts: attempts.len() as u32,
                    charged: attempts.len() as u32,
                    lease_epoch: 1,
                    not_before: None,
                    first_started_at: None,
                    message: None,
                    rerun_pending: false,
                    sensor_polls: 0,
                    sensor_errors: 0,
                }],
                attempts: attempts
                    .iter()
                    .enumerate()
                    .map(|(index, (outcome, minutes))| {
                        attempt(
                            day + 1,
                            index as u32 + 1,
                            *outcome,
                            created_at + minutes * MINUTE,
                        )
                    })
                    .collect(),
                kinds: Default::default(),
                accepted: None,
            },
            human: Vec::new(),
            check_failures: Vec::new(),
            heals: Vec::new(),
        }
    }

    fn spec() -> PipelineSpec {
        keel_config::parse(
            "[pipeline]\nname = \"hoops\"\n\n[phases.p]\n[tasks.load]\nphase = \"p\"\ncommand = [\"true\"]\n",
            "keel.toml",
        )
        .unwrap()
    }

    fn dimension<'a>(score: &'a Score, name: &str) -> &'a Dimension {
        score
            .dimensions
            .iter()
            .find(|dimension| dimension.name == name)
            .unwrap()
    }

    #[test]
    fn each_dimension_says_what_it_counted() {
        let mut retried = run(
            2,
            RunState::Succeeded,
            &[(Outcome::Failed, 1), (Outcome::Succeeded, 3)],
        );
        retried.human.push(Human {
            at: START + 2 * DAY + 30 * MINUTE,
            what: "keel retry load".into(),
        });
        let facts = Facts {
            runs: vec![
                run(0, RunState::Succeeded, &[(Outcome::Succeeded, 1)]),
                // Healed by Keel in 20 minutes: a retry after a failure and a timeout.
                run(
                    1,
                    RunState::Succeeded,
                    &[
                        (Outcome::Failed, 1),
                        (Outcome::TimedOut, 11),
                        (Outcome::Succeeded, 21),
                    ],
                ),
                retried,
                run(3, RunState::Failed, &[(Outcome::FailedPermanent, 1)]),
            ],
        };
        let now = START + 7 * DAY;
        let score = health_score(&spec(), &facts, chrono_tz::UTC, now);
        let success = dimension(&score, "success without a human");
        assert_eq!(success.value, Some(0.5));
        assert_eq!(
            success.evidence,
            "2 of 4 finished partitions succeeded without a human"
        );
        let recovery = dimension(&score, "recovery time");
        // (20 + 2) / 2 = 11 minutes: 6 past the 5-minute target on the way to 60.
        assert_eq!(
            recovery.evidence,
            "2 healed failures, mean recovery 11.0 min (target 5)"
        );
        assert!((recovery.value.unwrap() - (1.0 - 6.0 / 55.0)).abs() < 1e-9);
        let load = dimension(&score, "alert load");
        assert_eq!(
            load.evidence,
            "1 manual interventions, 1.0 a week (target under 1)"
        );
        assert_eq!(load.value, Some(1.0));
        assert_eq!(dimension(&score, "freshness").value, None);
        assert_eq!(dimension(&score, "check results").value, None);
        // (0.5 × 3 + 0.89 × 1.5 + 1 × 1 + 1 × 1) / 6.5 on a scale of 10.
        let expected = (0.5 * 3.0 + recovery.value.unwrap() * 1.5 + 1.0 + 1.0) / 6.5 * 10.0;
        assert_eq!(score.score, Some((expected * 10.0).round() / 10.0));
        // Runs older than 30 days do not count.
        let later = health_score(&spec(), &facts, chrono_tz::UTC, START + 40 * DAY);
        assert_eq!(later.score, None);
    }
}
