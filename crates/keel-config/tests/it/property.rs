//! Round-trip property: any pipeline written out as TOML reads back as the same spec.

use std::fmt::Write;
use std::time::Duration;

use keel_model::{
    BreakerSpec, GateSpec, Jitter, PartitionKind, PhaseSpec, PipelineSpec, Rate, ResourceSpec,
    RetryBudgetSpec, RetryPolicy, SensorSpec, TaskSpec,
};
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
    // `initial` may not exceed `max`: the shorter of the two durations is `initial`.
    (1u32..10, duration(), duration(), jitter()).prop_map(|(attempts, one, other, jitter)| {
        RetryPolicy {
            attempts,
            initial: one.min(other),
            max: one.max(other),
            jitter,
        }
    })
}

/// A share written as a whole percentage: `p / 100`, the value `"p%"` and `p / 100.0` both read as.
fn share(low: u32) -> impl Strategy<Value = f64> {
    (low..=100u32).prop_map(|percent| f64::from(percent) / 100.0)
}

fn resource(name: String) -> impl Strategy<Value = ResourceSpec> {
    let rate = (1u32..1000, duration()).prop_map(|(tokens, per)| Rate { tokens, per });
    // Without a ratio the window is the default, 20: writing one alone is an error.
    let breaker = (
        1u32..10,
        prop::option::of((share(1), 1u32..100)),
        duration(),
        duration(),
    )
        .prop_map(|(failures, ratio, cooldown, max_open)| BreakerSpec {
            failures,
            ratio: ratio.map(|(ratio, _)| ratio),
            window: ratio.map_or(20, |(_, window)| window),
            cooldown,
            max_open,
        });
    let retry_budget = (share(1), duration(), 0u32..10)
        .prop_map(|(ratio, window, min)| RetryBudgetSpec { ratio, window, min });
    (
        prop::option::of(rate),
        prop::option::of(1u32..64),
        prop::option::of(breaker),
        prop::option::of(retry_budget),
    )
        .prop_map(
            move |(rate, concurrency, breaker, retry_budget)| ResourceSpec {
                name: name.clone(),
                rate,
                concurrency,
                breaker,
                retry_budget,
                ready: None,
                tokens: keel_model::TokenUse::Attempt,
                quota: None,
            },
        )
}

fn resources() -> impl Strategy<Value = Vec<ResourceSpec>> {
    prop::collection::btree_set(name(), 0..4)
        .prop_flat_map(|names| names.into_iter().map(resource).collect::<Vec<_>>())
}

/// The random choices behind one phase's gate: which of its tasks it requires, its min share and
/// its grace in milliseconds.
type GateChoice = Option<(Vec<prop::sample::Index>, Option<f64>, u64)>;

fn gate_choice() -> impl Strategy<Value = GateChoice> {
    prop::option::of((
        prop::collection::vec(any::<prop::sample::Index>(), 0..3),
        prop::option::of(share(0)),
        0u64..100_000,
    ))
}

/// The random choices behind one task's `uses` and `wait_for`.
type TaskResilienceChoice = (
    Vec<prop::sample::Index>,
    Option<(Duration, Option<u32>, Option<Duration>)>,
);

