//! The store the CLI opens: SQLite or PostgreSQL, chosen by where the state is.

use std::fmt;
use std::path::{Path, PathBuf};

use keel_model::{AttemptId, EventKind, Millis, RunId, RunState};

use crate::*;

/// Where a pipeline's state lives: an SQLite file, or a PostgreSQL database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateLocation {
    Sqlite(PathBuf),
    Postgres(PostgresUrl),
}

impl StateLocation {
    /// `postgres://…` and `postgresql://…` are PostgreSQL; anything else is the path of an
    /// SQLite file, taken as it is (the caller resolves `sqlite:` prefixes and relative paths).
    pub fn of(text: &str) -> StateLocation {
        match PostgresUrl::parse(text) {
            Some(url) => StateLocation::Postgres(url),
            None => StateLocation::Sqlite(PathBuf::from(text)),
        }
    }

    /// The SQLite file, if the state is one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            StateLocation::Sqlite(path) => Some(path),
            StateLocation::Postgres(_) => None,
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, StateLocation::Postgres(_))
    }

    /// The error for something that only an SQLite state has (`what`), with what to do instead.
    pub fn not_applicable(&self, what: &str, hint: &str) -> StoreError {
        StoreError::NotApplicable {
            location: self.to_string(),
            what: what.to_string(),
            hint: hint.to_string(),
        }
    }
}

/// The file's path, or the URL with its password hidden.
impl fmt::Display for StateLocation {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StateLocation::Sqlite(path) => write!(formatter, "{}", path.display()),
            StateLocation::Postgres(url) => write!(formatter, "{url}"),
        }
    }
}

/// A store of either backend, behind one type: every [`Store`] method and the inherent methods
/// the CLI uses are passed to the backend the location chose.
#[derive(Clone)]
pub enum AnyStore {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
}

macro_rules! delegate {
    ($self:expr, $store:ident => $call:expr) => {
        match $self {
            AnyStore::Sqlite($store) => $call,
            AnyStore::Postgres($store) => $call,
        }
    };
}

impl From<SqliteStore> for AnyStore {
    fn from(store: SqliteStore) -> Self {
        AnyStore::Sqlite(store)
    }
}

impl From<PostgresStore> for AnyStore {
    fn from(store: PostgresStore) -> Self {
        AnyStore::Postgres(store)
    }
}

impl AnyStore {
    /// Opens (creating and migrating if needed) the state at `location`.
    pub fn open(location: &StateLocation) -> StoreResult<AnyStore> {
        Ok(match location {
            StateLocation::Sqlite(path) => AnyStore::Sqlite(SqliteStore::open(path)?),
            StateLocation::Postgres(url) => AnyStore::Postgres(PostgresStore::open(url)?),
        })
    }

    /// Opens an existing state only to read it; `None` when it is not a whole state of this
    /// Keel's schema yet (see [`SqliteStore::open_read_only`]; a PostgreSQL database without
    /// Keel's tables, or of an older schema, is left as it is).
    pub fn open_read_only(location: &StateLocation) -> StoreResult<Option<AnyStore>> {
        Ok(match location {
            StateLocation::Sqlite(path) => SqliteStore::open_read_only(path)?.map(AnyStore::Sqlite),
            StateLocation::Postgres(url) => {
                PostgresStore::open_existing(url, PostgresConfig::default())?
                    .map(AnyStore::Postgres)
            }
        })
    }

    /// The same store, for use on a thread with a runtime of its own: a PostgreSQL store gets
    /// a pool of its own there (see [`PostgresStore::with_own_pool`]); an SQLite store, whose
    /// calls run on the blocking pool of whichever runtime makes them, is shared as it is.
    pub fn for_another_runtime(&self) -> AnyStore {
        match self {
            AnyStore::Sqlite(store) => AnyStore::Sqlite(store.clone()),
            AnyStore::Postgres(store) => AnyStore::Postgres(store.with_own_pool()),
        }
    }

    /// Where the state is.
    pub fn location(&self) -> StateLocation {
        match self {
            AnyStore::Sqlite(store) => StateLocation::Sqlite(store.path().to_path_buf()),
            AnyStore::Postgres(store) => StateLocation::Postgres(store.url().clone()),
        }
    }

    /// The SQLite file, if the state is one.
    pub fn path(&self) -> Option<&Path> {
        match self {
            AnyStore::Sqlite(store) => Some(store.path()),
            AnyStore::Postgres(_) => None,
        }
    }

