use std::collections::BTreeMap;
use std::time::Duration;

/// The wall-clock timeout of a task that sets none.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// How long a task may keep answering *not ready* (exit 75) before it ends as `not_ready`.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(6 * 3600);
/// The global cap on attempts running at once when `defaults.concurrency` is not set.
pub const DEFAULT_CONCURRENCY: u32 = 8;

/// A validated pipeline: every default applied, every name resolved, no cycles.
///
/// Only `keel-config` builds one from a file; tests build them by hand.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PipelineSpec {
    pub name: String,
    /// An IANA time zone name, already checked to exist.
    pub timezone: String,
    pub partition: PartitionKind,
    /// The `state` URL from the file, if any; the CLI resolves it relative to the file.
    pub state: Option<String>,
    /// The global cap on attempts running at once.
    pub concurrency: u32,
    /// Phases in file order.
    pub phases: Vec<PhaseSpec>,
    /// Tasks in file order.
    pub tasks: Vec<TaskSpec>,
    /// Shared external dependencies, in file order.
    pub resources: Vec<ResourceSpec>,
    /// When `keel serve` creates runs by itself. Not part of the pipeline's version: a new
    /// schedule changes when runs start, not what they run.
    #[serde(skip)]
    pub schedule: Option<ScheduleSpec>,
    /// `max_active_partitions`: at most this many partitions of a range run at once; the
    /// others wait, in order. Not part of the version: it changes when runs go, not what.
    #[serde(skip)]
    pub max_active_partitions: Option<u32>,
    /// `[passes.NAME]`, in file order: the same partition processed again on other schedules.
    /// What a pass runs (its tasks and params) is part of the version; when it fires is not.
    /// Left out of the version when there are none, so pipelines without passes keep theirs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub passes: Vec<PassSpec>,
    /// `[alerts]`: where `keel serve` tells people what needs them. Not part of the version.
    #[serde(skip)]
    pub alerts: Option<AlertsSpec>,
    /// `[secrets]`: where a task's secrets come from. Not part of the version: the provider
    /// decides where a value is read, not what runs.
    #[serde(skip)]
    pub secrets: Option<SecretsSpec>,
    /// The tasks' smoke tests (`smoke = [...]` on a task), run by `keel check` before a version
    /// goes live. Not part of the version: they never run in a run.
    #[serde(skip)]
    pub smoke: Vec<SmokeTest>,
    /// `[slo.NAME]`: the pipeline's service level objectives. Not part of the version: they
    /// judge runs, they do not change them.
    #[serde(skip)]
    pub slos: Vec<crate::SloSpec>,
    /// `[pipeline] heal = { budget = N }`: how many heals (`heal` on a failed check, or a
    /// result's `"heal"`) each run of a partition may make. Not part of the version: it bounds
    /// remediation, it does not change what runs.
    #[serde(skip)]
    pub heal_budget: u32,
}

/// The heal budget of a run when `[pipeline] heal` does not set one.
pub const DEFAULT_HEAL_BUDGET: u32 = 1;

/// How long a `{ command = [...] }` secrets provider's answer is kept, when `ttl` is not set.
pub const DEFAULT_SECRET_TTL: Duration = Duration::from_secs(5 * 60);
/// How long a secrets command may run before it is killed, when `timeout` is not set.
pub const DEFAULT_SECRET_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

/// `[secrets]` of a pipeline file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretsSpec {
    pub provider: SecretProvider,
}

/// Where secrets are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretProvider {
    /// `"store"`: the encrypted store beside the pipeline, filled with `keel secrets set`.
    Store,
    /// `"env"`: Keel's own environment.
    Env,
    /// `"dir:/run/secrets"`: one file per secret, named like it; relative paths are relative to
    /// the pipeline file's folder.
    Dir(String),
    /// `{ command = ["vault", "read", "{name}"], ttl = "5m", timeout = "30s" }`: a program run
    /// without a shell, `{name}` replaced by the secret's name, whose standard output is the
    /// value, kept for `ttl`.
    Command {
        argv: Vec<String>,
        ttl: Duration,
        timeout: Duration,
    },
}

