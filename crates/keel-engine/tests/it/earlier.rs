//! Inputs on an earlier partition (`after = ["summary@-1d"]`), on the fake executor and the
//! manual clock: a run waits for the run of the day before, says so in its stored message, and
//! gives up at its deadline, counted from a start that survives a restart.

use std::time::Duration;

use keel_engine::{Prepared, RunRequest, Shutdown};
use keel_model::{EarlierInput, Outcome, RunState, TaskState};
use keel_store::Store;

use crate::{Harness, eventually, pipeline, run_partition, task};

/// `summary`, and `rolling`, which reads the summary of the day before (soft or not).
fn rolling_pipeline(soft: bool) -> keel_model::PipelineSpec {
    let mut rolling = task("rolling", "model", &[], 1);
    rolling.edges.earlier = vec![EarlierInput {
        task: "summary".into(),
        days: 1,
        soft,
    }];
    pipeline(vec![task("summary", "model", &[], 1), rolling], 8)
}

async fn prepare(
    engine: &mut keel_engine::Engine<
        keel_store::SqliteStore,
        crate::FakeExecutor,
        keel_engine::ManualClock,
    >,
    partitions: &[&str],
) -> Vec<keel_model::RunId> {
    engine
        .prepare(&RunRequest {
            partitions: partitions.iter().map(|date| date.to_string()).collect(),
            ..RunRequest::default()
        })
        .await
        .unwrap()
        .into_iter()
        .map(|prepared| match prepared {
            Prepared::Created(run) | Prepared::Resumed(run) => run,
            other => panic!("{other:?}"),
        })
        .collect()
}

async fn task_run(harness: &Harness, partition: &str, name: &str) -> keel_store::TaskRunRecord {
    let run = harness
        .store
        .latest_run("test", partition)
        .await
        .unwrap()
        .unwrap();
    harness
        .store
        .task_runs(run.id)
        .await
        .unwrap()
        .into_iter()
        .find(|task| task.task == name)
        .unwrap()
}

/// The partitions `task` was launched for, in launch order.
fn launched(harness: &Harness, name: &str) -> Vec<String> {
    harness
        .executor
        .launches
        .lock()
        .unwrap()
        .iter()
        .filter(|(task, _, _)| task == name)
        .filter_map(|(_, _, env)| {
            env.iter()
                .find(|(key, _)| key == "KEEL_PARTITION")
                .map(|(_, value)| value.clone())
        })
        .collect()
}

