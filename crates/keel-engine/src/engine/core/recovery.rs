//! Recovery: a run is loaded from the store, with every decision a previous Keel stored (gates,
//! owed reruns, sensor backoff), and the attempts it left live are adopted, recorded or retried
//! as `lost`. Nothing here may trust memory: it is rebuilt from the store.

use super::*;

/// A task that is missing from a run's stored tasks: added to the pipeline after the run was
/// created, so not part of it.
const NOT_IN_THE_RUN: Slot = Slot {
    state: TaskState::Done,
    outcome: Some(Outcome::Skipped),
    attempts: 0,
    charged: 0,
    first_started_at: None,
    losses: 0,
    not_before: None,
    ready_since: None,
};

impl Core {
    /// The in-memory view of a stored run: a cache, nothing more.
    pub(crate) fn active_run(
        &self,
        record: RunRecord,
        stored: &[keel_store::TaskRunRecord],
    ) -> ActiveRun {
        let tasks = self.dag.len();
        let topology = self.topology_index(record.pass.as_deref());
        let mut active = ActiveRun {
            topology,
            finished: record.state.is_finished(),
            trace: TraceId::from_stored(&record.trace_id),
            record,
            slots: PerTask::new(NOT_IN_THE_RUN, tasks),
            remaining: PerTask::new(0, self.dag.nodes()),
            gates: vec![GateStatus::Waiting; self.topologies[topology].gates.len()],
            waived: PerTask::new(false, tasks),
            needs_rerun: PerTask::new(false, tasks),
            sensor_ready: PerTask::new(false, tasks),
            calendar_passed: PerTask::new(false, tasks),
            sensor_polls: PerTask::new(0, tasks),
            sensor_errors: PerTask::new(0, tasks),
            expansions: HashMap::new(),
            earlier_message: PerTask::new(None, tasks),
            repeat_succeeded: PerTask::new(false, tasks),
            sensor_stage: PerTask::new(0, tasks),
            done: 0,
            cancelling: false,
            left_out: Vec::new(),
            ended_at: PerTask::new(None, tasks),
            heals_used: 0,
        };
        for task in stored {
            let Some(index) = self.dag.index_of(&task.task) else {
                continue;
            };
            active.slots[index] = Slot {
                state: task.state,
                outcome: task.outcome,
                attempts: task.attempts,
                charged: task.charged,
                first_started_at: task.first_started_at,
                losses: 0,
                not_before: task.not_before,
                ready_since: None,
            };
            // A pass's run settles the tasks outside the pass `skipped`: they are taken as done,
            // not left out, and the run ends `succeeded` without them.
            // So are the tasks a calendar skips.
            if task.outcome == Some(Outcome::Skipped)
                && task.attempts == 0
                && active.record.pass.is_none()
                && self
                    .calendar_skip(&active.record.partition, index)
                    .is_none()
            {
                active.left_out.push(index);
            }
            active.sensor_polls[index] = task.sensor_polls;
            active.sensor_errors[index] = task.sensor_errors;
            // Running and owed a rerun: it runs again when it ends.
            active.needs_rerun[index] = task.rerun_pending && task.state == TaskState::Running;
        }
        active
    }

    /// Pays the reruns a previous Keel owed to tasks that ended while it was down (or before it
    /// could run them again), then counts what is done.
    pub(crate) fn restore_tasks(
        &mut self,
        book: &mut Book,
        run_index: usize,
        stored: &[keel_store::TaskRunRecord],
    ) -> Result<(), EngineError> {
        let active = &mut book.runs[run_index];
        let owed: Vec<TaskIndex> = stored
            .iter()
            .filter(|task| {
                task.rerun_pending
                    && task.state == TaskState::Done
                    && task.outcome.is_some_and(Outcome::is_complete)
            })
            .filter_map(|task| self.dag.index_of(&task.task))
            .collect();
        if !owed.is_empty() {
            let reason = "an upstream task landed late while it ran; running again with it";
            let changes: Vec<TaskChange> = owed
                .iter()
                .map(|task| TaskChange::reset(self.name(*task), reason))
                .collect();
            let run = active.record.id;
            write_tasks(&mut book.writes, run, changes);
            for task in owed {
                active.slots[task].state = TaskState::Pending;
                active.slots[task].outcome = None;
            }
        }
        active.done = active
            .slots
            .iter()
            .filter(|slot| slot.state == TaskState::Done)
            .count();
        Ok(())
    }

    /// Takes up each gate as stored (or, for a gate never recorded, as the task states imply).
    /// Returns the tasks that a gate waived and that completed since, whose reconcile a previous
    /// Keel did not get to record.
    pub(crate) fn restore_gates(
        &mut self,
        book: &mut Book,
        run_index: usize,
        stored_gates: &[GateRecord],
    ) -> Result<Vec<TaskIndex>, EngineError> {
        let active = &mut book.runs[run_index];
        let mut landed_late = Vec::new();
        for (gate, definition) in self.topologies[active.topology].gates.iter().enumerate() {
            let stored = stored_gates
                .iter()
                .find(|stored| stored.phase == definition.phase);
            active.gates[gate] = match stored.map(|stored| stored.status) {
                Some(GateState::Open) => GateStatus::Open,
                Some(GateState::Failed) => GateStatus::Failed,
                Some(GateState::Sufficient { open_at }) => GateStatus::Sufficient { open_at },
                Some(GateState::Waiting) => GateStatus::Waiting,
                // A run from before gates were recorded: downstream work that already started
                // means the gate had opened.
                None if self.gate_had_opened(active, gate) => GateStatus::Open,
                None => GateStatus::Waiting,
            };
            if let GateStatus::Sufficient { open_at } = active.gates[gate] {
                book.timers
                    .push(Reverse((open_at, run_index, Wake::Gate(gate))));
            }
            // A tiered gate is judged again as each tier comes into force, whether or not a
            // task of its phase ends then.
            if matches!(active.gates[gate], GateStatus::Waiting) {
                for tier in &definition.tiers {
                    let at = active.record.created_at + tier.after;
                    book.timers.push(Reverse((at, run_index, Wake::Gate(gate))));
                }
            }
            if active.gates[gate] != GateStatus::Open {
                continue;
            }
            for task in &definition.tasks {
                let name = self.name(*task);
                let listed = stored.is_none_or(|stored| stored.waived.iter().any(|n| n == name));
                let complete = is_complete(&active.slots[*task]);
                active.waived[*task] = listed && !complete;
                if listed && complete && stored.is_some() {
                    landed_late.push(*task);
                }
            }
        }
        Ok(landed_late)
    }

    /// Queues the tasks whose dependencies are complete, and the timers of waiting ones.
    pub(crate) fn queue_what_can_start(
        &self,
        book: &mut Book,
        run_index: usize,
        stored: &[keel_store::TaskRunRecord],
    ) {
        let now = book.now;
        let active = &mut book.runs[run_index];
        self.recompute_remaining(active);
        for task in 0..self.dag.len() {
            match active.slots[task].state {
                TaskState::Pending if active.remaining[task] == 0 => {
                    book.ready.push_back((run_index, task))
                }
                TaskState::Waiting => {
                    let not_before = stored
                        .iter()
                        .find(|stored| stored.task == self.name(task))
                        .and_then(|stored| stored.not_before)
                        .unwrap_or(now);
                    book.timers
                        .push(Reverse((not_before, run_index, Wake::Task(task))));
                }
                _ => {}
            }
        }
    }
}
