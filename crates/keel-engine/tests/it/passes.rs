//! Passes (`[passes.NAME]`) under `Engine::serve` on a manual clock: each pass fires on its own
//! schedule in the pipeline's time zone, runs its subset with its params, and keeps its runs
//! apart from the pipeline's own runs of the same partition.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use keel_engine::{Prepared, RunRequest, Shutdown};
use keel_model::schedule::Schedule;
use keel_model::{Catchup, Millis, Outcome, PassSpec, RunState, ScheduleSpec};
use keel_store::{StatusQuery, Store};

use crate::{Harness, pipeline, task};

/// A New York wall-clock time of March 2026 in UTC milliseconds: UTC-5 until the clocks
/// spring forward at 02:00 on the 8th, UTC-4 from 03:00.
fn new_york(text: &str) -> Millis {
    let local = chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M").unwrap();
    let spring_forward =
        chrono::NaiveDateTime::parse_from_str("2026-03-08 03:00", "%Y-%m-%d %H:%M").unwrap();
    let behind_utc = if local >= spring_forward { 4 } else { 5 };
    (local + chrono::Duration::hours(behind_utc))
        .and_utc()
        .timestamp_millis()
}

fn schedule(cron: &str, offset: i64, catchup: Catchup) -> Option<ScheduleSpec> {
    Some(ScheduleSpec {
        cron: cron.into(),
        partition_offset_days: offset,
        catchup,
        backfill: None,
    })
}

fn pass(name: &str, cron: &str, offset: i64, tasks: &[&str], mode: Option<&str>) -> PassSpec {
    PassSpec {
        name: name.into(),
        schedule: schedule(cron, offset, Catchup::All),
        tasks: tasks.iter().map(|task| task.to_string()).collect(),
        params: mode
            .map(|mode| BTreeMap::from([("mode".to_string(), mode.to_string())]))
            .unwrap_or_default(),
        gates: BTreeMap::new(),
    }
}

/// scrape → analytics → predictions, a task each; the task's env shows what `{pass}` and
/// `{param.mode}` expanded to.
fn hoops_like() -> keel_model::PipelineSpec {
    let mut tasks = vec![
        task("fetch", "scrape", &[], 1),
        task("summary", "analytics", &[], 1),
        task("predict", "predictions", &[], 1),
    ];
    for task in &mut tasks {
        task.context.env = BTreeMap::from([
            ("PASS_SEEN".to_string(), "{pass}".to_string()),
            ("MODE_SEEN".to_string(), "{param.mode}".to_string()),
        ]);
    }
    let mut spec = pipeline(tasks, 4);
    spec.timezone = "America/New_York".into();
    spec.schedule = schedule("0 6 * * *", -1, Catchup::Latest);
    spec.passes = vec![
        pass(
            "tomorrow",
            "0 17 * * *",
            1,
            &["summary", "predict"],
            Some("tomorrow"),
        ),
        // In the hour the clocks skip on 2026-03-08: it fires at 03:00 that day.
        pass(
            "overnight",
            "30 2 * * *",
            -1,
            &["fetch", "summary", "predict"],
            None,
        ),
        pass("same_day", "30 10 * * *", 0, &["predict"], Some("same_day")),
    ];
    spec
}

/// Polls `check` every few milliseconds of real time until it holds; the engine runs on its
/// own task and needs a moment to act on a clock move. Panics with `what` after ten seconds.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..2_000 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting for {what}");
}

fn env_of<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
    env.iter()
        .rev()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
}

