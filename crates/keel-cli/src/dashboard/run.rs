//! The page of one run (its header, a timeline of its attempts, its gates, tasks and event log,
//! and the actions on it) and the page of one attempt with a page of its log.
//!
//! Both read through the served pipeline's reader connection only, like the API's reads.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;

use askama::Template;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use keel_model::{EventKind, Millis, PipelineSpec};
use keel_store::{
    AttemptKind, AttemptRecord, EventRecord, GateRecord, GateState, RunView, StatusQuery, Store,
    TaskRunRecord,
};
use serde::Deserialize;

use super::view::{self, Chrome, TimeScale, escape_xml, path_segment};
use super::{PageError, html};
use crate::api::{ApiContext, ApiError, ServedPipeline};
use crate::display::printable;

/// The newest events the run page lists; older ones are counted, not shown.
const EVENTS_SHOWN: usize = 500;
/// Bytes of log one attempt page shows.
const LOG_PAGE: u64 = 64 * 1024;

#[derive(Deserialize)]
pub struct RunPath {
    pipeline: String,
    run: i64,
}

#[derive(Deserialize)]
pub struct AttemptPath {
    pipeline: String,
    run: i64,
    task: String,
    attempt: u32,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AttemptQuery {
    /// The byte of the log the page starts at; the last page when not given.
    offset: Option<u64>,
}

#[derive(Template)]
#[template(path = "run.html")]
pub struct RunPage {
    pub chrome: Chrome,
    pub id: i64,
    pub partition: String,
    pub pass: Option<String>,
    pub state: &'static str,
    pub state_class: &'static str,
    pub created: String,
    pub finished: Option<String>,
    pub duration: String,
    pub version: String,
    pub trace_id: String,
    pub message: Option<String>,
    pub accepted: Option<String>,
    pub cancel_requested: bool,
    /// The timeline: an SVG built from numbers and escaped text only.
    pub gantt: String,
    pub gates: Vec<GateRow>,
    pub degraded_because: Vec<String>,
    pub tasks: Vec<TaskRow>,
    pub events: Vec<EventRow>,
    pub events_left_out: usize,
    pub actions: Actions,
}

/// The API endpoints of the actions the page offers.
pub struct Actions {
    pub retry: String,
    /// Only while the run is unfinished.
    pub cancel: Option<String>,
    /// Only once the run has finished without succeeding.
    pub accept: Option<String>,
}

/// One gate of the run.
pub struct GateRow {
    pub phase: String,
    pub status: String,
    pub class: &'static str,
    /// When it became sufficient, and what the event said.
    pub sufficient: Vec<(String, String)>,
    /// When it opened (or failed), and what the event said.
    pub opened: Vec<(String, String)>,
    pub waived: Vec<String>,
}

/// One task of the run.
pub struct TaskRow {
    pub name: String,
    pub phase: String,
    pub class: &'static str,
    pub word: &'static str,
    pub attempts: String,
    pub worked: String,
    pub rows: String,
    pub metrics: String,
    pub message: String,
    /// (attempt number, its page)
    pub links: Vec<(u32, String)>,
    /// For an expanded task (`expand`): its items as one line (`438/450 · 12 failed`), and each
    /// item's row, shown folded under it.
    pub items: Option<String>,
    pub item_rows: Vec<TaskRow>,
    pub frozen: bool,
}

/// One entry of the event log.
pub struct EventRow {
    pub at: String,
    pub kind: &'static str,
    pub task: String,
    pub attempt: String,
    pub detail: String,
}

pub async fn run_page(
    State(context): State<Arc<ApiContext>>,
    path: Result<Path<RunPath>, PathRejection>,
) -> Result<Response, PageError> {
    let Path(path) = path.map_err(ApiError::from)?;
    let served = context.pipeline(&path.pipeline)?;
    let run = run_view(served, path.run).await?;
    let gates = served
        .reader
        .gates(run.record.id)
        .await
        .map_err(store_error)?;
    let events = served
        .reader
        .events(run.record.id)
        .await
        .map_err(store_error)?;
    let page = render_run(
        &context,
        &served.spec(),
        &run,
        &gates,
        &events,
        crate::state::now_millis(),
    );
    Ok(html(&page))
}

fn store_error(error: keel_store::StoreError) -> ApiError {
    ApiError::internal(error.into())
}

/// Run `id` of `served` with its tasks and attempts, or a 404 that says where the runs are.
async fn run_view(served: &ServedPipeline, id: i64) -> Result<RunView, ApiError> {
    let record = served.run(id).await?;
    let query = StatusQuery::new(served.spec().name.clone()).run(record.id);
    let view = served
        .reader
        .status_view(&query)
        .await
        .map_err(store_error)?;
    view.runs
        .into_iter()
        .next()
        .ok_or_else(|| served.no_run(id))
}

/// The run page from what was read.
pub fn render_run(
    context: &ApiContext,
    spec: &PipelineSpec,
    run: &RunView,
    gates: &[GateRecord],
    events: &[EventRecord],
    now: Millis,
) -> RunPage {
    let record = &run.record;
    let finished = record.state.is_finished();
    let mut chrome = Chrome::new(
        context,
        spec,
        format!("run {} · {} · Keel", record.id.0, spec.name),
        "",
    );
    chrome.live = !finished;
    let waived: HashSet<&str> = gates
        .iter()
        .flat_map(|gate| gate.waived.iter().map(String::as_str))
        .collect();
    let lanes = lanes(spec, run);
    let numbers: HashMap<keel_model::AttemptId, u32> = run
        .attempts
        .iter()
        .map(|attempt| (attempt.id, attempt.number))
        .collect();
    // Items are listed folded under their expanded task, not as tasks of their own.
    let counts = crate::display::item_counts(run);
    let tasks = lanes
        .iter()
        .flat_map(|(_, tasks)| tasks.iter())
        .filter(|task| !crate::display::is_item_row(task, &counts))
        .map(|task| {
            let mut row = task_row(spec, run, task, waived.contains(task.task.as_str()), now);
            if let Some(counts) = counts.get(&task.task) {
                row.items = Some(counts.summary());
                row.item_rows = run
                    .tasks
                    .iter()
                    .filter(|item| {
                        keel_model::expand::split_item_name(&item.task)
                            .is_some_and(|(parent, _)| parent == task.task)
                    })
                    .map(|item| task_row(spec, run, item, false, now))
                    .collect();
            }
            row
        })
        .collect();
    let gantt_lanes: Vec<(String, Vec<&TaskRunRecord>)> = lanes
        .iter()
        .map(|(phase, tasks)| {
            let own = tasks
                .iter()
                .filter(|task| !crate::display::is_item_row(task, &counts))
                .copied()
                .collect();
            (phase.clone(), own)
        })
        .collect();
    let events_left_out = events.len().saturating_sub(EVENTS_SHOWN);
    let event_rows = events[events_left_out..]
        .iter()
        .map(|event| EventRow {
            at: view::local_time(spec, event.at),
            kind: event.kind.as_str(),
            task: event.task.as_deref().map(printable).unwrap_or_default(),
            attempt: event
                .attempt
                .and_then(|id| numbers.get(&id))
                .map(|number| format!("#{number}"))
                .unwrap_or_default(),
            detail: printable(&event.detail),
        })
        .collect();
    let api = format!(
        "/api/pipelines/{}/runs/{}",
        path_segment(&spec.name),
        record.id.0
    );
    RunPage {
        chrome,
        id: record.id.0,
        partition: record.partition.clone(),
        pass: record.pass.clone(),
        state: record.state.as_str(),
        state_class: view::run_class(record.state),
        created: view::local_time(spec, record.created_at),
        finished: record.finished_at.map(|at| view::local_time(spec, at)),
        duration: view::duration(record.finished_at.unwrap_or(now) - record.created_at),
        version: record.version.clone(),
        trace_id: record.trace_id.clone(),
        message: record.message.as_deref().map(printable),
        accepted: run.accepted.as_deref().map(printable),
        cancel_requested: record.cancel_requested,
        gantt: gantt(spec, run, events, &gantt_lanes, now),
        gates: gates
            .iter()
            .map(|gate| gate_row(spec, gate, events))
            .collect(),
        degraded_because: crate::api::degraded_because(run, gates)
            .iter()
            .map(|reason| printable(reason))
            .collect(),
        tasks,
        events: event_rows,
        events_left_out,
        actions: Actions {
            retry: format!("{api}/retry"),
            cancel: (!finished).then(|| format!("{api}/cancel")),
            accept: (finished && record.state != keel_model::RunState::Succeeded)
                .then(|| format!("{api}/accept")),
        },
    }
}

/// The run's tasks grouped by phase: the pipeline's phases in file order (then any the run has
/// that the file no longer does), each with its tasks in file order.
fn lanes<'a>(spec: &PipelineSpec, run: &'a RunView) -> Vec<(String, Vec<&'a TaskRunRecord>)> {
    let mut phases: Vec<String> = spec.phases.iter().map(|phase| phase.name.clone()).collect();
    for task in &run.tasks {
        if !phases.contains(&task.phase) {
            phases.push(task.phase.clone());
        }
    }
    let order = |task: &TaskRunRecord| {
        spec.tasks
            .iter()
            .position(|defined| defined.name == task.task)
            .unwrap_or(usize::MAX)
    };
    phases
        .into_iter()
        .filter_map(|phase| {
            let mut tasks: Vec<&TaskRunRecord> = run
                .tasks
                .iter()
                .filter(|task| task.phase == phase)
                .collect();
            tasks.sort_by_key(|task| order(task));
            (!tasks.is_empty()).then_some((phase, tasks))
        })
        .collect()
}