/// A pass (`[passes.NAME]`): a schedule that processes a partition again with a subset of the
/// pipeline's tasks, its own parameters and, for some phases, its own gates. Tasks outside the subset are taken as done: a run
/// of the pass settles them `skipped` and ends `succeeded` once its own tasks have.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PassSpec {
    pub name: String,
    /// When the pass fires and which partition it processes; not part of the version.
    #[serde(skip)]
    pub schedule: Option<ScheduleSpec>,
    /// The tasks the pass runs, in file order; every task when the pass names no subset.
    pub tasks: Vec<String>,
    /// `{param.NAME}` values for the pass's runs.
    pub params: BTreeMap<String, String>,
    /// Gates that replace the gates of these phases (by name) in the pass's runs.
    pub gates: BTreeMap<String, GateSpec>,
}

/// At most this many alerts an hour per signature when `max_per_hour` is not set.
pub const DEFAULT_ALERTS_PER_HOUR: u32 = 5;
/// How long a run may stay `degraded` before it alerts, when `degraded_grace` is not set.
pub const DEFAULT_DEGRADED_GRACE: Duration = Duration::from_secs(3600);
/// How long a breaker may stay open before it alerts, when `breaker_open_for` is not set.
pub const DEFAULT_BREAKER_OPEN_FOR: Duration = Duration::from_secs(15 * 60);
/// How long one delivery may take, when the alerts' `timeout` is not set.
pub const DEFAULT_ALERT_TIMEOUT: Duration = Duration::from_secs(10);

/// `[alerts]` of a pipeline file: the sinks, and how often a problem may be told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertsSpec {
    /// A Slack-compatible JSON webhook.
    pub webhook: Option<WebhookUrl>,
    /// A command that gets each alert as JSON on its standard input.
    pub command: Option<Vec<String>>,
    /// Alerts per signature (pipeline, kind, task or resource) in any sliding hour.
    pub max_per_hour: u32,
    /// How long a run may stay `degraded` (not accepted, not fixed) before it alerts.
    pub degraded_grace: Duration,
    /// How long a resource's breaker may stay open before it alerts.
    pub breaker_open_for: Duration,
    /// How long one delivery may take; a command still running then is killed.
    pub timeout: Duration,
    /// `report = "07:30"`: the local time `keel serve` sends yesterday's report to the sinks.
    pub report: Option<crate::TimeOfDay>,
}

/// Where a webhook's URL comes from. A Slack webhook URL is a credential, so the usual place is
/// an environment variable; a literal URL is for receivers that need no secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookUrl {
    /// `url = "http://127.0.0.1:9093/keel"`.
    Literal(String),
    /// `url_env = "KEEL_ALERT_WEBHOOK"`: read when `keel serve` starts.
    Env(String),
}

/// `schedule`, `schedule_partition` and `catchup` of `[pipeline]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleSpec {
    /// A 5-field cron expression in the pipeline's time zone, already checked to parse.
    pub cron: String,
    /// Which partition a scheduled run processes: its local date moved by this many days.
    pub partition_offset_days: i64,
    pub catchup: Catchup,
    /// `backfill = { ... }`: which partitions the schedule should have made, and whether
    /// `keel serve` repairs the ones missing or failed. Only the pipeline's own schedule has one.
    pub backfill: Option<BackfillSpec>,
}

/// `backfill = { auto, max_per_day, lookback, from, tries }` of `[pipeline]`: gap detection
/// over the partitions the pipeline's schedule should have made, and their repair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackfillSpec {
    /// Whether `keel serve` starts runs for the gaps by itself; `keel gaps` lists them either way.
    pub auto: bool,
    /// The most repair runs started in one local day of the pipeline's time zone.
    pub max_per_day: u32,
    /// How far back the schedule's fires are looked at, in days.
    pub lookback_days: u32,
    /// The first partition that should exist (`YYYY-MM-DD`): the pipeline's first date.
    pub from: Option<String>,
    /// How many repair runs one partition gets before it is reported as not repairable.
    pub tries: u32,
}

