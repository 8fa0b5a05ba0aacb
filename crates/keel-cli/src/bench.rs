//! `keel bench`: Keel's throughput and scheduling latency, next to the cost of a bare process
//! spawn measured in the same run on the same machine, and how its time and memory grow with
//! the size of a pipeline (`scale`).

mod audit;
mod dashboard;
mod http;
mod scale;
mod workers;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use keel_engine::{Prepared, Progress, RunRequest};
use keel_model::Dag;
use keel_store::{ClaimAttempt, FinishAttempt, NewRun, SqliteStore, Store, TaskNext};

use crate::args::BenchArgs;
use crate::state::StatePaths;

/// A pipeline of `levels` phases of `width` `true` tasks; each phase runs after the previous
/// one, so every task depends on every task of the level before.
fn layered_pipeline(name: &str, levels: usize, width: usize, concurrency: u32) -> String {
    layered_pipeline_of(
        name,
        levels,
        width,
        concurrency,
        "",
        "command = [\"true\"]\n",
    )
}

/// [`layered_pipeline`]'s shape with `tables` (resources, say) after the defaults and `body`
/// as each task's fields besides its phase.
fn layered_pipeline_of(
    name: &str,
    levels: usize,
    width: usize,
    concurrency: u32,
    tables: &str,
    body: &str,
) -> String {
    let mut text = format!(
        "[pipeline]\nname = \"{name}\"\npartition = \"none\"\n\n[defaults]\nconcurrency = {concurrency}\nretries = {{ attempts = 1 }}\n\n{tables}"
    );
    for level in 0..levels {
        text.push_str(&format!("[phases.level{level}]\n"));
        if level > 0 {
            text.push_str(&format!("after = [\"level{}\"]\n", level - 1));
        }
        text.push('\n');
    }
    for level in 0..levels {
        for index in 0..width {
            text.push_str(&format!(
                "[tasks.t{level}_{index}]\nphase = \"level{level}\"\n{body}\n"
            ));
        }
    }
    text
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() - 1) as f64 * fraction).round() as usize;
    sorted[index]
}

fn micros(duration: Duration) -> String {
    format!("{:.0} µs", duration.as_secs_f64() * 1e6)
}

/// Sequential spawn-and-wait of `true`, and the same number spread over `concurrency` threads.
fn bare_spawn(count: usize, concurrency: usize) -> Result<(Duration, Duration)> {
    let spawn_once = || -> Result<()> {
        let status = std::process::Command::new("true")
            .status()
            .context("cannot spawn `true`")?;
        anyhow::ensure!(status.success(), "`true` failed");
        Ok(())
    };
    spawn_once()?;
    let started = Instant::now();
    for _ in 0..count {
        spawn_once()?;
    }
    let sequential = started.elapsed() / count as u32;
    let started = Instant::now();
    std::thread::scope(|scope| -> Result<()> {
        let handles: Vec<_> = (0..concurrency)
            .map(|worker| {
                scope.spawn(move || -> Result<()> {
                    for _ in (worker..count).step_by(concurrency) {
                        spawn_once()?;
                    }
                    Ok(())
                })
            })
            .collect();
        for handle in handles {
            handle.join().expect("spawn thread")?;
        }
        Ok(())
    })?;
    let parallel = started.elapsed() / count as u32;
    Ok((sequential, parallel))
}

struct CaseResult {
    wall: Duration,
    /// How busy the machine's processors were meanwhile, 0 to 1 (whoever kept them busy).
    busy: Option<f64>,
    tasks: usize,
    latencies: Vec<Duration>,
    events: usize,
}

async fn run_case(
    dir: &Path,
    name: &str,
    levels: usize,
    width: usize,
    concurrency: u32,
) -> Result<CaseResult> {
    run_pipeline(
        dir,
        name,
        &layered_pipeline(name, levels, width, concurrency),
    )
    .await
}

/// Runs the pipeline `text` (one partition, `none`) with the real engine on a fresh state in
/// `dir/name`, and measures it.
async fn run_pipeline(dir: &Path, name: &str, text: &str) -> Result<CaseResult> {
    run_pipeline_on(dir, name, text, None, false).await
}

