//! The commands that only read the state: `status`, `history`, `events` and `logs`.
//!
//! They open the store read-only, change nothing in it and leave no file beside it. What
//! `status` and `history` show is one [`keel_store::StatusView`], read in one transaction.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use keel_model::{PipelineSpec, RunId};
use keel_store::{AnyStore, RunRecord, RunView, StatusQuery, StatusView, Store};
use serde_json::{Value, json};

use crate::Exit;
use crate::args::{EventsArgs, HistoryArgs, LogsArgs, RangeArgs, StatusArgs};
use crate::display::{self, printable};
use crate::state;

/// Rows `status` and `history` show when neither `--limit` nor a range is given.
const DEFAULT_LIMIT: u32 = 20;

/// A range of partitions from `--from/--to`: the query's bounds and every partition in it.
struct Range {
    bounds: (String, String),
    partitions: Vec<String>,
}

fn range(spec: &PipelineSpec, args: &RangeArgs) -> Result<Option<Range>> {
    let (Some(from), Some(to)) = (&args.from, &args.to) else {
        return Ok(None);
    };
    let partitions = state::date_range(spec, from, to)?;
    let bounds = (
        partitions.first().cloned().unwrap_or_default(),
        partitions.last().cloned().unwrap_or_default(),
    );
    Ok(Some(Range { bounds, partitions }))
}

/// The summary line of a range: each partition by the state of its newest run.
fn print_range_summary(range: &Range, view: &StatusView) {
    let states: Vec<_> = range
        .partitions
        .iter()
        .map(|partition| view.newest.get(partition).copied())
        .collect();
    println!("{}", display::range_summary(&states));
}

/// A task of a run as `status --json` and `history --json` show it.
fn task_json(run: &RunView, task: &keel_store::TaskRunRecord, now: keel_model::Millis) -> Value {
    let summary = run.task_summary(&task.task, now);
    let mut entry = json!({
        "name": task.task,
        "phase": task.phase,
        "outcome": task.outcome.filter(|_| task.state == keel_model::TaskState::Done).map(|outcome| outcome.as_str()),
        "state": task.state.as_str(),
        "attempts": task.attempts,
        "checks": summary.checks,
        "probes": summary.probes,
        "sensor_polls": summary.polls,
        "time_ms": summary.worked,
        "rows": summary.rows,
        "metrics": display::metrics_json(summary.metrics.as_deref()),
        "message": task.message,
    });
    // The version of the task its latest attempt ran (`keel rollout`).
    if let Some(version) = run
        .attempts
        .iter()
        .rev()
        .find(|attempt| attempt.task == task.task)
        .and_then(|attempt| attempt.task_version.clone())
    {
        entry["task_version"] = version.into();
    }
    if let Some(counts) = display::item_counts(run).get(&task.task) {
        entry["items"] = json!({
            "total": counts.total,
            "succeeded": counts.succeeded,
            "failed": counts.failed,
            "open": counts.open(),
            "summary": counts.summary(),
        });
    }
    entry
}

/// A run as `status --json` and the HTTP API show it.
pub(crate) fn run_json(run: &RunView, now: keel_model::Millis) -> Value {
    let record = &run.record;
    // An expanded task's items are counted in its own entry (`items`), not listed.
    let items = display::item_counts(run);
    let tasks: Vec<Value> = run
        .tasks
        .iter()
        .filter(|task| !display::is_item_row(task, &items))
        .map(|task| task_json(run, task, now))
        .collect();
    let mut entry = json!({
        "id": record.id.0,
        "partition": record.partition,
        "pass": record.pass,
        "state": record.state.as_str(),
        "version": record.version,
        "message": record.message,
        "tasks": tasks,
    });
    if let Some(accepted) = &run.accepted {
        entry["accepted"] = accepted.clone().into();
    }
    entry
}

