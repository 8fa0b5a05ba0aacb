//! The core driven by hand: no runtime, no database, no processes. Each test feeds the core what
//! the driver would (a loaded run, claimed attempts, reports, the time) and checks what it decided
//! to write and to do.

use std::time::Duration;

use keel_model::{Jitter, PartitionKind, PhaseSpec, RetryPolicy, TaskSpec};

use super::*;
use crate::SplitMix64;

pub(super) fn task(name: &str, phase: &str, attempts: u32) -> TaskSpec {
    TaskSpec {
        name: name.into(),
        phase: phase.into(),
        command: vec!["run".into(), "{task}".into()],
        http: None,
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

/// A chain `a → b → c`, one task per phase.
fn chain_core() -> Core {
    chain_core_with(|_, _| {})
}

/// [`chain_core`] with its tasks (`a` with 3 attempts, `b` and `c` with 1) and its engine
/// settings adjusted first.
pub(super) fn chain_core_with(adjust: impl FnOnce(&mut Vec<TaskSpec>, &mut EngineConfig)) -> Core {
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
                checks: Vec::new(),
            })
            .collect(),
        tasks: vec![task("a", "p0", 3), task("b", "p1", 1), task("c", "p2", 1)],
        resources: vec![],
        schedule: None,
        max_active_partitions: None,
        passes: Vec::new(),
        alerts: None,
        secrets: None,
        smoke: Vec::new(),
        slos: Vec::new(),
        heal_budget: keel_model::DEFAULT_HEAL_BUDGET,
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
        task_versions: Core::compute_task_versions(&spec, &config),
        rollouts: vec![Default::default(); spec.tasks.len()],
        random: Box::new(SplitMix64::new(3)),
        version: spec.version(),
        task_uses: vec![Vec::new(); spec.tasks.len()],
        commands: spec.tasks.iter().map(Commands::of).collect(),
        spec: Arc::new(spec),
        dag,
        topologies: vec![topology],
        config,
        store_id: "store".into(),
        observer: Box::new(|_| {}),
        items: Vec::new(),
        item_index: HashMap::new(),
    }
}

/// A run of `core`'s pipeline as freshly created in the store, loaded into a new book.
pub(super) fn loaded(core: &mut Core, now: Millis) -> Book {
    loaded_from(core, now, |_| {})
}

/// A run of `core`'s pipeline loaded into a new book from stored tasks that `adjust` changes
/// first, as a restarted Keel finds them.
pub(super) fn loaded_from(
    core: &mut Core,
    now: Millis,
    adjust: impl FnOnce(&mut Vec<keel_store::TaskRunRecord>),
) -> Book {
    let policies = core
        .spec
        .resources
        .iter()
        .map(|resource| crate::policy::ResourcePolicy::new(resource, now))
        .collect();
    let mut book = Book::new(policies, now);
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
        pass: None,
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
            sensor_errors: 0,
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
pub(super) fn start(
    core: &mut Core,
    book: &mut Book,
    next_id: &mut i64,
) -> Vec<(AttemptId, String)> {
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
                task_version: Some(core.chosen_version(&book.runs[run_index].record, task)),
            };
            core.prepare_attempt(book, run_index, task, &attempt);
            (attempt.id, attempt.task)
        })
        .collect()
}

