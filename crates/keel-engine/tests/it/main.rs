//! Engine behaviour on a fake executor and a manual clock.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_engine::{Engine, EngineConfig, ManualClock, Prepared, RunRequest, SplitMix64};
use keel_exec::{Adopted, Executor, Launch, Report, Running};
use keel_model::{
    Jitter, Outcome, PartitionKind, PhaseSpec, PipelineSpec, RetryPolicy, RunState, TaskSpec,
    TaskState,
};
use keel_store::{SqliteStore, Store};

mod backfill;
mod calendars;
mod crash_property;
mod earlier;
mod edges;
mod expand;
mod heal;
mod passes;
mod properties;
mod remembered;
mod rollout;

/// (task, attempt, environment) of one launch.
type LaunchRecord = (String, u32, Vec<(String, String)>);

/// Scripted outcomes per task; a task with no script left succeeds. `hold` tasks run until
/// stopped or released.
#[derive(Clone, Default)]
struct FakeExecutor {
    scripts: Arc<Mutex<HashMap<String, VecDeque<Outcome>>>>,
    launches: Arc<Mutex<Vec<LaunchRecord>>>,
    hold: Arc<Mutex<Vec<String>>>,
    /// Held tasks that a `release` does not let go.
    pinned: Arc<Mutex<Vec<String>>>,
    running_now: Arc<Mutex<usize>>,
    running_max: Arc<Mutex<usize>>,
    release: Arc<tokio::sync::Notify>,
    adoption: Arc<Mutex<Option<Outcome>>>,
    /// Scripted sensor answers per task (a launch with KEEL_ATTEMPT=0 is a sensor poll).
    sensor_scripts: Arc<Mutex<HashMap<String, VecDeque<Outcome>>>>,
    sensor_polls: Arc<Mutex<Vec<String>>>,
    /// Scripted exit codes of `when` commands (a poll whose program is `is-game-day`), per
    /// task; unscripted ones exit 0.
    calendar_scripts: Arc<Mutex<HashMap<String, VecDeque<i32>>>>,
    calendar_polls: Arc<Mutex<Vec<String>>>,
    calendar_commands: Arc<Mutex<Vec<Vec<String>>>>,
    /// The `"items"` each task's result lists, per task.
    items: Arc<Mutex<HashMap<String, Vec<keel_model::Item>>>>,
    /// The `"heal"` each launch of a task's result asks for, in order; none when run out.
    heals: Arc<Mutex<HashMap<String, VecDeque<Vec<String>>>>>,
    /// The tasks of each `launch_many` call, in order.
    batches: Arc<Mutex<Vec<Vec<String>>>>,
}

impl FakeExecutor {
    fn script(&self, task: &str, outcomes: &[Outcome]) {
        self.scripts
            .lock()
            .unwrap()
            .insert(task.into(), outcomes.iter().copied().collect());
    }
    fn launches(&self) -> Vec<(String, u32)> {
        self.launches
            .lock()
            .unwrap()
            .iter()
            .map(|(task, attempt, _)| (task.clone(), *attempt))
            .collect()
    }
}

impl Executor for FakeExecutor {
    fn launch_many(&self, launches: Vec<Launch>) -> Vec<std::io::Result<Running>> {
        let tasks = launches
            .iter()
            .filter_map(|launch| {
                let (_, task) = launch.env.iter().find(|(key, _)| key == "KEEL_TASK")?;
                Some(task.clone())
            })
            .collect();
        self.batches.lock().unwrap().push(tasks);
        launches
            .into_iter()
            .map(|launch| self.launch(launch))
            .collect()
    }

    fn launch(&self, launch: Launch) -> std::io::Result<Running> {
        let task = launch
            .env
            .iter()
            .find(|(key, _)| key == "KEEL_TASK")
            .unwrap()
            .1
            .clone();
        let attempt_number: u32 = launch
            .env
            .iter()
            .find(|(key, _)| key == "KEEL_ATTEMPT")
            .unwrap()
            .1
            .parse()
            .unwrap();
        if attempt_number == 0
            && launch
                .command
                .first()
                .is_some_and(|program| program == "is-game-day")
        {
            self.calendar_polls.lock().unwrap().push(task.clone());
            self.calendar_commands
                .lock()
                .unwrap()
                .push(launch.command.clone());
            let code = self
                .calendar_scripts
                .lock()
                .unwrap()
                .get_mut(&task)
                .and_then(VecDeque::pop_front)
                .unwrap_or(0);
            let report = Report {
                exit_code: Some(code),
                ..match code {
                    0 => Report::new(Outcome::Succeeded, ""),
                    1 => Report::new(Outcome::Failed, "exited with code 1; last output: no game"),
                    code => Report::new(Outcome::Failed, format!("exited with code {code}")),
                }
            };
            let completion = Box::pin(async move { report });
            return Ok(Running {
                pid_later: None,
                pid: None,
                completion,
                stop: Arc::new(|| {}),
            });
        }
        if attempt_number == 0 {
            // A sensor poll.
            self.sensor_polls.lock().unwrap().push(task.clone());
            let outcome = self
                .sensor_scripts
                .lock()
                .unwrap()
                .get_mut(&task)
                .and_then(VecDeque::pop_front)
                .unwrap_or(Outcome::Succeeded);
            let completion = Box::pin(async move { Report::new(outcome, "sensor") });
            return Ok(Running {
                pid_later: None,
                pid: None,
                completion,
                stop: Arc::new(|| {}),
            });
        }
        let attempt = attempt_number;
        self.launches
            .lock()
            .unwrap()
            .push((task.clone(), attempt, launch.env.clone()));
        let outcome = self
            .scripts
            .lock()
            .unwrap()
            .get_mut(&task)
            .and_then(VecDeque::pop_front)
            .unwrap_or(Outcome::Succeeded);
        let items = self.items.lock().unwrap().get(&task).cloned();
        let heal = self
            .heals
            .lock()
            .unwrap()
            .get_mut(&task)
            .and_then(VecDeque::pop_front)
            .unwrap_or_default();
        let hold = self.hold.lock().unwrap().contains(&task);
        let pinned = self.pinned.clone();
        let held_task = task.clone();
        let stopped = Arc::new(tokio::sync::Notify::new());
        let release = self.release.clone();
        let (now, max) = (self.running_now.clone(), self.running_max.clone());
        {
            let mut now = now.lock().unwrap();
            *now += 1;
            let mut max = max.lock().unwrap();
            *max = (*max).max(*now);
        }
        let stop_signal = stopped.clone();
        let completion = Box::pin(async move {
            let outcome = if hold {
                // `release` lets every held task go but the pinned ones, so a test can let one
                // held task go and keep the others.
                loop {
                    tokio::select! {
                        _ = stop_signal.notified() => break Outcome::Cancelled,
                        _ = release.notified() => {
                            if !pinned.lock().unwrap().contains(&held_task) {
                                break outcome;
                            }
                        }
                    }
                }
            } else {
                tokio::task::yield_now().await;
                outcome
            };
            *now.lock().unwrap() -= 1;
            Report {
                outcome,
                exit_code: Some(0),
                rows: Some(1),
                metrics: None,
                message: None,
                retry_after: None,
                items,
                heal,
            }
        });
        Ok(Running {
            pid_later: None,
            pid: None,
            completion,
            stop: Arc::new(move || stopped.notify_one()),
        })
    }

