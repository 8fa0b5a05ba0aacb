//! How a task reads its inputs: soft inputs (`after = [{ task, soft = true }]`) and targeted
//! reconciliation (`inputs = [...]`), on the fake executor and the manual clock.

use std::collections::HashMap;
use std::time::Duration;

use keel_model::{Outcome, RunState, TaskEdges};
use keel_store::Store;

use crate::{
    Harness, eventually, gated_pipeline, outcomes, pipeline, run_partition, start_in_background,
    task,
};

fn soft(mut spec: keel_model::TaskSpec, names: &[&str]) -> keel_model::TaskSpec {
    spec.edges = TaskEdges {
        soft: names.iter().map(|name| name.to_string()).collect(),
        inputs: None,
        earlier: Vec::new(),
    };
    spec
}

/// The environment of `task`'s first launch.
fn env_of(harness: &Harness, task: &str) -> HashMap<String, String> {
    let launches = harness.executor.launches.lock().unwrap();
    let (_, _, env) = launches
        .iter()
        .find(|(name, _, _)| name == task)
        .unwrap_or_else(|| panic!("{task} never launched"));
    env.iter().cloned().collect()
}

/// odds (fails for good) and stats → model (odds soft, stats hard) → report.
fn soft_pipeline() -> keel_model::PipelineSpec {
    pipeline(
        vec![
            task("odds", "fetch", &[], 1),
            task("stats", "fetch", &[], 1),
            soft(task("model", "fetch", &["odds", "stats"], 1), &["odds"]),
            task("report", "publish", &[], 1),
        ],
        4,
    )
}

#[tokio::test]
async fn a_soft_input_that_fails_for_good_lets_its_dependent_run_and_says_so() {
    let harness = Harness::new();
    harness.executor.script("odds", &[Outcome::FailedPermanent]);
    let mut engine = harness.engine(soft_pipeline());
    assert_eq!(
        run_partition(&mut engine, "2026-01-18").await,
        RunState::Failed,
        "odds itself failed"
    );
    let run = harness
        .store
        .latest_run("test", "2026-01-18")
        .await
        .unwrap()
        .unwrap();
    let outcomes = outcomes(&harness, run.id).await;
    assert_eq!(outcomes["model"], Some(Outcome::Succeeded));
    assert_eq!(outcomes["odds"], Some(Outcome::FailedPermanent));
    // The phase edge is not soft: publish still waits for a complete fetch phase.
    assert_eq!(outcomes["report"], Some(Outcome::UpstreamFailed));
    assert_eq!(env_of(&harness, "model")["KEEL_MISSING"], "odds");
    assert!(
        !env_of(&harness, "stats").contains_key("KEEL_MISSING"),
        "only a task with soft inputs gets KEEL_MISSING"
    );
}

#[tokio::test]
async fn a_soft_input_is_still_waited_for_and_a_hard_one_still_blocks() {
    let harness = Harness::new();
    let mut engine = harness.engine(soft_pipeline());
    assert_eq!(
        run_partition(&mut engine, "2026-01-18").await,
        RunState::Succeeded
    );
    let order: Vec<String> = harness
        .executor
        .launches()
        .into_iter()
        .map(|(task, _)| task)
        .collect();
    let position = |name: &str| order.iter().position(|task| task == name).unwrap();
    assert!(position("odds") < position("model"), "{order:?}");
    assert_eq!(env_of(&harness, "model")["KEEL_MISSING"], "");

    let harness = Harness::new();
    harness
        .executor
        .script("stats", &[Outcome::FailedPermanent]);
    let mut engine = harness.engine(soft_pipeline());
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
    assert_eq!(
        outcomes(&harness, run.id).await["model"],
        Some(Outcome::UpstreamFailed),
        "stats is a hard input"
    );
}

/// A soft input's own upstream fails: the soft input ends upstream_failed, and its dependent
/// still runs, listing it as missing.
#[tokio::test]
async fn a_soft_input_that_never_ran_is_missing_too() {
    let harness = Harness::new();
    harness
        .executor
        .script("lines", &[Outcome::FailedPermanent]);
    let spec = pipeline(
        vec![
            task("lines", "fetch", &[], 1),
            task("odds", "fetch", &["lines"], 1),
            soft(task("model", "fetch", &["odds"], 1), &["odds"]),
        ],
        4,
    );
    let mut engine = harness.engine(spec);
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
    let outcomes = outcomes(&harness, run.id).await;
    assert_eq!(outcomes["odds"], Some(Outcome::UpstreamFailed));
    assert_eq!(outcomes["model"], Some(Outcome::Succeeded));
    assert_eq!(env_of(&harness, "model")["KEEL_MISSING"], "odds");
}

/// The gated pipeline (analytics a1..a5, gate 60% with a1, a2) with precompute tasks that say
/// what they read: `features` reads a1 only, `shots` reads a5; predictions: `predict` reads
/// features, `props` reads shots, `board` says nothing and so reads everything upstream.
fn targeted_pipeline() -> keel_model::PipelineSpec {
    let mut spec = gated_pipeline(60_000);
    let reads = |mut spec: keel_model::TaskSpec, inputs: &[&str]| {
        spec.edges.inputs = Some(inputs.iter().map(|name| name.to_string()).collect());
        spec
    };
    spec.tasks
        .retain(|task| task.phase != "precompute" && task.phase != "predictions");
    spec.tasks.extend([
        reads(task("features", "precompute", &[], 1), &["a1"]),
        reads(task("shots", "precompute", &[], 1), &["a5"]),
        reads(task("predict", "predictions", &[], 1), &["features"]),
        reads(task("props", "predictions", &[], 1), &["shots"]),
        task("board", "predictions", &[], 1),
    ]);
    spec
}