pub(super) fn finishes(book: &Book) -> Vec<(AttemptId, Outcome, TaskNext)> {
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

/// `a` of [`chain_core`] waits for a sensor polled every second for at most a minute.
fn sensed_core() -> Core {
    chain_core_with(|tasks, _| {
        tasks[0].wait_for = Some(keel_model::SensorSpec {
            command: vec!["ready".into(), "{date}".into(), "{task}".into()],
            http: None,
            every: Duration::from_secs(1),
            max: Duration::from_secs(8),
            deadline: Duration::from_secs(60),
        });
    })
}

/// Starts what may start; returns the tasks whose sensor is to be polled.
fn polls(core: &mut Core, book: &mut Book) -> Vec<TaskIndex> {
    assert!(
        core.pick_ready(book, 8).is_empty(),
        "a sensed task polls first"
    );
    std::mem::take(&mut book.effects)
        .into_iter()
        .filter_map(|effect| match effect {
            Effect::PollSensor { task, .. } => Some(task),
            Effect::Stop(_) | Effect::Probe { .. } => None,
        })
        .collect()
}

fn sensor_polls(book: &Book) -> Vec<SensorPoll> {
    book.writes
        .iter()
        .filter_map(|write| match write {
            Write::SensorPoll(poll) => Some(poll.clone()),
            _ => None,
        })
        .collect()
}

fn exited(code: i32, outcome: Outcome, message: &str) -> Report {
    Report {
        exit_code: Some(code),
        ..Report::new(outcome, message)
    }
}

fn settled(book: &Book) -> Vec<(String, Option<Outcome>, Option<String>)> {
    book.writes
        .iter()
        .filter_map(|write| match write {
            Write::Run {
                change: Change::Task(change),
                ..
            } => Some((change.task.clone(), change.outcome, change.message.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_sensor_error_uses_up_attempts_and_ends_the_task_failed_with_its_last_output() {
    let mut core = sensed_core();
    let mut book = loaded(&mut core, 1_000);
    let failing = || {
        exited(
            3,
            Outcome::Failed,
            "exited with code 3; last output: feed unreachable",
        )
    };
    for error in 1..=2u32 {
        assert_eq!(polls(&mut core, &mut book), [0]);
        core.on_sensor(&mut book, 0, 0, failing()).unwrap();
        let poll = sensor_polls(&book).pop().expect("the poll is recorded");
        assert!(poll.error, "not a plain not-ready poll");
        assert!(!poll.ready);
        let message = poll.message.unwrap();
        assert!(
            message.starts_with(&format!("sensor error {error} of 3: exited with code 3")),
            "{message}"
        );
        let not_before = poll.not_before.unwrap();
        let ceiling = book.now + 1_000 * (1 << (error - 1));
        assert!(
            (book.now..=ceiling).contains(&not_before),
            "the task's retry backoff (full jitter up to {ceiling}): {not_before}"
        );
        assert_eq!(book.runs[0].sensor_errors[0], error);
        book.writes.clear();
        book.now = not_before;
        core.fire_timers(&mut book);
    }
    assert_eq!(polls(&mut core, &mut book), [0]);
    core.on_sensor(&mut book, 0, 0, failing()).unwrap();
    let decided = settled(&book);
    assert_eq!(decided[0].0, "a");
    assert_eq!(decided[0].1, Some(Outcome::Failed));
    let message = decided[0].2.clone().unwrap();
    assert_eq!(
        message,
        "the sensor \"ready 2026-01-18 a\" failed 3 times (retries.attempts = 3), the last time: exited with code 3; last output: feed unreachable"
    );
    assert_eq!(
        decided[1..]
            .iter()
            .map(|(task, outcome, _)| (task.as_str(), *outcome))
            .collect::<Vec<_>>(),
        [
            ("b", Some(Outcome::UpstreamFailed)),
            ("c", Some(Outcome::UpstreamFailed))
        ]
    );
    assert!(
        book.runs[0].finished,
        "the run ends failed, not at the deadline"
    );
}

#[test]
fn a_sensor_that_is_not_ready_polls_again_without_using_attempts_and_exit_65_is_no_data() {
    let mut core = sensed_core();
    let mut book = loaded(&mut core, 1_000);
    assert_eq!(polls(&mut core, &mut book), [0]);
    core.on_sensor(
        &mut book,
        0,
        0,
        exited(75, Outcome::NotReady, "not ready (exit 75)"),
    )
    .unwrap();
    let poll = sensor_polls(&book).pop().unwrap();
    assert!(!poll.error && !poll.ready);
    assert_eq!(book.runs[0].sensor_errors[0], 0);
    book.writes.clear();
    book.now = poll.not_before.unwrap();
    core.fire_timers(&mut book);
    assert_eq!(polls(&mut core, &mut book), [0]);
    core.on_sensor(
        &mut book,
        0,
        0,
        exited(65, Outcome::FailedPermanent, "permanent failure (exit 65)"),
    )
    .unwrap();
    assert_eq!(
        settled(&book)[0],
        (
            "a".to_string(),
            Some(Outcome::NoData),
            Some("the sensor \"ready 2026-01-18 a\" reported no data (exit 65)".to_string())
        )
    );
    book.writes.clear();
    let next = start(&mut core, &mut book, &mut 0);
    assert_eq!(next[0].1, "b", "no data is complete: downstream runs");
}

#[test]
fn the_sensor_deadline_message_names_the_command_with_its_templates_expanded() {
    let mut core = sensed_core();
    let mut book = loaded(&mut core, 1_000);
    assert_eq!(polls(&mut core, &mut book), [0]);
    book.now = 1_000 + 60_000;
    core.on_sensor(&mut book, 0, 0, exited(75, Outcome::NotReady, "not ready"))
        .unwrap();
    assert_eq!(
        settled(&book)[0].2.as_deref(),
        Some("still not ready after 1m00s: the sensor \"ready 2026-01-18 a\" never reported ready")
    );
}

/// Sensor errors are stored: a restarted Keel keeps counting them, and the task's own attempts
/// get only what the sensor left.
#[test]
fn stored_sensor_errors_count_against_the_tasks_attempts_after_a_restart() {
    let mut core = sensed_core();
    let mut book = loaded_from(&mut core, 1_000, |stored| {
        stored[0].sensor_errors = 2;
        stored[0].sensor_polls = 2;
    });
    assert_eq!(book.runs[0].sensor_errors[0], 2);
    assert_eq!(polls(&mut core, &mut book), [0]);
    core.on_sensor(&mut book, 0, 0, Report::new(Outcome::Succeeded, "ready"))
        .unwrap();
    book.writes.clear();
    let mut ids = 0;
    let first = start(&mut core, &mut book, &mut ids);
    assert_eq!(first[0].1, "a");
    core.on_reports(
        &mut book,
        vec![(first[0].0, Report::new(Outcome::Failed, "boom"))],
    )
    .unwrap();
    assert_eq!(
        finishes(&book)[0].2,
        TaskNext::Done(Outcome::Failed),
        "two sensor errors and one failure spend the three attempts"
    );
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
            http: None,
            every: Duration::from_secs(1),
            max: Duration::from_secs(1),
            deadline: Duration::from_secs(60),
        });
        config.launch_context = crate::LaunchContext {
            code_identities: HashMap::new(),
            pipeline_dir: Some(PathBuf::from("/srv/p")),
            secrets: None,
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
    let launch = core.task_launch(&record, 0, None, 1, SpanId(7), PathBuf::from("/attempt"));
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

#[test]
fn a_finished_run_is_forgotten_only_once_nothing_refers_to_it() {
    let mut core = chain_core();
    let mut book = loaded(&mut core, 1_000);
    let mut ids = 0;
    loop {
        let started = start(&mut core, &mut book, &mut ids);
        if started.is_empty() {
            break;
        }
        assert!(
            !book.forget_finished_runs(),
            "a run with a running attempt is kept"
        );
        let reports = started
            .into_iter()
            .map(|(attempt, _)| (attempt, Report::new(Outcome::Succeeded, "ok")))
            .collect();
        core.on_reports(&mut book, reports).unwrap();
        core.drain(&mut book).unwrap();
    }
    assert!(book.runs[0].finished, "the chain ran to its end");
    assert!(book.forget_finished_runs());
    assert!(book.runs.is_empty());
    assert!(!book.forget_finished_runs(), "nothing is left to forget");
}

#[test]
fn a_service_that_asks_to_be_called_later_is_not_asked_sooner_and_uses_no_attempt() {
    let mut core = chain_core();
    let mut book = loaded(&mut core, 1_000);
    let mut ids = 0;
    let first = start(&mut core, &mut book, &mut ids);
    let report = Report {
        retry_after: Some(Duration::from_secs(90)),
        ..Report::new(Outcome::NotReady, "POST http://svc/x answered 429")
    };
    core.on_reports(&mut book, vec![(first[0].0, report)])
        .unwrap();
    let decided = finishes(&book);
    let TaskNext::Retry { not_before, charge } = decided[0].2.clone() else {
        panic!("not ready is checked again: {decided:?}");
    };
    assert!(!charge, "not ready uses no attempt");
    assert_eq!(
        not_before,
        1_000 + 90_000,
        "Retry-After wins over a 1 s backoff"
    );
    book.writes.clear();
    book.now = not_before - 1;
    core.fire_timers(&mut book);
    assert!(start(&mut core, &mut book, &mut ids).is_empty());
    book.now = not_before;
    core.fire_timers(&mut book);
    assert_eq!(start(&mut core, &mut book, &mut ids)[0].1, "a");
    // Without Retry-After the backoff alone decides.
    let mut core = chain_core();
    let mut book = loaded(&mut core, 1_000);
    let first = start(&mut core, &mut book, &mut 0);
    core.on_reports(
        &mut book,
        vec![(first[0].0, Report::new(Outcome::NotReady, "not ready"))],
    )
    .unwrap();
    let TaskNext::Retry { not_before, .. } = finishes(&book)[0].2.clone() else {
        panic!("retried");
    };
    assert!(not_before <= 2_000, "{not_before}");
}

#[test]
fn an_http_task_launch_expands_its_request_and_reads_its_credential_from_the_environment() {
    let mut core = chain_core_with(|tasks, config| {
        tasks[0].command.clear();
        tasks[0].http = Some(keel_model::HttpSpec {
            url: "http://svc.local/process/{task}".into(),
            method: "POST".into(),
            headers: [("X-Date".to_string(), "{date}".to_string())].into(),
            query: [
                ("day".to_string(), "{date}".to_string()),
                ("q".to_string(), "a b&c".to_string()),
            ]
            .into(),
            body: keel_model::HttpBody::Json(serde_json::json!({
                "date": "{date}",
                "n": 3,
                "nested": ["{task}"]
            })),
            auth: Some(keel_model::HttpAuth::BearerEnv("SVC_TOKEN".into())),
            on_status: vec![],
            connect_timeout: Duration::from_secs(5),
        });
        tasks[1].command.clear();
        tasks[1].http = Some(keel_model::HttpSpec {
            url: "http://svc.local/".into(),
            method: "GET".into(),
            headers: Default::default(),
            query: Default::default(),
            body: keel_model::HttpBody::None,
            auth: Some(keel_model::HttpAuth::BearerEnv("NOT_SET".into())),
            on_status: vec![],
            connect_timeout: Duration::from_secs(5),
        });
        config.launch_context.keel_env = vec![("SVC_TOKEN".into(), "tok-123456".into())];
    });
    let mut book = loaded(&mut core, 1_000);
    let record = book.runs[0].record.clone();
    let launch = core.task_launch(
        &record,
        0,
        None,
        1,
        keel_model::SpanId(7),
        std::path::PathBuf::from("/attempts/a.1"),
    );
    let call = launch
        .http
        .expect("an HTTP task's launch carries its request");
    assert_eq!(call.method, "POST");
    assert_eq!(
        call.url,
        format!(
            "http://svc.local/process/a?day={}&q=a%20b%26c",
            record.partition
        )
    );
    let body: serde_json::Value = serde_json::from_slice(&call.body.clone().unwrap().0).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"date": record.partition, "n": 3, "nested": ["a"]})
    );
    let header = |name: &str| {
        call.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
    };
    assert_eq!(header("X-Date").as_deref(), Some(record.partition.as_str()));
    assert_eq!(
        header("Idempotency-Key").as_deref(),
        Some(format!("core:a:{}", record.partition).as_str())
    );
    assert!(header("traceparent").is_some_and(|value| value.starts_with("00-")));
    assert_eq!(
        call.credential,
        Some(keel_exec::Credential::Bearer(keel_exec::Secret(
            "tok-123456".into()
        )))
    );
    assert!(
        !format!("{call:?}").contains("tok-123456"),
        "a token never shows in Debug"
    );
    // A credential whose variable is not set fails the attempt, naming the variable.
    let other = core.task_launch(
        &record,
        1,
        None,
        1,
        keel_model::SpanId(7),
        std::path::PathBuf::from("/attempts/b.1"),
    );
    let Some(keel_exec::Credential::Missing(message)) = other.http.unwrap().credential else {
        panic!("an unset variable is reported");
    };
    assert!(message.contains("NOT_SET"), "{message}");
    let _ = &mut book;
}

#[test]
fn a_failing_ready_probe_holds_tasks_without_attempts_until_one_passes() {
    let mut core = chain_core();
    let mut spec = (*core.spec).clone();
    spec.resources = vec![keel_model::ResourceSpec {
        name: "svc".into(),
        rate: None,
        concurrency: None,
        breaker: None,
        retry_budget: None,
        ready: Some(keel_model::ReadyProbe {
            url: "http://svc.local/ready".into(),
            auth: None,
            every: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
        }),
        tokens: keel_model::TokenUse::Attempt,
        quota: None,
    }];
    spec.tasks[0].uses = vec!["svc".into()];
    core.spec = Arc::new(spec);
    core.task_uses[0] = vec![0];
    let mut book = loaded(&mut core, 1_000);
    let mut ids = 0;
    // The first look asks for a probe; nothing is claimed meanwhile.
    assert!(start(&mut core, &mut book, &mut ids).is_empty());
    let probes = |book: &mut Book| {
        std::mem::take(&mut book.effects)
            .into_iter()
            .filter(|effect| matches!(effect, Effect::Probe { resource: 0 }))
            .count()
    };
    assert_eq!(probes(&mut book), 1);
    assert_eq!(book.probing, 1);
    // One probe at a time, however often the task is looked at.
    assert!(start(&mut core, &mut book, &mut ids).is_empty());
    assert_eq!(probes(&mut book), 0);
    let (call, timeout) = core.probe_call(0);
    assert_eq!(
        (call.method.as_str(), call.url.as_str()),
        ("GET", "http://svc.local/ready")
    );
    assert_eq!(timeout, Duration::from_secs(2));

    // It fails: the task waits `every` for the next probe, with no attempt used.
    book.now = 1_500;
    core.on_probe(
        &mut book,
        0,
        Report::new(Outcome::NotReady, "GET http://svc.local/ready answered 503"),
    );
    assert_eq!(book.probing, 0);
    assert!(start(&mut core, &mut book, &mut ids).is_empty());
    assert_eq!(probes(&mut book), 0, "a failed answer holds for `every`");
    assert_eq!(book.runs[0].slots[0].attempts, 0);
    book.now = 11_499;
    core.fire_timers(&mut book);
    assert!(start(&mut core, &mut book, &mut ids).is_empty());
    assert_eq!(probes(&mut book), 0);
    book.now = 11_500;
    core.fire_timers(&mut book);
    assert!(start(&mut core, &mut book, &mut ids).is_empty());
    assert_eq!(probes(&mut book), 1, "asked again once the answer is old");

    // It passes: the task starts, and the answer holds for the next ten seconds.
    core.on_probe(&mut book, 0, Report::new(Outcome::Succeeded, "ok"));
    let started = start(&mut core, &mut book, &mut ids);
    assert_eq!(started.len(), 1);
    assert_eq!(started[0].1, "a");
    assert_eq!(probes(&mut book), 0);
}

/// `a` with `not_ready = { every = "2h", max = 3 }`, 2 attempts for failures and a 1-minute
/// deadline, which the policy replaces.
fn not_ready_core() -> Core {
    chain_core_with(|tasks, _| {
        tasks[0].retries.attempts = 2;
        tasks[0].deadline = Duration::from_secs(60);
        tasks[0].not_ready = Some(keel_model::NotReadyPolicy {
            every: Duration::from_secs(2 * 3600),
            max: 3,
        });
    })
}

const TWO_HOURS: Millis = 2 * 3600 * 1000;

/// Answers `a`'s one started attempt with `outcome` and returns the decision.
fn answer(core: &mut Core, book: &mut Book, ids: &mut i64, outcome: Outcome) -> (TaskNext, String) {
    let started = start(core, book, ids);
    assert_eq!(started.len(), 1, "one attempt of a starts");
    book.writes.clear();
    core.on_reports(book, vec![(started[0].0, Report::new(outcome, "answer"))])
        .unwrap();
    let message = book
        .writes
        .iter()
        .find_map(|write| match write {
            Write::Finish(finish) => finish.message.clone(),
            _ => None,
        })
        .unwrap_or_default();
    (finishes(book)[0].2.clone(), message)
}

#[test]
fn a_not_ready_policy_asks_again_every_interval_up_to_its_max_and_uses_no_retry() {
    let mut core = not_ready_core();
    let mut book = loaded(&mut core, 1_000);
    let mut ids = 0;
    for check in 1..=2 {
        let (next, message) = answer(&mut core, &mut book, &mut ids, Outcome::NotReady);
        let TaskNext::Retry { not_before, charge } = next else {
            panic!("check {check} is asked again: {next:?}");
        };
        assert!(!charge, "not ready uses no retry");
        assert_eq!(not_before, book.now + TWO_HOURS, "exactly every, no jitter");
        assert!(
            message.contains(&format!("check {check} of 3")),
            "{message}"
        );
        // Past the 1-minute deadline and just short of the interval, nothing starts.
        book.now = not_before - 1;
        core.fire_timers(&mut book);
        assert!(start(&mut core, &mut book, &mut ids).is_empty());
        book.now = not_before;
        core.fire_timers(&mut book);
    }
    let (next, message) = answer(&mut core, &mut book, &mut ids, Outcome::NotReady);
    assert_eq!(next, TaskNext::Done(Outcome::NotReady));
    assert!(message.contains("3 times at most"), "{message}");
}

#[test]
fn with_a_not_ready_policy_a_failure_still_follows_retries() {
    let mut core = not_ready_core();
    let mut book = loaded(&mut core, 1_000);
    let mut ids = 0;
    let (next, _) = answer(&mut core, &mut book, &mut ids, Outcome::NotReady);
    let TaskNext::Retry { not_before, .. } = next else {
        panic!("asked again: {next:?}");
    };
    book.now = not_before;
    core.fire_timers(&mut book);
    let (next, _) = answer(&mut core, &mut book, &mut ids, Outcome::Failed);
    let TaskNext::Retry { not_before, charge } = next else {
        panic!("a failure with an attempt left is retried: {next:?}");
    };
    assert!(charge, "a failure uses up a retry");
    assert!(
        not_before - book.now <= 1_000,
        "the retry backoff (1 s at first), not the 2-hour interval: {}",
        not_before - book.now
    );
}

#[test]
fn a_restarted_keel_counts_the_not_ready_checks_already_made() {
    let mut core = not_ready_core();
    let mut book = loaded_from(&mut core, 1_000, |stored| {
        stored[0].attempts = 2;
        stored[0].first_started_at = Some(1_000 - 2 * TWO_HOURS);
    });
    let mut ids = 10;
    let (next, message) = answer(&mut core, &mut book, &mut ids, Outcome::NotReady);
    assert_eq!(next, TaskNext::Done(Outcome::NotReady), "{message}");
    assert!(message.contains("used up"), "{message}");
    // After `keel retry` (first start cleared, attempt rows kept) the checks start afresh.
    let mut book = loaded_from(&mut core, 1_000, |stored| stored[0].attempts = 7);
    let (next, message) = answer(&mut core, &mut book, &mut ids, Outcome::NotReady);
    assert!(matches!(next, TaskNext::Retry { .. }), "{next:?}");
    assert!(message.contains("check 1 of 3"), "{message}");
}

/// `a` repeating every 3 minutes from 23:50 until 00:00 (UTC) of the partition 2026-01-18: four
/// repetitions, at 23:50, 23:53, 23:56 and 23:59.
fn repeat_core() -> Core {
    chain_core_with(|tasks, _| {
        tasks[0].repeat = Some(keel_model::RepeatSpec {
            every: Duration::from_secs(180),
            from: keel_model::TimeOfDay {
                hour: 23,
                minute: 50,
            },
            until: keel_model::TimeOfDay { hour: 0, minute: 0 },
        });
    })
}

const THREE_MINUTES: Millis = 3 * 60 * 1000;

/// 2026-01-18T23:50:00Z, when `repeat_core`'s window opens; it closes 10 minutes later.
fn window_opens() -> Millis {
    chrono::DateTime::parse_from_rfc3339("2026-01-18T23:50:00Z")
        .unwrap()
        .timestamp_millis()
}

/// Answers `a`'s repetitions with `outcomes`, each when it is due, and returns the last
/// decision and its message.
fn repeat_through(
    core: &mut Core,
    book: &mut Book,
    ids: &mut i64,
    outcomes: &[Outcome],
) -> (TaskNext, String) {
    let mut last = None;
    for (index, outcome) in outcomes.iter().enumerate() {
        let (next, message) = answer(core, book, ids, *outcome);
        if index + 1 < outcomes.len() {
            let TaskNext::Retry { not_before, charge } = next else {
                panic!("repetition {} is followed by another: {next:?}", index + 1);
            };
            assert_eq!(
                charge,
                *outcome == Outcome::Failed,
                "a failure is charged as an attempt"
            );
            assert_eq!(
                (not_before - window_opens()) % THREE_MINUTES,
                0,
                "on the window's grid: {message}"
            );
            book.now = not_before - 1;
            core.fire_timers(book);
            assert!(start(core, book, ids).is_empty(), "not before it is due");
            book.now = not_before;
            core.fire_timers(book);
        }
        last = Some((next, message));
    }
    last.unwrap()
}

#[test]
fn a_repeating_task_waits_for_its_window_and_repeats_on_its_grid_until_it_closes() {
    let mut core = repeat_core();
    let mut book = loaded(&mut core, window_opens() - 3_600_000);
    let mut ids = 0;
    assert!(start(&mut core, &mut book, &mut ids).is_empty());
    let held = book.writes.iter().find_map(|write| match write {
        Write::Run {
            change: Change::Task(change),
            ..
        } => Some(change.clone()),
        _ => None,
    });
    let held = held.expect("the hold is stored for status");
    assert_eq!(held.not_before, Some(window_opens()));
    assert!(held.reason.contains("from 23:50 until 00:00"), "{held:?}");
    book.now = window_opens() - 1;
    core.fire_timers(&mut book);
    assert!(start(&mut core, &mut book, &mut ids).is_empty());
    book.now = window_opens();
    core.fire_timers(&mut book);

    let (next, message) = answer(&mut core, &mut book, &mut ids, Outcome::Succeeded);
    assert_eq!(
        next,
        TaskNext::Retry {
            not_before: window_opens() + THREE_MINUTES,
            charge: false
        }
    );
    assert!(message.contains("repetition 1"), "{message}");
    book.now = window_opens() + THREE_MINUTES;
    core.fire_timers(&mut book);
    let started = start(&mut core, &mut book, &mut ids);
    assert_eq!(started.len(), 1, "b waits for the window to close");
    // This repetition fails and runs long: it ends at 23:57, so the next is 23:59, not 23:56.
    book.now = window_opens() + 7 * 60 * 1000;
    book.writes.clear();
    core.on_reports(
        &mut book,
        vec![(started[0].0, Report::new(Outcome::Failed, "boom"))],
    )
    .unwrap();
    let TaskNext::Retry { not_before, charge } = finishes(&book)[0].2.clone() else {
        panic!("a failed repetition is followed by the next");
    };
    assert!(charge, "a failed repetition counts as an attempt");
    assert_eq!(not_before, window_opens() + 3 * THREE_MINUTES);
    book.now = not_before;
    core.fire_timers(&mut book);
    let (next, message) = answer(&mut core, &mut book, &mut ids, Outcome::Failed);
    assert_eq!(
        next,
        TaskNext::Done(Outcome::Succeeded),
        "an earlier repetition succeeded: {message}"
    );
    assert!(message.contains("repetition 4 was the last"), "{message}");
    assert!(
        message.contains("an earlier repetition succeeded"),
        "{message}"
    );
    book.writes.clear();
    let downstream = start(&mut core, &mut book, &mut ids);
    assert_eq!(downstream[0].1, "b");
}

#[test]
fn a_window_without_a_success_ends_with_the_last_outcome() {
    let mut core = repeat_core();
    let mut book = loaded(&mut core, window_opens());
    let mut ids = 0;
    let (next, message) = repeat_through(
        &mut core,
        &mut book,
        &mut ids,
        &[
            Outcome::Failed,
            Outcome::NotReady,
            Outcome::Failed,
            Outcome::NoData,
        ],
    );
    assert_eq!(next, TaskNext::Done(Outcome::NoData));
    assert!(message.contains("no repetition succeeded"), "{message}");
}

#[test]
fn a_restarted_keel_neither_repeats_a_repetition_nor_forgets_a_success() {
    let mut core = repeat_core();
    let opens = window_opens();
    // Two repetitions were made (the first succeeded); the third is due at 23:56.
    let mut book = loaded_from(&mut core, opens + 4 * 60 * 1000, |stored| {
        stored[0].state = TaskState::Waiting;
        stored[0].outcome = Some(Outcome::Failed);
        stored[0].attempts = 2;
        stored[0].first_started_at = Some(opens);
        stored[0].not_before = Some(opens + 2 * THREE_MINUTES);
    });
    let attempt = |number: u32, started_at: Millis, outcome: Outcome| AttemptRecord {
        id: AttemptId(i64::from(number)),
        run: RunId(1),
        pipeline: "core".into(),
        partition: "2026-01-18".into(),
        task: "a".into(),
        number,
        lease_owner: "core-test".into(),
        lease_epoch: 1,
        not_before: None,
        claimed_at: started_at,
        started_at: Some(started_at),
        finished_at: Some(started_at + 1_000),
        outcome: Some(outcome),
        exit_code: Some(0),
        rows: None,
        metrics: None,
        message: None,
        pid: None,
        dir: "/nonexistent".into(),
        version: None,
        task_version: None,
    };
    // A success from before a `keel retry` (earlier than the first start) does not count.
    let mut before_retry = book.runs.pop().unwrap();
    core.restore_repeats(
        &mut before_retry,
        &[attempt(1, opens - 1, Outcome::Succeeded)],
    );
    assert!(!before_retry.repeat_succeeded[0]);
    core.restore_repeats(
        &mut before_retry,
        &[
            attempt(1, opens, Outcome::Succeeded),
            attempt(2, opens + THREE_MINUTES, Outcome::Failed),
        ],
    );
    book.runs.push(before_retry);
    let mut ids = 10;
    assert!(
        start(&mut core, &mut book, &mut ids).is_empty(),
        "the third repetition is not due yet"
    );
    book.now = opens + 2 * THREE_MINUTES;
    core.fire_timers(&mut book);
    let (next, _) = answer(&mut core, &mut book, &mut ids, Outcome::Failed);
    let TaskNext::Retry { not_before, .. } = next else {
        panic!("the fourth repetition follows: {next:?}");
    };
    book.now = not_before;
    core.fire_timers(&mut book);
    let (next, message) = answer(&mut core, &mut book, &mut ids, Outcome::Failed);
    assert_eq!(next, TaskNext::Done(Outcome::Succeeded), "{message}");
}

#[test]
fn a_past_partition_runs_a_repeating_task_once_with_its_retries() {
    let mut core = repeat_core();
    let mut book = loaded(&mut core, window_opens() + 86_400_000);
    let mut ids = 0;
    let (next, _) = answer(&mut core, &mut book, &mut ids, Outcome::Failed);
    let TaskNext::Retry { charge, .. } = next else {
        panic!("a failure is retried as for any task: {next:?}");
    };
    assert!(charge, "with the task's retries");
    book.now += 60_000;
    core.fire_timers(&mut book);
    let (next, _) = answer(&mut core, &mut book, &mut ids, Outcome::Succeeded);
    assert_eq!(next, TaskNext::Done(Outcome::Succeeded));
}

/// The chain with `freeze_after = "12:00"` on `a` (3 attempts) and `b`; 12:00 UTC on the
/// partition 2026-01-18 is [`freeze_time`].
fn freeze_core() -> Core {
    chain_core_with(|tasks, _| {
        for task in &mut tasks[..2] {
            task.freeze_after = Some(keel_model::FreezeSpec::At(keel_model::TimeOfDay {
                hour: 12,
                minute: 0,
            }));
        }
    })
}

fn freeze_time() -> Millis {
    chrono::DateTime::parse_from_rfc3339("2026-01-18T12:00:00Z")
        .unwrap()
        .timestamp_millis()
}

#[test]
fn a_frozen_task_is_not_retried_after_its_freeze_time() {
    let mut core = freeze_core();
    let mut book = loaded(&mut core, freeze_time() - 1_000);
    let mut ids = 0;
    let (next, _) = answer(&mut core, &mut book, &mut ids, Outcome::Failed);
    let TaskNext::Retry { not_before, .. } = next else {
        panic!("retried before the freeze: {next:?}");
    };
    book.now = not_before.max(freeze_time());
    core.fire_timers(&mut book);
    let (next, message) = answer(&mut core, &mut book, &mut ids, Outcome::Failed);
    assert_eq!(next, TaskNext::Done(Outcome::Failed));
    assert!(
        message.contains("frozen at 12:00: not retried after it ended failed"),
        "{message}"
    );
}

/// Reconciles the late landing of `a` in a run where every task succeeded, at `now`, and
/// returns the task changes written.
fn reconcile_at(core: &mut Core, now: Millis) -> (Book, Vec<TaskChange>) {
    let mut book = loaded_from(core, now, |stored| {
        for task in stored.iter_mut() {
            task.state = TaskState::Done;
            task.outcome = Some(Outcome::Succeeded);
            task.attempts = 1;
        }
    });
    book.writes.clear();
    core.follow_up(
        &mut book,
        Followup::Reconcile {
            run_index: 0,
            task: 0,
        },
    )
    .unwrap();
    let changes = book
        .writes
        .iter()
        .filter_map(|write| match write {
            Write::Run {
                change: Change::Task(change),
                ..
            } => Some(change.clone()),
            _ => None,
        })
        .collect();
    (book, changes)
}

#[test]
fn a_frozen_task_is_not_rerun_when_an_upstream_task_lands_late_and_status_says_why() {
    let mut core = freeze_core();
    let (book, changes) = reconcile_at(&mut core, freeze_time() - 1);
    assert_eq!(
        changes
            .iter()
            .map(|change| change.state)
            .collect::<Vec<_>>(),
        [TaskState::Pending, TaskState::Pending],
        "before the freeze, b and c run again: {changes:?}"
    );
    assert_eq!(book.runs[0].slots[1].state, TaskState::Pending);

    let (book, changes) = reconcile_at(&mut core, freeze_time());
    let frozen = changes
        .iter()
        .find(|change| change.task == "b")
        .expect("the decision about b is stored");
    assert_eq!(frozen.state, TaskState::Done);
    assert_eq!(
        frozen.outcome,
        Some(Outcome::Succeeded),
        "b keeps its outcome"
    );
    assert_eq!(
        frozen.message.as_deref(),
        Some("frozen at 12:00: not rerun after upstream task \"a\" landed late")
    );
    assert_eq!(book.runs[0].slots[1].state, TaskState::Done);
    // c has no freeze: it runs again.
    let c = changes.iter().find(|change| change.task == "c").unwrap();
    assert_eq!(c.state, TaskState::Pending);
}

/// `b` freezes 30 minutes after `c` (which consumes its output) ended.
fn freeze_after_task_core() -> Core {
    chain_core_with(|tasks, _| {
        tasks[1].freeze_after = Some(keel_model::FreezeSpec::AfterTask {
            task: "c".into(),
            delay: std::time::Duration::from_secs(30 * 60),
        });
    })
}

/// `c`'s stored attempt, ended at `finished_at`.
fn c_ended_at(finished_at: Millis) -> AttemptRecord {
    AttemptRecord {
        id: AttemptId(3),
        run: RunId(1),
        pipeline: "core".into(),
        partition: "2026-01-18".into(),
        task: "c".into(),
        number: 1,
        lease_owner: "core-test".into(),
        lease_epoch: 1,
        not_before: None,
        claimed_at: finished_at - 1_000,
        started_at: Some(finished_at - 1_000),
        finished_at: Some(finished_at),
        outcome: Some(Outcome::Succeeded),
        exit_code: Some(0),
        rows: None,
        metrics: None,
        message: None,
        pid: None,
        dir: "/nonexistent".into(),
        version: None,
        task_version: None,
    }
}

#[test]
fn a_task_frozen_after_another_ends_is_rerun_until_then_and_not_after() {
    let mut core = freeze_after_task_core();
    let ended = freeze_time();
    // Loaded from the store, c's end is read back from its attempt (as after a restart).
    let reconcile = |core: &mut Core, now: Millis| {
        let mut book = loaded_from(core, now, |stored| {
            for task in stored.iter_mut() {
                task.state = TaskState::Done;
                task.outcome = Some(Outcome::Succeeded);
                task.attempts = 1;
            }
        });
        core.restore_task_ends(&mut book.runs[0], &[c_ended_at(ended)]);
        book.writes.clear();
        core.follow_up(
            &mut book,
            Followup::Reconcile {
                run_index: 0,
                task: 0,
            },
        )
        .unwrap();
        book.writes
            .iter()
            .filter_map(|write| match write {
                Write::Run {
                    change: Change::Task(change),
                    ..
                } if change.task == "b" => Some(change.clone()),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let before = reconcile(&mut core, ended + 30 * 60_000 - 1);
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(
        before[0].state,
        TaskState::Pending,
        "before the freeze, b runs again"
    );

    let after = reconcile(&mut core, ended + 30 * 60_000);
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0].state, TaskState::Done, "b keeps its outcome");
    assert_eq!(
        after[0].message.as_deref(),
        Some("frozen 30m after \"c\" ended: not rerun after upstream task \"a\" landed late")
    );
}

#[test]
fn a_freeze_after_a_task_that_has_not_ended_complete_does_not_hold() {
    let mut core = freeze_after_task_core();
    let now = freeze_time() + 24 * 3_600_000;
    // c failed: nothing consumed b's output, so b is not frozen and runs again.
    let mut book = loaded_from(&mut core, now, |stored| {
        for task in stored.iter_mut() {
            task.state = TaskState::Done;
            task.outcome = Some(Outcome::Succeeded);
            task.attempts = 1;
        }
        stored[2].outcome = Some(Outcome::Failed);
    });
    core.restore_task_ends(&mut book.runs[0], &[c_ended_at(freeze_time())]);
    assert_eq!(core.frozen_at(&book.runs[0], 1, now), None);
    // Once c succeeded, b is frozen 30 minutes after its end.
    book.runs[0].slots[2].outcome = Some(Outcome::Succeeded);
    assert_eq!(
        core.frozen_at(&book.runs[0], 1, now).as_deref(),
        Some("30m after \"c\" ended")
    );
    // A task's own end is recorded when it settles.
    let mut core = freeze_after_task_core();
    let mut book = loaded(&mut core, freeze_time());
    let mut ids = 0;
    for _ in 0..3 {
        answer(&mut core, &mut book, &mut ids, Outcome::Succeeded);
    }
    assert_eq!(book.runs[0].ended_at[2], Some(freeze_time()));
}

/// The command of the sensor whose poll `book.effects` holds.
fn polled_commands(core: &mut Core, book: &mut Book) -> Vec<String> {
    assert!(
        core.pick_ready(book, 8).is_empty(),
        "a sensed task polls first"
    );
    std::mem::take(&mut book.effects)
        .into_iter()
        .filter_map(|effect| match effect {
            Effect::PollSensor { launch, .. } => Some(launch.command.join(" ")),
            Effect::Stop(_) | Effect::Probe { .. } => None,
        })
        .collect()
}

#[test]
fn every_sensor_of_a_task_must_pass_in_order_before_its_first_attempt() {
    let mut core = chain_core_with(|tasks, _| {
        let sensor = |name: &str| keel_model::SensorSpec {
            command: vec![name.into(), "{date}".into()],
            http: None,
            every: Duration::from_secs(1),
            max: Duration::from_secs(8),
            deadline: Duration::from_secs(60),
        };
        tasks[0].wait_for = Some(sensor("odds_posted"));
        tasks[0].also_wait_for = vec![sensor("lineups_posted")];
    });
    let mut book = loaded(&mut core, 1_000);
    assert_eq!(
        polled_commands(&mut core, &mut book),
        ["odds_posted 2026-01-18"]
    );
    core.on_sensor(&mut book, 0, 0, exited(0, Outcome::Succeeded, "ok"))
        .unwrap();
    // The first passed: the second is polled at once, and the task does not start yet.
    assert_eq!(
        polled_commands(&mut core, &mut book),
        ["lineups_posted 2026-01-18"]
    );
    core.on_sensor(
        &mut book,
        0,
        0,
        exited(75, Outcome::NotReady, "not ready (exit 75)"),
    )
    .unwrap();
    let poll = sensor_polls(&book).pop().unwrap();
    book.now = poll.not_before.unwrap();
    core.fire_timers(&mut book);
    assert_eq!(
        polled_commands(&mut core, &mut book),
        ["lineups_posted 2026-01-18"],
        "the second is polled again, not the first"
    );
    core.on_sensor(&mut book, 0, 0, exited(0, Outcome::Succeeded, "ok"))
        .unwrap();
    let started = start(&mut core, &mut book, &mut 0);
    assert_eq!(started.len(), 1, "both passed: the first attempt starts");
    assert_eq!(started[0].1, "a");
}

/// A succeeded report carrying `rows` and `metrics` (JSON text), as a result file gives them.
pub(super) fn reported(rows: Option<i64>, metrics: &str) -> Report {
    Report {
        rows,
        metrics: Some(metrics.to_string()),
        ..Report::new(Outcome::Succeeded, "")
    }
}

fn check_events(book: &Book) -> Vec<serde_json::Value> {
    book.writes
        .iter()
        .filter_map(|write| match write {
            Write::Run {
                change:
                    Change::Event {
                        kind: keel_model::EventKind::CheckFailed,
                        detail,
                        ..
                    },
                ..
            } => Some(serde_json::from_str(detail).unwrap()),
            _ => None,
        })
        .collect()
}

pub(super) fn with_checks(core: &mut Core, task: usize, checks: Vec<keel_model::CheckSpec>) {
    let mut spec = (*core.spec).clone();
    spec.tasks[task].checks = checks;
    core.spec = Arc::new(spec);
}

pub(super) fn accuracy_at_least(min: f64, severity: keel_model::Severity) -> keel_model::CheckSpec {
    keel_model::CheckSpec {
        target: keel_model::CheckTarget::Metric("accuracy".into()),
        min: Some(min),
        max: None,
        severity,
        heal: Vec::new(),
    }
}

#[test]
fn a_failed_block_check_is_retried_like_a_failure_and_downstream_waits() {
    let mut core = chain_core();
    with_checks(
        &mut core,
        0,
        vec![accuracy_at_least(0.3, keel_model::Severity::Block)],
    );
    let told = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = told.clone();
    core.observer = Box::new(move |progress| sink.lock().unwrap().push(progress));
    let mut book = loaded(&mut core, 1_000);
    let mut ids = 0;
    let first = start(&mut core, &mut book, &mut ids);
    core.on_reports(
        &mut book,
        vec![(first[0].0, reported(Some(12), r#"{"accuracy":0.19}"#))],
    )
    .unwrap();
    let decided = finishes(&book);
    assert_eq!(decided[0].1, Outcome::FailedCheck);
    let TaskNext::Retry { not_before, charge } = decided[0].2.clone() else {
        panic!("a failed check is retried while attempts are left: {decided:?}");
    };
    assert!(charge, "a failed check uses up an attempt");
    let events = check_events(&book);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["severity"], "block");
    assert_eq!(events[0]["value"], 0.19);
    assert_eq!(
        events[0]["describe"],
        "accuracy 0.19 is below the minimum 0.3"
    );
    let message = book
        .writes
        .iter()
        .find_map(|write| match write {
            Write::Finish(finish) => finish.message.clone(),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        message,
        "check failed: accuracy 0.19 is below the minimum 0.3"
    );
    assert!(told.lock().unwrap().iter().any(|progress| matches!(
        progress,
        Progress::CheckFailed { severity: keel_model::Severity::Block, task, .. } if task == "a"
    )));
    book.writes.clear();
    // Downstream waits for the retry, which passes.
    assert!(start(&mut core, &mut book, &mut ids).is_empty());
    book.now = not_before;
    core.fire_timers(&mut book);
    let second = start(&mut core, &mut book, &mut ids);
    assert_eq!(second[0].1, "a");
    core.on_reports(
        &mut book,
        vec![(second[0].0, reported(Some(12), r#"{"accuracy":0.45}"#))],
    )
    .unwrap();
    assert_eq!(finishes(&book)[0].2, TaskNext::Done(Outcome::Succeeded));
    assert!(check_events(&book).is_empty());
    book.writes.clear();
    let third = start(&mut core, &mut book, &mut ids);
    assert_eq!(third[0].1, "b");
}

#[test]
fn a_failed_block_check_with_no_retry_left_fails_downstream_and_the_run() {
    let mut core = chain_core_with(|tasks, _| tasks[0].retries.attempts = 1);
    with_checks(
        &mut core,
        0,
        vec![accuracy_at_least(0.3, keel_model::Severity::Block)],
    );
    let mut book = loaded(&mut core, 1_000);
    let mut ids = 0;
    let first = start(&mut core, &mut book, &mut ids);
    // A metric the result does not report at all fails its check too.
    core.on_reports(&mut book, vec![(first[0].0, reported(Some(12), "{}"))])
        .unwrap();
    assert_eq!(finishes(&book)[0].2, TaskNext::Done(Outcome::FailedCheck));
    assert_eq!(check_events(&book)[0]["value"], serde_json::Value::Null);
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
}

#[test]
fn a_failed_warn_check_is_recorded_and_the_task_goes_on() {
    let mut core = chain_core();
    with_checks(
        &mut core,
        0,
        vec![
            keel_model::CheckSpec {
                target: keel_model::CheckTarget::Rows,
                min: Some(200.0),
                max: None,
                severity: keel_model::Severity::Warn,
                heal: Vec::new(),
            },
            accuracy_at_least(0.3, keel_model::Severity::Block),
        ],
    );
    let mut book = loaded(&mut core, 1_000);
    let mut ids = 0;
    let first = start(&mut core, &mut book, &mut ids);
    let report = Report {
        message: Some("loaded".into()),
        ..reported(Some(150), r#"{"accuracy":0.4}"#)
    };
    core.on_reports(&mut book, vec![(first[0].0, report)])
        .unwrap();
    let finish = book
        .writes
        .iter()
        .find_map(|write| match write {
            Write::Finish(finish) => Some(finish.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(finish.next, TaskNext::Done(Outcome::Succeeded));
    assert_eq!(
        finish.message.as_deref(),
        Some("check warning: rows 150 is below the minimum 200 (loaded)")
    );
    let events = check_events(&book);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["severity"], "warn");
    assert_eq!(events[0]["check"], "rows");
    book.writes.clear();
    assert_eq!(start(&mut core, &mut book, &mut ids)[0].1, "b");
}

#[test]
fn only_a_succeeded_attempt_is_checked() {
    let mut core = chain_core();
    with_checks(
        &mut core,
        0,
        vec![accuracy_at_least(0.3, keel_model::Severity::Block)],
    );
    let mut book = loaded(&mut core, 1_000);
    let mut ids = 0;
    let first = start(&mut core, &mut book, &mut ids);
    let report = Report {
        outcome: Outcome::NoData,
        ..reported(Some(0), r#"{"accuracy":0.0}"#)
    };
    core.on_reports(&mut book, vec![(first[0].0, report)])
        .unwrap();
    assert_eq!(finishes(&book)[0].2, TaskNext::Done(Outcome::NoData));
    assert!(check_events(&book).is_empty());
}

/// The chain with a second task `a2` in phase `p0`, whose gate needs only `a` (grace 0), and
/// `checks` on `p0`.
fn gated_core_with_phase_checks(checks: Vec<keel_model::PhaseCheck>) -> Core {
    let mut core = chain_core_with(|tasks, _| tasks.push(task("a2", "p0", 1)));
    let mut spec = (*core.spec).clone();
    spec.phases[0].gate = Some(keel_model::GateSpec {
        required: vec!["a".into()],
        min_share: 0.0,
        grace: Duration::ZERO,
        tiers: Vec::new(),
    });
    spec.phases[0].checks = checks;
    core.dag = Dag::new(&spec);
    core.topologies = vec![Topology::new(&spec, &core.dag)];
    core.version = spec.version();
    core.spec = Arc::new(spec);
    core
}

/// Runs the gated chain with `a2` failing for good and everything else succeeding; the run's
/// end state and the `check_failed` events.
fn run_with_a2_failing(core: &mut Core) -> (RunState, Vec<serde_json::Value>) {
    let mut book = loaded(core, 1_000);
    let mut ids = 0;
    let mut events = Vec::new();
    loop {
        let started = start(core, &mut book, &mut ids);
        if started.is_empty() {
            break;
        }
        let reports = started
            .into_iter()
            .map(|(attempt, task)| {
                let outcome = if task == "a2" {
                    Outcome::FailedPermanent
                } else {
                    Outcome::Succeeded
                };
                (attempt, Report::new(outcome, "done"))
            })
            .collect();
        core.on_reports(&mut book, reports).unwrap();
        events.extend(check_events(&book));
        if book.runs[0].finished {
            break;
        }
        book.writes.clear();
    }
    let state = book
        .writes
        .iter()
        .find_map(|write| match write {
            Write::RunState { state, .. } => Some(*state),
            _ => None,
        })
        .expect("the run ended");
    (state, events)
}

#[test]
fn a_phase_short_of_its_completeness_check_fails_the_run_or_warns() {
    let block = keel_model::PhaseCheck {
        min_share: 1.0,
        severity: keel_model::Severity::Block,
    };
    let warn = keel_model::PhaseCheck {
        min_share: 0.9,
        severity: keel_model::Severity::Warn,
    };
    // Without checks the gate lets the run end degraded.
    let mut core = gated_core_with_phase_checks(Vec::new());
    assert_eq!(run_with_a2_failing(&mut core).0, RunState::Degraded);
    let mut core = gated_core_with_phase_checks(vec![warn.clone()]);
    let (state, events) = run_with_a2_failing(&mut core);
    assert_eq!(
        state,
        RunState::Degraded,
        "a warn check does not change the run"
    );
    assert_eq!(events.len(), 1);
    assert_eq!(
        events[0]["describe"],
        "phase p0: 1 of 2 complete (50%), below the check's 90%"
    );
    assert_eq!(events[0]["severity"], "warn");
    let mut core = gated_core_with_phase_checks(vec![block]);
    let (state, events) = run_with_a2_failing(&mut core);
    assert_eq!(state, RunState::Failed);
    assert_eq!(events[0]["severity"], "block");
    // Met, a check says nothing.
    let mut core = gated_core_with_phase_checks(vec![keel_model::PhaseCheck {
        min_share: 0.5,
        severity: keel_model::Severity::Block,
    }]);
    let (state, events) = run_with_a2_failing(&mut core);
    assert_eq!((state, events.len()), (RunState::Degraded, 0));
}
