use std::collections::HashMap;

use crate::PipelineSpec;

/// A task's position in [`PipelineSpec::tasks`] and in every per-task vector of a [`Dag`].
pub type TaskIndex = usize;

/// A node of a [`Dag`]: a task (`0..len()`) or a phase barrier (`len()..nodes()`).
pub type NodeIndex = usize;

/// The task graph of a pipeline: who waits for whom.
///
/// A task depends on every task of the phases its phase runs `after`, and on the tasks named in
/// its own `after`. Phase-level dependencies go through one *barrier* node per phase, so the
/// graph grows with the number of tasks and phase edges, not with their product: a phase's
/// barrier waits for the phase's tasks and for the barriers of the phases it runs after, and a
/// task waits for the barriers of its phase's upstream phases and for its own `after` tasks.
/// A barrier is passed once everything it waits for is; it is never run.
///
/// The graph is built once per pipeline version; the engine keeps a counter of unfinished
/// dependencies per node and walks `node_dependents` when one finishes, so it never rescans the
/// whole graph.
#[derive(Debug, Clone)]
pub struct Dag {
    names: Vec<String>,
    index: HashMap<String, TaskIndex>,
    /// Per task: the position of its phase in [`PipelineSpec::phases`], if it has one.
    task_phase: Vec<Option<usize>>,
    /// Per node.
    dependencies: Vec<Vec<NodeIndex>>,
    /// Per node.
    dependents: Vec<Vec<NodeIndex>>,
    /// Per task, sorted: the tasks named in its own `after`. These edges are hard inputs, which
    /// a phase's quorum gate never waives.
    explicit: Vec<Vec<TaskIndex>>,
    /// The barrier nodes, each after the barriers it waits for.
    barrier_order: Vec<NodeIndex>,
}

impl Dag {
    /// Builds the graph. The spec must be validated: unknown names are skipped here, and cycles
    /// have been rejected by `keel-config`.
    pub fn new(spec: &PipelineSpec) -> Dag {
        let names: Vec<String> = spec.tasks.iter().map(|task| task.name.clone()).collect();
        let index: HashMap<String, TaskIndex> = names
            .iter()
            .enumerate()
            .map(|(position, name)| (name.clone(), position))
            .collect();
        let phase_index: HashMap<&str, usize> = spec
            .phases
            .iter()
            .enumerate()
            .map(|(position, phase)| (phase.name.as_str(), position))
            .collect();
        let tasks = names.len();
        let barrier = |phase: usize| tasks + phase;
        let task_phase: Vec<Option<usize>> = spec
            .tasks
            .iter()
            .map(|task| phase_index.get(task.phase.as_str()).copied())
            .collect();
        // Each phase's direct upstream phases, known ones only, without itself or repeats.
        let upstream: Vec<Vec<usize>> = spec
            .phases
            .iter()
            .enumerate()
            .map(|(position, phase)| {
                let mut found: Vec<usize> = phase
                    .after
                    .iter()
                    .filter_map(|name| phase_index.get(name.as_str()).copied())
                    .filter(|upstream| *upstream != position)
                    .collect();
                found.sort_unstable();
                found.dedup();
                found
            })
            .collect();
        let mut dependencies: Vec<Vec<NodeIndex>> = vec![Vec::new(); tasks + spec.phases.len()];
        let mut explicit = vec![Vec::new(); tasks];
        for (position, task) in spec.tasks.iter().enumerate() {
            let named: &mut Vec<TaskIndex> = &mut explicit[position];
            named.extend(
                task.after
                    .iter()
                    .filter_map(|name| index.get(name).copied())
                    .filter(|dependency| *dependency != position),
            );
            named.sort_unstable();
            named.dedup();
            let deps = &mut dependencies[position];
            deps.extend(named.iter().copied());
            if let Some(phase) = task_phase[position] {
                deps.extend(upstream[phase].iter().map(|up| barrier(*up)));
                dependencies[barrier(phase)].push(position);
            }
        }
        for (phase, ups) in upstream.iter().enumerate() {
            dependencies[barrier(phase)].extend(ups.iter().map(|up| barrier(*up)));
        }
        let mut dependents = vec![Vec::new(); dependencies.len()];
        for (node, deps) in dependencies.iter().enumerate() {
            for dependency in deps {
                dependents[*dependency].push(node);
            }
        }
        let barrier_order = phase_order(&upstream).into_iter().map(barrier).collect();
        Dag {
            names,
            index,
            task_phase,
            dependencies,
            dependents,
            explicit,
            barrier_order,
        }
    }

    /// Whether `task` names `dependency` in its own `after` (not only through its phase).
    pub fn is_explicit(&self, task: TaskIndex, dependency: TaskIndex) -> bool {
        self.explicit[task].binary_search(&dependency).is_ok()
    }

    /// The tasks `task` names in its own `after`, sorted.
    pub fn explicit(&self, task: TaskIndex) -> &[TaskIndex] {
        &self.explicit[task]
    }

