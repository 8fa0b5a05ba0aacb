//! Quorum gates (`gate` in docs/pipeline.md): which phases have one, and whether a gate may open.
//!
//! A gated phase is *sufficient* once every required task has completed and at least the
//! minimum share of its tasks have. From then on Keel waits up to the grace period for the rest,
//! or until the rest have all finished, and then *opens* the gate: downstream phases proceed
//! without the tasks still missing, which are *waived*, and the run ends `degraded` unless they
//! land later. A gate that can no longer become sufficient *fails*, and its failures flow
//! downstream like any other.

use keel_model::{Dag, Millis, PipelineSpec, TaskIndex};

#[derive(Debug, Clone)]
pub(crate) struct GateDef {
    pub phase: String,
    pub tasks: Vec<TaskIndex>,
    pub required: Vec<TaskIndex>,
    pub min_share: f64,
    pub grace: Millis,
    /// A tiered gate's tiers, in order of `after`; empty for a gate with one requirement.
    pub tiers: Vec<TierDef>,
}

/// One tier of a tiered gate: from `after` ms since the run was created, `required` and
/// `min_share` are what the gate asks for.
#[derive(Debug, Clone)]
pub(crate) struct TierDef {
    pub after: Millis,
    pub required: Vec<TaskIndex>,
    pub min_share: f64,
}

impl GateDef {
    /// The gate as one tier asks for it, for [`judge`].
    pub fn at_tier(&self, tier: &TierDef) -> GateDef {
        GateDef {
            required: tier.required.clone(),
            min_share: tier.min_share,
            tiers: Vec::new(),
            ..self.clone()
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GateStatus {
    Waiting,
    Sufficient { open_at: Millis },
    Open,
    Failed,
}

/// Where tasks sit and which phases are gated.
#[derive(Debug, Clone)]
pub(crate) struct Topology {
    task_phase: Vec<usize>,
    gate_of_phase: Vec<Option<usize>>,
    pub gates: Vec<GateDef>,
}

/// What a gate's tasks say right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Not sufficient, and some tasks may still change that.
    Undecided,
    /// Sufficient; `all_done` when every task of the phase has finished.
    Sufficient { all_done: bool },
    /// Every task has finished and the gate is not sufficient.
    Insufficient,
}

impl Topology {
    pub fn new(spec: &PipelineSpec, dag: &Dag) -> Topology {
        let phase_index = |name: &str| {
            spec.phases
                .iter()
                .position(|phase| phase.name == name)
                .unwrap_or(0)
        };
        let task_phase: Vec<usize> = spec
            .tasks
            .iter()
            .map(|task| phase_index(&task.phase))
            .collect();
        let mut gate_of_phase = vec![None; spec.phases.len()];
        let mut gates = Vec::new();
        for (position, phase) in spec.phases.iter().enumerate() {
            let Some(gate) = &phase.gate else { continue };
            let tasks: Vec<TaskIndex> = (0..spec.tasks.len())
                .filter(|task| task_phase[*task] == position)
                .collect();
            let required = gate
                .required
                .iter()
                .filter_map(|name| dag.index_of(name))
                .collect();
            gate_of_phase[position] = Some(gates.len());
            gates.push(GateDef {
                phase: phase.name.clone(),
                tasks,
                required,
                min_share: gate.min_share,
                grace: gate.grace.as_millis() as Millis,
                tiers: gate
                    .tiers
                    .iter()
                    .map(|tier| TierDef {
                        after: tier.after.as_millis() as Millis,
                        required: tier
                            .required
                            .iter()
                            .filter_map(|name| dag.index_of(name))
                            .collect(),
                        min_share: tier.min_share,
                    })
                    .collect(),
            });
        }
        Topology {
            task_phase,
            gate_of_phase,
            gates,
        }
    }

    /// The gate of the task's phase, if it has one.
    pub fn gate_of_task(&self, task: TaskIndex) -> Option<usize> {
        self.gate_of_phase[self.task_phase[task]]
    }

    pub fn same_phase(&self, a: TaskIndex, b: TaskIndex) -> bool {
        self.task_phase[a] == self.task_phase[b]
    }
}

/// Judges a gate from whether each of its tasks has completed and has finished.
pub(crate) fn judge(
    gate: &GateDef,
    complete: impl Fn(TaskIndex) -> bool,
    done: impl Fn(TaskIndex) -> bool,
) -> Verdict {
    let all_done = gate.tasks.iter().all(|task| done(*task));
    let completed = gate.tasks.iter().filter(|task| complete(**task)).count();
    let needed = (gate.min_share * gate.tasks.len() as f64 - 1e-9)
        .ceil()
        .max(0.0) as usize;
    let sufficient = gate.required.iter().all(|task| complete(*task)) && completed >= needed;
    match (sufficient, all_done) {
        (true, all_done) => Verdict::Sufficient { all_done },
        (false, true) => Verdict::Insufficient,
        (false, false) => Verdict::Undecided,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(tasks: usize, required: &[usize], min_share: f64) -> GateDef {
        GateDef {
            phase: "p".into(),
            tasks: (0..tasks).collect(),
            required: required.to_vec(),
            min_share,
            grace: 0,
            tiers: Vec::new(),
        }
    }

    #[test]
    fn sufficiency_needs_the_required_tasks_and_the_share() {
        let five = gate(5, &[0, 1], 0.6);
        let complete = |set: &'static [usize]| move |task: usize| set.contains(&task);
        assert_eq!(
            judge(&five, complete(&[0, 1]), |_| false),
            Verdict::Undecided,
            "2 of 5 is under 60%"
        );
        assert_eq!(
            judge(&five, complete(&[0, 1, 2]), |_| false),
            Verdict::Sufficient { all_done: false }
        );
        assert_eq!(
            judge(&five, complete(&[2, 3, 4]), |_| true),
            Verdict::Insufficient,
            "required ones missing"
        );
        assert_eq!(
            judge(&five, complete(&[0, 1, 2]), |_| true),
            Verdict::Sufficient { all_done: true }
        );
        // 60% of 5 is exactly 3: floating point must not ask for 4.
        assert_eq!(
            judge(&gate(5, &[], 0.6), complete(&[0, 1, 2]), |_| false),
            Verdict::Sufficient { all_done: false }
        );
    }
}
