//! Round-trip property: any pipeline written out as TOML reads back as the same spec.

use std::fmt::Write;
use std::time::Duration;

use keel_model::{Jitter, PartitionKind, PhaseSpec, PipelineSpec, RetryPolicy, TaskSpec};
use proptest::prelude::*;

fn name() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9_-]{0,8}"
}

fn duration() -> impl Strategy<Value = Duration> {
    (1u64..100_000).prop_map(Duration::from_millis)
}

fn jitter() -> impl Strategy<Value = Jitter> {
    prop_oneof![Just(Jitter::Full), Just(Jitter::Equal), Just(Jitter::None)]
}

fn retries() -> impl Strategy<Value = RetryPolicy> {
    (1u32..10, duration(), duration(), jitter()).prop_map(|(attempts, initial, max, jitter)| {
        RetryPolicy {
            attempts,
            initial,
            max,
            jitter,
        }
    })
}

/// A pipeline whose phases form a chain-like DAG (each phase may run after any earlier one) and
/// whose task `after` lists only name earlier tasks of the same or an upstream phase.
fn pipeline() -> impl Strategy<Value = PipelineSpec> {
    let phase_names = prop::collection::btree_set(name(), 1..5);
    let task_names = prop::collection::btree_set(name(), 1..8);
    (
        name(),
        prop_oneof![Just(PartitionKind::Date), Just(PartitionKind::None)],
        1u32..64,
        phase_names,
        task_names,
        prop::collection::vec(
            (
                any::<prop::sample::Index>(),
                prop::collection::vec(any::<prop::sample::Index>(), 0..3),
                prop::collection::vec(any::<prop::sample::Index>(), 0..3),
                duration(),
                retries(),
                prop::option::of(duration()),
                duration(),
                "[ -z{}]{0,12}",
            ),
            8,
        ),
    )
        .prop_map(
            |(pipeline_name, partition, concurrency, phase_names, task_names, choices)| {
                let phase_names: Vec<String> = phase_names.into_iter().collect();
                let mut phases: Vec<PhaseSpec> = Vec::new();
                for (position, phase) in phase_names.iter().enumerate() {
                    let mut after: Vec<String> = choices[position % choices.len()]
                        .1
                        .iter()
                        .filter(|_| position > 0)
                        .map(|pick| phase_names[pick.index(position)].clone())
                        .collect();
                    after.dedup();
                    after.sort();
                    after.dedup();
                    phases.push(PhaseSpec {
                        name: phase.clone(),
                        after,
                    });
                }
                let mut tasks: Vec<TaskSpec> = Vec::new();
                for (position, task_name) in task_names.into_iter().enumerate() {
                    let (phase_pick, after_picks, _, timeout, retries, heartbeat, deadline, text) =
                        choices[position].clone();
                    // Tasks are placed in non-decreasing phase order, and `after` only names
                    // earlier tasks of the same phase, so the result is always valid.
                    let minimum_phase = tasks.last().map_or(0, |task: &TaskSpec| {
                        phase_names
                            .iter()
                            .position(|name| *name == task.phase)
                            .unwrap()
                    });
                    let phase = minimum_phase + phase_pick.index(phase_names.len() - minimum_phase);
                    let same_phase: Vec<String> = tasks
                        .iter()
                        .filter(|task| task.phase == phase_names[phase])
                        .map(|task| task.name.clone())
                        .collect();
                    let mut after: Vec<String> = if same_phase.is_empty() {
                        Vec::new()
                    } else {
                        after_picks
                            .iter()
                            .map(|pick| same_phase[pick.index(same_phase.len())].clone())
                            .collect()
                    };
                    after.sort();
                    after.dedup();
                    let argument = text.replace(['{', '}'], "");
                    tasks.push(TaskSpec {
                        name: task_name,
                        phase: phase_names[phase].clone(),
                        command: vec!["run".into(), argument, "{date}".into()],
                        after,
                        timeout,
                        retries,
                        heartbeat,
                        deadline,
                    });
                }
                PipelineSpec {
                    name: pipeline_name,
                    timezone: "Europe/Paris".into(),
                    partition,
                    state: None,
                    concurrency,
                    phases,
                    tasks,
                }
            },
        )
}

fn millis(duration: Duration) -> String {
    format!("\"{}ms\"", duration.as_millis())
}

fn quoted_list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|item| format!("{item:?}")).collect();
    format!("[{}]", quoted.join(", "))
}

fn to_toml(spec: &PipelineSpec) -> String {
    let mut out = String::new();
    let partition = match spec.partition {
        PartitionKind::Date => "date",
        PartitionKind::None => "none",
    };
    writeln!(
        out,
        "[pipeline]\nname = {:?}\ntimezone = {:?}\npartition = {partition:?}\n",
        spec.name, spec.timezone
    )
    .unwrap();
    writeln!(out, "[defaults]\nconcurrency = {}\n", spec.concurrency).unwrap();
    for phase in &spec.phases {
        writeln!(
            out,
            "[phases.{}]\nafter = {}\n",
            phase.name,
            quoted_list(&phase.after)
        )
        .unwrap();
    }
    for task in &spec.tasks {
        let jitter = match task.retries.jitter {
            Jitter::Full => "full",
            Jitter::Equal => "equal",
            Jitter::None => "none",
        };
        writeln!(
            out,
            "[tasks.{}]\nphase = {:?}\ncommand = {}\nafter = {}\ntimeout = {}\ndeadline = {}\n\
             retries = {{ attempts = {}, initial = {}, max = {}, jitter = {jitter:?} }}",
            task.name,
            task.phase,
            quoted_list(&task.command),
            quoted_list(&task.after),
            millis(task.timeout),
            millis(task.deadline),
            task.retries.attempts,
            millis(task.retries.initial),
            millis(task.retries.max),
        )
        .unwrap();
        if let Some(heartbeat) = task.heartbeat {
            writeln!(out, "heartbeat = {}", millis(heartbeat)).unwrap();
        }
        out.push('\n');
    }
    out
}

proptest! {
    #[test]
    fn a_written_pipeline_reads_back_the_same(spec in pipeline()) {
        let source = to_toml(&spec);
        let parsed = keel_config::parse(&source, "keel.toml")
            .map_err(|errors| TestCaseError::fail(format!("{errors}\n---\n{source}")))?;
        prop_assert_eq!(parsed, spec);
    }
}