fn task_row(
    spec: &PipelineSpec,
    run: &RunView,
    task: &TaskRunRecord,
    waived: bool,
    now: Millis,
) -> TaskRow {
    let (class, word) = view::task_class(task, waived);
    let summary = run.task_summary(&task.task, now);
    let worked = if run.attempts_of(&task.task).next().is_some() {
        view::duration(summary.worked)
    } else {
        String::new()
    };
    TaskRow {
        name: task.task.clone(),
        phase: task.phase.clone(),
        class,
        word,
        attempts: crate::display::attempts_cell(&summary),
        worked,
        rows: summary
            .rows
            .map(|rows| rows.to_string())
            .unwrap_or_default(),
        metrics: crate::display::metrics_cell(summary.metrics.as_deref()),
        message: task.message.as_deref().map(printable).unwrap_or_default(),
        links: run
            .attempts_of(&task.task)
            .map(|attempt| {
                (
                    attempt.number,
                    view::attempt_url(
                        &view::pipeline_url(&spec.name),
                        run.record.id,
                        &task.task,
                        attempt.number,
                    ),
                )
            })
            .collect(),
        items: None,
        item_rows: Vec::new(),
        frozen: view::is_frozen(task),
    }
}

/// The phase a gate event is about: its detail starts `phase NAME: `.
fn gate_event_phase(event: &EventRecord) -> Option<&str> {
    let rest = event.detail.strip_prefix("phase ")?;
    rest.split_once(':').map(|(phase, _)| phase)
}

