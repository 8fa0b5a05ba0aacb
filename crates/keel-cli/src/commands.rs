//! One function per command.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use keel_engine::{Prepared, RunRequest, RunSummary};
use keel_model::RunState;
use keel_store::Store;

use crate::Exit;
use crate::args::{CancelArgs, Cli, Command, RetryArgs, RunArgs};
use crate::display::{self, ProgressDisplay};
use crate::inspect::{self, split_pipeline};
use crate::setup::{ProcessEngine, build_engine};
use crate::state::{self, StatePaths};

pub async fn dispatch(cli: Cli) -> Result<u8> {
    let state = cli.state.as_deref();
    let name = cli.pipeline_name.as_deref();
    match cli.command {
        Command::Init { dir, force } => init(&dir, force),
        Command::Validate(args) => validate(&args.pipeline),
        Command::Run(args) => run(state, args).await,
        Command::Status(args) => inspect::status(state, name, args).await,
        Command::History(args) => inspect::history(state, name, args).await,
        Command::Events(args) => inspect::events(state, name, args).await,
        Command::Slo(args) => crate::health::slo_command(state, name, args).await,
        Command::Health(args) => crate::health::health_command(state, name, args).await,
        Command::Report(args) => crate::health::report_command(state, name, args).await,
        Command::Logs(args) => inspect::logs(state, name, args).await,
        Command::Retry(args) => retry(state, args).await,
        Command::Cancel(args) => cancel(state, name, args).await,
        Command::Accept(args) => crate::operations::accept(state, name, args).await,
        Command::Gc(args) => crate::operations::gc(state, name, args).await,
        Command::Gaps(args) => crate::gaps::gaps(state, args).await,
        Command::Serve(args) => crate::serve::serve(state, args).await,
        Command::Bench(args) => crate::bench::bench(args).await,
        Command::Audit(args) => crate::audit::audit(args),
        Command::Secrets(args) => crate::secrets::secrets(args),
        Command::Check(args) => crate::check::check(args).await,
        Command::Flags(args) => crate::flags::flags(state, args).await,
        Command::Rollout(args) => crate::rollout::rollout(state, args).await,
        Command::Demo(args) => crate::demo::demo(args).await,
        Command::Chaos(args) => crate::chaos::chaos(args).await,
        Command::Token(args) => crate::tokens::token(&args.resource, args.count, &args.timeout),
        Command::Attempt { rest } => Ok(keel_exec::supervisor::main(&rest) as u8),
    }
}

fn init(dir: &Path, force: bool) -> Result<u8> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create directory {dir:?}"))?;
    let path = dir.join("keel.toml");
    if path.exists() && !force {
        return Err(Exit::usage(format!(
            "{} already exists; pass --force to overwrite it",
            path.display()
        )));
    }
    std::fs::write(&path, keel_config::STARTER_PIPELINE)
        .with_context(|| format!("cannot write {}", path.display()))?;
    println!("wrote {}", path.display());
    if let Some(done) = state::ignore_state_in_git(dir)? {
        println!("{done}");
    }
    println!(
        "{}",
        crate::hints::after_init(&crate::hints::keel_program(), &path)
    );
    Ok(0)
}

fn validate(path: &Path) -> Result<u8> {
    let spec = state::load_pipeline(path)?;
    state::load_env_files(&spec, path)?;
    println!(
        "{} is valid: pipeline {:?}, {}, {}, version {}",
        path.display(),
        spec.name,
        display::count(spec.phases.len() as u64, "phase", "phases"),
        display::count(spec.tasks.len() as u64, "task", "tasks"),
        spec.version()
    );
    Ok(0)
}

/// The first SIGINT or SIGTERM drains (no new attempts; running ones may finish within the
/// grace period); a second one stops everything at once.
pub(crate) fn shutdown_on_signals(grace: Duration) -> keel_engine::Shutdown {
    shutdown_on_signals_telling(grace, |notice| eprintln!("\n{notice}"))
}

