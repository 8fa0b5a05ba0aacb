//! One function per command.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use keel_engine::{Prepared, RunRequest, RunSummary};
use keel_model::RunState;
use keel_store::Store;

use crate::Exit;
use crate::args::{CancelArgs, Cli, Command, LogsArgs, RetryArgs, RunArgs, StatusArgs};
use crate::display::{self, ProgressDisplay};
use crate::setup::{ProcessEngine, build_engine};
use crate::state::{self, StatePaths};

pub async fn dispatch(cli: Cli) -> Result<u8> {
    let state = cli.state.as_deref();
    match cli.command {
        Command::Init { dir, force } => init(&dir, force),
        Command::Validate(args) => validate(&args.pipeline),
        Command::Run(args) => run(state, args).await,
        Command::Status(args) => status(state, args).await,
        Command::Logs(args) => logs(state, args).await,
        Command::Retry(args) => retry(state, args).await,
        Command::Cancel(args) => cancel(state, args).await,
        Command::Bench(args) => crate::bench::bench(args).await,
        Command::Demo(args) => crate::demo::demo(args).await,
        Command::Attempt { rest } => Ok(keel_exec::supervisor::main(&rest) as u8),
    }
}

fn init(dir: &Path, force: bool) -> Result<u8> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create directory {dir:?}"))?;
    let path = dir.join("keel.toml");
    if path.exists() && !force {
        bail!(
            "{} already exists; pass --force to overwrite it",
            path.display()
        );
    }
    std::fs::write(&path, keel_config::STARTER_PIPELINE)
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!("wrote {}", path.display());
    println!("next: keel validate {0} && keel run {0}", path.display());
    Ok(0)
}

fn validate(path: &Path) -> Result<u8> {
    let spec = state::load_pipeline(path)?;
    state::load_env_files(&spec, path)?;
    println!(
        "{} is valid: pipeline {:?}, {} phases, {} tasks, version {}",
        path.display(),
        spec.name,
        spec.phases.len(),
        spec.tasks.len(),
        spec.version()
    );
    Ok(0)
}

/// The first SIGINT or SIGTERM drains (no new attempts; running ones may finish within the
/// grace period); a second one stops everything at once.
fn shutdown_on_signals(grace: Duration) -> keel_engine::Shutdown {
    use tokio::signal::unix::{SignalKind, signal};
    let (trigger, shutdown) = keel_engine::Shutdown::channel();
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return shutdown;
    };
    tokio::spawn(async move {
        for round in 0..2 {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            if round == 0 {
                eprintln!(
                    "\nkeel: stopping; running attempts may finish for up to {}, then they are stopped and resume on the next `keel run`. Interrupt again to stop them now.",
                    keel_model::format_duration(grace)
                );
                trigger.drain();
            } else {
                eprintln!(
                    "\nkeel: stopping running attempts now; they resume on the next `keel run`"
                );
                trigger.now();
            }
        }
    });
    shutdown
}

/// Reads `--grace`, held to the same 365-day limit as every duration in the pipeline file.
pub fn parse_grace(text: &str) -> Result<Duration> {
    match keel_model::parse_duration(text) {
        Ok(grace) if grace <= keel_config::MAX_DURATION => Ok(grace),
        Ok(_) | Err(keel_model::DurationError::Overflow(_)) => Err(Exit::usage(format!(
            "--grace {text:?} is too long; it must be at most 365d"
        ))),
        Err(error) => Err(Exit::usage(format!("--grace {text:?}: {error}"))),
    }
}

/// The exit code for a set of runs: the worst of them.
fn exit_code(states: &[RunState]) -> u8 {
    if states
        .iter()
        .any(|state| !matches!(state, RunState::Succeeded | RunState::Degraded))
    {
        1
    } else if states.contains(&RunState::Degraded) {
        3
    } else {
        0
    }
}

async fn execute_and_report(
    engine: &mut ProcessEngine,
    runs: &[keel_model::RunId],
    mut finished_states: Vec<RunState>,
    grace: Duration,
) -> Result<u8> {
    let progress = ProgressDisplay::start(engine);
    let summaries: Vec<RunSummary> = engine.execute(runs, shutdown_on_signals(grace)).await?;
    progress.finish();
    let interrupted = summaries.iter().any(|summary| !summary.state.is_finished());
    for summary in &summaries {
        let view = engine
            .store()
            .status_view(&engine.spec().name, Some(&summary.partition), 1)
            .await?;
        for run in view.runs.iter().filter(|run| run.record.id == summary.run) {
            display::print_run(run);
        }
    }
    if interrupted {
        eprintln!("interrupted: run `keel run` again with the same partition to resume");
        return Ok(130);
    }
    finished_states.extend(summaries.iter().map(|summary| summary.state));
    Ok(exit_code(&finished_states))
}