impl Default for BackfillSpec {
    fn default() -> BackfillSpec {
        BackfillSpec {
            auto: false,
            max_per_day: 7,
            lookback_days: 30,
            from: None,
            tries: 2,
        }
    }
}

/// What `keel serve` does about schedules it missed while it was not running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Catchup {
    /// Each missed schedule runs once, oldest first.
    All,
    /// Only the most recent missed schedule runs.
    #[default]
    Latest,
    /// Missed schedules are skipped; the next one runs on time.
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PartitionKind {
    /// One partition per local date, `YYYY-MM-DD`.
    Date,
    /// A single partition named `none`.
    None,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PhaseSpec {
    pub name: String,
    /// Phases that must be complete before this one starts.
    pub after: Vec<String>,
    /// Lets downstream phases start before this one is complete (docs/pipeline.md).
    pub gate: Option<GateSpec>,
    /// `checks = [{ complete = "90%", severity = "warn" }]`: the share of the phase's tasks (an
    /// expanded task counts its items) that must have completed when a run ends. Left out of the
    /// version when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<crate::PhaseCheck>,
}

/// A quorum gate: the phase is *sufficient* once every `required` task has succeeded and at
/// least `min_share` of its tasks have; Keel then waits up to `grace` for the rest before letting
/// downstream proceed and marking the run degraded.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GateSpec {
    pub required: Vec<String>,
    /// In `[0, 1]`: `min = "60%"` is 0.6.
    pub min_share: f64,
    pub grace: Duration,
    /// `tiers = [...]`: a requirement that relaxes with time since the run was created, in
    /// order of `after`. A gate with tiers opens as soon as the tier in force is met, with no
    /// grace; `required` and `min_share` above are then those of its last tier. Left out of the
    /// version when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<GateTier>,
}

/// One tier of a tiered gate: from `after` since the run was created, the phase may let
/// downstream go once every `required` task and at least `min_share` of its tasks completed.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GateTier {
    pub after: Duration,
    pub required: Vec<String>,
    /// In `[0, 1]`.
    pub min_share: f64,
}

/// A data-availability sensor (`wait_for`): a command polled until it exits 0, with jittered
/// backoff from `every` up to `max`, for at most `deadline`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SensorSpec {
    /// Empty for a sensor that is an HTTP request.
    pub command: Vec<String>,
    /// `wait_for = { http = { … } }`: the sensor is a request; 2xx is ready, 204, 404, 425,
    /// 429 and 503 are not ready, unless its `on_status` says otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<crate::HttpSpec>,
    pub every: Duration,
    pub max: Duration,
    pub deadline: Duration,
}

/// A named external dependency shared by the tasks that `use` it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ResourceSpec {
    pub name: String,
    /// Token bucket: at most `tokens` attempt starts per `per`, bursting up to `tokens`.
    pub rate: Option<Rate>,
    /// Bulkhead: at most this many attempts using the resource at once.
    pub concurrency: Option<u32>,
    pub breaker: Option<BreakerSpec>,
    pub retry_budget: Option<RetryBudgetSpec>,
    /// A health probe checked before tasks using the resource start. Left out of the version
    /// when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<crate::ReadyProbe>,
    /// What the rate limit and the quota count: attempt starts (the default) or the requests
    /// tasks take with `keel token`. Left out of the version when it is the default.
    #[serde(default, skip_serializing_if = "TokenUse::is_attempt")]
    pub tokens: TokenUse,
    /// `quota = "500/month"`: at most this many requests per calendar period. Left out of the
    /// version when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaSpec>,
}

