//! `keel serve`, and the two ways other commands hand runs to it: `keel run --detach` queues a
//! run and exits, and a `keel run` that finds a serving Keel holding the state queues its run
//! and follows it to the end.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use keel_engine::{Progress, RunRequest};
use keel_model::{PipelineSpec, RunId};
use keel_store::{AnyStore, StatusQuery, Store};

use crate::Exit;
use crate::alerts::Alerts;
use crate::api;
use crate::args::{RunArgs, ServeArgs};
use crate::cluster::Role;
use crate::commands::{
    Finished, exit_code, parse_grace, prepare_runs, print_range_summary,
    shutdown_on_signals_telling,
};
use crate::daemon::{Daemon, Observer, Observers};
use crate::display::{self, printable};
use crate::metrics::Metrics;
use crate::serve_log;
use crate::setup::build_engine;
use crate::state::{self, StatePaths};

/// How often a following `keel run` looks at the store.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

pub async fn serve(state_url: Option<&str>, args: ServeArgs) -> Result<u8> {
    let format = args.log_format;
    serve_logged(state_url, args)
        .await
        .map_err(|error| serve_log::end_with(format, error))
}

async fn serve_logged(state_url: Option<&str>, args: ServeArgs) -> Result<u8> {
    let grace = parse_grace(&args.grace)?;
    if args.role == Role::Worker {
        return serve_as_worker(state_url, &args, grace).await;
    }
    let traces = serve_log::trace_endpoint(args.otlp_endpoint.as_deref())?;
    let daemon = open_daemon(state_url, &args).await?;
    // Lines about no pipeline in particular (the clock, signals, the stop) name the pipeline
    // when there is only one.
    let general = match daemon.served().as_slice() {
        [only] => only.logger.clone(),
        _ => serve_log::Logger::new(args.log_format),
    };
    accelerate(&args, &general)?;
    watch_postgres_locks(daemon.postgres_locks(), general.clone());
    // One registry for every pipeline served: `/metrics` renders it (`Metrics::renderer`).
    let metrics = Metrics::new(&general_name(&daemon));
    let mut reporters = HashMap::new();
    let mut exporters = Vec::new();
    let mut deliveries = Vec::new();
    for served in daemon.served() {
        let spec = daemon
            .specs()
            .find(|spec| spec.name == served.name)
            .expect("every served pipeline has its spec");
        let (telemetry, exporter) =
            serve_log::Telemetry::start(&served.logger, &served.name, traces.clone());
        exporters.push((exporter, served.logger.clone()));
        let recorder = metrics.for_pipeline(&served.name);
        // `[alerts]` as the pipeline file had it when serve started; a reload keeps them.
        let alerts = match &spec.alerts {
            Some(alerts) => {
                let (alerts, delivery) = Alerts::start(
                    alerts,
                    crate::alerts::watch::Watch::of(spec, crate::state::now_millis()),
                    &served.name,
                    served.paths.pipeline_dir()?,
                    recorder.clone(),
                    served.paths.open()?,
                    served.logger.clone(),
                )?;
                deliveries.push(delivery);
                Some(alerts)
            }
            None => None,
        };
        let reporter = Reporter {
            telemetry,
            metrics: recorder,
            alerts,
        };
        reporters.insert(served.name.clone(), Arc::new(reporter));
        served.logger.info(&format!(
            "keel serve: pipeline {} from {} (pid {}); {}; state {}",
            printable(&served.name),
            printable(&served.paths.pipeline.display().to_string()),
            std::process::id(),
            describe_schedule(spec),
            printable(&served.paths.location.to_string())
        ));
    }
    // Each engine the daemon builds for a pipeline (a reload builds another) reports to the
    // pipeline's one logger and trace exporter.
    let observers: Observers = Arc::new(move |spec: &PipelineSpec| {
        let reporter = reporters.get(&spec.name).cloned();
        Box::new(move |event| {
            if let Some(reporter) = &reporter {
                reporter.observe(&event);
            }
        }) as Observer
    });
    let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (bound, server) = start_api(
        &daemon,
        api_addr(&args),
        &metrics,
        &general,
        stopping.clone(),
    )?;
    let notices = general.clone();
    let shutdown = shutdown_on_signals_telling(grace, move |notice| {
        stopping.store(true, std::sync::atomic::Ordering::Relaxed);
        notices.warn(notice)
    });
    let clean = daemon.run(grace, shutdown, observers).await;
    server.stop();
    let _ = bound;
    // The engines, and with them the exporters' queues, are gone: let the last spans out.
    // Joining an exporter's thread waits up to one request's timeout: not on the runtime.
    let _ = tokio::task::spawn_blocking(move || {
        for (exporter, logger) in exporters {
            exporter.finish(&logger);
        }
    })
    .await;
    // Likewise the alerts already decided.
    for delivery in deliveries {
        delivery.finish().await;
    }
    general.info("keel serve: stopped; unfinished runs carry on at the next start");
    Ok(if clean { 0 } else { 1 })
}