    /// The number of tasks.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The number of nodes: tasks, then one barrier per phase.
    pub fn nodes(&self) -> usize {
        self.dependencies.len()
    }

    pub fn is_task(&self, node: NodeIndex) -> bool {
        node < self.names.len()
    }

    /// The barrier that `task`'s phase passes to its downstream phases, if it has a phase.
    pub fn barrier_of(&self, task: TaskIndex) -> Option<NodeIndex> {
        self.task_phase[task].map(|phase| self.names.len() + phase)
    }

    /// Every barrier, each after the barriers it waits for.
    pub fn barriers_in_order(&self) -> &[NodeIndex] {
        &self.barrier_order
    }

    pub fn name(&self, task: TaskIndex) -> &str {
        &self.names[task]
    }

    pub fn index_of(&self, name: &str) -> Option<TaskIndex> {
        self.index.get(name).copied()
    }

    /// What a node waits for directly: tasks and barriers.
    pub fn node_dependencies(&self, node: NodeIndex) -> &[NodeIndex] {
        &self.dependencies[node]
    }

    /// What waits for a node directly: tasks and barriers.
    pub fn node_dependents(&self, node: NodeIndex) -> &[NodeIndex] {
        &self.dependents[node]
    }

    /// Every task `task` waits for, directly or through the phases upstream of its own, sorted.
    /// This walks the graph: it costs as much as the tasks it returns.
    pub fn inputs(&self, task: TaskIndex) -> Vec<TaskIndex> {
        let mut found = self.explicit[task].clone();
        found.extend(self.phase_inputs(task));
        found.sort_unstable();
        found.dedup();
        found
    }

    /// The tasks `task` waits for through its phase's upstream phases (not its own `after`),
    /// in no particular order.
    pub fn phase_inputs(&self, task: TaskIndex) -> Vec<TaskIndex> {
        let mut found = Vec::new();
        let mut seen = vec![false; self.nodes() - self.len()];
        let mut stack: Vec<NodeIndex> = self.dependencies[task]
            .iter()
            .copied()
            .filter(|node| !self.is_task(*node))
            .collect();
        while let Some(barrier) = stack.pop() {
            let slot = &mut seen[barrier - self.len()];
            if std::mem::replace(slot, true) {
                continue;
            }
            for node in &self.dependencies[barrier] {
                if self.is_task(*node) {
                    found.push(*node);
                } else {
                    stack.push(*node);
                }
            }
        }
        found
    }

    /// Every task reachable downstream of `roots`, the roots excluded, in index order.
    pub fn downstream_of(&self, roots: &[TaskIndex]) -> Vec<TaskIndex> {
        let mut seen = vec![false; self.nodes()];
        let mut stack: Vec<NodeIndex> = roots.to_vec();
        while let Some(node) = stack.pop() {
            for dependent in &self.dependents[node] {
                if !seen[*dependent] {
                    seen[*dependent] = true;
                    stack.push(*dependent);
                }
            }
        }
        for root in roots {
            seen[*root] = false;
        }
        (0..self.len()).filter(|task| seen[*task]).collect()
    }
}