fn gate_row(spec: &PipelineSpec, gate: &GateRecord, events: &[EventRecord]) -> GateRow {
    let (status, class) = match gate.status {
        GateState::Waiting => ("waiting".to_string(), "waiting"),
        GateState::Sufficient { open_at } => (
            format!("sufficient until {}", view::local_time(spec, open_at)),
            "retrying",
        ),
        GateState::Open if gate.waived.is_empty() => ("open".to_string(), "succeeded"),
        GateState::Open => ("open".to_string(), "degraded"),
        GateState::Failed => ("failed".to_string(), "failed"),
    };
    let of_gate = |kinds: &[EventKind]| -> Vec<(String, String)> {
        events
            .iter()
            .filter(|event| {
                kinds.contains(&event.kind) && gate_event_phase(event) == Some(gate.phase.as_str())
            })
            .map(|event| (view::local_time(spec, event.at), printable(&event.detail)))
            .collect()
    };
    GateRow {
        phase: gate.phase.clone(),
        status,
        class,
        sufficient: of_gate(&[EventKind::GateSufficient]),
        opened: of_gate(&[EventKind::GateOpened, EventKind::GateFailed]),
        waived: gate.waived.clone(),
    }
}

/// The timeline's layout, in the units of its viewBox.
const GANTT_WIDTH: f64 = 1000.0;
const GANTT_LABELS: f64 = 170.0;
const GANTT_RIGHT: f64 = 20.0;
const GANTT_AXIS: f64 = 30.0;
const GANTT_ROW: f64 = 20.0;
const GANTT_BAR: f64 = 12.0;
/// The narrowest bar, so an attempt of a few milliseconds still shows and takes a click.
const GANTT_MIN_BAR: f64 = 3.0;

