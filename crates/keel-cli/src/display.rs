//! What people see: the live progress line and the tables.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use keel_engine::Progress;
use keel_model::{Outcome, RunId, RunState, TaskState, format_duration};

use crate::setup::ProcessEngine;

#[derive(Default)]
struct Counts {
    tasks: usize,
    done: usize,
    running: usize,
    retrying: usize,
    failed: usize,
}

struct Shared {
    runs: HashMap<RunId, Counts>,
    last_draw: Option<Instant>,
    started: Instant,
    line_shown: bool,
}

/// A one-line live summary on a terminal; silent when stderr is not a terminal.
pub struct ProgressDisplay {
    shared: Option<Arc<Mutex<Shared>>>,
}

impl ProgressDisplay {
    pub fn start(engine: &mut ProcessEngine) -> ProgressDisplay {
        if !std::io::stderr().is_terminal() {
            return ProgressDisplay { shared: None };
        }
        let shared = Arc::new(Mutex::new(Shared {
            runs: HashMap::new(),
            last_draw: None,
            started: Instant::now(),
            line_shown: false,
        }));
        let observer = shared.clone();
        engine.observe(move |event| {
            let mut shared = observer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let mut note = None;
            match &event {
                Progress::RunLoaded { run, tasks, done, .. } => {
                    let counts = shared.runs.entry(*run).or_default();
                    counts.tasks = *tasks;
                    counts.done = *done;
                }
                Progress::AttemptStarted { run, .. } => {
                    let counts = shared.runs.entry(*run).or_default();
                    counts.running += 1;
                }
                Progress::AttemptRecovered { partition, task, attempt, how, .. } => {
                    note = Some(format!("{partition} {task} attempt {attempt}: {how}"));
                }
                Progress::AttemptFinished { run, partition, task, attempt, outcome, message, retry_at, .. } => {
                    let counts = shared.runs.entry(*run).or_default();
                    counts.running = counts.running.saturating_sub(1);
                    if retry_at.is_some() {
                        counts.retrying += 1;
                    } else {
                        counts.done += 1;
                        if !outcome.is_complete() {
                            counts.failed += 1;
                        }
                    }
                    if !outcome.is_complete() {
                        let what = match retry_at {
                            Some(_) if *outcome == Outcome::NotReady => "checking again later".to_string(),
                            Some(_) => "will retry".to_string(),
                            None => "gave up".to_string(),
                        };
                        let detail = message.as_deref().map(|message| format!(": {message}")).unwrap_or_default();
                        note = Some(format!("{partition} {task} attempt {attempt} {outcome}{detail} ({what})"));
                    }
                }
                Progress::TasksSettled { run, tasks, .. } => {
                    let counts = shared.runs.entry(*run).or_default();
                    counts.done += tasks.len();
                    counts.failed += tasks.len();
                }
                Progress::BreakerChanged { resource, detail, .. } => {
                    note = Some(format!("resource {resource}: breaker {detail}"));
                }
                Progress::RolloutDecided { task, detail, .. } => {
                    note = Some(format!("task {task}: {detail}"));
                }
                Progress::GateOpened { partition, phase, missing, .. } => {
                    note = Some(format!(
                        "{partition} gate of phase {phase} opened without {}; the run will be degraded unless they land",
                        missing.join(", ")
                    ));
                }
                Progress::RunFinished { partition, state, .. } => {
                    note = Some(format!("{partition} finished: {state}"));
                }
                Progress::RunRefused { partition, reason, .. } => {
                    note = Some(format!("{partition}: {reason}"));
                }
                Progress::RunScheduled { partition, joined, pass, .. } => {
                    let what = match pass {
                        None => "the schedule".to_string(),
                        Some(pass) => format!("pass {pass:?}"),
                    };
                    note = Some(if *joined {
                        format!("{partition}: {what} fired; the unfinished run carries on")
                    } else {
                        format!("{partition}: {what} fired; run started")
                    });
                }
                Progress::ScheduleSkipped { reason, .. } => {
                    note = Some(format!("the schedule fired but could not run: {reason}"));
                }
                Progress::BackfillStarted {
                    partition,
                    kind,
                    repair,
                    ..
                } => {
                    note = Some(format!(
                        "{partition}: {kind}; backfill started repair {repair}"
                    ));
                }
                Progress::GapUnrepaired { detail, .. } => {
                    note = Some(detail.clone());
                }
                Progress::CheckFailed { partition, task, attempt, severity, detail, .. } => {
                    note = Some(format!("{partition} {task} attempt {attempt}: {} check failed: {detail}", severity.as_str()));
                }
                Progress::HealRequested { partition, task, heal, used, budget, .. } => {
                    note = Some(format!("{partition} {task}: healing {} ({used} of {budget} heals)", heal.join(", ")));
                }
                Progress::HealExhausted { partition, detail, .. } => {
                    note = Some(format!("{partition} {detail}"));
                }
                // Counted by `keel serve`'s metrics; nothing a terminal needs to show.
                Progress::RateLimited { .. }
                | Progress::ResourceProbe { .. }
                | Progress::SensorPolled { .. }
                | Progress::QueueDepth { .. } => {}
            }
            // Retries that fire are counted again as starts; keep the gauge honest.
            for counts in shared.runs.values_mut() {
                counts.retrying = counts.retrying.min(counts.tasks.saturating_sub(counts.done));
            }
            let mut stderr = std::io::stderr().lock();
            // The note may quote a task's message: on a terminal, above all, keep it inert.
            if let Some(note) = note.as_deref().map(printable) {
                let _ = write!(stderr, "\r\x1b[2K{note}\n");
                shared.line_shown = false;
                shared.last_draw = None;
            }
            let due = shared.last_draw.is_none_or(|last| last.elapsed() >= Duration::from_millis(100));
            if due {
                let (tasks, done, running, failed) = shared.runs.values().fold((0, 0, 0, 0), |sum, counts| {
                    (sum.0 + counts.tasks, sum.1 + counts.done, sum.2 + counts.running, sum.3 + counts.failed)
                });
                let elapsed = format_duration(shared.started.elapsed());
                let _ = write!(
                    stderr,
                    "\r\x1b[2K{done}/{} done · {running} running · {failed} failed · {elapsed}",
                    count(tasks as u64, "task", "tasks")
                );
                let _ = stderr.flush();
                shared.line_shown = true;
                shared.last_draw = Some(Instant::now());
            }
        });
        ProgressDisplay {
            shared: Some(shared),
        }
    }

