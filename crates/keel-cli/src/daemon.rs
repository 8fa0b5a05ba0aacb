//! The daemon behind `keel serve`: one engine per pipeline file, all in this process, each
//! reloaded when its file changes — once the new version validates.
//!
//! A reload builds the new engine first (the file, its env files), then asks the running one to
//! release its attempts (`ShutdownLevel::Release`: nothing is stopped) and starts the new one,
//! which adopts them as after a restart. Until a changed file validates, the version in use
//! keeps running and [`Served::health`] says why the file on disk is not in use (`/ready`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Result;
use keel_engine::{Progress, Shutdown, ShutdownLevel};
use keel_model::PipelineSpec;
use keel_store::{AnyStore, StateLock};

use crate::Exit;
use crate::api::PipelineHealth;
use crate::display::printable;
use crate::serve_log::{Level, Line, LogFormat, Logger};
use crate::setup::ProcessEngine;
use crate::state::{self, StatePaths};

/// How often each pipeline file is looked at. A change is acted on once the file has stayed the
/// same for one more look, so an editor's half-written save is not taken for the new version.
const WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// What a pipeline's engine reports its progress to.
pub type Observer = Box<dyn FnMut(Progress) + Send>;

/// Makes the observer of each engine the daemon builds, for the pipeline version it runs.
pub type Observers = Arc<dyn Fn(&PipelineSpec) -> Observer + Send + Sync>;

/// A pipeline the daemon serves.
#[derive(Clone)]
pub struct Served {
    pub name: String,
    pub paths: StatePaths,
    /// `--state`, which wins over the file's `state` field.
    pub state_url: Option<String>,
    /// The version in use; a reload swaps it (the API reads it).
    pub spec: Arc<RwLock<Arc<PipelineSpec>>>,
    /// Why the file on disk is not the version in use (it does not validate, it renamed the
    /// pipeline), or why the pipeline stopped being served: `/ready` says so.
    pub health: Arc<RwLock<PipelineHealth>>,
    /// Stamped by the engine's loop on every turn, for `/ready`.
    pub heartbeat: Arc<AtomicI64>,
    /// Where its lines go: they name the pipeline.
    pub logger: Logger,
    /// With `--role scheduler`: the executor that queues its attempts for workers. One for
    /// the process, shared by every engine built for the pipeline: a fresh one after a
    /// database error would reap at once the leases the workers had no turn to renew yet.
    pub queue: Option<crate::cluster::QueueExecutor>,
}

/// The pipelines `keel serve` was given, loaded, with their state locked and opened: every
/// problem (a file that does not validate, two files naming one pipeline, a state held by
/// another Keel) is found before anything runs.
pub struct Daemon {
    pipelines: Vec<(Served, PipelineSpec, AnyStore)>,
    _locks: Vec<StateLock>,
}

impl Daemon {
    pub fn open(
        state_url: Option<&str>,
        files: &[PathBuf],
        format: LogFormat,
        role: crate::cluster::Role,
    ) -> Result<Daemon> {
        let mut pipelines: Vec<(Served, PipelineSpec, AnyStore)> = Vec::new();
        let mut locks: HashMap<PathBuf, StateLock> = HashMap::new();
        for file in files {
            let spec = state::load_pipeline(file)?;
            if let Some((other, _, _)) = pipelines
                .iter()
                .find(|(other, _, _)| other.name == spec.name)
            {
                return Err(Exit::usage(format!(
                    "{} and {} both define pipeline {}; serve each pipeline once, or rename one",
                    printable(&other.paths.pipeline.display().to_string()),
                    printable(&file.display().to_string()),
                    printable(&spec.name)
                )));
            }
            let paths = StatePaths::resolve(state_url, &spec, file)?;
            // Pipelines whose state is in one directory share its lock, taken once.
            let store = if locks.contains_key(&paths.dir) {
                paths.open()?
            } else {
                let (lock, store) = paths.lock_and_open_as(true)?;
                locks.insert(paths.dir.clone(), lock);
                store
            };
            let served = Served {
                name: spec.name.clone(),
                paths,
                state_url: state_url.map(str::to_string),
                logger: Logger::for_pipeline(
                    format,
                    &spec.name,
                    spec.timezone.parse().unwrap_or(chrono_tz::UTC),
                ),
                spec: Arc::new(RwLock::new(Arc::new(spec.clone()))),
                health: Arc::new(RwLock::new(PipelineHealth::valid())),
                heartbeat: Arc::new(AtomicI64::new(0)),
                queue: match (&store, role) {
                    (AnyStore::Postgres(postgres), crate::cluster::Role::Scheduler) => {
                        Some(crate::setup::queue_executor(postgres.work_queue(4))?)
                    }
                    (AnyStore::Sqlite(_), crate::cluster::Role::Scheduler) => {
                        return Err(crate::cluster::needs_postgres(role));
                    }
                    _ => None,
                },
            };
            pipelines.push((served, spec, store));
        }
        Ok(Daemon {
            pipelines,
            _locks: locks.into_values().collect(),
        })
    }