/// The class that colours an attempt's bar.
fn attempt_class(run: &RunView, attempt: &AttemptRecord) -> &'static str {
    if run.kinds.get(&attempt.id) == Some(&AttemptKind::Check) {
        return "waiting";
    }
    match attempt.outcome {
        Some(outcome) => view::outcome_class(outcome),
        None => "running",
    }
}

/// The run's timeline as an inline SVG: a row per task under its phase's label, a bar per
/// attempt linking to its page, sensor polls before the first attempt, owed reruns, and a line
/// where each gate became sufficient or opened. Every piece of text in it is escaped.
fn gantt(
    spec: &PipelineSpec,
    run: &RunView,
    events: &[EventRecord],
    lanes: &[(String, Vec<&TaskRunRecord>)],
    now: Millis,
) -> String {
    let record = &run.record;
    let end = record.finished_at.unwrap_or(now);
    let scale = TimeScale::new(
        record.created_at,
        end,
        GANTT_LABELS,
        GANTT_WIDTH - GANTT_LABELS - GANTT_RIGHT,
    );
    let rows = lanes
        .iter()
        .map(|(_, tasks)| tasks.len() + 1)
        .sum::<usize>();
    let height = GANTT_AXIS + rows as f64 * GANTT_ROW + 4.0;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" class="gantt" viewBox="0 0 {GANTT_WIDTH} {height}" width="100%" preserveAspectRatio="xMinYMin meet" role="img" aria-label="timeline of run {}">"#,
        record.id.0
    );
    for (offset, x) in scale.ticks(8) {
        let label = if offset == 0 {
            "0".to_string()
        } else {
            format!("+{}", view::duration(offset))
        };
        let _ = write!(
            svg,
            r#"<line class="tick" x1="{x:.1}" y1="{}" x2="{x:.1}" y2="{height}"/><text class="tick-label" x="{x:.1}" y="{}" text-anchor="middle">{}</text>"#,
            GANTT_AXIS - 6.0,
            GANTT_AXIS - 10.0,
            escape_xml(&label)
        );
    }
    let mut task_y: HashMap<&str, f64> = HashMap::new();
    let mut y = GANTT_AXIS;
    for (phase, tasks) in lanes {
        let _ = write!(
            svg,
            r#"<text class="phase-label" x="4" y="{:.1}">{}<title>{}</title></text><line class="axis" x1="0" y1="{y:.1}" x2="{GANTT_WIDTH}" y2="{y:.1}"/>"#,
            y + 14.0,
            escape_xml(&label(phase)),
            escape_xml(phase)
        );
        y += GANTT_ROW;
        for task in tasks {
            task_y.insert(task.task.as_str(), y);
            task_bars(&mut svg, spec, run, events, task, &scale, y, now);
            y += GANTT_ROW;
        }
    }
    for event in events
        .iter()
        .filter(|event| event.kind == EventKind::RerunOwed)
    {
        let Some(row) = event.task.as_deref().and_then(|task| task_y.get(task)) else {
            continue;
        };
        let x = scale.x(event.at);
        let middle = row + GANTT_ROW / 2.0;
        let _ = write!(
            svg,
            r#"<path class="rerun-owed" d="M{x:.1} {:.1} l4 5 l-4 5 l-4 -5 z"><title>{}</title></path>"#,
            middle - 5.0,
            escape_xml(&format!(
                "{} · rerun owed: {}",
                view::local_time(spec, event.at),
                printable(&event.detail)
            ))
        );
    }
    for event in events.iter().filter(|event| {
        matches!(
            event.kind,
            EventKind::GateSufficient | EventKind::GateOpened
        )
    }) {
        let x = scale.x(event.at);
        let (class, word) = match event.kind {
            EventKind::GateSufficient => ("gate-sufficient", "sufficient"),
            _ => ("gate-opened", "opened"),
        };
        let phase = gate_event_phase(event).unwrap_or("gate");
        // A line in the right half is labelled on its left, so the label stays in the picture.
        let (label_x, anchor) = if x > GANTT_WIDTH / 2.0 {
            (x - 3.0, "end")
        } else {
            (x + 3.0, "start")
        };
        let _ = write!(
            svg,
            r#"<line class="gate-line {class}" x1="{x:.1}" y1="{GANTT_AXIS}" x2="{x:.1}" y2="{height}"><title>{}</title></line><text class="gate-label {class}" x="{:.1}" y="{:.1}" text-anchor="{anchor}">{} {word}</text>"#,
            escape_xml(&format!(
                "{} · {}",
                view::local_time(spec, event.at),
                printable(&event.detail)
            )),
            label_x,
            GANTT_AXIS + 11.0,
            escape_xml(phase)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// The most characters of a label left of the timeline; longer names are cut with `…` (their
/// whole name is the label's title).
const GANTT_LABEL_CHARS: usize = 24;

fn label(name: &str) -> String {
    if name.chars().count() <= GANTT_LABEL_CHARS {
        return name.to_string();
    }
    let cut: String = name.chars().take(GANTT_LABEL_CHARS - 1).collect();
    format!("{cut}…")
}

/// One task's row: its label, its sensor's polls before its first attempt, and its attempts.
#[allow(clippy::too_many_arguments)]
fn task_bars(
    svg: &mut String,
    spec: &PipelineSpec,
    run: &RunView,
    events: &[EventRecord],
    task: &TaskRunRecord,
    scale: &TimeScale,
    y: f64,
    now: Millis,
) {
    let name = task.task.as_str();
    let middle = y + GANTT_ROW / 2.0;
    let _ = write!(
        svg,
        r#"<text class="task-label" x="14" y="{:.1}">{}<title>{}</title></text>"#,
        y + 14.0,
        escape_xml(&label(name)),
        escape_xml(name)
    );
    let first_attempt = run
        .attempts_of(name)
        .next()
        .map(|attempt| attempt.claimed_at);
    let polls: Vec<&EventRecord> = events
        .iter()
        .filter(|event| {
            event.kind == EventKind::SensorPolled
                && event.task.as_deref() == Some(name)
                && first_attempt.is_none_or(|at| event.at <= at)
        })
        .collect();
    if let (Some(first), Some(last)) = (polls.first(), polls.last()) {
        let until = first_attempt.unwrap_or(last.at);
        let _ = write!(
            svg,
            r#"<line class="sensor-wait" x1="{:.1}" y1="{middle:.1}" x2="{:.1}" y2="{middle:.1}"/>"#,
            scale.x(first.at),
            scale.x(until)
        );
        for poll in &polls {
            let _ = write!(
                svg,
                r#"<circle class="sensor-poll" cx="{:.1}" cy="{middle:.1}" r="2.5"><title>{}</title></circle>"#,
                scale.x(poll.at),
                escape_xml(&format!(
                    "{} · sensor polled: {}",
                    view::local_time(spec, poll.at),
                    printable(&poll.detail)
                ))
            );
        }
    }
    // An expanded task's lane holds its items' attempts: one lane for them all, not one each.
    let attempts = run.attempts.iter().filter(|attempt| {
        attempt.task == name
            || keel_model::expand::split_item_name(&attempt.task)
                .is_some_and(|(parent, _)| parent == name)
    });
    for attempt in attempts {
        let name = attempt.task.as_str();
        let began = attempt.started_at.unwrap_or(attempt.claimed_at);
        let ended = attempt.finished_at.unwrap_or(now);
        let left = scale.x(began);
        let width = (scale.x(ended) - left).max(GANTT_MIN_BAR);
        let class = attempt_class(run, attempt);
        let outcome = attempt
            .outcome
            .map(|outcome| outcome.as_str())
            .unwrap_or("running");
        let title = format!(
            "{name} #{}: {outcome} · {} · from {}",
            attempt.number,
            view::duration(ended - began),
            view::local_time(spec, began)
        );
        let _ = write!(
            svg,
            r#"<a href="{}"><rect class="bar {class}" data-task="{}" data-attempt="{}" x="{left:.1}" y="{:.1}" width="{width:.1}" height="{GANTT_BAR}" rx="2"><title>{}</title></rect></a>"#,
            escape_xml(&view::attempt_url(
                &view::pipeline_url(&spec.name),
                run.record.id,
                name,
                attempt.number
            )),
            escape_xml(name),
            attempt.number,
            y + (GANTT_ROW - GANTT_BAR) / 2.0,
            escape_xml(&title)
        );
    }
}

#[derive(Template)]
#[template(path = "attempt.html")]
pub struct AttemptPage {
    pub chrome: Chrome,
    pub run_url: String,
    pub run: i64,
    pub task: String,
    pub number: u32,
    pub kind: &'static str,
    pub outcome: &'static str,
    pub class: &'static str,
    pub exit_code: String,
    pub claimed: String,
    pub started: String,
    pub finished: String,
    pub duration: String,
    pub rows: String,
    pub metrics: String,
    pub message: String,
    pub version: String,
    pub log: LogPage,
    /// Earlier and later pages of the log.
    pub prev: Option<String>,
    pub next: Option<String>,
    /// The API's log of the attempt, followed while it runs.
    pub follow: Option<String>,
}

/// One page of an attempt's log: bytes `start..end` of `size`, cut at characters.
pub struct LogPage {
    pub text: String,
    pub start: u64,
    pub end: u64,
    pub size: u64,
    /// Whether the attempt has written a log at all yet.
    pub exists: bool,
}

pub async fn attempt_page(
    State(context): State<Arc<ApiContext>>,
    path: Result<Path<AttemptPath>, PathRejection>,
    query: Result<Query<AttemptQuery>, QueryRejection>,
) -> Result<Response, PageError> {
    let Path(path) = path.map_err(ApiError::from)?;
    let Query(query) = query.map_err(ApiError::from)?;
    let served = context.pipeline(&path.pipeline)?;
    served.check_task(&path.task)?;
    let spec = served.spec();
    if path.attempt == 0 {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("there is no attempt 0 of task {:?}", path.task),
            format!(
                "attempts are numbered from 1; the run's page links each: {}",
                view::run_url(&view::pipeline_url(&spec.name), keel_model::RunId(path.run))
            ),
        )
        .into());
    }
    let run = run_view(served, path.run).await?;
    let run_url = view::run_url(&view::pipeline_url(&spec.name), run.record.id);
    let attempt = run
        .attempts_of(&path.task)
        .find(|attempt| attempt.number == path.attempt)
        .cloned()
        .ok_or_else(|| {
            let made = run.attempts_of(&path.task).count();
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "task {:?} has no attempt {} in run {}: it has {}",
                    path.task,
                    path.attempt,
                    run.record.id,
                    crate::display::count(made as u64, "attempt", "attempts")
                ),
                format!("the run's page links each attempt: {run_url}"),
            )
        })?;
    let file = std::path::Path::new(&attempt.dir).join(keel_exec::supervisor::OUTPUT_FILE);
    let offset = query.offset;
    let log = tokio::task::spawn_blocking(move || read_log_page(&file, offset))
        .await
        .map_err(|error| ApiError::internal(anyhow::anyhow!("reading the log failed: {error}")))?
        .map_err(|problem| match problem {
            LogProblem::Beyond { size } => ApiError::bad_request(
                format!(
                    "offset {} is past the end of the log of attempt {} of {:?}, which has {size} bytes",
                    offset.unwrap_or_default(),
                    attempt.number,
                    path.task
                ),
                format!(
                    "leave offset out for the last page: {}",
                    view::attempt_url(&view::pipeline_url(&spec.name), run.record.id, &path.task, attempt.number)
                ),
            ),
            LogProblem::File(problem) => ApiError::internal(anyhow::anyhow!(
                "cannot show the log of attempt {} of {:?}: {problem}; Keel wrote it as a plain file, so something replaced it",
                attempt.number,
                path.task
            )),
        })?;
    Ok(html(&render_attempt(
        &context,
        &spec,
        &run,
        &attempt,
        log,
        crate::state::now_millis(),
    )))
}