/// A task across runs as `history --json` and the HTTP API show it.
pub(crate) fn history_json(task: &str, view: &StatusView, now: keel_model::Millis) -> Value {
    let runs: Vec<Value> = view
        .runs
        .iter()
        .flat_map(|run| {
            // Only the task's own row: its items are counted in its `items`.
            run.tasks
                .iter()
                .filter(|row| row.task == task)
                .map(move |row| {
                    let mut entry = task_json(run, row, now);
                    entry["run"] = run.record.id.0.into();
                    entry["partition"] = run.record.partition.clone().into();
                    entry["pass"] = run.record.pass.clone().into();
                    entry["run_state"] = run.record.state.as_str().into();
                    entry
                })
        })
        .collect();
    let anomalies: Vec<Value> = crate::anomalies::in_history(&view.runs, task, now)
        .iter()
        .map(crate::anomalies::Anomaly::to_json)
        .collect();
    let mut document = json!({ "task": task, "runs": runs, "anomalies": anomalies });
    if view.omitted > 0 {
        document["omitted"] = view.omitted.into();
    }
    document
}

pub(crate) fn resources_json(view: &StatusView) -> Value {
    let now = state::now_millis();
    view.resources
        .iter()
        .map(|resource| {
            let (breaker, detail) = resource.state_at(now);
            json!({
                "name": resource.name,
                "breaker": breaker,
                "detail": detail,
                "updated_at": resource.updated_at,
                "open_since": resource.open_since,
            })
        })
        .collect()
}

