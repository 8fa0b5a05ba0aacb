//! Calendars (`when`): a task whose weekdays leave out the partition's date is settled
//! `skipped` when the run is created, with why, and counts as done for what follows it.

use keel_engine::{Prepared, RunRequest, Shutdown};
use keel_model::{CalendarSpec, Outcome, RunState, Weekday};
use keel_store::Store;

use crate::{Harness, pipeline, run_partition, sensed, task};

/// 2026-01-21 is a Wednesday, 2026-01-22 a Thursday.
const WEDNESDAY: &str = "2026-01-21";
const THURSDAY: &str = "2026-01-22";

/// fetch (Sundays and Wednesdays only) → load, in the next phase.
fn weekly() -> keel_model::PipelineSpec {
    let mut fetch = task("fetch", "a", &[], 1);
    fetch.when = Some(CalendarSpec {
        weekdays: vec![Weekday::Sun, Weekday::Wed],
        command: None,
    });
    pipeline(vec![fetch, task("load", "b", &[], 1)], 4)
}

async fn task_row(harness: &Harness, partition: &str, name: &str) -> keel_store::TaskRunRecord {
    let run = harness
        .store
        .latest_run("test", partition)
        .await
        .unwrap()
        .expect("a run");
    harness
        .store
        .task_runs(run.id)
        .await
        .unwrap()
        .into_iter()
        .find(|task| task.task == name)
        .expect("the task's row")
}

#[tokio::test]
async fn a_task_runs_only_on_its_weekdays_and_its_dependents_go_on_without_it() {
    let harness = Harness::new();
    let mut engine = harness.engine(weekly());
    assert_eq!(
        run_partition(&mut engine, WEDNESDAY).await,
        RunState::Succeeded
    );
    assert_eq!(
        harness.executor.launches(),
        vec![("fetch".into(), 1), ("load".into(), 1)]
    );
    assert_eq!(
        run_partition(&mut engine, THURSDAY).await,
        RunState::Succeeded
    );
    // Only load ran on Thursday; fetch was settled skipped, with why, and never launched.
    assert_eq!(
        harness.executor.launches(),
        vec![("fetch".into(), 1), ("load".into(), 1), ("load".into(), 1)]
    );
    let fetch = task_row(&harness, THURSDAY, "fetch").await;
    assert_eq!(fetch.outcome, Some(Outcome::Skipped));
    assert_eq!(fetch.attempts, 0);
    assert_eq!(
        fetch.message.as_deref(),
        Some("not a scheduled weekday: runs on sun, wed")
    );
    // A plain `keel run` again finds the run done: a skipped day is not a task left out.
    assert_eq!(
        run_partition(&mut engine, THURSDAY).await,
        RunState::Succeeded
    );
    assert_eq!(harness.executor.launches().len(), 3);
}

/// A run created on a skipped day and resumed by another Keel: the calendar's skip is read
/// back as done, not as a task `--only` left out (which would end the run `partial`).
#[tokio::test]
async fn a_resumed_run_keeps_its_calendar_skip_and_succeeds() {
    let harness = Harness::new();
    let mut first = harness.engine(weekly());
    let prepared = first
        .prepare(&RunRequest {
            partitions: vec![THURSDAY.into()],
            ..RunRequest::default()
        })
        .await
        .unwrap();
    let Prepared::Created(run) = prepared[0] else {
        panic!("{prepared:?}");
    };
    drop(first);
    let mut second = harness.engine(weekly());
    let prepared = second
        .prepare(&RunRequest {
            partitions: vec![THURSDAY.into()],
            ..RunRequest::default()
        })
        .await
        .unwrap();
    assert!(matches!(prepared[0], Prepared::Resumed(resumed) if resumed == run));
    let summaries = second.execute(&[run], Shutdown::never()).await.unwrap();
    assert_eq!(summaries[0].state, RunState::Succeeded);
    assert_eq!(harness.executor.launches(), vec![("load".into(), 1)]);
}

