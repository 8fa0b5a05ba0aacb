//! The grid: partitions (rows, newest first) × tasks (columns, grouped by phase), each cell
//! coloured by how the task stands in the partition's run. Every date of the range gets a row,
//! so a partition that never ran shows as a gap.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use askama::Template;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use keel_model::{Millis, PartitionKind, PipelineSpec, RunState};
use keel_store::{GateRecord, RunView, StatusQuery, StatusView, Store};
use serde::Deserialize;

use super::view::{self, Chrome, path_segment};
use super::{PageError, html};
use crate::api::{ApiContext, ApiError, ServedPipeline};

/// Partitions shown when `days` is not given.
const DEFAULT_DAYS: u32 = 30;

#[derive(Deserialize)]
pub struct GridPath {
    pipeline: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct GridQuery {
    /// The newest partition shown; the newest that has a run when not given.
    pub to: Option<String>,
    /// How many partitions, back from `to`.
    pub days: Option<u32>,
}

#[derive(Template)]
#[template(path = "grid.html")]
pub struct GridPage {
    pub chrome: Chrome,
    /// (phase, how many task columns it spans)
    pub phases: Vec<(String, usize)>,
    /// Task names, in column order, with the URL of each task's history.
    pub tasks: Vec<(String, String)>,
    pub rows: Vec<Row>,
    /// Links to the page before (older) and after (newer), when there is one.
    pub older: Option<String>,
    pub newer: Option<String>,
    /// Counts of the shown runs by state, for the summary line.
    pub summary: Vec<(&'static str, String, usize)>,
    /// The feature flags set (`keel flags`): task and what it says.
    pub flags: Vec<(String, String)>,
}

/// One partition.
pub struct Row {
    pub partition: String,
    /// The partition's run (the pipeline's own, or a pass's when it has only those).
    pub run: Option<RunLink>,
    /// One per task column.
    pub cells: Vec<Cell>,
    /// The passes that ran on the partition, each with its state.
    pub passes: Vec<RunLink>,
}

pub struct RunLink {
    pub label: String,
    pub url: String,
    pub class: &'static str,
    pub state: &'static str,
}

pub struct Cell {
    pub class: &'static str,
    pub glyph: &'static str,
    /// What a pointer over the cell says.
    pub title: String,
    /// The attempt the cell links to, or the run when there is none.
    pub url: Option<String>,
    /// Marks of the passes that ran this task on the partition, one per pass run.
    pub marks: Vec<(&'static str, String)>,
    /// For an expanded task (`expand`): its items that succeeded, of all (`438/450`).
    pub items: Option<String>,
    /// The task keeps its outcome past its `freeze_after`: Keel did not run it again.
    pub frozen: bool,
}

pub async fn page(
    State(context): State<Arc<ApiContext>>,
    path: Result<Path<GridPath>, PathRejection>,
    query: Result<Query<GridQuery>, QueryRejection>,
) -> Result<Response, PageError> {
    let Path(path) = path.map_err(ApiError::from)?;
    let Query(query) = query.map_err(ApiError::from)?;
    let served = context.pipeline(&path.pipeline)?;
    let page = render(&context, served, &query, crate::state::now_millis()).await?;
    Ok(html(&page))
}

/// The grid page for `query`, read in two transactions: where the range ends, then the runs.
pub async fn render(
    context: &ApiContext,
    served: &ServedPipeline,
    query: &GridQuery,
    now: Millis,
) -> Result<GridPage, ApiError> {
    let spec = served.spec();
    let days = view::days(query.days, DEFAULT_DAYS)?;
    let partitions = partitions(served, &spec, query.to.as_deref(), days).await?;
    let view = match (partitions.last(), partitions.first()) {
        (Some(oldest), Some(newest)) => {
            let mut status = StatusQuery::new(spec.name.clone());
            status.partitions = Some((oldest.clone(), newest.clone()));
            served
                .reader
                .status_view(&status)
                .await
                .map_err(|error| ApiError::internal(error.into()))?
        }
        _ => StatusView::default(),
    };
    let mut waived: HashMap<keel_model::RunId, Vec<String>> = HashMap::new();
    for run in view
        .runs
        .iter()
        .filter(|run| !matches!(run.record.state, RunState::Succeeded))
    {
        let gates: Vec<GateRecord> = served
            .reader
            .gates(run.record.id)
            .await
            .map_err(|error| ApiError::internal(error.into()))?;
        waived.insert(
            run.record.id,
            gates.into_iter().flat_map(|gate| gate.waived).collect(),
        );
    }
    let mut by_partition: HashMap<&str, Vec<&RunView>> = HashMap::new();
    for run in &view.runs {
        by_partition
            .entry(run.record.partition.as_str())
            .or_default()
            .push(run);
    }
    let base = view::pipeline_url(&spec.name);
    // Dates before the first run are no gaps: the pipeline did not exist yet.
    let mut partitions = partitions;
    let trimmed = query.to.is_none()
        && partitions.len() > 1
        && !by_partition.is_empty()
        && partitions
            .last()
            .is_some_and(|oldest| !by_partition.contains_key(oldest.as_str()));
    while partitions.len() > 1
        && trimmed
        && partitions
            .last()
            .is_some_and(|oldest| !by_partition.contains_key(oldest.as_str()))
    {
        partitions.pop();
    }
    let mut summary: BTreeMap<&'static str, usize> = BTreeMap::new();
    let rows: Vec<Row> = partitions
        .iter()
        .map(|partition| {
            let runs = by_partition
                .get(partition.as_str())
                .cloned()
                .unwrap_or_default();
            let row = row(&spec, &base, partition, &runs, &waived, now);
            if let Some(run) = &row.run {
                *summary.entry(run.state).or_default() += 1;
            } else {
                *summary.entry("no run").or_default() += 1;
            }
            row
        })
        .collect();
    let (phases, tasks) = columns(&spec, &base);
    let (older, newer) = paging(&spec, &base, &partitions, query.to.as_deref(), days);
    let older = older.filter(|_| !trimmed);
    let mut chrome = Chrome::new(context, &spec, format!("{} · Keel", spec.name), "grid");
    chrome.live = rows.iter().any(|row| {
        row.run
            .as_ref()
            .is_some_and(|run| matches!(run.state, "running" | "queued"))
    }) || query.to.is_none();
    Ok(GridPage {
        chrome,
        phases,
        tasks,
        rows,
        older,
        newer,
        summary: summary
            .into_iter()
            .map(|(state, count)| (state_class(state), state.to_string(), count))
            .collect(),
        flags: view
            .flags
            .iter()
            .map(|flag| (flag.task.clone(), flag.state.clone()))
            .collect(),
    })
}

fn state_class(state: &str) -> &'static str {
    state
        .parse::<RunState>()
        .map(view::run_class)
        .unwrap_or("none")
}

/// The partitions the grid shows, newest first: `days` dates back from `to` (or from the newest
/// partition that has a run), or the one partition of a pipeline without dates.
async fn partitions(
    served: &ServedPipeline,
    spec: &PipelineSpec,
    to: Option<&str>,
    days: u32,
) -> Result<Vec<String>, ApiError> {
    if spec.partition == PartitionKind::None {
        return Ok(vec!["none".to_string()]);
    }
    let newest = match to {
        Some(text) => {
            crate::state::resolve_date(spec, "to", text).map_err(|error| bad_date(error, text))?
        }
        None => {
            let mut query = StatusQuery::new(spec.name.clone());
            query.limit = Some(1);
            let view = served
                .reader
                .status_view(&query)
                .await
                .map_err(|error| ApiError::internal(error.into()))?;
            match view.runs.first() {
                Some(run) => crate::state::parse_date("partition", &run.record.partition)
                    .map_err(ApiError::internal)?,
                None => match crate::state::default_partition(spec) {
                    Ok(partition) => crate::state::parse_date("partition", &partition)
                        .map_err(ApiError::internal)?,
                    Err(error) => return Err(ApiError::internal(error)),
                },
            }
        }
    };
    Ok(newest
        .iter_days()
        .rev()
        .take(days as usize)
        .map(|date| date.format("%Y-%m-%d").to_string())
        .collect())
}

fn bad_date(error: anyhow::Error, text: &str) -> ApiError {
    ApiError::bad_request(
        format!(
            "bad partition {:?} for to: {error:#}",
            crate::display::printable(text)
        ),
        "give a date such as to=2026-03-05, or leave to out for the newest",
    )
}

/// Phase headers and task columns, phases in file order with their tasks in file order.
/// (phase, how many task columns it spans), and (task, URL of its history) per column.
type Columns = (Vec<(String, usize)>, Vec<(String, String)>);

fn columns(spec: &PipelineSpec, base: &str) -> Columns {
    let mut phases = Vec::new();
    let mut tasks = Vec::new();
    for phase in &spec.phases {
        let before = tasks.len();
        for task in spec.tasks.iter().filter(|task| task.phase == phase.name) {
            tasks.push((
                task.name.clone(),
                format!("{base}/tasks/{}", path_segment(&task.name)),
            ));
        }
        if tasks.len() > before {
            phases.push((phase.name.clone(), tasks.len() - before));
        }
    }
    (phases, tasks)
}

/// The row of one partition from its runs (the pipeline's own and its passes', newest of each).
fn row(
    spec: &PipelineSpec,
    base: &str,
    partition: &str,
    runs: &[&RunView],
    waived: &HashMap<keel_model::RunId, Vec<String>>,
    now: Millis,
) -> Row {
    let own = runs.iter().find(|run| run.record.pass.is_none()).copied();
    let passes: Vec<&RunView> = runs
        .iter()
        .filter(|run| run.record.pass.is_some())
        .copied()
        .collect();
    let main = own.or_else(|| passes.first().copied());
    let run_url = |run: &RunView| view::run_url(base, run.record.id);
    let link = |run: &RunView| RunLink {
        label: match &run.record.pass {
            Some(pass) => format!("{pass} #{}", run.record.id.0),
            None => format!("#{}", run.record.id.0),
        },
        url: run_url(run),
        class: view::run_class(run.record.state),
        state: run.record.state.as_str(),
    };
    let mut cells = Vec::with_capacity(spec.tasks.len());
    let items = main.map(crate::display::item_counts).unwrap_or_default();
    for phase in &spec.phases {
        for task in spec.tasks.iter().filter(|task| task.phase == phase.name) {
            let mut cell = match main {
                Some(run) => cell(run, &items, &task.name, partition, base, waived, now),
                None => Cell {
                    class: "none",
                    glyph: " ",
                    title: format!("{} · {partition}: no run", task.name),
                    url: None,
                    marks: Vec::new(),
                    items: None,
                    frozen: false,
                },
            };
            for pass_run in passes.iter().filter(|run| Some(**run) != main) {
                let ran_here = spec
                    .passes
                    .iter()
                    .find(|pass| Some(&pass.name) == pass_run.record.pass.as_ref())
                    .is_some_and(|pass| pass.tasks.contains(&task.name));
                if let Some(row) = pass_run
                    .tasks
                    .iter()
                    .find(|row| row.task == task.name)
                    .filter(|_| ran_here)
                {
                    let (class, word) = view::task_class(row, false);
                    cell.marks.push((
                        class,
                        format!(
                            "{}: {word}",
                            pass_run.record.pass.as_deref().unwrap_or_default()
                        ),
                    ));
                }
            }
            cells.push(cell);
        }
    }
    Row {
        partition: partition.to_string(),
        run: main.map(link),
        cells,
        passes: passes
            .iter()
            .filter(|run| Some(**run) != main)
            .map(|run| link(run))
            .collect(),
    }
}

fn cell(
    run: &RunView,
    items: &HashMap<String, keel_model::ItemCounts>,
    task: &str,
    partition: &str,
    base: &str,
    waived: &HashMap<keel_model::RunId, Vec<String>>,
    now: Millis,
) -> Cell {
    let Some(row) = run.tasks.iter().find(|row| row.task == task) else {
        return Cell {
            class: "none",
            glyph: " ",
            title: format!("{task} · {partition}: not in run {}", run.record.id.0),
            url: Some(format!("{base}/runs/{}", run.record.id.0)),
            marks: Vec::new(),
            items: None,
            frozen: false,
        };
    };
    let is_waived = waived
        .get(&run.record.id)
        .is_some_and(|tasks| tasks.iter().any(|name| name == task));
    let (class, word) = view::task_class(row, is_waived);
    let summary = run.task_summary(task, now);
    let mut title = format!("{task} · {partition}: {word}");
    let counts = items.get(task);
    if let Some(counts) = counts {
        title.push_str(&format!(" · items {}", counts.summary()));
    }
    if summary.attempts > 0 {
        title.push_str(&format!(
            " · {} in {}",
            crate::display::count(u64::from(summary.attempts), "attempt", "attempts"),
            view::duration(summary.worked)
        ));
    }
    if let Some(rows) = summary.rows {
        title.push_str(&format!(" · {rows} rows"));
    }
    if let Some(message) = row.message.as_deref() {
        title.push_str(&format!(" · {}", crate::display::printable(message)));
    }
    let url = match run.attempts_of(task).last() {
        Some(attempt) => view::attempt_url(base, run.record.id, task, attempt.number),
        None => format!(
            "{base}/runs/{}#task-{}",
            run.record.id.0,
            path_segment(task)
        ),
    };
    Cell {
        class,
        glyph: view::glyph(class),
        title,
        url: Some(url),
        marks: Vec::new(),
        items: counts.map(|counts| format!("{}/{}", counts.succeeded, counts.total)),
        frozen: view::is_frozen(row),
    }
}

/// Links to the grid's older and newer pages of `days` partitions.
fn paging(
    spec: &PipelineSpec,
    base: &str,
    partitions: &[String],
    to: Option<&str>,
    days: u32,
) -> (Option<String>, Option<String>) {
    if spec.partition == PartitionKind::None {
        return (None, None);
    }
    let step = |partition: &String, by: i64| {
        crate::state::parse_date("partition", partition)
            .ok()
            .and_then(|date| date.checked_add_signed(chrono::Duration::days(by)))
            .map(|date| format!("{base}?to={}&days={days}", date.format("%Y-%m-%d")))
    };
    let older = partitions.last().and_then(|oldest| step(oldest, -1));
    let newer = match (to, partitions.first()) {
        (Some(_), Some(newest)) => step(newest, i64::from(days)),
        _ => None,
    };
    (older, newer)
}
