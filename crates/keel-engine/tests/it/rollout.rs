//! Canary rollout on the fake executor and a manual clock, across engines on one store: the
//! counts and decisions are stored as they are taken, so an engine started again (a restart, a
//! reload) carries the rollout on.

use super::*;

/// A pipeline whose task `a` (one attempt) runs `build` (its `BUILD` variable tells the
/// versions apart in the launches), with a canary on every partition.
fn versioned(build: &str) -> PipelineSpec {
    let mut a = task("a", "p0", &[], 1);
    a.context.env.insert("BUILD".into(), build.into());
    a.versioning.rollout = Some(keel_model::RolloutSpec {
        canary_percent: 100,
        promote_after: 2,
        max_failure_rate: 0.0,
        min_metrics: Default::default(),
    });
    pipeline(vec![a, task("b", "p1", &[], 1)], 4)
}

/// The `BUILD` of each launch of `a`, in order.
fn builds(executor: &FakeExecutor) -> Vec<String> {
    executor
        .launches
        .lock()
        .unwrap()
        .iter()
        .filter(|(task, _, _)| task == "a")
        .filter_map(|(_, _, env)| {
            env.iter()
                .find(|(name, _)| name == "BUILD")
                .map(|(_, value)| value.clone())
        })
        .collect()
}

async fn status_of(
    harness: &Harness,
    build_version: &str,
) -> (keel_model::VersionStatus, u32, u32) {
    let record = harness
        .store
        .task_versions("test")
        .await
        .unwrap()
        .into_iter()
        .find(|record| record.task == "a" && record.version == build_version)
        .unwrap();
    (record.status, record.clean, record.failed)
}

/// The version the engine gives task `a` of `spec` (no version command, no code files).
fn version_of(spec: PipelineSpec) -> String {
    let json = serde_json::to_string(&spec.tasks[0]).unwrap();
    keel_model::task_version_of(&json, "")
}

#[tokio::test]
async fn a_canary_is_counted_across_engines_promoted_and_a_broken_one_rolled_back() {
    let harness = Harness::new();
    let v1 = version_of(versioned("v1"));
    let v2 = version_of(versioned("v2"));
    let v3 = version_of(versioned("v3"));

    // The first version is promoted as it is first run.
    let mut engine = harness.engine(versioned("v1"));
    assert_eq!(
        run_partition(&mut engine, "2026-01-01").await,
        RunState::Succeeded
    );
    assert_eq!(
        status_of(&harness, &v1).await.0,
        keel_model::VersionStatus::Promoted
    );

    // Version 2's first clean canary attempt is counted and stored; a new engine takes the
    // count up and promotes it at the second.
    let mut engine = harness.engine(versioned("v2"));
    assert_eq!(
        run_partition(&mut engine, "2026-01-02").await,
        RunState::Succeeded
    );
    assert_eq!(
        status_of(&harness, &v2).await,
        (keel_model::VersionStatus::Canary, 1, 0)
    );
    drop(engine);
    let mut engine = harness.engine(versioned("v2"));
    harness.clock.advance(60_000);
    assert_eq!(
        run_partition(&mut engine, "2026-01-03").await,
        RunState::Succeeded
    );
    assert_eq!(
        status_of(&harness, &v2).await,
        (keel_model::VersionStatus::Promoted, 2, 0)
    );
    assert_eq!(
        status_of(&harness, &v1).await.0,
        keel_model::VersionStatus::Retired
    );

    // Version 3 fails its canary attempt: it is rolled back and the partition runs again on
    // version 2, without using up its one attempt, and succeeds.
    harness.executor.script("a", &[Outcome::Failed]);
    let mut engine = harness.engine(versioned("v3"));
    harness.clock.advance(60_000);
    assert_eq!(
        run_partition(&mut engine, "2026-01-04").await,
        RunState::Succeeded
    );
    assert_eq!(
        status_of(&harness, &v3).await,
        (keel_model::VersionStatus::RolledBack, 0, 1)
    );
    assert_eq!(builds(&harness.executor), ["v1", "v2", "v2", "v3", "v2"]);
    let run = harness
        .store
        .latest_run("test", "2026-01-04")
        .await
        .unwrap()
        .unwrap();
    let attempts = harness.store.attempts(run.id).await.unwrap();
    let versions: Vec<Option<&str>> = attempts
        .iter()
        .filter(|attempt| attempt.task == "a")
        .map(|attempt| attempt.task_version.as_deref())
        .collect();
    assert_eq!(versions, [Some(v3.as_str()), Some(v2.as_str())]);
    let events = harness.store.events(run.id).await.unwrap();
    let rolled_back = events
        .iter()
        .find(|event| event.kind == keel_model::EventKind::RolloutRolledBack)
        .expect("the rollback is in the run's event log");
    assert!(
        rolled_back
            .detail
            .contains(&format!("rolled back version {v3} to version {v2}")),
        "{}",
        rolled_back.detail
    );

    // A restarted engine with version 3 still runs version 2: the rollback is remembered.
    let mut engine = harness.engine(versioned("v3"));
    harness.clock.advance(60_000);
    assert_eq!(
        run_partition(&mut engine, "2026-01-05").await,
        RunState::Succeeded
    );
    assert_eq!(
        builds(&harness.executor).last().map(String::as_str),
        Some("v2")
    );
}