/// What a resource's `rate` and `quota` are charged with (`tokens = "attempt" | "request"`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenUse {
    /// Each attempt of a task using the resource takes a token when it starts.
    #[default]
    Attempt,
    /// Tasks take tokens themselves, one per request, with `keel token RESOURCE`; their
    /// attempts are not charged.
    Request,
}

impl TokenUse {
    pub fn is_attempt(&self) -> bool {
        *self == TokenUse::Attempt
    }
}

/// The calendar period a quota counts over, in the pipeline's time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QuotaPeriod {
    Day,
    Month,
}

/// A quota: at most `limit` requests per calendar `period`, with a warning once `warn` (a share
/// in `(0, 1]`) of it is used.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct QuotaSpec {
    pub limit: u32,
    pub period: QuotaPeriod,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warn: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Rate {
    pub tokens: u32,
    pub per: Duration,
}

/// A circuit breaker: opens after `failures` consecutive failures, or when the failure share of
/// the last `window` attempts reaches `ratio`; after `cooldown` one probe attempt may run, and
/// its success closes the breaker. A breaker that has stayed open for `max_open` (failed probes
/// included) ends the tasks waiting on it as failed, so a dependency that stays down ends the run
/// instead of hanging it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BreakerSpec {
    pub failures: u32,
    pub ratio: Option<f64>,
    pub window: u32,
    pub cooldown: Duration,
    pub max_open: Duration,
}

/// Retries of attempts on a resource may be at most `ratio` of its attempts over `window`, plus
/// `min` retries that are always allowed, so one bad input cannot start a retry storm.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RetryBudgetSpec {
    pub ratio: f64,
    pub window: Duration,
    pub min: u32,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TaskSpec {
    pub name: String,
    pub phase: String,
    /// Program and arguments, with `{date}`-style templates not yet expanded; empty for an HTTP
    /// task.
    pub command: Vec<String>,
    /// The request of an HTTP task (`http = { … }`), which has no command. Left out of the
    /// version of a command task, so pipelines without HTTP tasks keep theirs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<crate::HttpSpec>,
    /// Extra dependencies on tasks in this phase or earlier ones.
    pub after: Vec<String>,
    pub timeout: Duration,
    pub retries: RetryPolicy,
    /// Stall timeout: no output and no touch of `KEEL_HEARTBEAT` for this long ends the attempt.
    pub heartbeat: Option<Duration>,
    /// How long the task may keep reporting *not ready* before it ends as `not_ready`.
    pub deadline: Duration,
    /// Resources this task uses (names of `[resources.NAME]`).
    pub uses: Vec<String>,
    /// Polled until ready before the task's first attempt: the first sensor `wait_for` names.
    pub wait_for: Option<SensorSpec>,
    /// The further sensors of `wait_for = [{ … }, { … }]`, polled in order once the one before
    /// passed. Left out of the version when empty, so a single sensor keeps its version.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub also_wait_for: Vec<SensorSpec>,
    /// The task's calendar (`when`): the weekdays it runs on. Part of the version, and left out
    /// of it when there is none, so pipelines without calendars keep theirs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<crate::CalendarSpec>,
    /// Where the task runs and the environment it gets. Left out of the pipeline version when
    /// nothing is set, so pipelines that set none keep their version.
    #[serde(default, skip_serializing_if = "TaskContext::is_default")]
    pub context: TaskContext,
    /// How the task reads its inputs: which `after` entries are soft, and which tasks of
    /// upstream phases it reads (`inputs`). Left out of the version when nothing is set.
    #[serde(default, skip_serializing_if = "TaskEdges::is_default")]
    pub edges: TaskEdges,
    /// Dynamic fan-out (`expand`): one attempt chain per item an upstream task listed. Left out
    /// of the version when there is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expand: Option<crate::ExpandSpec>,
    /// How an attempt that ends *not ready* is retried (`not_ready`); without it, with backoff
    /// until `deadline`. Left out of the version when unset, so pipelines keep theirs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_ready: Option<crate::NotReadyPolicy>,
    /// `secrets = ["STATS_API_KEY"]`: the secrets given to this task alone, as environment
    /// variables of those names, read through the pipeline's `[secrets]` provider when an
    /// attempt starts. Left out of the version when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<String>,
    /// `repeat = { every, from, until }`: the task runs again and again inside a window of the
    /// partition's date. Left out of the version when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat: Option<crate::RepeatSpec>,
    /// `freeze_after = "19:00"` or `{ task, delay }`: from that local time on the partition's date
    /// (or that long after another task ended), retries and late reruns no longer rerun the
    /// task. Left out of the version when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freeze_after: Option<crate::FreezeSpec>,
    /// `version`, `code` and `rollout`: what tells this task's versions apart, and how a new
    /// one goes live. Left out of the pipeline version when neither `version` nor `code` is set.
    #[serde(default, skip_serializing_if = "crate::TaskVersioning::is_unversioned")]
    pub versioning: crate::TaskVersioning,
    /// `checks = [{ metric = "accuracy", min = 0.30 }, { rows = { min = 200 } }]`: bounds on
    /// what a succeeded attempt reports. Left out of the version when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<crate::CheckSpec>,
}

