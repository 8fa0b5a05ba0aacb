//! The endpoints that only read the state: pipelines, runs, a run in detail, a task's history.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use keel_model::RunState;
use keel_store::{AttemptKind, RunView, StatusQuery, StatusView, Store};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiContext, ApiError, ServedPipeline};
use crate::inspect;
use crate::state;

/// Runs listed when no `limit` is given, and the most a request may ask for.
const DEFAULT_LIMIT: u32 = 20;
const MAX_LIMIT: u32 = 1000;

pub async fn pipelines(State(context): State<Arc<ApiContext>>) -> Json<Value> {
    let pipelines: Vec<Value> = context
        .pipelines
        .iter()
        .map(|served| {
            let spec = served.spec();
            json!({
                "name": spec.name,
                "version": spec.version(),
                "timezone": spec.timezone,
                "schedule": spec.schedule.as_ref().map(|schedule| json!({
                    "cron": schedule.cron,
                    "partition_offset_days": schedule.partition_offset_days,
                    "catchup": format!("{:?}", schedule.catchup).to_lowercase(),
                })),
                "tasks": spec.tasks.len(),
                "passes": spec.passes.iter().map(|pass| json!({
                    "name": pass.name,
                    "schedule": pass.schedule.as_ref().map(|schedule| json!({
                        "cron": schedule.cron,
                        "partition_offset_days": schedule.partition_offset_days,
                        "catchup": format!("{:?}", schedule.catchup).to_lowercase(),
                    })),
                    "tasks": pass.tasks,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    Json(json!({ "pipelines": pipelines }))
}

/// The cluster of a PostgreSQL state: every worker that registered (newest heartbeat first),
/// its leases and load, and the work queue's counts.
pub async fn cluster(State(context): State<Arc<ApiContext>>) -> Result<Json<Value>, ApiError> {
    let Some(queue) = &context.cluster else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "this Keel's state is not in PostgreSQL, so it has no cluster of workers",
            "keep the state in PostgreSQL (state = \"postgres://…\") and start workers with keel serve --role worker",
        ));
    };
    let view = queue
        .cluster()
        .await
        .map_err(|error| ApiError::internal(error.into()))?;
    Ok(Json(cluster_json(&view, crate::cluster::wall_millis())))
}

/// The JSON of `/api/cluster`, as of `now`.
pub fn cluster_json(view: &keel_store::ClusterView, now: i64) -> Value {
    let workers: Vec<Value> = view
        .workers
        .iter()
        .map(|worker| {
            json!({
                "id": worker.id,
                "host": worker.host,
                "pid": worker.pid,
                "slots": worker.slots,
                "running": worker.running,
                "started_at": worker.started_at,
                "heartbeat_at": worker.heartbeat_at,
                "heartbeat_age_ms": (now - worker.heartbeat_at).max(0),
                "stopped_at": worker.stopped_at,
                "leases": worker.leases.iter().map(|(key, until)| json!({
                    "attempt": key,
                    "lease_until": until,
                    "expires_in_ms": until - now,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "workers": workers,
        "queue": {
            "queued": view.queued,
            "claimed": view.claimed,
            "done": view.done,
            "reaped": view.reaped,
        },
    })
}

#[derive(Deserialize)]
pub struct PipelinePath {
    pub(super) pipeline: String,
}

#[derive(Deserialize)]
pub struct RunPath {
    pub(super) pipeline: String,
    pub(super) run: i64,
}

#[derive(Deserialize)]
pub struct TaskPath {
    pub(super) pipeline: String,
    task: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RunsQuery {
    partition: Option<String>,
    from: Option<String>,
    to: Option<String>,
    state: Option<String>,
    limit: Option<u32>,
    #[serde(default)]
    all: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    from: Option<String>,
    to: Option<String>,
    limit: Option<u32>,
    #[serde(default)]
    all: bool,
}

/// `partition`, or `from` with `to`, as inclusive bounds of partitions; `None` for neither.
fn partition_bounds(
    served: &ServedPipeline,
    partition: Option<&str>,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<Option<(String, String)>, ApiError> {
    match (partition, from, to) {
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => Err(ApiError::bad_request(
            "partition cannot be given with from/to",
            "ask for one partition, or for a range with from and to",
        )),
        (Some(partition), None, None) => {
            let partition = state::check_partition(&served.spec(), partition).map_err(|error| {
                ApiError::from_command(error, axum::http::StatusCode::BAD_REQUEST)
            })?;
            Ok(Some((partition.clone(), partition)))
        }
        (None, Some(from), Some(to)) => {
            let partitions = state::date_range(&served.spec(), from, to).map_err(|error| {
                ApiError::from_command(error, axum::http::StatusCode::BAD_REQUEST)
            })?;
            Ok(Some((
                partitions.first().cloned().unwrap_or_default(),
                partitions.last().cloned().unwrap_or_default(),
            )))
        }
        (None, Some(_), None) | (None, None, Some(_)) => Err(ApiError::bad_request(
            "from and to go together",
            "give both, such as from=2026-01-01&to=2026-01-31",
        )),
        (None, None, None) => Ok(None),
    }
}

fn check_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(limit @ 1..=MAX_LIMIT) => Ok(limit),
        Some(limit) => Err(ApiError::bad_request(
            format!("limit {limit} is out of range"),
            format!("ask for 1 to {MAX_LIMIT} runs"),
        )),
    }
}

/// A run with its times, as the API lists it.
fn run_summary(run: &RunView, now: keel_model::Millis) -> Value {
    let mut entry = inspect::run_json(run, now);
    entry["created_at"] = run.record.created_at.into();
    entry["finished_at"] = run.record.finished_at.into();
    entry["cancel_requested"] = run.record.cancel_requested.into();
    entry
}

pub async fn runs(
    State(context): State<Arc<ApiContext>>,
    path: Result<Path<PipelinePath>, PathRejection>,
    query: Result<Query<RunsQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path(path) = path?;
    let served = context.pipeline(&path.pipeline)?;
    let Query(query) = query?;
    let bounds = partition_bounds(
        served,
        query.partition.as_deref(),
        query.from.as_deref(),
        query.to.as_deref(),
    )?;
    let limit = check_limit(query.limit)?;
    let wanted: Option<RunState> = match query.state.as_deref() {
        None => None,
        Some(text) => Some(text.parse().map_err(|_| {
            let names: Vec<&str> = RunState::ALL.iter().map(|state| state.as_str()).collect();
            ApiError::bad_request(
                format!("unknown run state {:?}", crate::display::printable(text)),
                format!("a state is one of {}", names.join(", ")),
            )
        })?),
    };
    let status_query = StatusQuery {
        pass: None,
        pipeline: served.spec().name.clone(),
        run: None,
        partitions: bounds,
        every_run: query.all,
        task: None,
        // Filtered by state here, so the limit is applied after the filter.
        limit: if wanted.is_some() { None } else { Some(limit) },
    };
    let view = served
        .reader
        .status_view(&status_query)
        .await
        .map_err(|error| ApiError::internal(error.into()))?;
    let now = state::now_millis();
    let mut matching: Vec<&RunView> = view
        .runs
        .iter()
        .filter(|run| wanted.is_none_or(|state| run.record.state == state))
        .collect();
    let mut omitted = view.omitted;
    if matching.len() > limit as usize {
        omitted += (matching.len() - limit as usize) as u64;
        matching.truncate(limit as usize);
    }
    let runs: Vec<Value> = matching.iter().map(|run| run_summary(run, now)).collect();
    Ok(Json(json!({ "runs": runs, "omitted": omitted })))
}

pub async fn run(
    State(context): State<Arc<ApiContext>>,
    path: Result<Path<RunPath>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path(path) = path?;
    let served = context.pipeline(&path.pipeline)?;
    let record = served.run(path.run).await?;
    let query = StatusQuery::new(served.spec().name.clone()).run(record.id);
    let view = served
        .reader
        .status_view(&query)
        .await
        .map_err(|error| ApiError::internal(error.into()))?;
    let gates = served
        .reader
        .gates(record.id)
        .await
        .map_err(|error| ApiError::internal(error.into()))?;
    let Some(run) = view.runs.first() else {
        return Err(served.no_run(path.run));
    };
    let now = state::now_millis();
    let mut document = run_summary(run, now);
    document["attempts"] = run
        .attempts
        .iter()
        .map(|attempt| attempt_json(run, attempt, now))
        .collect();
    document["gates"] = gates
        .iter()
        .map(|gate| {
            json!({
                "phase": gate.phase,
                "status": format!("{:?}", gate.status).to_lowercase(),
                "waived": gate.waived,
            })
        })
        .collect();
    document["degraded_because"] = degraded_because(run, &gates).into();
    Ok(Json(document))
}

/// One attempt (or not-ready check, or breaker probe) of a run.
fn attempt_json(
    run: &RunView,
    attempt: &keel_store::AttemptRecord,
    now: keel_model::Millis,
) -> Value {
    let kind = match run
        .kinds
        .get(&attempt.id)
        .copied()
        .unwrap_or(AttemptKind::Attempt)
    {
        AttemptKind::Attempt => "attempt",
        AttemptKind::Check => "check",
        AttemptKind::Probe => "probe",
    };
    let began = attempt.started_at.unwrap_or(attempt.claimed_at);
    json!({
        "id": attempt.id.0,
        "task": attempt.task,
        "number": attempt.number,
        "kind": kind,
        "claimed_at": attempt.claimed_at,
        "started_at": attempt.started_at,
        "finished_at": attempt.finished_at,
        "duration_ms": (attempt.finished_at.unwrap_or(now) - began).max(0),
        "outcome": attempt.outcome.map(|outcome| outcome.as_str()),
        "exit_code": attempt.exit_code,
        "rows": attempt.rows,
        "metrics": crate::display::metrics_json(attempt.metrics.as_deref()),
        "message": attempt.message,
    })
}

/// Why a run is (or would end) degraded: gates that opened without some of their tasks, and
/// tasks that ended without completing.
pub(crate) fn degraded_because(run: &RunView, gates: &[keel_store::GateRecord]) -> Vec<String> {
    let mut reasons = Vec::new();
    for gate in gates.iter().filter(|gate| !gate.waived.is_empty()) {
        reasons.push(format!(
            "the gate of phase {} opened without {}",
            gate.phase,
            gate.waived.join(", ")
        ));
    }
    for task in &run.tasks {
        if let Some(outcome) = task
            .outcome
            .filter(|outcome| task.state == keel_model::TaskState::Done && !outcome.is_complete())
        {
            let message = task
                .message
                .as_deref()
                .map(|message| format!(": {message}"))
                .unwrap_or_default();
            reasons.push(format!("task {} ended {outcome}{message}", task.task));
        }
    }
    reasons
}

pub async fn history(
    State(context): State<Arc<ApiContext>>,
    path: Result<Path<TaskPath>, PathRejection>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path(path) = path?;
    let served = context.pipeline(&path.pipeline)?;
    served.check_task(&path.task)?;
    let Query(query) = query?;
    let bounds = partition_bounds(served, None, query.from.as_deref(), query.to.as_deref())?;
    let limit = match (query.limit, &bounds) {
        (None, Some(_)) => None,
        (limit, _) => Some(check_limit(limit)?),
    };
    let status_query = StatusQuery {
        pass: None,
        pipeline: served.spec().name.clone(),
        run: None,
        partitions: bounds,
        every_run: query.all,
        task: Some(path.task.clone()),
        limit,
    };
    let view: StatusView = served
        .reader
        .status_view(&status_query)
        .await
        .map_err(|error| ApiError::internal(error.into()))?;
    let mut document = inspect::history_json(&path.task, &view, state::now_millis());
    document["omitted"] = view.omitted.into();
    Ok(Json(document))
}

/// One served pipeline's health score (`keel health`), computed from its runs now.
async fn score_of(served: &super::ServedPipeline) -> Result<Value, ApiError> {
    let spec = served.spec();
    let now = state::now_millis();
    let since = now - crate::health::score::WINDOW - 24 * 3_600_000;
    let facts = crate::health::facts::gather(&served.reader, &spec.name, since)
        .await
        .map_err(ApiError::internal)?;
    let score = crate::health::score::health_score(&spec, &facts, crate::health::zone(&spec), now);
    let mut document = crate::health::score::to_json(&score);
    document["pipeline"] = spec.name.clone().into();
    Ok(document)
}

/// `GET /api/pipelines/{pipeline}/health-score`.
pub async fn health_score(
    State(context): State<Arc<ApiContext>>,
    path: Result<Path<PipelinePath>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let Path(path) = path?;
    let served = context.pipeline(&path.pipeline)?;
    Ok(Json(score_of(served).await?))
}

/// `GET /api/health-score`: every served pipeline's.
pub async fn health_scores(
    State(context): State<Arc<ApiContext>>,
) -> Result<Json<Value>, ApiError> {
    let mut pipelines = Vec::new();
    for served in &context.pipelines {
        pipelines.push(score_of(served).await?);
    }
    Ok(Json(json!({ "pipelines": pipelines })))
}
