//! What the engine decides must outlive the engine: each test here kills an engine mid-run (its
//! future is dropped, so everything it held in memory is gone) and checks that a new engine on
//! the same store carries on with the decision instead of forgetting it.

use super::*;

fn launched(executor: &FakeExecutor, name: &str) -> usize {
    executor
        .launches()
        .iter()
        .filter(|(task, _)| task == name)
        .count()
}

/// Waits until the gated pipeline's load and its five analytics tasks have started, and the
/// engine has judged the gate.
async fn analytics_running(executor: &FakeExecutor) {
    eventually("the analytics tasks to run", || {
        executor.launches().len() == 6
    })
    .await;
    tokio::time::sleep(Duration::from_millis(30)).await;
}

/// Drops a running engine as `kill -9` would drop Keel: nothing after this point of its code runs.
async fn crash(handle: tokio::task::JoinHandle<Vec<keel_engine::RunSummary>>) {
    handle.abort();
    let _ = handle.await;
}

/// Executes an existing run with a fresh engine in the background.
fn resume_in_background(
    harness: &Harness,
    spec: PipelineSpec,
    run: keel_model::RunId,
) -> tokio::task::JoinHandle<Vec<keel_engine::RunSummary>> {
    let mut engine = harness.engine(spec);
    tokio::spawn(async move {
        engine
            .execute(&[run], keel_engine::Shutdown::never())
            .await
            .unwrap()
    })
}

async fn until_stored(
    harness: &Harness,
    run: keel_model::RunId,
    what: &str,
    condition: impl Fn(&[keel_store::TaskRunRecord]) -> bool,
) {
    for _ in 0..500 {
        if condition(&harness.store.task_runs(run).await.unwrap()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for {what}");
}

fn task_record<'a>(
    tasks: &'a [keel_store::TaskRunRecord],
    name: &str,
) -> &'a keel_store::TaskRunRecord {
    tasks.iter().find(|task| task.task == name).unwrap()
}

#[tokio::test]
async fn a_rerun_owed_to_a_task_that_ran_without_a_late_upstream_survives_a_crash() {
    // Regression: the rerun lived only in memory, so a Keel killed while the downstream task ran
    // accepted its result on restart and ended the run succeeded without it ever seeing a5.
    let harness = Harness::new();
    *harness.executor.hold.lock().unwrap() = vec!["a5".into(), "features".into()];
    let spec = gated_pipeline(1_000);
    let (run, _trigger, handle) = start_in_background(&harness, spec.clone()).await;
    let executor = harness.executor.clone();
    analytics_running(&executor).await;
    harness.clock.advance(1_000);
    eventually("features to start without a5", || {
        launched(&executor, "features") == 1
    })
    .await;
    // a5 lands late while features runs.
    *harness.executor.pinned.lock().unwrap() = vec!["features".into()];
    harness.executor.release.notify_waiters();
    until_stored(&harness, run, "the rerun to be recorded", |tasks| {
        task_record(tasks, "features").rerun_pending
    })
    .await;
    crash(handle).await;

    // features finished while Keel was down; it ran without a5, so it must run again.
    *harness.executor.adoption.lock().unwrap() = Some(Outcome::Succeeded);
    harness.executor.hold.lock().unwrap().clear();
    let mut engine = harness.engine(spec);
    assert_eq!(
        run_partition(&mut engine, "2026-01-18").await,
        RunState::Succeeded
    );
    assert_eq!(
        launched(&executor, "features"),
        2,
        "{:?}",
        executor.launches()
    );
    assert_eq!(launched(&executor, "predict"), 1);
    let tasks = harness.store.task_runs(run).await.unwrap();
    assert!(!task_record(&tasks, "features").rerun_pending);
}

