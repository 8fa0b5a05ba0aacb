use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Keel: a self-healing orchestrator for phased data pipelines.
#[derive(Debug, Parser)]
#[command(name = "keel", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Where the state is kept: a path to an SQLite file, sqlite:PATH, or a PostgreSQL
    /// database, postgres://USER@HOST:PORT/DATABASE (its password from PGPASSWORD). Overrides
    /// the pipeline's `state` field; the default is .keel/state.db beside the pipeline file.
    #[arg(long, global = true, value_name = "URL")]
    pub state: Option<String>,

    /// Which pipeline of the state `status`, `logs`, `events`, `history` and `cancel` read when
    /// the pipeline file is missing or does not validate and the state holds several.
    #[arg(long, global = true, value_name = "NAME")]
    pub pipeline_name: Option<String>,

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
    /// Validate, then check on this machine that every command resolves, every variable a
    /// credential is read from is set and every resource used is declared; exit 1 on a failure.
    Check(CheckArgs),
    /// Run the pipeline to completion in the foreground (exit 0 succeeded, 3 degraded, 1 failed,
    /// 2 usage or config error).
    Run(RunArgs),
    /// Show runs and their tasks.
    Status(StatusArgs),
    /// One task across partitions: outcome, attempts, time, rows and metrics.
    History(HistoryArgs),
    /// The event log: every state transition, readable or as JSON lines.
    Events(EventsArgs),
    /// Each SLO ([slo.NAME]) with its error budget and the burn rates that fire.
    Slo(SloArgs),
    /// The health score from 0 to 10, with each dimension's weight and evidence.
    Health(HealthArgs),
    /// A day's report: runs, what healed itself and how, what needs a human, anomalies, SLO
    /// budgets and the score with its trend.
    Report(ReportArgs),
    /// Print the captured output of an attempt, or of a sensor's last poll.
    Logs(LogsArgs),
    /// Run tasks again, and then everything downstream of them.
    Retry(RetryArgs),
    /// Cancel a partition's run; running attempts are stopped and recorded as cancelled.
    Cancel(CancelArgs),
    /// Record that a partition's degraded run is acceptable as it is, with who and why.
    Accept(AcceptArgs),
    /// Remove the attempt directories and logs of runs that finished long ago.
    Gc(GcArgs),
    /// The partitions the schedule should have made in the last `lookback` days that are
    /// missing, failed or stale, with their repairs; exit 1 when there is any.
    Gaps(GapsArgs),
    /// Switch a task off, or on for a share of partitions, without a restart: `keel flags set
    /// TASK off|on|N%`, `keel flags list`.
    Flags(FlagsArgs),
    /// Task versions and their canary rollout: `keel rollout list`, `keel rollout promote TASK`,
    /// `keel rollout rollback TASK`.
    Rollout(RolloutArgs),
    /// Run the pipeline unattended: start runs when its schedule fires, take up runs queued with
    /// `keel run --detach` (or by a `keel run` while serve holds the state) and `keel retry`,
    /// and carry on unfinished runs. Stops on SIGINT or SIGTERM like `keel run`.
    Serve(ServeArgs),
    /// Run the bundled reference pipeline (hoops) over a week of dates with faults switched on,
    /// and show how Keel heals them.
    Demo(DemoArgs),
    /// Run a seeded fault campaign over the hoops pipeline under `keel serve` on an accelerated
    /// clock (feed outages, 429 storms, late data, crashing and hanging tasks, kill -9 of Keel,
    /// a corrupt result file, a regressed metric) and report what Keel healed without a human.
    /// Exit 0 when the targets are met, 1 otherwise.
    Chaos(ChaosArgs),
    /// Measure Keel's throughput and scheduling latency against a bare process spawn.
    Bench(BenchArgs),
    /// Scan files (or, with --history, every commit) for committed secrets; exit 1 on findings.
    Audit(AuditArgs),
    /// Inside a task: wait for a request token of RESOURCE from the Keel running the task (its
    /// rate limit and quota, shared by every task using it). Exit 0 when granted, 75 when the
    /// timeout passed or the quota is used up, 2 for an unknown resource, 1 when Keel cannot be
    /// reached.
    Token(TokenArgs),
    /// The encrypted secret store beside the pipeline, .keel/secrets.age: set (the value from
    /// standard input), get (the only command that prints a value), list, rm.
    Secrets(SecretsArgs),
    /// The attempt supervisor (internal).
    #[command(name = "__attempt", hide = true)]
    Attempt {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        rest: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The resource, as named in `[resources.NAME]`.
    pub resource: String,
    /// How many tokens to take at once (one per request).
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub count: u32,
    /// How long to wait for them, such as 30s or 5m.
    #[arg(long, default_value = "30s", value_name = "DURATION")]
    pub timeout: String,
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
    /// Run this pass ([passes.NAME]): its tasks and params, in runs kept apart from the
    /// pipeline's own.
    #[arg(long, value_name = "NAME", conflicts_with = "only")]
    pub pass: Option<String>,
    /// Run the partitions of a range one after another, in date order, each once the one
    /// before has finished (as `max_active_partitions = 1`).
    #[arg(long)]
    pub sequential: bool,
    /// On a first SIGINT or SIGTERM, how long running attempts may finish before they are
    /// stopped (to resume on the next run). A second signal stops them at once.
    #[arg(long, default_value = "30s", value_name = "DURATION")]
    pub grace: String,
    /// Only queue the run in the state store and exit; a `keel serve` holding the state runs
    /// it.
    #[arg(long)]
    pub detach: bool,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The pipeline files to serve, each with its own schedule and state (default ./keel.toml).
    /// Each file is reloaded when it changes, once the new version validates.
    #[arg(default_value = "keel.toml", value_name = "PIPELINE")]
    pub pipelines: Vec<PathBuf>,
    /// On a first SIGINT or SIGTERM, how long running attempts may finish before they are
    /// stopped (to resume on the next start). A second signal stops them at once.
    #[arg(long, default_value = "30s", value_name = "DURATION")]
    pub grace: String,
    /// Run Keel's clock N times as fast as the wall clock: schedules, passes, backoff, gate
    /// grace periods and deadlines. Tasks and their timeouts keep real time. For demos and for
    /// trying out schedules, never for production.
    #[arg(long, default_value_t = 1, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub clock_speed: u32,
    /// Where the clock starts, as RFC 3339 (2026-03-07T05:00:00Z); default now. With
    /// --clock-speed, the time then runs on from there N times as fast.
    #[arg(long, value_name = "TIME")]
    pub clock_start: Option<String>,
    /// How log lines are written on stderr: `text` for people, `json` for one JSON object a
    /// line (ts, level, msg, pipeline, run, partition, task, attempt, outcome, trace_id,
    /// span_id).
    #[arg(long, value_enum, default_value = "text", value_name = "FORMAT")]
    pub log_format: crate::serve_log::LogFormat,
    /// Send each run's trace to this OTLP/HTTP collector (http:// only, e.g.
    /// http://127.0.0.1:4318); defaults to OTEL_EXPORTER_OTLP_ENDPOINT. Needs a keel built
    /// with the `otlp` feature.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// Where the HTTP API listens: IP:PORT (port 0 picks a free port); 127.0.0.1:8080 when not
    /// given. A worker, and a standby scheduler until it takes over, serve the cluster view
    /// here (`/api/cluster`, `/ui/cluster`, `/health`, `/ready`); a worker only when given one,
    /// so that several can share a machine.
    #[arg(long, value_name = "IP:PORT")]
    pub addr: Option<String>,
    /// What this serve does: `all` schedules and runs attempts here; with a PostgreSQL state,
    /// `scheduler` hands attempts to workers (one scheduler is active, others wait as
    /// standbys and take over when it dies) and `worker` runs them (no pipeline file needed).
    #[arg(long, value_enum, default_value = "all", value_name = "ROLE")]
    pub role: crate::cluster::Role,
    /// With --role worker: how many attempts it runs at once.
    #[arg(long, default_value_t = 4, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub slots: u32,
    /// With --role worker: how long its claim of an attempt holds without a heartbeat (it
    /// renews every third of it); an attempt whose lease lapses is retried elsewhere.
    #[arg(long, default_value = "15s", value_name = "DURATION")]
    pub lease: String,
    /// With --role worker: where its attempt directories go.
    #[arg(long, default_value = ".keel-worker", value_name = "DIR")]
    pub work_dir: PathBuf,
}

