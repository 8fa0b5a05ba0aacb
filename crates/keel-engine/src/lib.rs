//! The scheduler and state machine: it turns runs into attempts in DAG order, applies the retry
//! policy, enforces the global concurrency cap, propagates failures downstream, and recovers the
//! attempts a crashed Keel left behind.
//!
//! It is generic over [`Store`], [`Executor`], [`Clock`] and [`Random`], so every rule can be
//! tested with a fake executor on a manual clock. It is event-driven: work happens when an
//! attempt ends, a retry timer fires or a request arrives, and each event touches only the tasks
//! it concerns. It must not hold state that is not also in the store: everything in memory can be
//! rebuilt from the store after a crash.

mod clock;
mod engine;
pub mod gaps;
mod gate;
pub mod policy;
pub mod template;

pub use clock::{Clock, ManualClock, Random, SplitMix64, SystemClock};
pub use engine::{
    Engine, EngineConfig, LaunchContext, Prepared, Progress, RunRequest, RunSummary, SecretSource,
    Shutdown, ShutdownLevel, ShutdownTrigger,
};
pub use template::expand;

/// Errors the engine reports to its caller. Task failures are not errors: they are outcomes.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] keel_store::StoreError),
    #[error("the pipeline's schedule cannot be used: {0}")]
    Schedule(String),
    #[error(
        "no run of partition {partition} yet; start one with `keel run --partition {partition}`"
    )]
    NoRun { partition: String },
    #[error(
        "unknown task {task:?} in pipeline {pipeline:?} (its tasks: {}){}",
        known.join(", "),
        suggestion.as_ref().map(|s| format!("; did you mean {s:?}?")).unwrap_or_default()
    )]
    UnknownTask {
        task: String,
        pipeline: String,
        /// Every task of the pipeline, so the message lists the names that would do.
        known: Vec<String>,
        suggestion: Option<String>,
    },
    #[error(
        "unknown pass {pass:?} in pipeline {pipeline:?} ({}){}",
        if known.is_empty() { "it has no [passes.NAME] tables".to_string() } else { format!("its passes: {}", known.join(", ")) },
        suggestion.as_ref().map(|s| format!("; did you mean {s:?}?")).unwrap_or_default()
    )]
    UnknownPass {
        pass: String,
        pipeline: String,
        known: Vec<String>,
        suggestion: Option<String>,
    },
    #[error(
        "pass {pass:?} runs its own tasks and cannot be combined with --only; run the pass alone, or name tasks with --only and no pass"
    )]
    OnlyWithPass { pass: String },
    #[error(
        "run {run} of partition {partition:?} has unfinished tasks that are no longer in the pipeline file: {tasks}; put them back to finish the run, or cancel it with `keel cancel --partition {partition}` and start afresh with `keel run --partition {partition} --rerun`"
    )]
    RemovedTasks {
        run: keel_model::RunId,
        partition: String,
        tasks: String,
    },
    #[error(
        "run {run} of partition {partition:?} is still {state}; wait for it to finish or cancel it first"
    )]
    RunActive {
        run: keel_model::RunId,
        partition: String,
        state: keel_model::RunState,
    },
}

impl EngineError {
    /// An unknown pass name, with the closest pass of the pipeline as a suggestion.
    pub fn unknown_pass(spec: &keel_model::PipelineSpec, name: &str) -> EngineError {
        EngineError::UnknownPass {
            pass: name.to_string(),
            pipeline: spec.name.clone(),
            known: spec.passes.iter().map(|pass| pass.name.clone()).collect(),
            suggestion: keel_model::closest(
                name,
                spec.passes.iter().map(|pass| pass.name.as_str()),
            ),
        }
    }

    /// An unknown task name, with the closest task of the pipeline as a suggestion.
    pub fn unknown_task(spec: &keel_model::PipelineSpec, name: &str) -> EngineError {
        EngineError::UnknownTask {
            task: name.to_string(),
            pipeline: spec.name.clone(),
            known: spec.tasks.iter().map(|task| task.name.clone()).collect(),
            suggestion: keel_model::closest(name, spec.tasks.iter().map(|task| task.name.as_str())),
        }
    }
}
