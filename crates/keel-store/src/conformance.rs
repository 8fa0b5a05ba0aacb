//! The behaviour every [`Store`] backend must show. A backend's test calls [`run_all`] with a
//! factory that makes an empty store, each check getting a fresh one, and a function that opens
//! a store again the way a new Keel process would.
//!
//! ```text
//! keel_store::conformance::run_all(
//!     || async { MyStore::connect(new_url()).await.unwrap() },
//!     |store: &MyStore| { let url = store.url(); async move { MyStore::connect(url).await.unwrap() } },
//! ).await;
//! ```

use std::future::Future;

use keel_model::{EventKind, Outcome, RunId, RunState, TaskState};

use crate::*;

fn new_run(partition: &str, tasks: &[&str]) -> NewRun {
    NewRun {
        pipeline: "conformance".into(),
        partition: partition.into(),
        version: "v1".into(),
        trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
        tasks: tasks
            .iter()
            .map(|task| (task.to_string(), "main".to_string(), None))
            .collect(),
        at: 1_000,
        pass: None,
    }
}

fn new_pass_run(partition: &str, tasks: &[&str], pass: &str) -> NewRun {
    NewRun {
        pass: Some(pass.into()),
        ..new_run(partition, tasks)
    }
}

fn claim(run: keel_model::RunId, task: &str, at: i64) -> ClaimAttempt {
    ClaimAttempt {
        run,
        task: task.into(),
        owner: "owner-a".into(),
        dir: format!("/tmp/{task}"),
        version: "v1".into(),
        task_version: Some(format!("{task}-v1")),
        lease_expires_at: at + 60_000,
        at,
    }
}