    fn adopt(&self, _dir: PathBuf, _pid: Option<u32>) -> Adopted {
        match *self.adoption.lock().unwrap() {
            Some(outcome) => {
                Adopted::Finished(Report::new(outcome, "finished while keel was down"))
            }
            None => Adopted::Gone("keel stopped before the attempt could finish".into()),
        }
    }
}

fn task(name: &str, phase: &str, after: &[&str], attempts: u32) -> TaskSpec {
    TaskSpec {
        name: name.into(),
        phase: phase.into(),
        command: vec!["run".into(), "{task}".into(), "{date}".into()],
        http: None,
        after: after.iter().map(|name| name.to_string()).collect(),
        timeout: Duration::from_secs(60),
        retries: RetryPolicy {
            attempts,
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            jitter: Jitter::Full,
        },
        heartbeat: None,
        deadline: Duration::from_secs(30),
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

fn pipeline(tasks: Vec<TaskSpec>, concurrency: u32) -> PipelineSpec {
    let mut phases: Vec<String> = tasks.iter().map(|task| task.phase.clone()).collect();
    phases.dedup();
    PipelineSpec {
        name: "test".into(),
        timezone: "UTC".into(),
        partition: PartitionKind::Date,
        state: None,
        concurrency,
        phases: phases
            .iter()
            .enumerate()
            .map(|(index, name)| PhaseSpec {
                name: name.clone(),
                after: if index == 0 {
                    vec![]
                } else {
                    vec![phases[index - 1].clone()]
                },
                gate: None,
                checks: Vec::new(),
            })
            .collect(),
        tasks,
        resources: vec![],
        schedule: None,
        max_active_partitions: None,
        passes: Vec::new(),
        alerts: None,
        secrets: None,
        smoke: Vec::new(),
        slos: Vec::new(),
        heal_budget: keel_model::DEFAULT_HEAL_BUDGET,
    }
}

struct Harness {
    store: SqliteStore,
    executor: FakeExecutor,
    clock: ManualClock,
    _dir: tempfile::TempDir,
}

impl Harness {
    fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        Harness {
            store: SqliteStore::open(&dir.path().join("state.db")).unwrap(),
            executor: FakeExecutor::default(),
            clock: ManualClock::new(1_000_000),
            _dir: dir,
        }
    }

    fn engine(&self, spec: PipelineSpec) -> Engine<SqliteStore, FakeExecutor, ManualClock> {
        Engine::new(
            self.store.clone(),
            self.executor.clone(),
            self.clock.clone(),
            Box::new(SplitMix64::new(7)),
            spec,
            EngineConfig {
                owner: "test-owner".into(),
                attempts_dir: self._dir.path().join("attempts"),
                kill_grace: Duration::from_millis(10),
                log_cap: 1024,
                lease_ttl: Duration::from_secs(60),
                poll_interval: Duration::from_millis(20),
                extra_env: vec![],
                launch_context: Default::default(),
                shutdown_grace: Duration::from_secs(30),
            },
        )
    }
}

async fn run_partition(
    engine: &mut Engine<SqliteStore, FakeExecutor, ManualClock>,
    partition: &str,
) -> RunState {
    let prepared = engine
        .prepare(&RunRequest {
            partitions: vec![partition.into()],
            ..RunRequest::default()
        })
        .await
        .unwrap();
    let run = match prepared[0] {
        Prepared::Created(run) | Prepared::Resumed(run) => run,
        Prepared::AlreadyFinished(ref record) => return record.state,
    };
    let summaries = engine
        .execute(&[run], keel_engine::Shutdown::never())
        .await
        .unwrap();
    summaries[0].state
}

/// Leaves a live attempt of `task` behind, as a Keel that claimed it and then died would.
async fn claim_as_a_dead_keel(
    harness: &Harness,
    run: keel_model::RunId,
    task: &str,
) -> keel_store::AttemptRecord {
    harness
        .store
        .claim_attempt(keel_store::ClaimAttempt {
            run,
            task: task.into(),
            owner: "dead-keel".into(),
            dir: "/nonexistent".into(),
            version: "v".into(),
            task_version: None,
            lease_expires_at: 0,
            at: 1,
        })
        .await
        .unwrap()
}

/// Creates today's test run and returns its id.
async fn created_run(
    engine: &mut Engine<SqliteStore, FakeExecutor, ManualClock>,
) -> keel_model::RunId {
    match engine
        .prepare(&RunRequest {
            partitions: vec!["2026-01-18".into()],
            ..Default::default()
        })
        .await
        .unwrap()[0]
    {
        Prepared::Created(run) => run,
        ref other => panic!("{other:?}"),
    }
}

async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    for _ in 0..500 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn tasks_run_in_dependency_order_with_the_contract_environment() {
    let harness = Harness::new();
    let spec = pipeline(
        vec![
            task("scrape", "a", &[], 3),
            task("load", "b", &[], 3),
            task("report", "b", &["load"], 3),
        ],
        8,
    );
    let mut engine = harness.engine(spec);
    assert_eq!(
        run_partition(&mut engine, "2026-01-18").await,
        RunState::Succeeded
    );
    assert_eq!(
        harness.executor.launches(),
        vec![
            ("scrape".into(), 1),
            ("load".into(), 1),
            ("report".into(), 1)
        ]
    );
    let env: HashMap<String, String> = harness.executor.launches.lock().unwrap()[0]
        .2
        .iter()
        .cloned()
        .collect();
    assert_eq!(env["KEEL_PIPELINE"], "test");
    assert_eq!(env["KEEL_PARTITION"], "2026-01-18");
    assert_eq!(env["KEEL_IDEMPOTENCY_KEY"], "test:scrape:2026-01-18");
    assert!(env["KEEL_RESULT"].ends_with("scrape.1/result.json"));
    assert!(env["KEEL_HEARTBEAT"].ends_with("scrape.1/heartbeat"));
    let traceparent = &env["TRACEPARENT"];
    assert!(
        traceparent.starts_with("00-") && traceparent.ends_with("-01") && traceparent.len() == 55,
        "{traceparent}"
    );
    // Running again for a finished partition does nothing.
    assert_eq!(
        run_partition(&mut engine, "2026-01-18").await,
        RunState::Succeeded
    );
    assert_eq!(harness.executor.launches().len(), 3);
}

/// The attempts admitted in one turn reach the executor together, in one `launch_many` (a work
/// queue queues them in one statement), and each is started.
#[tokio::test]
async fn the_attempts_admitted_in_one_turn_are_launched_together() {
    let harness = Harness::new();
    let spec = pipeline(
        vec![
            task("north", "a", &[], 1),
            task("south", "a", &[], 1),
            task("east", "a", &[], 1),
            task("report", "b", &[], 1),
        ],
        8,
    );
    let mut engine = harness.engine(spec);
    assert_eq!(
        run_partition(&mut engine, "2026-01-18").await,
        RunState::Succeeded
    );
    let batches = harness.executor.batches.lock().unwrap().clone();
    assert_eq!(
        batches,
        vec![vec!["north", "south", "east"], vec!["report"]],
        "one call per turn of admissions"
    );
    assert_eq!(harness.executor.launches().len(), 4);
}

/// Regression: the engine recorded `started_at` only for attempts whose executor reported a
/// pid, and launches through the attempt host reported none, so attempts had no start time.
#[tokio::test]
async fn every_started_attempt_gets_its_start_time_even_without_a_pid() {
    let harness = Harness::new();
    let spec = pipeline(
        vec![task("scrape", "a", &[], 1), task("load", "b", &[], 1)],
        8,
    );
    let mut engine = harness.engine(spec);
    assert_eq!(
        run_partition(&mut engine, "2026-01-18").await,
        RunState::Succeeded
    );
    let run = harness
        .store
        .latest_run("test", "2026-01-18")
        .await
        .unwrap()
        .unwrap();
    let attempts = harness.store.attempts(run.id).await.unwrap();
    assert_eq!(attempts.len(), 2);
    for attempt in attempts {
        assert_eq!(
            attempt.started_at,
            Some(attempt.claimed_at),
            "{} started on the manual clock",
            attempt.task
        );
        assert_eq!(attempt.pid, None, "the fake executor knows no pid");
    }
}

#[tokio::test]
async fn a_failure_is_retried_only_after_its_backoff_on_the_manual_clock() {
    let harness = Harness::new();
    harness
        .executor
        .script("flaky", &[Outcome::Failed, Outcome::TimedOut]);
    let mut engine = harness.engine(pipeline(vec![task("flaky", "a", &[], 4)], 8));
    let run = created_run(&mut engine).await;
    let store = harness.store.clone();
    let handle = tokio::spawn(async move {
        engine
            .execute(&[run], keel_engine::Shutdown::never())
            .await
            .unwrap()
    });
    let start = harness.clock.now_for_test();
    for (retry, charged) in [(1u32, 1u32), (2, 2)] {
        let launches = harness.executor.clone();
        eventually("the failed attempt to be recorded", || {
            launches.launches().len() == retry as usize
        })
        .await;
        let mut waiting = None;
        for _ in 0..200 {
            let task = store.task_runs(run).await.unwrap().remove(0);
            if task.state == TaskState::Waiting && task.charged == charged {
                waiting = Some(task);
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let task = waiting.expect("the task waits for its retry");
        let not_before = task.not_before.unwrap();
        let now = harness.clock.now_for_test();
        let ceiling = 1000 * (1 << (retry - 1));
        assert!(
            not_before >= now && not_before <= now + ceiling,
            "retry {retry}: {not_before} not in [{now}, {}]",
            now + ceiling
        );
        // One millisecond early, nothing starts.
        harness.clock.set(not_before - 1);
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!(
            harness.executor.launches().len(),
            retry as usize,
            "retry {retry} started before its backoff"
        );
        harness.clock.set(not_before);
    }
    let summaries = handle.await.unwrap();
    assert_eq!(summaries[0].state, RunState::Succeeded);
    assert_eq!(harness.executor.launches().len(), 3);
    assert!(harness.clock.now_for_test() >= start);
    let attempts = harness.store.attempts(run).await.unwrap();
    let outcomes: Vec<Outcome> = attempts
        .iter()
        .map(|attempt| attempt.outcome.unwrap())
        .collect();
    assert_eq!(
        outcomes,
        [Outcome::Failed, Outcome::TimedOut, Outcome::Succeeded]
    );
    assert!(
        attempts[1].not_before.is_some(),
        "an attempt records the not_before it waited for"
    );
}

trait NowForTest {
    fn now_for_test(&self) -> i64;
}

impl NowForTest for ManualClock {
    fn now_for_test(&self) -> i64 {
        keel_engine::Clock::now(self)
    }
}

#[tokio::test]
async fn retries_stop_at_the_policy_and_downstream_becomes_upstream_failed() {
    let harness = Harness::new();
    harness
        .executor
        .script("flaky", &[Outcome::Failed, Outcome::Failed]);
    harness
        .executor
        .script("broken", &[Outcome::FailedPermanent]);
    let spec = pipeline(
        vec![
            task("flaky", "a", &[], 2),
            task("broken", "a", &[], 5),
            task("fine", "a", &[], 2),
            task("after_flaky", "b", &[], 2),
            task("last", "c", &[], 2),
        ],
        8,
    );
    let mut engine = harness.engine(spec);
    let run = created_run(&mut engine).await;
    let clock = harness.clock.clone();
    let handle = tokio::spawn(async move {
        engine
            .execute(&[run], keel_engine::Shutdown::never())
            .await
            .unwrap()
    });
    // Push the clock past any backoff until the run ends.
    while !handle.is_finished() {
        clock.advance(120_000);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(handle.await.unwrap()[0].state, RunState::Failed);
    let tasks: HashMap<String, Option<Outcome>> = harness
        .store
        .task_runs(run)
        .await
        .unwrap()
        .into_iter()
        .map(|task| (task.task, task.outcome))
        .collect();
    assert_eq!(tasks["flaky"], Some(Outcome::Failed));
    assert_eq!(tasks["broken"], Some(Outcome::FailedPermanent));
    assert_eq!(tasks["fine"], Some(Outcome::Succeeded));
    assert_eq!(tasks["after_flaky"], Some(Outcome::UpstreamFailed));
    assert_eq!(tasks["last"], Some(Outcome::UpstreamFailed));
    let launches = harness.executor.launches();
    assert_eq!(
        launches.iter().filter(|(task, _)| task == "flaky").count(),
        2,
        "two attempts in all"
    );
    assert_eq!(
        launches.iter().filter(|(task, _)| task == "broken").count(),
        1,
        "permanent failures are never retried"
    );
    assert!(
        !launches
            .iter()
            .any(|(task, _)| task == "after_flaky" || task == "last")
    );
    let run_record = harness.store.run(run).await.unwrap();
    assert!(run_record.message.unwrap().contains("did not complete"));
}

#[tokio::test]
async fn not_ready_is_requeued_without_using_attempts_until_the_deadline() {
    let harness = Harness::new();
    harness.executor.script("sensor", &[Outcome::NotReady; 50]);
    let mut engine = harness.engine(pipeline(vec![task("sensor", "a", &[], 1)], 8));
    let run = created_run(&mut engine).await;
    let clock = harness.clock.clone();
    let handle = tokio::spawn(async move {
        engine
            .execute(&[run], keel_engine::Shutdown::never())
            .await
            .unwrap()
    });
    while !handle.is_finished() {
        clock.advance(2_000);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(handle.await.unwrap()[0].state, RunState::Failed);
    let task = harness.store.task_runs(run).await.unwrap().remove(0);
    assert_eq!(task.outcome, Some(Outcome::NotReady));
    assert_eq!(task.charged, 0, "not ready never uses a retry attempt");
    assert!(
        task.attempts > 1,
        "a task with attempts = 1 was still checked again: {}",
        task.attempts
    );
    assert!(task.message.unwrap().contains("deadline passed"));
}

#[tokio::test]
async fn the_global_concurrency_cap_holds() {
    let harness = Harness::new();
    let tasks: Vec<TaskSpec> = (0..12)
        .map(|index| task(&format!("t{index}"), "a", &[], 1))
        .collect();
    *harness.executor.hold.lock().unwrap() = tasks.iter().map(|task| task.name.clone()).collect();
    let mut engine = harness.engine(pipeline(tasks, 3));
    let run = created_run(&mut engine).await;
    let handle = tokio::spawn(async move {
        engine
            .execute(&[run], keel_engine::Shutdown::never())
            .await
            .unwrap()
    });
    while !handle.is_finished() {
        tokio::time::sleep(Duration::from_millis(5)).await;
        harness.executor.release.notify_waiters();
    }
    assert_eq!(handle.await.unwrap()[0].state, RunState::Succeeded);
    assert_eq!(*harness.executor.running_max.lock().unwrap(), 3);
    assert_eq!(harness.executor.launches().len(), 12);
}

#[tokio::test]
async fn an_attempt_left_live_by_a_dead_keel_is_lost_and_retried_uncharged() {
    let harness = Harness::new();
    let spec = pipeline(vec![task("a", "a", &[], 1), task("b", "b", &[], 1)], 8);
    let mut engine = harness.engine(spec.clone());
    let run = created_run(&mut engine).await;
    // A previous Keel claimed "a" and died.
    claim_as_a_dead_keel(&harness, run, "a").await;
    let mut engine = harness.engine(spec);
    assert_eq!(
        run_partition(&mut engine, "2026-01-18").await,
        RunState::Succeeded
    );
    let attempts = harness.store.attempts(run).await.unwrap();
    let history: Vec<(String, Outcome)> = attempts
        .iter()
        .map(|a| (a.task.clone(), a.outcome.unwrap()))
        .collect();
    assert_eq!(
        history,
        [
            ("a".into(), Outcome::Lost),
            ("a".into(), Outcome::Succeeded),
            ("b".into(), Outcome::Succeeded)
        ]
    );
    assert!(attempts[1].lease_epoch > attempts[0].lease_epoch);
    let events = harness.store.events(run).await.unwrap();
    assert!(events.iter().any(|event| event.kind == "lease_taken_over"));
}

#[tokio::test]
async fn an_attempt_that_finished_while_keel_was_down_is_recorded_not_rerun() {
    let harness = Harness::new();
    *harness.executor.adoption.lock().unwrap() = Some(Outcome::Succeeded);
    let spec = pipeline(vec![task("a", "a", &[], 1), task("b", "b", &[], 1)], 8);
    let mut engine = harness.engine(spec.clone());
    let run = created_run(&mut engine).await;
    claim_as_a_dead_keel(&harness, run, "a").await;
    let mut engine = harness.engine(spec);
    assert_eq!(
        run_partition(&mut engine, "2026-01-18").await,
        RunState::Succeeded
    );
    assert_eq!(
        harness.executor.launches(),
        vec![("b".into(), 1)],
        "a was not run again"
    );
}

#[tokio::test]
async fn cancel_stops_running_attempts_and_settles_the_rest() {
    let harness = Harness::new();
    *harness.executor.hold.lock().unwrap() = vec!["slow".into()];
    let spec = pipeline(
        vec![task("slow", "a", &[], 3), task("next", "b", &[], 3)],
        8,
    );
    let mut engine = harness.engine(spec);
    let run = created_run(&mut engine).await;
    let handle = tokio::spawn(async move {
        engine
            .execute(&[run], keel_engine::Shutdown::never())
            .await
            .unwrap()
    });
    let executor = harness.executor.clone();
    eventually("slow to start", || executor.launches().len() == 1).await;
    harness.store.request_cancel(run, 5).await.unwrap();
    assert_eq!(handle.await.unwrap()[0].state, RunState::Cancelled);
    let tasks: Vec<Option<Outcome>> = harness
        .store
        .task_runs(run)
        .await
        .unwrap()
        .into_iter()
        .map(|task| task.outcome)
        .collect();
    assert_eq!(tasks, [Some(Outcome::Cancelled), Some(Outcome::Cancelled)]);
}

/// Starts `spec` for one partition in the background with a shutdown trigger.
async fn start_in_background(
    harness: &Harness,
    spec: PipelineSpec,
) -> (
    keel_model::RunId,
    keel_engine::ShutdownTrigger,
    tokio::task::JoinHandle<Vec<keel_engine::RunSummary>>,
) {
    let mut engine = harness.engine(spec);
    let run = created_run(&mut engine).await;
    let (trigger, shutdown) = keel_engine::Shutdown::channel();
    let handle = tokio::spawn(async move { engine.execute(&[run], shutdown).await.unwrap() });
    (run, trigger, handle)
}

#[tokio::test]
async fn a_shutdown_now_leaves_interrupted_tasks_to_be_resumed() {
    let harness = Harness::new();
    *harness.executor.hold.lock().unwrap() = vec!["slow".into()];
    let spec = pipeline(vec![task("slow", "a", &[], 1)], 8);
    let (run, trigger, handle) = start_in_background(&harness, spec.clone()).await;
    let executor = harness.executor.clone();
    eventually("slow to start", || executor.launches().len() == 1).await;
    trigger.now();
    assert_eq!(handle.await.unwrap()[0].state, RunState::Running);
    let task = harness.store.task_runs(run).await.unwrap().remove(0);
    assert_eq!((task.state, task.charged), (TaskState::Pending, 0));
    harness.executor.hold.lock().unwrap().clear();
    let mut engine = harness.engine(spec);
    assert_eq!(
        run_partition(&mut engine, "2026-01-18").await,
        RunState::Succeeded
    );
}

#[tokio::test]
async fn a_drain_lets_running_attempts_finish_within_the_grace_and_starts_nothing_new() {
    let harness = Harness::new();
    *harness.executor.hold.lock().unwrap() = vec!["slow".into()];
    let spec = pipeline(
        vec![task("slow", "a", &[], 1), task("next", "b", &[], 1)],
        8,
    );
    let (run, trigger, handle) = start_in_background(&harness, spec.clone()).await;
    let executor = harness.executor.clone();
    eventually("slow to start", || executor.launches().len() == 1).await;
    trigger.drain();
    // Well inside the 30 s grace the attempt is left alone, and it finishes normally.
    harness.clock.advance(29_000);
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(
        !handle.is_finished(),
        "the drain stopped a running attempt before its grace ran out"
    );
    harness.executor.release.notify_waiters();
    assert_eq!(handle.await.unwrap()[0].state, RunState::Running);
    let tasks = harness.store.task_runs(run).await.unwrap();
    assert_eq!(
        tasks[0].outcome,
        Some(Outcome::Succeeded),
        "the running attempt finished"
    );
    assert_eq!(
        tasks[1].state,
        TaskState::Pending,
        "nothing new started during the drain"
    );
    assert_eq!(harness.executor.launches().len(), 1);
}

#[tokio::test]
async fn a_drain_stops_what_still_runs_when_the_grace_runs_out() {
    let harness = Harness::new();
    *harness.executor.hold.lock().unwrap() = vec!["slow".into()];
    let spec = pipeline(vec![task("slow", "a", &[], 1)], 8);
    let (run, trigger, handle) = start_in_background(&harness, spec).await;
    let executor = harness.executor.clone();
    eventually("slow to start", || executor.launches().len() == 1).await;
    trigger.drain();
    tokio::time::sleep(Duration::from_millis(20)).await;
    harness.clock.advance(30_000);
    assert_eq!(handle.await.unwrap()[0].state, RunState::Running);
    let task = harness.store.task_runs(run).await.unwrap().remove(0);
    assert_eq!(
        (task.state, task.charged),
        (TaskState::Pending, 0),
        "stopped at the end of the grace, to be resumed"
    );
}

#[tokio::test]
async fn retry_reruns_the_task_and_everything_downstream() {
    let harness = Harness::new();
    harness.executor.script("b", &[Outcome::FailedPermanent]);
    let spec = pipeline(
        vec![
            task("a", "a", &[], 1),
            task("b", "a", &[], 1),
            task("c", "b", &[], 1),
        ],
        8,
    );
    let mut engine = harness.engine(spec);
    assert_eq!(
        run_partition(&mut engine, "2026-01-18").await,
        RunState::Failed
    );
    let run = engine.retry("2026-01-18", &["b".into()]).await.unwrap();
    assert_eq!(
        run_partition(&mut engine, "2026-01-18").await,
        RunState::Succeeded
    );
    let launched: Vec<String> = harness
        .executor
        .launches()
        .into_iter()
        .map(|(task, _)| task)
        .collect();
    assert_eq!(launched, ["a", "b", "b", "c"]);
    assert!(
        harness
            .store
            .events(run)
            .await
            .unwrap()
            .iter()
            .any(|event| event.detail.contains("downstream of retried b"))
    );
    let unknown = engine
        .retry("2026-01-18", &["bb".into()])
        .await
        .unwrap_err();
    assert_eq!(
        unknown.to_string(),
        "unknown task \"bb\" in pipeline \"test\" (its tasks: a, b, c); did you mean \"b\"?"
    );
}

fn gated_pipeline(grace_ms: u64) -> PipelineSpec {
    let mut spec = pipeline(
        vec![
            task("load", "raw", &[], 1),
            task("a1", "analytics", &[], 1),
            task("a2", "analytics", &[], 1),
            task("a3", "analytics", &[], 1),
            task("a4", "analytics", &[], 1),
            task("a5", "analytics", &[], 1),
            task("features", "precompute", &[], 1),
            task("predict", "predictions", &[], 1),
        ],
        8,
    );
    spec.phases[1].gate = Some(keel_model::GateSpec {
        required: vec!["a1".into(), "a2".into()],
        min_share: 0.6,
        grace: Duration::from_millis(grace_ms),
        tiers: Vec::new(),
    });
    spec
}

async fn outcomes(harness: &Harness, run: keel_model::RunId) -> HashMap<String, Option<Outcome>> {
    harness
        .store
        .task_runs(run)
        .await
        .unwrap()
        .into_iter()
        .map(|task| (task.task, task.outcome))
        .collect()
}

#[tokio::test]
async fn a_gate_lets_downstream_proceed_without_failed_tasks_and_a_retry_completes_the_run() {
    let harness = Harness::new();
    harness.executor.script("a4", &[Outcome::FailedPermanent]);
    harness.executor.script("a5", &[Outcome::FailedPermanent]);
    let mut engine = harness.engine(gated_pipeline(30 * 60_000));
    assert_eq!(
        run_partition(&mut engine, "2026-01-18").await,
        RunState::Degraded
    );
    let run = harness
        .store
        .latest_run("test", "2026-01-18")
        .await
        .unwrap()
        .unwrap();
    assert!(
        run.message
            .as_deref()
            .unwrap()
            .contains("2 missing: a4, a5"),
        "{:?}",
        run.message
    );
    let before = outcomes(&harness, run.id).await;
    assert_eq!(before["features"], Some(Outcome::Succeeded));
    assert_eq!(before["predict"], Some(Outcome::Succeeded));
    assert_eq!(before["a4"], Some(Outcome::FailedPermanent));
    let events = harness.store.events(run.id).await.unwrap();
    assert!(
        events
            .iter()
            .any(|event| event.kind == "gate_opened" && event.detail.contains("without a4, a5")),
        "the event log records which tasks were missing"
    );
    // The cause is fixed (the scripts are used up, so they succeed now): retry the missing ones.
    engine
        .retry("2026-01-18", &["a4".into(), "a5".into()])
        .await
        .unwrap();
    assert_eq!(
        run_partition(&mut engine, "2026-01-18").await,
        RunState::Succeeded
    );
    let launched: Vec<String> = harness
        .executor
        .launches()
        .into_iter()
        .map(|(task, _)| task)
        .collect();
    assert_eq!(
        launched.iter().filter(|task| *task == "features").count(),
        2,
        "downstream ran again: {launched:?}"
    );
    assert_eq!(launched.iter().filter(|task| *task == "predict").count(), 2);
    assert_eq!(
        launched.iter().filter(|task| *task == "a1").count(),
        1,
        "complete tasks did not run again"
    );
}

#[tokio::test]
async fn a_gate_waits_for_the_grace_then_reconciles_when_the_late_task_lands() {
    let harness = Harness::new();
    *harness.executor.hold.lock().unwrap() = vec!["a5".into()];
    let (run, _trigger, handle) = start_in_background(&harness, gated_pipeline(60_000)).await;
    let executor = harness.executor.clone();
    eventually("the analytics tasks to run", || {
        executor.launches().len() == 6
    })
    .await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    // Sufficient, but inside the grace period downstream waits for the late task.
    harness.clock.advance(59_000);
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(
        !harness
            .executor
            .launches()
            .iter()
            .any(|(task, _)| task == "features"),
        "started before the grace ran out"
    );
    harness.clock.advance(1_000);
    eventually("features to start without a5", || {
        executor
            .launches()
            .iter()
            .any(|(task, _)| task == "predict")
    })
    .await;
    // The late task lands: everything downstream of it runs again, and the run succeeds.
    harness.executor.hold.lock().unwrap().clear();
    harness.executor.release.notify_waiters();
    assert_eq!(handle.await.unwrap()[0].state, RunState::Succeeded);
    let launched: Vec<String> = harness
        .executor
        .launches()
        .into_iter()
        .map(|(task, _)| task)
        .collect();
    assert_eq!(
        launched.iter().filter(|task| *task == "features").count(),
        2,
        "{launched:?}"
    );
    assert_eq!(
        launched.iter().filter(|task| *task == "predict").count(),
        2,
        "{launched:?}"
    );
    let events = harness.store.events(run).await.unwrap();
    assert!(
        events
            .iter()
            .any(|event| event.detail.contains("landed late")),
        "why it ran again is logged"
    );
}

#[tokio::test]
async fn a_gate_whose_required_task_fails_fails_downstream() {
    let harness = Harness::new();
    harness.executor.script("a1", &[Outcome::FailedPermanent]);
    let mut engine = harness.engine(gated_pipeline(1_000));
    assert_eq!(
        run_partition(&mut engine, "2026-01-18").await,
        RunState::Failed
    );
    let run = harness
        .store
        .latest_run("test", "2026-01-18")
        .await
        .unwrap()
        .unwrap();
    let after = outcomes(&harness, run.id).await;
    assert_eq!(after["features"], Some(Outcome::UpstreamFailed));
    assert_eq!(after["predict"], Some(Outcome::UpstreamFailed));
    assert_eq!(after["a2"], Some(Outcome::Succeeded));
}

fn sensed(mut spec: TaskSpec, every_ms: u64, max_ms: u64, deadline_ms: u64) -> TaskSpec {
    spec.wait_for = Some(keel_model::SensorSpec {
        command: vec!["ready".into(), "{date}".into()],
        http: None,
        every: Duration::from_millis(every_ms),
        max: Duration::from_millis(max_ms),
        deadline: Duration::from_millis(deadline_ms),
    });
    spec
}

#[tokio::test]
async fn a_sensor_holds_the_task_until_ready_with_growing_jittered_polls_and_no_failure_counted() {
    let harness = Harness::new();
    harness
        .executor
        .sensor_scripts
        .lock()
        .unwrap()
        .insert("props".into(), [Outcome::NotReady; 4].into_iter().collect());
    let spec = pipeline(
        vec![
            sensed(task("props", "a", &[], 1), 1_000, 4_000, 3_600_000),
            task("after", "b", &[], 1),
        ],
        8,
    );
    let (run, _trigger, handle) = start_in_background(&harness, spec).await;
    while !handle.is_finished() {
        harness.clock.advance(500);
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    assert_eq!(handle.await.unwrap()[0].state, RunState::Succeeded);
    assert_eq!(
        harness.executor.sensor_polls.lock().unwrap().len(),
        5,
        "4 not ready, then ready"
    );
    let task = harness.store.task_runs(run).await.unwrap().remove(0);
    assert_eq!(
        (task.attempts, task.charged),
        (1, 1),
        "one attempt, started only once the sensor was ready"
    );
    // Each wait was in the upper half of min(max, every × 2^(n-1)).
    let events = harness.store.events(run).await.unwrap();
    let polls: Vec<_> = events
        .iter()
        .filter(|event| event.kind == "sensor_polled")
        .collect();
    assert_eq!(polls.len(), 5);
    for (index, poll) in polls.iter().take(4).enumerate() {
        let next: i64 = poll.detail.rsplit(' ').next().unwrap().parse().unwrap();
        let ceiling = (1_000i64 << index).min(4_000);
        let waited = next - poll.at;
        assert!(
            waited >= ceiling / 2 && waited <= ceiling,
            "poll {index}: waited {waited} ms, ceiling {ceiling}"
        );
    }
    assert_eq!(polls[4].detail, "ready");
}

#[tokio::test]
async fn a_sensor_that_never_reports_ready_ends_not_ready_at_its_deadline() {
    let harness = Harness::new();
    harness.executor.sensor_scripts.lock().unwrap().insert(
        "props".into(),
        [Outcome::NotReady; 1000].into_iter().collect(),
    );
    let spec = pipeline(
        vec![
            sensed(task("props", "a", &[], 3), 1_000, 2_000, 20_000),
            task("after", "b", &[], 1),
        ],
        8,
    );
    let (run, _trigger, handle) = start_in_background(&harness, spec).await;
    while !handle.is_finished() {
        harness.clock.advance(1_000);
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    assert_eq!(handle.await.unwrap()[0].state, RunState::Failed);
    let tasks = harness.store.task_runs(run).await.unwrap();
    assert_eq!(tasks[0].outcome, Some(Outcome::NotReady));
    assert_eq!(tasks[0].attempts, 0, "the task never started");
    assert!(
        tasks[0]
            .message
            .as_deref()
            .unwrap()
            .contains("never reported ready"),
        "{:?}",
        tasks[0].message
    );
    assert_eq!(tasks[1].outcome, Some(Outcome::UpstreamFailed));
    assert!(harness.executor.launches().is_empty());
}

fn with_resource(mut spec: PipelineSpec, resource: keel_model::ResourceSpec) -> PipelineSpec {
    for task in &mut spec.tasks {
        task.uses = vec![resource.name.clone()];
    }
    spec.resources = vec![resource];
    spec
}

fn resource(name: &str) -> keel_model::ResourceSpec {
    keel_model::ResourceSpec {
        name: name.into(),
        rate: None,
        concurrency: None,
        breaker: None,
        retry_budget: None,
        ready: None,
        tokens: keel_model::TokenUse::Attempt,
        quota: None,
    }
}

fn independent(count: usize, attempts: u32) -> Vec<TaskSpec> {
    (0..count)
        .map(|index| task(&format!("t{index:02}"), "a", &[], attempts))
        .collect()
}

#[tokio::test]
async fn a_rate_limited_resource_never_starts_more_than_its_rate_in_any_window() {
    let harness = Harness::new();
    let mut feed = resource("feed");
    feed.rate = Some(keel_model::Rate {
        tokens: 2,
        per: Duration::from_secs(1),
    });
    let spec = with_resource(pipeline(independent(10, 1), 8), feed);
    let (run, _trigger, handle) = start_in_background(&harness, spec).await;
    while !handle.is_finished() {
        harness.clock.advance(100);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(handle.await.unwrap()[0].state, RunState::Succeeded);
    let starts: Vec<i64> = harness
        .store
        .attempts(run)
        .await
        .unwrap()
        .iter()
        .map(|attempt| attempt.claimed_at)
        .collect();
    assert_eq!(starts.len(), 10);
    for start in &starts {
        let in_window = starts
            .iter()
            .filter(|other| **other >= *start && **other < start + 1_000)
            .count();
        assert!(
            in_window <= 2,
            "{in_window} starts within 1 s of {start}: {starts:?}"
        );
    }
    let span = starts.iter().max().unwrap() - starts.iter().min().unwrap();
    assert!(
        span >= 4_000,
        "10 starts at 2/s span at least 4 s, got {span} ms"
    );
}

#[tokio::test]
async fn a_bulkhead_caps_attempts_on_its_resource_below_the_global_cap() {
    let harness = Harness::new();
    let tasks = independent(6, 1);
    *harness.executor.hold.lock().unwrap() = tasks.iter().map(|task| task.name.clone()).collect();
    let mut database = resource("database");
    database.concurrency = Some(2);
    let spec = with_resource(pipeline(tasks, 8), database);
    let (_run, _trigger, handle) = start_in_background(&harness, spec).await;
    while !handle.is_finished() {
        tokio::time::sleep(Duration::from_millis(5)).await;
        harness.executor.release.notify_waiters();
    }
    assert_eq!(handle.await.unwrap()[0].state, RunState::Succeeded);
    assert_eq!(*harness.executor.running_max.lock().unwrap(), 2);
}

#[tokio::test]
async fn an_open_breaker_holds_tasks_without_using_attempts_then_a_probe_closes_it() {
    let harness = Harness::new();
    let tasks = independent(8, 3);
    for task in &tasks {
        harness.executor.script(&task.name, &[Outcome::Failed]);
    }
    let mut feed = resource("feed");
    feed.concurrency = Some(1);
    feed.breaker = Some(keel_model::BreakerSpec {
        failures: 3,
        ratio: None,
        window: 20,
        cooldown: Duration::from_secs(10),
        max_open: Duration::from_secs(1800),
    });
    let spec = with_resource(pipeline(tasks, 8), feed);
    let (run, _trigger, handle) = start_in_background(&harness, spec).await;
    let executor = harness.executor.clone();
    eventually("three failures to open the breaker", || {
        executor.launches().len() == 3
    })
    .await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    // Open: nothing starts during the cooldown, however long the retries' backoff is.
    harness.clock.advance(9_000);
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(
        harness.executor.launches().len(),
        3,
        "an attempt started while the breaker was open"
    );
    let states = harness.store.resource_states("test").await.unwrap();
    assert_eq!(states[0].state, "open");
    while !handle.is_finished() {
        harness.clock.advance(1_000);
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    assert_eq!(
        handle.await.unwrap()[0].state,
        RunState::Succeeded,
        "after the probe closed it, every task succeeded"
    );
    assert_eq!(
        harness.store.resource_states("test").await.unwrap()[0].state,
        "closed"
    );
    let tasks = harness.store.task_runs(run).await.unwrap();
    assert!(
        tasks
            .iter()
            .all(|task| task.outcome == Some(Outcome::Succeeded))
    );
    assert!(
        tasks.iter().all(|task| task.charged <= 2),
        "waiting for the breaker used up no attempts"
    );
}

#[tokio::test]
async fn a_dependency_that_stays_down_rotates_probes_and_ends_the_run_at_max_open() {
    // Regression: a failed probe used no attempt and the same task got every probe (attempt 61
    // of 4), the other tasks never got one, and the run hung until the tasks' deadline.
    let harness = Harness::new();
    let mut tasks = independent(4, 4);
    for task in &mut tasks {
        task.deadline = Duration::from_secs(6 * 3600);
        harness.executor.script(&task.name, &[Outcome::Failed; 200]);
    }
    let mut feed = resource("feed");
    feed.breaker = Some(keel_model::BreakerSpec {
        failures: 1,
        ratio: None,
        window: 20,
        cooldown: Duration::from_secs(10),
        max_open: Duration::from_secs(120),
    });
    let spec = with_resource(pipeline(tasks, 8), feed);
    let (run, _trigger, handle) = start_in_background(&harness, spec).await;
    let mut steps = 0;
    while !handle.is_finished() {
        steps += 1;
        assert!(steps < 5_000, "the run hung behind the open breaker");
        harness.clock.advance(1_000);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(handle.await.unwrap()[0].state, RunState::Failed);
    let tasks = harness.store.task_runs(run).await.unwrap();
    for task in &tasks {
        assert_eq!(task.outcome, Some(Outcome::Failed), "{task:?}");
        let message = task.message.as_deref().unwrap_or_default();
        assert!(
            message.contains("resource \"feed\"") && message.contains("stayed open"),
            "the message names the resource: {message}"
        );
    }
    let attempts: Vec<u32> = tasks.iter().map(|task| task.attempts).collect();
    let (least, most) = (
        *attempts.iter().min().unwrap(),
        *attempts.iter().max().unwrap(),
    );
    assert!(
        least >= 2 && most - least <= 1,
        "every task got its turn at the probe: attempts {attempts:?}"
    );
}

#[tokio::test]
async fn a_retry_budget_stops_a_retry_storm() {
    let harness = Harness::new();
    let tasks = independent(10, 5);
    for task in &tasks {
        harness.executor.script(&task.name, &[Outcome::Failed; 5]);
    }
    let mut feed = resource("feed");
    feed.retry_budget = Some(keel_model::RetryBudgetSpec {
        ratio: 0.2,
        window: Duration::from_secs(600),
        min: 1,
    });
    let spec = with_resource(pipeline(tasks, 8), feed);
    let (run, _trigger, handle) = start_in_background(&harness, spec).await;
    while !handle.is_finished() {
        harness.clock.advance(5_000);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(handle.await.unwrap()[0].state, RunState::Failed);
    let attempts = harness.store.attempts(run).await.unwrap().len();
    // 10 first attempts, and at most 1 + 20% of 10 retries.
    assert!(
        attempts <= 13,
        "{attempts} attempts: the budget allowed a retry storm"
    );
    let tasks = harness.store.task_runs(run).await.unwrap();
    assert!(tasks.iter().any(|task| {
        task.message
            .as_deref()
            .is_some_and(|message| message.contains("retry budget"))
    }));
}

#[tokio::test]
async fn a_failure_upstream_of_a_gated_phase_fails_the_gate_and_everything_after_it() {
    // Regression: upstream_failed tasks inside a gated phase did not re-judge the gate, so the
    // phases after it were only settled by the stuck-run fallback.
    let harness = Harness::new();
    harness.executor.script("load", &[Outcome::FailedPermanent]);
    let mut engine = harness.engine(gated_pipeline(60_000));
    assert_eq!(
        run_partition(&mut engine, "2026-01-18").await,
        RunState::Failed
    );
    let run = harness
        .store
        .latest_run("test", "2026-01-18")
        .await
        .unwrap()
        .unwrap();
    let tasks = harness.store.task_runs(run.id).await.unwrap();
    for task in tasks.iter().filter(|task| task.task != "load") {
        assert_eq!(task.outcome, Some(Outcome::UpstreamFailed), "{task:?}");
        assert!(
            !task.message.as_deref().unwrap_or("").contains("no path"),
            "settled by the fallback: {task:?}"
        );
    }
    let events = harness.store.events(run.id).await.unwrap();
    assert!(events.iter().any(|event| event.kind == "gate_failed"));
}

/// What `keel serve`'s metrics read from progress: with one slot, the second task's start
/// reports how long it waited since it was ready, each end how long its attempt ran, and the
/// ready queue's depth as it changes; all on the manual clock.
#[tokio::test]
async fn progress_reports_ready_waits_durations_and_queue_depth() {
    let harness = Harness::new();
    *harness.executor.hold.lock().unwrap() = vec!["first".into(), "second".into()];
    let spec = pipeline(
        vec![task("first", "a", &[], 1), task("second", "a", &[], 1)],
        1,
    );
    let mut engine = harness.engine(spec);
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    engine.observe(move |event| seen.lock().unwrap().push(event));
    let run = created_run(&mut engine).await;
    let handle = tokio::spawn(async move {
        engine
            .execute(&[run], keel_engine::Shutdown::never())
            .await
            .unwrap()
    });
    let executor = harness.executor.clone();
    eventually("the first start", || executor.launches().len() == 1).await;
    harness.clock.advance(5_000);
    while executor.launches().len() < 2 {
        executor.release.notify_waiters();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    harness.clock.advance(2_000);
    while !handle.is_finished() {
        executor.release.notify_waiters();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(handle.await.unwrap()[0].state, RunState::Succeeded);
    let events = events.lock().unwrap();
    let waits: Vec<(String, Option<i64>)> = events
        .iter()
        .filter_map(|event| match event {
            keel_engine::Progress::AttemptStarted {
                task, ready_wait, ..
            } => Some((task.clone(), *ready_wait)),
            _ => None,
        })
        .collect();
    let durations: Vec<(String, Option<i64>)> = events
        .iter()
        .filter_map(|event| match event {
            keel_engine::Progress::AttemptFinished {
                task,
                started_at,
                finished_at,
                ..
            } => Some((task.clone(), Some(finished_at - started_at))),
            _ => None,
        })
        .collect();
    let depths: Vec<usize> = events
        .iter()
        .filter_map(|event| match event {
            keel_engine::Progress::QueueDepth { ready } => Some(*ready),
            _ => None,
        })
        .collect();
    assert_eq!(
        waits,
        [("first".into(), Some(0)), ("second".into(), Some(5_000))]
    );
    assert_eq!(
        durations,
        [
            ("first".into(), Some(5_000)),
            ("second".into(), Some(2_000))
        ]
    );
    assert_eq!(depths.first(), Some(&1), "{depths:?}");
    assert_eq!(depths.last(), Some(&0), "{depths:?}");
}

#[tokio::test]
async fn serve_stamps_its_heartbeat_with_the_clock_on_every_turn() {
    let harness = Harness::new();
    let mut engine = harness.engine(pipeline(vec![task("scrape", "a", &[], 1)], 8));
    let heartbeat = Arc::new(std::sync::atomic::AtomicI64::new(0));
    engine.set_heartbeat(heartbeat.clone());
    let (trigger, shutdown) = keel_engine::Shutdown::channel();
    let handle = tokio::spawn(async move { engine.serve(shutdown).await });
    let beat = || heartbeat.load(std::sync::atomic::Ordering::Relaxed);
    eventually("the first turn", || beat() == 1_000_000).await;
    // With nothing to do, the loop still turns every poll interval and sees the clock move.
    harness.clock.advance(45_000);
    eventually("a turn at the new time", || beat() == 1_045_000).await;
    harness.clock.advance(1);
    eventually("another turn", || beat() == 1_045_001).await;
    trigger.drain();
    handle.await.unwrap().unwrap();
}

/// Regression: attempt starts the store holds from a clock ahead of this one (a state written
/// under `keel serve --clock-start`, or a clock set back) held every start on a rate-limited
/// resource until that future instant. They count as starts made now: the limit holds for one
/// window, no longer.
#[tokio::test]
async fn starts_recorded_by_a_clock_ahead_hold_a_rate_limit_for_one_window_only() {
    let harness = Harness::new();
    let mut feed = resource("feed");
    feed.rate = Some(keel_model::Rate {
        tokens: 2,
        per: Duration::from_secs(1),
    });
    let spec = with_resource(pipeline(independent(3, 1), 8), feed);
    // A day ahead of the engine's clock, an earlier Keel started two attempts on the feed.
    let ahead = harness.clock.now_for_test() + 86_400_000;
    let mut engine = harness.engine(spec.clone());
    let earlier = match engine
        .prepare(&RunRequest {
            partitions: vec!["2026-01-17".into()],
            ..Default::default()
        })
        .await
        .unwrap()[0]
    {
        Prepared::Created(run) => run,
        ref other => panic!("{other:?}"),
    };
    for task in ["t00", "t01"] {
        let attempt = harness
            .store
            .claim_attempt(keel_store::ClaimAttempt {
                run: earlier,
                task: task.into(),
                owner: "ahead".into(),
                dir: "/nonexistent".into(),
                version: "v".into(),
                task_version: None,
                lease_expires_at: ahead + 60_000,
                at: ahead,
            })
            .await
            .unwrap();
        harness
            .store
            .mark_attempt_started(attempt.id, attempt.lease_epoch, None, ahead)
            .await
            .unwrap();
    }
    drop(engine);
    let (_run, _trigger, handle) = start_in_background(&harness, spec).await;
    let mut waited = 0;
    while !handle.is_finished() {
        waited += 100;
        assert!(
            waited <= 30_000,
            "the rate limit held the starts for the day the other clock was ahead"
        );
        harness.clock.advance(100);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(handle.await.unwrap()[0].state, RunState::Succeeded);
}
