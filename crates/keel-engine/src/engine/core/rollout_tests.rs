//! The rollout rules on the core alone: no runtime, no database, time set by hand.

use std::collections::BTreeMap;
use std::sync::Mutex;

use keel_model::{RolloutSpec, VersionStatus};
use keel_store::TaskVersionRecord;

use super::super::tests::{chain_core_with, finishes, loaded};
use super::*;

/// The loaded run's partition.
const PARTITION: &str = "2026-01-18";

fn rollout(percent: u8, promote_after: u32, min_metrics: &[(&str, f64)]) -> RolloutSpec {
    RolloutSpec {
        canary_percent: percent,
        promote_after,
        max_failure_rate: 0.0,
        min_metrics: min_metrics
            .iter()
            .map(|(name, floor)| (name.to_string(), *floor))
            .collect::<BTreeMap<_, _>>(),
    }
}

/// The largest share of partitions whose canary leaves [`PARTITION`] out.
fn share_without_the_partition() -> u8 {
    (1..=99)
        .rev()
        .find(|percent| !rollout(*percent, 1, &[]).is_canary_partition("core", "a", PARTITION))
        .expect("some share leaves the partition out")
}

/// A core whose task `a` (one attempt) has `rollout` and a new command, with the version before
/// it (`old-a`) promoted in the store and its own a canary; and what it reports.
fn canary_core(rollout: RolloutSpec) -> (Core, std::sync::Arc<Mutex<Vec<Progress>>>) {
    let mut core = chain_core_with(|tasks, _| {
        tasks[0].retries.attempts = 1;
        tasks[0].command = vec!["new-a".into(), "{date}".into()];
        tasks[0].versioning.rollout = Some(rollout);
    });
    let mut old = core.spec.tasks[0].clone();
    old.command = vec!["old-a".into(), "{date}".into()];
    let record = |version: &str, spec: &TaskSpec, status| TaskVersionRecord {
        pipeline: "core".into(),
        task: "a".into(),
        version: version.into(),
        spec: serde_json::to_string(spec).unwrap(),
        status,
        clean: 0,
        failed: 0,
        reason: None,
        created_at: 0,
        updated_at: 0,
    };
    let current = core.task_versions[0].clone();
    let new_spec = core.spec.tasks[0].clone();
    core.load_rollouts(&[
        record(&current, &new_spec, VersionStatus::Canary),
        record("old", &old, VersionStatus::Promoted),
    ]);
    let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    core.observer = Box::new(move |progress| sink.lock().unwrap().push(progress));
    (core, seen)
}

/// Starts what is ready as the store would claim it (with the version the claim records), and
/// returns each attempt's id, task, version and command.
fn launch(
    core: &mut Core,
    book: &mut Book,
    next_id: &mut i64,
) -> Vec<(AttemptId, String, String, Vec<String>)> {
    let picked = core.pick_ready(book, 8);
    picked
        .into_iter()
        .map(|(run_index, task)| {
            *next_id += 1;
            let number = book.runs[run_index].slots[task].attempts + 1;
            let version = core.chosen_version(&book.runs[run_index].record, task);
            let attempt = AttemptRecord {
                id: AttemptId(*next_id),
                run: RunId(1),
                pipeline: "core".into(),
                partition: PARTITION.into(),
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
                task_version: Some(version.clone()),
            };
            let launch = core.prepare_attempt(book, run_index, task, &attempt);
            (attempt.id, attempt.task, version, launch.command)
        })
        .collect()
}