async fn run(state_url: Option<&str>, args: RunArgs) -> Result<u8> {
    let spec = state::load_pipeline(&args.pipeline.pipeline)?;
    let grace = parse_grace(&args.grace)?;
    if args.detach {
        return Err(Exit::usage(
            "--detach needs `keel serve`, which is not available yet; run in the foreground without --detach",
        ));
    }
    let partitions = state::partitions(&spec, &args.partitions)?;
    let paths = StatePaths::resolve(state_url, &spec, &args.pipeline.pipeline)?;
    let (_lock, store) = paths.lock_and_open()?;
    let mut engine = build_engine(spec, &paths, store)?;
    let request = RunRequest {
        partitions,
        only: args.only,
        rerun: args.rerun,
    };
    let prepared = engine
        .prepare(&request)
        .await
        .map_err(|error| match error {
            keel_engine::EngineError::UnknownTask { .. }
            | keel_engine::EngineError::RemovedTasks { .. } => Exit::usage(error.to_string()),
            other => other.into(),
        })?;
    let mut runs = Vec::new();
    let mut finished_states = Vec::new();
    for decision in prepared {
        match decision {
            Prepared::Created(run) => runs.push(run),
            Prepared::Resumed(run) => {
                eprintln!("resuming unfinished run {run}");
                runs.push(run);
            }
            Prepared::AlreadyFinished(record) => {
                println!(
                    "partition {} already finished as {} (run {}); nothing to do. Use --rerun to run it again.",
                    display::printable(&record.partition),
                    record.state,
                    record.id
                );
                finished_states.push(record.state);
            }
        }
    }
    if runs.is_empty() {
        return Ok(exit_code(&finished_states));
    }
    engine.set_shutdown_grace(grace);
    execute_and_report(&mut engine, &runs, finished_states, grace).await
}

async fn status(state_url: Option<&str>, args: StatusArgs) -> Result<u8> {
    let spec = state::load_pipeline(&args.pipeline.pipeline)?;
    let partition = args
        .partition
        .as_deref()
        .map(|partition| state::check_partition(&spec, partition))
        .transpose()?;
    let paths = StatePaths::resolve(state_url, &spec, &args.pipeline.pipeline)?;
    let Some(store) = paths.open_for_reading()? else {
        if args.json {
            println!("{}", serde_json::json!({ "runs": [] }));
        } else {
            println!(
                "no runs yet for pipeline {:?} (state {})",
                spec.name,
                paths.database.display()
            );
        }
        return Ok(0);
    };
    // One read-only transaction: what is shown is one consistent moment of the state.
    let view = store
        .status_view(&spec.name, partition.as_deref(), args.limit)
        .await?;
    if args.json {
        let mut json_runs = Vec::new();
        for keel_store::RunView {
            record: run, tasks, ..
        } in &view.runs
        {
            json_runs.push(serde_json::json!({
                "id": run.id.0,
                "partition": run.partition,
                "state": run.state.as_str(),
                "version": run.version,
                "message": run.message,
                "tasks": tasks.iter().map(|task| serde_json::json!({
                    "name": task.task,
                    "phase": task.phase,
                    "outcome": task.outcome.filter(|_| task.state == keel_model::TaskState::Done).map(|outcome| outcome.as_str()),
                    "state": task.state.as_str(),
                    "attempts": task.attempts,
                    "message": task.message,
                })).collect::<Vec<_>>(),
            }));
        }
        let mut document = serde_json::json!({ "runs": json_runs });
        if !view.resources.is_empty() {
            let now = state::now_millis();
            document["resources"] = view
                .resources
                .iter()
                .map(|resource| {
                    let (breaker, detail) = resource.state_at(now);
                    serde_json::json!({
                        "name": resource.name,
                        "breaker": breaker,
                        "detail": detail,
                        "updated_at": resource.updated_at,
                        "open_since": resource.open_since,
                    })
                })
                .collect();
        }
        println!("{}", serde_json::to_string_pretty(&document)?);
        return Ok(0);
    }
    if view.runs.is_empty() {
        println!("no runs yet for pipeline {:?}", spec.name);
        return Ok(0);
    }
    if partition.is_some() {
        for run in &view.runs {
            display::print_run(run);
        }
    } else {
        display::print_run_list(&view.runs);
    }
    display::print_resources(&view.resources);
    Ok(0)
}

/// Splits `[PIPELINE] REST…` where a leading `.toml` path or existing file is the pipeline.
fn split_pipeline(args: &[String]) -> (PathBuf, Vec<String>) {
    match args.split_first() {
        Some((first, rest))
            if !rest.is_empty() && (first.ends_with(".toml") || Path::new(first).is_file()) =>
        {
            (PathBuf::from(first), rest.to_vec())
        }
        _ => (PathBuf::from("keel.toml"), args.to_vec()),
    }
}