    /// For each state in PostgreSQL, whether this Keel still holds its executor lock there.
    pub fn postgres_locks(&self) -> Vec<keel_store::LockHold> {
        self._locks
            .iter()
            .filter_map(StateLock::postgres_held)
            .collect()
    }

    /// The pipelines served, in the order given.
    pub fn served(&self) -> Vec<Served> {
        self.pipelines
            .iter()
            .map(|(served, _, _)| served.clone())
            .collect()
    }

    pub fn specs(&self) -> impl Iterator<Item = &PipelineSpec> {
        self.pipelines.iter().map(|(_, spec, _)| spec)
    }

    /// Serves every pipeline until `shutdown`; each carries on its own if another fails. True
    /// if every pipeline stopped cleanly.
    pub async fn run(self, grace: Duration, shutdown: Shutdown, observers: Observers) -> bool {
        let local = tokio::task::LocalSet::new();
        local
            .run_until(async move {
                let mut all = tokio::task::JoinSet::new();
                for (served, spec, store) in self.pipelines {
                    let shutdown = shutdown.clone();
                    let observers = observers.clone();
                    all.spawn_local(async move {
                        let logger = served.logger.clone();
                        let name = served.name.clone();
                        let health = served.health.clone();
                        let served =
                            serve_through_outages(served, spec, store, grace, shutdown, observers);
                        match served.await {
                            Ok(()) => true,
                            Err(error) => {
                                let why = format!("{error:#}").replace('\n', "; ");
                                logger.write(Line::new(
                                    Level::Error,
                                    format!("pipeline {name}: stopped: {why}"),
                                ));
                                *write(&health) = PipelineHealth {
                                    valid: false,
                                    reason: Some(format!("stopped: {why}")),
                                };
                                false
                            }
                        }
                    });
                }
                let mut clean = true;
                while let Some(ended) = all.join_next().await {
                    clean &= ended.unwrap_or(false);
                }
                clean
            })
            .await
    }
}

/// How many times in a row an engine on a PostgreSQL state is started again after it stopped on
/// a database error; the count starts over once an engine has run for [`STEADY`].
const MAX_RESTARTS: u32 = 10;
/// How long an engine must run before its earlier restarts are forgotten.
const STEADY: Duration = Duration::from_secs(60);
/// The longest wait before starting an engine again.
const MAX_RESTART_BACKOFF: Duration = Duration::from_secs(30);

