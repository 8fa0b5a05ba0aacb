//! A task's history: one entry per partition, oldest left in the charts (duration, rows, and
//! each numeric metric of its result files) and newest first in the table below them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use askama::Template;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use keel_model::{Millis, TaskState};
use keel_store::{RunView, StatusQuery, Store};
use serde::Deserialize;

use super::chart::{self, Point};
use super::view::{self, Chrome};
use super::{PageError, html};
use crate::api::{ApiContext, ApiError, ServedPipeline};

/// Partitions shown when `days` is not given.
const DEFAULT_DAYS: u32 = 60;

#[derive(Deserialize)]
pub struct TaskPath {
    pipeline: String,
    task: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TaskQuery {
    /// How many partitions, back from the newest that ran the task.
    days: Option<u32>,
}

#[derive(Template)]
#[template(path = "task.html")]
pub struct TaskPage {
    pub chrome: Chrome,
    pub task: String,
    pub days: u32,
    /// Charts as SVG built from numbers and escaped text: (heading, svg).
    pub charts: Vec<(String, String)>,
    /// Newest partition first.
    pub entries: Vec<Entry>,
    /// Runs the `days` limit left out.
    pub omitted: u64,
}

/// The task in one partition: the run of the partition it belongs to (the pipeline's own, or a
/// pass's when there is none).
pub struct Entry {
    pub partition: String,
    pub run_label: String,
    pub run_url: String,
    pub class: &'static str,
    pub outcome: &'static str,
    pub attempts: u32,
    /// Time worked over every attempt, in milliseconds; `None` until an attempt finished.
    pub worked: Option<Millis>,
    pub rows: Option<i64>,
    pub metrics: BTreeMap<String, f64>,
    pub message: String,
    /// The newest attempt's page.
    pub attempt_url: Option<String>,
}

impl Entry {
    pub fn duration(&self) -> String {
        self.worked.map(view::duration).unwrap_or_default()
    }

    pub fn rows_text(&self) -> String {
        self.rows.map(|rows| rows.to_string()).unwrap_or_default()
    }