/// The machine's processor time so far, in clock ticks: `(busy, all)`, where busy is all but
/// idle and waiting for I/O (the first line of `/proc/stat`); `None` where there is no such file.
fn cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .map(|field| field.parse().ok())
        .collect::<Option<_>>()?;
    let all: u64 = ticks.iter().sum();
    let idle = ticks.get(3)? + ticks.get(4).copied().unwrap_or(0);
    Some((all - idle, all))
}

/// Formats [`CaseResult::busy`] for a figure's line.
fn busy_figure(busy: Option<f64>) -> String {
    match busy {
        Some(busy) => format!("machine {:.0}% busy", busy * 100.0),
        None => "machine load unknown".into(),
    }
}

/// [`run_pipeline`] with the state at `postgres` when given, and its attempts handed to
/// workers through the state's work queue when `to_workers`.
async fn run_pipeline_on(
    dir: &Path,
    name: &str,
    text: &str,
    postgres: Option<&str>,
    to_workers: bool,
) -> Result<CaseResult> {
    let case_dir = dir.join(name);
    std::fs::create_dir_all(&case_dir)?;
    let pipeline = case_dir.join("keel.toml");
    std::fs::write(&pipeline, text)?;
    let spec = crate::state::load_pipeline(&pipeline)?;
    let dag = Dag::new(&spec);
    let paths = StatePaths::resolve(postgres, &spec, &pipeline)?;
    let (_lock, store) = paths.lock_and_open()?;
    let queue = match (&store, postgres) {
        (keel_store::AnyStore::Postgres(store), Some(_)) if to_workers => {
            Some(crate::setup::queue_executor(store.work_queue(4))?)
        }
        _ => None,
    };
    let mut engine =
        crate::setup::build_engine_versioned(spec, &paths, store.clone(), Vec::new(), None, queue)?;
    let started_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let finished_at: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let (starts, finishes) = (started_at.clone(), finished_at.clone());
    engine.observe(move |event| match event {
        Progress::AttemptStarted { task, .. } => {
            starts.lock().unwrap().insert(task, Instant::now());
        }
        Progress::AttemptFinished { task, .. } => {
            finishes.lock().unwrap().insert(task, Instant::now());
        }
        _ => {}
    });
    let begin = Instant::now();
    let ticks_before = cpu_ticks();
    let prepared = engine
        .prepare(&RunRequest {
            partitions: vec!["none".into()],
            ..RunRequest::default()
        })
        .await?;
    let Prepared::Created(run) = prepared[0] else {
        anyhow::bail!("the benchmark state was not empty")
    };
    let summaries = engine
        .execute(&[run], keel_engine::Shutdown::never())
        .await?;
    let wall = begin.elapsed();
    let busy = match (ticks_before, cpu_ticks()) {
        (Some((busy_before, all_before)), Some((busy_after, all_after)))
            if all_after > all_before =>
        {
            Some((busy_after - busy_before) as f64 / (all_after - all_before) as f64)
        }
        _ => None,
    };
    anyhow::ensure!(
        summaries[0].state == keel_model::RunState::Succeeded,
        "benchmark run ended {}; see `keel status {}`",
        summaries[0].state,
        pipeline.display()
    );
    let latencies = {
        let (starts, finishes) = (started_at.lock().unwrap(), finished_at.lock().unwrap());
        let mut latencies = Vec::new();
        for task in 0..dag.len() {
            let ready = dag
                .inputs(task)
                .iter()
                .filter_map(|dependency| finishes.get(dag.name(*dependency)))
                .max()
                .copied()
                .unwrap_or(begin);
            if let Some(started) = starts.get(dag.name(task)) {
                latencies.push(started.saturating_duration_since(ready));
            }
        }
        latencies
    };
    let mut latencies = latencies;
    latencies.sort();
    let events = store.events(run).await?.len();
    Ok(CaseResult {
        wall,
        busy,
        tasks: dag.len(),
        latencies,
        events,
    })
}

