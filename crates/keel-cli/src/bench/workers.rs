//! `keel bench --postgres URL`: the 1,000-task pipeline (10 levels of 100 `true` tasks) with
//! its attempts handed to 1, 2 and 4 worker processes through the work queue of a PostgreSQL
//! state, against the same pipeline all in one process on SQLite. The scheduler is this
//! process's engine (as `keel serve --role scheduler` runs it); the workers are `keel serve
//! --role worker` processes started here and stopped after their case.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::{layered_pipeline, run_pipeline, run_pipeline_on};

const LEVELS: usize = 10;
const WIDTH: usize = 100;

/// Worker processes, stopped (SIGTERM, then waited for) when dropped.
struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
        }
        for child in &mut self.0 {
            let _ = child.wait();
        }
    }
}

pub async fn workers(dir: &Path, url: &str, concurrency: u32) -> Result<()> {
    let Some(parsed) = keel_store::PostgresUrl::parse(url) else {
        return Err(crate::Exit::usage(format!(
            "--postgres {:?} is not a postgres:// URL; write it like postgres://USER@HOST:5432/DATABASE",
            crate::display::printable(url)
        )));
    };
    println!(
        "keel bench --postgres · {} cores · {} tasks ({LEVELS} levels of {WIDTH} `true` tasks) · concurrency {concurrency} · state {parsed}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        LEVELS * WIDTH
    );
    let sqlite = run_pipeline(
        dir,
        "bench_workers_sqlite",
        &layered_pipeline("bench_workers_sqlite", LEVELS, WIDTH, concurrency),
    )
    .await?;
    let baseline = sqlite.tasks as f64 / sqlite.wall.as_secs_f64();
    println!(
        "SQLite, all in one process: {} tasks in {:.3} s · {baseline:.0} tasks/s · {}",
        sqlite.tasks,
        sqlite.wall.as_secs_f64(),
        super::busy_figure(sqlite.busy)
    );
    let name = format!("bench_workers_0_{}", std::process::id());
    let postgres = run_pipeline_on(
        dir,
        &name,
        &layered_pipeline(&name, LEVELS, WIDTH, concurrency),
        Some(url),
        false,
    )
    .await?;
    println!(
        "PostgreSQL, all in one process (no workers): {} tasks in {:.3} s · {:.0} tasks/s · {}",
        postgres.tasks,
        postgres.wall.as_secs_f64(),
        postgres.tasks as f64 / postgres.wall.as_secs_f64(),
        super::busy_figure(postgres.busy)
    );
    super::http::http_tasks_on(dir, url, LEVELS, WIDTH, concurrency, baseline).await?;
    let queue_only = {
        let parsed = parsed.clone();
        tokio::task::spawn_blocking(move || keel_store::PostgresStore::open(&parsed)).await??
    };
    // Claimers take any queued row: the case runs only on a queue nobody else is using.
    let busy = queue_only.work_queue(1).cluster().await?;
    for claimers in [1usize, 4] {
        if busy.queued + busy.claimed > 0 {
            println!(
                "work queue alone: skipped, the queue holds {} rows queued or claimed by others",
                busy.queued + busy.claimed
            );
            break;
        }
        let measured = queue_alone(&queue_only.work_queue(claimers as u32 + 1), claimers).await?;
        println!(
            "work queue alone, {claimers} claimer{} (claim up to {QUEUE_BATCH}, record their reports, no process): {QUEUE_ROWS} rows in {:.3} s · {:.0} rows/s",
            if claimers == 1 { "" } else { "s" },
            measured.as_secs_f64(),
            QUEUE_ROWS as f64 / measured.as_secs_f64()
        );
    }
    let program = std::env::current_exe().context("cannot find the keel executable")?;
    for count in [1usize, 2, 4] {
        let name = format!("bench_workers_{count}_{}", std::process::id());
        let case_dir = dir.join(&name);
        std::fs::create_dir_all(&case_dir)?;
        let mut workers = Workers(Vec::new());
        for index in 0..count {
            let log = std::fs::File::create(case_dir.join(format!("worker-{index}.log")))?;
            let child = Command::new(&program)
                .args(["serve", "--role", "worker", "--state", url])
                .args(["--slots", &concurrency.to_string(), "--lease", "30s"])
                .arg("--work-dir")
                .arg(case_dir.join(format!("worker-{index}")))
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("cannot start a worker")?;
            workers.0.push(child);
        }
        let text = layered_pipeline(&name, LEVELS, WIDTH, concurrency);
        let store = {
            let parsed = parsed.clone();
            tokio::task::spawn_blocking(move || keel_store::PostgresStore::open(&parsed)).await??
        };
        let queue = store.work_queue(1);
        // The workers have registered before the clock starts.
        let waited = Instant::now();
        loop {
            let cluster = queue.cluster().await?;
            let live = cluster
                .workers
                .iter()
                .filter(|worker| {
                    worker.stopped_at.is_none()
                        && workers
                            .0
                            .iter()
                            .any(|child| i64::from(child.id()) == worker.pid)
                })
                .count();
            if live == count {
                break;
            }
            anyhow::ensure!(
                waited.elapsed() < Duration::from_secs(30),
                "the workers did not register within 30 s; see {}",
                case_dir.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let connections_before = queue.connections().await?;
        let result =
            run_pipeline_on(dir, &format!("{name}-scheduler"), &text, Some(url), true).await?;
        let connections = queue.connections().await?;
        let rate = result.tasks as f64 / result.wall.as_secs_f64();
        println!(
            "PostgreSQL, {count} worker{}: {} tasks in {:.3} s · {rate:.0} tasks/s ({:.2}× SQLite all-in-one) · {} · ready→started median {} p99 {} · {} connections to the database with the workers idle, {} after",
            if count == 1 { "" } else { "s" },
            result.tasks,
            result.wall.as_secs_f64(),
            rate / baseline,
            super::busy_figure(result.busy),
            super::micros(super::percentile(&result.latencies, 0.5)),
            super::micros(super::percentile(&result.latencies, 0.99)),
            connections_before,
            connections,
        );
        drop(workers);
    }
    Ok(())
}

/// Rows the queue-alone case moves, and how many a claimer takes at once (a worker's slots).
const QUEUE_ROWS: usize = 4_000;
const QUEUE_BATCH: u32 = 10;

/// The work queue's own capacity: `QUEUE_ROWS` rows queued, then `claimers` tasks claim them
/// (`FOR UPDATE SKIP LOCKED`, up to `QUEUE_BATCH` at a time) and record their reports under
/// their epochs in one statement, as a worker does, with no process run: the wall time from the first claim to the
/// last report. The rows are stamped as finished at the epoch's first millisecond, so removing
/// them afterwards touches no other row of the queue.
async fn queue_alone(queue: &keel_store::WorkQueue, claimers: usize) -> Result<Duration> {
    let tag = format!("bench-queue/{}/{claimers}", std::process::id());
    let keys: Vec<String> = (0..QUEUE_ROWS)
        .map(|index| format!("{tag}/{index}"))
        .collect();
    for chunk in keys.chunks(500) {
        let rows: Vec<(&str, &str)> = chunk.iter().map(|key| (key.as_str(), "{}")).collect();
        queue
            .enqueue_many(&rows, crate::cluster::wall_millis())
            .await?;
    }
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for claimer in 0..claimers {
        let queue = queue.clone();
        let worker = format!("{tag}/claimer-{claimer}");
        tasks.spawn(async move {
            loop {
                let items = queue
                    .claim(&worker, QUEUE_BATCH, crate::cluster::wall_millis(), 60_000)
                    .await?;
                if items.is_empty() {
                    return anyhow::Ok(());
                }
                let reports: Vec<(i64, i64, &str, &str)> = items
                    .iter()
                    .map(|item| (item.id, item.claim_epoch, r#"{"outcome":"succeeded"}"#, ""))
                    .collect();
                queue.finish_many(&reports, 1).await?;
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined??;
    }
    let elapsed = started.elapsed();
    queue.forget_done(2).await?;
    Ok(elapsed)
}