async fn logs(state_url: Option<&str>, args: LogsArgs) -> Result<u8> {
    let (pipeline, rest) = split_pipeline(&args.args);
    let [task] = rest.as_slice() else {
        return Err(Exit::usage(
            "usage: keel logs [PIPELINE] --partition D TASK [--attempt N]",
        ));
    };
    let spec = state::load_pipeline(&pipeline)?;
    let partition = state::check_partition(&spec, &args.partition)?;
    if spec.task(task).is_none() {
        return Err(Exit::usage(
            keel_engine::EngineError::unknown_task(&spec, task).to_string(),
        ));
    }
    let paths = StatePaths::resolve(state_url, &spec, &pipeline)?;
    let store = paths
        .open_for_reading()?
        .ok_or_else(|| anyhow::anyhow!("no runs yet for pipeline {:?}", spec.name))?;
    let run = store
        .latest_run(&spec.name, &partition)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no run of partition {partition} yet; start one with `keel run --partition {partition}`"))?;
    let attempts: Vec<_> = store
        .attempts(run.id)
        .await?
        .into_iter()
        .filter(|attempt| attempt.task == *task)
        .collect();
    if attempts.is_empty() {
        bail!(
            "task {task:?} has no attempts in run {} of partition {partition}",
            run.id
        );
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
                anyhow::anyhow!(
                    "task {task:?} has no attempt {number} in run {}; it has attempts {}",
                    run.id,
                    known.join(", ")
                )
            })?,
        None => attempts.last().expect("not empty"),
    };
    let path = Path::new(&attempt.dir).join(keel_exec::supervisor::OUTPUT_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            std::io::stdout().write_all(&bytes)?;
            Ok(0)
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            eprintln!(
                "attempt {} of {task:?} captured no output ({})",
                attempt.number,
                display::printable(&path.display().to_string())
            );
            Ok(0)
        }
        Err(error) => Err(error).with_context(|| {
            format!(
                "cannot read {}",
                display::printable(&path.display().to_string())
            )
        }),
    }
}

async fn retry(state_url: Option<&str>, args: RetryArgs) -> Result<u8> {
    let (pipeline, tasks) = split_pipeline(&args.args);
    let spec = state::load_pipeline(&pipeline)?;
    let grace = parse_grace(&args.grace)?;
    let partition = state::check_partition(&spec, &args.partition)?;
    let paths = StatePaths::resolve(state_url, &spec, &pipeline)?;
    let (_lock, store) = paths.lock_and_open()?;
    let mut engine = build_engine(spec, &paths, store)?;
    let run = engine
        .retry(&partition, &tasks)
        .await
        .map_err(|error| match error {
            keel_engine::EngineError::UnknownTask { .. }
            | keel_engine::EngineError::NoRun { .. } => Exit::usage(error.to_string()),
            other => other.into(),
        })?;
    eprintln!(
        "retrying {} in run {run} of partition {partition}, and everything downstream",
        tasks.join(", ")
    );
    let created_with = display::printable(&engine.store().run(run).await?.version);
    let version = engine.spec().version();
    if created_with != version {
        eprintln!(
            "the pipeline file changed since run {run} was created (version {created_with}); the retried tasks run version {version}"
        );
    }
    engine.set_shutdown_grace(grace);
    execute_and_report(&mut engine, &[run], Vec::new(), grace).await
}

async fn cancel(state_url: Option<&str>, args: CancelArgs) -> Result<u8> {
    let spec = state::load_pipeline(&args.pipeline.pipeline)?;
    // Settling the cancel may start the engine, which needs the env files: a broken one is
    // refused before the request is stored, not after.
    state::load_env_files(&spec, &args.pipeline.pipeline)?;
    let partition = state::check_partition(&spec, &args.partition)?;
    let paths = StatePaths::resolve(state_url, &spec, &args.pipeline.pipeline)?;
    let store = paths
        .open_existing()?
        .ok_or_else(|| anyhow::anyhow!("no runs yet for pipeline {:?}", spec.name))?;
    let run = store
        .latest_run(&spec.name, &partition)
        .await?
        .ok_or_else(|| anyhow::anyhow!("no run of partition {partition} to cancel"))?;
    if run.state.is_finished() {
        println!(
            "run {} of partition {partition} already finished as {}; nothing to cancel",
            run.id, run.state
        );
        return Ok(0);
    }
    store.request_cancel(run.id, state::now_millis()).await?;
    match paths.lock() {
        Ok(_lock) => {
            // Nobody is executing the run: settle it here, stopping any attempt left running.
            let mut engine = build_engine(spec, &paths, store.clone())?;
            engine
                .execute(&[run.id], keel_engine::Shutdown::never())
                .await?;
        }
        Err(_) => {
            // The keel that runs it sees the request within a second; wait for it to finish.
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            while !store.run(run.id).await?.state.is_finished() {
                if std::time::Instant::now() > deadline {
                    bail!(
                        "asked the running keel to cancel run {}, but it has not finished after 60s",
                        run.id
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    let state = store.run(run.id).await?.state;
    println!("run {} of partition {partition} is {state}", run.id);
    Ok(0)
}
