//! Quorum gates and reconciliation: when a gated phase lets downstream go on without some of
//! its tasks, and what runs again when a waived task lands late. The pure rules (topology and
//! sufficiency) are in `crate::gate`; this is where they meet the store.

use super::*;

impl Core {
    /// The gate that may waive the edge `dependency → node`: the gate of the dependency's phase
    /// when the edge is the one from a task to its own phase's barrier. Every other edge, a
    /// task's own `after` above all, is a hard input that no gate waives.
    pub(crate) fn waivable(
        &self,
        active: &ActiveRun,
        dependency: NodeIndex,
        node: NodeIndex,
    ) -> Option<usize> {
        if !self.dag.is_task(dependency) || self.dag.barrier_of(dependency) != Some(node) {
            return None;
        }
        self.topology_of(active).gate_of_task(dependency)
    }

    /// Whether downstream work outside a gated phase already started, which means its gate had
    /// opened; for runs whose gates were never recorded.
    pub(crate) fn gate_had_opened(&self, active: &ActiveRun, gate: usize) -> bool {
        let Some(barrier) = self.topology_of(active).gates[gate]
            .tasks
            .first()
            .and_then(|task| self.dag.barrier_of(*task))
        else {
            return false;
        };
        self.tasks_behind(barrier)
            .into_iter()
            .any(|task| active.slots[task].state != TaskState::Pending)
    }

    /// The tasks that wait for `barrier` through barriers only: those of the phases downstream.
    fn tasks_behind(&self, barrier: NodeIndex) -> Vec<TaskIndex> {
        let mut seen = vec![false; self.dag.nodes()];
        let mut stack = vec![barrier];
        let mut tasks = Vec::new();
        while let Some(node) = stack.pop() {
            for dependent in self.dag.node_dependents(node) {
                if std::mem::replace(&mut seen[*dependent], true) {
                    continue;
                }
                if self.dag.is_task(*dependent) {
                    tasks.push(*dependent);
                } else {
                    stack.push(*dependent);
                }
            }
        }
        tasks
    }

    /// A task of a phase whose gate already opened failed for good after the gate opened (it had
    /// completed, then ran again for a late upstream task). The gate is judged again with it
    /// failed: still sufficient, downstream goes on without it like any task the gate waived;
    /// no longer sufficient, the gate fails and its failures flow downstream.
    pub(crate) fn failed_behind_an_open_gate(
        &mut self,
        book: &mut Book,
        run_index: usize,
        task: TaskIndex,
    ) {
        let topology = &self.topologies[book.runs[run_index].topology];
        let Some(gate) = topology.gate_of_task(task) else {
            return;
        };
        let active = &mut book.runs[run_index];
        if active.gates[gate] != GateStatus::Open || active.waived[task] {
            return;
        }
        let definition = &topology.gates[gate];
        let verdict = judge(
            definition,
            |task| is_complete(&active.slots[task]),
            |task| active.slots[task].state == TaskState::Done,
        );
        let name = self.name(task).to_string();
        if matches!(verdict, Verdict::Sufficient { .. }) {
            active.waived[task] = true;
            self.release_dependents(&mut book.ready, active, run_index, task, Edges::Waivable);
            let detail = format!(
                "phase {}: downstream proceeds without {name}, which failed after the gate opened",
                definition.phase
            );
            let kind = keel_model::EventKind::GateOpened;
            self.record_gate(&mut book.writes, active, gate, kind, detail);
            return;
        }
        active.gates[gate] = GateStatus::Failed;
        let detail = format!(
            "phase {}: the gate can no longer be met once {name} failed",
            definition.phase
        );
        let failed: Vec<TaskIndex> = definition
            .tasks
            .iter()
            .copied()
            .filter(|task| {
                active.slots[*task].state == TaskState::Done && !is_complete(&active.slots[*task])
            })
            .collect();
        let kind = keel_model::EventKind::GateFailed;
        self.record_gate(&mut book.writes, active, gate, kind, detail);
        book.followups.extend(
            failed
                .into_iter()
                .map(|task| Followup::Propagate { run_index, task }),
        );
    }