/// `--from D --to D`: an inclusive range of date partitions.
#[derive(Debug, Args)]
pub struct RangeArgs {
    /// First partition of an inclusive date range.
    #[arg(long, value_name = "D", allow_hyphen_values = true, requires = "to")]
    pub from: Option<String>,
    /// Last partition of an inclusive date range.
    #[arg(long, value_name = "D", allow_hyphen_values = true, requires = "from")]
    pub to: Option<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub pipeline: PipelineArg,
    /// Only this partition: its newest run's tasks (every run's with --all).
    #[arg(long, value_name = "D", allow_hyphen_values = true, conflicts_with_all = ["from", "to"])]
    pub partition: Option<String>,
    #[command(flatten)]
    pub range: RangeArgs,
    /// Only this run (any run, not only a partition's newest): its tasks.
    #[arg(long, value_name = "ID", conflicts_with_all = ["partition", "from", "to", "all"])]
    pub run: Option<i64>,
    /// Every run of each partition, not only the newest.
    #[arg(long)]
    pub all: bool,
    /// Only runs of this pass ([passes.NAME]).
    #[arg(long, value_name = "NAME")]
    pub pass: Option<String>,
    /// Print JSON: {"runs":[{"id","partition","pass","state","tasks":[{"name","phase","outcome","attempts"}]}]}.
    #[arg(long)]
    pub json: bool,
    /// At most this many rows (partitions, or runs with --all), newest first. Default: 20, or the
    /// whole range with --from/--to.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: Option<u32>,
}

