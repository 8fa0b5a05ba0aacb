//! Fan-out (`expand`) on the fake executor and the manual clock: items run as attempt chains of
//! their own, and the expanded task completes under its quorum once nothing progressed for
//! `stall`.

use super::*;

fn items(keys: &[&str]) -> Vec<keel_model::Item> {
    keys.iter()
        .map(|key| keel_model::Item {
            key: key.to_string(),
            value: serde_json::Value::String(key.to_string()),
        })
        .collect()
}

/// `list` lists four items for `box`, which needs 75% of them within a stall of 10 minutes;
/// `report` waits for `box`.
fn fanout(min_share: f64) -> PipelineSpec {
    let mut expanded = task("box", "scrape", &["list"], 2);
    expanded.command = vec!["box".into(), "{item}".into()];
    expanded.expand = Some(keel_model::ExpandSpec {
        from: "list".into(),
        min_share,
        stall: Duration::from_secs(600),
    });
    pipeline(
        vec![
            task("list", "discover", &[], 1),
            expanded,
            task("report", "report", &["box"], 1),
        ],
        8,
    )
}

fn launched(harness: &Harness) -> Vec<String> {
    harness
        .executor
        .launches()
        .into_iter()
        .map(|(task, _)| task)
        .collect()
}

/// Three of four items succeed and one hangs: at 75% the task waits for the stall (10 minutes
/// on the manual clock, measured from the last item's end), then completes; the hanging item is
/// stopped, `report` runs, and the run ends degraded, naming what is missing.
#[tokio::test]
async fn a_quorum_completes_the_expanded_task_once_nothing_progressed_for_the_stall() {
    let harness = Harness::new();
    harness
        .executor
        .items
        .lock()
        .unwrap()
        .insert("list".into(), items(&["a", "b", "c", "d"]));
    *harness.executor.hold.lock().unwrap() = vec!["box[d]".into()];
    let (run, _trigger, handle) = start_in_background(&harness, fanout(0.75)).await;
    let executor = harness.executor.clone();
    eventually("every item to start", || {
        executor
            .launches()
            .iter()
            .filter(|(task, _)| task.starts_with("box["))
            .count()
            == 4
    })
    .await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    harness.clock.advance(599_000);
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(
        !launched(&harness).contains(&"report".to_string()),
        "report started before the stall ran out"
    );
    harness.clock.advance(1_000);
    assert_eq!(handle.await.unwrap()[0].state, RunState::Degraded);
    let mut started = launched(&harness);
    started.sort();
    assert_eq!(
        started,
        ["box[a]", "box[b]", "box[c]", "box[d]", "list", "report"],
        "each item ran once, and the expanded task itself ran no process"
    );
    let tasks = harness.store.task_runs(run).await.unwrap();
    let find = |name: &str| tasks.iter().find(|task| task.task == name).unwrap();
    assert_eq!(find("box").outcome, Some(Outcome::Succeeded));
    assert_eq!(
        find("box").message.as_deref(),
        Some(
            "3/4 · 1 open; missing: d; the quorum was met and no item progressed for the stall limit"
        )
    );
    assert_eq!(find("box[d]").outcome, Some(Outcome::Cancelled));
    let run_record = harness.store.run(run).await.unwrap();
    assert_eq!(
        run_record.message.as_deref(),
        Some("1 of 4 items of box missing")
    );
}

/// An item retries on its own; too few items succeeding fails the expanded task, and what is
/// downstream of it is `upstream_failed`.
#[tokio::test]
async fn items_retry_on_their_own_and_too_few_fail_the_task() {
    let harness = Harness::new();
    harness
        .executor
        .items
        .lock()
        .unwrap()
        .insert("list".into(), items(&["a", "b"]));
    harness
        .executor
        .script("box[a]", &[Outcome::Failed, Outcome::Succeeded]);
    harness
        .executor
        .script("box[b]", &[Outcome::FailedPermanent]);
    let mut engine = harness.engine(fanout(1.0));
    let run = created_run(&mut engine).await;
    let (_trigger, shutdown) = keel_engine::Shutdown::channel();
    let executing = tokio::spawn(async move { engine.execute(&[run], shutdown).await.unwrap() });
    let executor = harness.executor.clone();
    eventually("the failed item's retry to be due", || {
        executor.launches().iter().any(|(task, _)| task == "box[a]")
    })
    .await;
    // Its backoff (at most `max`, 60 s) passes on the manual clock.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        harness.clock.advance(10_000);
    }
    assert_eq!(executing.await.unwrap()[0].state, RunState::Failed);
    let attempts: Vec<(String, u32)> = harness
        .executor
        .launches()
        .into_iter()
        .filter(|(task, _)| task.starts_with("box"))
        .collect();
    assert!(attempts.contains(&("box[a]".into(), 2)), "{attempts:?}");
    assert!(!attempts.contains(&("box[b]".into(), 2)), "{attempts:?}");
    let tasks = harness.store.task_runs(run).await.unwrap();
    let find = |name: &str| tasks.iter().find(|task| task.task == name).unwrap();
    assert_eq!(find("box").outcome, Some(Outcome::Failed));
    assert_eq!(
        find("box").message.as_deref(),
        Some("1/2 · 1 failed; missing: b")
    );
    assert_eq!(find("report").outcome, Some(Outcome::UpstreamFailed));
}