    /// See [`SqliteStore::runs_to_prune`].
    pub async fn runs_to_prune(
        &self,
        pipeline: &str,
        before: Millis,
    ) -> StoreResult<Vec<RunRecord>> {
        delegate!(self, store => store.runs_to_prune(pipeline, before).await)
    }

    /// See [`SqliteStore::add_quota_use`].
    pub async fn add_quota_use(
        &self,
        pipeline: &str,
        resource: &str,
        period: &str,
        count: u32,
        at: Millis,
    ) -> StoreResult<u32> {
        delegate!(self, store => store.add_quota_use(pipeline, resource, period, count, at).await)
    }

    /// See [`SqliteStore::quota_uses`].
    pub async fn quota_uses(&self, pipeline: &str) -> StoreResult<Vec<(String, String, u32)>> {
        delegate!(self, store => store.quota_uses(pipeline).await)
    }

    /// See [`SqliteStore::pipelines`].
    pub async fn pipelines(&self) -> StoreResult<Vec<String>> {
        delegate!(self, store => store.pipelines().await)
    }
}

impl Store for AnyStore {
    fn store_id(&self) -> &str {
        delegate!(self, store => store.store_id())
    }

    async fn create_run(&self, new_run: NewRun) -> StoreResult<RunRecord> {
        delegate!(self, store => store.create_run(new_run).await)
    }

    async fn create_run_for_fire(
        &self,
        new_run: NewRun,
        fire: ScheduleFire,
        gates: Vec<Change>,
    ) -> StoreResult<FireOutcome> {
        delegate!(self, store => store.create_run_for_fire(new_run, fire, gates).await)
    }

    async fn last_fire(&self, pipeline: &str, trigger: &str) -> StoreResult<Option<Millis>> {
        delegate!(self, store => store.last_fire(pipeline, trigger).await)
    }

    async fn run(&self, run: RunId) -> StoreResult<RunRecord> {
        delegate!(self, store => store.run(run).await)
    }

    async fn latest_run_of(
        &self,
        pipeline: &str,
        partition: &str,
        pass: Option<&str>,
    ) -> StoreResult<Option<RunRecord>> {
        delegate!(self, store => store.latest_run_of(pipeline, partition, pass).await)
    }