impl TaskSpec {
    /// Every sensor of the task, in the order they are polled.
    pub fn sensors(&self) -> impl Iterator<Item = &SensorSpec> {
        self.wait_for.iter().chain(&self.also_wait_for)
    }

    /// The sensor polled at `stage` (0 for the first).
    pub fn sensor(&self, stage: usize) -> Option<&SensorSpec> {
        self.sensors().nth(stage)
    }
}

/// What a task says about its inputs beyond the graph (docs/pipeline.md, "Soft inputs" and
/// "Targeted reconciliation").
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct TaskEdges {
    /// `after` entries written `{ task = "NAME", soft = true }`: the task waits for them (they
    /// are in `after` too) but runs even when they fail for good, and gets the names of those
    /// that did not succeed in `KEEL_MISSING`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub soft: Vec<String>,
    /// `inputs = [...]`: the tasks of upstream phases the task actually reads. `None` means
    /// every task of every upstream phase, which is what a phase edge says. Only reconciliation
    /// reads it: a waived task that lands late reruns the tasks that read it, not all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<Vec<String>>,
    /// `after` entries on an earlier partition, written `"NAME@-1d"` (or
    /// `{ task = "NAME@-1d", soft = true }`): the task waits for that task's latest run of the
    /// date so many days before its own. They are not in `after` and not in the graph: each
    /// run looks them up in the store.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier: Vec<EarlierInput>,
}

/// An `after` entry on an earlier partition: `task` in the partition `days` days before the
/// run's own (docs/pipeline.md, "Dependencies across dates").
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EarlierInput {
    pub task: String,
    /// How many days before the run's own partition; at least 1.
    pub days: u32,
    /// The task runs even when this input failed or never came, and finds it in
    /// `KEEL_MISSING`.
    pub soft: bool,
}

impl EarlierInput {
    /// The entry as written in `after`, without its table: `player_game_summary@-1d`.
    pub fn label(&self) -> String {
        format!("{}@-{}d", self.task, self.days)
    }

    /// The partition this entry waits on for a run of `partition` (a `YYYY-MM-DD` date);
    /// `None` when `partition` is not one.
    ///
    /// ```
    /// let input = keel_model::EarlierInput { task: "summary".into(), days: 1, soft: false };
    /// assert_eq!(input.partition_before("2024-03-01").as_deref(), Some("2024-02-29"));
    /// assert_eq!(input.partition_before("tuesday"), None);
    /// ```
    pub fn partition_before(&self, partition: &str) -> Option<String> {
        let date = chrono::NaiveDate::parse_from_str(partition, "%Y-%m-%d").ok()?;
        let earlier = date.checked_sub_days(chrono::Days::new(u64::from(self.days)))?;
        Some(earlier.format("%Y-%m-%d").to_string())
    }
}