fn finish(attempt: &AttemptRecord, outcome: Outcome, next: TaskNext, at: i64) -> FinishAttempt {
    FinishAttempt {
        attempt: attempt.id,
        epoch: attempt.lease_epoch,
        outcome,
        exit_code: Some(0),
        rows: Some(7),
        metrics: Some(r#"{"accuracy":0.5}"#.into()),
        message: None,
        next,
        at,
    }
}

/// Runs every conformance check against fresh stores from `make`; `reopen` opens the state of a
/// store anew, as the next Keel process would. Panics on the first failure, naming the check.
pub async fn run_all<S, F, Fut, R, ReopenFut>(make: F, reopen: R)
where
    S: Store,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
    R: Fn(&S) -> ReopenFut,
    ReopenFut: Future<Output = S>,
{
    store_ids_are_unique_and_stable(make().await, make().await, reopen).await;
    run_lifecycle(make().await).await;
    claim_is_exclusive(make().await).await;
    stale_epoch_is_fenced(make().await).await;
    retries_are_durable_rows(make().await).await;
    update_tasks_leaves_running_alone(make().await).await;
    runs_are_listed_newest_first(make().await).await;
    cancel_is_recorded(make().await).await;
    batches_settle_each_item_on_its_own(make().await).await;
    a_batch_that_names_a_task_twice_settles_as_one_at_a_time(make().await).await;
    sensor_polls_are_recorded(make().await).await;
    resource_states_are_upserted(make().await).await;
    attempt_starts_are_listed_since_a_time(make().await).await;
    a_start_without_a_pid_is_recorded(make().await).await;
    applied_changes_commit_together(make().await).await;
    a_commit_is_all_or_nothing(make().await).await;
    the_status_view_reads_runs_tasks_attempts_and_breakers_together(make().await).await;
    the_status_view_selects_every_run_a_range_one_run_or_one_task(make().await).await;
    the_status_view_tells_attempts_from_checks_and_probes(make().await).await;
    leases_are_renewed_fenced_and_expire(make().await).await;
    events_stream_in_order_across_runs(make().await).await;
    a_rerun_owed_survives_until_the_task_is_reset(make().await).await;
    sensor_polls_are_counted_until_a_reset(make().await).await;
    a_wait_keeps_its_first_start_until_a_reset(make().await).await;
    tasks_added_to_a_finished_run_are_pending_and_run_the_new_version(make().await).await;
    a_schedule_fire_is_recorded_once_with_its_run(make().await).await;
    runs_of_a_pass_are_kept_apart(make().await).await;
    recent_events_are_the_newest_of_some_kinds_in_one_pipeline(make().await).await;
    flags_are_set_replaced_listed_and_cleared_per_pipeline(make().await).await;
    an_expansion_is_recorded_once(make().await).await;
    task_versions_roll_out_promote_and_roll_back(make().await).await;
    every_outcome_and_event_kind_is_stored_and_read_back(make().await).await;
}

/// A backend whose schema limits the names it stores (a CHECK constraint, an enum type) would
/// refuse an outcome or an event kind added later, such as `failed_check` or `rollout_canary`:
/// every one of them is written and read back here.
async fn every_outcome_and_event_kind_is_stored_and_read_back<S: Store>(store: S) {
    let tasks: Vec<&str> = Outcome::ALL
        .iter()
        .map(|outcome| outcome.as_str())
        .collect();
    let run = store
        .create_run(new_run("2026-01-01", &tasks))
        .await
        .unwrap();
    for (number, outcome) in Outcome::ALL.iter().enumerate() {
        let at = 2_000 + number as i64;
        let attempt = store
            .claim_attempt(claim(run.id, outcome.as_str(), at))
            .await
            .unwrap();
        store
            .finish_attempt(finish(&attempt, *outcome, TaskNext::Done(*outcome), at))
            .await
            .unwrap();
    }
    let stored: Vec<(String, Option<Outcome>)> = store
        .attempts(run.id)
        .await
        .unwrap()
        .into_iter()
        .map(|attempt| (attempt.task, attempt.outcome))
        .collect();
    let expected: Vec<(String, Option<Outcome>)> = Outcome::ALL
        .iter()
        .map(|outcome| (outcome.as_str().to_string(), Some(*outcome)))
        .collect();
    assert_eq!(stored, expected, "the outcome of each attempt");
    for task in store.task_runs(run.id).await.unwrap() {
        assert_eq!(
            task.outcome.map(|outcome| outcome.as_str()),
            Some(task.task.as_str()),
            "the outcome of task run {}",
            task.task
        );
    }
    for kind in EventKind::ALL {
        store
            .append_event(NewEvent {
                run: run.id,
                task: None,
                attempt: None,
                kind: *kind,
                detail: format!("an event of kind {kind}"),
                at: 3_000,
            })
            .await
            .unwrap();
    }
    let appended: Vec<EventKind> = store
        .events(run.id)
        .await
        .unwrap()
        .into_iter()
        .filter(|event| event.at == 3_000)
        .map(|event| event.kind)
        .collect();
    assert_eq!(appended, EventKind::ALL, "the kind of each event");
}

async fn task_versions_roll_out_promote_and_roll_back<S: Store>(store: S) {
    use keel_model::VersionStatus;
    let new = |version: &str, canary: bool| NewTaskVersion {
        task: "load".into(),
        version: version.into(),
        spec: format!("{{\"command\":[\"{version}\"]}}"),
        canary,
    };
    let status_of = |versions: &[TaskVersionRecord], version: &str| {
        versions
            .iter()
            .find(|record| record.version == version)
            .map(|record| record.status)
    };
    // The first version is promoted: there is nothing to run beside it.
    let versions = store
        .register_task_versions("conformance", vec![new("v1", true)], 1_000)
        .await
        .unwrap();
    assert_eq!(status_of(&versions, "v1"), Some(VersionStatus::Promoted));
    // A new version with a rollout is a canary; registering it again changes nothing.
    for at in [2_000, 3_000] {
        let versions = store
            .register_task_versions("conformance", vec![new("v2", true)], at)
            .await
            .unwrap();
        assert_eq!(status_of(&versions, "v2"), Some(VersionStatus::Canary));
        assert_eq!(status_of(&versions, "v1"), Some(VersionStatus::Promoted));
    }
    // The engine rolls it back on a run, with the event, in one commit.
    let run = store
        .create_run(new_run("2026-01-01", &["load"]))
        .await
        .unwrap();
    store
        .commit(
            vec![Write::TaskVersion(TaskVersionChange {
                pipeline: "conformance".into(),
                task: "load".into(),
                version: "v2".into(),
                status: VersionStatus::RolledBack,
                clean: 0,
                failed: 1,
                reason: Some("attempt failed".into()),
                run: run.id,
                attempt: None,
                event: EventKind::RolloutRolledBack,
                detail: "version v2 rolled back".into(),
            })],
            4_000,
        )
        .await
        .unwrap();
    let versions = store.task_versions("conformance").await.unwrap();
    let v2 = versions
        .iter()
        .find(|record| record.version == "v2")
        .unwrap();
    assert_eq!(
        (v2.status, v2.clean, v2.failed, v2.reason.as_deref()),
        (VersionStatus::RolledBack, 0, 1, Some("attempt failed"))
    );
    let events = store.events(run.id).await.unwrap();
    assert!(
        events
            .iter()
            .any(|event| event.kind == EventKind::RolloutRolledBack)
    );
    // A version without rollout is promoted at once and retires the one before.
    let versions = store
        .register_task_versions("conformance", vec![new("v3", false)], 5_000)
        .await
        .unwrap();
    assert_eq!(status_of(&versions, "v3"), Some(VersionStatus::Promoted));
    assert_eq!(status_of(&versions, "v1"), Some(VersionStatus::Retired));
    // By hand: rolling back the promoted version promotes again the one it replaced.
    store
        .set_task_version_status(
            "conformance",
            "load",
            "v3",
            VersionStatus::RolledBack,
            "bad",
            6_000,
        )
        .await
        .unwrap();
    let versions = store.task_versions("conformance").await.unwrap();
    assert_eq!(status_of(&versions, "v3"), Some(VersionStatus::RolledBack));
    assert_eq!(status_of(&versions, "v1"), Some(VersionStatus::Promoted));
    assert!(
        store
            .set_task_version_status(
                "conformance",
                "load",
                "v9",
                VersionStatus::Promoted,
                "x",
                7_000
            )
            .await
            .is_err(),
        "an unknown version is refused"
    );
    // The file naming a retired version again promotes it again.
    let versions = store
        .register_task_versions("conformance", vec![new("v3", false)], 8_000)
        .await
        .unwrap();
    assert_eq!(
        status_of(&versions, "v3"),
        Some(VersionStatus::RolledBack),
        "a rolled-back version stays so"
    );
    let versions = store
        .register_task_versions("conformance", vec![new("v4", false)], 9_000)
        .await
        .unwrap();
    assert_eq!(status_of(&versions, "v1"), Some(VersionStatus::Retired));
    let versions = store
        .register_task_versions("conformance", vec![new("v1", true)], 10_000)
        .await
        .unwrap();
    assert_eq!(status_of(&versions, "v1"), Some(VersionStatus::Promoted));
    assert_eq!(status_of(&versions, "v4"), Some(VersionStatus::Retired));
    assert!(store.task_versions("other").await.unwrap().is_empty());
}

async fn flags_are_set_replaced_listed_and_cleared_per_pipeline<S: Store>(store: S) {
    let flag = |pipeline: &str, task: &str, state: &str, at: i64| FlagRecord {
        pipeline: pipeline.into(),
        task: task.into(),
        state: state.into(),
        set_at: at,
        set_by: "alice".into(),
    };
    store
        .set_flag(flag("hoops", "predictions", "off", 1))
        .await
        .unwrap();
    store
        .set_flag(flag("hoops", "export", "10%", 2))
        .await
        .unwrap();
    store
        .set_flag(flag("other", "export", "off", 3))
        .await
        .unwrap();
    store
        .set_flag(flag("hoops", "predictions", "25%", 4))
        .await
        .unwrap();
    assert_eq!(
        store.flags("hoops").await.unwrap(),
        vec![
            flag("hoops", "export", "10%", 2),
            flag("hoops", "predictions", "25%", 4)
        ],
        "one flag per task, the newest, listed by task; other pipelines' apart"
    );
    assert!(store.clear_flag("hoops", "export").await.unwrap());
    assert!(!store.clear_flag("hoops", "export").await.unwrap());
    assert_eq!(
        store.flags("hoops").await.unwrap(),
        vec![flag("hoops", "predictions", "25%", 4)]
    );
    assert_eq!(store.flags("other").await.unwrap().len(), 1);
}

/// The items of an expanded task are recorded with the step that read them, once: a second
/// record of the same task in the same run (a step replayed after a crash, an upstream task that
/// ran again) changes nothing, so a run never expands twice or differently. An empty list is
/// recorded too, and each run keeps its own.
async fn an_expansion_is_recorded_once<S: Store>(store: S) {
    let item = |key: &str, value: serde_json::Value| keel_model::Item {
        key: key.into(),
        value,
    };
    let run = store
        .create_run(new_run("2026-01-01", &["list", "box", "empty"]))
        .await
        .unwrap();
    let other = store
        .create_run(new_run("2026-01-02", &["list", "box", "empty"]))
        .await
        .unwrap();
    let first = vec![
        item("0021", serde_json::json!("0021")),
        item("LAL", serde_json::json!({"key": "LAL", "city": "LA"})),
    ];
    let expand = |run: RunId, task: &str, items: Vec<keel_model::Item>| Write::Run {
        run,
        change: Change::Expand {
            task: task.into(),
            items,
        },
    };
    store
        .commit(
            vec![
                expand(run.id, "box", first.clone()),
                expand(run.id, "empty", vec![]),
            ],
            2_000,
        )
        .await
        .unwrap();
    store
        .commit(
            vec![
                expand(run.id, "box", vec![item("x", serde_json::json!("x"))]),
                expand(other.id, "box", vec![item("y", serde_json::json!("y"))]),
            ],
            3_000,
        )
        .await
        .unwrap();
    let recorded = store.expansions(run.id).await.unwrap();
    assert_eq!(
        recorded,
        vec![
            ExpansionRecord {
                task: "box".into(),
                items: first,
                created_at: 2_000,
            },
            ExpansionRecord {
                task: "empty".into(),
                items: vec![],
                created_at: 2_000,
            },
        ]
    );
    // Each item of the first record is a task run of its own, in the parent's phase; the
    // ignored record added none.
    let tasks: Vec<(String, String)> = store
        .task_runs(run.id)
        .await
        .unwrap()
        .into_iter()
        .map(|task| (task.task, task.phase))
        .collect();
    let names: Vec<&str> = tasks.iter().map(|(task, _)| task.as_str()).collect();
    assert_eq!(names, ["list", "box", "empty", "box[0021]", "box[LAL]"]);
    assert_eq!(tasks[3].1, tasks[1].1);
    let elsewhere = store.expansions(other.id).await.unwrap();
    assert_eq!(elsewhere.len(), 1);
    assert_eq!(elsewhere[0].items[0].key, "y");
    let expanded: Vec<String> = store
        .events(run.id)
        .await
        .unwrap()
        .into_iter()
        .filter(|event| event.kind == EventKind::Expanded)
        .map(|event| event.detail)
        .collect();
    assert_eq!(expanded, vec!["2 items", "0 items"]);
}

/// A run records its pass. The newest run of a partition is looked up per pass; a fire of a
/// pass never joins the pipeline's own unfinished run of the partition, nor the reverse; the
/// status view shows the newest run of each (partition, pass), or of one pass.
async fn runs_of_a_pass_are_kept_apart<S: Store>(store: S) {
    let fire = |trigger: &str, fire_at| ScheduleFire {
        trigger: trigger.into(),
        fire_at,
    };
    let main = store
        .create_run_for_fire(
            new_run("2026-01-01", &["a"]),
            fire("pipeline", 5_000),
            vec![],
        )
        .await
        .unwrap();
    let FireOutcome::Created(main) = main else {
        panic!("the first fire creates a run: {main:?}");
    };
    let late = store
        .create_run_for_fire(
            new_pass_run("2026-01-01", &["a"], "late"),
            fire("pass:late", 5_000),
            vec![],
        )
        .await
        .unwrap();
    let FireOutcome::Created(late) = late else {
        panic!("a pass's fire does not join the pipeline's own run: {late:?}");
    };
    assert_ne!(late, main);
    assert_eq!(store.run(late).await.unwrap().pass.as_deref(), Some("late"));
    assert_eq!(store.run(main).await.unwrap().pass, None);
    let again = store
        .create_run_for_fire(
            new_pass_run("2026-01-01", &["a"], "late"),
            fire("pass:late", 6_000),
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        again,
        FireOutcome::Joined(late),
        "the pass's own run is unfinished"
    );
    let early = store
        .create_run(new_pass_run("2026-01-01", &["a"], "early"))
        .await
        .unwrap();
    let latest = |pass: Option<&'static str>| {
        let store = store.clone();
        async move {
            store
                .latest_run_of("conformance", "2026-01-01", pass)
                .await
                .unwrap()
                .map(|run| run.id)
        }
    };
    assert_eq!(latest(None).await, Some(main));
    assert_eq!(latest(Some("late")).await, Some(late));
    assert_eq!(latest(Some("early")).await, Some(early.id));
    assert_eq!(latest(Some("other")).await, None);
    assert_eq!(
        store
            .latest_run("conformance", "2026-01-01")
            .await
            .unwrap()
            .map(|run| run.id),
        Some(main),
        "latest_run is the pipeline's own"
    );
    store
        .set_run_state(late, RunState::Succeeded, None, 7_000)
        .await
        .unwrap();
    let main_fire = store
        .create_run_for_fire(
            new_run("2026-01-01", &["a"]),
            fire("pipeline", 8_000),
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        main_fire,
        FireOutcome::Joined(main),
        "the pipeline's own run is still unfinished, whatever the pass did"
    );

    let every = store
        .status_view(&StatusQuery::new("conformance"))
        .await
        .unwrap();
    let mut shown: Vec<(RunId, Option<String>)> = every
        .runs
        .iter()
        .map(|run| (run.record.id, run.record.pass.clone()))
        .collect();
    shown.sort();
    assert_eq!(
        shown,
        vec![
            (main, None),
            (late, Some("late".to_string())),
            (early.id, Some("early".to_string())),
        ],
        "the newest run of each (partition, pass)"
    );
    assert_eq!(
        every.newest.get("2026-01-01"),
        Some(&RunState::Running),
        "the summary counts the pipeline's own run"
    );
    let only_late = store
        .status_view(&StatusQuery {
            pass: Some("late".into()),
            ..StatusQuery::new("conformance")
        })
        .await
        .unwrap();
    let ids: Vec<RunId> = only_late.runs.iter().map(|run| run.record.id).collect();
    assert_eq!(ids, vec![late]);
    assert_eq!(
        only_late.newest.get("2026-01-01"),
        Some(&RunState::Succeeded)
    );
    let listed = store.list_runs("conformance", None, 10).await.unwrap();
    assert_eq!(listed.len(), 3, "one per (partition, pass): {listed:?}");
}