/// Two days of the pipeline's schedule and three passes, across the spring-forward change of
/// America/New_York: exactly one run per (pass, partition), each pass running only its tasks
/// with `KEEL_PASS` and its params, and ending `succeeded`.
#[tokio::test]
async fn passes_fire_once_per_partition_each_with_its_subset_across_daylight_saving() {
    let harness = Harness::new();
    let spec = hoops_like();
    let start = new_york("2026-03-07 00:00");
    let end = new_york("2026-03-09 00:00");
    harness.clock.set(start);
    let mut engine = harness.engine(spec.clone());
    // A run left unfinished: serve takes it up, reads its schedules, then runs it; once it has
    // finished, the cursors stand at the start time and the clock may move.
    let marker = RunRequest {
        partitions: vec!["2000-01-01".into()],
        ..RunRequest::default()
    };
    engine.prepare(&marker).await.unwrap();
    let (trigger, shutdown) = Shutdown::channel();
    let served = tokio::spawn(async move { engine.serve(shutdown).await });
    let store = harness.store.clone();
    eventually("the run left unfinished to be taken up", || {
        let store = store.clone();
        async move { store.unfinished_runs("test").await.unwrap().is_empty() }
    })
    .await;

    // Each schedule's trigger and the fires it must have recorded by a given time.
    let mut triggers: Vec<(String, Schedule)> = vec![(
        "pipeline".to_string(),
        Schedule::parse("0 6 * * *", "America/New_York").unwrap(),
    )];
    for pass in &spec.passes {
        let cron = &pass.schedule.as_ref().unwrap().cron;
        triggers.push((
            format!("pass:{}", pass.name),
            Schedule::parse(cron, "America/New_York").unwrap(),
        ));
    }
    let mut now = start;
    while now < end {
        now += 5 * 60 * 1000;
        harness.clock.set(now);
        for (name, schedule) in &triggers {
            let expected = schedule.fires_between(start, now, 100).last().copied();
            let store = harness.store.clone();
            eventually(&format!("{name} to fire by {now}"), || {
                let store = store.clone();
                let name = name.clone();
                async move { store.last_fire("test", &name).await.unwrap() == expected }
            })
            .await;
        }
    }
    // Runs that waited for another run of their partition to finish a task carry on.
    let store = harness.store.clone();
    let clock = harness.clock.clone();
    eventually("every run to finish", || {
        clock.advance(1_000);
        let store = store.clone();
        async move { store.unfinished_runs("test").await.unwrap().is_empty() }
    })
    .await;
    trigger.drain();
    served.await.unwrap().unwrap();

    let view = harness
        .store
        .status_view(&StatusQuery {
            every_run: true,
            ..StatusQuery::new("test")
        })
        .await
        .unwrap();
    let mut seen: BTreeMap<(Option<String>, String), usize> = BTreeMap::new();
    for run in view
        .runs
        .iter()
        .filter(|run| run.record.partition != "2000-01-01")
    {
        *seen
            .entry((run.record.pass.clone(), run.record.partition.clone()))
            .or_default() += 1;
        assert_eq!(
            run.record.state,
            RunState::Succeeded,
            "run {} of {:?}: {:?}",
            run.record.id,
            run.record.pass,
            run.record.message
        );
        let subset: BTreeSet<&str> = match &run.record.pass {
            None => ["fetch", "summary", "predict"].into(),
            Some(name) => spec
                .pass(name)
                .unwrap()
                .tasks
                .iter()
                .map(String::as_str)
                .collect(),
        };
        for row in &run.tasks {
            if subset.contains(row.task.as_str()) {
                assert_eq!(row.outcome, Some(Outcome::Succeeded), "{row:?}");
                assert_eq!(row.attempts, 1, "{row:?}");
            } else {
                assert_eq!(row.outcome, Some(Outcome::Skipped), "{row:?}");
                assert_eq!(row.attempts, 0, "outside the pass, never run: {row:?}");
            }
        }
    }
    let key = |pass: Option<&str>, partition: &str| (pass.map(str::to_string), partition.into());
    let expected: BTreeMap<(Option<String>, String), usize> = [
        key(None, "2026-03-06"),
        key(None, "2026-03-07"),
        key(Some("overnight"), "2026-03-06"),
        key(Some("overnight"), "2026-03-07"),
        key(Some("same_day"), "2026-03-07"),
        key(Some("same_day"), "2026-03-08"),
        key(Some("tomorrow"), "2026-03-08"),
        key(Some("tomorrow"), "2026-03-09"),
    ]
    .into_iter()
    .map(|key| (key, 1))
    .collect();
    assert_eq!(seen, expected, "one run per (pass, partition)");

    // What each task saw: the pass's name, its params, and an empty KEEL_PASS outside passes.
    let launches = harness.executor.launches.lock().unwrap().clone();
    // The run left unfinished, then two of the schedule's, overnight's, same_day's, tomorrow's.
    assert_eq!(launches.len(), 3 + 2 * 3 + 2 * 3 + 2 + 2 * 2);
    for (task, _, env) in &launches {
        let pass = env_of(env, "KEEL_PASS").expect("KEEL_PASS is always set");
        assert_eq!(env_of(env, "PASS_SEEN"), Some(pass));
        let mode = match pass {
            "same_day" | "tomorrow" => pass,
            _ => "",
        };
        assert_eq!(env_of(env, "MODE_SEEN"), Some(mode), "{task} in {pass:?}");
        let partition = env_of(env, "KEEL_PARTITION").unwrap();
        let idempotency = env_of(env, "KEEL_IDEMPOTENCY_KEY").unwrap();
        if pass.is_empty() {
            assert_eq!(idempotency, format!("test:{task}:{partition}"));
        } else {
            assert_eq!(idempotency, format!("test:{task}:{partition}:{pass}"));
        }
    }
    let overnight_fires: Vec<Millis> = triggers[2].1.fires_between(start, end, 10);
    assert_eq!(
        overnight_fires,
        vec![
            new_york("2026-03-07 02:30"),
            // 02:30 does not exist on 2026-03-08: the fire is at the end of the skipped hour.
            new_york("2026-03-08 03:00"),
        ]
    );
}