impl TaskEdges {
    pub fn is_default(&self) -> bool {
        *self == TaskEdges::default()
    }

    /// Whether the `after` entry `dependency` is soft.
    pub fn is_soft(&self, dependency: &str) -> bool {
        self.soft.iter().any(|name| name == dependency)
    }
}

/// A task's smoke test: a quick command that proves the task can start here (its program and
/// imports are installed, its configuration reads), templates not expanded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmokeTest {
    pub task: String,
    pub command: Vec<String>,
}

/// Where a task (and its sensor) runs, and with which environment: `cwd`, `env`, `env_file` and
/// `inherit_env` (docs/pipeline.md), `[defaults]` and the task's own already merged.
///
/// Paths are kept as written: they are relative to the pipeline file's directory, which only the
/// caller knows, and `cwd` may hold templates expanded per attempt.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TaskContext {
    /// The working directory, templates not expanded; `None` is the pipeline file's directory.
    pub cwd: Option<String>,
    /// Variables set for the task, by name, with templates in their values not expanded: the
    /// entries of `[defaults]`, overridden by the task's own.
    pub env: BTreeMap<String, String>,
    /// A file of `KEY=VALUE` lines read when a run starts; `env` overrides its entries.
    pub env_file: Option<String>,
    pub inherit_env: InheritEnv,
}

impl TaskContext {
    pub fn is_default(&self) -> bool {
        *self == TaskContext::default()
    }
}

/// Which of Keel's own environment variables a task inherits (`inherit_env`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InheritEnv {
    /// All of them (`true`, the default).
    #[default]
    All,
    /// None (`false`): the task gets only Keel's variables and its `env` and `env_file`.
    Nothing,
    /// Only these names, when Keel has them.
    Only(Vec<String>),
}

/// Exponential backoff between attempts, capped, with jitter (`retries` in docs/pipeline.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RetryPolicy {
    /// The total number of attempts, the first one included. `1` means never retry.
    pub attempts: u32,
    pub initial: Duration,
    pub max: Duration,
    pub jitter: Jitter,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 3,
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
            jitter: Jitter::Full,
        }
    }
}

impl RetryPolicy {
    /// The backoff ceiling before retry number `retry` (1 for the first retry):
    /// `min(max, initial × 2^(retry-1))`.
    pub fn ceiling(&self, retry: u32) -> Duration {
        let exponent = retry.saturating_sub(1).min(40);
        let grown = self.initial.saturating_mul(1u32 << exponent.min(31));
        let grown = if exponent > 31 { self.max } else { grown };
        grown.min(self.max)
    }

