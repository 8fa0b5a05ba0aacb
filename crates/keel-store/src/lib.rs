//! Keel's durable state: runs, task runs, attempts and the append-only event log.
//!
//! [`Store`] is the only way the engine and the CLI read or change state, and every method is one
//! transaction, so a crash leaves either the old state or the new one. Backends implement the
//! trait; [`conformance::run_all`] is the one behaviour suite every backend must pass.
//! [`SqliteStore`] is the embedded default, [`PostgresStore`] the backend for a state in
//! PostgreSQL, and [`AnyStore`] the one the CLI opens: either of them, chosen by the state's
//! location ([`StateLocation`]). Only this crate speaks SQL, and it makes no scheduling
//! decisions: which task runs next, and when, is the engine's business.

mod any;
pub mod conformance;
mod lock;
mod postgres;
mod records;
mod sqlite;

pub use any::{AnyStore, StateLocation};
pub use lock::{LockError, StateLock};
pub use postgres::{
    ClusterView, LeaseRenewal, LockHold, LockNow, PostgresConfig, PostgresLock, PostgresLockError,
    PostgresStore, PostgresUrl, WorkItem, WorkNotices, WorkQueue, WorkRow, WorkState, WorkerRecord,
    testing,
};
pub use records::*;
pub use sqlite::SqliteStore;

use std::future::Future;

use keel_model::{AttemptId, RunId, RunState};