    async fn list_runs(
        &self,
        pipeline: &str,
        partition: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<RunRecord>> {
        delegate!(self, store => store.list_runs(pipeline, partition, limit).await)
    }

    async fn status_view(&self, query: &StatusQuery) -> StoreResult<StatusView> {
        delegate!(self, store => store.status_view(query).await)
    }

    async fn unfinished_runs(&self, pipeline: &str) -> StoreResult<Vec<RunRecord>> {
        delegate!(self, store => store.unfinished_runs(pipeline).await)
    }

    async fn task_runs(&self, run: RunId) -> StoreResult<Vec<TaskRunRecord>> {
        delegate!(self, store => store.task_runs(run).await)
    }

    async fn attempts(&self, run: RunId) -> StoreResult<Vec<AttemptRecord>> {
        delegate!(self, store => store.attempts(run).await)
    }

    async fn live_attempts(&self, pipeline: &str) -> StoreResult<Vec<AttemptRecord>> {
        delegate!(self, store => store.live_attempts(pipeline).await)
    }

    async fn events(&self, run: RunId) -> StoreResult<Vec<EventRecord>> {
        delegate!(self, store => store.events(run).await)
    }

    async fn events_after(&self, after: i64, limit: u32) -> StoreResult<Vec<EventRecord>> {
        delegate!(self, store => store.events_after(after, limit).await)
    }

    async fn recent_events(
        &self,
        pipeline: &str,
        kinds: Vec<EventKind>,
        limit: u32,
    ) -> StoreResult<Vec<EventRecord>> {
        delegate!(self, store => store.recent_events(pipeline, kinds, limit).await)
    }

    async fn renew_leases(
        &self,
        renewals: Vec<(AttemptId, i64)>,
        expires_at: Millis,
    ) -> StoreResult<Vec<StoreResult<()>>> {
        delegate!(self, store => store.renew_leases(renewals, expires_at).await)
    }

    async fn expired_leases(&self, pipeline: &str, now: Millis) -> StoreResult<Vec<AttemptRecord>> {
        delegate!(self, store => store.expired_leases(pipeline, now).await)
    }

    async fn claim_attempts(
        &self,
        claims: Vec<ClaimAttempt>,
    ) -> StoreResult<Vec<StoreResult<AttemptRecord>>> {
        delegate!(self, store => store.claim_attempts(claims).await)
    }

    async fn mark_attempts_started(
        &self,
        started: Vec<(AttemptId, i64, Option<u32>)>,
        at: Millis,
    ) -> StoreResult<Vec<StoreResult<()>>> {
        delegate!(self, store => store.mark_attempts_started(started, at).await)
    }

    async fn take_over_attempt(
        &self,
        attempt: AttemptId,
        new_owner: &str,
        at: Millis,
    ) -> StoreResult<i64> {
        delegate!(self, store => store.take_over_attempt(attempt, new_owner, at).await)
    }

    async fn finish_attempts(
        &self,
        finishes: Vec<FinishAttempt>,
    ) -> StoreResult<Vec<StoreResult<()>>> {
        delegate!(self, store => store.finish_attempts(finishes).await)
    }

    async fn add_tasks(
        &self,
        run: RunId,
        tasks: Vec<(String, String)>,
        at: Millis,
    ) -> StoreResult<usize> {
        delegate!(self, store => store.add_tasks(run, tasks, at).await)
    }

    async fn update_tasks(
        &self,
        run: RunId,
        changes: Vec<TaskChange>,
        at: Millis,
    ) -> StoreResult<usize> {
        delegate!(self, store => store.update_tasks(run, changes, at).await)
    }

    async fn set_run_state(
        &self,
        run: RunId,
        state: RunState,
        message: Option<String>,
        at: Millis,
    ) -> StoreResult<()> {
        delegate!(self, store => store.set_run_state(run, state, message, at).await)
    }

    async fn request_cancel(&self, run: RunId, at: Millis) -> StoreResult<()> {
        delegate!(self, store => store.request_cancel(run, at).await)
    }

    async fn record_sensor_poll(&self, poll: SensorPoll) -> StoreResult<()> {
        delegate!(self, store => store.record_sensor_poll(poll).await)
    }

    async fn attempt_starts_since(
        &self,
        pipeline: &str,
        since: Millis,
    ) -> StoreResult<Vec<(String, Millis)>> {
        delegate!(self, store => store.attempt_starts_since(pipeline, since).await)
    }

    async fn set_resource_state(&self, resource: ResourceStateRecord) -> StoreResult<()> {
        delegate!(self, store => store.set_resource_state(resource).await)
    }

    async fn set_flag(&self, flag: FlagRecord) -> StoreResult<()> {
        delegate!(self, store => store.set_flag(flag).await)
    }

    async fn clear_flag(&self, pipeline: &str, task: &str) -> StoreResult<bool> {
        delegate!(self, store => store.clear_flag(pipeline, task).await)
    }

    async fn flags(&self, pipeline: &str) -> StoreResult<Vec<FlagRecord>> {
        delegate!(self, store => store.flags(pipeline).await)
    }

    async fn register_task_versions(
        &self,
        pipeline: &str,
        versions: Vec<NewTaskVersion>,
        at: Millis,
    ) -> StoreResult<Vec<TaskVersionRecord>> {
        delegate!(self, store => store.register_task_versions(pipeline, versions, at).await)
    }

    async fn task_versions(&self, pipeline: &str) -> StoreResult<Vec<TaskVersionRecord>> {
        delegate!(self, store => store.task_versions(pipeline).await)
    }

    async fn set_task_version_status(
        &self,
        pipeline: &str,
        task: &str,
        version: &str,
        status: keel_model::VersionStatus,
        reason: &str,
        at: Millis,
    ) -> StoreResult<()> {
        delegate!(self, store => {
            store
                .set_task_version_status(pipeline, task, version, status, reason, at)
                .await
        })
    }

    async fn resource_states(&self, pipeline: &str) -> StoreResult<Vec<ResourceStateRecord>> {
        delegate!(self, store => store.resource_states(pipeline).await)
    }

    async fn commit(&self, writes: Vec<Write>, at: Millis) -> StoreResult<()> {
        delegate!(self, store => store.commit(writes, at).await)
    }

    async fn apply(&self, run: RunId, changes: Vec<Change>, at: Millis) -> StoreResult<()> {
        delegate!(self, store => store.apply(run, changes, at).await)
    }

    async fn expansions(&self, run: RunId) -> StoreResult<Vec<ExpansionRecord>> {
        delegate!(self, store => store.expansions(run).await)
    }

    async fn gates(&self, run: RunId) -> StoreResult<Vec<GateRecord>> {
        delegate!(self, store => store.gates(run).await)
    }

    async fn append_event(&self, event: NewEvent) -> StoreResult<()> {
        delegate!(self, store => store.append_event(event).await)
    }
}
