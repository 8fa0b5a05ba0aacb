//! How long the dashboard's grid takes to render on the server: the hoops pipeline (21 tasks)
//! with 90 partitions of runs in the store, each task with a finished attempt, rendered from the
//! store as a request to `/ui/hoops?days=90` would be, many times over.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::Result;
use askama::Template;
use keel_model::{Outcome, RunState};
use keel_store::{ClaimAttempt, FinishAttempt, NewRun, Store, TaskNext};

use crate::api::{ApiContext, PipelineHealth, ServedPipeline};
use crate::state::StatePaths;

const PIPELINE: &str = include_str!("../../../../examples/hoops/keel.toml");

/// Renders of the grid timed; the first, which warms the caches, is not counted.
const RENDERS: usize = 30;

/// Fills a store with `partitions` days of hoops runs, then renders the grid `RENDERS` times;
/// prints the median and the slowest render and the page's size.
pub async fn grid(dir: &Path, partitions: u32) -> Result<()> {
    let case = dir.join("dashboard");
    std::fs::create_dir_all(&case)?;
    let pipeline = case.join("keel.toml");
    std::fs::write(&pipeline, PIPELINE)?;
    let spec = crate::state::load_pipeline(&pipeline)?;
    let paths = StatePaths::resolve(None, &spec, &pipeline)?;
    std::fs::create_dir_all(&paths.dir)?;
    let store = paths.open()?;
    let first = chrono::NaiveDate::from_ymd_opt(2026, 1, 1).expect("a date");
    let filled = Instant::now();
    for day in first.iter_days().take(partitions as usize) {
        fill_partition(&store, &spec, &day.format("%Y-%m-%d").to_string()).await?;
    }
    let fill = filled.elapsed();
    let served = ServedPipeline {
        spec: Arc::new(RwLock::new(Arc::new(spec.clone()))),
        reader: paths.open()?,
        writer: paths.open()?,
        paths,
        heartbeat: Arc::new(AtomicI64::new(0)),
        health: Arc::new(RwLock::new(PipelineHealth::valid())),
        actions: tokio::sync::Mutex::new(()),
    };
    let context = ApiContext {
        pipelines: vec![served],
        token: String::new(),
        heartbeat_max_age: Duration::from_secs(60),
        metrics: Arc::new(String::new),
        logger: crate::serve_log::Logger::new(crate::serve_log::LogFormat::Text),
        stopping: Arc::new(AtomicBool::new(false)),
        cluster: None,
    };
    let query = crate::dashboard::GridQuery {
        to: None,
        days: Some(partitions),
    };
    let served = &context.pipelines[0];
    let mut times = Vec::with_capacity(RENDERS);
    let mut bytes = 0;
    for round in 0..=RENDERS {
        let started = Instant::now();
        let page = crate::dashboard::render_grid(&context, served, &query, 0)
            .await
            .map_err(|error| anyhow::anyhow!("{:?}", error.parts()))?;
        let html = page.render()?;
        let elapsed = started.elapsed();
        anyhow::ensure!(
            page.rows.len() == partitions as usize,
            "the grid showed {} partitions, not {partitions}",
            page.rows.len()
        );
        bytes = html.len();
        if round > 0 {
            times.push(elapsed);
        }
    }
    times.sort();
    println!(
        "dashboard grid: {partitions} partitions × {} tasks rendered from the store in median {:.1} ms, slowest {:.1} ms of {RENDERS} (target < 100 ms) · {} KiB of HTML · store filled in {:.1} s",
        spec.tasks.len(),
        super::percentile(&times, 0.5).as_secs_f64() * 1e3,
        times.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        bytes / 1024,
        fill.as_secs_f64(),
    );
    Ok(())
}

/// One succeeded run of `partition`: every task claimed and finished with rows and a metric.
async fn fill_partition(
    store: &keel_store::AnyStore,
    spec: &keel_model::PipelineSpec,
    partition: &str,
) -> Result<()> {
    let run = store
        .create_run(NewRun {
            pipeline: spec.name.clone(),
            partition: partition.to_string(),
            version: spec.version(),
            trace_id: "0".repeat(32),
            tasks: spec
                .tasks
                .iter()
                .map(|task| (task.name.clone(), task.phase.clone(), None))
                .collect(),
            at: 0,
            pass: None,
        })
        .await?;
    for (index, task) in spec.tasks.iter().enumerate() {
        let attempt = store
            .claim_attempt(ClaimAttempt {
                run: run.id,
                task: task.name.clone(),
                owner: "bench".into(),
                dir: String::new(),
                version: spec.version(),
                task_version: None,
                lease_expires_at: 0,
                at: index as i64 * 1_000,
            })
            .await?;
        store
            .finish_attempt(FinishAttempt {
                attempt: attempt.id,
                epoch: attempt.lease_epoch,
                outcome: Outcome::Succeeded,
                exit_code: Some(0),
                rows: Some(100 + index as i64),
                metrics: Some(r#"{"accuracy":0.5}"#.to_string()),
                message: None,
                next: TaskNext::Done(Outcome::Succeeded),
                at: index as i64 * 1_000 + 500,
            })
            .await?;
    }
    store
        .set_run_state(run.id, RunState::Succeeded, None, 30_000)
        .await?;
    Ok(())
}