/// Where the API listens when `--addr` is not given.
const DEFAULT_ADDR: &str = "127.0.0.1:8080";

fn api_addr(args: &ServeArgs) -> &str {
    args.addr.as_deref().unwrap_or(DEFAULT_ADDR)
}

/// How often a standby scheduler tries to take the state's executor lock.
const STANDBY_RETRY: Duration = Duration::from_millis(200);

/// Opens the pipelines; a standby scheduler (`--role scheduler`) whose state another Keel holds
/// waits for the lock, and takes over as soon as its holder is gone.
async fn open_daemon(state_url: Option<&str>, args: &ServeArgs) -> Result<Daemon> {
    let logger = serve_log::Logger::new(args.log_format);
    let mut waiting_since: Option<std::time::Instant> = None;
    // A standby shows the cluster on its address until it takes over; the view is stopped
    // (dropped) before the active scheduler's API binds the same address.
    let mut view: Option<api::ApiServer> = None;
    loop {
        match Daemon::open(state_url, &args.pipelines, args.log_format, args.role) {
            Ok(daemon) => {
                drop(view.take());
                if let Some(since) = waiting_since {
                    logger.info(&format!(
                        "keel serve: active scheduler now (pid {}), {} ms after the previous one let go",
                        std::process::id(),
                        since.elapsed().as_millis()
                    ));
                }
                return Ok(daemon);
            }
            Err(error) if args.role == Role::Scheduler && unreachable(&error) => {
                // A standby outlives the database's restarts: it tries again, more slowly.
                logger.warn(&format!(
                    "keel serve: standby scheduler: {}; trying again in {} s",
                    format!("{error:#}").replace('\n', "; "),
                    STANDBY_UNREACHABLE_RETRY.as_secs()
                ));
                tokio::time::sleep(STANDBY_UNREACHABLE_RETRY).await;
            }
            Err(error) if args.role == Role::Scheduler && held_elsewhere(&error) => {
                if waiting_since.is_none() {
                    logger.info(&format!(
                        "keel serve: standby scheduler (pid {}): {}; taking over when it stops",
                        std::process::id(),
                        format!("{error:#}").replace('\n', "; ")
                    ));
                    view = standby_view(state_url, args, &logger);
                }
                // Measured from the last try that found the lock held.
                waiting_since = Some(std::time::Instant::now());
                tokio::time::sleep(STANDBY_RETRY).await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// The cluster view of a standby scheduler, on the address its API will have; a standby that
/// cannot show it (the address is taken, say by the active scheduler on the same machine) waits
/// without it.
fn standby_view(
    state_url: Option<&str>,
    args: &ServeArgs,
    logger: &serve_log::Logger,
) -> Option<api::ApiServer> {
    let opened = (|| -> Result<Option<keel_store::WorkQueue>> {
        let file = args.pipelines.first().context("no pipeline file")?;
        let spec = state::load_pipeline(file)?;
        let paths = StatePaths::resolve(state_url, &spec, file)?;
        Ok(match paths.open()? {
            keel_store::AnyStore::Postgres(store) => Some(store.work_queue(2)),
            keel_store::AnyStore::Sqlite(_) => None,
        })
    })();
    let started = match opened {
        Ok(Some(queue)) => {
            crate::cluster::view::start(api_addr(args), queue, "standby scheduler", logger)
        }
        Ok(None) => return None,
        Err(error) => Err(error),
    };
    match started {
        Ok(server) => Some(server),
        Err(error) => {
            logger.warn(&format!(
                "keel serve: standby scheduler: no cluster view: {}",
                format!("{error:#}").replace('\n', "; ")
            ));
            None
        }
    }
}

/// How long this Keel may go without its executor lock in PostgreSQL while the server cannot be
/// reached (a restart of the server, a network failure) before it stops. While the server is
/// away nothing this Keel writes reaches it, so waiting is safe; once it answers, the lock is
/// either taken back or found taken, and then this Keel stops at once.
const UNREACHABLE_LIMIT: Duration = Duration::from_secs(60);

/// What the lock watcher does at one look.
#[derive(Debug, PartialEq, Eq)]
enum LockVerdict {
    /// Every lock is held, as it was.
    Holding,
    /// A lock was lost: say so once, and keep trying.
    Lost,
    /// Every lock is held again.
    Regained,
    /// Stop at once, for this reason.
    Stop(String),
}

/// Judges the locks as they stand (`states`), `lost_for` how long one has been lost, if it was.
fn judge_locks(states: &[keel_store::LockNow], lost_for: Option<Duration>) -> LockVerdict {
    use keel_store::LockNow;
    if states.contains(&LockNow::TakenElsewhere) {
        return LockVerdict::Stop(
            "another Keel holds the executor lock in PostgreSQL now (a standby took over)".into(),
        );
    }
    let all_held = states.iter().all(|state| *state == LockNow::Held);
    match (all_held, lost_for) {
        (true, None) => LockVerdict::Holding,
        (true, Some(_)) => LockVerdict::Regained,
        (false, None) => LockVerdict::Lost,
        (false, Some(lost)) if lost >= UNREACHABLE_LIMIT => LockVerdict::Stop(format!(
            "the executor lock in PostgreSQL could not be taken back within {} s (the server did not answer)",
            UNREACHABLE_LIMIT.as_secs()
        )),
        (false, Some(_)) => LockVerdict::Holding,
    }
}

/// Ends this process when another Keel took a state's executor lock in PostgreSQL, or when the
/// server could not be reached to take it back for [`UNREACHABLE_LIMIT`]: two active
/// schedulers must never run one state. It exits as a kill would, which the engine is built to
/// survive: the next active scheduler adopts every attempt.
fn watch_postgres_locks(locks: Vec<keel_store::LockHold>, logger: serve_log::Logger) {
    if locks.is_empty() {
        return;
    }
    tokio::spawn(async move {
        let mut lost_since: Option<std::time::Instant> = None;
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let states: Vec<keel_store::LockNow> = locks.iter().map(|lock| lock.now()).collect();
            match judge_locks(&states, lost_since.map(|since| since.elapsed())) {
                LockVerdict::Holding => {}
                LockVerdict::Regained => {
                    logger.info("keel serve: the executor lock in PostgreSQL is held again");
                    lost_since = None;
                }
                LockVerdict::Lost => {
                    logger.warn(&format!(
                        "keel serve: lost the connection holding the executor lock in PostgreSQL; reconnecting (stopping if another Keel took it, or if the server does not answer within {} s)",
                        UNREACHABLE_LIMIT.as_secs()
                    ));
                    lost_since = Some(std::time::Instant::now());
                }
                LockVerdict::Stop(reason) => {
                    logger.write(serve_log::Line::new(
                        serve_log::Level::Error,
                        format!(
                            "keel serve: {reason}; stopping at once, as a restart adopts every attempt"
                        ),
                    ));
                    std::process::exit(1);
                }
            }
        }
    });
}

/// How long a standby waits before it tries a database it could not reach again.
const STANDBY_UNREACHABLE_RETRY: Duration = Duration::from_secs(2);

fn unreachable(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<keel_store::StoreError>(),
            Some(keel_store::StoreError::Unreachable { .. })
        ) || matches!(
            cause.downcast_ref::<keel_store::LockError>(),
            Some(keel_store::LockError::Store(
                keel_store::StoreError::Unreachable { .. }
            ))
        )
    })
}

