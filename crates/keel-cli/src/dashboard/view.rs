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

/// Whether a task kept its outcome past its `freeze_after`: its message says so, alone
/// (`frozen at 19:00: not rerun after …`) or after the attempt's own (`…; frozen at 19:00: not
/// retried after it ended failed`).
pub fn is_frozen(task: &TaskRunRecord) -> bool {
    task.state == TaskState::Done
        && task
            .message
            .as_deref()
            .is_some_and(|message| message.starts_with("frozen ") || message.contains("; frozen "))
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
        | Outcome::UpstreamFailed
        | Outcome::FailedCheck => "failed",
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

/// `text` escaped for XML (an SVG built by hand): markup characters and quotes.
pub fn escape_xml(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            _ => escaped.push(character),
        }
    }
    escaped
}

/// Round steps between the ticks of a time axis, in milliseconds.
const TICK_STEPS: &[Millis] = &[
    1_000, 2_000, 5_000, 10_000, 15_000, 30_000, 60_000, 120_000, 300_000, 600_000, 900_000,
    1_800_000, 3_600_000, 7_200_000, 10_800_000, 21_600_000, 43_200_000, 86_400_000,
];

/// Maps the times of a timeline onto an x axis `width` units wide that starts at `left`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TimeScale {
    pub start: Millis,
    /// After `start`, at least by a second, so an instant still has an axis.
    pub end: Millis,
    pub left: f64,
    pub width: f64,
}

impl TimeScale {
    pub fn new(start: Millis, end: Millis, left: f64, width: f64) -> TimeScale {
        TimeScale {
            start,
            end: end.max(start.saturating_add(1_000)),
            left,
            width: width.max(1.0),
        }
    }

    /// Where `at` lies; times outside the span are held to its edges.
    pub fn x(&self, at: Millis) -> f64 {
        let offset = at.clamp(self.start, self.end).saturating_sub(self.start) as f64;
        self.left + offset / self.end.saturating_sub(self.start) as f64 * self.width
    }

    /// Ticks at a round step with at most `most` steps across the span: (time from the start,
    /// x), the first at the start.
    pub fn ticks(&self, most: u32) -> Vec<(Millis, f64)> {
        let span = self.end.saturating_sub(self.start);
        let most = Millis::from(most.max(1));
        let step = TICK_STEPS
            .iter()
            .copied()
            .find(|step| span / step <= most)
            .unwrap_or_else(|| {
                // Longer than the steps go: whole days.
                const DAY: Millis = 86_400_000;
                let days = ((span / most).saturating_add(DAY - 1) / DAY).max(1);
                days.saturating_mul(DAY)
            });
        (0..=span / step)
            .map(|index| {
                let offset = index.saturating_mul(step);
                (offset, self.x(self.start.saturating_add(offset)))
            })
            .collect()
    }
}

/// The part of `bytes`, a piece cut out of UTF-8 text, that splits no character: with
/// `cut_front` the continuation bytes it starts with (a character begun before it) are left
/// out, and with `cut_back` a character it ends in the middle of is left for the next piece.
pub fn utf8_piece(bytes: &[u8], cut_front: bool, cut_back: bool) -> std::ops::Range<usize> {
    let is_continuation = |byte: u8| byte & 0xC0 == 0x80;
    let start = if cut_front {
        bytes
            .iter()
            .take(3)
            .take_while(|byte| is_continuation(**byte))
            .count()
    } else {
        0
    };
    let mut end = bytes.len();
    if cut_back
        && let Some(lead) = (start..bytes.len())
            .rev()
            .take(4)
            .find(|index| !is_continuation(bytes[*index]))
    {
        let length = match bytes[lead] {
            byte if byte < 0x80 => 1,
            byte if byte >= 0xF0 => 4,
            byte if byte >= 0xE0 => 3,
            _ => 2,
        };
        if lead + length > bytes.len() {
            end = lead;
        }
    }
    start..end.max(start)
}

#[cfg(test)]
mod timeline_tests {
    use super::*;

    #[test]
    fn a_time_scale_maps_its_span_onto_its_width_and_holds_times_outside_to_its_edges() {
        let scale = TimeScale::new(10_000, 20_000, 100.0, 800.0);
        assert_eq!(scale.x(10_000), 100.0);
        assert_eq!(scale.x(15_000), 500.0);
        assert_eq!(scale.x(20_000), 900.0);
        assert_eq!(scale.x(0), 100.0);
        assert_eq!(scale.x(99_000), 900.0);
        // An instant run still has a second of axis, not a division by zero.
        let instant = TimeScale::new(5_000, 5_000, 0.0, 100.0);
        assert_eq!(instant.end, 6_000);
        assert_eq!(instant.x(5_500), 50.0);
    }

    #[test]
    fn ticks_fall_on_round_steps_and_never_crowd() {
        let scale = TimeScale::new(0, 95_000, 0.0, 950.0);
        let offsets: Vec<Millis> = scale.ticks(8).iter().map(|tick| tick.0).collect();
        assert_eq!(offsets, [0, 15_000, 30_000, 45_000, 60_000, 75_000, 90_000]);
        assert_eq!(scale.ticks(8)[1].1, 150.0);
        let second = TimeScale::new(0, 0, 0.0, 100.0);
        assert_eq!(second.ticks(8), vec![(0, 0.0), (1_000, 100.0)]);
        let hours = TimeScale::new(0, 5 * 3_600_000, 0.0, 100.0);
        assert_eq!(hours.ticks(8)[1].0, 3_600_000);
        let weeks = TimeScale::new(0, 30 * 86_400_000, 0.0, 100.0);
        let ticks = weeks.ticks(8);
        assert!(ticks.len() <= 9, "{ticks:?}");
        assert_eq!(ticks[1].0 % 86_400_000, 0);
        // Times no run has are held to the axis, never an overflow.
        let extreme = TimeScale::new(Millis::MIN, Millis::MAX, 0.0, 100.0);
        assert!(extreme.ticks(8).len() <= 9);
        assert_eq!(extreme.x(Millis::MAX), 100.0);
    }

    #[test]
    fn a_utf8_piece_splits_no_character() {
        let text = "aé€😀b".as_bytes();
        // Whole: nothing cut.
        assert_eq!(utf8_piece(text, true, true), 0..text.len());
        // Starting inside é (a 2-byte character) leaves its tail out.
        assert_eq!(utf8_piece(&text[2..], true, false), 1..text.len() - 2);
        // Ending inside € or 😀 leaves the character for the next piece.
        assert_eq!(utf8_piece(&text[..5], false, true), 0..3);
        assert_eq!(utf8_piece(&text[..8], false, true), 0..6);
        assert_eq!(utf8_piece(&text[..9], false, true), 0..6);
        // Not asked to cut, it keeps every byte.
        assert_eq!(utf8_piece(&text[2..5], false, false), 0..3);
        // Nothing but continuation bytes: an empty piece, never a panic.
        assert_eq!(utf8_piece(&[0x80, 0x80, 0x80, 0x80], true, true), 3..4);
        assert_eq!(utf8_piece(&[], true, true), 0..0);
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