pub async fn status(state_url: Option<&str>, name: Option<&str>, args: StatusArgs) -> Result<u8> {
    let state::ForReading {
        spec,
        paths,
        without_file,
        ..
    } = state::pipeline_for_reading(state_url, &args.pipeline.pipeline, name).await?;
    let partition = args
        .partition
        .as_deref()
        .map(|partition| state::check_partition(&spec, partition))
        .transpose()?;
    let range = range(&spec, &args.range)?;
    if let Some(pass) = &args.pass
        && !without_file
        && spec.pass(pass).is_none()
    {
        return Err(Exit::usage(
            keel_engine::EngineError::unknown_pass(&spec, pass).to_string(),
        ));
    }
    let Some(store) = paths.open_for_reading()? else {
        if let Some(run) = args.run {
            return Err(no_such_run(&spec, RunId(run)));
        }
        if args.json {
            println!("{}", json!({ "runs": [] }));
        } else if let Some(partition) = &partition {
            println!("{}", no_run_yet_line(partition));
        } else {
            println!(
                "no runs yet for pipeline {:?} (state {})",
                spec.name, paths.location
            );
            if let Some(range) = &range {
                print_range_summary(range, &StatusView::default());
            }
        }
        return Ok(0);
    };
    let one_run = args.run.is_some() || (partition.is_some() && !args.all);
    let query = StatusQuery {
        pipeline: spec.name.clone(),
        run: args.run.map(RunId),
        partitions: match (&partition, &range) {
            (Some(partition), _) => Some((partition.clone(), partition.clone())),
            (None, Some(range)) => Some(range.bounds.clone()),
            (None, None) => None,
        },
        every_run: args.all,
        task: None,
        limit: match (args.limit, &range, one_run) {
            (Some(limit), _, _) => Some(limit),
            (None, Some(_), _) | (None, None, true) => None,
            (None, None, false) => Some(DEFAULT_LIMIT),
        },
        pass: args.pass.clone(),
    };
    // One read-only transaction: what is shown is one consistent moment of the state.
    let view = store.status_view(&query).await?;
    let now = state::now_millis();
    // Where each quota stands in its current period (`keel token` counts the use).
    let quotas = if spec
        .resources
        .iter()
        .any(|resource| resource.quota.is_some())
    {
        let uses = store.quota_uses(&spec.name).await?;
        crate::tokens::quota_standings(&spec, &uses, now)
    } else {
        Vec::new()
    };
    if let Some(run) = args.run
        && view.runs.is_empty()
    {
        return Err(no_such_run(&spec, RunId(run)));
    }
    // Each task's rows, metrics and time judged against the earlier partitions shown (with
    // --all a partition's reruns would be counted twice, so nothing is judged).
    let anomalies = if args.all {
        Vec::new()
    } else {
        crate::anomalies::in_view(&view.runs, now)
    };
    if args.json {
        let runs: Vec<Value> = view.runs.iter().map(|run| run_json(run, now)).collect();
        let mut document = json!({ "runs": runs });
        if view.omitted > 0 {
            document["omitted"] = view.omitted.into();
        }
        if !anomalies.is_empty() {
            document["anomalies"] = anomalies
                .iter()
                .map(crate::anomalies::Anomaly::to_json)
                .collect();
        }
        if !view.resources.is_empty() {
            document["resources"] = resources_json(&view);
        }
        if !view.rollouts.is_empty() {
            document["rollouts"] = view
                .rollouts
                .iter()
                .map(crate::rollout::version_json)
                .collect();
        }
        if !quotas.is_empty() {
            document["quotas"] = quotas
                .iter()
                .map(crate::tokens::QuotaStanding::to_json)
                .collect();
        }
        if !view.flags.is_empty() {
            document["flags"] = view
                .flags
                .iter()
                .map(|flag| json!({ "task": flag.task, "state": flag.state, "set_at": flag.set_at, "set_by": flag.set_by }))
                .collect();
        }
        println!("{}", serde_json::to_string_pretty(&document)?);
        return Ok(0);
    }
    if view.runs.is_empty() {
        match &partition {
            Some(partition) => println!("{}", no_run_yet_line(partition)),
            None => println!("no runs yet for pipeline {:?}", spec.name),
        }
    } else if args.run.is_some() || partition.is_some() {
        for run in &view.runs {
            display::print_run(run, now);
        }
    } else {
        display::print_run_list(&view.runs);
    }
    if !anomalies.is_empty() {
        println!("anomalies (against the earlier partitions shown):");
        for anomaly in &anomalies {
            let line = format!(
                "{} {}: {}",
                anomaly.partition,
                anomaly.task,
                anomaly.judgement.describe(&anomaly.metric)
            );
            println!("  {}", printable(&line));
        }
    }
    if let Some(note) =
        display::omitted_note(view.omitted, view.runs.len(), args.all, range.is_some())
    {
        println!("{note}");
    }
    display::print_resources(&view.resources);
    if !quotas.is_empty() {
        let described: Vec<String> = quotas.iter().map(|quota| quota.describe()).collect();
        println!("quotas: {}", printable(&described.join(", ")));
    }
    if !view.flags.is_empty() {
        let flags: Vec<String> = view
            .flags
            .iter()
            .map(|flag| format!("{} {}", flag.task, flag.state))
            .collect();
        println!("flags: {} (keel flags list)", flags.join(", "));
    }
    if !view.rollouts.is_empty() {
        let rollouts: Vec<String> = view
            .rollouts
            .iter()
            .map(|record| {
                format!(
                    "{} {} {} ({} clean, {} failed)",
                    record.task, record.version, record.status, record.clean, record.failed
                )
            })
            .collect();
        println!("rollouts: {} (keel rollout list)", rollouts.join(", "));
    }
    if let Some(range) = &range {
        print_range_summary(range, &view);
    }
    Ok(0)
}

/// What `status --partition D` says of a partition without a run, and how to start one.
fn no_run_yet_line(partition: &str) -> String {
    format!(
        "no run of partition {partition} yet; start one with `keel run --partition {partition}`"
    )
}

fn no_such_run(spec: &PipelineSpec, run: RunId) -> anyhow::Error {
    Exit::usage(format!(
        "no run {run} of pipeline {:?}; `keel status --all` lists every run",
        spec.name
    ))
}

