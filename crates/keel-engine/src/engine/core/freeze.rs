//! Freezes (`freeze_after = "19:00"`): from that local time on the partition's date, in the
//! pipeline's time zone, or from a time after another task of the run ended complete
//! (`freeze_after = { task = "grading", delay = "30m" }`), a task is no longer run again by Keel
//! on its own: a failed attempt is
//! not retried and a late upstream task does not rerun it (reconciliation, or a rerun owed
//! while it ran). The task keeps the outcome it has and its message says what was not rerun and
//! why. A manual `keel retry` still runs it: that is an operator's decision.

use keel_model::FreezeSpec;

use super::*;

impl Core {
    /// When `task` froze in `active`'s partition, as its notes say it (`at 19:00`, `30m after
    /// "grading" ended`), once that has passed at `now`.
    pub(crate) fn frozen_at(
        &self,
        active: &ActiveRun,
        task: TaskIndex,
        now: Millis,
    ) -> Option<String> {
        // An item of an expanded task has no freeze of its own.
        if self.is_item(task) {
            return None;
        }
        let freeze = self.spec.tasks[task].freeze_after.as_ref()?;
        let instant = match freeze {
            FreezeSpec::At(time) => {
                time.on_partition(&active.record.partition, &self.spec.timezone)?
            }
            FreezeSpec::AfterTask { task: other, delay } => {
                let other = self.dag.index_of(other)?;
                let slot = &active.slots[other];
                if slot.state != TaskState::Done || !slot.outcome.is_some_and(Outcome::is_complete)
                {
                    return None;
                }
                active.ended_at[other]? + delay.as_millis() as Millis
            }
        };
        (now >= instant).then(|| match freeze {
            FreezeSpec::At(time) => format!("at {time}"),
            FreezeSpec::AfterTask { task, delay } if delay.is_zero() => {
                format!("when {task:?} ended")
            }
            FreezeSpec::AfterTask { task, delay } => {
                format!("{} after {task:?} ended", as_written(*delay))
            }
        })
    }

    /// Takes up when the tasks that others freeze after ended, from a loaded run's attempts.
    pub(crate) fn restore_task_ends(&self, active: &mut ActiveRun, attempts: &[AttemptRecord]) {
        for attempt in attempts {
            let (Some(task), Some(finished)) =
                (self.dag.index_of(&attempt.task), attempt.finished_at)
            else {
                continue;
            };
            if active.slots[task].state == TaskState::Done {
                let ended = &mut active.ended_at[task];
                *ended = Some(ended.map_or(finished, |known| known.max(finished)));
            }
        }
    }

    /// Whether a task freezes after another's end: only then are a loaded run's attempts read
    /// for it.
    pub(crate) fn has_task_freezes(&self) -> bool {
        self.spec
            .tasks
            .iter()
            .any(|task| matches!(task.freeze_after, Some(FreezeSpec::AfterTask { .. })))
    }

    /// A frozen task's attempt ended with an `outcome` the usual rules would retry: it ends with
    /// it instead. `None` when the task is not frozen, or the outcome is not retried anyway.
    pub(crate) fn freeze_step(
        &self,
        book: &Book,
        live: &Live,
        outcome: Outcome,
    ) -> Option<(TaskNext, Option<String>)> {
        let active = &book.runs[live.run];
        if active.cancelling
            || outcome.is_complete()
            || outcome == Outcome::Cancelled
            || !(outcome.is_retryable() || outcome == Outcome::NotReady)
        {
            return None;
        }
        let frozen = self.frozen_at(active, live.task, book.now)?;
        let note = format!(
            "frozen {frozen}: not retried after it ended {}",
            outcome.as_str()
        );
        Some((TaskNext::Done(outcome), Some(note)))
    }

    /// The note stored for a frozen task that a late upstream task would have run again, and
    /// that keeps its outcome; `why` says what would have run it (`upstream task "x" landed
    /// late`). The change joins the step's writes before anything acts on the decision.
    pub(crate) fn frozen_rerun_change(
        &self,
        active: &ActiveRun,
        task: TaskIndex,
        why: &str,
        frozen: &str,
    ) -> TaskChange {
        let slot = &active.slots[task];
        let message = format!("frozen {frozen}: not rerun after {why}");
        TaskChange {
            task: self.dag.name(task).to_string(),
            state: slot.state,
            outcome: slot.outcome,
            not_before: None,
            message: Some(message.clone()),
            reset_retry_budget: false,
            reason: message,
        }
    }
}

/// A freeze's delay as a pipeline file would write it: `30m`, `2h`, `1h30m`.
fn as_written(delay: std::time::Duration) -> String {
    let seconds = delay.as_secs();
    match (seconds / 3600, seconds % 3600 / 60, seconds % 60) {
        (hours, 0, 0) => format!("{hours}h"),
        (0, minutes, 0) => format!("{minutes}m"),
        (hours, minutes, 0) => format!("{hours}h{minutes}m"),
        _ => keel_model::format_duration(delay),
    }
}
