//! Plain data shared by every Keel crate: the validated pipeline spec, the task DAG, ids, run
//! states, attempt outcomes, durations and the retry policy.
//!
//! This crate does no I/O and has no async code. Everything here is a value that can be built in a
//! test by hand; parsing `keel.toml` lives in `keel-config`, persistence in `keel-store`.

mod calendar;
mod checks;
mod dag;
mod duration;
pub mod expand;
mod flag;
mod http;
mod not_ready;
mod outcome;
mod quota;
mod repeat;
mod rollout;
pub mod schedule;
mod slo;
mod spec;
mod suggest;
pub mod template;
mod trace;

pub use calendar::{CalendarSpec, WEEKDAY_NAMES, parse_weekday, weekday_name};
pub use checks::{CheckFailure, CheckSpec, CheckTarget, PhaseCheck, Severity, failed_checks};
/// A day of the week, as `when.weekdays` names it.
pub use chrono::Weekday;
pub use dag::{Dag, NodeIndex, TaskIndex};
pub use duration::{DurationError, format_duration, parse_duration};
pub use expand::{ExpandSpec, Item, ItemCounts};
pub use flag::FlagState;
pub use http::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_PROBE_EVERY, DEFAULT_PROBE_TIMEOUT, HTTP_METHODS, HttpAuth,
    HttpBody, HttpSpec, ReadyProbe, STATUS_OUTCOMES, StatusMatch, status_outcome,
};
pub use not_ready::NotReadyPolicy;
pub use outcome::{EventKind, Outcome, RunState, TaskState, UnknownName};
pub use quota::QuotaWindow;
pub use repeat::{FreezeSpec, RepeatSpec, RepeatWindow, TimeOfDay};
pub use rollout::{RolloutDecision, RolloutSpec, TaskVersioning, VersionStatus, task_version_of};
pub use slo::{DEFAULT_SLO_PERIOD, SloKind, SloSpec};
pub use spec::{
    AlertsSpec, BackfillSpec, BreakerSpec, Catchup, DEFAULT_ALERT_TIMEOUT, DEFAULT_ALERTS_PER_HOUR,
    DEFAULT_BREAKER_OPEN_FOR, DEFAULT_CONCURRENCY, DEFAULT_DEADLINE, DEFAULT_DEGRADED_GRACE,
    DEFAULT_HEAL_BUDGET, DEFAULT_SECRET_COMMAND_TIMEOUT, DEFAULT_SECRET_TTL, DEFAULT_TIMEOUT,
    EarlierInput, GateSpec, GateTier, InheritEnv, Jitter, PartitionKind, PassSpec, PhaseSpec,
    PipelineSpec, QuotaPeriod, QuotaSpec, Rate, ResourceSpec, RetryBudgetSpec, RetryPolicy,
    ScheduleSpec, SecretProvider, SecretsSpec, SensorSpec, SmokeTest, TaskContext, TaskEdges,
    TaskSpec, TokenUse, WebhookUrl,
};
pub use suggest::closest;
pub use trace::{SpanId, TraceId};

/// Milliseconds since the Unix epoch, as every Keel clock reports time.
pub type Millis = i64;

/// The id of a run in the state store.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct RunId(pub i64);

impl std::fmt::Display for RunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The id of one attempt in the state store.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct AttemptId(pub i64);

impl std::fmt::Display for AttemptId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}