/// A cancel while items run: the running items are stopped, those not started are cancelled,
/// and the expanded task and what is downstream end `cancelled`.
#[tokio::test]
async fn a_cancel_stops_running_items_and_cancels_the_rest() {
    let harness = Harness::new();
    harness
        .executor
        .items
        .lock()
        .unwrap()
        .insert("list".into(), items(&["a", "b", "c"]));
    *harness.executor.hold.lock().unwrap() = vec!["box[a]".into(), "box[b]".into()];
    let mut spec = fanout(1.0);
    spec.concurrency = 2;
    let (run, _trigger, handle) = start_in_background(&harness, spec).await;
    let executor = harness.executor.clone();
    eventually("two items to run", || {
        executor
            .launches()
            .iter()
            .filter(|(task, _)| task.starts_with("box["))
            .count()
            == 2
    })
    .await;
    harness.store.request_cancel(run, 5).await.unwrap();
    assert_eq!(handle.await.unwrap()[0].state, RunState::Cancelled);
    let outcomes: Vec<(String, Option<Outcome>)> = harness
        .store
        .task_runs(run)
        .await
        .unwrap()
        .into_iter()
        .map(|task| (task.task, task.outcome))
        .collect();
    for (task, outcome) in &outcomes {
        if task != "list" {
            assert_eq!(*outcome, Some(Outcome::Cancelled), "{task}: {outcomes:?}");
        }
    }
    assert!(
        !launched(&harness).contains(&"box[c]".to_string()),
        "an item not started stays so"
    );
}

/// Items share their task's resources: a bulkhead of 3 and a rate of 2 a second over twelve
/// items and the task that lists them; every item runs, never more than 3 at once.
#[tokio::test]
async fn items_wait_for_their_resources_and_all_of_them_run() {
    let harness = Harness::new();
    let keys: Vec<String> = (0..12).map(|index| format!("g{index:02}")).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    harness
        .executor
        .items
        .lock()
        .unwrap()
        .insert("list".into(), items(&keys));
    let mut spec = fanout(1.0);
    // A task beside the items on the same resource, whose sensor passes while they run.
    spec.tasks.push(sensed(
        task("props", "scrape", &[], 2),
        1_000,
        2_000,
        3_600_000,
    ));
    harness
        .executor
        .sensor_scripts
        .lock()
        .unwrap()
        .insert("props".into(), [Outcome::NotReady; 3].into_iter().collect());
    *harness.executor.hold.lock().unwrap() = keys.iter().map(|key| format!("box[{key}]")).collect();
    let mut feed = resource("feed");
    feed.concurrency = Some(3);
    feed.rate = Some(keel_model::Rate {
        tokens: 2,
        per: Duration::from_secs(1),
    });
    let spec = with_resource(spec, feed);
    let (_run, _trigger, handle) = start_in_background(&harness, spec).await;
    let executor = harness.executor.clone();
    let mut steps = 0;
    while !handle.is_finished() {
        steps += 1;
        // The items are let go one at a time, a step apart.
        if steps % 5 == 0 {
            executor.release.notify_one();
        }
        assert!(
            steps < 2_000,
            "the run stalled: {:?}",
            harness.executor.launches()
        );
        harness.clock.advance(100);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(handle.await.unwrap()[0].state, RunState::Succeeded);
    assert!(*harness.executor.running_max.lock().unwrap() <= 3);
}
