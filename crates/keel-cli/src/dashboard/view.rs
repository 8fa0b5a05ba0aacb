//! What every page shares: the frame around it, links, times in the pipeline's zone, and the
//! one mapping from a task's state to the class that colours it.

use keel_model::{Millis, Outcome, PipelineSpec, RunState, TaskState};
use keel_store::TaskRunRecord;

use crate::api::ApiContext;

/// The frame of a page: its title, the pipeline it is about with the others served, which tab
/// is open, and whether the page refreshes its live parts.
pub struct Chrome {
    pub title: String,
    /// The pipeline the page is about; empty on a page about none (an error).
    pub pipeline: String,
    /// `/ui/PIPELINE`, the root of the pipeline's pages.
    pub base: String,
    /// Every pipeline served, as (name, grid URL), for the switcher.
    pub pipelines: Vec<(String, String)>,
    /// `grid`, `resources`, `health`, or empty.
    pub tab: &'static str,
    /// The page's live parts refresh while this is set (a run still running, say).
    pub live: bool,
    /// When the page was rendered, in the pipeline's time zone.
    pub rendered: String,
}

impl Chrome {
    pub fn new(
        context: &ApiContext,
        spec: &PipelineSpec,
        title: impl Into<String>,
        tab: &'static str,
    ) -> Chrome {
        Chrome {
            title: title.into(),
            pipeline: spec.name.clone(),
            base: pipeline_url(&spec.name),
            pipelines: context
                .pipelines
                .iter()
                .map(|served| {
                    let name = served.spec().name.clone();
                    let url = pipeline_url(&name);
                    (name, url)
                })
                .collect(),
            tab,
            live: true,
            rendered: local_time(spec, crate::state::now_millis()),
        }
    }

    /// The frame of a page about no pipeline.
    pub fn bare(title: String) -> Chrome {
        Chrome {
            title,
            pipeline: String::new(),
            base: "/ui".to_string(),
            pipelines: Vec::new(),
            tab: "",
            live: false,
            rendered: String::new(),
        }
    }
}

/// `/ui/PIPELINE`.
pub fn pipeline_url(pipeline: &str) -> String {
    format!("/ui/{}", path_segment(pipeline))
}

/// `text` as one segment of a URL path: anything but letters, digits and `-_.~` is
/// percent-encoded, so a name can never add a segment or a query.
pub fn path_segment(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// A stored time as `YYYY-MM-DD HH:MM:SS` in the pipeline's time zone.
pub fn local_time(spec: &PipelineSpec, at: Millis) -> String {
    let zone: chrono_tz::Tz = spec.timezone.parse().unwrap_or(chrono_tz::UTC);
    match chrono::DateTime::from_timestamp_millis(at) {
        Some(time) => time
            .with_timezone(&zone)
            .format("%Y-%m-%d %H:%M:%S")
            .to_string(),
        None => at.to_string(),
    }
}

/// A duration in milliseconds, as Keel writes durations (`1m 30s`).
pub fn duration(ms: Millis) -> String {
    keel_model::format_duration(std::time::Duration::from_millis(ms.max(0) as u64))
}

/// The class that colours a task of a run, and the word that says it. `waived` marks a task a
/// gate opened without.
pub fn task_class(task: &TaskRunRecord, waived: bool) -> (&'static str, &'static str) {
    match task.state {
        TaskState::Running => ("running", "running"),
        TaskState::Waiting => ("waiting", "waiting for data"),
        TaskState::Pending if task.outcome.is_some() => ("retrying", "retrying"),
        TaskState::Pending if waived => ("degraded", "waived"),
        TaskState::Pending => ("pending", "pending"),
        TaskState::Done => match task.outcome {
            Some(outcome) if waived && !outcome.is_complete() => ("degraded", "waived"),
            Some(outcome) => (outcome_class(outcome), outcome.as_str()),
            None => ("pending", "pending"),
        },
    }
}

/// The class that colours an outcome.
pub fn outcome_class(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Succeeded => "succeeded",
        Outcome::NoData => "no_data",
        Outcome::Skipped => "skipped",
        Outcome::NotReady => "waiting",
        Outcome::Cancelled => "cancelled",
        Outcome::Lost => "retrying",
        Outcome::Failed
        | Outcome::FailedPermanent
        | Outcome::TimedOut
        | Outcome::Stalled
        | Outcome::UpstreamFailed => "failed",
    }
}