fn version_changes(book: &Book) -> Vec<(VersionStatus, keel_model::EventKind, String)> {
    book.writes
        .iter()
        .filter_map(|write| match write {
            Write::TaskVersion(change) => {
                Some((change.status, change.event, change.detail.clone()))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_broken_canary_is_rolled_back_and_its_partition_reruns_on_the_promoted_version() {
    let (mut core, seen) = canary_core(rollout(100, 3, &[]));
    let current = core.task_versions[0].clone();
    let mut book = loaded(&mut core, 1_000);
    let mut ids = 0;
    let first = launch(&mut core, &mut book, &mut ids);
    assert_eq!(
        first[0].2, current,
        "the canary's partition runs the new version"
    );
    assert_eq!(first[0].3, ["new-a", PARTITION]);
    assert_eq!(
        version_changes(&book)[0].1,
        keel_model::EventKind::RolloutCanary,
        "the canary's start is in the event log"
    );
    book.writes.clear();

    let mut broken = Report::new(
        Outcome::Failed,
        "ModuleNotFoundError: No module named 'hoops'",
    );
    broken.exit_code = Some(1);
    core.on_reports(&mut book, vec![(first[0].0, broken)])
        .unwrap();
    let changes = version_changes(&book);
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0].0, VersionStatus::RolledBack);
    assert_eq!(changes[0].1, keel_model::EventKind::RolloutRolledBack);
    assert!(
        changes[0].2.contains("ModuleNotFoundError"),
        "{}",
        changes[0].2
    );
    assert!(changes[0].2.contains("to version old"), "{}", changes[0].2);
    // Its one attempt is not used up: the task runs again at once.
    assert_eq!(
        finishes(&book)[0].2,
        TaskNext::Retry {
            not_before: 1_000,
            charge: false
        }
    );
    assert!(seen.lock().unwrap().iter().any(|progress| matches!(
        progress,
        Progress::RolloutDecided {
            status: VersionStatus::RolledBack,
            ..
        }
    )));
    book.writes.clear();

    core.fire_timers(&mut book);
    let rerun = launch(&mut core, &mut book, &mut ids);
    assert_eq!(rerun[0].2, "old");
    assert_eq!(rerun[0].3, ["old-a", PARTITION]);
    core.on_reports(
        &mut book,
        vec![(rerun[0].0, Report::new(Outcome::Succeeded, "ok"))],
    )
    .unwrap();
    assert_eq!(finishes(&book)[0].2, TaskNext::Done(Outcome::Succeeded));
    assert!(
        version_changes(&book).is_empty(),
        "the promoted version's attempts count for no canary"
    );
}

#[test]
fn partitions_outside_the_canary_run_the_promoted_version() {
    let (mut core, _) = canary_core(rollout(share_without_the_partition(), 3, &[]));
    let mut book = loaded(&mut core, 1_000);
    let mut ids = 0;
    let first = launch(&mut core, &mut book, &mut ids);
    assert_eq!(first[0].2, "old");
    assert_eq!(first[0].3, ["old-a", PARTITION]);
    assert!(version_changes(&book).is_empty(), "no canary ran");
}

#[test]
fn clean_canary_attempts_promote_the_version() {
    let (mut core, seen) = canary_core(rollout(100, 1, &[]));
    let current = core.task_versions[0].clone();
    let mut book = loaded(&mut core, 1_000);
    let mut ids = 0;
    let first = launch(&mut core, &mut book, &mut ids);
    book.writes.clear();
    core.on_reports(
        &mut book,
        vec![(first[0].0, Report::new(Outcome::Succeeded, "ok"))],
    )
    .unwrap();
    let changes = version_changes(&book);
    assert_eq!(changes[0].0, VersionStatus::Promoted);
    assert_eq!(changes[0].1, keel_model::EventKind::RolloutPromoted);
    assert!(seen.lock().unwrap().iter().any(|progress| matches!(
        progress,
        Progress::RolloutDecided { status: VersionStatus::Promoted, version, .. } if *version == current
    )));
    // From now on every partition runs it.
    assert_eq!(core.rollouts[0].status, VersionStatus::Promoted);
    assert!(core.rollouts[0].previous.is_none());
}

#[test]
fn a_metric_below_its_floor_is_a_regression_that_rolls_back() {
    let (mut core, _) = canary_core(rollout(100, 3, &[("accuracy", 0.4)]));
    let mut book = loaded(&mut core, 1_000);
    let mut ids = 0;
    let first = launch(&mut core, &mut book, &mut ids);
    book.writes.clear();
    let mut report = Report::new(Outcome::Succeeded, "done");
    report.metrics = Some(r#"{"accuracy":0.19}"#.into());
    core.on_reports(&mut book, vec![(first[0].0, report)])
        .unwrap();
    let changes = version_changes(&book);
    assert_eq!(changes[0].0, VersionStatus::RolledBack);
    assert!(
        changes[0]
            .2
            .contains("metric accuracy 0.19 is below its floor 0.4"),
        "{}",
        changes[0].2
    );
    // The partition's output is made again by the promoted version.
    assert!(matches!(
        finishes(&book)[0].2,
        TaskNext::Retry { charge: false, .. }
    ));
}

#[test]
fn a_stored_version_that_does_not_read_back_is_not_run() {
    let mut core = chain_core_with(|tasks, _| {
        tasks[0].versioning.rollout = Some(rollout(100, 3, &[]));
    });
    let current = core.task_versions[0].clone();
    core.load_rollouts(&[TaskVersionRecord {
        pipeline: "core".into(),
        task: "a".into(),
        version: "old".into(),
        spec: "not json".into(),
        status: VersionStatus::Promoted,
        clean: 0,
        failed: 0,
        reason: None,
        created_at: 0,
        updated_at: 0,
    }]);
    let mut book = loaded(&mut core, 1_000);
    let mut ids = 0;
    let first = launch(&mut core, &mut book, &mut ids);
    assert_eq!(
        first[0].2, current,
        "the file's version runs when there is no other"
    );
}