#[tokio::test]
async fn a_range_waits_for_the_day_before_and_its_first_date_has_no_day_before() {
    let harness = Harness::new();
    *harness.executor.hold.lock().unwrap() = vec!["summary".into()];
    let mut engine = harness.engine(rolling_pipeline(false));
    let runs = prepare(&mut engine, &["2026-11-29", "2026-11-30"]).await;
    let handle =
        tokio::spawn(async move { engine.execute(&runs, Shutdown::never()).await.unwrap() });
    // The first date of the pipeline has no day before: its rolling runs at once. The second
    // waits for the first's summary, which is held.
    eventually("the first rolling", || {
        launched(&harness, "rolling") == ["2026-11-29"]
    })
    .await;
    for _ in 0..100 {
        let waiting = task_run(&harness, "2026-11-30", "rolling").await;
        if waiting.state == TaskState::Waiting {
            assert_eq!(
                waiting.message.as_deref(),
                Some("waiting for summary on 2026-11-29")
            );
            assert!(
                waiting.first_started_at.is_some(),
                "the wait's start is stored"
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        task_run(&harness, "2026-11-30", "rolling").await.state,
        TaskState::Waiting
    );
    assert_eq!(launched(&harness, "rolling"), ["2026-11-29"]);
    harness.executor.hold.lock().unwrap().clear();
    harness.executor.release.notify_waiters();
    let summaries = handle.await.unwrap();
    assert!(
        summaries
            .iter()
            .all(|summary| summary.state == RunState::Succeeded),
        "{summaries:?}"
    );
    assert_eq!(launched(&harness, "rolling"), ["2026-11-29", "2026-11-30"]);
}

#[tokio::test]
async fn a_failed_day_before_fails_a_hard_input_and_is_missing_for_a_soft_one() {
    for soft in [false, true] {
        let harness = Harness::new();
        harness
            .executor
            .script("summary", &[Outcome::FailedPermanent]);
        let mut engine = harness.engine(rolling_pipeline(soft));
        assert_eq!(
            run_partition(&mut engine, "2026-11-29").await,
            RunState::Failed
        );
        // Read from the store this time: the run of the day before is not loaded.
        let mut engine = harness.engine(rolling_pipeline(soft));
        let state = run_partition(&mut engine, "2026-11-30").await;
        let rolling = task_run(&harness, "2026-11-30", "rolling").await;
        if soft {
            assert_eq!(state, RunState::Succeeded);
            assert_eq!(rolling.outcome, Some(Outcome::Succeeded));
            let launches = harness.executor.launches.lock().unwrap();
            let (_, _, env) = launches
                .iter()
                .rfind(|(task, _, _)| task == "rolling")
                .unwrap();
            assert!(
                env.contains(&("KEEL_MISSING".to_string(), "summary@-1d".to_string())),
                "{env:?}"
            );
        } else {
            assert_eq!(state, RunState::Failed);
            assert_eq!(rolling.outcome, Some(Outcome::UpstreamFailed));
            assert_eq!(
                rolling.message.as_deref(),
                Some(
                    "summary on 2026-11-29 ended failed_permanent; retry it there, then retry this task"
                )
            );
            assert_eq!(launched(&harness, "rolling"), ["2026-11-29"]);
        }
    }
}

#[tokio::test]
async fn a_gap_in_the_dates_fails_at_once_naming_the_missing_date() {
    let harness = Harness::new();
    let mut engine = harness.engine(rolling_pipeline(false));
    assert_eq!(
        run_partition(&mut engine, "2026-11-28").await,
        RunState::Succeeded
    );
    let mut engine = harness.engine(rolling_pipeline(false));
    assert_eq!(
        run_partition(&mut engine, "2026-11-30").await,
        RunState::Failed
    );
    let rolling = task_run(&harness, "2026-11-30", "rolling").await;
    assert_eq!(rolling.outcome, Some(Outcome::UpstreamFailed));
    assert_eq!(
        rolling.message.as_deref(),
        Some("no run of 2026-11-29 to wait for summary on; run that date, then retry this task")
    );
}

/// The day before has a run that never finishes: the task waits for its deadline (30 s), counted
/// from when it began to wait, which a restart in the middle does not move.
#[tokio::test]
async fn an_unfinished_day_before_is_waited_for_until_the_deadline_across_a_restart() {
    let harness = Harness::new();
    let mut engine = harness.engine(rolling_pipeline(false));
    // Created, never executed: unfinished.
    prepare(&mut engine, &["2026-11-29"]).await;
    let today = prepare(&mut engine, &["2026-11-30"]).await;
    let (trigger, shutdown) = Shutdown::channel();
    let handle = tokio::spawn(async move { engine.execute(&today, shutdown).await.unwrap() });
    let store = harness.store.clone();
    let mut waiting = None;
    for _ in 0..200 {
        let rolling = task_run(&harness, "2026-11-30", "rolling").await;
        if rolling.state == TaskState::Waiting {
            waiting = Some(rolling);
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let waiting = waiting.expect("rolling waits");
    assert_eq!(
        waiting.message.as_deref(),
        Some("waiting for summary on 2026-11-29")
    );
    let started = waiting.first_started_at.unwrap();
    // 20 s of the 30 s pass, then Keel stops and starts again.
    harness.clock.advance(20_000);
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(
        task_run(&harness, "2026-11-30", "rolling").await.state,
        TaskState::Waiting
    );
    trigger.now();
    handle.await.unwrap();
    drop(store);
    let mut engine = harness.engine(rolling_pipeline(false));
    let today = prepare(&mut engine, &["2026-11-30"]).await;
    let handle =
        tokio::spawn(async move { engine.execute(&today, Shutdown::never()).await.unwrap() });
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(!handle.is_finished(), "still within the deadline");
    // 11 s more: 31 s since the wait began, though only 11 s since the restart.
    harness.clock.advance(11_000);
    let summaries = tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .expect("the deadline ends the wait")
        .unwrap();
    assert_eq!(summaries[0].state, RunState::Failed);
    let rolling = task_run(&harness, "2026-11-30", "rolling").await;
    assert_eq!(rolling.first_started_at, Some(started));
    assert_eq!(rolling.outcome, Some(Outcome::UpstreamFailed));
    assert_eq!(
        rolling.message.as_deref(),
        Some("waited 30.0s for summary on 2026-11-29, which has not finished; the deadline passed")
    );
    assert!(launched(&harness, "rolling").is_empty());
}

/// A task may wait for its own run of the day before: a range runs its dates one after another.
#[tokio::test]
async fn a_task_after_itself_the_day_before_runs_a_range_in_date_order() {
    let harness = Harness::new();
    let mut chained = task("chained", "model", &[], 1);
    chained.edges.earlier = vec![EarlierInput {
        task: "chained".into(),
        days: 1,
        soft: false,
    }];
    let spec = pipeline(vec![chained], 8);
    let mut engine = harness.engine(spec);
    let runs = prepare(&mut engine, &["2026-11-28", "2026-11-29", "2026-11-30"]).await;
    let summaries = engine.execute(&runs, Shutdown::never()).await.unwrap();
    assert!(
        summaries
            .iter()
            .all(|summary| summary.state == RunState::Succeeded),
        "{summaries:?}"
    );
    assert_eq!(
        launched(&harness, "chained"),
        ["2026-11-28", "2026-11-29", "2026-11-30"]
    );
}