/// Splits `[PIPELINE] REST…` where a leading `.toml` path or existing file is the pipeline.
pub fn split_pipeline(args: &[String]) -> (PathBuf, Vec<String>) {
    match args.split_first() {
        Some((first, rest))
            if !rest.is_empty() && (first.ends_with(".toml") || Path::new(first).is_file()) =>
        {
            (PathBuf::from(first), rest.to_vec())
        }
        _ => (PathBuf::from("keel.toml"), args.to_vec()),
    }
}

/// The one task named by `[PIPELINE] TASK`, which must be one of the pipeline's (unless the
/// pipeline file cannot be read, when the state alone says which tasks there are).
async fn pipeline_and_task(
    state_url: Option<&str>,
    name: Option<&str>,
    args: &[String],
    usage: &str,
) -> Result<(state::ForReading, String)> {
    let (pipeline, rest) = split_pipeline(args);
    let [task] = rest.as_slice() else {
        return Err(Exit::usage(format!("usage: {usage}")));
    };
    let reading = state::pipeline_for_reading(state_url, &pipeline, name).await?;
    // An item of an expanded task has a task run of its own (`box_scores[0021]`).
    let an_item = keel_model::expand::split_item_name(task).is_some_and(|(parent, _)| {
        reading
            .spec
            .task(parent)
            .is_some_and(|parent| parent.expand.is_some())
    });
    if !reading.without_file && reading.spec.task(task).is_none() && !an_item {
        return Err(unknown_task(&reading.spec, task));
    }
    Ok((reading, task.clone()))
}

/// An unknown task: the closest name, if one is close, and every name the pipeline has.
pub(crate) fn unknown_task(spec: &PipelineSpec, task: &str) -> anyhow::Error {
    let names: Vec<&str> = spec.tasks.iter().map(|task| task.name.as_str()).collect();
    let suggestion = keel_model::closest(task, names.iter().copied())
        .map(|name| format!("; did you mean {name:?}?"))
        .unwrap_or_default();
    Exit::usage(format!(
        "unknown task {task:?} in pipeline {:?} (its tasks: {}){suggestion}",
        spec.name,
        names.join(", ")
    ))
}

pub async fn history(state_url: Option<&str>, name: Option<&str>, args: HistoryArgs) -> Result<u8> {
    let (state::ForReading { spec, paths, .. }, task) = pipeline_and_task(
        state_url,
        name,
        &args.args,
        "keel history [PIPELINE] TASK [--from D --to D] [--all] [--json]",
    )
    .await?;
    let range = range(&spec, &args.range)?;
    let view = match paths.open_for_reading()? {
        None => StatusView::default(),
        Some(store) => {
            let query = StatusQuery {
                pipeline: spec.name.clone(),
                run: None,
                partitions: range.as_ref().map(|range| range.bounds.clone()),
                every_run: args.all,
                task: Some(task.clone()),
                limit: args.limit.or(range.is_none().then_some(DEFAULT_LIMIT)),
                pass: None,
            };
            store.status_view(&query).await?
        }
    };
    let now = state::now_millis();
    if args.json {
        let document = history_json(&task, &view, now);
        println!("{}", serde_json::to_string_pretty(&document)?);
        return Ok(0);
    }
    if view.runs.is_empty() {
        println!("task {task} has not run yet");
    } else {
        // The phase the task had when it last ran: the file may be missing.
        let phase = view
            .runs
            .iter()
            .flat_map(|run| run.tasks.iter())
            .map(|row| row.phase.as_str())
            .next()
            .unwrap_or_default();
        println!("task {task} · phase {}", printable(phase));
        display::print_history(&view.runs, now);
        let anomalies = crate::anomalies::in_history(&view.runs, &task, now);
        if !anomalies.is_empty() {
            println!("anomalies (against the earlier partitions shown):");
            for anomaly in &anomalies {
                println!("  {}", anomaly.describe());
            }
        }
    }
    if let Some(note) =
        display::omitted_note(view.omitted, view.runs.len(), args.all, range.is_some())
    {
        println!("{note}");
    }
    Ok(0)
}