/// `--only` on a skipped day: the task the calendar skips is not left out, so the run is
/// not `partial` for it.
#[tokio::test]
async fn only_and_a_calendar_skip_together_leave_nothing_out() {
    let harness = Harness::new();
    let mut engine = harness.engine(weekly());
    let prepared = engine
        .prepare(&RunRequest {
            partitions: vec![THURSDAY.into()],
            only: vec!["load".into()],
            ..RunRequest::default()
        })
        .await
        .unwrap();
    let Prepared::Created(run) = prepared[0] else {
        panic!("{prepared:?}");
    };
    let summaries = engine.execute(&[run], Shutdown::never()).await.unwrap();
    assert_eq!(summaries[0].state, RunState::Succeeded);
    assert_eq!(harness.executor.launches(), vec![("load".into(), 1)]);
}

/// A task the pipeline file gained while a run was unfinished joins it skipped on a day its
/// calendar leaves out, rather than running.
#[tokio::test]
async fn a_task_added_to_an_unfinished_run_keeps_to_its_calendar() {
    let harness = Harness::new();
    let mut before = harness.engine(pipeline(vec![task("load", "b", &[], 1)], 4));
    let prepared = before
        .prepare(&RunRequest {
            partitions: vec![THURSDAY.into()],
            ..RunRequest::default()
        })
        .await
        .unwrap();
    let Prepared::Created(run) = prepared[0] else {
        panic!("{prepared:?}");
    };
    drop(before);
    let mut after = harness.engine(weekly());
    after
        .prepare(&RunRequest {
            partitions: vec![THURSDAY.into()],
            ..RunRequest::default()
        })
        .await
        .unwrap();
    let summaries = after.execute(&[run], Shutdown::never()).await.unwrap();
    assert_eq!(summaries[0].state, RunState::Succeeded);
    assert_eq!(harness.executor.launches(), vec![("load".into(), 1)]);
    let fetch = task_row(&harness, THURSDAY, "fetch").await;
    assert_eq!(fetch.outcome, Some(Outcome::Skipped));
    assert_eq!(
        fetch.message.as_deref(),
        Some("not a scheduled weekday: runs on sun, wed")
    );
}

/// fetch asks `is-game-day {date}` before its first attempt (on Wednesdays only, when both are
/// given) → load, in the next phase.
fn game_days(weekdays: Vec<Weekday>) -> keel_model::PipelineSpec {
    let mut fetch = task("fetch", "a", &[], 3);
    fetch.when = Some(CalendarSpec {
        weekdays,
        command: Some(vec!["is-game-day".into(), "{date-1d}".into()]),
    });
    pipeline(vec![fetch, task("load", "b", &[], 1)], 4)
}

