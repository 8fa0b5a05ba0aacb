//! Remediation from downstream through the whole engine and a real store: the heals a run made
//! are read back from its event log by a restarted Keel, so a restart neither forgets the budget
//! used nor heals again beyond it.

use std::collections::VecDeque;

use keel_model::EventKind;

use super::*;

fn heal_events(events: &[keel_store::EventRecord], kind: EventKind) -> usize {
    events.iter().filter(|event| event.kind == kind).count()
}

#[tokio::test]
async fn a_restarted_keel_counts_the_heals_made_and_ends_with_one_exhausted_heal() {
    let harness = Harness::new();
    // `b` fails and asks to heal `a` every time: the budget of one heal is spent by the first.
    harness
        .executor
        .script("b", &[Outcome::Failed, Outcome::Failed]);
    harness.executor.heals.lock().unwrap().insert(
        "b".into(),
        VecDeque::from([vec!["a".to_string()], vec!["a".to_string()]]),
    );
    *harness.executor.hold.lock().unwrap() = vec!["a".into()];
    let spec = pipeline(vec![task("a", "a", &[], 1), task("b", "b", &[], 1)], 8);
    let (run, trigger, handle) = start_in_background(&harness, spec.clone()).await;
    let executor = harness.executor.clone();
    eventually("a to start", || executor.launches().len() == 1).await;
    harness.executor.release.notify_waiters();
    // `a` succeeded, `b` failed and asked to heal it, and `a` runs again: Keel stops there.
    eventually("the healed a to start", || executor.launches().len() == 3).await;
    assert_eq!(
        executor.launches(),
        [
            ("a".to_string(), 1),
            ("b".to_string(), 1),
            ("a".to_string(), 2)
        ]
    );
    trigger.now();
    assert_eq!(handle.await.unwrap()[0].state, RunState::Running);
    let events = harness.store.events(run).await.unwrap();
    assert_eq!(heal_events(&events, EventKind::HealRequested), 1);
    let tasks = harness.store.task_runs(run).await.unwrap();
    // The heal charged no one: `b` waits for `a` again, pending, with no attempt used.
    let b = tasks.iter().find(|task| task.task == "b").unwrap();
    assert_eq!((b.state, b.charged), (TaskState::Pending, 0));

    // A new Keel finds the heal made: `b`'s second request is over the budget.
    harness.executor.hold.lock().unwrap().clear();
    let mut engine = harness.engine(spec);
    assert_eq!(
        run_partition(&mut engine, "2026-01-18").await,
        RunState::Failed
    );
    let events = harness.store.events(run).await.unwrap();
    assert_eq!(heal_events(&events, EventKind::HealRequested), 1);
    assert_eq!(heal_events(&events, EventKind::HealExhausted), 1);
    let launches = harness.executor.launches();
    assert_eq!(launches.iter().filter(|(task, _)| task == "b").count(), 2);
    let b = harness
        .store
        .task_runs(run)
        .await
        .unwrap()
        .into_iter()
        .find(|task| task.task == "b")
        .unwrap();
    assert_eq!(b.outcome, Some(Outcome::Failed));
    assert!(
        b.message
            .as_deref()
            .unwrap()
            .contains("heal of \"a\" not made: the run's heal budget (1) is spent"),
        "{:?}",
        b.message
    );
}