fn held_elsewhere(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<keel_store::LockError>(),
            Some(keel_store::LockError::Held { .. } | keel_store::LockError::HeldInPostgres { .. })
        )
    })
}

/// `keel serve --role worker`: the state's URL from `--state`, or from the pipeline file's
/// `state` when there is one.
async fn serve_as_worker(state_url: Option<&str>, args: &ServeArgs, grace: Duration) -> Result<u8> {
    let text = match state_url {
        Some(url) => url.to_string(),
        None => {
            let file = args.pipelines.first().cloned().unwrap_or_default();
            if !file.exists() {
                return Err(crate::cluster::needs_postgres(Role::Worker));
            }
            let spec = state::load_pipeline(&file)?;
            spec.state.clone().unwrap_or_default()
        }
    };
    let Some(url) = keel_store::PostgresUrl::parse(&text) else {
        return Err(crate::cluster::needs_postgres(Role::Worker));
    };
    let lease = keel_model::parse_duration(&args.lease)
        .ok()
        .filter(|lease| *lease >= Duration::from_millis(300) && *lease <= Duration::from_secs(3600))
        .ok_or_else(|| {
            Exit::usage(format!(
                "--lease {:?} is not a duration between 300ms and 1h; write it like 15s",
                args.lease
            ))
        })?;
    let config = crate::cluster::worker::WorkerConfig {
        url,
        slots: args.slots,
        lease,
        work_dir: args.work_dir.clone(),
        grace,
        view_addr: args.addr.clone(),
    };
    crate::cluster::worker::run(config, serve_log::Logger::new(args.log_format)).await
}