/// Why a page of a log cannot be shown.
enum LogProblem {
    /// The offset asked for is past the end of a log of `size` bytes.
    Beyond {
        size: u64,
    },
    File(keel_exec::FileProblem),
}

/// The page of the log at `path` that starts at `offset` (the last page when `None`), read the
/// way the API's log is: never through a link, only from a plain file. Blocks: call it on
/// `spawn_blocking`.
fn read_log_page(path: &std::path::Path, offset: Option<u64>) -> Result<LogPage, LogProblem> {
    let Some(mut file) = keel_exec::open_regular_file(path).map_err(LogProblem::File)? else {
        return match offset {
            None | Some(0) => Ok(LogPage {
                text: String::new(),
                start: 0,
                end: 0,
                size: 0,
                exists: false,
            }),
            Some(_) => Err(LogProblem::Beyond { size: 0 }),
        };
    };
    let size = file.metadata().map(|metadata| metadata.len()).unwrap_or(0);
    let start = offset.unwrap_or_else(|| size.saturating_sub(LOG_PAGE));
    if start > size {
        return Err(LogProblem::Beyond { size });
    }
    file.seek(SeekFrom::Start(start))
        .map_err(|error| LogProblem::File(keel_exec::FileProblem::Io(error)))?;
    let mut bytes = Vec::new();
    file.take(LOG_PAGE)
        .read_to_end(&mut bytes)
        .map_err(|error| LogProblem::File(keel_exec::FileProblem::Io(error)))?;
    let read_to = start + bytes.len() as u64;
    let piece = view::utf8_piece(&bytes, start > 0, read_to < size);
    Ok(LogPage {
        text: String::from_utf8_lossy(&bytes[piece.clone()]).into_owned(),
        start: start + piece.start as u64,
        end: start + piece.end as u64,
        size: size.max(read_to),
        exists: true,
    })
}