    pub fn finish(self) {
        if let Some(shared) = self.shared {
            let shared = shared
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if shared.line_shown {
                eprint!("\r\x1b[2K");
            }
        }
    }
}

/// Text from the state as it may be written to a terminal. A task's message can quote its
/// output or its result file, and a terminal would act on an escape sequence in it: move the
/// cursor, rewrite earlier lines, set the window title, hide or reorder text. Control characters
/// and the invisible direction overrides are shown escaped (`\u{1b}`); a line break or a tab
/// becomes a space, so a table cell stays on one line. `--json` prints the text exactly.
pub fn printable(text: &str) -> String {
    let mut shown = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '\n' | '\r' | '\t' => shown.push(' '),
            _ if character.is_control() || is_direction_control(character) => {
                shown.extend(character.escape_unicode());
            }
            _ => shown.push(character),
        }
    }
    shown
}

/// The Unicode marks, embeddings, overrides and isolates that change the order text is shown in.
fn is_direction_control(character: char) -> bool {
    matches!(
        character,
        '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
    )
}

fn table() -> Table {
    let mut table = Table::new();
    table
        .load_preset(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic);
    // Off a terminal, or on one that reports no useful width (a pseudo-terminal under `script`,
    // say), lay the table out for a wide page instead of squeezing it.
    let narrow = table.width().is_none_or(|width| width < 60);
    if !std::io::stdout().is_terminal() || narrow {
        table.set_width(160);
    }
    table
}

/// "1 partition", "3 partitions".
pub fn count(number: u64, one: &str, many: &str) -> String {
    format!("{number} {}", if number == 1 { one } else { many })
}

/// Real attempts, with not-ready checks, failed breaker probes and sensor polls apart:
/// `2 (+5 checks)`.
pub fn attempts_cell(summary: &keel_store::TaskSummary) -> String {
    let mut apart = Vec::new();
    if summary.polls > 0 {
        apart.push(format!("+{}", count(summary.polls.into(), "poll", "polls")));
    }
    if summary.checks > 0 {
        apart.push(format!(
            "+{}",
            count(summary.checks.into(), "check", "checks")
        ));
    }
    if summary.probes > 0 {
        apart.push(format!(
            "+{}",
            count(summary.probes.into(), "probe", "probes")
        ));
    }
    if apart.is_empty() {
        summary.attempts.to_string()
    } else {
        format!("{} ({})", summary.attempts, apart.join(", "))
    }
}

