use std::collections::HashMap;

use crate::PipelineSpec;

/// A task's position in [`PipelineSpec::tasks`] and in every per-task vector of a [`Dag`].
pub type TaskIndex = usize;

/// The task graph of a pipeline: who waits for whom.
///
/// A task depends on every task of the phases its phase runs `after`, and on the tasks named in
/// its own `after`. The graph is built once per pipeline version; the engine keeps a counter of
/// unfinished dependencies per task and walks `dependents` when one finishes, so it never rescans
/// the whole graph.
#[derive(Debug, Clone)]
pub struct Dag {
    names: Vec<String>,
    index: HashMap<String, TaskIndex>,
    dependencies: Vec<Vec<TaskIndex>>,
    dependents: Vec<Vec<TaskIndex>>,
    /// Per task, sorted: the tasks named in its own `after`. These edges are hard inputs, which
    /// a phase's quorum gate never waives.
    explicit: Vec<Vec<TaskIndex>>,
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
        let mut tasks_by_phase: HashMap<&str, Vec<TaskIndex>> = HashMap::new();
        for (position, task) in spec.tasks.iter().enumerate() {
            tasks_by_phase
                .entry(task.phase.as_str())
                .or_default()
                .push(position);
        }
        let mut dependencies = vec![Vec::new(); names.len()];
        let mut explicit = vec![Vec::new(); names.len()];
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
            let deps: &mut Vec<TaskIndex> = &mut dependencies[position];
            // Every phase upstream, transitively: a phase with no tasks must not break the chain.
            for upstream_phase in upstream_phases(spec, &task.phase) {
                if let Some(upstream) = tasks_by_phase.get(upstream_phase) {
                    deps.extend(upstream.iter().copied());
                }
            }
            deps.extend(
                task.after
                    .iter()
                    .filter_map(|name| index.get(name).copied()),
            );
            deps.sort_unstable();
            deps.dedup();
            deps.retain(|dependency| *dependency != position);
        }
        let mut dependents = vec![Vec::new(); names.len()];
        for (position, deps) in dependencies.iter().enumerate() {
            for dependency in deps {
                dependents[*dependency].push(position);
            }
        }
        Dag {
            names,
            index,
            dependencies,
            dependents,
            explicit,
        }
    }

    /// Whether `task` names `dependency` in its own `after` (not only through its phase).
    pub fn is_explicit(&self, task: TaskIndex, dependency: TaskIndex) -> bool {
        self.explicit[task].binary_search(&dependency).is_ok()
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn name(&self, task: TaskIndex) -> &str {
        &self.names[task]
    }

    pub fn index_of(&self, name: &str) -> Option<TaskIndex> {
        self.index.get(name).copied()
    }

    pub fn dependencies(&self, task: TaskIndex) -> &[TaskIndex] {
        &self.dependencies[task]
    }

    pub fn dependents(&self, task: TaskIndex) -> &[TaskIndex] {
        &self.dependents[task]
    }

    /// Every task reachable downstream of `roots`, the roots excluded, in index order.
    pub fn downstream_of(&self, roots: &[TaskIndex]) -> Vec<TaskIndex> {
        let mut seen = vec![false; self.len()];
        let mut stack: Vec<TaskIndex> = roots.to_vec();
        while let Some(task) = stack.pop() {
            for dependent in &self.dependents[task] {
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

/// The phases `phase` runs after, directly or through other phases.
fn upstream_phases<'a>(spec: &'a PipelineSpec, phase: &str) -> Vec<&'a str> {
    let mut found: Vec<&'a str> = Vec::new();
    let mut stack: Vec<&str> = vec![phase];
    while let Some(current) = stack.pop() {
        let Some(spec_phase) = spec
            .phases
            .iter()
            .find(|candidate| candidate.name == current)
        else {
            continue;
        };
        for upstream in &spec_phase.after {
            if !found.contains(&upstream.as_str()) && upstream != phase {
                found.push(upstream);
                stack.push(upstream);
            }
        }
    }
    found
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
            after: after.iter().map(|name| name.to_string()).collect(),
            timeout: Duration::from_secs(1),
            retries: RetryPolicy::default(),
            heartbeat: None,
            deadline: Duration::from_secs(1),
            uses: vec![],
            wait_for: None,
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
                },
                PhaseSpec {
                    name: "b".into(),
                    after: vec!["a".into()],
                    gate: None,
                },
            ],
            tasks: vec![
                task("a1", "a", &[]),
                task("a2", "a", &["a1"]),
                task("b1", "b", &[]),
                task("b2", "b", &["b1"]),
            ],
            resources: vec![],
        };
        let dag = Dag::new(&spec);
        assert_eq!(dag.dependencies(1), &[0]);
        assert_eq!(dag.dependencies(2), &[0, 1]);
        assert_eq!(dag.dependencies(3), &[0, 1, 2]);
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
                },
                PhaseSpec {
                    name: "b".into(),
                    after: vec!["a".into()],
                    gate: None,
                },
                PhaseSpec {
                    name: "c".into(),
                    after: vec!["b".into()],
                    gate: None,
                },
            ],
            tasks: vec![task("a1", "a", &[]), task("c1", "c", &[])],
            resources: vec![],
        };
        assert_eq!(Dag::new(&spec).dependencies(1), &[0]);
    }
}