#[tokio::test]
async fn the_when_command_exit_0_runs_the_task_once_and_is_not_asked_again_on_retries() {
    let harness = Harness::new();
    harness.executor.script("fetch", &[Outcome::Failed]);
    let mut engine = harness.engine(game_days(Vec::new()));
    let prepared = engine
        .prepare(&RunRequest {
            partitions: vec![WEDNESDAY.into()],
            ..RunRequest::default()
        })
        .await
        .unwrap();
    let Prepared::Created(run) = prepared[0] else {
        panic!("{prepared:?}");
    };
    let (_trigger, shutdown) = Shutdown::channel();
    let handle = tokio::spawn(async move { engine.execute(&[run], shutdown).await.unwrap() });
    while !handle.is_finished() {
        harness.clock.advance(500);
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    assert_eq!(handle.await.unwrap()[0].state, RunState::Succeeded);
    // Asked once, before the first attempt; the retry of the failed attempt did not ask again.
    assert_eq!(
        *harness.executor.calendar_polls.lock().unwrap(),
        vec!["fetch".to_string()]
    );
    assert_eq!(
        harness.executor.launches(),
        vec![("fetch".into(), 1), ("fetch".into(), 2), ("load".into(), 1)]
    );
    // Its templates were expanded, date arithmetic included.
    let command = harness.executor.calendar_commands.lock().unwrap()[0].clone();
    assert_eq!(
        command,
        vec!["is-game-day".to_string(), "2026-01-20".into()]
    );
}

#[tokio::test]
async fn the_when_command_exit_1_skips_the_task_with_its_output_and_dependents_go_on() {
    let harness = Harness::new();
    harness
        .executor
        .calendar_scripts
        .lock()
        .unwrap()
        .insert("fetch".into(), [1].into_iter().collect());
    let mut engine = harness.engine(game_days(Vec::new()));
    assert_eq!(
        run_partition(&mut engine, WEDNESDAY).await,
        RunState::Succeeded
    );
    assert_eq!(harness.executor.launches(), vec![("load".into(), 1)]);
    let fetch = task_row(&harness, WEDNESDAY, "fetch").await;
    assert_eq!(fetch.outcome, Some(Outcome::Skipped));
    assert_eq!(fetch.attempts, 0);
    let message = fetch.message.unwrap_or_default();
    assert!(message.contains("no game"), "{message}");
    assert!(message.contains("is-game-day 2026-01-20"), "{message}");
}

#[tokio::test]
async fn weekdays_decide_before_the_when_command_is_asked() {
    let harness = Harness::new();
    let mut engine = harness.engine(game_days(vec![Weekday::Wed]));
    assert_eq!(
        run_partition(&mut engine, THURSDAY).await,
        RunState::Succeeded
    );
    assert!(harness.executor.calendar_polls.lock().unwrap().is_empty());
    assert_eq!(harness.executor.launches(), vec![("load".into(), 1)]);
}

/// Any exit but 0 and 1 is a sensor error: it uses up one of the task's retry attempts, is
/// asked again after the retry backoff, and fails the task once the attempts are spent.
#[tokio::test]
async fn when_command_errors_use_up_retry_attempts_then_fail_the_task() {
    let harness = Harness::new();
    harness
        .executor
        .calendar_scripts
        .lock()
        .unwrap()
        .insert("fetch".into(), [2, 3, 4].into_iter().collect());
    let mut engine = harness.engine(game_days(Vec::new()));
    let prepared = engine
        .prepare(&RunRequest {
            partitions: vec![WEDNESDAY.into()],
            ..RunRequest::default()
        })
        .await
        .unwrap();
    let Prepared::Created(run) = prepared[0] else {
        panic!("{prepared:?}");
    };
    let (_trigger, shutdown) = Shutdown::channel();
    let handle = tokio::spawn(async move { engine.execute(&[run], shutdown).await.unwrap() });
    while !handle.is_finished() {
        harness.clock.advance(500);
        tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    }
    assert_eq!(handle.await.unwrap()[0].state, RunState::Failed);
    assert_eq!(harness.executor.calendar_polls.lock().unwrap().len(), 3);
    assert!(harness.executor.launches().is_empty());
    let fetch = task_row(&harness, WEDNESDAY, "fetch").await;
    assert_eq!(fetch.outcome, Some(Outcome::Failed));
    assert_eq!(
        fetch.sensor_errors, 2,
        "two errors stored before the third ended it"
    );
    let message = fetch.message.unwrap_or_default();
    assert!(message.contains("failed 3 times"), "{message}");
    assert!(message.contains("exited with code 4"), "{message}");
}

/// With a sensor too: the calendar decides first, then the sensor waits for the data.
#[tokio::test]
async fn a_task_with_both_asks_its_when_command_once_and_its_sensor_once() {
    let harness = Harness::new();
    let mut spec = game_days(Vec::new());
    spec.tasks[0] = sensed(spec.tasks[0].clone(), 1_000, 4_000, 3_600_000);
    let mut engine = harness.engine(spec);
    assert_eq!(
        run_partition(&mut engine, WEDNESDAY).await,
        RunState::Succeeded
    );
    assert_eq!(harness.executor.calendar_polls.lock().unwrap().len(), 1);
    assert_eq!(harness.executor.sensor_polls.lock().unwrap().len(), 1);
}