/// Time spent working, blank for a task that never had an attempt.
fn time_cell(summary: &keel_store::TaskSummary) -> String {
    if summary.attempts + summary.checks + summary.probes == 0 {
        return String::new();
    }
    format_duration(Duration::from_millis(summary.worked.max(0) as u64))
}

/// The longest metrics cell, in characters; `status --json` has them whole.
const METRICS_WIDTH: usize = 60;

/// A result file's `metrics` as `name=value` pairs, by name, cut with `…` past
/// [`METRICS_WIDTH`]; text that is not a JSON object is shown as it is.
pub fn metrics_cell(metrics: Option<&str>) -> String {
    let Some(text) = metrics else {
        return String::new();
    };
    let shown = match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Object(map)) => map
            .iter()
            .map(|(name, value)| match value {
                serde_json::Value::String(text) => format!("{name}={text}"),
                other => format!("{name}={other}"),
            })
            .collect::<Vec<_>>()
            .join(" "),
        _ => text.to_string(),
    };
    let shown = printable(&shown);
    if shown.chars().count() > METRICS_WIDTH {
        let cut: String = shown.chars().take(METRICS_WIDTH - 1).collect();
        format!("{cut}…")
    } else {
        shown
    }
}

/// A result file's `metrics` for JSON: the object itself, or the text if it is not JSON.
pub fn metrics_json(metrics: Option<&str>) -> serde_json::Value {
    match metrics {
        None => serde_json::Value::Null,
        Some(text) => serde_json::from_str(text)
            .unwrap_or_else(|_| serde_json::Value::String(text.to_string())),
    }
}

/// A task's outcome as a table shows it: the outcome once done, or where it stands.
/// The items of a run's expanded tasks (`expand`), counted per expanded task from their task
/// runs (`box_scores[0021]`), so that status shows one compact row per expanded task.
pub fn item_counts(run: &keel_store::RunView) -> HashMap<String, keel_model::ItemCounts> {
    let mut counts: HashMap<String, keel_model::ItemCounts> = HashMap::new();
    for task in &run.tasks {
        let Some((parent, _)) = keel_model::expand::split_item_name(&task.task) else {
            continue;
        };
        let entry = counts.entry(parent.to_string()).or_default();
        entry.total += 1;
        match (task.state, task.outcome) {
            (TaskState::Done, Some(outcome)) if outcome.is_complete() => entry.succeeded += 1,
            (TaskState::Done, _) => entry.failed += 1,
            _ => {}
        }
    }
    // A name that only looks like an item's (no such task in the run) is shown as it is.
    counts.retain(|parent, _| run.tasks.iter().any(|task| &task.task == parent));
    counts
}

/// Whether `task` is an item of one of the expanded tasks `counts` holds.
pub fn is_item_row(
    task: &keel_store::TaskRunRecord,
    counts: &HashMap<String, keel_model::ItemCounts>,
) -> bool {
    keel_model::expand::split_item_name(&task.task)
        .is_some_and(|(parent, _)| counts.contains_key(parent))
}

pub fn outcome_cell(task: &keel_store::TaskRunRecord) -> String {
    match (task.state, task.outcome) {
        (TaskState::Done, Some(outcome)) => outcome.to_string(),
        (TaskState::Waiting, _) => "waiting to retry".to_string(),
        (state, _) => state.to_string(),
    }
}

/// A task's message, cut to a length a table can hold: long enough for a message that names a
/// file in an attempt directory (under the store's 32-character identity) and still says what
/// is wrong with it.
fn message_cell(message: Option<&str>) -> String {
    let message: String = message.unwrap_or("").chars().take(200).collect();
    printable(&message)
}

/// A run's partition in a table, with its pass when it has one: `2026-01-18 (pass overnight)`.
fn partition_cell(run: &keel_store::RunRecord) -> String {
    match &run.pass {
        None => printable(&run.partition),
        Some(pass) => format!("{} (pass {})", printable(&run.partition), printable(pass)),
    }
}