/// The phases in an order where each comes after the phases it runs after (Kahn's algorithm).
/// Phases on a cycle, which validation rejects, come last in file order.
fn phase_order(upstream: &[Vec<usize>]) -> Vec<usize> {
    let mut waiting: Vec<usize> = upstream.iter().map(Vec::len).collect();
    let mut downstream = vec![Vec::new(); upstream.len()];
    for (phase, ups) in upstream.iter().enumerate() {
        for up in ups {
            downstream[*up].push(phase);
        }
    }
    let mut order: Vec<usize> = (0..upstream.len()).filter(|p| waiting[*p] == 0).collect();
    let mut next = 0;
    while next < order.len() {
        for phase in &downstream[order[next]] {
            waiting[*phase] -= 1;
            if waiting[*phase] == 0 {
                order.push(*phase);
            }
        }
        next += 1;
    }
    let mut placed = vec![false; upstream.len()];
    for phase in &order {
        placed[*phase] = true;
    }
    order.extend((0..upstream.len()).filter(|phase| !placed[*phase]));
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PartitionKind, PhaseSpec, RetryPolicy, TaskSpec};
    use std::time::Duration;

    fn task(name: &str, phase: &str, after: &[&str]) -> TaskSpec {
        TaskSpec {
            name: name.into(),
            phase: phase.into(),
            command: vec!["true".into()],
            http: None,
            after: after.iter().map(|name| name.to_string()).collect(),
            timeout: Duration::from_secs(1),
            retries: RetryPolicy::default(),
            heartbeat: None,
            deadline: Duration::from_secs(1),
            uses: vec![],
            wait_for: None,
            also_wait_for: Vec::new(),
            when: None,
            edges: Default::default(),
            expand: None,
            context: Default::default(),
            not_ready: None,
            secrets: Vec::new(),
            repeat: None,
            freeze_after: None,
            versioning: Default::default(),
            checks: Vec::new(),
        }
    }

    #[test]
    fn phases_and_task_after_become_edges() {
        let spec = PipelineSpec {
            name: "p".into(),
            timezone: "UTC".into(),
            partition: PartitionKind::None,
            state: None,
            concurrency: 4,
            phases: vec![
                PhaseSpec {
                    name: "a".into(),
                    after: vec![],
                    gate: None,
                    checks: Vec::new(),
                },
                PhaseSpec {
                    name: "b".into(),
                    after: vec!["a".into()],
                    gate: None,
                    checks: Vec::new(),
                },
            ],
            tasks: vec![
                task("a1", "a", &[]),
                task("a2", "a", &["a1"]),
                task("b1", "b", &[]),
                task("b2", "b", &["b1"]),
            ],
            resources: vec![],
            schedule: None,
            max_active_partitions: None,
            passes: Vec::new(),
            alerts: None,
            secrets: None,
            smoke: Vec::new(),
            slos: Vec::new(),
            heal_budget: crate::DEFAULT_HEAL_BUDGET,
        };
        let dag = Dag::new(&spec);
        assert_eq!(dag.inputs(1), &[0]);
        assert_eq!(dag.inputs(2), &[0, 1]);
        assert_eq!(dag.inputs(3), &[0, 1, 2]);
        assert_eq!(dag.downstream_of(&[1]), vec![2, 3]);
        assert_eq!(dag.downstream_of(&[3]), Vec::<usize>::new());
        assert!(dag.is_explicit(1, 0), "a2 names a1");
        assert!(dag.is_explicit(3, 2), "b2 names b1");
        assert!(
            !dag.is_explicit(2, 0),
            "b1 waits for a1 only through its phase"
        );
        assert!(!dag.is_explicit(3, 0));
    }

    #[test]
    fn an_empty_phase_does_not_break_the_chain() {
        // Regression: c's tasks did not wait for a's when the phase b between them had no tasks.
        let spec = PipelineSpec {
            name: "p".into(),
            timezone: "UTC".into(),
            partition: PartitionKind::None,
            state: None,
            concurrency: 4,
            phases: vec![
                PhaseSpec {
                    name: "a".into(),
                    after: vec![],
                    gate: None,
                    checks: Vec::new(),
                },
                PhaseSpec {
                    name: "b".into(),
                    after: vec!["a".into()],
                    gate: None,
                    checks: Vec::new(),
                },
                PhaseSpec {
                    name: "c".into(),
                    after: vec!["b".into()],
                    gate: None,
                    checks: Vec::new(),
                },
            ],
            tasks: vec![task("a1", "a", &[]), task("c1", "c", &[])],
            resources: vec![],
            schedule: None,
            max_active_partitions: None,
            passes: Vec::new(),
            alerts: None,
            secrets: None,
            smoke: Vec::new(),
            slos: Vec::new(),
            heal_budget: crate::DEFAULT_HEAL_BUDGET,
        };
        assert_eq!(Dag::new(&spec).inputs(1), &[0]);
    }

    #[test]
    fn phases_cost_one_barrier_not_an_edge_per_pair_of_tasks() {
        // Regression: every task had an edge to every task of every upstream phase, so 10,000
        // tasks in 20 phases held about 47 million edges.
        let phases = 20;
        let width = 50;
        let spec = PipelineSpec {
            name: "p".into(),
            timezone: "UTC".into(),
            partition: PartitionKind::None,
            state: None,
            concurrency: 4,
            phases: (0..phases)
                .map(|phase| PhaseSpec {
                    name: format!("p{phase}"),
                    after: (phase > 0)
                        .then(|| format!("p{}", phase - 1))
                        .into_iter()
                        .collect(),
                    gate: None,
                    checks: Vec::new(),
                })
                .collect(),
            tasks: (0..phases * width)
                .map(|n| task(&format!("t{n}"), &format!("p{}", n / width), &[]))
                .collect(),
            resources: vec![],
            schedule: None,
            max_active_partitions: None,
            passes: Vec::new(),
            alerts: None,
            secrets: None,
            smoke: Vec::new(),
            slos: Vec::new(),
            heal_budget: crate::DEFAULT_HEAL_BUDGET,
        };
        let dag = Dag::new(&spec);
        let edges: usize = (0..dag.nodes())
            .map(|node| dag.node_dependencies(node).len())
            .sum();
        // Each task feeds its phase's barrier; each task after the first phase waits for one
        // barrier; each barrier after the first waits for the one before.
        let tasks = phases * width;
        assert_eq!(edges, tasks + (tasks - width) + (phases - 1));
        let last = tasks - 1;
        assert_eq!(dag.inputs(last), (0..tasks - width).collect::<Vec<_>>());
        assert_eq!(dag.downstream_of(&[0]), (width..tasks).collect::<Vec<_>>());
        let order = dag.barriers_in_order();
        assert_eq!(order, &(tasks..tasks + phases).collect::<Vec<_>>()[..]);
    }
}