/// How long the engine's loop may go without a turn before `/ready` says it is stuck. The loop
/// turns at least every poll interval (250 ms); a step that launches many attempts may take a
/// few seconds.
const HEARTBEAT_MAX_AGE: Duration = Duration::from_secs(30);

/// The HTTP API beside the engines, on a thread of its own; its address and token source go to
/// the log (never the token). The token file is beside the first pipeline's state.
fn start_api(
    daemon: &Daemon,
    addr: &str,
    metrics: &Metrics,
    logger: &serve_log::Logger,
    stopping: Arc<std::sync::atomic::AtomicBool>,
) -> Result<(std::net::SocketAddr, api::ApiServer)> {
    let served = daemon.served();
    let first = served.first().expect("serve has at least one pipeline");
    let (token, source) =
        api::load_or_create_token(&first.paths.dir, std::env::var("KEEL_API_TOKEN").ok())?;
    let mut pipelines = Vec::new();
    for served in &served {
        pipelines.push(api::ServedPipeline {
            spec: served.spec.clone(),
            reader: served.paths.open()?,
            writer: served.paths.open()?,
            paths: served.paths.clone(),
            heartbeat: served.heartbeat.clone(),
            health: served.health.clone(),
            actions: tokio::sync::Mutex::new(()),
        });
    }
    let cluster = match &pipelines[0].reader {
        keel_store::AnyStore::Postgres(store) => Some(store.work_queue(2)),
        keel_store::AnyStore::Sqlite(_) => None,
    };
    let context = api::ApiContext {
        pipelines,
        token,
        // The heartbeat is stamped with Keel's clock: as long in wall-clock time when it runs
        // faster (`--clock-speed`).
        heartbeat_max_age: HEARTBEAT_MAX_AGE * keel_engine::SystemClock::speed() as u32,
        metrics: metrics.renderer(),
        logger: logger.clone(),
        stopping,
        cluster,
    };
    let (bound, server) = api::start(addr, Arc::new(context))?;
    let token_from = match source {
        api::TokenSource::Environment => "KEEL_API_TOKEN".to_string(),
        api::TokenSource::File(path) => printable(&path.display().to_string()),
    };
    logger.info(&format!(
        "keel serve: API on http://{bound}; POST requests need the bearer token from {token_from}"
    ));
    Ok((bound, server))
}

