//! `keel serve`, and the two ways other commands hand runs to it: `keel run --detach` queues a
//! run and exits, and a `keel run` that finds a serving Keel holding the state queues its run
//! and follows it to the end.

use std::sync::atomic::AtomicI64;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Result;
use keel_engine::{Progress, RunRequest};
use keel_model::{PipelineSpec, RunId};
use keel_store::{SqliteStore, StatusQuery, Store};

use crate::Exit;
use crate::api;
use crate::args::{RunArgs, ServeArgs};
use crate::commands::{
    Finished, exit_code, parse_grace, prepare_runs, print_range_summary, shutdown_on_signals,
};
use crate::display::{self, printable};
use crate::setup::build_engine;
use crate::state::{self, StatePaths};

/// How often a following `keel run` looks at the store.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

pub async fn serve(state_url: Option<&str>, args: ServeArgs) -> Result<u8> {
    let spec = state::load_pipeline(&args.pipeline.pipeline)?;
    let grace = parse_grace(&args.grace)?;
    let paths = StatePaths::resolve(state_url, &spec, &args.pipeline.pipeline)?;
    let (_lock, store) = paths.lock_and_open_as(true)?;
    let schedule = match &spec.schedule {
        Some(schedule) => format!(
            "schedule {:?} in {}, partition {:+}d, catch-up {}",
            schedule.cron,
            spec.timezone,
            schedule.partition_offset_days,
            format!("{:?}", schedule.catchup).to_lowercase()
        ),
        None => "no schedule: it runs what is queued (keel run --detach)".to_string(),
    };
    let name = spec.name.clone();
    let spec_for_api = Arc::new(spec.clone());
    let mut engine = build_engine(spec, &paths, store)?;
    engine.set_shutdown_grace(grace);
    let heartbeat = Arc::new(AtomicI64::new(0));
    engine.set_heartbeat(heartbeat.clone());
    let zone: chrono_tz::Tz = engine.spec().timezone.parse().unwrap_or(chrono_tz::UTC);
    engine.observe(move |event| log_progress(event, zone));
    let (token, source) =
        api::load_or_create_token(&paths.dir, std::env::var("KEEL_API_TOKEN").ok())?;
    let served = api::ServedPipeline {
        spec: spec_for_api,
        reader: paths.open()?,
        writer: paths.open()?,
        paths: paths.clone(),
        heartbeat,
        health: Arc::new(RwLock::new(api::PipelineHealth::valid())),
        actions: tokio::sync::Mutex::new(()),
    };
    let context = api::ApiContext {
        pipelines: vec![served],
        token,
        heartbeat_max_age: HEARTBEAT_MAX_AGE,
        // The metrics renderer is wired in by whoever builds the registry; until then the
        // endpoint answers an empty, valid exposition.
        metrics: Arc::new(|| "# EOF\n".to_string()),
    };
    let (bound, server) = api::start(&args.addr, Arc::new(context))?;
    log(&format!(
        "keel serve: pipeline {} (pid {}); {schedule}; state {}",
        printable(&name),
        std::process::id(),
        printable(&paths.database.display().to_string())
    ));
    let token_from = match source {
        api::TokenSource::Environment => "KEEL_API_TOKEN".to_string(),
        api::TokenSource::File(path) => printable(&path.display().to_string()),
    };
    log(&format!(
        "keel serve: API on http://{bound}; POST requests need the bearer token from {token_from}"
    ));
    let served = engine.serve(shutdown_on_signals(grace)).await;
    server.stop();
    served?;
    log("keel serve: stopped; unfinished runs carry on at the next start");
    Ok(0)
}

/// How long the engine's loop may go without a turn before `/ready` says it is stuck. The loop
/// turns at least every poll interval (250 ms); a step that launches many attempts may take a
/// few seconds.
const HEARTBEAT_MAX_AGE: Duration = Duration::from_secs(30);