/// The same two figures with the state in PostgreSQL, on a throw-away database of the server
/// `KEEL_TEST_POSTGRES` names; nothing without it.
async fn postgres_figures(dir: &Path, concurrency: u32) -> Result<()> {
    if std::env::var("KEEL_TEST_POSTGRES").is_ok_and(|url| !url.trim().is_empty()) {
        let database = match keel_store::testing::TestDatabase::try_create() {
            Ok(Some(database)) => database,
            Ok(None) => return Ok(()),
            Err(error) => {
                println!("PostgreSQL figures skipped: {error}");
                return Ok(());
            }
        };
        let store = keel_store::PostgresStore::open(&database.postgres_url())?;
        let (transitions, elapsed) = store_transitions(store.clone(), 2000).await?;
        store.close().await;
        println!(
            "durable state transitions on PostgreSQL: {transitions} in {:.3} s · {:.0}/s",
            elapsed.as_secs_f64(),
            transitions as f64 / elapsed.as_secs_f64()
        );
        let (process_dir, url) = (dir.to_path_buf(), database.url().to_string());
        let wall = tokio::task::spawn_blocking(move || {
            whole_process(&process_dir, concurrency, "process-postgres", Some(&url))
        })
        .await??;
        println!(
            "dag_10x10 as a whole `keel run` process with its state in PostgreSQL: {:.3} s",
            wall.as_secs_f64()
        );
    }
    Ok(())
}

/// Durable transitions without processes: claim and finish, each its own transaction.
async fn store_transitions<S: Store>(store: S, count: usize) -> Result<(usize, Duration)> {
    let tasks: Vec<(String, String, Option<keel_model::Outcome>)> = (0..count)
        .map(|index| (format!("t{index}"), "main".into(), None))
        .collect();
    let run = store
        .create_run(NewRun {
            pipeline: "bench".into(),
            partition: "none".into(),
            version: "v".into(),
            trace_id: "t".into(),
            tasks,
            at: 0,
            pass: None,
        })
        .await?;
    let begin = Instant::now();
    for index in 0..count {
        let attempt = store
            .claim_attempt(ClaimAttempt {
                run: run.id,
                task: format!("t{index}"),
                owner: "bench".into(),
                dir: String::new(),
                version: "v".into(),
                task_version: None,
                lease_expires_at: 0,
                at: 0,
            })
            .await?;
        store
            .finish_attempt(FinishAttempt {
                attempt: attempt.id,
                epoch: attempt.lease_epoch,
                outcome: keel_model::Outcome::Succeeded,
                exit_code: Some(0),
                rows: None,
                metrics: None,
                message: None,
                next: TaskNext::Done(keel_model::Outcome::Succeeded),
                at: 0,
            })
            .await?;
    }
    Ok((count * 2, begin.elapsed()))
}