/// [`shutdown_on_signals`], saying what happens through `say` (serve's logger).
pub(crate) fn shutdown_on_signals_telling(
    grace: Duration,
    say: impl Fn(&str) + Send + 'static,
) -> keel_engine::Shutdown {
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
                say(&format!(
                    "keel: stopping; running attempts may finish for up to {}, then they are stopped and resume on the next `keel run` or `keel serve`. Interrupt again to stop them now.",
                    keel_model::format_duration(grace)
                ));
                trigger.drain();
            } else {
                say(
                    "keel: stopping running attempts now; they resume on the next `keel run` or `keel serve`",
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

/// The exit code for a set of runs: the worst of them. Partitions without a run (a range
/// retried where some have none) do not count.
pub(crate) fn exit_code(finished: &Finished) -> u8 {
    let states: Vec<RunState> = finished.iter().filter_map(|(_, state)| *state).collect();
    if states.iter().any(|state| {
        !matches!(
            state,
            RunState::Succeeded | RunState::Degraded | RunState::Partial
        )
    }) {
        1
    } else if states.contains(&RunState::Degraded) {
        3
    } else {
        0
    }
}

/// Partitions of a command, for the summary line of a range: `(partition, state of its run)`,
/// `None` for one without a run.
pub(crate) type Finished = Vec<(String, Option<RunState>)>;

/// Executes runs to the end, prints each one's table, and, for a range of partitions, the
/// summary line. `finished` holds the partitions of the range that needed no run.
async fn execute_and_report(
    engine: &mut ProcessEngine,
    runs: &[keel_model::RunId],
    mut finished: Finished,
    grace: Duration,
    ranged: bool,
) -> Result<u8> {
    let progress = ProgressDisplay::start(engine);
    let summaries: Vec<RunSummary> = engine.execute(runs, shutdown_on_signals(grace)).await?;
    progress.finish();
    let interrupted = summaries.iter().any(|summary| !summary.state.is_finished());
    let now = state::now_millis();
    for summary in &summaries {
        let query = keel_store::StatusQuery::new(engine.spec().name.clone()).run(summary.run);
        let view = engine.store().status_view(&query).await?;
        for run in &view.runs {
            display::print_run(run, now);
        }
    }
    finished.extend(
        summaries
            .iter()
            .map(|summary| (summary.partition.clone(), Some(summary.state))),
    );
    if ranged {
        print_range_summary(&finished);
    }
    if interrupted {
        eprintln!("interrupted: run `keel run` again with the same partition to resume");
        return Ok(130);
    }
    Ok(exit_code(&finished))
}

/// `14 partitions: 10 succeeded, 3 degraded, 1 failed`, one state per partition.
pub(crate) fn print_range_summary(finished: &Finished) {
    let mut by_partition = std::collections::BTreeMap::new();
    for (partition, state) in finished {
        by_partition.insert(partition.clone(), *state);
    }
    let states: Vec<_> = by_partition.into_values().collect();
    println!("{}", display::range_summary(&states));
}

pub(crate) async fn run(state_url: Option<&str>, args: RunArgs) -> Result<u8> {
    let grace = parse_grace(&args.grace)?;
    let spec = state::load_pipeline(&args.pipeline.pipeline)?;
    if let Some(code) = crate::serve::hand_over(state_url, &spec, &args).await? {
        return Ok(code);
    }
    let partitions = state::partitions(&spec, &args.partitions)?;
    let paths = StatePaths::resolve(state_url, &spec, &args.pipeline.pipeline)?;
    let (_lock, store) = paths.lock_and_open()?;
    let mut engine = build_engine(spec, &paths, store)?;
    if args.sequential {
        engine.set_max_active_partitions(1);
    }
    let request = RunRequest {
        partitions,
        only: args.only,
        rerun: args.rerun,
        pass: args.pass,
    };
    let ranged = args.partitions.from.is_some();
    let (runs, finished) = prepare_runs(&mut engine, &request, true).await?;
    if runs.is_empty() {
        if ranged {
            print_range_summary(&finished);
        }
        return Ok(exit_code(&finished));
    }
    engine.set_shutdown_grace(grace);
    execute_and_report(&mut engine, &runs, finished, grace, ranged).await
}

/// Asks the engine for the runs `request` needs: those to execute, and the partitions that
/// already finished (said on stdout). `say_resumed` notes a resumed run on stderr.
pub(crate) async fn prepare_runs(
    engine: &mut ProcessEngine,
    request: &RunRequest,
    say_resumed: bool,
) -> Result<(Vec<keel_model::RunId>, Finished)> {
    let prepared = prepare(engine, request).await?;
    let mut runs = Vec::new();
    let mut finished = Vec::new();
    for decision in prepared {
        match decision {
            Prepared::Created(run) => runs.push(run),
            Prepared::Resumed(run) => {
                if say_resumed {
                    eprintln!("resuming unfinished run {run}");
                }
                runs.push(run);
            }
            Prepared::AlreadyFinished(record) => {
                println!(
                    "partition {}{} already finished as {} (run {}); nothing to do. Use --rerun to run it again.",
                    display::printable(&record.partition),
                    record
                        .pass
                        .as_deref()
                        .map(|pass| format!(" of pass {}", display::printable(pass)))
                        .unwrap_or_default(),
                    record.state,
                    record.id
                );
                finished.push((record.partition, Some(record.state)));
            }
        }
    }
    Ok((runs, finished))
}

/// What the engine decides for each partition of `request`: a new run, an unfinished one to
/// resume, or one that already finished. Created and reopened runs are stored, so a serving
/// Keel takes them up; `keel run` and the HTTP API both queue runs through here.
pub(crate) async fn prepare(
    engine: &mut ProcessEngine,
    request: &RunRequest,
) -> Result<Vec<Prepared>> {
    engine.prepare(request).await.map_err(|error| match error {
        keel_engine::EngineError::UnknownTask { .. }
        | keel_engine::EngineError::UnknownPass { .. }
        | keel_engine::EngineError::OnlyWithPass { .. }
        | keel_engine::EngineError::RemovedTasks { .. } => Exit::usage(error.to_string()),
        other => other.into(),
    })
}

/// `[PIPELINE]` alone, for `keel retry --failed`, which names no tasks.
fn pipeline_only(args: &[String]) -> Result<std::path::PathBuf> {
    match args {
        [] => Ok("keel.toml".into()),
        [pipeline] if pipeline.ends_with(".toml") || Path::new(pipeline).is_file() => {
            Ok(pipeline.into())
        }
        _ => Err(Exit::usage(format!(
            "keel retry --failed names no tasks ({}): it retries the tasks of each failed or degraded partition that did not complete",
            args.join(" ")
        ))),
    }
}

/// The tasks of a finished run that did not complete and are no mere consequence of another's
/// failure: what `keel retry --failed` runs again (their downstream follows).
pub(crate) async fn failed_tasks(
    store: &keel_store::AnyStore,
    run: keel_model::RunId,
) -> Result<Vec<String>> {
    Ok(store
        .task_runs(run)
        .await?
        .into_iter()
        .filter(|task| {
            task.outcome.is_some_and(|outcome| {
                !outcome.is_complete() && outcome != keel_model::Outcome::UpstreamFailed
            })
        })
        .map(|task| task.task)
        .collect())
}

async fn retry(state_url: Option<&str>, args: RetryArgs) -> Result<u8> {
    let (pipeline, tasks) = if args.failed {
        (pipeline_only(&args.args)?, Vec::new())
    } else {
        split_pipeline(&args.args)
    };
    let spec = state::load_pipeline(&pipeline)?;
    let grace = parse_grace(&args.grace)?;
    let ranged = args.range.from.is_some();
    let partitions = match (&args.partition, &args.range.from, &args.range.to) {
        (Some(partition), _, _) => vec![state::check_partition(&spec, partition)?],
        (None, Some(from), Some(to)) => state::date_range(&spec, from, to)?,
        _ => {
            return Err(Exit::usage(
                "keel retry needs --partition D or --from D --to D",
            ));
        }
    };
    let paths = StatePaths::resolve(state_url, &spec, &pipeline)?;
    let (_lock, store) = paths.lock_and_open()?;
    // Over a range, only partitions that have a run are retried, and only if none of them is
    // still running: the retry is asked for in every partition or in none. With --failed, only
    // those whose newest run failed or is degraded, each with its own tasks.
    let mut with_runs: Vec<(String, Vec<String>)> = Vec::new();
    let mut without = Vec::new();
    if ranged || args.failed {
        for partition in &partitions {
            match store.latest_run(&spec.name, partition).await? {
                Some(run) if args.failed => {
                    if matches!(run.state, RunState::Failed | RunState::Degraded) {
                        with_runs.push((partition.clone(), failed_tasks(&store, run.id).await?));
                    }
                }
                Some(run) if !run.state.is_finished() => {
                    // As for one partition: the run must end or be cancelled first (exit 1).
                    return Err(keel_engine::EngineError::RunActive {
                        run: run.id,
                        partition: partition.clone(),
                        state: run.state,
                    }
                    .into());
                }
                Some(_) => with_runs.push((partition.clone(), tasks.clone())),
                None if args.failed => {}
                None => without.push(partition.clone()),
            }
        }
        with_runs.retain(|(_, tasks)| !tasks.is_empty());
        if with_runs.is_empty() && args.failed {
            println!(
                "no failed or degraded partition from {} to {}; nothing to retry",
                partitions[0],
                partitions[partitions.len() - 1]
            );
            return Ok(0);
        }
        if with_runs.is_empty() {
            return Err(Exit::usage(format!(
                "no partition from {} to {} has a run to retry; start them with `keel run --from {0} --to {1}`",
                partitions[0],
                partitions[partitions.len() - 1]
            )));
        }
        if !without.is_empty() {
            eprintln!(
                "{} of the range not retried, having no run yet: {}",
                display::count(without.len() as u64, "partition", "partitions"),
                without.join(", ")
            );
        }
    } else {
        with_runs = partitions
            .into_iter()
            .map(|partition| (partition, tasks.clone()))
            .collect();
    }
    let mut engine = build_engine(spec, &paths, store)?;
    let mut runs = Vec::new();
    for (partition, tasks) in &with_runs {
        runs.push(retry_one(&mut engine, partition, tasks).await?);
    }
    engine.set_shutdown_grace(grace);
    let not_run = without
        .into_iter()
        .map(|partition| (partition, None))
        .collect();
    execute_and_report(&mut engine, &runs, not_run, grace, ranged).await
}

/// Resets `tasks` of the partition's newest run (and their downstream) to run again.
async fn retry_one(
    engine: &mut ProcessEngine,
    partition: &str,
    tasks: &[String],
) -> Result<keel_model::RunId> {
    let run = reset_for_retry(engine, partition, tasks).await?;
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
    Ok(run)
}

/// Resets `tasks` of the partition's newest run (and their downstream) to run again, in the
/// store only: whoever executes the state runs them. `keel retry` and the HTTP API both retry
/// through here.
pub(crate) async fn reset_for_retry(
    engine: &mut ProcessEngine,
    partition: &str,
    tasks: &[String],
) -> Result<keel_model::RunId> {
    engine
        .retry(partition, tasks)
        .await
        .map_err(|error| match error {
            keel_engine::EngineError::UnknownTask { .. }
            | keel_engine::EngineError::NoRun { .. } => Exit::usage(error.to_string()),
            other => other.into(),
        })
}

async fn cancel(state_url: Option<&str>, name: Option<&str>, args: CancelArgs) -> Result<u8> {
    // A broken or missing pipeline file must not stop a cancel during an incident: the run is
    // then settled with a stand-in spec without tasks, which a cancel may always do.
    let state::ForReading {
        mut spec,
        paths,
        without_file,
    } = state::pipeline_for_reading(state_url, &args.pipeline.pipeline, name).await?;
    if !without_file {
        // Settling the cancel may start the engine, which needs the env files: a broken one is
        // refused before the request is stored, not after.
        state::load_env_files(&spec, &args.pipeline.pipeline)?;
    }
    let partitions = match (&args.partition, &args.range.from, &args.range.to) {
        (Some(partition), _, _) => vec![state::check_partition(&spec, partition)?],
        (None, Some(from), Some(to)) => state::date_range(&spec, from, to)?,
        _ => {
            return Err(Exit::usage(
                "keel cancel needs --partition D or --from D --to D",
            ));
        }
    };
    let ranged = args.range.from.is_some();
    let store = paths
        .open_existing()?
        .ok_or_else(|| match &args.partition {
            Some(_) if !ranged => state::no_run_of_partition(&partitions[0]),
            _ => state::no_runs_yet(&spec),
        })?;
    let mut runs = Vec::new();
    for partition in &partitions {
        let Some(run) = store.latest_run(&spec.name, partition).await? else {
            if !ranged {
                return Err(state::no_run_of_partition(partition));
            }
            continue;
        };
        if run.state.is_finished() {
            println!(
                "run {} of partition {partition} already finished as {}; nothing to cancel",
                run.id, run.state
            );
        } else if !args.failed || !failed_tasks(&store, run.id).await?.is_empty() {
            runs.push(run);
        }
    }
    if runs.is_empty() {
        if ranged || args.failed {
            println!("no run to cancel");
        }
        return Ok(0);
    }
    for run in &runs {
        store.request_cancel(run.id, state::now_millis()).await?;
    }
    let ids: Vec<keel_model::RunId> = runs.iter().map(|run| run.id).collect();
    match paths.lock() {
        Ok(_lock) => {
            // Nobody is executing the runs: settle them here, stopping any attempt left running.
            if without_file {
                for run in &ids {
                    state::stand_in_tasks(&mut spec, &store.task_runs(*run).await?);
                }
            }
            let mut engine = build_engine(spec, &paths, store.clone())?;
            engine.execute(&ids, keel_engine::Shutdown::never()).await?;
        }
        Err(_) => {
            // The keel that runs them sees the request within a second; wait for it to finish.
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            for run in &ids {
                while !store.run(*run).await?.state.is_finished() {
                    if std::time::Instant::now() > deadline {
                        bail!(
                            "asked the running keel to cancel run {run}, but it has not finished after 60s"
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    for run in &runs {
        let state = store.run(run.id).await?.state;
        println!(
            "run {} of partition {} is {state}",
            run.id,
            display::printable(&run.partition)
        );
    }
    Ok(0)
}
