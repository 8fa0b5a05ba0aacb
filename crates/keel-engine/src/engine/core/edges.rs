//! How a task reads its inputs, beyond the graph: soft inputs (`after` entries with
//! `soft = true`), which a task waits for but runs without when they fail for good, and
//! `inputs = [...]`, which narrows what a late task's reconciliation runs again.

use super::*;

impl Core {
    /// Whether the edge `dependency → dependent` is a soft input of `dependent`.
    pub(crate) fn is_soft_edge(&self, dependency: NodeIndex, dependent: NodeIndex) -> bool {
        if !self.dag.is_task(dependency) || !self.dag.is_task(dependent) {
            return false;
        }
        let edges = &self.spec.tasks[dependent].edges;
        !edges.soft.is_empty() && edges.is_soft(self.name(dependency))
    }

    /// `KEEL_MISSING` for a task with soft inputs: those that ended without completing, by name,
    /// comma-separated in `after` order (empty when every one completed). `None` for a task
    /// without soft inputs, which does not get the variable.
    pub(crate) fn missing_soft_inputs(
        &self,
        active: &ActiveRun,
        task: TaskIndex,
    ) -> Option<String> {
        let soft = &self.spec.tasks[task].edges.soft;
        if soft.is_empty() {
            return None;
        }
        let missing: Vec<&str> = self.spec.tasks[task]
            .after
            .iter()
            .filter(|name| soft.contains(name))
            .filter(|name| {
                self.dag
                    .index_of(name)
                    .is_some_and(|input| !is_complete(&active.slots[input]))
            })
            .map(String::as_str)
            .collect();
        Some(missing.join(","))
    }

    /// `settled` (a task that failed for good and what that failure settled downstream) no
    /// longer hold back their soft dependents: those whose last input that was are queued.
    pub(crate) fn release_soft_dependents(
        &self,
        book: &mut Book,
        run_index: usize,
        settled: &[TaskIndex],
    ) {
        let active = &mut book.runs[run_index];
        for task in settled {
            for dependent in self.dag.node_dependents(*task) {
                if !self.is_soft_edge(*task, *dependent)
                    || !matches!(
                        active.slots[*dependent].state,
                        TaskState::Pending | TaskState::Waiting
                    )
                {
                    continue;
                }
                active.remaining[*dependent] = self.unreleased(active, *dependent);
                if active.remaining[*dependent] == 0 && !active.cancelling {
                    book.ready.push_back((run_index, *dependent));
                }
            }
        }
    }

    /// What runs again when the waived task `landed` completes late: the tasks downstream of
    /// it outside its phase that read it, directly or through another such task. A task reads
    /// what it names in `after`, and through its phase edges every task of the upstream phases,
    /// or only those its `inputs` names. Without any `inputs` in the pipeline this is every task
    /// downstream of `landed` outside its phase. In index order.
    pub(crate) fn reconcile_targets(
        &self,
        active: &ActiveRun,
        landed: TaskIndex,
    ) -> Vec<TaskIndex> {
        let topology = self.topology_of(active);
        let candidates: Vec<TaskIndex> = self
            .dag
            .downstream_of(&[landed])
            .into_iter()
            .filter(|task| !topology.same_phase(landed, *task))
            .collect();
        if self
            .spec
            .tasks
            .iter()
            .all(|task| task.edges.inputs.is_none())
        {
            return candidates;
        }
        let mut affected = vec![false; self.dag.len()];
        affected[landed] = true;
        let phase_inputs: Vec<Vec<TaskIndex>> = candidates
            .iter()
            .map(|task| self.dag.phase_inputs(*task))
            .collect();
        // A fixed point: each pass marks the tasks that read one already marked, until none is.
        loop {
            let mut changed = false;
            for (position, task) in candidates.iter().enumerate() {
                if affected[*task] {
                    continue;
                }
                let reads = |input: TaskIndex| match &self.spec.tasks[*task].edges.inputs {
                    None => true,
                    Some(names) => names.iter().any(|name| name == self.name(input)),
                };
                let through_after = self
                    .dag
                    .explicit(*task)
                    .iter()
                    .any(|input| affected[*input]);
                let through_phases = phase_inputs[position]
                    .iter()
                    .any(|input| affected[*input] && reads(*input));
                if through_after || through_phases {
                    affected[*task] = true;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        candidates
            .into_iter()
            .filter(|task| affected[*task])
            .collect()
    }
}
