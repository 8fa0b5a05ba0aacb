//! Feature flags (`keel flags set TASK off|N%`): a task its flag leaves out of a partition is
//! settled `skipped` instead of starting its first attempt, with why. The driver reads the
//! flags from the store when it starts and on every poll, so a flag set while Keel runs applies
//! to every task that has not started yet, in new and unfinished runs alike.

use super::*;
use keel_model::FlagState;

impl Core {
    /// Why `task` of run `run_index` is skipped by its flag; `None` when it runs. Only a task
    /// that has not started is skipped: a flag never stops work under way or undoes a result.
    pub(crate) fn flag_skip(
        &self,
        book: &Book,
        run_index: usize,
        task: TaskIndex,
    ) -> Option<String> {
        // An item follows its expanded task's flag.
        let name = self.dag.name(self.base_task(task));
        let (state, by) = book.flags.get(name)?;
        let active = &book.runs[run_index];
        if active.slots[task].attempts > 0
            || state.runs_in(&self.spec.name, name, &active.record.partition)
        {
            return None;
        }
        Some(match state {
            FlagState::Percent(share) => format!(
                "skipped by its flag: {name} runs in {share}% of partitions, not in {} (set by {by})",
                active.record.partition
            ),
            _ => format!("skipped by its flag: {name} is switched off (set by {by})"),
        })
    }

    /// Settles the tasks `pick_ready` found skipped by their flag.
    pub(crate) fn settle_flag_skips(&mut self, book: &mut Book) -> Result<(), EngineError> {
        for (run_index, task, message) in std::mem::take(&mut book.flag_skips) {
            let active = &book.runs[run_index];
            if active.finished
                || !matches!(
                    active.slots[task].state,
                    TaskState::Pending | TaskState::Waiting
                )
            {
                continue;
            }
            self.settle_task(book, run_index, task, Outcome::Skipped, message)?;
        }
        Ok(())
    }
}