/// `keel run --pass` by hand: a pass's run of a partition is created beside the pipeline's own
/// finished run, and a second request finds the pass's run finished; an unknown pass is refused
/// with the closest name, and so is a pass with `--only`.
#[tokio::test]
async fn a_pass_run_by_hand_is_kept_apart_from_the_pipelines_own() {
    let harness = Harness::new();
    let mut engine = harness.engine(hoops_like());
    assert_eq!(
        crate::run_partition(&mut engine, "2026-03-07").await,
        RunState::Succeeded
    );
    let request = RunRequest {
        partitions: vec!["2026-03-07".into()],
        pass: Some("same_day".into()),
        ..RunRequest::default()
    };
    let prepared = engine.prepare(&request).await.unwrap();
    let [Prepared::Created(run)] = prepared.as_slice() else {
        panic!("a pass's run is new beside the finished run of the pipeline: {prepared:?}");
    };
    let summaries = engine.execute(&[*run], Shutdown::never()).await.unwrap();
    assert_eq!(summaries[0].state, RunState::Succeeded);
    let again = engine.prepare(&request).await.unwrap();
    assert!(
        matches!(&again[..], [Prepared::AlreadyFinished(record)] if record.id == *run),
        "{again:?}"
    );
    let unknown = engine
        .prepare(&RunRequest {
            pass: Some("sameday".into()),
            ..request.clone()
        })
        .await
        .unwrap_err();
    assert_eq!(
        unknown.to_string(),
        "unknown pass \"sameday\" in pipeline \"test\" (its passes: tomorrow, overnight, same_day); did you mean \"same_day\"?"
    );
    let with_only = engine
        .prepare(&RunRequest {
            only: vec!["fetch".into()],
            ..request
        })
        .await
        .unwrap_err();
    assert!(
        with_only
            .to_string()
            .contains("cannot be combined with --only"),
        "{with_only}"
    );
}

