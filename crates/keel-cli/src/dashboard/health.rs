//! The pipeline's health, until a score exists: whether it is ready (its file valid, its
//! scheduler turning, as `/ready` judges them), the recent partitions that went wrong and why,
//! and the circuit breakers that are not closed.

use std::sync::Arc;

use askama::Template;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::Response;
use keel_model::{Millis, RunState, TaskState};
use keel_store::{RunView, StatusQuery, Store};
use serde::Deserialize;

use super::view::{self, Chrome};
use super::{PageError, html};
use crate::api::{ApiContext, ApiError, ServedPipeline};

/// How many of the newest partitions the recent failures look at.
const RECENT_PARTITIONS: u32 = 14;

#[derive(Deserialize)]
pub struct PipelinePath {
    pipeline: String,
}

#[derive(Template)]
#[template(path = "health.html")]
pub struct HealthPage {
    pub chrome: Chrome,
    /// (check, ok, detail)
    pub readiness: Vec<(&'static str, bool, String)>,
    pub ready: bool,
    pub recent_partitions: u32,
    pub problems: Vec<Problem>,
    /// What "running long" means on this page, when anything can be.
    pub long_after: Option<String>,
    pub open_breakers: Vec<OpenBreaker>,
    /// The health score out of 10 (`keel health`), `None` while nothing can be judged.
    pub score: Option<String>,
    /// (dimension, weight, value, evidence).
    pub dimensions: Vec<(&'static str, String, String, String)>,
    /// Task versions that are canaries or were rolled back (`keel rollout`).
    pub rollouts: Vec<Rollout>,
}

/// A task version whose rollout is under way or went wrong.
pub struct Rollout {
    pub task: String,
    pub version: String,
    pub status: &'static str,
    pub class: &'static str,
    pub counts: String,
    pub reason: String,
}

/// A recent run that went wrong.
pub struct Problem {
    pub partition: String,
    pub run_label: String,
    pub run_url: String,
    pub class: &'static str,
    pub state: String,
    pub reasons: Vec<String>,
    pub failed_tasks: Vec<FailedTask>,
}

pub struct FailedTask {
    pub task: String,
    pub outcome: &'static str,
    pub class: &'static str,
    pub message: String,
    pub attempt_url: Option<String>,
}

pub struct OpenBreaker {
    pub name: String,
    pub class: &'static str,
    pub state: &'static str,
    pub sentence: String,
}

pub async fn page(
    State(context): State<Arc<ApiContext>>,
    path: Result<Path<PipelinePath>, PathRejection>,
) -> Result<Response, PageError> {
    let Path(path) = path.map_err(ApiError::from)?;
    let served = context.pipeline(&path.pipeline)?;
    let page = render(&context, served, crate::state::now_millis()).await?;
    Ok(html(&page))
}

pub async fn render(
    context: &ApiContext,
    served: &ServedPipeline,
    now: Millis,
) -> Result<HealthPage, ApiError> {
    let spec = served.spec();
    let (file_ok, file_detail) = served.pipeline_status();
    let (scheduler_ok, scheduler_detail) = context.scheduler_status(served, now);
    let readiness = vec![
        ("pipeline file", file_ok, file_detail),
        ("scheduler", scheduler_ok, scheduler_detail),
    ];
    let view = served
        .reader
        .status_view(&StatusQuery::new(spec.name.clone()).limit(RECENT_PARTITIONS))
        .await
        .map_err(view::store_error)?;
    let long_after = long_run_threshold(
        view.runs
            .iter()
            .filter_map(|run| Some(run.record.finished_at? - run.record.created_at))
            .collect(),
    );
    let base = view::pipeline_url(&spec.name);
    let mut problems = Vec::new();
    for run in &view.runs {
        let running_long = run.record.state == RunState::Running
            && long_after.is_some_and(|limit| now - run.record.created_at > limit);
        let wrong = matches!(
            run.record.state,
            RunState::Failed | RunState::Degraded | RunState::Cancelled
        );
        if !wrong && !running_long {
            continue;
        }
        let gates = served
            .reader
            .gates(run.record.id)
            .await
            .map_err(view::store_error)?;
        let mut reasons = crate::api::degraded_because(run, &gates);
        if let Some(message) = run.record.message.as_deref() {
            reasons.insert(0, crate::display::printable(message));
        }
        let state = if running_long {
            format!(
                "running for {}",
                view::duration(now - run.record.created_at)
            )
        } else {
            run.record.state.as_str().to_string()
        };
        problems.push(Problem {
            partition: run.record.partition.clone(),
            run_label: match &run.record.pass {
                Some(pass) => format!("{pass} #{}", run.record.id.0),
                None => format!("#{}", run.record.id.0),
            },
            run_url: view::run_url(&base, run.record.id),
            class: view::run_class(run.record.state),
            state,
            reasons,
            failed_tasks: failed_tasks(&base, run),
        });
    }
    let open_breakers = view
        .resources
        .iter()
        .filter_map(|resource| {
            let (word, sentence) = resource.state_at(now);
            (word != "closed").then(|| OpenBreaker {
                name: resource.name.clone(),
                class: view::breaker_class(word),
                state: view::breaker_word(word),
                sentence,
            })
        })
        .collect();
    let rollouts = view
        .rollouts
        .iter()
        .map(|record| Rollout {
            task: record.task.clone(),
            version: record.version.clone(),
            status: record.status.as_str(),
            class: match record.status {
                keel_model::VersionStatus::RolledBack => "failed",
                _ => "running",
            },
            counts: format!("{} clean, {} failed", record.clean, record.failed),
            reason: crate::display::printable(record.reason.as_deref().unwrap_or_default()),
        })
        .collect();
    let facts = crate::health::facts::gather(
        &served.reader,
        &spec.name,
        now - crate::health::score::WINDOW - 24 * 3_600_000,
    )
    .await
    .map_err(ApiError::internal)?;
    let score = crate::health::score::health_score(&spec, &facts, crate::health::zone(&spec), now);
    let dimensions = score
        .dimensions
        .iter()
        .map(|dimension| {
            (
                dimension.name,
                dimension.weight.to_string(),
                dimension
                    .value
                    .map_or("-".to_string(), |value| format!("{value:.2}")),
                crate::display::printable(&dimension.evidence),
            )
        })
        .collect();
    let mut chrome = Chrome::new(
        context,
        &spec,
        format!("health · {} · Keel", spec.name),
        "health",
    );
    chrome.live = true;
    Ok(HealthPage {
        chrome,
        ready: readiness.iter().all(|(_, ok, _)| *ok),
        readiness,
        recent_partitions: RECENT_PARTITIONS,
        problems,
        long_after: long_after.map(view::duration),
        open_breakers,
        rollouts,
        score: score.score.map(|score| format!("{score:.1}")),
        dimensions,
    })
}

/// How long a run may run before the page calls it long: twice the median time the finished
/// runs took (`took`), at least a second, or `None` when none finished.
fn long_run_threshold(mut took: Vec<Millis>) -> Option<Millis> {
    if took.is_empty() {
        return None;
    }
    took.sort_unstable();
    Some(took[took.len() / 2].max(0).saturating_mul(2).max(1_000))
}

/// The tasks of `run` that ended without completing, in the run's order.
fn failed_tasks(base: &str, run: &RunView) -> Vec<FailedTask> {
    run.tasks
        .iter()
        .filter_map(|row| {
            let outcome = row
                .outcome
                .filter(|outcome| row.state == TaskState::Done && !outcome.is_complete())?;
            Some(FailedTask {
                task: row.task.clone(),
                outcome: outcome.as_str(),
                class: view::outcome_class(outcome),
                message: row
                    .message
                    .as_deref()
                    .map(crate::display::printable)
                    .unwrap_or_default(),
                attempt_url: run.attempts_of(&row.task).last().map(|attempt| {
                    view::attempt_url(base, run.record.id, &row.task, attempt.number)
                }),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_long_after_twice_the_median_finished_run() {
        assert_eq!(long_run_threshold(Vec::new()), None);
        assert_eq!(long_run_threshold(vec![60_000]), Some(120_000));
        assert_eq!(
            long_run_threshold(vec![90_000, 10_000, 600_000]),
            Some(180_000)
        );
        assert_eq!(
            long_run_threshold(vec![5, 1]),
            Some(1_000),
            "at least a second"
        );
        assert_eq!(
            long_run_threshold(vec![-50]),
            Some(1_000),
            "a clock step back is no time"
        );
    }
}