#[tokio::test]
async fn a_task_waived_and_landed_before_the_reconcile_was_recorded_is_reconciled_on_restart() {
    // The late task's success and the reconcile are two commits; a crash between them must not
    // lose the reconcile. Simulated by leaving the gate's stored waiver in place while the
    // waived task is recorded succeeded.
    let harness = Harness::new();
    harness.executor.script("a5", &[Outcome::Failed]);
    let mut engine = harness.engine(gated_pipeline(1_000));
    assert_eq!(
        run_partition(&mut engine, "2026-01-18").await,
        RunState::Degraded
    );
    let run = harness
        .store
        .latest_run("test", "2026-01-18")
        .await
        .unwrap()
        .unwrap()
        .id;
    let gates = harness.store.gates(run).await.unwrap();
    assert_eq!(gates[0].waived, vec!["a5".to_string()]);
    // a5 lands (as a retry by another Keel would record it), and that Keel dies right after.
    harness
        .store
        .set_run_state(run, RunState::Running, None, 2_000_000)
        .await
        .unwrap();
    harness
        .store
        .update_tasks(
            run,
            vec![keel_store::TaskChange {
                task: "a5".into(),
                state: TaskState::Pending,
                outcome: None,
                not_before: None,
                message: None,
                reset_retry_budget: true,
                reason: "manual retry".into(),
            }],
            2_000_000,
        )
        .await
        .unwrap();
    let attempt = claim_as_a_dead_keel(&harness, run, "a5").await;
    harness
        .store
        .finish_attempt(keel_store::FinishAttempt {
            attempt: attempt.id,
            epoch: attempt.lease_epoch,
            outcome: Outcome::Succeeded,
            exit_code: Some(0),
            rows: None,
            metrics: None,
            message: None,
            next: keel_store::TaskNext::Done(Outcome::Succeeded),
            at: 2_000_001,
        })
        .await
        .unwrap();
    let mut engine = harness.engine(gated_pipeline(1_000));
    assert_eq!(
        run_partition(&mut engine, "2026-01-18").await,
        RunState::Succeeded
    );
    let executor = &harness.executor;
    assert_eq!(
        launched(executor, "features"),
        2,
        "{:?}",
        executor.launches()
    );
    assert_eq!(launched(executor, "predict"), 2);
}

/// The gated pipeline where `features` names a5 in its own `after`, and `other` does not.
fn pipeline_with_a_hard_input() -> PipelineSpec {
    let mut spec = gated_pipeline(1_000);
    let features = spec
        .tasks
        .iter()
        .position(|task| task.name == "features")
        .unwrap();
    spec.tasks[features].after = vec!["a5".into()];
    spec.tasks
        .insert(features + 1, task("other", "precompute", &[], 1));
    spec
}

#[tokio::test]
async fn a_gate_waiver_does_not_cover_a_task_named_in_after() {
    // Regression: when the gate opened without a5, features started too, although it names a5
    // in its own `after`.
    let harness = Harness::new();
    harness.executor.script("a5", &[Outcome::FailedPermanent]);
    let mut engine = harness.engine(pipeline_with_a_hard_input());
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
    assert_eq!(after["other"], Some(Outcome::Succeeded), "the waiver holds");
    assert_eq!(after["features"], Some(Outcome::UpstreamFailed));
    assert_eq!(after["predict"], Some(Outcome::UpstreamFailed));
    assert_eq!(launched(&harness.executor, "features"), 0);
}