    /// `gates` as just created, waiting to be judged: stored when a run is created, and again
    /// for the gates a retry touches, so that downstream waits for the retried tasks (or for a
    /// new grace period) instead of going on without them at once.
    pub(crate) fn waiting_gates(
        &self,
        topology: usize,
        gates: impl IntoIterator<Item = usize>,
    ) -> Vec<Change> {
        gates
            .into_iter()
            .map(|gate| {
                Change::Gate(GateRecord {
                    phase: self.topologies[topology].gates[gate].phase.clone(),
                    status: GateState::Waiting,
                    waived: Vec::new(),
                })
            })
            .collect()
    }

    /// Counts `task` as no longer holding back its dependents over `edges`, and queues those it
    /// was the last to hold back. A barrier it was the last to hold back is passed, and releases
    /// its own dependents in turn.
    pub(crate) fn release_dependents(
        &self,
        ready: &mut VecDeque<(usize, TaskIndex)>,
        active: &mut ActiveRun,
        run_index: usize,
        task: TaskIndex,
        edges: Edges,
    ) {
        let mut passed: Vec<NodeIndex> = Vec::new();
        self.release_edges(ready, active, run_index, task, edges, &mut passed);
        while let Some(barrier) = passed.pop() {
            self.release_edges(ready, active, run_index, barrier, Edges::All, &mut passed);
        }
    }

    /// One node's share of [`Core::release_dependents`]; barriers it passes go on `passed`.
    fn release_edges(
        &self,
        ready: &mut VecDeque<(usize, TaskIndex)>,
        active: &mut ActiveRun,
        run_index: usize,
        node: NodeIndex,
        edges: Edges,
        passed: &mut Vec<NodeIndex>,
    ) {
        for dependent in self.dag.node_dependents(node) {
            let waivable = self.waivable(active, node, *dependent).is_some();
            let counted = match edges {
                Edges::All => true,
                Edges::Waivable => waivable,
                Edges::NotWaivable => !waivable,
            };
            if !counted {
                continue;
            }
            let remaining = &mut active.remaining[*dependent];
            let was = *remaining;
            *remaining = remaining.saturating_sub(1);
            if *remaining != 0 {
                continue;
            }
            if !self.dag.is_task(*dependent) {
                // A barrier is passed once, when its last input lets go.
                if was == 1 {
                    passed.push(*dependent);
                }
            } else if matches!(
                active.slots[*dependent].state,
                TaskState::Pending | TaskState::Waiting
            ) && !active.cancelling
            {
                ready.push_back((run_index, *dependent));
            }
        }
    }

    /// Of the finished tasks downstream of a late task, those a reconcile must leave alone: they
    /// ended `upstream_failed` because an input failed for good, and that input is not run again
    /// by this reconcile, so running them again could only end the same way. Computed to a fixed
    /// point, since leaving one alone can leave its own dependents without a rerun input too.
    fn hopeless_after_reconcile(
        &self,
        active: &ActiveRun,
        downstream: &[TaskIndex],
    ) -> Vec<TaskIndex> {
        let mut reset: Vec<TaskIndex> = downstream
            .iter()
            .copied()
            .filter(|task| active.slots[*task].state == TaskState::Done)
            .collect();
        let mut hopeless = Vec::new();
        loop {
            let blocked = |task: TaskIndex| {
                active.slots[task].outcome == Some(Outcome::UpstreamFailed)
                    && self
                        .failed_input_where(active, task, |dependency| !reset.contains(&dependency))
                        .is_some()
            };
            let newly: Vec<TaskIndex> = reset
                .iter()
                .copied()
                .filter(|task| blocked(*task))
                .collect();
            if newly.is_empty() {
                return hopeless;
            }
            reset.retain(|task| !newly.contains(task));
            hopeless.extend(newly);
        }
    }

    /// Records a gate's new state with the event that says why, in the step's writes.
    fn record_gate(
        &self,
        writes: &mut Vec<Write>,
        active: &ActiveRun,
        gate: usize,
        kind: keel_model::EventKind,
        detail: String,
    ) {
        let record = self.gate_record(active, gate);
        let event = Change::Event {
            task: None,
            kind,
            detail,
        };
        write_changes(writes, active.record.id, [Change::Gate(record), event]);
    }