/// Events read per transaction while catching up.
const EVENT_PAGE: u32 = 500;
/// How often `--follow` looks for new events.
const FOLLOW_EVERY: Duration = Duration::from_millis(200);

/// Which events `keel events` prints (and the HTTP API streams), and when `--follow` stops.
pub(crate) struct EventFilter {
    pipeline: String,
    partition: Option<String>,
    run: Option<RunId>,
    /// Runs seen so far; `None` for a run of another pipeline.
    runs: HashMap<RunId, Option<RunRecord>>,
}

impl EventFilter {
    /// Every event of `pipeline`'s runs, or only of `run`'s.
    pub(crate) fn new(pipeline: String, run: Option<RunId>) -> EventFilter {
        EventFilter {
            pipeline,
            partition: None,
            run,
            runs: HashMap::new(),
        }
    }

    /// Forgets the runs seen so far, so that a long-lived follower holds bounded memory.
    pub(crate) fn forget_runs_beyond(&mut self, most: usize) {
        if self.runs.len() > most {
            self.runs.clear();
        }
    }

    /// The run of an event, if the event is one to print.
    pub(crate) async fn admit(
        &mut self,
        store: &AnyStore,
        event: &keel_store::EventRecord,
    ) -> Result<Option<RunRecord>> {
        if self.run.is_some_and(|run| run != event.run) {
            return Ok(None);
        }
        if !self.runs.contains_key(&event.run) {
            let record = match store.run(event.run).await {
                Ok(record) => Some(record).filter(|record| record.pipeline == self.pipeline),
                Err(keel_store::StoreError::NoSuchRun(_)) => None,
                Err(error) => return Err(error.into()),
            };
            self.runs.insert(event.run, record);
        }
        let record = self.runs[&event.run].clone();
        Ok(record.filter(|record| {
            self.partition
                .as_ref()
                .is_none_or(|partition| *partition == record.partition)
        }))
    }

    /// Whether a follower is done: the run it follows (or the partition's newest run) ended.
    async fn finished(&self, store: &AnyStore) -> Result<bool> {
        let record = match (self.run, &self.partition) {
            (Some(run), _) => Some(store.run(run).await?),
            (None, Some(partition)) => store.latest_run(&self.pipeline, partition).await?,
            (None, None) => return Ok(false),
        };
        Ok(record.is_some_and(|record| record.state.is_finished()))
    }
}

/// An event time in the pipeline's time zone, RFC 3339 with milliseconds.
fn event_time(zone: chrono_tz::Tz, at: keel_model::Millis) -> String {
    use chrono::TimeZone;
    match zone.timestamp_millis_opt(at) {
        chrono::LocalResult::Single(time) => {
            time.to_rfc3339_opts(chrono::SecondsFormat::Millis, false)
        }
        _ => at.to_string(),
    }
}

/// An event as `events --json` and the HTTP API's event stream show it.
pub(crate) fn event_json(
    zone: chrono_tz::Tz,
    record: &RunRecord,
    event: &keel_store::EventRecord,
) -> Value {
    json!({
        "seq": event.seq,
        "at": event.at,
        "time": event_time(zone, event.at),
        "run": event.run.0,
        "partition": record.partition,
        "task": event.task,
        "attempt_id": event.attempt.map(|attempt| attempt.0),
        "kind": event.kind.as_str(),
        "detail": event.detail,
    })
}

fn print_event(
    json: bool,
    zone: chrono_tz::Tz,
    record: &RunRecord,
    event: &keel_store::EventRecord,
) -> Result<()> {
    let time = event_time(zone, event.at);
    let line = if json {
        event_json(zone, record, event).to_string()
    } else {
        let task = event
            .task
            .as_deref()
            .map(|task| format!(" {}", printable(task)))
            .unwrap_or_default();
        let detail = if event.detail.is_empty() {
            String::new()
        } else {
            format!(": {}", printable(&event.detail))
        };
        format!(
            "{time}  run {} {}  {}{task}{detail}",
            event.run,
            printable(&record.partition),
            event.kind
        )
    };
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")?;
    stdout.flush()?;
    Ok(())
}