    pub fn metrics_text(&self) -> String {
        self.metrics
            .iter()
            .map(|(name, value)| format!("{name} {}", view::number(*value)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

pub async fn page(
    State(context): State<Arc<ApiContext>>,
    path: Result<Path<TaskPath>, PathRejection>,
    query: Result<Query<TaskQuery>, QueryRejection>,
) -> Result<Response, PageError> {
    let Path(path) = path.map_err(ApiError::from)?;
    let Query(query) = query.map_err(ApiError::from)?;
    let served = context.pipeline(&path.pipeline)?;
    served.check_task(&path.task)?;
    let page = render(
        &context,
        served,
        &path.task,
        &query,
        crate::state::now_millis(),
    )
    .await?;
    Ok(html(&page))
}

pub async fn render(
    context: &ApiContext,
    served: &ServedPipeline,
    task: &str,
    query: &TaskQuery,
    now: Millis,
) -> Result<TaskPage, ApiError> {
    let spec = served.spec();
    let days = view::days(query.days, DEFAULT_DAYS)?;
    let mut status = StatusQuery::new(spec.name.clone());
    status.task = Some(task.to_string());
    status.limit = Some(days);
    let view = served
        .reader
        .status_view(&status)
        .await
        .map_err(view::store_error)?;
    let base = view::pipeline_url(&spec.name);
    // The view is newest partition first, and within one the newest run first.
    let mut chosen: Vec<&RunView> = Vec::new();
    for run in &view.runs {
        match chosen
            .iter_mut()
            .find(|seen| seen.record.partition == run.record.partition)
        {
            Some(seen) if seen.record.pass.is_some() && run.record.pass.is_none() => *seen = run,
            Some(_) => {}
            None => chosen.push(run),
        }
    }
    let entries: Vec<Entry> = chosen
        .iter()
        .filter_map(|run| entry(&base, task, run, now))
        .collect();
    let charts = charts(&spec.name, task, &entries);
    let mut chrome = Chrome::new(context, &spec, format!("{task} · {} · Keel", spec.name), "");
    chrome.live = entries
        .iter()
        .any(|entry| matches!(entry.class, "running" | "retrying" | "pending" | "waiting"));
    Ok(TaskPage {
        chrome,
        task: task.to_string(),
        days,
        charts,
        entries,
        omitted: view.omitted,
    })
}

fn entry(base: &str, task: &str, run: &RunView, now: Millis) -> Option<Entry> {
    let row = run.tasks.iter().find(|row| row.task == task)?;
    let (class, outcome) = view::task_class(row, false);
    let summary = run.task_summary(task, now);
    let last = run.attempts_of(task).last();
    let settled = row.state != TaskState::Running && last.is_some_and(|a| a.finished_at.is_some());
    Some(Entry {
        partition: run.record.partition.clone(),
        run_label: match &run.record.pass {
            Some(pass) => format!("{pass} #{}", run.record.id.0),
            None => format!("#{}", run.record.id.0),
        },
        run_url: view::run_url(base, run.record.id),
        class,
        outcome,
        attempts: summary.attempts,
        worked: settled.then_some(summary.worked),
        rows: summary.rows,
        metrics: view::numeric_metrics(summary.metrics.as_deref()),
        message: row
            .message
            .as_deref()
            .map(crate::display::printable)
            .unwrap_or_default(),
        attempt_url: last
            .map(|attempt| view::attempt_url(base, run.record.id, task, attempt.number)),
    })
}

/// The duration chart, the rows chart and one chart per numeric metric, oldest partition left.
fn charts(pipeline: &str, task: &str, entries: &[Entry]) -> Vec<(String, String)> {
    let oldest_first: Vec<&Entry> = entries.iter().rev().collect();
    let points = |value: &dyn Fn(&Entry) -> Option<f64>, unit: &str| -> Vec<Point> {
        oldest_first
            .iter()
            .map(|entry| {
                let value = value(entry);
                let shown = match value {
                    Some(value) => format!("{}{unit}", view::number(value)),
                    None => "no value".to_string(),
                };
                Point {
                    label: entry.partition.clone(),
                    value,
                    title: format!("{}: {shown} ({})", entry.partition, entry.outcome),
                    class: entry.class,
                    url: entry.attempt_url.clone(),
                }
            })
            .collect()
    };
    let about = format!("{task} of {pipeline}");
    let longest = entries.iter().filter_map(|entry| entry.worked).max();
    let (unit, unit_name, unit_symbol) = duration_unit(longest.unwrap_or(0));
    let mut charts = vec![
        (
            format!("duration ({unit_name})"),
            chart::svg(
                "chart-duration",
                &format!("duration of {about} by partition"),
                &points(
                    &|entry| entry.worked.map(|ms| ms as f64 / unit),
                    &format!(" {unit_symbol}"),
                ),
                true,
            ),
        ),
        (
            "rows".to_string(),
            chart::svg(
                "chart-rows",
                &format!("rows of {about} by partition"),
                &points(&|entry| entry.rows.map(|rows| rows as f64), " rows"),
                true,
            ),
        ),
    ];
    let names: BTreeSet<&String> = entries
        .iter()
        .flat_map(|entry| entry.metrics.keys())
        .collect();
    for name in names {
        charts.push((
            format!("metric {name}"),
            chart::svg(
                &format!("chart-metric-{name}"),
                &format!("metric {name} of {about} by partition"),
                &points(&|entry| entry.metrics.get(name).copied(), ""),
                false,
            ),
        ));
    }
    charts
}

/// The unit the duration chart counts in, for its longest duration: (milliseconds per unit,
/// name, symbol), so ticks read 0, 20, 40 s rather than 0, 20000, 40000 ms.
fn duration_unit(longest: Millis) -> (f64, &'static str, &'static str) {
    match longest {
        ..2_000 => (1.0, "milliseconds", "ms"),
        2_000..180_000 => (1_000.0, "seconds", "s"),
        180_000..10_800_000 => (60_000.0, "minutes", "min"),
        _ => (3_600_000.0, "hours", "h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_charted_in_a_unit_that_fits_the_longest() {
        assert_eq!(duration_unit(0).2, "ms");
        assert_eq!(duration_unit(1_999).2, "ms");
        assert_eq!(duration_unit(2_000).2, "s");
        assert_eq!(duration_unit(179_999).2, "s");
        assert_eq!(duration_unit(180_000).2, "min");
        assert_eq!(duration_unit(86_400_000).2, "h");
    }
}
