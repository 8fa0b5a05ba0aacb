//! Calendars (`when`): a task whose weekdays leave out the partition's date is settled
//! `skipped` when its run is created, taken as done like a task outside a pass, with why.

use super::*;

impl Core {
    /// Why a run of `partition` skips `task` by its calendar; `None` when the task runs.
    pub(crate) fn calendar_skip(&self, partition: &str, task: TaskIndex) -> Option<String> {
        self.spec.tasks[task]
            .when
            .as_ref()
            .and_then(|calendar| calendar.skip_reason(partition))
    }

    /// What a new run of `partition` stores for the tasks of `in_run` its calendars skip (they
    /// are created settled `skipped`): the reason as the task's message, with an event.
    pub(crate) fn calendar_changes(&self, partition: &str, in_run: &[TaskIndex]) -> Vec<Change> {
        in_run
            .iter()
            .filter_map(|task| {
                let reason = self.calendar_skip(partition, *task)?;
                Some(Change::Task(TaskChange {
                    task: self.dag.name(*task).to_string(),
                    state: TaskState::Done,
                    outcome: Some(Outcome::Skipped),
                    not_before: None,
                    message: Some(reason.clone()),
                    reset_retry_budget: false,
                    reason,
                }))
            })
            .collect()
    }
}
