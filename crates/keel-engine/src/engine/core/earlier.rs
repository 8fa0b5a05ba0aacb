//! Inputs on an earlier partition (`after = ["player_game_summary@-1d"]`): a task waits for a
//! task of the run of an earlier date. They are not in the graph: each run looks the earlier
//! partition up, in the book when a run of it is loaded here (so the end of one of its tasks
//! wakes the tasks waiting for it at once), else in what the driver last read from the store.
//!
//! - The earlier task completed (`succeeded`, `no_data`, `skipped`), or the earlier date comes
//!   before the pipeline's first run (a pipeline's first day has no yesterday): satisfied.
//! - Its run has not finished it: the task waits, `waiting` with "waiting for TASK on DATE" as
//!   its message, for up to its `deadline` from when it began to wait (stored as the task's
//!   first start), then ends `upstream_failed`.
//! - It ended without completing, or no run of that date exists although the pipeline has runs
//!   before it (a gap waiting will not fill: schedules and ranges create earlier dates first):
//!   the task ends `upstream_failed` at once, naming the date.
//!
//! A soft entry never fails its task: it waits the same way, then the task runs and finds the
//! entry in `KEEL_MISSING` (`TASK@-1d`).

use keel_model::EarlierInput;

use super::*;

/// Where a task of an earlier partition stands, as the driver read it from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EarlierFact {
    /// Its latest run's task completed.
    Complete,
    /// No run of that date, and none of any date before it: the pipeline starts later.
    BeforeHistory,
    /// Its latest run has not finished the task.
    Unfinished,
    /// Its latest run ended the task without completing it; why, as in "ended failed".
    Ended(String),
    /// No run of that date, though the pipeline has runs of earlier dates.
    NoRun,
}

impl EarlierFact {
    /// Whether the dependent may go on with this input as done.
    fn satisfied(&self) -> bool {
        matches!(self, EarlierFact::Complete | EarlierFact::BeforeHistory)
    }
}

/// What a task with inputs on earlier partitions does now.
enum EarlierVerdict {
    Go,
    Wait { message: String, until: Millis },
    Fail(String),
}

/// Where a task of a loaded run stands.
fn fact_of_slot(active: &ActiveRun, task: TaskIndex) -> EarlierFact {
    let slot = &active.slots[task];
    if active.left_out.contains(&task) {
        return EarlierFact::Ended("was left out of its run (keel run --only)".to_string());
    }
    match (slot.state, slot.outcome) {
        (TaskState::Done, Some(outcome)) if outcome.is_complete() => EarlierFact::Complete,
        (TaskState::Done, Some(outcome)) => EarlierFact::Ended(format!("ended {outcome}")),
        _ => EarlierFact::Unfinished,
    }
}

impl Core {
    /// Where `input` stands for a run of `partition` (its own): from a run of the earlier date
    /// loaded here, the newest, else from the store as last read. Not read yet counts as not
    /// finished: the driver reads it before the task is next looked at.
    pub(crate) fn earlier_fact(
        &self,
        book: &Book,
        input: &EarlierInput,
        earlier_partition: &str,
    ) -> EarlierFact {
        let Some(task) = self.dag.index_of(&input.task) else {
            return EarlierFact::Ended("is not a task of the pipeline".to_string());
        };
        let loaded = book
            .runs
            .iter()
            .enumerate()
            .filter(|(_, active)| {
                active.record.partition == earlier_partition && active.record.pass.is_none()
            })
            .max_by_key(|(index, active)| (active.record.id, *index));
        if let Some((_, active)) = loaded {
            return fact_of_slot(active, task);
        }
        book.earlier
            .get(&(earlier_partition.to_string(), input.task.clone()))
            .cloned()
            .unwrap_or(EarlierFact::Unfinished)
    }

    /// The (partition, task) pairs the driver must read from the store for the tasks of a run
    /// that wait on earlier partitions: those no loaded run answers.
    pub(crate) fn earlier_to_read(&self, book: &Book, run_index: usize) -> Vec<(String, String)> {
        let active = &book.runs[run_index];
        // A pass's run waits on the pipeline's own runs of earlier dates, like any run.
        if active.finished {
            return Vec::new();
        }
        let mut wanted = Vec::new();
        for (task, spec) in self.spec.tasks.iter().enumerate() {
            if spec.edges.earlier.is_empty() || active.slots[task].state == TaskState::Done {
                continue;
            }
            for input in &spec.edges.earlier {
                let Some(partition) = input.partition_before(&active.record.partition) else {
                    continue;
                };
                let loaded = book.runs.iter().any(|other| {
                    other.record.partition == partition && other.record.pass.is_none()
                });
                let key = (partition, input.task.clone());
                if !loaded && !wanted.contains(&key) {
                    wanted.push(key);
                }
            }
        }
        wanted
    }

