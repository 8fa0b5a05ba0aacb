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
};

impl<S: Store, E: Executor, C: Clock> Engine<S, E, C> {
    /// Loads a run into the book and carries it on from where the store says it stands.
    pub(super) async fn load_run(
        &mut self,
        book: &mut Book,
        run: RunId,
        live: &[AttemptRecord],
    ) -> Result<(), EngineError> {
        let record = self.store.run(run).await?;
        let stored = self.store.task_runs(run).await?;
        let run_index = book.runs.len();
        book.runs.push(self.active_run(record.clone(), &stored));
        if record.state.is_finished() {
            return Ok(());
        }
        self.restore_tasks(book, run_index, &stored)?;
        let landed_late = self.restore_gates(book, run_index).await?;
        self.queue_what_can_start(book, run_index, &stored);
        for attempt in live.iter().filter(|attempt| attempt.run == run) {
            self.recover_attempt(book, run_index, attempt).await?;
        }
        (self.observer)(Progress::RunLoaded {
            run,
            partition: record.partition.clone(),
            tasks: self.dag.len(),
            done: book.runs[run_index].done,
        });
        if record.cancel_requested {
            self.begin_cancel(book, run_index)?;
        }
        let failed_roots: Vec<TaskIndex> = (0..self.dag.len())
            .filter(|task| {
                let slot = &book.runs[run_index].slots[*task];
                slot.state == TaskState::Done && !slot.outcome.is_some_and(Outcome::is_complete)
            })
            .collect();
        for root in failed_roots {
            self.propagate_failure(book, run_index, root)?;
        }
        // Tasks may have finished after a gate was last judged: judge again (a stored grace
        // period keeps its end).
        for gate in 0..self.topology.gates.len() {
            self.evaluate_gate(book, run_index, gate)?;
        }
        for task in landed_late {
            self.reconcile(book, run_index, task)?;
        }
        self.finish_run_if_done(book, run_index)
    }

    /// The in-memory view of a stored run: a cache, nothing more.
    fn active_run(&self, record: RunRecord, stored: &[keel_store::TaskRunRecord]) -> ActiveRun {
        let tasks = self.dag.len();
        let mut active = ActiveRun {
            finished: record.state.is_finished(),
            record,
            slots: vec![NOT_IN_THE_RUN; tasks],
            remaining: vec![0; tasks],
            gates: vec![GateStatus::Waiting; self.topology.gates.len()],
            waived: vec![false; tasks],
            needs_rerun: vec![false; tasks],
            sensor_ready: vec![false; tasks],
            sensor_polls: vec![0; tasks],
            done: 0,
            cancelling: false,
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
            };
            active.sensor_polls[index] = task.sensor_polls;
            // Running and owed a rerun: it runs again when it ends.
            active.needs_rerun[index] = task.rerun_pending && task.state == TaskState::Running;
        }
        active
    }

    /// Pays the reruns a previous Keel owed to tasks that ended while it was down (or before it
    /// could run them again), then counts what is done.
    fn restore_tasks(
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
                .map(|task| TaskChange {
                    task: self.dag.name(*task).to_string(),
                    state: TaskState::Pending,
                    outcome: None,
                    not_before: None,
                    message: None,
                    reset_retry_budget: true,
                    reason: reason.into(),
                })
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
    async fn restore_gates(
        &mut self,
        book: &mut Book,
        run_index: usize,
    ) -> Result<Vec<TaskIndex>, EngineError> {
        let stored_gates = self.store.gates(book.runs[run_index].record.id).await?;
        let active = &mut book.runs[run_index];
        let mut landed_late = Vec::new();
        for (gate, definition) in self.topology.gates.iter().enumerate() {
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
            if active.gates[gate] != GateStatus::Open {
                continue;
            }
            for task in &definition.tasks {
                let name = self.dag.name(*task);
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
    fn queue_what_can_start(
        &self,
        book: &mut Book,
        run_index: usize,
        stored: &[keel_store::TaskRunRecord],
    ) {
        let now = self.clock.now();
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
                        .find(|stored| stored.task == self.dag.name(task))
                        .and_then(|stored| stored.not_before)
                        .unwrap_or(now);
                    book.timers
                        .push(Reverse((not_before, run_index, Wake::Task(task))));
                }
                _ => {}
            }
        }
    }

    /// Takes over an attempt a previous Keel left live: adopted if still running, recorded if it
    /// ended meanwhile, and otherwise `lost` and retried.
    async fn recover_attempt(
        &mut self,
        book: &mut Book,
        run_index: usize,
        attempt: &AttemptRecord,
    ) -> Result<(), EngineError> {
        let Some(task) = self.dag.index_of(&attempt.task) else {
            return Ok(());
        };
        let now = self.clock.now();
        let epoch = match self
            .store
            .take_over_attempt(attempt.id, &self.config.owner, now)
            .await
        {
            Ok(epoch) => epoch,
            Err(StoreError::StaleLease { .. }) => return Ok(()),
            Err(error) => return Err(error.into()),
        };
        book.runs[run_index].slots[task].state = TaskState::Running;
        let adopted = self
            .executor
            .adopt(PathBuf::from(&attempt.dir), attempt.pid);
        let how = match &adopted {
            Adopted::Running(_) => "adopted while still running",
            Adopted::Finished(_) => "finished while keel was down",
            Adopted::Gone => "lost",
        };
        (self.observer)(Progress::AttemptRecovered {
            run: attempt.run,
            partition: book.runs[run_index].record.partition.clone(),
            task: attempt.task.clone(),
            attempt: attempt.number,
            how,
        });
        let live = Live::new(run_index, task, attempt.number, epoch);
        book.live.insert(attempt.id, live);
        match adopted {
            Adopted::Running(running) => {
                // It still holds its place in the bulkheads of the resources it uses.
                let permits: Vec<(usize, Permit)> = self.task_uses[task]
                    .iter()
                    .map(|resource| (*resource, book.resources[*resource].adopt()))
                    .collect();
                if !permits.is_empty() {
                    book.permits.insert(attempt.id, permits);
                }
                watch(book, attempt.id, running);
                Ok(())
            }
            Adopted::Finished(report) => self.on_reports(book, vec![(attempt.id, report)]),
            Adopted::Gone => {
                let report = lost_report("keel stopped before the attempt could finish");
                self.on_reports(book, vec![(attempt.id, report)])
            }
        }
    }
}