    /// The gate's state as the store keeps it, waived tasks by name.
    pub(crate) fn gate_record(&self, active: &ActiveRun, gate: usize) -> GateRecord {
        let definition = &self.topology_of(active).gates[gate];
        GateRecord {
            phase: definition.phase.clone(),
            status: match active.gates[gate] {
                GateStatus::Waiting => GateState::Waiting,
                GateStatus::Sufficient { open_at } => GateState::Sufficient { open_at },
                GateStatus::Open => GateState::Open,
                GateStatus::Failed => GateState::Failed,
            },
            waived: definition
                .tasks
                .iter()
                .filter(|task| active.waived[**task])
                .map(|task| self.name(*task).to_string())
                .collect(),
        }
    }

    /// Counts, for every node of a run, the dependencies it still waits for: tasks not
    /// complete, except those an open gate waived, and barriers not passed. Barriers are counted
    /// first, each after those it waits for, so a task sees which of its barriers are passed.
    pub(crate) fn recompute_remaining(&self, active: &mut ActiveRun) {
        for barrier in self.dag.barriers_in_order() {
            active.remaining[*barrier] = self.unreleased(active, *barrier);
        }
        for task in 0..self.dag.len() {
            active.remaining[task] = self.unreleased(active, task);
        }
    }

    pub(crate) fn unreleased(&self, active: &ActiveRun, node: NodeIndex) -> u32 {
        self.dag
            .node_dependencies(node)
            .iter()
            .filter(|dependency| {
                let dependency = **dependency;
                if !self.dag.is_task(dependency) {
                    return active.remaining[dependency] > 0;
                }
                let waived =
                    active.waived[dependency] && self.waivable(active, dependency, node).is_some();
                // A soft input holds its dependent back only until it has ended, however.
                let soft_and_ended = active.slots[dependency].state == TaskState::Done
                    && self.is_soft_edge(dependency, node);
                !is_complete(&active.slots[dependency]) && !waived && !soft_and_ended
            })
            .count() as u32
    }