/// [`keep_serving`], and for a state in PostgreSQL, again after the engine stopped on a store
/// error (the server restarted, the network failed): after a backoff that doubles from one
/// second, at most [`MAX_RESTARTS`] times in a row. The new engine adopts every attempt, as
/// after a restart of the process; the last error ends the pipeline when the database stays
/// away.
async fn serve_through_outages(
    served: Served,
    spec: PipelineSpec,
    store: AnyStore,
    grace: Duration,
    shutdown: Shutdown,
    observers: Observers,
) -> Result<()> {
    let mut spec = spec;
    let mut restarts = 0;
    let mut backoff = Duration::from_secs(1);
    loop {
        let started = std::time::Instant::now();
        let ended = keep_serving(
            served.clone(),
            spec,
            store.clone(),
            grace,
            shutdown.clone(),
            observers.clone(),
        )
        .await;
        let error = match ended {
            Ok(()) => return Ok(()),
            Err(error) => error,
        };
        let from_the_store = error.chain().any(|cause| {
            cause.downcast_ref::<keel_store::StoreError>().is_some()
                || matches!(
                    cause.downcast_ref::<keel_engine::EngineError>(),
                    Some(keel_engine::EngineError::Store(_))
                )
        });
        if !matches!(store, AnyStore::Postgres(_))
            || !from_the_store
            || shutdown.level() != ShutdownLevel::Running
        {
            return Err(error);
        }
        if started.elapsed() >= STEADY {
            restarts = 0;
            backoff = Duration::from_secs(1);
        }
        restarts += 1;
        if restarts > MAX_RESTARTS {
            return Err(error.context(format!(
                "the engine stopped on a database error {MAX_RESTARTS} times in a row"
            )));
        }
        served.logger.warn(&format!(
            "pipeline {}: the engine stopped on a database error ({}); starting it again in {} s (try {restarts} of {MAX_RESTARTS}); it adopts every attempt",
            served.name,
            format!("{error:#}").replace('\n', "; "),
            backoff.as_secs()
        ));
        let until = tokio::time::Instant::now() + backoff;
        while tokio::time::Instant::now() < until {
            if shutdown.level() != ShutdownLevel::Running {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        backoff = (backoff * 2).min(MAX_RESTART_BACKOFF);
        spec = (**served
            .spec
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner()))
        .clone();
    }
}

/// Serves one pipeline until the shutdown, rebuilding its engine whenever its file changes to a
/// new version that passes `keel check`. The check of a new version (its smoke tests and version
/// commands included) runs on a task of its own, bounded by [`RELOAD_CHECK_TIMEOUT`], while the
/// engine in use carries on.
async fn keep_serving(
    served: Served,
    spec: PipelineSpec,
    store: AnyStore,
    grace: Duration,
    mut shutdown: Shutdown,
    observers: Observers,
) -> Result<()> {
    let mut watch = FileWatch::new(&served.paths.pipeline);
    let mut engine = engine_for(spec, &served, &store, grace, &observers, None)?;
    let mut shutdown_open = true;
    let mut pending: Option<tokio::task::JoinHandle<Result<Checked, String>>> = None;
    loop {
        let next = {
            let (trigger, own_shutdown) = Shutdown::channel();
            forward(shutdown.level(), &trigger);
            let serving = engine.serve(own_shutdown);
            tokio::pin!(serving);
            let next = loop {
                tokio::select! {
                    ended = &mut serving => {
                        if let Some(check) = pending.take() {
                            check.abort();
                        }
                        ended?;
                        return Ok(());
                    }
                    level = shutdown.changed(), if shutdown_open => match level {
                        Some(level) => forward(level, &trigger),
                        None => shutdown_open = false,
                    },
                    _ = tokio::time::sleep(WATCH_INTERVAL), if shutdown.level() == ShutdownLevel::Running => {
                        let current = engine_version(&served);
                        if let Some(candidate) = watch.look(&served, &current) {
                            // A newer file replaces the version being checked.
                            if let Some(check) = pending.take() {
                                check.abort();
                            }
                            let path = watch.path.clone();
                            served.logger.info(&format!(
                                "pipeline {}: checking version {} of {} before it goes live; version {current} runs meanwhile",
                                served.name,
                                candidate.version(),
                                path.display()
                            ));
                            pending = Some(tokio::spawn(preflight(candidate, path, current)));
                        }
                    }
                    checked = async { pending.as_mut().expect("guarded by is_some").await }, if pending.is_some() => {
                        pending = None;
                        let current = engine_version(&served);
                        let ready = match checked {
                            Ok(ready) => ready,
                            Err(error) => Err(format!(
                                "the checks of {} did not finish ({error}); still running version {current}",
                                watch.path.display()
                            )),
                        };
                        match ready.and_then(|checked| watch.build(&served, &current, checked, &store, grace, &observers)) {
                            Ok(next) => break next,
                            Err(problem) => watch.report(&served, Some(problem)),
                        }
                    }
                }
            };
            trigger.release();
            serving.await?;
            next
        };
        if shutdown.level() != ShutdownLevel::Running {
            // A shutdown came while the old engine let go: the new one is not started.
            return Ok(());
        }
        let (next_engine, next_spec) = next;
        let version = next_spec.version();
        let previous = std::mem::replace(&mut *write(&served.spec), next_spec);
        *write(&served.health) = PipelineHealth::valid();
        served.logger.info(&format!(
            "pipeline {}: reloaded {}: version {version} replaces {}; running attempts carry on",
            served.name,
            served.paths.pipeline.display(),
            previous.version()
        ));
        engine = next_engine;
    }
}

/// How long the checks of a changed pipeline file (static checks, version commands, smoke
/// tests) may take before the new version is refused; the version in use runs meanwhile.
const RELOAD_CHECK_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// How long each smoke test of a changed pipeline file may run, as `keel check`'s default.
const RELOAD_SMOKE_TIMEOUT: Duration = Duration::from_secs(60);

/// A new version that passed the checks, with its tasks' code identities.
struct Checked {
    spec: PipelineSpec,
    identities: HashMap<String, String>,
}

/// What `keel check` runs on a new version before it goes live: the static checks, the tasks'
/// version commands and code files, and the smoke tests, bounded by [`RELOAD_CHECK_TIMEOUT`].
/// Blocking parts run on the blocking pool; the engine in use is never waited on.
async fn preflight(spec: PipelineSpec, path: PathBuf, current: String) -> Result<Checked, String> {
    let keep = format!("still running version {current}");
    let version = spec.version();
    let checks = async {
        let surroundings = crate::setup::surroundings(&spec, &path)
            .map_err(|error| format!("{error:#}; {keep}").replace('\n', "; "))?;
        let (blocking_spec, blocking_surroundings) = (spec.clone(), surroundings.clone());
        let (mut rows, identities) = tokio::task::spawn_blocking(move || {
            let mut rows = crate::check::static_checks(&blocking_spec, &blocking_surroundings);
            let (versions, identities) = crate::check::version_checks(
                &blocking_spec,
                &blocking_surroundings,
                crate::versions::VERSION_TIMEOUT,
            );
            rows.extend(versions);
            (rows, identities)
        })
        .await
        .map_err(|error| {
            format!("the checks of version {version} failed to run: {error}; {keep}")
        })?;
        rows.extend(crate::check::smoke_tests(&spec, &surroundings, RELOAD_SMOKE_TIMEOUT, 2).await);
        Ok::<_, String>((rows, identities))
    };
    let (rows, identities) = tokio::time::timeout(RELOAD_CHECK_TIMEOUT, checks)
        .await
        .map_err(|_| {
            format!(
                "the checks of version {version} of {} took longer than {}; {keep}",
                path.display(),
                keel_model::format_duration(RELOAD_CHECK_TIMEOUT)
            )
        })??;
    // The version goes live only if it passes `keel check` here: a command that no longer
    // resolves, a version command or smoke test that fails (a missing import), would fail
    // every attempt.
    if let Some(failed) = crate::check::failures(&rows) {
        return Err(format!(
            "version {version} of {} fails keel check; {keep}: {failed}",
            path.display()
        ));
    }
    Ok(Checked { spec, identities })
}

fn engine_version(served: &Served) -> String {
    let spec = served
        .spec
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    spec.version()
}

/// Passes the daemon's shutdown on to one engine.
fn forward(level: ShutdownLevel, trigger: &keel_engine::ShutdownTrigger) {
    match level {
        ShutdownLevel::Drain => trigger.drain(),
        ShutdownLevel::Now => trigger.now(),
        ShutdownLevel::Running | ShutdownLevel::Release => {}
    }
}

fn engine_for(
    spec: PipelineSpec,
    served: &Served,
    store: &AnyStore,
    grace: Duration,
    observers: &Observers,
    identities: Option<HashMap<String, String>>,
) -> Result<ProcessEngine> {
    let observer = observers(&spec);
    let mut engine = crate::setup::build_engine_versioned(
        spec,
        &served.paths,
        store.clone(),
        Vec::new(),
        identities,
        served.queue.clone(),
    )?;
    engine.set_shutdown_grace(grace);
    engine.set_heartbeat(served.heartbeat.clone());
    engine.observe(observer);
    Ok(engine)
}

/// Watches one pipeline file for a new version.
struct FileWatch {
    path: PathBuf,
    /// The content last acted on: loaded, or found wanting.
    seen: Option<Vec<u8>>,
    /// A new content seen once, acted on if the next look finds it unchanged.
    settling: Option<Vec<u8>>,
}

impl FileWatch {
    fn new(path: &Path) -> FileWatch {
        FileWatch {
            path: path.to_path_buf(),
            seen: std::fs::read(path).ok(),
            settling: None,
        }
    }

    /// Looks at the file; a new version that validates comes back, to be checked before it
    /// goes live. A file that does not validate is reported once per content, and the version
    /// in use keeps running.
    fn look(&mut self, served: &Served, current: &str) -> Option<PipelineSpec> {
        let content = match std::fs::read(&self.path) {
            Ok(content) => content,
            Err(error) => {
                let problem = format!(
                    "cannot read {}: {error}; still running version {current}",
                    self.path.display()
                );
                self.report(served, Some(problem));
                return None;
            }
        };
        if self.seen.as_ref() == Some(&content) {
            self.settling = None;
            return None;
        }
        if self.settling.as_ref() != Some(&content) {
            self.settling = Some(content);
            return None;
        }
        self.settling = None;
        self.seen = Some(content);
        match self.load(served, current) {
            Ok(Some(next)) => Some(next),
            Ok(None) => {
                self.report(served, None);
                None
            }
            Err(problem) => {
                self.report(served, Some(problem));
                None
            }
        }
    }

    /// The file's new content, validated; `None` if its version is the one in use (a comment
    /// changed, say).
    fn load(&self, served: &Served, current: &str) -> Result<Option<PipelineSpec>, String> {
        let keep = format!("still running version {current}");
        let spec = state::load_pipeline(&self.path).map_err(|error| {
            format!(
                "{} does not validate; {keep}: {}",
                self.path.display(),
                format!("{error:#}").replace('\n', "; ")
            )
        })?;
        if spec.name != served.name {
            return Err(format!(
                "{} now names pipeline {:?}, not {:?}; {keep}; restart keel serve to serve it under its new name",
                self.path.display(),
                spec.name,
                served.name
            ));
        }
        if spec.version() == current {
            return Ok(None);
        }
        let paths = StatePaths::resolve(served.state_url.as_deref(), &spec, &self.path)
            .map_err(|error| format!("{error:#}; {keep}"))?;
        if paths.location != served.paths.location {
            return Err(format!(
                "{} now keeps its state elsewhere; {keep}; restart keel serve to move it",
                self.path.display()
            ));
        }
        Ok(Some(spec))
    }

    /// The engine for a version that passed its checks.
    fn build(
        &self,
        served: &Served,
        current: &str,
        checked: Checked,
        store: &AnyStore,
        grace: Duration,
        observers: &Observers,
    ) -> Result<(ProcessEngine, Arc<PipelineSpec>), String> {
        let keep = format!("still running version {current}");
        let shared = Arc::new(checked.spec.clone());
        let engine = engine_for(
            checked.spec,
            served,
            store,
            grace,
            observers,
            Some(checked.identities),
        )
        .map_err(|error| {
            format!(
                "{} cannot run; {keep}: {}",
                self.path.display(),
                format!("{error:#}").replace('\n', "; ")
            )
        })?;
        Ok((engine, shared))
    }

    /// Records and logs why the file on disk is not in use, or that it no longer matters.
    fn report(&self, served: &Served, problem: Option<String>) {
        let mut health = write(&served.health);
        if health.reason == problem {
            return;
        }
        match &problem {
            Some(problem) => served
                .logger
                .warn(&format!("pipeline {}: {problem}", served.name)),
            None => served.logger.info(&format!(
                "pipeline {}: {} is back to the version in use",
                served.name,
                self.path.display()
            )),
        }
        *health = PipelineHealth {
            valid: problem.is_none(),
            reason: problem,
        };
    }
}

fn write<T>(shared: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    shared
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
