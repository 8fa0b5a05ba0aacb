//! The core driven by hand: no runtime, no database, no processes. Each test feeds the core what
//! the driver would (a loaded run, claimed attempts, reports, the time) and checks what it decided
//! to write and to do.

use std::time::Duration;

use keel_model::{Jitter, PartitionKind, PhaseSpec, RetryPolicy, TaskSpec};

use super::*;
use crate::SplitMix64;

fn task(name: &str, phase: &str, attempts: u32) -> TaskSpec {
    TaskSpec {
        name: name.into(),
        phase: phase.into(),
        command: vec!["run".into(), "{task}".into()],
        after: vec![],
        timeout: Duration::from_secs(60),
        retries: RetryPolicy {
            attempts,
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            jitter: Jitter::Full,
        },
        heartbeat: None,
        deadline: Duration::from_secs(3600),
        uses: vec![],
        wait_for: None,
        context: Default::default(),
    }
}

/// A chain `a → b → c`, one task per phase.
fn chain_core() -> Core {
    chain_core_with(|_, _| {})
}

/// [`chain_core`] with its tasks (`a` with 3 attempts, `b` and `c` with 1) and its engine
/// settings adjusted first.
fn chain_core_with(adjust: impl FnOnce(&mut Vec<TaskSpec>, &mut EngineConfig)) -> Core {
    let phases = ["p0", "p1", "p2"];
    let spec = PipelineSpec {
        name: "core".into(),
        timezone: "UTC".into(),
        partition: PartitionKind::Date,
        state: None,
        concurrency: 4,
        phases: phases
            .iter()
            .enumerate()
            .map(|(index, name)| PhaseSpec {
                name: name.to_string(),
                after: if index == 0 {
                    vec![]
                } else {
                    vec![phases[index - 1].into()]
                },
                gate: None,
            })
            .collect(),
        tasks: vec![task("a", "p0", 3), task("b", "p1", 1), task("c", "p2", 1)],
        resources: vec![],
    };
    let mut spec = spec;
    let mut config = EngineConfig {
        owner: "core-test".into(),
        attempts_dir: PathBuf::from("/nonexistent"),
        kill_grace: Duration::from_secs(1),
        log_cap: 1024,
        lease_ttl: Duration::from_secs(60),
        poll_interval: Duration::from_secs(1),
        shutdown_grace: Duration::from_secs(1),
        extra_env: vec![],
        launch_context: Default::default(),
    };
    adjust(&mut spec.tasks, &mut config);
    let dag = Dag::new(&spec);
    let topology = Topology::new(&spec, &dag);
    Core {
        random: Box::new(SplitMix64::new(3)),
        version: spec.version(),
        task_uses: vec![Vec::new(); spec.tasks.len()],
        commands: spec.tasks.iter().map(Commands::of).collect(),
        spec: Arc::new(spec),
        dag,
        topology,
        config,
        store_id: "store".into(),
        observer: Box::new(|_| {}),
    }
}

/// A run of `core`'s pipeline as freshly created in the store, loaded into a new book.
fn loaded(core: &mut Core, now: Millis) -> Book {
    loaded_from(core, now, |_| {})
}

/// A run of `core`'s pipeline loaded into a new book from stored tasks that `adjust` changes
/// first, as a restarted Keel finds them.
fn loaded_from(
    core: &mut Core,
    now: Millis,
    adjust: impl FnOnce(&mut Vec<keel_store::TaskRunRecord>),
) -> Book {
    let mut book = Book::new(Vec::new(), now);
    let record = RunRecord {
        id: RunId(1),
        pipeline: "core".into(),
        partition: "2026-01-18".into(),
        version: core.version.clone(),
        state: RunState::Running,
        trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
        created_at: now,
        finished_at: None,
        cancel_requested: false,
        message: None,
    };
    let mut stored: Vec<keel_store::TaskRunRecord> = core
        .spec
        .tasks
        .iter()
        .map(|task| keel_store::TaskRunRecord {
            run: RunId(1),
            task: task.name.clone(),
            phase: task.phase.clone(),
            state: TaskState::Pending,
            outcome: None,
            attempts: 0,
            charged: 0,
            lease_epoch: 0,
            not_before: None,
            first_started_at: None,
            message: None,
            rerun_pending: false,
            sensor_polls: 0,
        })
        .collect();
    adjust(&mut stored);
    let active = core.active_run(record, &stored);
    book.runs.push(active);
    core.restore_tasks(&mut book, 0, &stored).unwrap();
    core.queue_what_can_start(&mut book, 0, &stored);
    book
}