#[derive(Debug, Args)]
pub struct GapsArgs {
    #[command(flatten)]
    pub pipeline: PipelineArg,
    /// Print JSON: {"pipeline","checked_at","expected","gaps":[{"partition","kind","run",…}]}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// `[PIPELINE] TASK`: the pipeline file (default keel.toml) and the task to show.
    #[arg(required = true, num_args = 1..=2, value_name = "[PIPELINE] TASK")]
    pub args: Vec<String>,
    #[command(flatten)]
    pub range: RangeArgs,
    /// Every run of each partition, not only the newest.
    #[arg(long)]
    pub all: bool,
    /// Print JSON: {"task","runs":[{"run","partition","outcome","attempts","rows","metrics",…}]}.
    #[arg(long)]
    pub json: bool,
    /// At most this many rows, newest first. Default: 20, or the whole range with --from/--to.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub limit: Option<u32>,
}

#[derive(Debug, Args)]
pub struct SloArgs {
    #[command(flatten)]
    pub pipeline: PipelineArg,
    /// Print JSON: {"pipeline","slos":[{"name","kind","target","objective","events","bad","remaining","burning",…}]}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct HealthArgs {
    #[command(flatten)]
    pub pipeline: PipelineArg,
    /// Print JSON: {"pipeline","score","dimensions":[{"name","weight","value","evidence"}]}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub pipeline: PipelineArg,
    /// The day to report on, YYYY-MM-DD in the pipeline's time zone (default: yesterday).
    #[arg(long, value_name = "D")]
    pub date: Option<String>,
    /// Print JSON.
    #[arg(long, conflicts_with = "html")]
    pub json: bool,
    /// Print a self-contained HTML page.
    #[arg(long)]
    pub html: bool,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    #[command(flatten)]
    pub pipeline: PipelineArg,
    /// Only the runs of this partition.
    #[arg(long, value_name = "D")]
    pub partition: Option<String>,
    /// Only this run.
    #[arg(long, value_name = "ID", conflicts_with = "partition")]
    pub run: Option<i64>,
    /// Keep printing new events: until the run ends with --run or --partition, otherwise until
    /// interrupted (Ctrl-C).
    #[arg(long)]
    pub follow: bool,
    /// One JSON object per line: {"seq","at","time","run","partition","task","attempt","kind","detail"}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// `[PIPELINE] TASK`: the pipeline file (default keel.toml) and the task whose output to print.
    #[arg(required = true, num_args = 1..=2, value_name = "[PIPELINE] TASK")]
    pub args: Vec<String>,
    /// The partition whose newest run to read. Default: the newest run in which the task ran.
    #[arg(long, value_name = "D", allow_hyphen_values = true)]
    pub partition: Option<String>,
    /// The run to read (any run, not only a partition's newest).
    #[arg(long, value_name = "ID", conflicts_with = "partition")]
    pub run: Option<i64>,
    /// The attempt number; the latest by default.
    #[arg(long, value_name = "N")]
    pub attempt: Option<u32>,
    /// Print the output of the task's sensor (`wait_for`) at its last poll instead.
    #[arg(long, conflicts_with = "attempt")]
    pub sensor: bool,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("partitions").required(true).args(["partition", "from"])))]