/// One run: a header line and a row per task.
pub fn print_run(run: &keel_store::RunView, now: keel_model::Millis) {
    let record = &run.record;
    let elapsed = record.finished_at.map(|finished| {
        format_duration(Duration::from_millis(
            (finished - record.created_at).max(0) as u64
        ))
    });
    let state = match &run.accepted {
        Some(accepted) => format!("{} (accepted {})", record.state, printable(accepted)),
        None => record.state.to_string(),
    };
    println!(
        "run {} · partition {}{} · {}{}{}",
        record.id,
        printable(&record.partition),
        record
            .pass
            .as_deref()
            .map(|pass| format!(" · pass {}", printable(pass)))
            .unwrap_or_default(),
        state,
        elapsed
            .map(|elapsed| format!(" · {elapsed}"))
            .unwrap_or_default(),
        record
            .message
            .as_deref()
            .map(|message| format!(" · {}", printable(message)))
            .unwrap_or_default()
    );
    let mut table = table();
    table.set_header([
        "task", "phase", "outcome", "attempts", "time", "rows", "metrics", "message",
    ]);
    let items = item_counts(run);
    for task in &run.tasks {
        if is_item_row(task, &items) {
            continue;
        }
        let summary = run.task_summary(&task.task, now);
        // An expanded task's row stands for its items: while they run, their counts.
        let (outcome, message) = match items.get(&task.task) {
            Some(counts) if task.state != TaskState::Done => {
                ("running".to_string(), Some(counts.summary()))
            }
            _ => (outcome_cell(task), task.message.clone()),
        };
        table.add_row([
            printable(&task.task),
            printable(&task.phase),
            outcome,
            attempts_cell(&summary),
            time_cell(&summary),
            summary
                .rows
                .map(|rows| rows.to_string())
                .unwrap_or_default(),
            metrics_cell(summary.metrics.as_deref()),
            message_cell(message.as_deref()),
        ]);
    }
    println!("{table}");
}

/// One task across runs, for `keel history`: a row per run.
pub fn print_history(runs: &[keel_store::RunView], now: keel_model::Millis) {
    let mut table = table();
    table.set_header([
        "partition",
        "run",
        "outcome",
        "attempts",
        "time",
        "rows",
        "metrics",
        "message",
    ]);
    for run in runs {
        // An expanded task's row counts its items (`438/450 · 12 failed`) in its outcome.
        let items = item_counts(run);
        for task in run.tasks.iter().filter(|task| !is_item_row(task, &items)) {
            let summary = run.task_summary(&task.task, now);
            let outcome = match items.get(&task.task) {
                Some(counts) => format!("{} · items {}", outcome_cell(task), counts.summary()),
                None => outcome_cell(task),
            };
            table.add_row([
                partition_cell(&run.record),
                run.record.id.to_string(),
                outcome,
                attempts_cell(&summary),
                time_cell(&summary),
                summary
                    .rows
                    .map(|rows| rows.to_string())
                    .unwrap_or_default(),
                metrics_cell(summary.metrics.as_deref()),
                message_cell(task.message.as_deref()),
            ]);
        }
    }
    println!("{table}");
}

/// What `--limit` left out, and how to see it: `… 12 more partitions; use --limit 32 or
/// --from/--to`.
pub fn omitted_note(omitted: u64, shown: usize, every_run: bool, ranged: bool) -> Option<String> {
    if omitted == 0 {
        return None;
    }
    let noun = match (every_run, omitted) {
        (true, 1) => "run",
        (true, _) => "runs",
        (false, 1) => "partition",
        (false, _) => "partitions",
    };
    let all = omitted + shown as u64;
    let hint = if ranged {
        format!("use --limit {all}")
    } else {
        format!("use --limit {all} or --from/--to")
    };
    Some(format!("… {omitted} more {noun}; {hint}"))
}

/// One line for a range of partitions, by the state of each one's newest run (`None`: no run):
/// `14 partitions: 10 succeeded, 3 degraded, 1 failed`.
pub fn range_summary(states: &[Option<RunState>]) -> String {
    let mut parts = Vec::new();
    let order = [
        RunState::Succeeded,
        RunState::Degraded,
        RunState::Partial,
        RunState::Failed,
        RunState::Cancelled,
        RunState::Running,
        RunState::Queued,
    ];
    for state in order {
        let number = states.iter().filter(|each| **each == Some(state)).count();
        if number > 0 {
            parts.push(format!("{number} {state}"));
        }
    }
    let not_run = states.iter().filter(|each| each.is_none()).count();
    if not_run > 0 {
        parts.push(format!("{not_run} not run"));
    }
    format!(
        "{}: {}",
        count(states.len() as u64, "partition", "partitions"),
        parts.join(", ")
    )
}