pub async fn events(state_url: Option<&str>, name: Option<&str>, args: EventsArgs) -> Result<u8> {
    let state::ForReading { spec, paths, .. } =
        state::pipeline_for_reading(state_url, &args.pipeline.pipeline, name).await?;
    let partition = args
        .partition
        .as_deref()
        .map(|partition| state::check_partition(&spec, partition))
        .transpose()?;
    let zone: chrono_tz::Tz = spec.timezone.parse().unwrap_or(chrono_tz::UTC);
    let Some(store) = paths.open_for_reading()? else {
        if let Some(run) = args.run {
            return Err(no_such_run(&spec, RunId(run)));
        }
        eprintln!("no runs yet for pipeline {:?}", spec.name);
        return Ok(0);
    };
    if let Some(run) = args.run {
        match store.run(RunId(run)).await {
            Ok(record) if record.pipeline == spec.name => {}
            Ok(_) | Err(keel_store::StoreError::NoSuchRun(_)) => {
                return Err(no_such_run(&spec, RunId(run)));
            }
            Err(error) => return Err(error.into()),
        }
    }
    let mut filter = EventFilter {
        pipeline: spec.name.clone(),
        partition,
        run: args.run.map(RunId),
        runs: HashMap::new(),
    };
    let mut after = 0;
    // Once the followed run has ended, one more read picks up what it committed meanwhile.
    let mut ending = false;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let page = store.events_after(after, EVENT_PAGE).await?;
        for event in &page {
            after = event.seq;
            if let Some(record) = filter.admit(&store, event).await? {
                print_event(args.json, zone, &record, event)?;
            }
        }
        if page.len() == EVENT_PAGE as usize {
            continue;
        }
        if !args.follow || ending {
            return Ok(0);
        }
        if filter.finished(&store).await? {
            ending = true;
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_EVERY) => {}
            _ = &mut interrupted => return Ok(130),
        }
    }
}