/// One line per event that matters to someone reading a daemon's log.
fn log_progress(event: Progress, zone: chrono_tz::Tz) {
    let local = |at: keel_model::Millis| {
        chrono::DateTime::from_timestamp_millis(at)
            .map(|at| {
                at.with_timezone(&zone)
                    .format("%Y-%m-%d %H:%M %Z")
                    .to_string()
            })
            .unwrap_or_default()
    };
    let line = match event {
        Progress::RunScheduled {
            run,
            partition,
            fire_at,
            joined: false,
        } => {
            format!(
                "{partition}: the schedule fired for {}; run {run} started",
                local(fire_at)
            )
        }
        Progress::RunScheduled {
            run,
            partition,
            fire_at,
            joined: true,
        } => format!(
            "{partition}: the schedule fired for {}; unfinished run {run} carries on",
            local(fire_at)
        ),
        Progress::RunLoaded {
            run,
            partition,
            tasks,
            done,
        } => {
            format!(
                "{partition}: run {run} taken up ({done}/{} done)",
                crate::display::count(tasks as u64, "task", "tasks")
            )
        }
        Progress::RunFinished {
            run,
            partition,
            state,
        } => {
            format!("{partition}: run {run} finished {state}")
        }
        Progress::AttemptFinished {
            partition,
            task,
            attempt,
            outcome,
            message,
            retry_at,
            ..
        } if !outcome.is_complete() => {
            let next = if retry_at.is_some() {
                "will retry"
            } else {
                "gave up"
            };
            let detail = message
                .map(|message| format!(": {message}"))
                .unwrap_or_default();
            format!("{partition}: {task} attempt {attempt} {outcome}{detail} ({next})")
        }
        Progress::GateOpened {
            partition,
            phase,
            missing,
            ..
        } => format!(
            "{partition}: gate of phase {phase} opened without {}",
            missing.join(", ")
        ),
        Progress::BreakerChanged {
            resource, detail, ..
        } => {
            format!("resource {resource}: breaker {detail}")
        }
        _ => return,
    };
    log(&printable(&line));
}

/// A line on stderr with the UTC time in front.
pub(crate) fn log(line: &str) {
    let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ");
    eprintln!("{now} {line}");
}

/// Whether the state is held by a serving Keel right now.
///
/// A serving Keel has made its lock file, so without one nothing is asked of the lock: taking it
/// would make the file, in a directory that may be refused (shared with every user) or not be
/// Keel's at all (beside a file that is not a Keel state).
fn held_by_serve(paths: &StatePaths) -> bool {
    keel_store::StateLock::holder(&paths.dir).is_some_and(|(_, serving)| serving)
}

/// `keel run` when the runs go to a serving Keel: with `--detach`, or because one holds the
/// state. Returns `None` when neither applies and the caller runs them itself.
pub async fn hand_over(
    state_url: Option<&str>,
    spec: &PipelineSpec,
    args: &RunArgs,
) -> Result<Option<u8>> {
    let paths = StatePaths::resolve(state_url, spec, &args.pipeline.pipeline)?;
    let serving = held_by_serve(&paths);
    if !args.detach && !serving {
        return Ok(None);
    }
    let partitions = state::partitions(spec, &args.partitions)?;
    // Taking the lock makes the state directory if needed; a plain `keel run` holding it is
    // fine, the run only waits in the store for whoever takes it up.
    let _lock = if serving { None } else { paths.lock().ok() };
    let store = paths.open()?;
    let name = spec.name.clone();
    let mut engine = build_engine(spec.clone(), &paths, store.clone())?;
    let request = RunRequest {
        partitions,
        only: args.only.clone(),
        rerun: args.rerun,
    };
    let (runs, mut finished) = prepare_runs(&mut engine, &request, false).await?;
    let ranged = args.partitions.from.is_some();
    if args.detach {
        for run in &runs {
            println!("queued run {run}");
        }
        if !serving && !runs.is_empty() {
            eprintln!(
                "no keel serve holds this state: the runs wait until one starts, or until `keel run` resumes them"
            );
        }
        return Ok(Some(0));
    }
    eprintln!(
        "keel serve holds this state: {} handed to it; following until {} finished",
        plural(runs.len(), "run"),
        if runs.len() == 1 {
            "it has"
        } else {
            "they have"
        }
    );
    let ended = follow(&store, &name, &runs).await?;
    finished.extend(ended);
    if ranged {
        print_range_summary(&finished);
    }
    Ok(Some(exit_code(&finished)))
}

/// Waits for `runs` to finish in the store, then prints each one's table. Interrupted, it
/// leaves them to the serving Keel.
async fn follow(store: &SqliteStore, pipeline: &str, runs: &[RunId]) -> Result<Finished> {
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut open: Vec<RunId> = runs.to_vec();
    while !open.is_empty() {
        let mut still = Vec::new();
        for run in open {
            if !store.run(run).await?.state.is_finished() {
                still.push(run);
            }
        }
        open = still;
        if open.is_empty() {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep(FOLLOW_POLL) => {}
            _ = interrupt.recv() => {
                eprintln!("\nkeel: no longer following; keel serve carries the runs on");
                return Err(anyhow::Error::new(Exit {
                    code: 130,
                    message: String::new(),
                }));
            }
        }
    }
    let now = state::now_millis();
    let mut finished = Vec::new();
    for run in runs {
        let query = StatusQuery::new(pipeline.to_string()).run(*run);
        let view = store.status_view(&query).await?;
        for shown in &view.runs {
            display::print_run(shown, now);
        }
        let record = store.run(*run).await?;
        finished.push((record.partition, Some(record.state)));
    }
    Ok(finished)
}

fn plural(count: usize, word: &str) -> String {
    if count == 1 {
        format!("1 {word}")
    } else {
        format!("{count} {word}s")
    }
}
