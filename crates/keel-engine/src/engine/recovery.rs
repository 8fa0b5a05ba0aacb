//! Recovery: a run is loaded from the store, with every decision a previous Keel stored (gates,
//! owed reruns, sensor backoff), and the attempts it left live are adopted, recorded or retried
//! as `lost`. Nothing here may trust memory: it is rebuilt from the store.

use super::*;

impl<S: Store, E: Executor, C: Clock> Engine<S, E, C> {
    pub(super) async fn load_run(
        &mut self,
        book: &mut Book,
        run: RunId,
        live: &[AttemptRecord],
    ) -> Result<(), EngineError> {
        let record = self.store.run(run).await?;
        let stored = self.store.task_runs(run).await?;
        let by_name: HashMap<&str, &keel_store::TaskRunRecord> = stored
            .iter()
            .map(|task| (task.task.as_str(), task))
            .collect();
        let slots: Vec<Slot> = (0..self.dag.len())
            .map(|index| match by_name.get(self.dag.name(index)) {
                Some(task) => Slot {
                    state: task.state,
                    outcome: task.outcome,
                    attempts: task.attempts,
                    charged: task.charged,
                    first_started_at: task.first_started_at,
                },
                // A task added to the pipeline after this run was created is not part of it.
                None => Slot {
                    state: TaskState::Done,
                    outcome: Some(Outcome::Skipped),
                    attempts: 0,
                    charged: 0,
                    first_started_at: None,
                },
            })
            .collect();
        let run_index = book.runs.len();
        book.runs.push(ActiveRun {
            record: record.clone(),
            remaining: vec![0; slots.len()],
            gates: vec![GateStatus::Waiting; self.topology.gates.len()],
            waived: vec![false; slots.len()],
            needs_rerun: vec![false; slots.len()],
            sensor_ready: vec![false; slots.len()],
            sensor_polls: vec![0; slots.len()],
            done: 0,
            slots,
            cancelling: false,
            finished: record.state.is_finished(),
        });
        if record.state.is_finished() {
            return Ok(());
        }
        // Count what is done, restore what the store remembers of each task, settle the gates as
        // stored (or, for a gate never recorded, as the task states imply), and find what can
        // start.
        let stored_gates = self.store.gates(run).await?;
        let active = &mut book.runs[run_index];
        let mut owed_reruns = Vec::new();
        for task in 0..self.dag.len() {
            let Some(stored) = by_name.get(self.dag.name(task)) else {
                continue;
            };
            active.sensor_polls[task] = stored.sensor_polls;
            if stored.rerun_pending {
                match stored.state {
                    TaskState::Running => active.needs_rerun[task] = true,
                    // It ended, but Keel died before running it again.
                    TaskState::Done if stored.outcome.is_some_and(Outcome::is_complete) => {
                        owed_reruns.push(task)
                    }
                    _ => {}
                }
            }
        }
        if !owed_reruns.is_empty() {
            let changes = owed_reruns
                .iter()
                .map(|task| TaskChange {
                    task: self.dag.name(*task).to_string(),
                    state: TaskState::Pending,
                    outcome: None,
                    not_before: None,
                    message: None,
                    reset_retry_budget: true,
                    reason: "an upstream task landed late while it ran; running again with it"
                        .into(),
                })
                .collect();
            self.store
                .update_tasks(run, changes, self.clock.now())
                .await?;
            for task in owed_reruns {
                active.slots[task].state = TaskState::Pending;
                active.slots[task].outcome = None;
            }
        }
        let mut landed_late = Vec::new();
        let mut failed_roots = Vec::new();
        for task in 0..self.dag.len() {
            let slot = &active.slots[task];
            if slot.state == TaskState::Done {
                active.done += 1;
                if !slot.outcome.is_some_and(Outcome::is_complete) {
                    failed_roots.push(task);
                }
            }
        }
        let now = self.clock.now();
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
            match active.gates[gate] {
                GateStatus::Sufficient { open_at } => {
                    book.timers
                        .push(Reverse((open_at, run_index, Wake::Gate(gate))));
                }
                GateStatus::Open => {
                    for task in &definition.tasks {
                        let listed = stored.is_none_or(|stored| {
                            stored
                                .waived
                                .iter()
                                .any(|name| name == self.dag.name(*task))
                        });
                        active.waived[*task] = listed && !is_complete(&active.slots[*task]);
                        // Waived, then completed, but Keel died before reconciling.
                        if listed && is_complete(&active.slots[*task]) && stored.is_some() {
                            landed_late.push(*task);
                        }
                    }
                }
                _ => {}
            }
        }
        self.recompute_remaining(active);
        for task in 0..self.dag.len() {
            let slot = &active.slots[task];
            match slot.state {
                TaskState::Pending if active.remaining[task] == 0 => {
                    book.ready.push_back((run_index, task))
                }
                TaskState::Waiting => {
                    let stored = by_name
                        .get(self.dag.name(task))
                        .and_then(|task| task.not_before)
                        .unwrap_or(now);
                    book.timers
                        .push(Reverse((stored, run_index, Wake::Task(task))));
                }
                _ => {}
            }
        }
        // Recover the attempts a previous Keel left live.
        for attempt in live.iter().filter(|attempt| attempt.run == run) {
            let Some(task) = self.dag.index_of(&attempt.task) else {
                continue;
            };
            let epoch = match self
                .store
                .take_over_attempt(attempt.id, &self.config.owner, self.clock.now())
                .await
            {
                Ok(epoch) => epoch,
                Err(StoreError::StaleLease { .. }) => continue,
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
                run,
                partition: record.partition.clone(),
                task: attempt.task.clone(),
                attempt: attempt.number,
                how,
            });
            book.live.insert(
                attempt.id,
                Live::new(run_index, task, attempt.number, epoch),
            );
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
                }
                Adopted::Finished(report) => {
                    self.on_reports(book, vec![(attempt.id, report)]).await?
                }
                Adopted::Gone => {
                    let report = lost_report("keel stopped before the attempt could finish");
                    self.on_reports(book, vec![(attempt.id, report)]).await?;
                }
            }
        }
        (self.observer)(Progress::RunLoaded {
            run,
            partition: record.partition.clone(),
            tasks: self.dag.len(),
            done: book.runs[run_index].done,
        });
        if record.cancel_requested {
            self.begin_cancel(book, run_index).await?;
        }
        for root in failed_roots {
            self.propagate_failure(book, run_index, root).await?;
        }
        // Tasks may have finished after a gate was last judged: judge again (a stored grace
        // period keeps its end).
        for gate in 0..self.topology.gates.len() {
            self.evaluate_gate(book, run_index, gate).await?;
        }
        for task in landed_late {
            self.reconcile(book, run_index, task).await?;
        }
        self.finish_run_if_done(book, run_index).await
    }
}