/// What each engine event of one pipeline feeds: its log lines and spans, the metrics, and
/// the alerts.
struct Reporter {
    telemetry: serve_log::Telemetry,
    metrics: Metrics,
    alerts: Option<Alerts>,
}

impl Reporter {
    fn observe(&self, event: &Progress) {
        self.metrics.record(event);
        if let Some(alerts) = &self.alerts {
            alerts.observe(event);
        }
        self.telemetry.observe(event);
    }
}

/// The pipeline a registry is first made for: the first served.
fn general_name(daemon: &Daemon) -> String {
    daemon
        .served()
        .first()
        .map(|served| served.name.clone())
        .unwrap_or_default()
}

/// `--clock-speed` and `--clock-start`: the engine's clock for this process.
fn accelerate(args: &ServeArgs, logger: &serve_log::Logger) -> Result<()> {
    if args.clock_speed == 1 && args.clock_start.is_none() {
        return Ok(());
    }
    let start = match &args.clock_start {
        None => state::now_millis(),
        Some(text) => chrono::DateTime::parse_from_rfc3339(text)
            .map_err(|error| {
                Exit::usage(format!(
                    "--clock-start {text:?} is not a time: {error}; write it as RFC 3339, e.g. 2026-03-07T05:00:00Z"
                ))
            })?
            .timestamp_millis(),
    };
    keel_engine::SystemClock::accelerate(start, args.clock_speed);
    let from = chrono::DateTime::from_timestamp_millis(start).unwrap_or_default();
    logger.info(&format!(
        "keel serve: the clock starts at {} and runs {}x as fast as the wall clock (tasks keep real time)",
        from.format("%Y-%m-%dT%H:%M:%SZ"),
        args.clock_speed
    ));
    Ok(())
}

fn describe_schedule(spec: &PipelineSpec) -> String {
    match &spec.schedule {
        Some(schedule) => format!(
            "schedule {:?} in {}, partition {:+}d, catch-up {}",
            schedule.cron,
            spec.timezone,
            schedule.partition_offset_days,
            format!("{:?}", schedule.catchup).to_lowercase()
        ),
        None => "no schedule: it runs what is queued (keel run --detach)".to_string(),
    }
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
        pass: args.pass.clone(),
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
async fn follow(store: &AnyStore, pipeline: &str, runs: &[RunId]) -> Result<Finished> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use keel_store::LockNow::{Held, Reconnecting, TakenElsewhere};

    /// The server away: keep trying for up to a minute; another Keel holding the lock: stop at
    /// once, however short the loss.
    #[test]
    fn a_lost_lock_is_waited_for_while_the_server_is_away_and_given_up_when_taken() {
        assert_eq!(judge_locks(&[Held], None), LockVerdict::Holding);
        assert_eq!(judge_locks(&[Held, Reconnecting], None), LockVerdict::Lost);
        let second = Duration::from_secs(1);
        assert_eq!(
            judge_locks(&[Reconnecting], Some(second)),
            LockVerdict::Holding
        );
        assert_eq!(
            judge_locks(&[Reconnecting], Some(UNREACHABLE_LIMIT - second)),
            LockVerdict::Holding
        );
        assert!(matches!(
            judge_locks(&[Reconnecting], Some(UNREACHABLE_LIMIT)),
            LockVerdict::Stop(reason) if reason.contains("did not answer")
        ));
        assert_eq!(
            judge_locks(&[Held], Some(second * 30)),
            LockVerdict::Regained
        );
        for lost in [None, Some(Duration::ZERO)] {
            assert!(matches!(
                judge_locks(&[Held, TakenElsewhere], lost),
                LockVerdict::Stop(reason) if reason.contains("another Keel holds")
            ));
        }
    }
}
