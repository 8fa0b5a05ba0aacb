//! What people see: the live progress line and the tables.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use comfy_table::{ContentArrangement, Table, presets::UTF8_FULL_CONDENSED};
use keel_engine::Progress;
use keel_model::{Outcome, RunId, TaskState, format_duration};

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
                Progress::AttemptFinished { run, partition, task, attempt, outcome, message, retry_at } => {
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
                Progress::GateOpened { partition, phase, missing, .. } => {
                    note = Some(format!(
                        "{partition} gate of phase {phase} opened without {}; the run will be degraded unless they land",
                        missing.join(", ")
                    ));
                }
                Progress::RunFinished { partition, state, .. } => {
                    note = Some(format!("{partition} finished: {state}"));
                }
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
                    "\r\x1b[2K{done}/{tasks} tasks done · {running} running · {failed} failed · {elapsed}"
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

/// One run: a header line and a row per task.
pub fn print_run(run: &keel_store::RunView) {
    let (record, tasks, attempts) = (&run.record, &run.tasks, &run.attempts);
    let elapsed = record.finished_at.map(|finished| {
        format_duration(Duration::from_millis(
            (finished - record.created_at).max(0) as u64
        ))
    });
    println!(
        "run {} · partition {} · {}{}{}",
        record.id,
        printable(&record.partition),
        record.state,
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
    table.set_header(["task", "phase", "outcome", "attempts", "time", "message"]);
    for task in tasks {
        let mine: Vec<_> = attempts
            .iter()
            .filter(|attempt| attempt.task == task.task)
            .collect();
        let time = match (
            mine.first()
                .and_then(|a| a.started_at.or(Some(a.claimed_at))),
            mine.last().and_then(|a| a.finished_at),
        ) {
            (Some(start), Some(end)) => {
                format_duration(Duration::from_millis((end - start).max(0) as u64))
            }
            _ => String::new(),
        };
        let outcome = match (task.state, task.outcome) {
            (TaskState::Done, Some(outcome)) => outcome.to_string(),
            (TaskState::Waiting, _) => "waiting to retry".to_string(),
            (state, _) => state.to_string(),
        };
        // Long enough for a message that names a file in an attempt directory (under the
        // store's 32-character identity) and still says what is wrong with it.
        let message: String = task
            .message
            .as_deref()
            .unwrap_or("")
            .chars()
            .take(200)
            .collect();
        table.add_row([
            printable(&task.task),
            printable(&task.phase),
            outcome,
            task.attempts.to_string(),
            time,
            printable(&message),
        ]);
    }
    println!("{table}");
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
        record: run, tasks, ..
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
            printable(&run.partition),
            run.state.to_string(),
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
    use super::printable;

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