pub async fn logs(state_url: Option<&str>, name: Option<&str>, args: LogsArgs) -> Result<u8> {
    let usage = "keel logs [PIPELINE] TASK [--partition D | --run ID] [--attempt N | --sensor]";
    let (state::ForReading { spec, paths, .. }, task) =
        pipeline_and_task(state_url, name, &args.args, usage).await?;
    let partition = args
        .partition
        .as_deref()
        .map(|partition| state::check_partition(&spec, partition))
        .transpose()?;
    if args.sensor && spec.task(&task).is_some_and(|task| task.wait_for.is_none()) {
        return Err(Exit::usage(format!(
            "task {task:?} has no sensor (`wait_for`); leave out --sensor to see its attempts' output"
        )));
    }
    let store = paths
        .open_for_reading()?
        .ok_or_else(|| match (args.run, &partition) {
            (Some(run), _) => no_such_run(&spec, RunId(run)),
            (None, Some(partition)) => state::no_run_of_partition(partition),
            (None, None) => state::no_runs_yet(&spec),
        })?;
    let mut query = StatusQuery::new(spec.name.clone());
    query.task = Some(task.clone());
    match (args.run, &partition) {
        (Some(run), _) => query.run = Some(RunId(run)),
        (None, Some(partition)) => query = query.partition(partition.clone()),
        (None, None) => query.every_run = true,
    }
    let view = store.status_view(&query).await?;
    let explicit = args.run.is_some() || partition.is_some();
    if view.runs.is_empty() {
        return Err(match (args.run, &partition) {
            (Some(run), _) => no_such_run(&spec, RunId(run)),
            (None, Some(partition)) => state::no_run_of_partition(partition),
            (None, None) => Exit::usage(format!(
                "task {task:?} has not run yet; start it with `keel run`"
            )),
        });
    }
    // Newest run first: by default, the newest in which the task ran (or its sensor polled).
    let mut runs: Vec<&RunView> = view.runs.iter().collect();
    runs.sort_by_key(|run| std::cmp::Reverse(run.record.id));
    if args.sensor {
        let run_dir = |run: &RunView| {
            paths
                .attempts_dir()
                .join(store.store_id())
                .join(run.record.id.0.to_string())
        };
        let found = runs
            .iter()
            .take(if explicit { 1 } else { runs.len() })
            .find_map(|run| last_sensor_poll(&run_dir(run), &task).map(|dir| (run, dir)));
        let Some((_, dir)) = found else {
            let run = runs[0].record.id;
            if explicit {
                return Err(Exit::usage(format!(
                    "the sensor of task {task:?} has not polled in run {run}"
                )));
            }
            return Err(Exit::usage(format!(
                "the sensor of task {task:?} has not polled yet"
            )));
        };
        return print_output(&dir, &format!("the last sensor poll of {task:?}"));
    }
    let chosen = if explicit {
        runs[0]
    } else {
        runs.iter()
            .copied()
            .find(|run| run.attempts_of(&task).next().is_some())
            .unwrap_or(runs[0])
    };
    let attempts: Vec<_> = chosen.attempts_of(&task).collect();
    let run = chosen.record.id;
    if attempts.is_empty() {
        let hint = if spec.task(&task).is_some_and(|task| task.wait_for.is_some()) {
            "; its sensor's output is shown with --sensor"
        } else {
            ""
        };
        return Err(Exit::usage(format!(
            "task {task:?} has no attempts in run {run} of partition {}{hint}",
            printable(&chosen.record.partition)
        )));
    }
    let attempt = match args.attempt {
        Some(number) => attempts
            .iter()
            .find(|attempt| attempt.number == number)
            .ok_or_else(|| {
                let known: Vec<String> = attempts
                    .iter()
                    .map(|attempt| attempt.number.to_string())
                    .collect();
                let has = if known.len() == 1 {
                    "only attempt"
                } else {
                    "attempts"
                };
                Exit::usage(format!(
                    "task {task:?} has no attempt {number} in run {run}; it has {has} {}",
                    known.join(", ")
                ))
            })?,
        None => attempts[attempts.len() - 1],
    };
    print_output(
        Path::new(&attempt.dir),
        &format!("attempt {} of {task:?}", attempt.number),
    )
}

/// The directory of a task's newest sensor poll in a run's directory: the engine gives each
/// poll its own, `<task>.sensor.<when, in ms>`.
fn last_sensor_poll(run_dir: &Path, task: &str) -> Option<PathBuf> {
    let prefix = format!("{task}.sensor.");
    std::fs::read_dir(run_dir)
        .ok()?
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let at: i64 = name.strip_prefix(&prefix)?.parse().ok()?;
            Some((at, entry.path()))
        })
        .max_by_key(|(at, _)| *at)
        .map(|(_, path)| path)
}

/// Prints the captured output in an attempt or sensor poll directory as it was written. The
/// directory is one a task can write into, so the log is opened without following a link and
/// only if it is a regular file, and copied in pieces: a planted link to `/dev/zero` or a pipe
/// can neither hang nor bloat `keel logs`.
fn print_output(dir: &Path, what: &str) -> Result<u8> {
    let path = dir.join(keel_exec::supervisor::OUTPUT_FILE);
    let shown = || printable(&path.display().to_string());
    match keel_exec::open_regular_file(&path) {
        Ok(Some(mut file)) => {
            std::io::copy(&mut file, &mut std::io::stdout().lock())
                .with_context(|| format!("cannot read {}", shown()))?;
            Ok(0)
        }
        Ok(None) => {
            eprintln!("{what} captured no output ({})", shown());
            Ok(0)
        }
        Err(problem) => Err(anyhow::anyhow!(
            "cannot show {}: {problem}; Keel wrote it as a plain file, so something replaced it",
            shown()
        )),
    }
}