/// Everything that can go wrong talking to the state store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "state store {path:?} is not a Keel state database ({detail}); point --state at another file or move this one away"
    )]
    Foreign { path: String, detail: String },
    #[error(
        "state store {path:?} is corrupt ({detail}); restore it from a backup or move it away to start afresh"
    )]
    Corrupt { path: String, detail: String },
    #[error(
        "state store {path:?} was written by a newer Keel (schema {found}, this Keel knows up to {known}); upgrade keel"
    )]
    TooNew {
        path: String,
        found: i64,
        known: i64,
    },
    #[error(
        "cannot open state store {path:?}: {detail}; check that the directory exists and is writable"
    )]
    Open { path: String, detail: String },
    #[error(
        "cannot reach the PostgreSQL state {location}: {detail}; check that the server is up and the URL names it, and set PGPASSWORD if it asks for a password"
    )]
    Unreachable { location: String, detail: String },
    #[error("the state {location} is in PostgreSQL, which {what} does not apply to; {hint}")]
    NotApplicable {
        location: String,
        what: String,
        hint: String,
    },
    #[error(
        "task {task:?} of run {run} already has a live attempt (id {attempt}); at most one may run per task and partition"
    )]
    AlreadyLive {
        run: RunId,
        task: String,
        attempt: AttemptId,
    },
    #[error("task {task:?} of run {run} cannot be claimed: it is {state}")]
    NotClaimable {
        run: RunId,
        task: String,
        state: String,
    },
    #[error("attempt {attempt} holds a stale lease (epoch {epoch}); its result is discarded")]
    StaleLease { attempt: AttemptId, epoch: i64 },
    #[error("no run {0} in the state store")]
    NoSuchRun(RunId),
    #[error("state store error: {0}")]
    Database(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        StoreError::Database(error.to_string())
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// The durable state behind the engine. Each method is atomic; each transition appends to the
/// event log in the same transaction.
///
/// Methods return `Send` futures so that a networked backend can be dropped in without any change
/// to the engine.
pub trait Store: Clone + Send + Sync + 'static {
    /// The store's identity: made once when the store is created, never changed, and different
    /// for every store, even two created in the same directory at the same moment. It is one
    /// path component (lowercase letters, digits and `-`), so attempt directories can live under
    /// it and never collide with another store's, whose run ids start at 1 just the same.
    fn store_id(&self) -> &str;
    /// Inserts a run and one task run per task, all in one transaction.
    fn create_run(&self, new_run: NewRun) -> impl Future<Output = StoreResult<RunRecord>> + Send;
    /// Records that a schedule fired, with the run it starts, in one transaction: a fire
    /// recorded before is not run again ([`FireOutcome::AlreadyFired`]); a partition with an
    /// unfinished run of the same pass (`new_run.pass`, `None` for the pipeline's own runs)
    /// joins it; otherwise `new_run` is created with `gates` applied.
    fn create_run_for_fire(
        &self,
        new_run: NewRun,
        fire: ScheduleFire,
        gates: Vec<Change>,
    ) -> impl Future<Output = StoreResult<FireOutcome>> + Send;
    /// When a schedule last fired, if ever.
    fn last_fire(
        &self,
        pipeline: &str,
        trigger: &str,
    ) -> impl Future<Output = StoreResult<Option<keel_model::Millis>>> + Send;
    fn run(&self, run: RunId) -> impl Future<Output = StoreResult<RunRecord>> + Send;
    /// The newest run of a partition that belongs to no pass (the pipeline's own runs), if any.
    fn latest_run(
        &self,
        pipeline: &str,
        partition: &str,
    ) -> impl Future<Output = StoreResult<Option<RunRecord>>> + Send {
        self.latest_run_of(pipeline, partition, None)
    }
    /// The newest run of a partition of one pass (`None`: of no pass), if any. Runs of a pass
    /// are kept apart from the pipeline's own and from other passes'.
    fn latest_run_of(
        &self,
        pipeline: &str,
        partition: &str,
        pass: Option<&str>,
    ) -> impl Future<Output = StoreResult<Option<RunRecord>>> + Send;
    /// The newest run of each partition (or of one partition) and pass, newest first, at most
    /// `limit`.
    fn list_runs(
        &self,
        pipeline: &str,
        partition: Option<&str>,
        limit: u32,
    ) -> impl Future<Output = StoreResult<Vec<RunRecord>>> + Send;
    /// What `keel status` and `keel history` show, in one read-only transaction: the runs the
    /// query selects, newest partition first and newest run first within one; see [`StatusView`].
    fn status_view(
        &self,
        query: &StatusQuery,
    ) -> impl Future<Output = StoreResult<StatusView>> + Send;
    fn unfinished_runs(
        &self,
        pipeline: &str,
    ) -> impl Future<Output = StoreResult<Vec<RunRecord>>> + Send;
    fn task_runs(&self, run: RunId)
    -> impl Future<Output = StoreResult<Vec<TaskRunRecord>>> + Send;
    fn attempts(&self, run: RunId) -> impl Future<Output = StoreResult<Vec<AttemptRecord>>> + Send;
    /// Attempts of this pipeline that have not finished, whoever holds their lease.
    fn live_attempts(
        &self,
        pipeline: &str,
    ) -> impl Future<Output = StoreResult<Vec<AttemptRecord>>> + Send;
    fn events(&self, run: RunId) -> impl Future<Output = StoreResult<Vec<EventRecord>>> + Send;

    /// The event log of every run, in order, after the entry numbered `after` (0 for the
    /// beginning), at most `limit` entries: a follower keeps the last `seq` it saw and asks again.
    fn events_after(
        &self,
        after: i64,
        limit: u32,
    ) -> impl Future<Output = StoreResult<Vec<EventRecord>>> + Send;
    /// The newest entries of the event log of `pipeline`'s runs whose kind is one of `kinds`,
    /// newest first, at most `limit`: what a page of recent transitions (a breaker's, say)
    /// shows without reading the whole log.
    fn recent_events(
        &self,
        pipeline: &str,
        kinds: Vec<keel_model::EventKind>,
        limit: u32,
    ) -> impl Future<Output = StoreResult<Vec<EventRecord>>> + Send;
    /// Extends the leases of live attempts to at least `expires_at`, each fenced by its epoch:
    /// a holder whose lease was taken over gets [`StoreError::StaleLease`] for that attempt.
    fn renew_leases(
        &self,
        renewals: Vec<(AttemptId, i64)>,
        expires_at: keel_model::Millis,
    ) -> impl Future<Output = StoreResult<Vec<StoreResult<()>>>> + Send;
    /// Live attempts of the pipeline whose lease expired before `now`: their holder stopped
    /// renewing, so another Keel may take them over.
    fn expired_leases(
        &self,
        pipeline: &str,
        now: keel_model::Millis,
    ) -> impl Future<Output = StoreResult<Vec<AttemptRecord>>> + Send;
    /// Moves pending or waiting task runs to running under new lease epochs and inserts their
    /// attempts, all in one transaction. Each claim fails on its own with
    /// [`StoreError::AlreadyLive`] if a live attempt exists for the same (pipeline, partition,
    /// task), in this run or another, or [`StoreError::NotClaimable`].
    fn claim_attempts(
        &self,
        claims: Vec<ClaimAttempt>,
    ) -> impl Future<Output = StoreResult<Vec<StoreResult<AttemptRecord>>>> + Send;
    /// Claims one attempt; see [`Store::claim_attempts`].
    fn claim_attempt(
        &self,
        claim: ClaimAttempt,
    ) -> impl Future<Output = StoreResult<AttemptRecord>> + Send {
        async move {
            self.claim_attempts(vec![claim])
                .await?
                .pop()
                .expect("one result per claim")
        }
    }
    /// Records that attempts' processes started: (attempt, epoch, supervisor pid if known).
    /// `started_at` is set either way; an unknown pid leaves a recorded one alone. Fenced by the
    /// epoch.
    fn mark_attempts_started(
        &self,
        started: Vec<(AttemptId, i64, Option<u32>)>,
        at: keel_model::Millis,
    ) -> impl Future<Output = StoreResult<Vec<StoreResult<()>>>> + Send;
    /// Records that one attempt's process started; see [`Store::mark_attempts_started`].
    fn mark_attempt_started(
        &self,
        attempt: AttemptId,
        epoch: i64,
        pid: Option<u32>,
        at: keel_model::Millis,
    ) -> impl Future<Output = StoreResult<()>> + Send {
        async move {
            self.mark_attempts_started(vec![(attempt, epoch, pid)], at)
                .await?
                .pop()
                .expect("one result")
        }
    }
    /// Takes over the lease of a live attempt whose owner died (adoption after a crash), bumping
    /// the epoch so that the old owner can never record a result. Returns the new epoch.
    fn take_over_attempt(
        &self,
        attempt: AttemptId,
        new_owner: &str,
        at: keel_model::Millis,
    ) -> impl Future<Output = StoreResult<i64>> + Send;
    /// Records how attempts ended and where their task runs go next, in one transaction. Fenced:
    /// a holder of a stale epoch gets [`StoreError::StaleLease`] for that attempt and nothing of
    /// it changes.
    fn finish_attempts(
        &self,
        finishes: Vec<FinishAttempt>,
    ) -> impl Future<Output = StoreResult<Vec<StoreResult<()>>>> + Send;
    /// Records how one attempt ended; see [`Store::finish_attempts`].
    fn finish_attempt(
        &self,
        finish: FinishAttempt,
    ) -> impl Future<Output = StoreResult<()>> + Send {
        async move {
            self.finish_attempts(vec![finish])
                .await?
                .pop()
                .expect("one result per finish")
        }
    }
    /// Adds pending task runs to an existing run, for tasks the pipeline file gained after the
    /// run was created: (task, phase). Tasks the run already has are left alone and not
    /// counted. Returns how many were added.
    fn add_tasks(
        &self,
        run: RunId,
        tasks: Vec<(String, String)>,
        at: keel_model::Millis,
    ) -> impl Future<Output = StoreResult<usize>> + Send;
    /// Changes task runs that are not running (upstream failures, skips, resets for a retry).
    /// Running task runs are left alone and not counted. Returns how many changed.
    fn update_tasks(
        &self,
        run: RunId,
        changes: Vec<TaskChange>,
        at: keel_model::Millis,
    ) -> impl Future<Output = StoreResult<usize>> + Send;
    fn set_run_state(
        &self,
        run: RunId,
        state: RunState,
        message: Option<String>,
        at: keel_model::Millis,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// Asks whoever executes the run to cancel it.
    fn request_cancel(
        &self,
        run: RunId,
        at: keel_model::Millis,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// Records one poll of a task's sensor (`wait_for`): the task becomes pending when the sensor
    /// is ready, and otherwise waits until `not_before`. The first poll marks when the task's
    /// deadline started. Running task runs are left alone.
    fn record_sensor_poll(&self, poll: SensorPoll) -> impl Future<Output = StoreResult<()>> + Send;
    /// (task, claimed_at) of every attempt of the pipeline claimed at or after `since`, oldest
    /// first: what rate limits must remember across a restart.
    fn attempt_starts_since(
        &self,
        pipeline: &str,
        since: keel_model::Millis,
    ) -> impl Future<Output = StoreResult<Vec<(String, keel_model::Millis)>>> + Send;
    /// Records the state of a resource's circuit breaker (`closed`, `open`, `half_open`).
    fn set_resource_state(
        &self,
        resource: ResourceStateRecord,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// Sets a task's feature flag, replacing the one it had.
    fn set_flag(&self, flag: FlagRecord) -> impl Future<Output = StoreResult<()>> + Send;
    /// Removes a task's feature flag; whether it had one.
    fn clear_flag(
        &self,
        pipeline: &str,
        task: &str,
    ) -> impl Future<Output = StoreResult<bool>> + Send;
    /// The feature flags of a pipeline, by task name.
    fn flags(&self, pipeline: &str) -> impl Future<Output = StoreResult<Vec<FlagRecord>>> + Send;
    /// The last recorded state of each resource of a pipeline.
    fn resource_states(
        &self,
        pipeline: &str,
    ) -> impl Future<Output = StoreResult<Vec<ResourceStateRecord>>> + Send;
    /// Commits `writes` in one transaction, in order: all of them or none. A [`Write::Finish`]
    /// under a stale lease epoch fails the whole commit with [`StoreError::StaleLease`] and
    /// nothing is written; the caller's view of that attempt is out of date.
    fn commit(
        &self,
        writes: Vec<Write>,
        at: keel_model::Millis,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// Applies `changes` to one run in one transaction: all of them or none.
    fn apply(
        &self,
        run: RunId,
        changes: Vec<Change>,
        at: keel_model::Millis,
    ) -> impl Future<Output = StoreResult<()>> + Send;
    /// The items of a run's expanded tasks, as recorded with [`Change::Expand`], by task name.
    fn expansions(
        &self,
        run: RunId,
    ) -> impl Future<Output = StoreResult<Vec<ExpansionRecord>>> + Send;
    /// The gates of a run, as last recorded with [`Change::Gate`].
    fn gates(&self, run: RunId) -> impl Future<Output = StoreResult<Vec<GateRecord>>> + Send;
    /// Appends a free-form event (for example why a task ran again).
    fn append_event(&self, event: NewEvent) -> impl Future<Output = StoreResult<()>> + Send;
    /// Registers the versions of a pipeline's tasks an engine runs, in one transaction, and
    /// returns every stored version of the pipeline's tasks. A version already stored keeps
    /// its status; a new one is a `canary` when its task has a rollout and a promoted version
    /// to run beside, and is otherwise `promoted` (the version promoted before is `retired`).
    /// A canary that a newer version replaces before it was promoted is `retired` too.
    fn register_task_versions(
        &self,
        pipeline: &str,
        versions: Vec<NewTaskVersion>,
        at: keel_model::Millis,
    ) -> impl Future<Output = StoreResult<Vec<TaskVersionRecord>>> + Send;
    /// Every stored version of a pipeline's tasks, by task, newest first.
    fn task_versions(
        &self,
        pipeline: &str,
    ) -> impl Future<Output = StoreResult<Vec<TaskVersionRecord>>> + Send;
    /// A decision taken by hand (`keel rollout promote|rollback`): `version` of `task` gets
    /// `status`. Promoting retires the version promoted before; rolling back a promoted version
    /// promotes again the one it replaced. The event goes on the pipeline's newest run, if any.
    fn set_task_version_status(
        &self,
        pipeline: &str,
        task: &str,
        version: &str,
        status: keel_model::VersionStatus,
        reason: &str,
        at: keel_model::Millis,
    ) -> impl Future<Output = StoreResult<()>> + Send;
}