/// Wall time of a whole `keel run` process, start-up included, with its state at `state` (the
/// default SQLite file when `None`), in the case directory `case`.
fn whole_process(
    dir: &Path,
    concurrency: u32,
    case: &str,
    state: Option<&str>,
) -> Result<Duration> {
    let case_dir = dir.join(case);
    std::fs::create_dir_all(&case_dir)?;
    let pipeline = case_dir.join("keel.toml");
    std::fs::write(
        &pipeline,
        layered_pipeline("bench_process", 10, 10, concurrency),
    )?;
    let program = std::env::current_exe()?;
    let begin = Instant::now();
    let mut command = std::process::Command::new(program);
    command.arg("run").arg(&pipeline);
    if let Some(state) = state {
        command.arg("--state").arg(state);
    }
    let output = command.output()?;
    let wall = begin.elapsed();
    anyhow::ensure!(
        output.status.success(),
        "keel run failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(wall)
}

pub async fn bench(args: BenchArgs) -> Result<u8> {
    if let Some(case) = &args.scale_case {
        let dir = args.dir.as_deref().context("--scale-case needs --dir")?;
        return scale::scale_case(case, dir, args.concurrency.max(1)).await;
    }
    let temporary;
    let dir = match &args.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            dir.clone()
        }
        None => {
            temporary = std::env::temp_dir().join(format!("keel-bench-{}", std::process::id()));
            std::fs::create_dir_all(&temporary)?;
            temporary.clone()
        }
    };
    let concurrency = args.concurrency.max(1);
    if let Some(url) = &args.postgres {
        workers::workers(&dir, url, concurrency).await?;
        if args.dir.is_none() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        return Ok(0);
    }
    if args.scale {
        println!(
            "keel bench --scale · {} cores · concurrency {concurrency} · state in {}",
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            dir.display()
        );
        let scale_dir = dir.clone();
        let keep = args.dir.is_some();
        tokio::task::spawn_blocking(move || scale::scale(&scale_dir, concurrency, false, keep))
            .await??;
        if args.dir.is_none() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        return Ok(0);
    }
    println!(
        "keel bench · {} cores · concurrency {concurrency} · state in {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        dir.display()
    );
    let (sequential, parallel) =
        tokio::task::spawn_blocking(move || bare_spawn(300, concurrency as usize)).await??;
    println!(
        "bare spawn of `true`: {} each one at a time, {} per task with {concurrency} at once",
        micros(sequential),
        micros(parallel)
    );

    let mut cases = vec![("dag_10x10", 10, 10)];
    if !args.quick {
        cases.push(("levels_10x100", 10, 100));
    }
    // The last command case, for the HTTP case to be compared with.
    let mut command_case = None;
    for (name, levels, width) in cases {
        let result = run_case(&dir, name, levels, width, concurrency).await?;
        command_case = Some(http::Baseline {
            name,
            tasks: result.tasks,
            tasks_per_second: result.tasks as f64 / result.wall.as_secs_f64(),
        });
        let per_task = result.wall / result.tasks as u32;
        println!(
            "{name}: {} tasks in {:.3} s · {:.0} tasks/s · {} per task ({:.2}× a bare spawn at the same concurrency; Keel's own overhead {} per task, {:.2}× a bare spawn) · ready→started median {} p99 {} · {} events",
            result.tasks,
            result.wall.as_secs_f64(),
            result.tasks as f64 / result.wall.as_secs_f64(),
            micros(per_task),
            per_task.as_secs_f64() / parallel.as_secs_f64(),
            micros(per_task.saturating_sub(parallel)),
            per_task.saturating_sub(parallel).as_secs_f64() / parallel.as_secs_f64(),
            micros(percentile(&result.latencies, 0.5)),
            micros(percentile(&result.latencies, 0.99)),
            result.events,
        );
    }
    let (levels, width) = if args.quick { (10, 50) } else { (10, 100) };
    http::http_tasks(&dir, levels, width, concurrency, command_case.as_ref()).await?;
    let process_dir = dir.clone();
    let process_wall = tokio::task::spawn_blocking(move || {
        whole_process(&process_dir, concurrency, "process", None)
    })
    .await??;
    println!(
        "dag_10x10 as a whole `keel run` process, start-up included: {:.3} s (target < 0.25 s)",
        process_wall.as_secs_f64()
    );
    let sqlite = SqliteStore::open(&dir.join("transitions.db"))?;
    let (transitions, elapsed) = store_transitions(sqlite, 2000).await?;
    println!(
        "durable state transitions on SQLite: {transitions} in {:.3} s · {:.0}/s (target ≥ 5,000/s)",
        elapsed.as_secs_f64(),
        transitions as f64 / elapsed.as_secs_f64()
    );
    postgres_figures(&dir, concurrency).await?;
    dashboard::grid(&dir, 90).await?;
    let audit_dir = dir.clone();
    let megabytes = if args.quick { 32 } else { 256 };
    tokio::task::spawn_blocking(move || audit::audit(&audit_dir, megabytes)).await??;
    let scale_dir = dir.clone();
    let keep = args.dir.is_some();
    tokio::task::spawn_blocking(move || scale::scale(&scale_dir, concurrency, true, keep))
        .await??;
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(0)
}
