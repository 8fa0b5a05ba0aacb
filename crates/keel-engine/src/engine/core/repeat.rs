//! Repeating tasks (`repeat = { every, from, until }`, keel-model's `repeat.rs`): a task held
//! until its window opens on the partition's date, then run once every `every` until the
//! window closes. Each repetition is one attempt: a repetition that fails is not retried, the
//! next one is. The task completes when the window closes, `succeeded` if any repetition of the
//! window succeeded and otherwise with the last repetition's outcome. A failed repetition is
//! charged like a failed attempt (so status counts it as one), but `retries` is not consulted.
//!
//! Nothing here is kept only in memory: the next repetition is a retry whose `not_before` is
//! stored with the attempt's end (derived from the window, so the grid never drifts), the hold
//! before the window opens is derived from the window again after a restart, and whether a
//! repetition succeeded is read back from the stored attempts ([`Core::restore_repeats`]).
//!
//! A partition whose window had already closed when the task first started (a `keel run` of a
//! past date) runs the task like one without `repeat`: once, with its retries.

use super::*;
use keel_model::{RepeatSpec, RepeatWindow};

impl Core {
    /// The repeat of `task` and its window in `run`, while it applies: the task has `repeat`,
    /// the partition is a date, and the window had not closed when the task first started.
    fn repeat_window(
        &self,
        active: &ActiveRun,
        task: TaskIndex,
        now: Millis,
    ) -> Option<(RepeatSpec, RepeatWindow)> {
        // An item of an expanded task does not repeat.
        if self.is_item(task) {
            return None;
        }
        let repeat = self.spec.tasks[task].repeat?;
        let window = repeat.window(&active.record.partition, &self.spec.timezone)?;
        let first_start = active.slots[task].first_started_at.unwrap_or(now);
        (first_start < window.closes).then_some((repeat, window))
    }

    /// Holds a repeating task that is ready before its window opens: it waits, on a timer, for
    /// the window. Whether it was held. Only the first attempt is held; the next repetitions are
    /// retries with their own time.
    pub(crate) fn hold_until_window(
        &mut self,
        book: &mut Book,
        run_index: usize,
        task: TaskIndex,
    ) -> bool {
        let now = book.now;
        let active = &book.runs[run_index];
        if active.slots[task].attempts > 0 {
            return false;
        }
        let Some((repeat, window)) = self.repeat_window(active, task, now) else {
            return false;
        };
        if now >= window.opens {
            return false;
        }
        let active = &mut book.runs[run_index];
        let slot = &mut active.slots[task];
        if slot.not_before != Some(window.opens) {
            // Stored for `keel status`; a restarted Keel derives the hold from the window again.
            let reason = format!(
                "repeats every {} from {} until {}: waiting for the window to open",
                keel_model::format_duration(repeat.every),
                repeat.from,
                repeat.until
            );
            let change = TaskChange {
                task: self.dag.name(task).to_string(),
                state: TaskState::Waiting,
                outcome: None,
                not_before: Some(window.opens),
                message: Some(reason.clone()),
                reset_retry_budget: false,
                reason,
            };
            write_tasks(&mut book.writes, active.record.id, [change]);
        }
        slot.state = TaskState::Waiting;
        slot.not_before = Some(window.opens);
        slot.ready_since = None;
        book.timers
            .push(Reverse((window.opens, run_index, Wake::Task(task))));
        true
    }

    /// Where a repeating task goes after a repetition ended with `outcome`: the next
    /// repetition at its time on the window's grid, or done when none is left before the window
    /// closes. `None` when the repeat does not decide: no repeat (or no longer in force), a
    /// cancelled run, or an attempt that was lost, cancelled or skipped, which the usual rules
    /// handle (a lost repetition is retried at once).
    pub(crate) fn repeat_step(
        &mut self,
        book: &mut Book,
        live: &Live,
        outcome: Outcome,
    ) -> Option<(TaskNext, Option<String>)> {
        let now = book.now;
        let active = &book.runs[live.run];
        if active.cancelling
            || matches!(
                outcome,
                Outcome::Lost | Outcome::Cancelled | Outcome::Skipped
            )
        {
            return None;
        }
        let (repeat, window) = self.repeat_window(active, live.task, now)?;
        let active = &mut book.runs[live.run];
        let succeeded_before = active.repeat_succeeded[live.task];
        active.repeat_succeeded[live.task] |= outcome == Outcome::Succeeded;
        let repetition = repeat.repetition_at(window, live.started_at);
        match repeat.next_due(window, now) {
            Some(next) => {
                let note = format!(
                    "repetition {repetition} (every {} from {} until {}); the next in {}",
                    keel_model::format_duration(repeat.every),
                    repeat.from,
                    repeat.until,
                    keel_model::format_duration(std::time::Duration::from_millis(
                        (next - now).max(0) as u64
                    ))
                );
                // Charged as a failure would be, so that status counts a failed repetition as
                // an attempt, not as a breaker probe; the retry policy is not consulted.
                let next = TaskNext::Retry {
                    not_before: next,
                    charge: outcome != Outcome::Succeeded && outcome.uses_retry_attempt(),
                };
                Some((next, Some(note)))
            }
            None => {
                let (final_outcome, how) = if outcome == Outcome::Succeeded {
                    (Outcome::Succeeded, "")
                } else if succeeded_before {
                    (Outcome::Succeeded, ", and an earlier repetition succeeded")
                } else {
                    (outcome, ", and no repetition succeeded")
                };
                let note = format!(
                    "repetition {repetition} was the last: the window closes at {}{how}",
                    repeat.until
                );
                Some((TaskNext::Done(final_outcome), Some(note)))
            }
        }
    }

    /// Takes up, for the repeating tasks of a loaded run, whether a repetition already
    /// succeeded, from the run's stored attempts (since the task's first start, which
    /// `keel retry` clears).
    pub(crate) fn restore_repeats(&self, active: &mut ActiveRun, attempts: &[AttemptRecord]) {
        for attempt in attempts {
            let Some(task) = self.dag.index_of(&attempt.task) else {
                continue;
            };
            let since_first_start = match (attempt.started_at, active.slots[task].first_started_at)
            {
                (Some(started), Some(first)) => started >= first,
                _ => false,
            };
            if self.spec.tasks[task].repeat.is_some()
                && since_first_start
                && attempt.outcome == Some(Outcome::Succeeded)
            {
                active.repeat_succeeded[task] = true;
            }
        }
    }

    /// Whether any task of the pipeline repeats: only then are a loaded run's attempts read.
    pub(crate) fn has_repeats(&self) -> bool {
        self.spec.tasks.iter().any(|task| task.repeat.is_some())
    }
}