/// The class that colours a run's state.
pub fn run_class(state: RunState) -> &'static str {
    match state {
        RunState::Queued => "pending",
        RunState::Running => "running",
        RunState::Succeeded => "succeeded",
        RunState::Degraded => "degraded",
        RunState::Failed => "failed",
        RunState::Cancelled => "cancelled",
        RunState::Partial => "skipped",
    }
}

/// The mark a cell shows for its class, so the grid reads without colour too.
pub fn glyph(class: &str) -> &'static str {
    match class {
        "succeeded" => "✓",
        "no_data" => "∅",
        "degraded" => "≈",
        "failed" => "✗",
        "running" => "▶",
        "waiting" => "⌛",
        "retrying" => "↻",
        "skipped" => "–",
        "cancelled" => "⊘",
        "frozen" => "❄",
        _ => "·",
    }
}

/// `BASE/runs/RUN`: a run's page.
pub fn run_url(base: &str, run: keel_model::RunId) -> String {
    format!("{base}/runs/{}", run.0)
}

/// `BASE/runs/RUN/tasks/TASK/attempts/N`: an attempt's page.
pub fn attempt_url(base: &str, run: keel_model::RunId, task: &str, number: u32) -> String {
    format!(
        "{base}/runs/{}/tasks/{}/attempts/{number}",
        run.0,
        path_segment(task)
    )
}

/// The most partitions a page may ask for with `days`.
pub const MAX_DAYS: u32 = 366;

/// `days` of a page's query: `default` when not given, else 1 to [`MAX_DAYS`], or a 400 that
/// says so.
pub fn days(days: Option<u32>, default: u32) -> Result<u32, crate::api::ApiError> {
    match days {
        None => Ok(default),
        Some(days @ 1..=MAX_DAYS) => Ok(days),
        Some(days) => Err(crate::api::ApiError::bad_request(
            format!("days {days} is out of range"),
            format!("ask for 1 to {MAX_DAYS} partitions"),
        )),
    }
}

/// A store read that failed: a 500 that says so, logged.
pub fn store_error(error: keel_store::StoreError) -> crate::api::ApiError {
    crate::api::ApiError::internal(error.into())
}

/// The numeric metrics of a result file's `metrics` JSON, by name; anything else is left out.
pub fn numeric_metrics(metrics: Option<&str>) -> std::collections::BTreeMap<String, f64> {
    match crate::display::metrics_json(metrics) {
        serde_json::Value::Object(map) => map
            .into_iter()
            .filter_map(|(name, value)| Some((name, value.as_f64().filter(|v| v.is_finite())?)))
            .collect(),
        _ => std::collections::BTreeMap::new(),
    }
}

/// A metric's value as a table shows it: integers without decimals, others to 4 significant
/// places at most.
pub fn number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{value:.0}")
    } else {
        let text = format!("{value:.4}");
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    }
}

/// The class that colours a circuit breaker's state (`closed`, `open`, `half_open`).
pub fn breaker_class(state: &str) -> &'static str {
    match state {
        "closed" => "succeeded",
        "half_open" => "retrying",
        _ => "failed",
    }
}

/// A circuit breaker's state in words.
pub fn breaker_word(state: &str) -> &'static str {
    match state {
        "closed" => "closed",
        "half_open" => "half open",
        _ => "open",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_segment_never_adds_a_segment_or_a_query() {
        assert_eq!(path_segment("player_game-summary"), "player_game-summary");
        assert_eq!(path_segment("a/b?c=d#e f"), "a%2Fb%3Fc%3Dd%23e%20f");
        assert_eq!(path_segment("é"), "%C3%A9");
    }
}