/// Picks what may start and marks it claimed as the store would, returning the attempt ids.
fn start(core: &mut Core, book: &mut Book, next_id: &mut i64) -> Vec<(AttemptId, String)> {
    let picked = core.pick_ready(book, 8);
    picked
        .into_iter()
        .map(|(run_index, task)| {
            *next_id += 1;
            let number = book.runs[run_index].slots[task].attempts + 1;
            let attempt = AttemptRecord {
                id: AttemptId(*next_id),
                run: RunId(1),
                pipeline: "core".into(),
                partition: "2026-01-18".into(),
                task: core.dag.name(task).to_string(),
                number,
                lease_owner: "core-test".into(),
                lease_epoch: number as i64,
                not_before: None,
                claimed_at: book.now,
                started_at: None,
                finished_at: None,
                outcome: None,
                exit_code: None,
                rows: None,
                metrics: None,
                message: None,
                pid: None,
                dir: "/nonexistent".into(),
                version: None,
            };
            core.prepare_attempt(book, run_index, task, &attempt);
            (attempt.id, attempt.task)
        })
        .collect()
}

fn finishes(book: &Book) -> Vec<(AttemptId, Outcome, TaskNext)> {
    book.writes
        .iter()
        .filter_map(|write| match write {
            Write::Finish(finish) => Some((finish.attempt, finish.outcome, finish.next.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_failure_is_retried_within_its_backoff_and_the_chain_then_runs_in_order() {
    let mut core = chain_core();
    let mut book = loaded(&mut core, 1_000);
    let mut ids = 0;
    let first = start(&mut core, &mut book, &mut ids);
    assert_eq!(first.len(), 1, "only the head of the chain may start");
    assert_eq!(first[0].1, "a");
    let report = Report::new(Outcome::Failed, "boom");
    core.on_reports(&mut book, vec![(first[0].0, report)])
        .unwrap();
    let decided = finishes(&book);
    let TaskNext::Retry { not_before, charge } = decided[0].2.clone() else {
        panic!("a transient failure is retried: {decided:?}");
    };
    assert!(charge);
    assert!(
        (1_000..=2_000).contains(&not_before),
        "full jitter under the first ceiling of 1 s: {not_before}"
    );
    assert!(book.live.is_empty());
    book.writes.clear();

    // Nothing starts before the retry is due; then it does.
    assert!(start(&mut core, &mut book, &mut ids).is_empty());
    book.now = not_before;
    core.fire_timers(&mut book);
    let second = start(&mut core, &mut book, &mut ids);
    assert_eq!(second[0].1, "a");
    core.on_reports(
        &mut book,
        vec![(second[0].0, Report::new(Outcome::Succeeded, "ok"))],
    )
    .unwrap();
    assert_eq!(finishes(&book)[0].2, TaskNext::Done(Outcome::Succeeded));
    book.writes.clear();
    let third = start(&mut core, &mut book, &mut ids);
    assert_eq!(
        third
            .iter()
            .map(|(_, task)| task.as_str())
            .collect::<Vec<_>>(),
        ["b"]
    );
}

#[test]
fn a_permanent_failure_settles_downstream_and_ends_the_run_in_one_step() {
    let mut core = chain_core();
    let mut book = loaded(&mut core, 1_000);
    let mut ids = 0;
    let first = start(&mut core, &mut book, &mut ids);
    let report = Report::new(Outcome::FailedPermanent, "bad input");
    core.on_reports(&mut book, vec![(first[0].0, report)])
        .unwrap();
    // Everything the step decided is in its writes, for the driver's one transaction.
    let upstream_failed: Vec<&str> = book
        .writes
        .iter()
        .filter_map(|write| match write {
            Write::Run {
                change: Change::Task(change),
                ..
            } if change.outcome == Some(Outcome::UpstreamFailed) => Some(change.task.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(upstream_failed, ["b", "c"]);
    assert!(matches!(
        book.writes.last(),
        Some(Write::RunState {
            state: RunState::Failed,
            ..
        })
    ));
    assert!(book.runs[0].finished);
    assert!(start(&mut core, &mut book, &mut ids).is_empty());
}

#[test]
fn a_cancel_asks_the_driver_to_stop_what_runs_and_settles_the_rest() {
    let mut core = chain_core();
    let mut book = loaded(&mut core, 1_000);
    let mut ids = 0;
    let first = start(&mut core, &mut book, &mut ids);
    core.begin_cancel(&mut book, 0).unwrap();
    assert!(
        matches!(book.effects.as_slice(), [Effect::Stop(attempt)] if *attempt == first[0].0),
        "the running attempt is stopped by the driver, after the commit"
    );
    let cancelled = book
        .writes
        .iter()
        .filter(|write| {
            matches!(write, Write::Run { change: Change::Task(change), .. }
                if change.outcome == Some(Outcome::Cancelled))
        })
        .count();
    assert_eq!(cancelled, 2, "b and c never start");
    core.on_reports(
        &mut book,
        vec![(first[0].0, Report::new(Outcome::Cancelled, "stopped"))],
    )
    .unwrap();
    assert!(matches!(
        book.writes.last(),
        Some(Write::RunState {
            state: RunState::Cancelled,
            ..
        })
    ));
}

#[test]
fn a_task_launch_has_its_working_directory_and_its_environment_in_order() {
    let mut core = chain_core_with(|tasks, config| {
        tasks[0].context = keel_model::TaskContext {
            cwd: Some("out/{date}".into()),
            env: [("LOG".to_string(), "task-{task}".to_string())].into(),
            env_file: Some(".env".into()),
            inherit_env: keel_model::InheritEnv::Only(vec!["PATH".into()]),
        };
        tasks[0].wait_for = Some(keel_model::SensorSpec {
            command: vec!["ready".into()],
            every: Duration::from_secs(1),
            max: Duration::from_secs(1),
            deadline: Duration::from_secs(60),
        });
        config.launch_context = crate::LaunchContext {
            pipeline_dir: Some(PathBuf::from("/srv/p")),
            keel_env: vec![
                ("PATH".into(), "/usr/bin".into()),
                ("HOME".into(), "/root".into()),
            ],
            env_files: [(
                ".env".to_string(),
                vec![
                    ("FROM_FILE".to_string(), "1".to_string()),
                    ("LOG".to_string(), "file".to_string()),
                ],
            )]
            .into(),
        };
    });
    let mut book = loaded(&mut core, 1_000);
    core.pick_ready(&mut book, 8);
    let Some(Effect::PollSensor { launch, .. }) = book.effects.pop() else {
        panic!("the sensor is polled first");
    };
    let expected_dir = Some(PathBuf::from("/srv/p/out/2026-01-18"));
    assert_eq!(
        launch.cwd, expected_dir,
        "the sensor runs where the task does"
    );
    assert!(launch.clear_env);
    let record = book.runs[0].record.clone();
    let launch = core.task_launch(&record, 0, false, 1, PathBuf::from("/attempt"));
    assert_eq!(launch.cwd, expected_dir);
    assert!(launch.clear_env, "a list inherits only what it names");
    let names: Vec<&str> = launch.env.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names[..5],
        ["PATH", "FROM_FILE", "LOG", "LOG", "PYTHONUNBUFFERED"],
        "inherited, env file, env, then Python's buffering"
    );
    assert!(!names.contains(&"HOME"));
    let last = |name: &str| {
        launch
            .env
            .iter()
            .rev()
            .find(|(own, _)| own == name)
            .map(|(_, value)| value.as_str())
    };
    assert_eq!(last("LOG"), Some("task-a"), "env wins over the env file");
    assert_eq!(last("PYTHONUNBUFFERED"), Some("1"));
    assert_eq!(last("KEEL_TASK"), Some("a"));
    let keel_first = names
        .iter()
        .position(|name| name.starts_with("KEEL_"))
        .unwrap();
    assert!(
        names[..keel_first]
            .iter()
            .all(|name| !name.starts_with("KEEL_")),
        "Keel's variables come after everything the task sets"
    );
}
