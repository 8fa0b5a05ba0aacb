use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Keel: a self-healing orchestrator for phased data pipelines.
#[derive(Debug, Parser)]
#[command(name = "keel", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Where the state is kept: a path to an SQLite file, or sqlite:PATH. Overrides the
    /// pipeline's `state` field; the default is .keel/state.db beside the pipeline file.
    #[arg(long, global = true, value_name = "URL")]
    pub state: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a commented starter pipeline, DIR/keel.toml.
    Init {
        /// Directory to write keel.toml into.
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Overwrite an existing keel.toml.
        #[arg(long)]
        force: bool,
    },
    /// Check a pipeline file; exit 0 if valid, 2 with every error listed if not.
    Validate(PipelineArg),
    /// Run the pipeline to completion in the foreground (exit 0 succeeded, 3 degraded, 1 failed,
    /// 2 usage or config error).
    Run(RunArgs),
    /// Show runs and their tasks.
    Status(StatusArgs),
    /// Print the captured output of an attempt.
    Logs(LogsArgs),
    /// Run tasks again, and then everything downstream of them.
    Retry(RetryArgs),
    /// Cancel a partition's run; running attempts are stopped and recorded as cancelled.
    Cancel(CancelArgs),
    /// Run the bundled reference pipeline (hoops) over a week of dates with faults switched on,
    /// and show how Keel heals them.
    Demo(DemoArgs),
    /// Measure Keel's throughput and scheduling latency against a bare process spawn.
    Bench(BenchArgs),
    /// The attempt supervisor (internal).
    #[command(name = "__attempt", hide = true)]
    Attempt {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        rest: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct PipelineArg {
    /// The pipeline file.
    #[arg(default_value = "keel.toml")]
    pub pipeline: PathBuf,
}

#[derive(Debug, Args)]
pub struct PartitionArgs {
    /// The partition: a date YYYY-MM-DD, `today`, `yesterday` or days from today such as -2d,
    /// in the pipeline's time zone, or `none` for unpartitioned pipelines. Defaults to today.
    #[arg(long, value_name = "D", allow_hyphen_values = true, conflicts_with_all = ["from", "to"])]
    pub partition: Option<String>,
    /// First partition of an inclusive date range.
    #[arg(long, value_name = "D", allow_hyphen_values = true, requires = "to")]
    pub from: Option<String>,
    /// Last partition of an inclusive date range.
    #[arg(long, value_name = "D", allow_hyphen_values = true, requires = "from")]
    pub to: Option<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub pipeline: PipelineArg,
    #[command(flatten)]
    pub partitions: PartitionArgs,
    /// Run only these tasks; the others are recorded as skipped.
    #[arg(long, num_args = 1.., value_name = "TASK")]
    pub only: Vec<String>,
    /// Start a new run even if the partition already finished.
    #[arg(long)]
    pub rerun: bool,
    /// On a first SIGINT or SIGTERM, how long running attempts may finish before they are
    /// stopped (to resume on the next run). A second signal stops them at once.
    #[arg(long, default_value = "30s", value_name = "DURATION")]
    pub grace: String,
    /// Only queue the run in the state store (executed by `keel serve`, not available yet).
    #[arg(long)]
    pub detach: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub pipeline: PipelineArg,
    /// Only this partition.
    #[arg(long, value_name = "D", allow_hyphen_values = true)]
    pub partition: Option<String>,
    /// Print JSON: {"runs":[{"id","partition","state","tasks":[{"name","phase","outcome","attempts"}]}]}.
    #[arg(long)]
    pub json: bool,
    /// At most this many partitions, newest first.
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// `[PIPELINE] TASK`: the pipeline file (default keel.toml) and the task whose output to print.
    #[arg(required = true, num_args = 1..=2, value_name = "[PIPELINE] TASK")]
    pub args: Vec<String>,
    #[arg(long, value_name = "D", allow_hyphen_values = true)]
    pub partition: String,
    /// The attempt number; the latest by default.
    #[arg(long, value_name = "N")]
    pub attempt: Option<u32>,
}

#[derive(Debug, Args)]
pub struct RetryArgs {
    #[arg(long, value_name = "D", allow_hyphen_values = true)]
    pub partition: String,
    /// `[PIPELINE] TASK…`: tasks to run again. A leading argument ending in .toml, or naming an
    /// existing file, is taken as the pipeline file (default keel.toml).
    #[arg(required = true, num_args = 1.., value_name = "[PIPELINE] TASK")]
    pub args: Vec<String>,
    /// As for `keel run`.
    #[arg(long, default_value = "30s", value_name = "DURATION")]
    pub grace: String,
}

#[derive(Debug, Args)]
pub struct CancelArgs {
    #[command(flatten)]
    pub pipeline: PipelineArg,
    #[arg(long, value_name = "D", allow_hyphen_values = true)]
    pub partition: String,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Run only the 10×10 DAG, not the 1,000-task pipeline.
    #[arg(long)]
    pub quick: bool,
    /// Attempts running at once in the benchmark pipelines.
    #[arg(long, default_value_t = 10)]
    pub concurrency: u32,
    /// Keep the benchmark's state directory here instead of a temporary one.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the demo's state, warehouse and exports here (default: a new temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// How many consecutive dates to run.
    #[arg(long, default_value_t = 7)]
    pub days: u32,
    /// The first date.
    #[arg(long, default_value = "2026-11-08")]
    pub start: String,
    /// The season's seed.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// The feed's faults (see examples/hoops/README.md); "none" for a clean feed.
    #[arg(
        long,
        default_value = "latency=2ms..15ms,429=0.05,500=0.02,late_props=2,no_games=2026-11-11"
    )]
    pub faults: String,
}
