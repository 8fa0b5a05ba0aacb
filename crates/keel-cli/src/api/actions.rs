//! The endpoints that change the state: trigger runs, retry, cancel, accept. Each needs the
//! bearer token, goes through the same function as its CLI command, and only writes the store:
//! the serving engine takes the change up on its next poll.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use keel_engine::{Prepared, RunRequest};
use keel_store::Store;
use serde::Deserialize;
use serde_json::{Value, json};

use super::reads::{PipelinePath, RunPath};
use super::{ApiContext, ApiError, ServedPipeline, authorize, parse_body};
use crate::setup::ProcessEngine;
use crate::state;

/// The most partitions one trigger may queue.
const MAX_PARTITIONS: usize = 366;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TriggerBody {
    partition: Option<String>,
    from: Option<String>,
    to: Option<String>,
    #[serde(default)]
    only: Vec<String>,
    #[serde(default)]
    rerun: bool,
    pass: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RetryBody {
    #[serde(default)]
    tasks: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AcceptBody {
    #[serde(default)]
    by: String,
    reason: Option<String>,
}

/// An engine over the API's own connection, as `keel run --detach` builds one: it only
/// prepares runs and resets tasks in the store, and never executes anything.
fn engine(served: &ServedPipeline) -> Result<ProcessEngine, ApiError> {
    // It runs no attempt, so it needs no task versions: their version commands are not run on
    // the API's runtime.
    crate::setup::build_engine_versioned(
        (*served.spec()).clone(),
        &served.paths,
        served.writer.clone(),
        Vec::new(),
        Some(std::collections::HashMap::new()),
        None,
    )
    .map_err(|error| ApiError::from_command(error, StatusCode::CONFLICT))
}

pub async fn trigger(
    State(context): State<Arc<ApiContext>>,
    headers: HeaderMap,
    path: Result<Path<PipelinePath>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    authorize(&context, &headers)?;
    let Path(path) = path?;
    let served = context.pipeline(&path.pipeline)?;
    let body: TriggerBody = parse_body(body)?;
    if body.partition.is_some() && (body.from.is_some() || body.to.is_some()) {
        return Err(ApiError::bad_request(
            "partition cannot be given with from/to",
            "trigger one partition, or a range with from and to",
        ));
    }
    if body.from.is_some() != body.to.is_some() {
        return Err(ApiError::bad_request(
            "from and to go together",
            "give both, such as {\"from\": \"2026-01-01\", \"to\": \"2026-01-31\"}",
        ));
    }
    let partitions = state::partitions(
        &served.spec(),
        &crate::args::PartitionArgs {
            partition: body.partition,
            from: body.from,
            to: body.to,
        },
    )
    .map_err(|error| ApiError::from_command(error, StatusCode::BAD_REQUEST))?;
    if partitions.len() > MAX_PARTITIONS {
        return Err(ApiError::bad_request(
            format!(
                "the range holds {} partitions, more than {MAX_PARTITIONS}",
                partitions.len()
            ),
            "trigger a shorter range, one request after another",
        ));
    }
    let request = RunRequest {
        partitions,
        only: body.only,
        rerun: body.rerun,
        pass: body.pass,
    };
    let _one_at_a_time = served.actions.lock().await;
    let mut engine = engine(served)?;
    let prepared = crate::commands::prepare(&mut engine, &request)
        .await
        .map_err(|error| ApiError::from_command(error, StatusCode::BAD_REQUEST))?;
    let mut runs = Vec::new();
    for decision in prepared {
        let (id, queued) = match decision {
            Prepared::Created(run) => (run, "created"),
            Prepared::Resumed(run) => (run, "resumed"),
            Prepared::AlreadyFinished(record) => (record.id, "already_finished"),
        };
        let record = served.run(id.0).await?;
        runs.push(json!({
            "run": record.id.0,
            "partition": record.partition,
            "state": record.state.as_str(),
            "queued": queued,
        }));
    }
    Ok((StatusCode::ACCEPTED, Json(json!({ "runs": runs }))))
}

pub async fn retry(
    State(context): State<Arc<ApiContext>>,
    headers: HeaderMap,
    path: Result<Path<RunPath>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    authorize(&context, &headers)?;
    let Path(path) = path?;
    let served = context.pipeline(&path.pipeline)?;
    let body: RetryBody = parse_body(body)?;
    for task in &body.tasks {
        served.check_task(task).map_err(|error| ApiError {
            status: StatusCode::BAD_REQUEST,
            ..error
        })?;
    }
    let _one_at_a_time = served.actions.lock().await;
    let record = served.run(path.run).await?;
    let newest = served
        .reader
        .latest_run(&served.spec().name, &record.partition)
        .await
        .map_err(|error| ApiError::internal(error.into()))?;
    if let Some(newest) = newest.filter(|newest| newest.id != record.id) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "run {} is not the newest run of partition {}; run {} is",
                record.id, record.partition, newest.id
            ),
            format!("retry run {} instead", newest.id),
        ));
    }
    if !record.state.is_finished() {
        return Err(ApiError::from_command(
            keel_engine::EngineError::RunActive {
                run: record.id,
                partition: record.partition.clone(),
                state: record.state,
            }
            .into(),
            StatusCode::CONFLICT,
        ));
    }
    let tasks = if body.tasks.is_empty() {
        crate::commands::failed_tasks(&served.writer, record.id)
            .await
            .map_err(ApiError::internal)?
    } else {
        body.tasks
    };
    if tasks.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("run {} has no failed task to retry", record.id),
            "name the tasks to run again in \"tasks\"",
        ));
    }
    let mut engine = engine(served)?;
    let run = crate::commands::reset_for_retry(&mut engine, &record.partition, &tasks)
        .await
        .map_err(|error| ApiError::from_command(error, StatusCode::BAD_REQUEST))?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "run": run.0, "partition": record.partition, "tasks": tasks })),
    ))
}