/// The attempt page from what was read.
fn render_attempt(
    context: &ApiContext,
    spec: &PipelineSpec,
    run: &RunView,
    attempt: &AttemptRecord,
    log: LogPage,
    now: Millis,
) -> AttemptPage {
    let record = &run.record;
    let mut chrome = Chrome::new(
        context,
        spec,
        format!(
            "{} #{} · run {} · {} · Keel",
            attempt.task, attempt.number, record.id.0, spec.name
        ),
        "",
    );
    let running = attempt.finished_at.is_none();
    chrome.live = running;
    let kind = match run
        .kinds
        .get(&attempt.id)
        .copied()
        .unwrap_or(AttemptKind::Attempt)
    {
        AttemptKind::Attempt => "attempt",
        AttemptKind::Check => "not-ready check",
        AttemptKind::Probe => "breaker probe",
    };
    let url = view::attempt_url(
        &view::pipeline_url(&spec.name),
        record.id,
        &attempt.task,
        attempt.number,
    );
    let prev =
        (log.start > 0).then(|| format!("{url}?offset={}", log.start.saturating_sub(LOG_PAGE)));
    let next = (log.end < log.size).then(|| format!("{url}?offset={}", log.end));
    let follow = running.then(|| {
        format!(
            "/api/pipelines/{}/runs/{}/tasks/{}/attempts/{}/log",
            path_segment(&spec.name),
            record.id.0,
            path_segment(&attempt.task),
            attempt.number
        )
    });
    let time = |at: Option<Millis>| {
        at.map(|at| view::local_time(spec, at))
            .unwrap_or_else(|| "–".to_string())
    };
    let began = attempt.started_at.unwrap_or(attempt.claimed_at);
    AttemptPage {
        chrome,
        run_url: view::run_url(&view::pipeline_url(&spec.name), record.id),
        run: record.id.0,
        task: attempt.task.clone(),
        number: attempt.number,
        kind,
        outcome: attempt
            .outcome
            .map(|outcome| outcome.as_str())
            .unwrap_or("running"),
        class: attempt_class(run, attempt),
        exit_code: attempt
            .exit_code
            .map(|code| code.to_string())
            .unwrap_or_else(|| "–".to_string()),
        claimed: view::local_time(spec, attempt.claimed_at),
        started: time(attempt.started_at),
        finished: time(attempt.finished_at),
        duration: view::duration(attempt.finished_at.unwrap_or(now) - began),
        rows: attempt
            .rows
            .map(|rows| rows.to_string())
            .unwrap_or_default(),
        metrics: crate::display::metrics_cell(attempt.metrics.as_deref()),
        message: attempt
            .message
            .as_deref()
            .map(printable)
            .unwrap_or_default(),
        version: attempt.version.clone().unwrap_or_default(),
        log,
        prev,
        next,
        follow,
    }
}
