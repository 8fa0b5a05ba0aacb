//! How the binary builds an engine: the process executor, the system clock, a lease owner and
//! the state's attempt directories. Every command that executes runs goes through here, so
//! `keel run`, `keel retry`, `keel bench` and `keel demo` run attempts the same way.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use keel_engine::{Engine, EngineConfig, LaunchContext, SplitMix64, SystemClock};
use keel_exec::ProcessExecutor;
use keel_model::PipelineSpec;
use keel_store::AnyStore;

use crate::cluster::{AttemptExecutor, QueueExecutor};
use crate::state::StatePaths;

/// How long running attempts may finish after a first SIGINT or SIGTERM, unless `--grace` says.
const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// A process-unique lease owner: host, pid and a nonce.
fn owner() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    let nonce = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.subsec_nanos())
        .unwrap_or(0);
    format!("{host}:{}:{nonce:08x}", std::process::id())
}

pub type ProcessEngine = Engine<AnyStore, AttemptExecutor, SystemClock>;

pub fn build_engine(
    spec: PipelineSpec,
    paths: &StatePaths,
    store: AnyStore,
) -> Result<ProcessEngine> {
    build_engine_with_env(spec, paths, store, Vec::new())
}

/// Like [`build_engine`], adding `extra_env` to every task's environment. The pipeline's env
/// files are read here, so every command that runs tasks refuses a broken one (exit 2).
pub fn build_engine_with_env(
    spec: PipelineSpec,
    paths: &StatePaths,
    store: AnyStore,
    extra_env: Vec<(String, String)>,
) -> Result<ProcessEngine> {
    build_engine_versioned(spec, paths, store, extra_env, None, None)
}

/// The process executor attempts run with on this machine.
pub(crate) fn local_executor() -> Result<ProcessExecutor> {
    let program = std::env::current_exe()
        .context("cannot find the keel executable to start attempt supervisors")?;
    Ok(ProcessExecutor::new(program, vec!["__attempt".into()]))
}

/// The executor that queues attempts for workers through `queue`; its HTTP tasks and probes
/// run here. Must be called inside a runtime: its watcher runs there for as long as the
/// executor lives. `keel serve` makes one per pipeline and hands it to every engine it builds,
/// so the watcher outlives an engine rebuilt after a database error or a reload, and with it
/// what it knows of an outage (it holds off reaping leases the workers could not renew).
pub fn queue_executor(queue: keel_store::WorkQueue) -> Result<QueueExecutor> {
    Ok(QueueExecutor::new(queue, local_executor()?))
}

/// Like [`build_engine_with_env`], with the tasks' code identities (`versions.rs`) already
/// read, as `keel serve` does off its engine's loop before a reload; `None` reads them here.
/// A task whose identity cannot be read refuses the engine (exit 1), naming the task.
/// With a `queue` executor (`keel serve --role scheduler`, see [`queue_executor`]), attempts go
/// to workers through the work queue.
pub fn build_engine_versioned(
    spec: PipelineSpec,
    paths: &StatePaths,
    store: AnyStore,
    mut extra_env: Vec<(String, String)>,
    identities: Option<std::collections::HashMap<String, String>>,
    queue: Option<QueueExecutor>,
) -> Result<ProcessEngine> {
    // Tasks that take request tokens reach this Keel through its token server.
    if let Some(variable) = crate::tokens::serve_for(&spec, &paths.dir, &store)? {
        extra_env.push(variable);
    }
    let queue_attempts = queue.is_some();
    let executor = match queue {
        Some(queue) => AttemptExecutor::Queue(queue),
        None => AttemptExecutor::Local(local_executor()?),
    };
    let surroundings = surroundings(&spec, &paths.pipeline)?;
    // Tasks' secrets come from `[secrets]`'s provider, or Keel's environment without one.
    let provider = spec
        .secrets
        .as_ref()
        .map_or(keel_model::SecretProvider::Env, |secrets| {
            secrets.provider.clone()
        });
    let resolver = std::sync::Arc::new(keel_secrets::Resolver::with_system_clock(
        &provider,
        &surroundings.pipeline_dir,
    ));
    let secrets: keel_engine::SecretSource = if queue_attempts {
        // A scheduler queues attempts for workers, which read their tasks' secrets themselves
        // (cluster::Job): it resolves none, so none can reach the queue.
        std::sync::Arc::new(|_: &str| Ok(String::new()))
    } else {
        std::sync::Arc::new(move |name: &str| {
            resolver
                .resolve(name)
                .map(|secret| secret.expose().to_string())
                .map_err(|error| error.to_string())
        })
    };
    let code_identities = match identities {
        Some(identities) => identities,
        None => crate::versions::code_identities(
            &spec,
            &surroundings,
            &extra_env,
            crate::versions::VERSION_TIMEOUT,
        )
        .map_err(|problems| {
            let listed: Vec<String> = problems
                .iter()
                .map(|problem| {
                    format!(
                        "the version of task {} cannot be read: {}",
                        problem.task, problem.problem
                    )
                })
                .collect();
            anyhow::anyhow!(
                "{}; fix the task's version command or code files (keel check shows every problem)",
                listed.join(" / ")
            )
        })?,
    };
    let launch_context = LaunchContext {
        code_identities,
        env_files: surroundings.env_files,
        pipeline_dir: Some(surroundings.pipeline_dir),
        keel_env: surroundings.keel_env,
        secrets: Some(secrets),
    };
    let config = EngineConfig {
        owner: owner(),
        attempts_dir: paths.attempts_dir(),
        kill_grace: Duration::from_secs(5),
        log_cap: 10 << 20,
        lease_ttl: Duration::from_secs(600),
        poll_interval: Duration::from_millis(250),
        extra_env,
        launch_context,
        shutdown_grace: DEFAULT_GRACE,
    };
    Ok(Engine::new(
        store,
        executor,
        SystemClock,
        Box::new(SplitMix64::from_entropy()),
        spec,
        config,
    ))
}

/// Where the pipeline's tasks run: its directory, Keel's environment and the env files it names
/// (read now, so a broken one is refused, exit 2).
pub fn surroundings(spec: &PipelineSpec, pipeline: &Path) -> Result<crate::check::Surroundings> {
    Ok(crate::check::Surroundings {
        env_files: crate::state::load_env_files(spec, pipeline)?,
        pipeline_dir: crate::state::absolute(pipeline.parent().unwrap_or(Path::new("")))?,
        // Variables whose name or value is not UTF-8 cannot be picked by `inherit_env` lists.
        keel_env: std::env::vars_os()
            .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)))
            .collect(),
    })
}