    /// Whether `task` may go on to its calendar, sensor and attempt as far as its inputs on
    /// earlier partitions go. A task that must wait is parked (its message stored, a timer at
    /// its deadline); one that can never have them is handed to `book.given_up` to end
    /// `upstream_failed`.
    pub(crate) fn earlier_inputs_allow(
        &mut self,
        book: &mut Book,
        run_index: usize,
        task: TaskIndex,
    ) -> bool {
        // An item of an expanded task waits on nothing of earlier partitions: its parent did.
        if self.is_item(task) {
            return true;
        }
        let inputs = &self.spec.tasks[task].edges.earlier;
        if inputs.is_empty() || book.runs[run_index].slots[task].attempts > 0 {
            return true;
        }
        match self.earlier_verdict(book, run_index, task) {
            EarlierVerdict::Go => true,
            EarlierVerdict::Fail(message) => {
                book.given_up
                    .push((run_index, task, Outcome::UpstreamFailed, message));
                false
            }
            EarlierVerdict::Wait { message, until } => {
                let now = book.now;
                let active = &mut book.runs[run_index];
                active.slots[task].state = TaskState::Waiting;
                active.slots[task].first_started_at.get_or_insert(now);
                if active.earlier_message[task].as_deref() != Some(message.as_str()) {
                    active.earlier_message[task] = Some(message.clone());
                    let change = TaskChange {
                        task: self.dag.name(task).to_string(),
                        state: TaskState::Waiting,
                        outcome: None,
                        not_before: None,
                        message: Some(message.clone()),
                        reset_retry_budget: false,
                        reason: message,
                    };
                    write_tasks(&mut book.writes, active.record.id, [change]);
                    book.timers
                        .push(Reverse((until, run_index, Wake::Task(task))));
                }
                if !book.earlier_waiters.contains(&(run_index, task)) {
                    book.earlier_waiters.push((run_index, task));
                }
                false
            }
        }
    }

    fn earlier_verdict(&self, book: &Book, run_index: usize, task: TaskIndex) -> EarlierVerdict {
        let active = &book.runs[run_index];
        let spec = &self.spec.tasks[task];
        let deadline = spec.deadline.as_millis() as Millis;
        let until = active.slots[task].first_started_at.unwrap_or(book.now) + deadline;
        let mut waiting = Vec::new();
        for input in &spec.edges.earlier {
            let Some(partition) = input.partition_before(&active.record.partition) else {
                continue;
            };
            match self.earlier_fact(book, input, &partition) {
                fact if fact.satisfied() => {}
                _ if input.soft && book.now >= until => {}
                EarlierFact::Unfinished => waiting.push(format!("{} on {partition}", input.task)),
                _ if input.soft => {}
                EarlierFact::Ended(detail) => {
                    return EarlierVerdict::Fail(format!(
                        "{} on {partition} {detail}; retry it there, then retry this task",
                        input.task
                    ));
                }
                _ => {
                    return EarlierVerdict::Fail(format!(
                        "no run of {partition} to wait for {} on; run that date, then retry this task",
                        input.task
                    ));
                }
            }
        }
        if waiting.is_empty() {
            return EarlierVerdict::Go;
        }
        if book.now >= until {
            return EarlierVerdict::Fail(format!(
                "waited {} for {}, which has not finished; the deadline passed",
                keel_model::format_duration(spec.deadline),
                waiting.join(", ")
            ));
        }
        EarlierVerdict::Wait {
            message: format!("waiting for {}", waiting.join(", ")),
            until,
        }
    }

    /// `KEEL_MISSING`'s entries for inputs on earlier partitions: the soft ones that are not
    /// satisfied, as written (`player_game_summary@-1d`).
    pub(crate) fn missing_earlier_inputs(
        &self,
        book: &Book,
        run_index: usize,
        task: TaskIndex,
    ) -> Vec<String> {
        let active = &book.runs[run_index];
        self.spec.tasks[task]
            .edges
            .earlier
            .iter()
            .filter(|input| input.soft)
            .filter(|input| {
                input
                    .partition_before(&active.record.partition)
                    .is_some_and(|partition| {
                        !self.earlier_fact(book, input, &partition).satisfied()
                    })
            })
            .map(EarlierInput::label)
            .collect()
    }

    /// Something changed for runs of `partition` (one of its tasks ended, or the driver read
    /// the store again: `None`): the tasks that wait on it look again.
    pub(crate) fn wake_earlier_waiters(&self, book: &mut Book, partition: Option<&str>) {
        if book.earlier_waiters.is_empty() {
            return;
        }
        let waiters = std::mem::take(&mut book.earlier_waiters);
        for (run_index, task) in waiters {
            let active = &book.runs[run_index];
            if active.finished
                || !matches!(
                    active.slots[task].state,
                    TaskState::Waiting | TaskState::Pending
                )
            {
                continue;
            }
            let concerned = partition.is_none_or(|partition| {
                self.spec.tasks[task].edges.earlier.iter().any(|input| {
                    input.partition_before(&active.record.partition).as_deref() == Some(partition)
                })
            });
            if concerned {
                book.ready.push_back((run_index, task));
            } else {
                book.earlier_waiters.push((run_index, task));
            }
        }
    }
}