/// After downtime each pass catches up by its own `catchup`: `all` runs every missed fire once,
/// oldest first, `latest` only the newest, `none` nothing; the pipeline's own schedule keeps its
/// own policy. A restart neither repeats nor loses a fire.
#[tokio::test]
async fn each_pass_catches_up_by_its_own_policy_after_downtime() {
    let harness = Harness::new();
    let mut spec = hoops_like();
    spec.schedule = schedule("0 6 * * *", -1, Catchup::None);
    let policies = [
        ("tomorrow", Catchup::Latest),
        ("overnight", Catchup::All),
        ("same_day", Catchup::None),
    ];
    for (name, catchup) in policies {
        let pass = spec
            .passes
            .iter_mut()
            .find(|pass| pass.name == name)
            .unwrap();
        pass.schedule.as_mut().unwrap().catchup = catchup;
    }
    // A run left unfinished before each start: serve takes it up, then reads its schedules,
    // and only then runs it, so once it has finished the cursors stand at the start time and
    // the clock may move.
    let serve_until = |marker: &'static str, until: Millis| {
        let mut engine = harness.engine(spec.clone());
        let store = harness.store.clone();
        let clock = harness.clock.clone();
        async move {
            let request = RunRequest {
                partitions: vec![marker.into()],
                ..RunRequest::default()
            };
            engine.prepare(&request).await.unwrap();
            let (trigger, shutdown) = Shutdown::channel();
            let served = tokio::spawn(async move { engine.serve(shutdown).await });
            eventually("the run left unfinished to be taken up", || {
                let store = store.clone();
                async move { store.unfinished_runs("test").await.unwrap().is_empty() }
            })
            .await;
            clock.set(until);
            eventually("the fires due to be recorded and run", || {
                clock.advance(1_000);
                let store = store.clone();
                async move {
                    store
                        .last_fire("test", "pass:overnight")
                        .await
                        .unwrap()
                        .is_some()
                        && store.unfinished_runs("test").await.unwrap().is_empty()
                }
            })
            .await;
            trigger.drain();
            served.await.unwrap().unwrap();
        }
    };
    // Every schedule fires once on the first day, so each has a last fire to catch up from.
    harness.clock.set(new_york("2026-03-01 00:00"));
    serve_until("2000-01-01", new_york("2026-03-01 23:00")).await;
    let count = |pass: Option<&'static str>| {
        let store = harness.store.clone();
        async move {
            let view = store
                .status_view(&StatusQuery {
                    every_run: true,
                    ..StatusQuery::new("test")
                })
                .await
                .unwrap();
            view.runs
                .iter()
                .filter(|run| run.record.pass.as_deref() == pass)
                .filter(|run| !run.record.partition.starts_with("2000-"))
                .map(|run| run.record.partition.clone())
                .collect::<BTreeSet<String>>()
        }
    };
    assert_eq!(
        count(Some("overnight")).await,
        ["2026-02-28".to_string()].into()
    );
    // Down for three days; started again at 00:00 on the 5th, before any fire of that day.
    harness.clock.set(new_york("2026-03-05 00:00"));
    serve_until("2000-01-02", new_york("2026-03-05 00:01")).await;
    let dates = |dates: &[&str]| -> BTreeSet<String> {
        dates.iter().map(|date| date.to_string()).collect()
    };
    assert_eq!(
        count(Some("overnight")).await,
        dates(&["2026-02-28", "2026-03-01", "2026-03-02", "2026-03-03"]),
        "all: every missed fire once"
    );
    assert_eq!(
        count(Some("tomorrow")).await,
        dates(&["2026-03-02", "2026-03-05"]),
        "latest: only the newest missed fire (17:00 on the 4th)"
    );
    assert_eq!(
        count(Some("same_day")).await,
        dates(&["2026-03-01"]),
        "none: no missed fire"
    );
    assert_eq!(
        count(None).await,
        dates(&["2026-02-28"]),
        "none for the schedule"
    );
}

/// A pass's `gate` replaces the phase's own in the pass's runs only: with the pipeline's (no
/// gate) a failed task of the phase stops what is downstream; in the lenient pass's run the
/// gate lets it go on without the task, and the run ends degraded.
#[tokio::test]
async fn a_pass_gate_overrides_the_phase_gate_in_its_runs_only() {
    let harness = Harness::new();
    let mut spec = pipeline(
        vec![
            task("summary", "analytics", &[], 1),
            task("context", "analytics", &[], 1),
            task("predict", "predictions", &[], 1),
        ],
        4,
    );
    let mut lenient = pass(
        "lenient",
        "0 6 * * *",
        0,
        &["summary", "context", "predict"],
        None,
    );
    lenient.schedule = None;
    lenient.gates.insert(
        "analytics".into(),
        keel_model::GateSpec {
            required: vec!["summary".into()],
            min_share: 0.0,
            grace: Duration::ZERO,
            tiers: Vec::new(),
        },
    );
    spec.passes = vec![lenient];
    let mut engine = harness.engine(spec);
    harness
        .executor
        .script("context", &[Outcome::Failed, Outcome::Failed]);
    assert_eq!(
        crate::run_partition(&mut engine, "2026-03-07").await,
        RunState::Failed
    );
    let prepared = engine
        .prepare(&RunRequest {
            partitions: vec!["2026-03-07".into()],
            pass: Some("lenient".into()),
            ..RunRequest::default()
        })
        .await
        .unwrap();
    let [Prepared::Created(run)] = prepared.as_slice() else {
        panic!("{prepared:?}");
    };
    let summaries = engine.execute(&[*run], Shutdown::never()).await.unwrap();
    assert_eq!(summaries[0].state, RunState::Degraded);
    let predicted = harness
        .store
        .task_runs(*run)
        .await
        .unwrap()
        .into_iter()
        .find(|row| row.task == "predict")
        .unwrap();
    assert_eq!(predicted.outcome, Some(Outcome::Succeeded));
    let gates = harness.store.gates(*run).await.unwrap();
    assert_eq!(
        gates.len(),
        1,
        "the pass's run stores the pass's gate: {gates:?}"
    );
    assert_eq!(gates[0].waived, vec!["context".to_string()]);
}