#[tokio::test]
async fn a_late_task_reruns_only_the_tasks_that_read_it() {
    let harness = Harness::new();
    *harness.executor.hold.lock().unwrap() = vec!["a5".into()];
    let (run, _trigger, handle) = start_in_background(&harness, targeted_pipeline()).await;
    let executor = harness.executor.clone();
    eventually("the analytics tasks to run", || {
        executor.launches().len() == 6
    })
    .await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    // The grace runs out on the manual clock: downstream proceeds without a5.
    harness.clock.advance(60_000);
    eventually("the predictions to run without a5", || {
        let launched = executor.launches();
        ["predict", "props", "board"]
            .iter()
            .all(|name| launched.iter().any(|(task, _)| task == name))
    })
    .await;
    harness.executor.hold.lock().unwrap().clear();
    harness.executor.release.notify_waiters();
    assert_eq!(handle.await.unwrap()[0].state, RunState::Succeeded);
    let launched: Vec<String> = harness
        .executor
        .launches()
        .into_iter()
        .map(|(task, _)| task)
        .collect();
    let count = |name: &str| launched.iter().filter(|task| *task == name).count();
    assert_eq!(count("shots"), 2, "shots reads a5: {launched:?}");
    assert_eq!(count("props"), 2, "props reads shots: {launched:?}");
    assert_eq!(count("board"), 2, "board reads everything: {launched:?}");
    assert_eq!(count("features"), 1, "features reads only a1: {launched:?}");
    assert_eq!(
        count("predict"),
        1,
        "predict reads only features: {launched:?}"
    );
    let events = harness.store.events(run).await.unwrap();
    let reset: Vec<&str> = events
        .iter()
        .filter(|event| event.detail.contains("landed late"))
        .filter_map(|event| event.task.as_deref())
        .collect();
    assert!(!reset.contains(&"features"), "{reset:?}");
}

/// raw: load; analytics a1..a5 gated by tiers (100% at once, 80% with a1 after 1 h, 40% after
/// 2 h); precompute: features.
fn tiered_pipeline() -> keel_model::PipelineSpec {
    let mut spec = gated_pipeline(0);
    let tier = |after_ms: u64, min_share: f64, required: &[&str]| keel_model::GateTier {
        after: Duration::from_millis(after_ms),
        required: required.iter().map(|name| name.to_string()).collect(),
        min_share,
    };
    spec.phases[1].gate = Some(keel_model::GateSpec {
        required: vec![],
        min_share: 0.4,
        grace: Duration::ZERO,
        tiers: vec![
            tier(0, 1.0, &[]),
            tier(3_600_000, 0.8, &["a1"]),
            tier(7_200_000, 0.4, &[]),
        ],
    });
    spec
}

#[tokio::test]
async fn a_tiered_gate_relaxes_on_the_clock_and_says_which_tier_opened_it() {
    let harness = Harness::new();
    // a4 and a5 hang: 3 of 5 (60%) complete, which only the third tier accepts.
    *harness.executor.hold.lock().unwrap() = vec!["a4".into(), "a5".into()];
    *harness.executor.pinned.lock().unwrap() = vec!["a4".into(), "a5".into()];
    let (run, trigger, handle) = start_in_background(&harness, tiered_pipeline()).await;
    let executor = harness.executor.clone();
    eventually("the analytics tasks to run", || {
        executor.launches().len() == 6
    })
    .await;
    let started = |name: &str| executor.launches().iter().any(|(task, _)| task == name);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!started("features"), "tier 1 asks for every task");
    // Into tier 2 (80%): 60% is not enough.
    harness.clock.advance(3_600_000);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!started("features"), "tier 2 asks for 80%");
    // Into tier 3 (40%): the timer of the injected clock judges the gate again.
    harness.clock.advance(3_600_000);
    eventually("features to start in tier 3", || started("features")).await;
    let events = harness.store.events(run).await.unwrap();
    let opened = events
        .iter()
        .find(|event| event.kind == "gate_opened")
        .expect("a gate_opened event");
    assert!(
        opened.detail.contains("without a4, a5") && opened.detail.contains("tier 3 of 3"),
        "{}",
        opened.detail
    );
    trigger.now();
    let _ = handle.await;
}

#[tokio::test]
async fn a_tiered_gate_opens_in_the_tier_in_force_and_fails_when_no_tier_can_be_met() {
    // a5 fails at once: 80% with a1 is met as soon as tier 2 starts.
    let harness = Harness::new();
    harness.executor.script("a5", &[Outcome::FailedPermanent]);
    let (run, _trigger, handle) = start_in_background(&harness, tiered_pipeline()).await;
    let executor = harness.executor.clone();
    eventually("the analytics tasks to run", || {
        executor.launches().len() == 6
    })
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !executor
            .launches()
            .iter()
            .any(|(task, _)| task == "features")
    );
    harness.clock.advance(3_600_000);
    assert_eq!(handle.await.unwrap()[0].state, RunState::Degraded);
    let events = harness.store.events(run).await.unwrap();
    assert!(
        events
            .iter()
            .any(|event| event.kind == "gate_opened" && event.detail.contains("tier 2 of 3")),
        "{events:?}"
    );

    // Four of five fail: 20% meets no tier, now or later, so the gate fails at once.
    let harness = Harness::new();
    for name in ["a2", "a3", "a4", "a5"] {
        harness.executor.script(name, &[Outcome::FailedPermanent]);
    }
    let mut engine = harness.engine(tiered_pipeline());
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
    assert_eq!(
        outcomes(&harness, run.id).await["features"],
        Some(Outcome::UpstreamFailed)
    );
}