pub struct RetryArgs {
    /// The partition whose newest run to retry.
    #[arg(long, value_name = "D", allow_hyphen_values = true, conflicts_with_all = ["from", "to"])]
    pub partition: Option<String>,
    /// Retry the newest run of every partition of this range that has one.
    #[command(flatten)]
    pub range: RangeArgs,
    /// `[PIPELINE] TASK…`: tasks to run again. A leading argument ending in .toml, or naming an
    /// existing file, is taken as the pipeline file (default keel.toml).
    #[arg(required_unless_present = "failed", num_args = 1.., value_name = "[PIPELINE] TASK")]
    pub args: Vec<String>,
    /// Retry every failed or degraded partition of the range (or the partition): in each, the
    /// tasks that did not complete, and everything downstream of them. No TASK is given then.
    #[arg(long)]
    pub failed: bool,
    /// As for `keel run`.
    #[arg(long, default_value = "30s", value_name = "DURATION")]
    pub grace: String,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("partitions").required(true).args(["partition", "from"])))]
pub struct CancelArgs {
    #[command(flatten)]
    pub pipeline: PipelineArg,
    /// The partition whose newest run to cancel.
    #[arg(long, value_name = "D", allow_hyphen_values = true, conflicts_with_all = ["from", "to"])]
    pub partition: Option<String>,
    /// Cancel the unfinished newest run of every partition of this range.
    #[command(flatten)]
    pub range: RangeArgs,
    /// Only runs that already have a task that failed (or are missing one behind an open gate):
    /// stop the runs that are going wrong, let the others go on.
    #[arg(long)]
    pub failed: bool,
}

#[derive(Debug, Args)]
pub struct AcceptArgs {
    #[command(flatten)]
    pub pipeline: PipelineArg,
    /// The partition whose newest run, which must be degraded, to accept.
    #[arg(long, value_name = "D", allow_hyphen_values = true)]
    pub partition: String,
    /// Why the run is acceptable, for the event log.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
}

