//! Freezes (`freeze_after = "19:00"`): from that local time on the partition's date, in the
//! pipeline's time zone, a task is no longer run again by Keel on its own: a failed attempt is
//! not retried and a late upstream task does not rerun it (reconciliation, or a rerun owed
//! while it ran). The task keeps the outcome it has and its message says what was not rerun and
//! why. A manual `keel retry` still runs it: that is an operator's decision.

use super::*;

impl Core {
    /// The freeze time of `task` when it has passed in `active`'s partition at `now`.
    pub(crate) fn frozen_at(
        &self,
        active: &ActiveRun,
        task: TaskIndex,
        now: Millis,
    ) -> Option<keel_model::TimeOfDay> {
        // An item of an expanded task has no freeze of its own.
        if self.is_item(task) {
            return None;
        }
        let freeze = self.spec.tasks[task].freeze_after?;
        let instant = freeze.on_partition(&active.record.partition, &self.spec.timezone)?;
        (now >= instant).then_some(freeze)
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
            "frozen at {frozen}: not retried after it ended {}",
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
        frozen: keel_model::TimeOfDay,
    ) -> TaskChange {
        let slot = &active.slots[task];
        let message = format!("frozen at {frozen}: not rerun after {why}");
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
