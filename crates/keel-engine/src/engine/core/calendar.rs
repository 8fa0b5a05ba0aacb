//! Calendars (`when`): a task whose weekdays leave out the partition's date is settled
//! `skipped` when its run is created, taken as done like a task outside a pass, with why. Its
//! `when` command runs before its first attempt like a sensor poll (in the task's working
//! directory, with its environment): exit 0 runs the task, exit 1 settles it `skipped`, and
//! anything else is a sensor error, which uses up one of the task's retry attempts.

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
                    task: self.name(*task).to_string(),
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

    /// Runs the task's `when` command once, as a sensor poll is run: a process without an
    /// attempt row.
    pub(crate) fn start_calendar(&mut self, book: &mut Book, run_index: usize, task: TaskIndex) {
        let now = book.now;
        let record = book.runs[run_index].record.clone();
        let active = &mut book.runs[run_index];
        active.slots[task].first_started_at.get_or_insert(now);
        active.slots[task].state = TaskState::Waiting;
        let dir = self.poll_dir(record.id, task, "when", now);
        // Sensor polls are numbered from 1: poll 0 names the calendar's span.
        let span = active.trace.sensor_span(self.name(task), 0);
        let launch = Launch {
            command: self.calendar_command(&record, task),
            http: None,
            heartbeat: None,
            ..self.task_launch(&record, task, Some(0), 0, span, dir)
        };
        self.push_poll(book, run_index, task, launch);
    }

    /// The `when` command ended: run the task, skip it, or count a sensor error.
    pub(crate) fn on_calendar(
        &mut self,
        book: &mut Book,
        run_index: usize,
        task: TaskIndex,
        report: Report,
    ) -> Result<(), EngineError> {
        let active = &book.runs[run_index];
        if active.cancelling
            || active.finished
            || !matches!(
                active.slots[task].state,
                TaskState::Waiting | TaskState::Pending
            )
        {
            return Ok(());
        }
        let now = book.now;
        let command = self.calendar_command(&active.record, task).join(" ");
        let detail = report.message.clone().unwrap_or_default();
        match (report.outcome, report.exit_code) {
            (Outcome::Succeeded, _) => {
                let active = &mut book.runs[run_index];
                active.calendar_passed[task] = true;
                active.slots[task].state = TaskState::Pending;
                book.ready.push_back((run_index, task));
                Ok(())
            }
            (Outcome::Failed, Some(1)) => {
                let message = format!("the when command {command:?} said not to run: {detail}");
                self.settle_task(book, run_index, task, Outcome::Skipped, message)
            }
            // It cannot run at all (command not found, no working directory): asking again
            // would fail the same way.
            (Outcome::FailedPermanent, code) if code != Some(65) => {
                let message = format!("the when command {command:?} failed permanently: {detail}");
                self.settle_task(book, run_index, task, Outcome::FailedPermanent, message)
            }
            _ => {
                let retries = self.spec.tasks[task].retries;
                let errors = active.sensor_errors[task] + 1;
                let detail = if detail.is_empty() {
                    format!("it ended {}", report.outcome.as_str())
                } else {
                    detail
                };
                if errors >= retries.attempts {
                    let message = format!(
                        "the when command {command:?} failed {errors} time{} (retries.attempts = {}), the last time: {detail}",
                        if errors == 1 { "" } else { "s" },
                        retries.attempts
                    );
                    return self.settle_task(book, run_index, task, Outcome::Failed, message);
                }
                let at = now + retries.delay(errors, self.random.unit()).as_millis() as Millis;
                book.writes.push(Write::SensorPoll(SensorPoll {
                    run: active.record.id,
                    task: self.name(task).to_string(),
                    ready: false,
                    not_before: Some(at),
                    error: true,
                    message: Some(format!(
                        "when command error {errors} of {}: {detail}; asking again",
                        retries.attempts
                    )),
                    at: now,
                }));
                let active = &mut book.runs[run_index];
                active.sensor_errors[task] = errors;
                active.sensor_polls[task] += 1;
                active.slots[task].state = TaskState::Waiting;
                active.slots[task].not_before = Some(at);
                book.timers.push(Reverse((at, run_index, Wake::Task(task))));
                Ok(())
            }
        }
    }

    /// The `when` command as it runs for this run, templates expanded.
    fn calendar_command(&self, record: &RunRecord, task: TaskIndex) -> Vec<String> {
        let run_id = record.id.0.to_string();
        let values = TemplateValues {
            date: &record.partition,
            partition: &record.partition,
            run_id: &run_id,
            task: self.name(task),
            attempt: "0",
            pass: record.pass.as_deref().unwrap_or_default(),
            params: self.params_of(record),
        };
        let parts = self.commands[task].calendar.as_deref().unwrap_or_default();
        parts.iter().map(|part| part.expand(&values)).collect()
    }
}