#[derive(Debug, Args)]
pub struct GcArgs {
    #[command(flatten)]
    pub pipeline: PipelineArg,
    /// Runs that finished more than this long ago, e.g. 30d.
    #[arg(long, value_name = "DURATION")]
    pub older_than: String,
    /// Only say what would be removed.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Run only the 10×10 DAG, not the 1,000-task pipeline.
    #[arg(long)]
    pub quick: bool,
    /// Run only the scale benchmark, at full size: wall time and peak memory of a 10,000-task
    /// DAG, 10,000 tasks in 20 phases, a 5,000-task chain and a 365-partition backfill, each at
    /// a quarter, a half and all of its size.
    #[arg(long, conflicts_with = "quick")]
    pub scale: bool,
    /// Runs one case of the scale benchmark in this process (internal).
    #[arg(long, hide = true, value_name = "SHAPE:SIZE")]
    pub scale_case: Option<String>,
    /// Attempts running at once in the benchmark pipelines.
    #[arg(long, default_value_t = 10)]
    pub concurrency: u32,
    /// Keep the benchmark's state directory here instead of a temporary one.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Run only the distributed workers benchmark: the 1,000-task pipeline with 1, 2 and 4
    /// worker processes on this PostgreSQL database (its pipelines are named bench_workers_N),
    /// against the same pipeline all in one process on SQLite.
    #[arg(long, value_name = "URL", conflicts_with_all = ["quick", "scale"])]
    pub postgres: Option<String>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Keep the demo's state, warehouse and exports here (default: a new temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Leave the pipeline running under `keel serve` on an accelerated clock, its schedule
    /// firing unattended, until interrupted; prints the URLs to open.
    #[arg(long)]
    pub serve: bool,
    /// Run examples/hoops/keel-http.toml instead: every task an HTTP task calling the
    /// processors in a `hoops serve` the demo starts on 127.0.0.1:8089 (a free port if that
    /// one is taken), with a bearer token generated for the run.
    #[arg(long, conflicts_with = "serve")]
    pub http: bool,
    /// With --serve: how many times as fast as the wall clock Keel's clock runs (720: a day
    /// every two minutes).
    #[arg(long, default_value_t = 720, requires = "serve", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub speed: u32,
    /// With --serve: where the API listens.
    #[arg(long, default_value = "127.0.0.1:8080", requires = "serve")]
    pub addr: String,
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

#[derive(Debug, Args)]
pub struct ChaosArgs {
    /// A hoops-style pipeline file to run instead of the bundled examples/hoops/keel.toml (its
    /// tasks must be `hoops` commands).
    #[arg(value_name = "PIPELINE")]
    pub pipeline: Option<PathBuf>,
    /// How many simulated days (partitions, one after another) the campaign runs.
    #[arg(long, default_value_t = 14, value_parser = clap::value_parser!(u32).range(1..=365))]
    pub days: u32,
    /// The seed of the fault plan and of the season; the same seed gives the same plan.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The first date of the campaign.
    #[arg(long, default_value = "2026-11-01")]
    pub start: String,
    /// How many times as fast as the wall clock Keel's clock runs (backoff, sensors, gates).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1_000))]
    pub clock_speed: u32,
    /// Print the fault plan and stop, without running anything.
    #[arg(long)]
    pub plan_only: bool,
    /// Print the report as JSON (progress goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// Keep the campaign's pipeline, state, warehouse, logs and alerts here (default: a
    /// temporary directory, removed at the end).
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(after_help = AUDIT_RULES)]
pub struct AuditArgs {
    /// The directory (or file) to scan. `.gitignore` is respected, but tracked `.env` files are
    /// always read.
    #[arg(default_value = ".")]
    pub path: PathBuf,
    /// Scan the lines every commit of the repository added (`git log -p --all`) instead of the
    /// files as they are.
    #[arg(long)]
    pub history: bool,
    /// Entries that silence findings (path:GLOB, rule:ID, fingerprint:FINGERPRINT, one per
    /// line). Default: PATH/.keel-audit-allow when it exists.
    #[arg(long, value_name = "FILE")]
    pub allowlist: Option<PathBuf>,
    /// How the report is written.
    #[arg(long, value_enum, default_value = "text")]
    pub format: AuditFormat,
    /// Write the report to this file instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum AuditFormat {
    Text,
    Json,
    Sarif,
}

const AUDIT_RULES: &str = "Rules: private-key, aws-access-key-id, aws-secret-access-key, github-token, \
gitlab-token, slack-token, slack-webhook, stripe-key, google-api-key, openai-key, sendgrid-key, npm-token, \
jwt, cli-password, url-password, generic-secret.\nExit status: 0 nothing found, 1 findings, 2 bad arguments or allowlist.";

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The pipeline file.
    #[arg(default_value = "keel.toml")]
    pub pipeline: PathBuf,
    /// How long each smoke test may run before it is killed and fails (e.g. 30s, 2m).
    #[arg(long, default_value = "60s", value_name = "DURATION")]
    pub timeout: String,
    /// Print the checks as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct FlagsArgs {
    #[command(subcommand)]
    pub command: FlagsCommand,
    /// The pipeline file.
    #[arg(
        long,
        global = true,
        default_value = "keel.toml",
        value_name = "PIPELINE"
    )]
    pub pipeline: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum FlagsCommand {
    /// Set a task's flag: `off` (skipped everywhere), `N%` (runs in that share of partitions)
    /// or `on` (removes the flag).
    Set {
        task: String,
        // Not `state`: that is the global --state's id.
        #[arg(value_name = "on|off|N%")]
        value: String,
    },
    /// The flags set, by task.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct RolloutArgs {
    #[command(subcommand)]
    pub command: RolloutCommand,
    /// The pipeline file.
    #[arg(
        long,
        global = true,
        default_value = "keel.toml",
        value_name = "PIPELINE"
    )]
    pub pipeline: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// Every recorded version of each task: canary, promoted, rolled back or retired.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Promote a version of a task by hand: every partition runs it from now on.
    Promote {
        task: String,
        /// The version (default: the task's newest canary or rolled-back version).
        #[arg(value_name = "VERSION")]
        task_version: Option<String>,
    },
    /// Roll a version of a task back by hand: the version promoted before it runs instead.
    Rollback {
        task: String,
        /// The version (default: the task's canary, or else its promoted version).
        #[arg(value_name = "VERSION")]
        task_version: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct SecretsArgs {
    #[command(subcommand)]
    pub action: SecretsAction,
}

#[derive(Debug, Subcommand)]
pub enum SecretsAction {
    /// Store a secret; its value is read from standard input (a trailing newline is dropped).
    Set {
        /// The secret's name: upper-case letters, digits and underscores, such as STATS_API_KEY.
        name: String,
        /// The pipeline file; the store is .keel/secrets.age beside it.
        #[arg(long, default_value = "keel.toml")]
        pipeline: PathBuf,
    },
    /// Print a secret's value.
    Get {
        /// The secret's name.
        name: String,
        /// The pipeline file; the store is .keel/secrets.age beside it.
        #[arg(long, default_value = "keel.toml")]
        pipeline: PathBuf,
    },
    /// Print the names in the store, one a line (never the values).
    List {
        /// The pipeline file; the store is .keel/secrets.age beside it.
        #[arg(long, default_value = "keel.toml")]
        pipeline: PathBuf,
    },
    /// Remove a secret.
    Rm {
        /// The secret's name.
        name: String,
        /// The pipeline file; the store is .keel/secrets.age beside it.
        #[arg(long, default_value = "keel.toml")]
        pipeline: PathBuf,
    },
}