    /// Re-judges a gate after one of its tasks finished, or when its grace period ran out.
    pub(crate) fn evaluate_gate(
        &mut self,
        book: &mut Book,
        run_index: usize,
        gate: usize,
    ) -> Result<(), EngineError> {
        let now = book.now;
        let active = &mut book.runs[run_index];
        let status = active.gates[gate];
        if matches!(status, GateStatus::Open | GateStatus::Failed) || active.cancelling {
            return Ok(());
        }
        let definition = &self.topologies[active.topology].gates[gate];
        if !definition.tiers.is_empty() {
            return self.evaluate_tiered_gate(book, run_index, gate);
        }
        let verdict = judge(
            definition,
            |task| is_complete(&active.slots[task]),
            |task| active.slots[task].state == TaskState::Done,
        );
        match (verdict, status) {
            (Verdict::Sufficient { all_done: true }, _) => self.open_gate(book, run_index, gate)?,
            (Verdict::Sufficient { .. }, GateStatus::Sufficient { open_at }) if now >= open_at => {
                self.open_gate(book, run_index, gate)?
            }
            (Verdict::Sufficient { .. }, GateStatus::Waiting) => {
                let open_at = now + definition.grace;
                active.gates[gate] = GateStatus::Sufficient { open_at };
                book.timers
                    .push(Reverse((open_at, run_index, Wake::Gate(gate))));
                // The grace period's end is stored, so a restart does not start it again.
                self.record_gate(
                    &mut book.writes,
                    active,
                    gate,
                    keel_model::EventKind::GateSufficient,
                    format!(
                        "phase {}: waiting up to {} ms for the rest",
                        definition.phase, definition.grace
                    ),
                );
            }
            (Verdict::Insufficient, _) => {
                active.gates[gate] = GateStatus::Failed;
                let failed: Vec<TaskIndex> = definition
                    .tasks
                    .iter()
                    .copied()
                    .filter(|task| !is_complete(&active.slots[*task]))
                    .collect();
                self.record_gate(
                    &mut book.writes,
                    active,
                    gate,
                    keel_model::EventKind::GateFailed,
                    format!("phase {}: the gate can no longer be met", definition.phase),
                );
                for task in failed {
                    book.followups
                        .push_back(Followup::Propagate { run_index, task });
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Opens a sufficient gate: downstream proceeds without the tasks still missing.
    pub(crate) fn open_gate(
        &mut self,
        book: &mut Book,
        run_index: usize,
        gate: usize,
    ) -> Result<(), EngineError> {
        self.open_gate_saying(book, run_index, gate, None)
    }

    /// [`Core::open_gate`], with why it opened (a tiered gate's tier) in its event.
    pub(crate) fn open_gate_saying(
        &mut self,
        book: &mut Book,
        run_index: usize,
        gate: usize,
        why: Option<String>,
    ) -> Result<(), EngineError> {
        let definition = self.topologies[book.runs[run_index].topology].gates[gate].clone();
        let active = &mut book.runs[run_index];
        active.gates[gate] = GateStatus::Open;
        let missing: Vec<TaskIndex> = definition
            .tasks
            .iter()
            .copied()
            .filter(|task| !is_complete(&active.slots[*task]))
            .collect();
        for task in &missing {
            active.waived[*task] = true;
            self.release_dependents(&mut book.ready, active, run_index, *task, Edges::Waivable);
        }
        let names: Vec<String> = missing
            .iter()
            .map(|task| self.name(*task).to_string())
            .collect();
        let mut detail = if names.is_empty() {
            format!("phase {}: complete", definition.phase)
        } else {
            format!(
                "phase {}: downstream proceeds without {}",
                definition.phase,
                names.join(", ")
            )
        };
        if let Some(why) = why {
            detail = format!("{detail} ({why})");
        }
        self.record_gate(
            &mut book.writes,
            active,
            gate,
            keel_model::EventKind::GateOpened,
            detail,
        );
        if !names.is_empty() {
            (self.observer)(Progress::GateOpened {
                run: active.record.id,
                trace: active.trace,
                partition: active.record.partition.clone(),
                phase: definition.phase.clone(),
                missing: names,
            });
        }
        Ok(())
    }

    /// A waived task completed after all: everything downstream of it that ran without it runs
    /// again, so the run can end `succeeded`. What finished is reset, what is running owes a
    /// rerun, and the task leaves the gate's waived list, all in one transaction: a Keel killed
    /// at any point either reconciles again on restart (the task is still listed as waived) or
    /// finds every rerun recorded.
    pub(crate) fn reconcile(
        &mut self,
        book: &mut Book,
        run_index: usize,
        landed: TaskIndex,
    ) -> Result<(), EngineError> {
        let active = &mut book.runs[run_index];
        active.waived[landed] = false;
        let name = self.name(landed).to_string();
        let reason = format!("upstream task {name:?} landed late; running again with it");
        let downstream = self.reconcile_targets(active, landed);
        let hopeless = self.hopeless_after_reconcile(active, &downstream);
        let mut changes = Vec::new();
        // Judged before any target is reset: a task frozen after another's end stays frozen
        // when that other task runs again in this same reconcile.
        let frozen: Vec<Option<String>> = downstream
            .iter()
            .map(|task| self.frozen_at(active, *task, book.now))
            .collect();
        for (task, frozen) in downstream.into_iter().zip(frozen) {
            if let Some(frozen) = frozen {
                if active.slots[task].state == TaskState::Done {
                    let why = format!("upstream task {name:?} landed late");
                    let change = self.frozen_rerun_change(active, task, &why, &frozen);
                    changes.push(Change::Task(change));
                }
                continue;
            }
            match active.slots[task].state {
                TaskState::Done if hopeless.contains(&task) => {}
                TaskState::Done => {
                    let slot = &mut active.slots[task];
                    slot.state = TaskState::Pending;
                    slot.outcome = None;
                    active.done -= 1;
                    changes.push(Change::Task(TaskChange::reset(
                        self.name(task),
                        reason.clone(),
                    )));
                }
                TaskState::Running => {
                    active.needs_rerun[task] = true;
                    changes.push(Change::MarkRerun {
                        task: self.name(task).to_string(),
                        reason: reason.clone(),
                    });
                }
                TaskState::Pending | TaskState::Waiting => {}
            }
        }
        if let Some(gate) = self.topology_of(active).gate_of_task(landed) {
            changes.push(Change::Gate(self.gate_record(active, gate)));
        }
        write_changes(&mut book.writes, active.record.id, changes);
        self.recompute_remaining(active);
        for task in 0..self.dag.len() {
            if matches!(
                active.slots[task].state,
                TaskState::Pending | TaskState::Waiting
            ) && active.remaining[task] == 0
            {
                book.ready.push_back((run_index, task));
            }
        }
        Ok(())
    }
}