fn task_resilience_choice() -> impl Strategy<Value = TaskResilienceChoice> {
    (
        prop::collection::vec(any::<prop::sample::Index>(), 0..3),
        prop::option::of((
            duration(),
            prop::option::of(1u32..20),
            prop::option::of(duration()),
        )),
    )
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
        resources(),
        prop::collection::vec(gate_choice(), 5),
        prop::collection::vec(task_resilience_choice(), 8),
    )
        .prop_map(
            |(
                pipeline_name,
                partition,
                concurrency,
                phase_names,
                task_names,
                choices,
                resources,
                gate_choices,
                resilience_choices,
            )| {
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
                        gate: None,
                        checks: Vec::new(),
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
                    let (use_picks, sensor) = &resilience_choices[position];
                    let mut uses: Vec<String> = Vec::new();
                    if !resources.is_empty() {
                        for pick in use_picks {
                            let resource = &resources[pick.index(resources.len())].name;
                            if !uses.contains(resource) {
                                uses.push(resource.clone());
                            }
                        }
                    }
                    let wait_for = sensor.map(|(every, max_factor, sensor_deadline)| SensorSpec {
                        command: vec!["ready".into(), "{partition}".into()],
                        http: None,
                        every,
                        max: max_factor.map_or(every * 8, |factor| every * factor),
                        deadline: sensor_deadline.unwrap_or(deadline),
                    });
                    tasks.push(TaskSpec {
                        name: task_name,
                        phase: phase_names[phase].clone(),
                        command: vec!["run".into(), argument, "{date}".into()],
                        http: None,
                        after,
                        timeout,
                        retries,
                        heartbeat,
                        deadline,
                        uses,
                        wait_for,
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
                    });
                }
                for (phase, choice) in phases.iter_mut().zip(&gate_choices) {
                    let Some((required_picks, min_share, grace_ms)) = choice else {
                        continue;
                    };
                    let own_tasks: Vec<&String> = tasks
                        .iter()
                        .filter(|task| task.phase == phase.name)
                        .map(|task| &task.name)
                        .collect();
                    let mut required: Vec<String> = Vec::new();
                    if !own_tasks.is_empty() {
                        for pick in required_picks {
                            let task = own_tasks[pick.index(own_tasks.len())];
                            if !required.contains(task) {
                                required.push(task.clone());
                            }
                        }
                    }
                    // A gate needs required tasks or a min share.
                    let min_share = match min_share {
                        None if required.is_empty() => 0.5,
                        other => other.unwrap_or(0.0),
                    };
                    phase.gate = Some(GateSpec {
                        required,
                        min_share,
                        grace: Duration::from_millis(*grace_ms),
                        tiers: Vec::new(),
                    });
                }
                PipelineSpec {
                    name: pipeline_name,
                    timezone: "Europe/Paris".into(),
                    partition,
                    state: None,
                    schedule: None,
                    max_active_partitions: None,
                    passes: Vec::new(),
                    alerts: None,
                    secrets: None,
                    smoke: Vec::new(),
                    slos: Vec::new(),
                    heal_budget: keel_model::DEFAULT_HEAL_BUDGET,
                    concurrency,
                    phases,
                    tasks,
                    resources,
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

/// Alternates between the two ways of writing a share, so both are exercised.
fn share_text(share: f64) -> String {
    let percent = (share * 100.0).round();
    if (percent as u32).is_multiple_of(2) {
        format!("\"{percent}%\"")
    } else {
        format!("{share:?}")
    }
}

/// Writes what the spec holds, leaving out whatever equals its default so defaults are read too.
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
    for resource in &spec.resources {
        writeln!(out, "[resources.{}]", resource.name).unwrap();
        if let Some(rate) = resource.rate {
            writeln!(out, "rate = \"{}/{}ms\"", rate.tokens, rate.per.as_millis()).unwrap();
        }
        if let Some(concurrency) = resource.concurrency {
            writeln!(out, "concurrency = {concurrency}").unwrap();
        }
        if let Some(breaker) = &resource.breaker {
            write!(
                out,
                "breaker = {{ failures = {}, cooldown = {}, max_open = {}",
                breaker.failures,
                millis(breaker.cooldown),
                millis(breaker.max_open)
            )
            .unwrap();
            if let Some(ratio) = breaker.ratio {
                write!(
                    out,
                    ", ratio = {}, window = {}",
                    share_text(ratio),
                    breaker.window
                )
                .unwrap();
            }
            writeln!(out, " }}").unwrap();
        }
        if let Some(budget) = &resource.retry_budget {
            write!(
                out,
                "retry_budget = {{ ratio = {}",
                share_text(budget.ratio)
            )
            .unwrap();
            if budget.window != Duration::from_secs(60) {
                write!(out, ", window = {}", millis(budget.window)).unwrap();
            }
            if budget.min != 3 {
                write!(out, ", min = {}", budget.min).unwrap();
            }
            writeln!(out, " }}").unwrap();
        }
        out.push('\n');
    }
    for phase in &spec.phases {
        writeln!(
            out,
            "[phases.{}]\nafter = {}",
            phase.name,
            quoted_list(&phase.after)
        )
        .unwrap();
        if let Some(gate) = &phase.gate {
            write!(out, "gate = {{ required = {}", quoted_list(&gate.required)).unwrap();
            if gate.min_share != 0.0 || gate.required.is_empty() {
                write!(out, ", min = {}", share_text(gate.min_share)).unwrap();
            }
            if !gate.grace.is_zero() {
                write!(out, ", grace = {}", millis(gate.grace)).unwrap();
            }
            writeln!(out, " }}").unwrap();
        }
        out.push('\n');
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
        if !task.uses.is_empty() {
            writeln!(out, "uses = {}", quoted_list(&task.uses)).unwrap();
        }
        if let Some(sensor) = &task.wait_for {
            write!(
                out,
                "wait_for = {{ command = {}, every = {}",
                quoted_list(&sensor.command),
                millis(sensor.every)
            )
            .unwrap();
            if sensor.max != sensor.every * 8 {
                write!(out, ", max = {}", millis(sensor.max)).unwrap();
            }
            if sensor.deadline != task.deadline {
                write!(out, ", deadline = {}", millis(sensor.deadline)).unwrap();
            }
            writeln!(out, " }}").unwrap();
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