#[tokio::test]
async fn a_task_named_in_after_waits_for_a_late_waived_task() {
    let harness = Harness::new();
    *harness.executor.hold.lock().unwrap() = vec!["a5".into()];
    let (_run, _trigger, handle) =
        start_in_background(&harness, pipeline_with_a_hard_input()).await;
    let executor = harness.executor.clone();
    analytics_running(&executor).await;
    harness.clock.advance(1_000);
    eventually("other to start without a5", || {
        launched(&executor, "other") == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(launched(&executor, "features"), 0, "features waits for a5");
    harness.executor.hold.lock().unwrap().clear();
    harness.executor.release.notify_waiters();
    assert_eq!(handle.await.unwrap()[0].state, RunState::Succeeded);
    assert_eq!(launched(&executor, "features"), 1, "it ran once, with a5");
    assert_eq!(
        launched(&executor, "other"),
        2,
        "other ran without a5 and again with it"
    );
}

#[tokio::test]
async fn a_gate_grace_period_keeps_its_end_across_a_restart() {
    // Regression: a restarted Keel started the grace period again.
    let harness = Harness::new();
    *harness.executor.hold.lock().unwrap() = vec!["a5".into()];
    let spec = gated_pipeline(60_000);
    let (run, _trigger, handle) = start_in_background(&harness, spec.clone()).await;
    let executor = harness.executor.clone();
    analytics_running(&executor).await;
    harness.clock.advance(50_000);
    tokio::time::sleep(Duration::from_millis(10)).await;
    crash(handle).await;

    let handle = resume_in_background(&harness, spec, run);
    eventually("a5 to start again", || launched(&executor, "a5") == 2).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(launched(&executor, "features"), 0);
    harness.clock.advance(10_000);
    eventually("features to start when the first grace ends", || {
        launched(&executor, "features") == 1
    })
    .await;
    harness.executor.hold.lock().unwrap().clear();
    harness.executor.release.notify_waiters();
    assert_eq!(handle.await.unwrap()[0].state, RunState::Succeeded);
}

#[tokio::test]
async fn a_sensor_keeps_its_backoff_across_a_restart() {
    // Regression: a restarted Keel polled again at the sensor's first interval.
    let harness = Harness::new();
    harness.executor.sensor_scripts.lock().unwrap().insert(
        "props".into(),
        [Outcome::NotReady; 1000].into_iter().collect(),
    );
    let spec = pipeline(
        vec![
            sensed(task("props", "a", &[], 1), 1_000, 600_000, 3_600_000),
            task("after", "b", &[], 1),
        ],
        8,
    );
    let (run, _trigger, handle) = start_in_background(&harness, spec.clone()).await;
    let polls = harness.executor.sensor_polls.clone();
    while polls.lock().unwrap().len() < 5 {
        harness.clock.advance(1_000);
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    crash(handle).await;

    let handle = resume_in_background(&harness, spec, run);
    while polls.lock().unwrap().len() < 6 {
        harness.clock.advance(1_000);
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    handle.abort();
    let events = harness.store.events(run).await.unwrap();
    let sixth = events
        .iter()
        .filter(|event| event.kind == "sensor_polled")
        .nth(5)
        .expect("a sixth poll");
    let next: i64 = sixth.detail.rsplit(' ').next().unwrap().parse().unwrap();
    let waited = next - sixth.at;
    // The sixth poll waits in the upper half of 1 s × 2^5.
    assert!(
        (16_000..=32_000).contains(&waited),
        "waited {waited} ms after the sixth poll"
    );
    let stored = harness.store.task_runs(run).await.unwrap();
    assert_eq!(task_record(&stored, "props").sensor_polls, 6);
}

#[tokio::test]
async fn an_open_breaker_stays_open_across_a_restart() {
    // Regression: a restarted Keel started every breaker closed, while `keel status` showed the
    // one it had left open.
    let harness = Harness::new();
    harness.executor.script("a", &[Outcome::Failed]);
    let mut feed = resource("feed");
    feed.breaker = Some(keel_model::BreakerSpec {
        failures: 1,
        ratio: None,
        window: 20,
        cooldown: Duration::from_secs(60),
        max_open: Duration::from_secs(1800),
    });
    let spec = with_resource(pipeline(vec![task("a", "main", &[], 3)], 8), feed);
    let (run, _trigger, handle) = start_in_background(&harness, spec.clone()).await;
    let executor = harness.executor.clone();
    eventually("the first attempt", || executor.launches().len() == 1).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let opened_at = harness.clock.now_for_test();
    crash(handle).await;
    let stored = harness.store.resource_states("test").await.unwrap();
    assert_eq!(
        (stored[0].state.as_str(), stored[0].open_until),
        ("open", Some(opened_at + 60_000))
    );
    assert_eq!(stored[0].state_at(opened_at + 1).0, "open");
    assert_eq!(stored[0].state_at(opened_at + 60_000).0, "half_open");

    let handle = resume_in_background(&harness, spec, run);
    harness.clock.advance(30_000);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        executor.launches().len(),
        1,
        "an attempt started while the stored breaker was open"
    );
    harness.clock.advance(30_000);
    eventually("the probe", || executor.launches().len() == 2).await;
    assert_eq!(handle.await.unwrap()[0].state, RunState::Succeeded);
    let stored = harness.store.resource_states("test").await.unwrap();
    assert_eq!(
        (stored[0].state.as_str(), stored[0].open_since),
        ("closed", None)
    );
}

#[tokio::test]
async fn a_running_attempt_renews_its_lease_so_only_a_dead_holder_lets_it_expire() {
    let harness = Harness::new();
    *harness.executor.hold.lock().unwrap() = vec!["slow".into()];
    let spec = pipeline(vec![task("slow", "a", &[], 1)], 8);
    let (_run, _trigger, handle) = start_in_background(&harness, spec).await;
    let executor = harness.executor.clone();
    eventually("slow to start", || executor.launches().len() == 1).await;
    // The lease lasts 60 s; 75 s pass in steps, with polls in between.
    for _ in 0..3 {
        harness.clock.advance(25_000);
        tokio::time::sleep(Duration::from_millis(80)).await;
    }
    let now = harness.clock.now_for_test();
    assert!(
        harness
            .store
            .expired_leases("test", now)
            .await
            .unwrap()
            .is_empty(),
        "the live holder renewed its lease"
    );
    crash(handle).await;
    harness.clock.advance(61_000);
    let expired = harness
        .store
        .expired_leases("test", harness.clock.now_for_test())
        .await
        .unwrap();
    assert_eq!(expired.len(), 1, "a dead holder's lease expires");
}

/// A chain of tasks, each in its own phase after the one before.
fn chain(length: usize) -> PipelineSpec {
    let tasks = (0..length)
        .map(|index| task(&format!("t{index}"), &format!("p{index}"), &[], 1))
        .collect();
    pipeline(tasks, 8)
}

#[tokio::test]
async fn each_step_is_one_transaction() {
    // Creating the run is one; then each task takes three: its claim (before the launch), its
    // start (the pid, after the launch), and the step that records its end with everything
    // that follows from it (the next task becoming ready, the run's end). One more registers
    // the versions of the tasks, the first time an engine runs them.
    let harness = Harness::new();
    let before = harness.store.write_transactions();
    let mut engine = harness.engine(chain(5));
    assert_eq!(
        run_partition(&mut engine, "2026-01-18").await,
        RunState::Succeeded
    );
    assert_eq!(harness.store.write_transactions() - before, 1 + 1 + 3 * 5);
    let before = harness.store.write_transactions();
    let mut engine = harness.engine(chain(5));
    assert_eq!(
        run_partition(&mut engine, "2026-01-19").await,
        RunState::Succeeded
    );
    assert_eq!(
        harness.store.write_transactions() - before,
        1 + 3 * 5,
        "versions already registered are not written again"
    );

    // A permanent failure at the head: its finish, the upstream failures it causes downstream
    // and the failed run are one step.
    let harness = Harness::new();
    harness.executor.script("t0", &[Outcome::FailedPermanent]);
    let before = harness.store.write_transactions();
    let mut engine = harness.engine(chain(4));
    assert_eq!(
        run_partition(&mut engine, "2026-01-18").await,
        RunState::Failed
    );
    assert_eq!(harness.store.write_transactions() - before, 1 + 1 + 3);
    let run = harness
        .store
        .latest_run("test", "2026-01-18")
        .await
        .unwrap()
        .unwrap();
    let after = outcomes(&harness, run.id).await;
    assert_eq!(after["t3"], Some(Outcome::UpstreamFailed));
}

#[tokio::test]
async fn a_pipeline_file_changed_between_a_crash_and_the_resume_is_taken_up_or_refused() {
    // Regression: a resume with an edited file ended the run succeeded while a task the file
    // lost was never done, and a task the file gained never ran.
    let harness = Harness::new();
    *harness.executor.hold.lock().unwrap() = vec!["a".into()];
    let before = pipeline(vec![task("a", "p0", &[], 1), task("b", "p1", &[], 1)], 8);
    let (run, _trigger, handle) = start_in_background(&harness, before).await;
    let executor = harness.executor.clone();
    eventually("a to start", || launched(&executor, "a") == 1).await;
    crash(handle).await;

    // The file lost b (not done yet) and gained c: the resume is refused, saying what to do.
    let mut engine = harness.engine(pipeline(
        vec![task("a", "p0", &[], 1), task("c", "p1", &[], 1)],
        8,
    ));
    let refused = engine
        .prepare(&RunRequest {
            partitions: vec!["2026-01-18".into()],
            ..RunRequest::default()
        })
        .await
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("\"b\"") || refused.contains(": b;"),
        "names the lost task: {refused}"
    );
    assert!(
        refused.contains("keel cancel --partition 2026-01-18"),
        "{refused}"
    );

    // With b back and c added, the resume takes c into the run and runs it.
    harness.executor.hold.lock().unwrap().clear();
    *harness.executor.adoption.lock().unwrap() = Some(Outcome::Succeeded);
    let mut engine = harness.engine(pipeline(
        vec![
            task("a", "p0", &[], 1),
            task("b", "p1", &[], 1),
            task("c", "p1", &[], 1),
        ],
        8,
    ));
    assert_eq!(
        run_partition(&mut engine, "2026-01-18").await,
        RunState::Succeeded
    );
    assert_eq!(launched(&executor, "b"), 1);
    assert_eq!(launched(&executor, "c"), 1, "the task the file gained ran");
    let events = harness.store.events(run).await.unwrap();
    assert!(
        events
            .iter()
            .any(|event| event.kind == "pipeline_changed" && event.detail.contains("added c")),
        "the change is in the event log"
    );
}

#[tokio::test]
async fn attempts_lost_in_a_row_back_off_and_stop_with_a_message() {
    // Regression: lost attempts were retried at once without end, so a host that could not
    // start attempts wrote tens of thousands of lost rows in seconds.
    let harness = Harness::new();
    harness.executor.script("a", &[Outcome::Lost; 20]);
    let spec = pipeline(vec![task("a", "p0", &[], 3)], 8);
    let (run, _trigger, handle) = start_in_background(&harness, spec).await;
    let mut steps = 0;
    while !handle.is_finished() {
        steps += 1;
        assert!(steps < 2_000, "lost attempts kept being retried");
        harness.clock.advance(100);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(handle.await.unwrap()[0].state, RunState::Failed);
    let tasks = harness.store.task_runs(run).await.unwrap();
    assert_eq!(tasks[0].outcome, Some(Outcome::Lost));
    assert_eq!(tasks[0].attempts, 5);
    assert_eq!(tasks[0].charged, 0, "a loss uses up no attempt");
    let message = tasks[0].message.as_deref().unwrap_or_default();
    assert!(message.contains("lost 5 attempts in a row"), "{message}");
    // The backoff as decided: from each loss (its end, on the manual clock) to the time the
    // next attempt was allowed (its `not_before`). Read from the decisions, not from when the
    // next claim happened, which a loaded machine can delay by more than one clock step.
    let attempts = harness.store.attempts(run).await.unwrap();
    let waits: Vec<i64> = attempts
        .windows(2)
        .map(|pair| {
            let ended = pair[0].finished_at.expect("a lost attempt has ended");
            pair[1].not_before.unwrap_or(ended) - ended
        })
        .collect();
    // The first loss is retried at once; then the upper half of 1 s × 2^(n-1).
    assert_eq!(waits[0], 0, "{waits:?}");
    for (index, wait) in waits.iter().enumerate().skip(1) {
        let ceiling = 1_000i64 << (index - 1);
        assert!(
            *wait >= ceiling / 2 && *wait <= ceiling,
            "wait {index} of {waits:?} outside [{}, {}]",
            ceiling / 2,
            ceiling
        );
    }
}