/// Many runs: a row each.
pub fn print_run_list(runs: &[keel_store::RunView]) {
    let mut table = table();
    table.set_header([
        "run",
        "partition",
        "state",
        "done",
        "not complete",
        "message",
    ]);
    for keel_store::RunView {
        record: run,
        tasks,
        accepted,
        ..
    } in runs
    {
        let done = tasks
            .iter()
            .filter(|task| task.state == TaskState::Done)
            .count();
        let bad = tasks
            .iter()
            .filter(|task| {
                task.state == TaskState::Done && !task.outcome.is_some_and(Outcome::is_complete)
            })
            .count();
        table.add_row([
            run.id.to_string(),
            partition_cell(run),
            match accepted {
                Some(_) => format!("{} (accepted)", run.state),
                None => run.state.to_string(),
            },
            format!("{done}/{}", tasks.len()),
            bad.to_string(),
            printable(run.message.as_deref().unwrap_or_default()),
        ]);
    }
    println!("{table}");
}

/// The circuit breakers of the pipeline's resources, as a Keel starting now would take them up.
pub fn print_resources(resources: &[keel_store::ResourceStateRecord]) {
    if resources.is_empty() {
        return;
    }
    let mut table = table();
    table.set_header(["resource", "breaker", "detail"]);
    let now = crate::state::now_millis();
    for resource in resources {
        let (state, detail) = resource.state_at(now);
        table.add_row([
            printable(&resource.name),
            state.to_string(),
            printable(&detail),
        ]);
    }
    println!("{table}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_summaries_count_in_english() {
        use RunState::*;
        assert_eq!(
            range_summary(&[Some(Succeeded)]),
            "1 partition: 1 succeeded"
        );
        assert_eq!(
            range_summary(&[
                Some(Failed),
                Some(Succeeded),
                None,
                Some(Degraded),
                Some(Succeeded)
            ]),
            "5 partitions: 2 succeeded, 1 degraded, 1 failed, 1 not run"
        );
    }

    #[test]
    fn attempts_show_checks_and_probes_apart() {
        let summary = |attempts, checks, probes| keel_store::TaskSummary {
            attempts,
            checks,
            probes,
            ..Default::default()
        };
        assert_eq!(attempts_cell(&summary(2, 0, 0)), "2");
        assert_eq!(attempts_cell(&summary(2, 5, 0)), "2 (+5 checks)");
        assert_eq!(attempts_cell(&summary(1, 1, 1)), "1 (+1 check, +1 probe)");
        let polled = keel_store::TaskSummary {
            attempts: 1,
            polls: 3,
            ..Default::default()
        };
        assert_eq!(attempts_cell(&polled), "1 (+3 polls)");
    }

    #[test]
    fn omitted_rows_say_how_to_see_them() {
        assert_eq!(omitted_note(0, 20, false, false), None);
        assert_eq!(
            omitted_note(12, 20, false, false).as_deref(),
            Some("… 12 more partitions; use --limit 32 or --from/--to")
        );
        assert_eq!(
            omitted_note(1, 3, true, true).as_deref(),
            Some("… 1 more run; use --limit 4")
        );
        assert_eq!(
            omitted_note(1, 3, false, false).as_deref(),
            Some("… 1 more partition; use --limit 4 or --from/--to")
        );
    }

    #[test]
    fn control_characters_are_escaped_and_line_breaks_become_spaces() {
        assert_eq!(
            printable("\u{1b}[2Jcleared\u{7}\u{9b}1m"),
            r"\u{1b}[2Jcleared\u{7}\u{9b}1m"
        );
        assert_eq!(printable("one\ntwo\r\nthree\tfour"), "one two  three four");
        assert_eq!(
            printable("\u{202e}txt.exe\u{2066}x\u{2069}\u{200f}"),
            r"\u{202e}txt.exe\u{2066}x\u{2069}\u{200f}"
        );
        assert_eq!(printable("déjà vu → 100% ✓"), "déjà vu → 100% ✓");
    }
}