    /// The delay before retry number `retry`, given a uniform random sample in `[0, 1)`.
    ///
    /// Full jitter draws from `[0, ceiling]`, which spreads a herd of failures over the whole
    /// window; equal jitter keeps at least half the ceiling; none always waits the ceiling.
    pub fn delay(&self, retry: u32, unit_sample: f64) -> Duration {
        let ceiling = self.ceiling(retry);
        let sample = unit_sample.clamp(0.0, 1.0);
        match self.jitter {
            Jitter::None => ceiling,
            Jitter::Full => ceiling.mul_f64(sample),
            Jitter::Equal => ceiling / 2 + (ceiling / 2).mul_f64(sample),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Jitter {
    Full,
    Equal,
    None,
}

impl PipelineSpec {
    pub fn resource(&self, name: &str) -> Option<&ResourceSpec> {
        self.resources.iter().find(|resource| resource.name == name)
    }

    pub fn task(&self, name: &str) -> Option<&TaskSpec> {
        self.tasks.iter().find(|task| task.name == name)
    }

    pub fn pass(&self, name: &str) -> Option<&PassSpec> {
        self.passes.iter().find(|pass| pass.name == name)
    }

    /// A stable fingerprint of the normalised spec: the pipeline version recorded on every run.
    /// It is FNV-1a over the canonical JSON form, so formatting and comments do not change it.
    pub fn version(&self) -> String {
        let canonical = serde_json::to_vec(self).expect("a spec always serialises");
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in canonical {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        format!("{hash:016x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A pipeline that sets no working directory or environment keeps the version it had before
    /// tasks had a context, so upgrading Keel does not make every unfinished run look changed.
    #[test]
    fn a_task_without_context_serialises_as_before() {
        let task = TaskSpec {
            name: "a".into(),
            phase: "p".into(),
            command: vec!["true".into()],
            http: None,
            after: vec![],
            timeout: DEFAULT_TIMEOUT,
            retries: RetryPolicy::default(),
            heartbeat: None,
            deadline: DEFAULT_DEADLINE,
            uses: vec![],
            wait_for: None,
            also_wait_for: Vec::new(),
            when: None,
            edges: Default::default(),
            expand: None,
            context: TaskContext::default(),
            not_ready: None,
            secrets: Vec::new(),
            repeat: None,
            freeze_after: None,
            versioning: Default::default(),
            checks: Vec::new(),
        };
        let plain = serde_json::to_value(&task).unwrap();
        assert!(plain.get("context").is_none(), "{plain}");
        assert!(plain.get("not_ready").is_none(), "{plain}");
        let with_cwd = TaskSpec {
            context: TaskContext {
                cwd: Some("work".into()),
                ..TaskContext::default()
            },
            ..task
        };
        assert_eq!(
            serde_json::to_value(&with_cwd).unwrap()["context"]["cwd"],
            "work"
        );
    }

    /// Passes are left out of the version's input when there are none, so a pipeline without
    /// passes keeps the version it had before Keel had them.
    #[test]
    fn a_pipeline_without_passes_serialises_as_before() {
        let mut spec = PipelineSpec {
            name: "p".into(),
            timezone: "UTC".into(),
            partition: PartitionKind::Date,
            state: None,
            concurrency: DEFAULT_CONCURRENCY,
            phases: vec![],
            tasks: vec![],
            resources: vec![],
            schedule: None,
            max_active_partitions: None,
            passes: vec![],
            alerts: None,
            secrets: None,
            smoke: Vec::new(),
            slos: Vec::new(),
            heal_budget: crate::DEFAULT_HEAL_BUDGET,
        };
        assert!(serde_json::to_value(&spec).unwrap().get("passes").is_none());
        spec.passes.push(PassSpec {
            name: "late".into(),
            schedule: None,
            tasks: vec![],
            params: BTreeMap::new(),
            gates: BTreeMap::new(),
        });
        assert_eq!(
            serde_json::to_value(&spec).unwrap()["passes"][0]["name"],
            "late"
        );
    }

    proptest! {
        #[test]
        fn full_jitter_stays_within_the_ceiling(
            initial_ms in 1u64..10_000,
            max_ms in 1u64..600_000,
            retry in 1u32..64,
            sample in 0.0f64..1.0,
        ) {
            let policy = RetryPolicy {
                attempts: 10,
                initial: Duration::from_millis(initial_ms),
                max: Duration::from_millis(max_ms),
                jitter: Jitter::Full,
            };
            let ceiling = policy.ceiling(retry);
            let expected = Duration::from_millis(initial_ms)
                .saturating_mul(2u32.saturating_pow(retry - 1))
                .min(Duration::from_millis(max_ms));
            prop_assert_eq!(ceiling, expected);
            let delay = policy.delay(retry, sample);
            prop_assert!(delay <= ceiling);
        }

        #[test]
        fn equal_jitter_keeps_half(retry in 1u32..20, sample in 0.0f64..1.0) {
            let policy = RetryPolicy { jitter: Jitter::Equal, ..RetryPolicy::default() };
            let delay = policy.delay(retry, sample);
            prop_assert!(delay >= policy.ceiling(retry) / 2);
            prop_assert!(delay <= policy.ceiling(retry));
        }
    }
}