/// A schedule's fire and the run it starts commit together; the same fire again is refused
/// with the run it started, a fire for a partition with an unfinished run joins that run, and
/// the last fire is remembered per trigger.
async fn a_schedule_fire_is_recorded_once_with_its_run<S: Store>(store: S) {
    let fire = |trigger: &str, fire_at| ScheduleFire {
        trigger: trigger.into(),
        fire_at,
    };
    assert_eq!(
        store.last_fire("conformance", "pipeline").await.unwrap(),
        None
    );
    let gate = Change::Gate(GateRecord {
        phase: "main".into(),
        status: GateState::Waiting,
        waived: Vec::new(),
    });
    let created = store
        .create_run_for_fire(
            new_run("2026-01-01", &["a"]),
            fire("pipeline", 5_000),
            vec![gate],
        )
        .await
        .unwrap();
    let FireOutcome::Created(run) = created else {
        panic!("the first fire creates a run: {created:?}");
    };
    assert_eq!(
        store.gates(run).await.unwrap().len(),
        1,
        "its gates come with it"
    );
    let again = store
        .create_run_for_fire(
            new_run("2026-01-01", &["a"]),
            fire("pipeline", 5_000),
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(again, FireOutcome::AlreadyFired(run));
    let joined = store
        .create_run_for_fire(
            new_run("2026-01-01", &["a"]),
            fire("pipeline", 6_000),
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        joined,
        FireOutcome::Joined(run),
        "the partition's run is unfinished"
    );
    let other = store
        .create_run_for_fire(
            new_run("2026-01-01", &["a"]),
            fire("evening", 6_000),
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(other, FireOutcome::Joined(run), "triggers are kept apart");
    store
        .set_run_state(run, RunState::Succeeded, None, 7_000)
        .await
        .unwrap();
    let rerun = store
        .create_run_for_fire(
            new_run("2026-01-01", &["a"]),
            fire("pipeline", 8_000),
            vec![],
        )
        .await
        .unwrap();
    assert!(
        matches!(rerun, FireOutcome::Created(second) if second != run),
        "a finished partition gets a new run: {rerun:?}"
    );
    assert_eq!(
        store.last_fire("conformance", "pipeline").await.unwrap(),
        Some(8_000)
    );
    assert_eq!(
        store.last_fire("conformance", "evening").await.unwrap(),
        Some(6_000)
    );
    assert_eq!(store.last_fire("other", "pipeline").await.unwrap(), None);
}

/// A retry may name a task the pipeline file gained after the run was created: it joins the
/// run as pending, after the tasks the run had, and its attempt records the version it runs.
async fn tasks_added_to_a_finished_run_are_pending_and_run_the_new_version<S: Store>(store: S) {
    let run = store
        .create_run(new_run("2026-01-01", &["a"]))
        .await
        .unwrap();
    let a = store.claim_attempt(claim(run.id, "a", 10)).await.unwrap();
    store
        .finish_attempt(finish(
            &a,
            Outcome::Succeeded,
            TaskNext::Done(Outcome::Succeeded),
            11,
        ))
        .await
        .unwrap();
    store
        .set_run_state(run.id, RunState::Succeeded, None, 12)
        .await
        .unwrap();
    let added = store
        .add_tasks(
            run.id,
            vec![
                ("b".into(), "late".into()),
                ("a".into(), "main".into()),
                ("c".into(), "late".into()),
            ],
            13,
        )
        .await
        .unwrap();
    assert_eq!(added, 2, "a task the run already has is not added again");
    let tasks = store.task_runs(run.id).await.unwrap();
    let summary: Vec<(&str, &str, TaskState, Option<Outcome>)> = tasks
        .iter()
        .map(|task| {
            (
                task.task.as_str(),
                task.phase.as_str(),
                task.state,
                task.outcome,
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("a", "main", TaskState::Done, Some(Outcome::Succeeded)),
            ("b", "late", TaskState::Pending, None),
            ("c", "late", TaskState::Pending, None),
        ],
        "tasks_added_to_a_finished_run_are_pending_and_run_the_new_version"
    );
    let mut newer = claim(run.id, "b", 14);
    newer.version = "v2".into();
    let b = store.claim_attempt(newer).await.unwrap();
    assert_eq!((b.number, b.version.as_deref()), (1, Some("v2")));
    let added_events: Vec<Option<String>> = store
        .events(run.id)
        .await
        .unwrap()
        .into_iter()
        .filter(|event| event.kind == "task_added")
        .map(|event| event.task)
        .collect();
    assert_eq!(added_events, [Some("b".into()), Some("c".into())]);
    assert!(matches!(
        store
            .add_tasks(
                keel_model::RunId(999),
                vec![("x".into(), "main".into())],
                15
            )
            .await,
        Err(StoreError::NoSuchRun(_))
    ));
}

/// An executor may start an attempt without knowing its process's pid: the start time must be
/// recorded all the same, and an unknown pid must not erase a known one.
async fn a_start_without_a_pid_is_recorded<S: Store>(store: S) {
    let run = store
        .create_run(new_run("2026-01-01", &["a", "b"]))
        .await
        .unwrap();
    let a = store.claim_attempt(claim(run.id, "a", 10)).await.unwrap();
    let b = store.claim_attempt(claim(run.id, "b", 10)).await.unwrap();
    store
        .mark_attempts_started(
            vec![(a.id, a.lease_epoch, None), (b.id, b.lease_epoch, Some(77))],
            11,
        )
        .await
        .unwrap()
        .into_iter()
        .for_each(|result| result.unwrap());
    store
        .mark_attempt_started(b.id, b.lease_epoch, None, 12)
        .await
        .unwrap();
    let attempts = store.attempts(run.id).await.unwrap();
    assert_eq!(
        (attempts[0].started_at, attempts[0].pid),
        (Some(11), None),
        "a_start_without_a_pid_is_recorded: started, pid unknown"
    );
    assert_eq!(
        (attempts[1].started_at, attempts[1].pid),
        (Some(12), Some(77)),
        "a_start_without_a_pid_is_recorded: an unknown pid keeps the known one"
    );
}

async fn store_ids_are_unique_and_stable<S, R, ReopenFut>(first: S, second: S, reopen: R)
where
    S: Store,
    R: Fn(&S) -> ReopenFut,
    ReopenFut: Future<Output = S>,
{
    let id = first.store_id().to_string();
    for store_id in [first.store_id(), second.store_id()] {
        assert!(
            !store_id.is_empty()
                && store_id.len() <= 64
                && store_id
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
            "store_ids_are_unique_and_stable: {store_id:?} is not one safe path component"
        );
    }
    assert_ne!(
        id,
        second.store_id(),
        "store_ids_are_unique_and_stable: two stores share an identity"
    );
    assert_eq!(first.clone().store_id(), id, "a clone is the same store");
    let run = first
        .create_run(new_run("2026-01-01", &["a"]))
        .await
        .unwrap();
    let reopened = reopen(&first).await;
    assert_eq!(
        reopened.store_id(),
        id,
        "store_ids_are_unique_and_stable: reopening changed the identity"
    );
    assert_eq!(
        reopened.run(run.id).await.unwrap().id,
        run.id,
        "the reopened store is the same state"
    );
}

async fn leases_are_renewed_fenced_and_expire<S: Store>(store: S) {
    let run = store
        .create_run(new_run("2026-01-01", &["a", "b"]))
        .await
        .unwrap();
    // Claimed at 10 and 20: leases until 60 010 and 60 020.
    let a = store.claim_attempt(claim(run.id, "a", 10)).await.unwrap();
    let b = store.claim_attempt(claim(run.id, "b", 20)).await.unwrap();
    let expired = |now| store.expired_leases("conformance", now);
    assert!(expired(60_000).await.unwrap().is_empty());
    let results = store
        .renew_leases(
            vec![(a.id, a.lease_epoch), (b.id, b.lease_epoch + 1)],
            120_000,
        )
        .await
        .unwrap();
    assert!(results[0].is_ok());
    assert!(
        matches!(results[1], Err(StoreError::StaleLease { .. })),
        "a renewal under a stale epoch is refused: {:?}",
        results[1]
    );
    let late: Vec<_> = expired(100_000)
        .await
        .unwrap()
        .into_iter()
        .map(|attempt| attempt.task)
        .collect();
    assert_eq!(late, ["b"], "only the lease that was not renewed expired");
    store
        .finish_attempt(finish(
            &a,
            Outcome::Succeeded,
            TaskNext::Done(Outcome::Succeeded),
            30,
        ))
        .await
        .unwrap();
    let late: Vec<_> = expired(200_000)
        .await
        .unwrap()
        .into_iter()
        .map(|attempt| attempt.task)
        .collect();
    assert_eq!(late, ["b"], "a finished attempt holds no lease");
}

async fn events_stream_in_order_across_runs<S: Store>(store: S) {
    let first = store
        .create_run(new_run("2026-01-01", &["a"]))
        .await
        .unwrap();
    let second = store
        .create_run(new_run("2026-01-02", &["a"]))
        .await
        .unwrap();
    store.request_cancel(first.id, 5_000).await.unwrap();
    let all = store.events_after(0, 100).await.unwrap();
    assert!(all.windows(2).all(|pair| pair[0].seq < pair[1].seq));
    let runs: Vec<_> = all.iter().map(|event| event.run).collect();
    assert!(runs.contains(&first.id) && runs.contains(&second.id));
    let last = all.last().unwrap();
    assert_eq!(last.kind, "cancel_requested");
    let page = store.events_after(all[0].seq, 1).await.unwrap();
    assert_eq!(page.len(), 1);
    assert_eq!(
        page[0].seq, all[1].seq,
        "a follower resumes after the last seq it saw"
    );
    assert!(store.events_after(last.seq, 10).await.unwrap().is_empty());
}

/// The newest events of the kinds asked for, newest first, of the pipeline's runs only, at
/// most `limit`; no kind asked for is no event.
async fn recent_events_are_the_newest_of_some_kinds_in_one_pipeline<S: Store>(store: S) {
    let first = store
        .create_run(new_run("2026-01-01", &["a"]))
        .await
        .unwrap();
    let second = store
        .create_run(new_run("2026-01-02", &["a"]))
        .await
        .unwrap();
    let other = store
        .create_run(NewRun {
            pipeline: "elsewhere".into(),
            ..new_run("2026-01-01", &["a"])
        })
        .await
        .unwrap();
    let breaker = |run: keel_model::RunId, detail: &str, at: i64| NewEvent {
        run,
        task: None,
        attempt: None,
        kind: keel_model::EventKind::Breaker,
        detail: detail.into(),
        at,
    };
    store
        .append_event(breaker(first.id, "resource api: open", 2_000))
        .await
        .unwrap();
    store
        .append_event(breaker(other.id, "resource api: open elsewhere", 2_500))
        .await
        .unwrap();
    store.request_cancel(first.id, 2_700).await.unwrap();
    store
        .append_event(breaker(second.id, "resource api: half open", 3_000))
        .await
        .unwrap();
    store
        .append_event(breaker(second.id, "resource api: closed", 4_000))
        .await
        .unwrap();
    let kinds = vec![keel_model::EventKind::Breaker];
    let recent = store
        .recent_events("conformance", kinds.clone(), 10)
        .await
        .unwrap();
    let details: Vec<&str> = recent.iter().map(|event| event.detail.as_str()).collect();
    assert_eq!(
        details,
        [
            "resource api: closed",
            "resource api: half open",
            "resource api: open"
        ],
        "newest first, only the pipeline's, only breaker events"
    );
    assert!(recent.iter().all(|event| event.kind == "breaker"));
    assert_eq!(recent[0].run, second.id);
    assert_eq!(recent[0].at, 4_000);
    let newest = store
        .recent_events("conformance", kinds.clone(), 1)
        .await
        .unwrap();
    assert_eq!(newest.len(), 1);
    assert_eq!(newest[0].detail, "resource api: closed");
    let both = store
        .recent_events(
            "conformance",
            vec![
                keel_model::EventKind::CancelRequested,
                keel_model::EventKind::Breaker,
            ],
            10,
        )
        .await
        .unwrap();
    assert_eq!(both.len(), 4);
    assert_eq!(both[2].kind, "cancel_requested");
    assert!(
        store
            .recent_events("conformance", Vec::new(), 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .recent_events("nobody", kinds, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn the_status_view_reads_runs_tasks_attempts_and_breakers_together<S: Store>(store: S) {
    let first = store
        .create_run(new_run("2026-01-01", &["a", "b"]))
        .await
        .unwrap();
    store.claim_attempt(claim(first.id, "a", 10)).await.unwrap();
    let second = store
        .create_run(new_run("2026-01-02", &["a"]))
        .await
        .unwrap();
    let view = store
        .status_view(&StatusQuery::new("conformance").limit(10))
        .await
        .unwrap();
    let partitions: Vec<&str> = view
        .runs
        .iter()
        .map(|run| run.record.partition.as_str())
        .collect();
    assert_eq!(
        partitions,
        ["2026-01-02", "2026-01-01"],
        "newest partition first"
    );
    assert_eq!(view.runs[1].record.id, first.id);
    assert_eq!(view.runs[1].tasks.len(), 2);
    assert_eq!(view.runs[1].attempts.len(), 1);
    assert_eq!(view.runs[0].record.id, second.id);
    assert_eq!(view.omitted, 0);
    let one = store
        .status_view(&StatusQuery::new("conformance").partition("2026-01-01"))
        .await
        .unwrap();
    assert_eq!(one.runs.len(), 1);
    assert_eq!(one.runs[0].record.id, first.id);
}

/// `keel status --all`, `--run`, `--from/--to` and `--limit`, and `keel history`, read through
/// one query: every run or the newest of each partition, a range, one run, one task.
async fn the_status_view_selects_every_run_a_range_one_run_or_one_task<S: Store>(store: S) {
    let mut ids = Vec::new();
    for (partition, tasks) in [
        ("2026-01-01", &["a", "b"][..]),
        ("2026-01-01", &["a", "b"][..]),
        ("2026-01-02", &["a"][..]),
        ("2026-01-03", &["b"][..]),
    ] {
        let run = store.create_run(new_run(partition, tasks)).await.unwrap();
        ids.push(run.id);
    }
    let mut other = new_run("2026-01-01", &["a"]);
    other.pipeline = "another".into();
    store.create_run(other).await.unwrap();
    let selected = |view: &StatusView| -> Vec<keel_model::RunId> {
        view.runs.iter().map(|run| run.record.id).collect()
    };

    let newest = store
        .status_view(&StatusQuery::new("conformance"))
        .await
        .unwrap();
    assert_eq!(selected(&newest), [ids[3], ids[2], ids[1]]);
    assert_eq!(newest.newest.len(), 3);

    let mut every = StatusQuery::new("conformance");
    every.every_run = true;
    let all = store.status_view(&every).await.unwrap();
    assert_eq!(
        selected(&all),
        [ids[3], ids[2], ids[1], ids[0]],
        "newest partition first, newest run first within one"
    );

    let limited = store.status_view(&every.clone().limit(3)).await.unwrap();
    assert_eq!(selected(&limited), [ids[3], ids[2], ids[1]]);
    assert_eq!(limited.omitted, 1, "the limit says what it left out");
    assert_eq!(limited.newest.len(), 3, "the summary is not limited");

    let mut range = every.clone();
    range.partitions = Some(("2026-01-01".into(), "2026-01-02".into()));
    assert_eq!(
        selected(&store.status_view(&range).await.unwrap()),
        [ids[2], ids[1], ids[0]]
    );

    let one = store
        .status_view(&StatusQuery::new("conformance").run(ids[0]))
        .await
        .unwrap();
    assert_eq!(selected(&one), [ids[0]], "an older run of a partition");
    let elsewhere = store
        .status_view(&StatusQuery::new("another").run(ids[0]))
        .await
        .unwrap();
    assert!(elsewhere.runs.is_empty(), "a run of another pipeline");

    let mut task = every.clone();
    task.task = Some("b".into());
    let history = store.status_view(&task).await.unwrap();
    assert_eq!(selected(&history), [ids[3], ids[1], ids[0]]);
    assert!(
        history
            .runs
            .iter()
            .all(|run| run.tasks.len() == 1 && run.tasks[0].task == "b"),
        "only the task's row"
    );
}

/// Not-ready checks and failed breaker probes are told apart from real attempts, and a task's
/// time is the sum of its attempts' durations, not the time between them.
async fn the_status_view_tells_attempts_from_checks_and_probes<S: Store>(store: S) {
    let run = store
        .create_run(new_run("2026-01-01", &["a"]))
        .await
        .unwrap();
    let steps = [
        (
            Outcome::NotReady,
            TaskNext::Retry {
                not_before: 0,
                charge: false,
            },
        ),
        (
            Outcome::Failed,
            TaskNext::Retry {
                not_before: 0,
                charge: true,
            },
        ),
        (
            Outcome::Failed,
            TaskNext::Retry {
                not_before: 0,
                charge: false,
            },
        ),
        (
            Outcome::Lost,
            TaskNext::Retry {
                not_before: 0,
                charge: false,
            },
        ),
        (Outcome::Succeeded, TaskNext::Done(Outcome::Succeeded)),
    ];
    for (index, (outcome, next)) in steps.into_iter().enumerate() {
        // Each attempt takes 10 ms, and the next one starts 1,000 ms later.
        let at = 1_000 * (index as i64 + 1);
        let attempt = store.claim_attempt(claim(run.id, "a", at)).await.unwrap();
        let mut end = finish(&attempt, outcome, next, at + 10);
        if outcome != Outcome::Succeeded {
            end.rows = None;
            end.metrics = None;
        }
        store.finish_attempt(end).await.unwrap();
    }
    let view = store
        .status_view(&StatusQuery::new("conformance"))
        .await
        .unwrap();
    let summary = view.runs[0].task_summary("a", 1_000_000);
    assert_eq!(
        (summary.attempts, summary.checks, summary.probes),
        (3, 1, 1),
        "{summary:?}"
    );
    assert_eq!(summary.worked, 50);
    assert_eq!(summary.rows, Some(7));
    assert_eq!(summary.metrics.as_deref(), Some(r#"{"accuracy":0.5}"#));

    let running = store
        .create_run(new_run("2026-01-02", &["a"]))
        .await
        .unwrap();
    store
        .claim_attempt(claim(running.id, "a", 500))
        .await
        .unwrap();
    let view = store
        .status_view(&StatusQuery::new("conformance").partition("2026-01-02"))
        .await
        .unwrap();
    let summary = view.runs[0].task_summary("a", 800);
    assert_eq!(
        (summary.attempts, summary.worked),
        (1, 300),
        "a running attempt counts up to now"
    );
}

async fn a_commit_is_all_or_nothing<S: Store>(store: S) {
    let run = store
        .create_run(new_run("2026-01-01", &["a", "b"]))
        .await
        .unwrap();
    let a = store.claim_attempt(claim(run.id, "a", 10)).await.unwrap();
    let b = store.claim_attempt(claim(run.id, "b", 10)).await.unwrap();
    let done = |attempt: &AttemptRecord, epoch: i64| {
        let mut finish = finish(
            attempt,
            Outcome::Succeeded,
            TaskNext::Done(Outcome::Succeeded),
            20,
        );
        finish.epoch = epoch;
        Write::Finish(finish)
    };
    // b's lease is stale: nothing of the commit is written, a's finish included.
    let stale = store
        .commit(
            vec![
                Write::Started {
                    attempt: a.id,
                    epoch: a.lease_epoch,
                    pid: Some(7),
                },
                done(&a, a.lease_epoch),
                done(&b, b.lease_epoch + 1),
                Write::RunState {
                    run: run.id,
                    state: RunState::Succeeded,
                    message: None,
                },
            ],
            20,
        )
        .await;
    assert!(
        matches!(stale, Err(StoreError::StaleLease { .. })),
        "{stale:?}"
    );
    let tasks = store.task_runs(run.id).await.unwrap();
    assert!(tasks.iter().all(|task| task.state == TaskState::Running));
    assert_eq!(store.run(run.id).await.unwrap().state, RunState::Running);
    assert_eq!(store.attempts(run.id).await.unwrap()[0].pid, None);
    store
        .commit(
            vec![
                Write::Started {
                    attempt: a.id,
                    epoch: a.lease_epoch,
                    pid: Some(7),
                },
                done(&a, a.lease_epoch),
                done(&b, b.lease_epoch),
                Write::RunState {
                    run: run.id,
                    state: RunState::Succeeded,
                    message: None,
                },
            ],
            30,
        )
        .await
        .unwrap();
    let tasks = store.task_runs(run.id).await.unwrap();
    assert!(
        tasks
            .iter()
            .all(|task| task.outcome == Some(Outcome::Succeeded))
    );
    assert_eq!(store.run(run.id).await.unwrap().state, RunState::Succeeded);
    assert_eq!(store.attempts(run.id).await.unwrap()[0].pid, Some(7));
    // A start reported after the attempt ended changes nothing and fails nothing.
    store
        .commit(
            vec![Write::Started {
                attempt: b.id,
                epoch: b.lease_epoch,
                pid: Some(8),
            }],
            40,
        )
        .await
        .unwrap();
    assert_eq!(store.attempts(run.id).await.unwrap()[1].pid, None);
}

async fn applied_changes_commit_together<S: Store>(store: S) {
    let run = store
        .create_run(new_run("2026-01-01", &["a", "b"]))
        .await
        .unwrap();
    let gate = GateRecord {
        phase: "main".into(),
        status: GateState::Sufficient { open_at: 5_000 },
        waived: vec![],
    };
    store
        .apply(
            run.id,
            vec![
                Change::Gate(gate.clone()),
                Change::Event {
                    task: None,
                    kind: keel_model::EventKind::GateSufficient,
                    detail: "phase main".into(),
                },
            ],
            2_000,
        )
        .await
        .unwrap();
    assert_eq!(store.gates(run.id).await.unwrap(), vec![gate]);
    let opened = GateRecord {
        phase: "main".into(),
        status: GateState::Open,
        waived: vec!["a".into(), "b".into()],
    };
    store
        .apply(run.id, vec![Change::Gate(opened.clone())], 3_000)
        .await
        .unwrap();
    assert_eq!(
        store.gates(run.id).await.unwrap(),
        vec![opened],
        "a gate is upserted, waived tasks and all"
    );
    let events = store.events(run.id).await.unwrap();
    assert!(events.iter().any(|event| event.kind == "gate_sufficient"));
    // A change to a run that does not exist fails as a whole.
    let missing = store
        .apply(keel_model::RunId(run.id.0 + 100), vec![], 4_000)
        .await;
    assert!(
        matches!(missing, Err(StoreError::NoSuchRun(_))),
        "{missing:?}"
    );
}

async fn a_rerun_owed_survives_until_the_task_is_reset<S: Store>(store: S) {
    let run = store
        .create_run(new_run("2026-01-01", &["a"]))
        .await
        .unwrap();
    let attempt = store.claim_attempt(claim(run.id, "a", 10)).await.unwrap();
    store
        .apply(
            run.id,
            vec![Change::MarkRerun {
                task: "a".into(),
                reason: "upstream landed late".into(),
            }],
            20,
        )
        .await
        .unwrap();
    assert!(store.task_runs(run.id).await.unwrap()[0].rerun_pending);
    store
        .finish_attempt(finish(
            &attempt,
            Outcome::Succeeded,
            TaskNext::Done(Outcome::Succeeded),
            30,
        ))
        .await
        .unwrap();
    assert!(
        store.task_runs(run.id).await.unwrap()[0].rerun_pending,
        "finishing the attempt does not pay the rerun"
    );
    store
        .update_tasks(
            run.id,
            vec![TaskChange {
                task: "a".into(),
                state: TaskState::Pending,
                outcome: None,
                not_before: None,
                message: None,
                reset_retry_budget: true,
                reason: "running again".into(),
            }],
            40,
        )
        .await
        .unwrap();
    assert!(!store.task_runs(run.id).await.unwrap()[0].rerun_pending);
}

async fn sensor_polls_are_counted_until_a_reset<S: Store>(store: S) {
    let run = store
        .create_run(new_run("2026-01-01", &["a"]))
        .await
        .unwrap();
    for (at, error) in [(10, false), (20, true), (30, true)] {
        store
            .record_sensor_poll(SensorPoll {
                run: run.id,
                task: "a".into(),
                ready: false,
                not_before: Some(at + 100),
                error,
                message: None,
                at,
            })
            .await
            .unwrap();
    }
    let task = &store.task_runs(run.id).await.unwrap()[0];
    assert_eq!((task.sensor_polls, task.sensor_errors), (3, 2));
    let reset = Change::Task(TaskChange {
        task: "a".into(),
        state: TaskState::Pending,
        outcome: None,
        not_before: None,
        message: None,
        reset_retry_budget: true,
        reason: "manual retry".into(),
    });
    store.apply(run.id, vec![reset], 40).await.unwrap();
    let task = &store.task_runs(run.id).await.unwrap()[0];
    assert_eq!(
        (task.sensor_polls, task.sensor_errors),
        (0, 0),
        "a reset of the retry budget starts the sensor afresh"
    );
}

/// A task set waiting without an attempt (for an input on an earlier date) stores when it began
/// to wait, once: its deadline counts from there across restarts.
async fn a_wait_keeps_its_first_start_until_a_reset<S: Store>(store: S) {
    let run = store
        .create_run(new_run("2026-01-01", &["a"]))
        .await
        .unwrap();
    let waiting = |message: &str| {
        Change::Task(TaskChange {
            task: "a".into(),
            state: TaskState::Waiting,
            outcome: None,
            not_before: None,
            message: Some(message.into()),
            reset_retry_budget: false,
            reason: message.into(),
        })
    };
    store
        .apply(run.id, vec![waiting("waiting for b on 2025-12-31")], 10)
        .await
        .unwrap();
    store
        .apply(run.id, vec![waiting("waiting for c on 2025-12-31")], 20)
        .await
        .unwrap();
    let task = &store.task_runs(run.id).await.unwrap()[0];
    assert_eq!(task.first_started_at, Some(10));
    assert_eq!(task.message.as_deref(), Some("waiting for c on 2025-12-31"));
    let reset = Change::Task(TaskChange::reset("a", "manual retry"));
    store.apply(run.id, vec![reset], 30).await.unwrap();
    assert_eq!(
        store.task_runs(run.id).await.unwrap()[0].first_started_at,
        None
    );
}

async fn attempt_starts_are_listed_since_a_time<S: Store>(store: S) {
    let run = store
        .create_run(new_run("2026-01-01", &["a", "b", "c"]))
        .await
        .unwrap();
    for (task, at) in [("a", 100), ("b", 200), ("c", 300)] {
        store.claim_attempt(claim(run.id, task, at)).await.unwrap();
    }
    let starts = store
        .attempt_starts_since("conformance", 200)
        .await
        .unwrap();
    assert_eq!(starts, vec![("b".to_string(), 200), ("c".to_string(), 300)]);
}

async fn resource_states_are_upserted<S: Store>(store: S) {
    let record = |state: &str, at: i64| ResourceStateRecord {
        pipeline: "conformance".into(),
        name: "feed".into(),
        state: state.into(),
        detail: format!("{state} at {at}"),
        updated_at: at,
        open_since: (state == "open").then_some(at),
        open_until: (state == "open").then_some(at + 30_000),
    };
    store.set_resource_state(record("open", 1)).await.unwrap();
    assert_eq!(
        store.resource_states("conformance").await.unwrap(),
        vec![record("open", 1)],
        "an open breaker keeps when it opened and when it may probe"
    );
    store.set_resource_state(record("closed", 2)).await.unwrap();
    assert_eq!(
        store.resource_states("conformance").await.unwrap(),
        vec![record("closed", 2)]
    );
    assert!(store.resource_states("other").await.unwrap().is_empty());
}

async fn sensor_polls_are_recorded<S: Store>(store: S) {
    let run = store
        .create_run(new_run("2026-01-01", &["a"]))
        .await
        .unwrap();
    let poll = |ready: bool, at: i64| SensorPoll {
        run: run.id,
        task: "a".into(),
        ready,
        not_before: (!ready).then_some(at + 1_000),
        error: false,
        message: None,
        at,
    };
    store.record_sensor_poll(poll(false, 10)).await.unwrap();
    store.record_sensor_poll(poll(false, 20)).await.unwrap();
    let task = &store.task_runs(run.id).await.unwrap()[0];
    assert_eq!(
        (task.state, task.not_before, task.first_started_at),
        (TaskState::Waiting, Some(1_020), Some(10))
    );
    assert_eq!(task.attempts, 0, "a poll is not an attempt");
    store.record_sensor_poll(poll(true, 30)).await.unwrap();
    let task = &store.task_runs(run.id).await.unwrap()[0];
    assert_eq!((task.state, task.not_before), (TaskState::Pending, None));
    let polls = store
        .events(run.id)
        .await
        .unwrap()
        .into_iter()
        .filter(|event| event.kind == "sensor_polled")
        .count();
    assert_eq!(polls, 3);
}

async fn batches_settle_each_item_on_its_own<S: Store>(store: S) {
    let run = store
        .create_run(new_run("2026-01-01", &["a", "b", "c"]))
        .await
        .unwrap();
    let first = store.claim_attempt(claim(run.id, "a", 1)).await.unwrap();
    // One batch: a claim that conflicts, and two that succeed.
    let results = store
        .claim_attempts(vec![
            claim(run.id, "a", 2),
            claim(run.id, "b", 2),
            claim(run.id, "c", 2),
        ])
        .await
        .unwrap();
    let mut results = results.into_iter();
    let conflict = results.next().unwrap();
    assert!(
        matches!(conflict, Err(StoreError::NotClaimable { .. })),
        "batch: {conflict:?}"
    );
    let (b, c) = (
        results.next().unwrap().unwrap(),
        results.next().unwrap().unwrap(),
    );
    // One batch of finishes with a stale epoch in the middle: only that one is refused.
    let mut stale = finish(
        &b,
        Outcome::Succeeded,
        TaskNext::Done(Outcome::Succeeded),
        3,
    );
    stale.epoch += 7;
    let results = store
        .finish_attempts(vec![
            finish(
                &first,
                Outcome::Succeeded,
                TaskNext::Done(Outcome::Succeeded),
                3,
            ),
            stale,
            finish(&c, Outcome::Failed, TaskNext::Done(Outcome::Failed), 3),
        ])
        .await
        .unwrap();
    assert!(results[0].is_ok() && results[2].is_ok());
    assert!(matches!(results[1], Err(StoreError::StaleLease { .. })));
    let tasks = store.task_runs(run.id).await.unwrap();
    let states: Vec<TaskState> = tasks.iter().map(|task| task.state).collect();
    assert_eq!(
        states,
        [TaskState::Done, TaskState::Running, TaskState::Done]
    );
    let started = store
        .mark_attempts_started(
            vec![
                (b.id, b.lease_epoch, Some(9)),
                (first.id, first.lease_epoch, Some(9)),
            ],
            4,
        )
        .await
        .unwrap();
    assert!(started[0].is_ok());
    assert!(
        matches!(started[1], Err(StoreError::StaleLease { .. })),
        "a finished attempt cannot be marked started"
    );
}

/// A backend that writes a batch in one go must still give each item the result it would get
/// one at a time: a task claimed twice in one batch, the same task of one partition claimed by
/// two runs, an attempt finished twice, and a commit whose second finish is stale.
async fn a_batch_that_names_a_task_twice_settles_as_one_at_a_time<S: Store>(store: S) {
    let first = store
        .create_run(new_run("2026-01-01", &["a", "b"]))
        .await
        .unwrap();
    let second = store
        .create_run(new_run("2026-01-01", &["a"]))
        .await
        .unwrap();
    let results = store
        .claim_attempts(vec![
            claim(first.id, "a", 1),
            claim(first.id, "a", 1),
            claim(second.id, "a", 1),
            claim(first.id, "b", 1),
            claim(first.id, "nope", 1),
            claim(RunId(first.id.0 + 1_000), "a", 1),
        ])
        .await
        .unwrap();
    let a = results[0].as_ref().unwrap().clone();
    assert_eq!((a.number, a.task.as_str()), (1, "a"));
    assert!(
        matches!(&results[1], Err(StoreError::NotClaimable { state, .. }) if state == "running"),
        "the same task twice in one batch: {:?}",
        results[1]
    );
    assert!(
        matches!(&results[2], Err(StoreError::AlreadyLive { attempt, .. }) if *attempt == a.id),
        "another run's claim of the live task: {:?}",
        results[2]
    );
    let b = results[3].as_ref().unwrap().clone();
    assert_ne!(a.id, b.id);
    assert!(matches!(
        &results[4],
        Err(StoreError::NotClaimable { state, .. }) if state == "not part of the run"
    ));
    assert!(matches!(results[5], Err(StoreError::NoSuchRun(_))));
    let claimed: Vec<String> = store
        .events(first.id)
        .await
        .unwrap()
        .into_iter()
        .filter(|event| event.kind == EventKind::AttemptClaimed)
        .filter_map(|event| event.task)
        .collect();
    assert_eq!(claimed, ["a", "b"], "one claim event per attempt, in order");
    // The same attempt finished twice in one batch: the second is stale.
    let done = || {
        finish(
            &a,
            Outcome::Succeeded,
            TaskNext::Done(Outcome::Succeeded),
            2,
        )
    };
    let results = store.finish_attempts(vec![done(), done()]).await.unwrap();
    assert!(results[0].is_ok());
    assert!(
        matches!(results[1], Err(StoreError::StaleLease { .. })),
        "{:?}",
        results[1]
    );
    // A commit of two finishes, the second stale: nothing of it is written.
    let mut stale = finish(
        &b,
        Outcome::Succeeded,
        TaskNext::Done(Outcome::Succeeded),
        3,
    );
    stale.epoch += 1;
    let committed = store
        .commit(
            vec![
                Write::Finish(finish(
                    &b,
                    Outcome::Failed,
                    TaskNext::Done(Outcome::Failed),
                    3,
                )),
                Write::Finish(stale),
            ],
            3,
        )
        .await;
    assert!(
        matches!(committed, Err(StoreError::StaleLease { .. })),
        "{committed:?}"
    );
    let tasks = store.task_runs(first.id).await.unwrap();
    assert_eq!(
        tasks.iter().map(|task| task.state).collect::<Vec<_>>(),
        [TaskState::Done, TaskState::Running],
        "a commit that fails writes nothing"
    );
}

async fn run_lifecycle<S: Store>(store: S) {
    let run = store
        .create_run(new_run("2026-01-01", &["a", "b"]))
        .await
        .unwrap();
    assert_eq!(
        run.state,
        RunState::Running,
        "run_lifecycle: new runs are running"
    );
    let tasks = store.task_runs(run.id).await.unwrap();
    assert_eq!(tasks.len(), 2);
    assert!(tasks.iter().all(|task| task.state == TaskState::Pending));
    let attempt = store
        .claim_attempt(claim(run.id, "a", 2_000))
        .await
        .unwrap();
    assert_eq!(attempt.number, 1);
    assert_eq!(attempt.lease_epoch, 1);
    store
        .mark_attempt_started(attempt.id, attempt.lease_epoch, Some(4242), 2_001)
        .await
        .unwrap();
    store
        .finish_attempt(finish(
            &attempt,
            Outcome::Succeeded,
            TaskNext::Done(Outcome::Succeeded),
            3_000,
        ))
        .await
        .unwrap();
    let attempts = store.attempts(run.id).await.unwrap();
    assert_eq!(attempts[0].outcome, Some(Outcome::Succeeded));
    assert_eq!(attempts[0].rows, Some(7));
    assert_eq!(attempts[0].pid, Some(4242));
    assert_eq!(attempts[0].version.as_deref(), Some("v1"));
    assert_eq!(attempts[0].metrics.as_deref(), Some(r#"{"accuracy":0.5}"#));
    let tasks = store.task_runs(run.id).await.unwrap();
    assert_eq!(tasks[0].state, TaskState::Done);
    assert_eq!(tasks[0].outcome, Some(Outcome::Succeeded));
    store
        .set_run_state(run.id, RunState::Succeeded, None, 4_000)
        .await
        .unwrap();
    let run = store.run(run.id).await.unwrap();
    assert_eq!(run.finished_at, Some(4_000));
    let events = store.events(run.id).await.unwrap();
    let kinds: Vec<&str> = events.iter().map(|event| event.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "run_created",
            "attempt_claimed",
            "attempt_finished",
            "task_done",
            "run_state"
        ]
    );
    assert!(
        events.windows(2).all(|pair| pair[0].seq < pair[1].seq),
        "events are ordered"
    );
    assert!(
        store
            .unfinished_runs("conformance")
            .await
            .unwrap()
            .is_empty()
    );
}

async fn claim_is_exclusive<S: Store>(store: S) {
    let first = store
        .create_run(new_run("2026-01-01", &["a"]))
        .await
        .unwrap();
    store.claim_attempt(claim(first.id, "a", 1)).await.unwrap();
    let again = store.claim_attempt(claim(first.id, "a", 2)).await;
    assert!(
        matches!(again, Err(StoreError::NotClaimable { .. })),
        "claim_is_exclusive: running task claimed twice: {again:?}"
    );
    // A second run of the same partition may not start the same task while the first runs it.
    let second = store
        .create_run(new_run("2026-01-01", &["a"]))
        .await
        .unwrap();
    let across = store.claim_attempt(claim(second.id, "a", 3)).await;
    assert!(
        matches!(across, Err(StoreError::AlreadyLive { .. })),
        "claim_is_exclusive: two live attempts: {across:?}"
    );
    // Another partition is independent.
    let other = store
        .create_run(new_run("2026-01-02", &["a"]))
        .await
        .unwrap();
    store.claim_attempt(claim(other.id, "a", 4)).await.unwrap();
    assert_eq!(store.live_attempts("conformance").await.unwrap().len(), 2);
}

async fn stale_epoch_is_fenced<S: Store>(store: S) {
    let run = store
        .create_run(new_run("2026-01-01", &["a"]))
        .await
        .unwrap();
    let attempt = store.claim_attempt(claim(run.id, "a", 1)).await.unwrap();
    let new_epoch = store
        .take_over_attempt(attempt.id, "owner-b", 2)
        .await
        .unwrap();
    assert!(new_epoch > attempt.lease_epoch);
    let stale = store
        .finish_attempt(finish(
            &attempt,
            Outcome::Succeeded,
            TaskNext::Done(Outcome::Succeeded),
            3,
        ))
        .await;
    assert!(
        matches!(stale, Err(StoreError::StaleLease { .. })),
        "stale_epoch_is_fenced: {stale:?}"
    );
    assert!(matches!(
        store
            .mark_attempt_started(attempt.id, attempt.lease_epoch, Some(1), 3)
            .await,
        Err(StoreError::StaleLease { .. })
    ));
    let tasks = store.task_runs(run.id).await.unwrap();
    assert_eq!(
        tasks[0].state,
        TaskState::Running,
        "a stale result changed nothing"
    );
    let mut current = finish(
        &attempt,
        Outcome::Failed,
        TaskNext::Done(Outcome::Failed),
        4,
    );
    current.epoch = new_epoch;
    store.finish_attempt(current.clone()).await.unwrap();
    assert!(
        matches!(
            store.finish_attempt(current).await,
            Err(StoreError::StaleLease { .. })
        ),
        "a result is recorded once"
    );
}

async fn retries_are_durable_rows<S: Store>(store: S) {
    let run = store
        .create_run(new_run("2026-01-01", &["a"]))
        .await
        .unwrap();
    let attempt = store.claim_attempt(claim(run.id, "a", 1)).await.unwrap();
    store
        .finish_attempt(finish(
            &attempt,
            Outcome::Failed,
            TaskNext::Retry {
                not_before: 5_000,
                charge: true,
            },
            2,
        ))
        .await
        .unwrap();
    let task = &store.task_runs(run.id).await.unwrap()[0];
    assert_eq!(
        (task.state, task.not_before, task.charged),
        (TaskState::Waiting, Some(5_000), 1)
    );
    let second = store
        .claim_attempt(claim(run.id, "a", 5_000))
        .await
        .unwrap();
    assert_eq!(second.number, 2);
    assert_eq!(second.not_before, Some(5_000));
    store
        .finish_attempt(finish(
            &second,
            Outcome::Lost,
            TaskNext::Retry {
                not_before: 6_000,
                charge: false,
            },
            5_500,
        ))
        .await
        .unwrap();
    let task = &store.task_runs(run.id).await.unwrap()[0];
    assert_eq!(
        (task.attempts, task.charged),
        (2, 1),
        "lost attempts are not charged"
    );
}

async fn update_tasks_leaves_running_alone<S: Store>(store: S) {
    let run = store
        .create_run(new_run("2026-01-01", &["a", "b"]))
        .await
        .unwrap();
    store.claim_attempt(claim(run.id, "a", 1)).await.unwrap();
    let change = |task: &str| TaskChange {
        task: task.into(),
        state: TaskState::Done,
        outcome: Some(Outcome::UpstreamFailed),
        not_before: None,
        message: None,
        reset_retry_budget: false,
        reason: "test".into(),
    };
    let changed = store
        .update_tasks(run.id, vec![change("a"), change("b")], 2)
        .await
        .unwrap();
    assert_eq!(changed, 1);
    let tasks = store.task_runs(run.id).await.unwrap();
    assert_eq!(tasks[0].state, TaskState::Running);
    assert_eq!(tasks[1].outcome, Some(Outcome::UpstreamFailed));
}

async fn runs_are_listed_newest_first<S: Store>(store: S) {
    store
        .create_run(new_run("2026-01-01", &["a"]))
        .await
        .unwrap();
    let rerun = store
        .create_run(new_run("2026-01-01", &["a"]))
        .await
        .unwrap();
    store
        .create_run(new_run("2026-01-02", &["a"]))
        .await
        .unwrap();
    let runs = store.list_runs("conformance", None, 10).await.unwrap();
    let partitions: Vec<&str> = runs.iter().map(|run| run.partition.as_str()).collect();
    assert_eq!(partitions, ["2026-01-02", "2026-01-01"]);
    assert_eq!(
        runs[1].id, rerun.id,
        "the newest run of a partition is listed"
    );
    let latest = store
        .latest_run("conformance", "2026-01-01")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(latest.id, rerun.id);
    assert!(
        store
            .latest_run("conformance", "1999-01-01")
            .await
            .unwrap()
            .is_none()
    );
}

async fn cancel_is_recorded<S: Store>(store: S) {
    let run = store
        .create_run(new_run("2026-01-01", &["a"]))
        .await
        .unwrap();
    store.request_cancel(run.id, 5).await.unwrap();
    assert!(store.run(run.id).await.unwrap().cancel_requested);
    assert!(matches!(
        store.request_cancel(keel_model::RunId(999), 5).await,
        Err(StoreError::NoSuchRun(_))
    ));
}