pub async fn cancel(
    State(context): State<Arc<ApiContext>>,
    headers: HeaderMap,
    path: Result<Path<RunPath>, PathRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    authorize(&context, &headers)?;
    let Path(path) = path?;
    let served = context.pipeline(&path.pipeline)?;
    let _one_at_a_time = served.actions.lock().await;
    let record = served.run(path.run).await?;
    if record.state.is_finished() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "run {} of partition {} already finished as {}",
                record.id, record.partition, record.state
            ),
            "there is nothing to cancel",
        ));
    }
    served
        .writer
        .request_cancel(record.id, state::now_millis())
        .await
        .map_err(|error| ApiError::internal(error.into()))?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "run": record.id.0,
            "partition": record.partition,
            "state": record.state.as_str(),
            "cancel_requested": true,
        })),
    ))
}

/// The most characters of `by` and `reason`.
const MAX_BY: usize = 200;
const MAX_REASON: usize = 2000;

pub async fn accept(
    State(context): State<Arc<ApiContext>>,
    headers: HeaderMap,
    path: Result<Path<RunPath>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Value>, ApiError> {
    authorize(&context, &headers)?;
    let Path(path) = path?;
    let served = context.pipeline(&path.pipeline)?;
    let body: AcceptBody = parse_body(body)?;
    // The length is the one sent, as the schema counts it; trimming comes after.
    let too_long = body.by.chars().count() > MAX_BY;
    let by = body.by.trim();
    if by.is_empty() || too_long || by.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "\"by\" must name who accepts the run",
            format!(
                "send {{\"by\": \"NAME\", \"reason\": \"WHY\"}}; NAME is 1 to {MAX_BY} characters on one line"
            ),
        ));
    }
    if body
        .reason
        .as_deref()
        .is_some_and(|reason| reason.chars().count() > MAX_REASON)
    {
        return Err(ApiError::bad_request(
            format!("\"reason\" is longer than {MAX_REASON} characters"),
            "say why in fewer words",
        ));
    }
    let _one_at_a_time = served.actions.lock().await;
    let record = served.run(path.run).await?;
    let detail = crate::operations::accept_run(&served.writer, &record, by, body.reason.as_deref())
        .await
        .map_err(|error| ApiError::from_command(error, StatusCode::CONFLICT))?;
    Ok(Json(json!({
        "run": record.id.0,
        "partition": record.partition,
        "state": record.state.as_str(),
        "accepted": detail,
    })))
}
