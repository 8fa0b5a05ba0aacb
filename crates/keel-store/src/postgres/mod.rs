//! The PostgreSQL backend: the same tables and the same semantics as the SQLite one, on a pool
//! of connections to a database of the user's (`state = "postgres://…"`).
//!
//! Every method is one transaction. A transaction that writes first takes one transaction-level
//! advisory lock, so writers are serialised exactly as SQLite's single writer serialises them:
//! a check and the write it guards (a live attempt, a lease epoch, a recorded schedule fire)
//! cannot interleave with another Keel's, and the event log's `seq` order is its commit order,
//! so a follower of `events_after` never skips an entry committed late. Reads run in a
//! read-only repeatable-read transaction, one snapshot, and wait for no writer.
//!
//! The connection URL's password never reaches an error or a log: see [`PostgresUrl`].

mod batch;
mod location;
mod lock;
mod schema;
mod work;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use keel_model::{AttemptId, EventKind, Millis, Outcome, RunId, RunState, TaskState};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{AssertSqlSafe, Connection, PgConnection, Postgres, Row, Transaction};

use crate::*;
pub use location::PostgresUrl;
pub use lock::{LockHold, LockNow, PostgresLock, PostgresLockError};
pub use work::{
    ClusterView, LeaseRenewal, WorkItem, WorkNotices, WorkQueue, WorkRow, WorkState, WorkerRecord,
};

/// The advisory lock every writing transaction takes ("KEEL" and 1).
const WRITE_LOCK: i64 = 0x4B45_454C_0000_0001;
/// The advisory lock the migration takes, so two Keels opening a new database migrate it once.
const MIGRATION_LOCK: i64 = 0x4B45_454C_0000_0002;
/// The `meta` key of the store's identity.
const STORE_ID_KEY: &str = "store_id";
/// How long connecting to the server may take before Keel gives up with an error.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a call waits for a free connection of the pool.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// How a [`PostgresStore`] uses the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PostgresConfig {
    /// Connections in the pool, at most. Writes are serialised anyway; more connections let
    /// reads (`keel status`, the API) proceed beside them.
    pub max_connections: u32,
}

impl Default for PostgresConfig {
    fn default() -> Self {
        PostgresConfig { max_connections: 4 }
    }
}

/// The PostgreSQL state store. Cloning shares the pool.
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    url: Arc<PostgresUrl>,
    store_id: Arc<str>,
    options: Arc<PgConnectOptions>,
    config: PostgresConfig,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("PostgresStore")
            .field("url", &self.url)
            .field("store_id", &self.store_id)
            .finish()
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        StoreError::Database(error.to_string())
    }
}

impl PostgresStore {
    /// Connects to the database at `url`, creating Keel's tables in it if it has none yet (a
    /// database that holds tables of the same names but not Keel's schema is refused and left
    /// alone), and returns a store on a pool of connections made as they are needed.
    ///
    /// It blocks while it connects and migrates (on a thread of its own, so it may be called
    /// from inside a runtime, as opening an SQLite file does); the pool's connections belong to
    /// the runtime that first uses them.
    pub fn open(url: &PostgresUrl) -> StoreResult<PostgresStore> {
        PostgresStore::open_with(url, PostgresConfig::default())
    }

    /// [`PostgresStore::open`] with a [`PostgresConfig`].
    pub fn open_with(url: &PostgresUrl, config: PostgresConfig) -> StoreResult<PostgresStore> {
        PostgresStore::connect(url, config, Migrate::Create)
            .map(|store| store.expect("a store is made when asked to create one"))
    }

    /// Opens the state at `url` only if it is a whole state of this Keel's schema, changing
    /// nothing in the database; `None` when it has no Keel tables yet or an older schema (only
    /// [`PostgresStore::open`] takes those up). For the commands that only read.
    pub fn open_existing(
        url: &PostgresUrl,
        config: PostgresConfig,
    ) -> StoreResult<Option<PostgresStore>> {
        PostgresStore::connect(url, config, Migrate::Never)
    }

    fn connect(
        url: &PostgresUrl,
        config: PostgresConfig,
        migrate: Migrate,
    ) -> StoreResult<Option<PostgresStore>> {
        let options = PgConnectOptions::from_str(url.secret_url())
            .map_err(|error| StoreError::Unreachable {
                location: url.to_string(),
                detail: url.scrub(&error.to_string()),
            })?
            .application_name("keel");
        let store_id = {
            let (url, options) = (url.clone(), options.clone());
            on_own_thread("keel-postgres-open", move || async move {
                prepare(&url, options, migrate).await
            })?
        };
        let Some(store_id) = store_id else {
            return Ok(None);
        };
        Ok(Some(PostgresStore {
            pool: new_pool(&options, config),
            url: Arc::new(url.clone()),
            store_id: store_id.into(),
            options: Arc::new(options),
            config,
        }))
    }

    /// The same store on a pool of its own, for a thread with a runtime of its own: a pool's
    /// connections are driven by the runtime that made them, so each runtime gets its pool.
    pub fn with_own_pool(&self) -> PostgresStore {
        PostgresStore {
            pool: new_pool(&self.options, self.config),
            ..self.clone()
        }
    }

    /// The state's URL, its password hidden when shown.
    pub fn url(&self) -> &PostgresUrl {
        &self.url
    }

    /// Closes the pool's connections; calls made afterwards fail.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    fn connection_error(&self, error: sqlx::Error) -> StoreError {
        StoreError::Unreachable {
            location: self.url.to_string(),
            detail: self.url.scrub(&error.to_string()),
        }
    }

    /// A transaction that writes: it holds the write lock until it commits or rolls back.
    async fn write(&self) -> StoreResult<Transaction<'static, Postgres>> {
        // One round trip: the lock is taken by the statement that begins the transaction.
        self.pool
            .begin_with(AssertSqlSafe(format!(
                "BEGIN; SELECT pg_advisory_xact_lock({WRITE_LOCK})"
            )))
            .await
            .map_err(|error| self.connection_error(error))
    }

    /// A transaction that only reads, from one snapshot.
    async fn read(&self) -> StoreResult<Transaction<'static, Postgres>> {
        self.pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await
            .map_err(|error| self.connection_error(error))
    }

    /// The finished runs of `pipeline` that finished before `before` and whose attempt
    /// directories `keel gc` has not removed since they last changed state, oldest first.
    pub async fn runs_to_prune(
        &self,
        pipeline: &str,
        before: Millis,
    ) -> StoreResult<Vec<RunRecord>> {
        let mut transaction = self.read().await?;
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM runs r WHERE pipeline = $1 AND finished_at < $2 \
             AND NOT EXISTS (SELECT 1 FROM events e WHERE e.run_id = r.id AND e.kind = $3 \
             AND e.seq > coalesce((SELECT max(seq) FROM events s WHERE s.run_id = r.id \
             AND s.kind = $4), 0)) ORDER BY id"
        )))
        .bind(pipeline)
        .bind(before)
        .bind(EventKind::Pruned.as_str())
        .bind(EventKind::RunState.as_str())
        .fetch_all(&mut *transaction)
        .await?;
        transaction.commit().await?;
        let runs = rows
            .iter()
            .map(run_from_row)
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(runs
            .into_iter()
            .filter(|run| run.state.is_finished())
            .collect())
    }

    /// Adds `count` requests to a resource's quota use in `period` and returns the period's
    /// new total.
    pub async fn add_quota_use(
        &self,
        pipeline: &str,
        resource: &str,
        period: &str,
        count: u32,
        at: Millis,
    ) -> StoreResult<u32> {
        let mut transaction = self.write().await?;
        let used: i64 = sqlx::query_scalar(
            "INSERT INTO quota_use (pipeline, resource, period, used, updated_at) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (pipeline, resource, period) DO UPDATE
                 SET used = quota_use.used + excluded.used, updated_at = excluded.updated_at
             RETURNING used",
        )
        .bind(pipeline)
        .bind(resource)
        .bind(period)
        .bind(i64::from(count))
        .bind(at)
        .fetch_one(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(u32::try_from(used).unwrap_or(u32::MAX))
    }

    /// The quota use of every resource of `pipeline` in its newest counted period:
    /// `(resource, period, used)`, by resource.
    pub async fn quota_uses(&self, pipeline: &str) -> StoreResult<Vec<(String, String, u32)>> {
        let mut transaction = self.read().await?;
        let rows = sqlx::query(
            "SELECT resource, period, used FROM quota_use AS outer_use WHERE pipeline = $1
               AND period = (SELECT MAX(period) FROM quota_use WHERE pipeline = $1 AND resource = outer_use.resource)
             ORDER BY resource",
        )
        .bind(pipeline)
        .fetch_all(&mut *transaction)
        .await?;
        transaction.commit().await?;
        rows.iter()
            .map(|row| {
                let used: i64 = get(row, 2)?;
                Ok((
                    get(row, 0)?,
                    get(row, 1)?,
                    u32::try_from(used).unwrap_or(u32::MAX),
                ))
            })
            .collect()
    }

    /// The names of the pipelines that have runs in this state, by name.
    pub async fn pipelines(&self) -> StoreResult<Vec<String>> {
        let mut transaction = self.read().await?;
        let names = sqlx::query_scalar("SELECT DISTINCT pipeline FROM runs ORDER BY pipeline")
            .fetch_all(&mut *transaction)
            .await?;
        transaction.commit().await?;
        Ok(names)
    }
}

/// A pool that makes its connections as they are needed. No idle timeout, no lifetime and no
/// minimum: the pool then starts no task of its own, so it can be made outside any runtime.
fn new_pool(options: &PgConnectOptions, config: PostgresConfig) -> PgPool {
    PgPoolOptions::new()
        .max_connections(config.max_connections.max(1))
        .min_connections(0)
        .idle_timeout(None)
        .max_lifetime(None)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_lazy_with(options.clone())
}

/// Whether opening a state may create and migrate its tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Migrate {
    Create,
    Never,
}

/// Connects once, migrates under the migration lock if allowed, and returns the store's
/// identity; `None` when the state is not whole and may not be migrated.
async fn prepare(
    url: &PostgresUrl,
    options: PgConnectOptions,
    migrate_mode: Migrate,
) -> StoreResult<Option<String>> {
    let unreachable = |detail: String| StoreError::Unreachable {
        location: url.to_string(),
        detail: url.scrub(&detail),
    };
    let mut connection =
        tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options))
            .await
            .map_err(|_| unreachable(format!("no answer within {} s", CONNECT_TIMEOUT.as_secs())))?
            .map_err(|error| unreachable(error.to_string()))?;
    let store_id = migrate(&mut connection, url, migrate_mode).await;
    let _ = connection.close().await;
    store_id
}

async fn migrate(
    connection: &mut PgConnection,
    url: &PostgresUrl,
    mode: Migrate,
) -> StoreResult<Option<String>> {
    let fail = |error: sqlx::Error| StoreError::Open {
        path: url.to_string(),
        detail: url.scrub(&error.to_string()),
    };
    let mut transaction = connection.begin().await.map_err(fail)?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *transaction)
        .await
        .map_err(fail)?;
    let has_schema: bool = sqlx::query_scalar("SELECT to_regclass('keel_schema') IS NOT NULL")
        .fetch_one(&mut *transaction)
        .await
        .map_err(fail)?;
    let current: i64 = if has_schema {
        sqlx::query_scalar("SELECT version FROM keel_schema")
            .fetch_optional(&mut *transaction)
            .await
            .map_err(fail)?
            .unwrap_or(0)
    } else {
        let names: Vec<String> = schema::KEEL_TABLES.iter().map(|t| t.to_string()).collect();
        let found: Vec<String> = sqlx::query_scalar(
            "SELECT name FROM unnest($1::text[]) AS t(name) WHERE to_regclass(name) IS NOT NULL ORDER BY name",
        )
        .bind(names)
        .fetch_all(&mut *transaction)
        .await
        .map_err(fail)?;
        if !found.is_empty() {
            return Err(StoreError::Foreign {
                path: url.to_string(),
                detail: format!(
                    "it has tables named like Keel's ({}) but no keel_schema table; give Keel a database of its own",
                    found.join(", ")
                ),
            });
        }
        if mode == Migrate::Never {
            return Ok(None);
        }
        sqlx::raw_sql(
            "CREATE TABLE keel_schema (version BIGINT NOT NULL); INSERT INTO keel_schema VALUES (0);",
        )
        .execute(&mut *transaction)
        .await
        .map_err(fail)?;
        0
    };
    let known = schema::MIGRATIONS.len() as i64;
    if current > known {
        return Err(StoreError::TooNew {
            path: url.to_string(),
            found: current,
            known,
        });
    }
    if current < known && mode == Migrate::Never {
        return Ok(None);
    }
    for migration in schema::MIGRATIONS.iter().skip(current.max(0) as usize) {
        sqlx::raw_sql(*migration)
            .execute(&mut *transaction)
            .await
            .map_err(fail)?;
    }
    if current < known {
        sqlx::query("UPDATE keel_schema SET version = $1")
            .bind(known)
            .execute(&mut *transaction)
            .await
            .map_err(fail)?;
        let store_id = crate::sqlite::new_store_id().map_err(|error| StoreError::Open {
            path: url.to_string(),
            detail: format!("cannot read /dev/urandom for the store's identity: {error}"),
        })?;
        sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
            .bind(STORE_ID_KEY)
            .bind(store_id)
            .execute(&mut *transaction)
            .await
            .map_err(fail)?;
    }
    let store_id: Option<String> = sqlx::query_scalar("SELECT value FROM meta WHERE key = $1")
        .bind(STORE_ID_KEY)
        .fetch_optional(&mut *transaction)
        .await
        .map_err(fail)?;
    transaction.commit().await.map_err(fail)?;
    store_id.map(Some).ok_or_else(|| StoreError::Corrupt {
        path: url.to_string(),
        detail: format!("its meta table has no {STORE_ID_KEY:?}"),
    })
}

fn get<'r, T>(row: &'r PgRow, index: usize) -> StoreResult<T>
where
    T: sqlx::Decode<'r, Postgres> + sqlx::Type<Postgres>,
{
    row.try_get(index)
        .map_err(|error| StoreError::Database(format!("column {index}: {error}")))
}

fn get_count(row: &PgRow, index: usize) -> StoreResult<u32> {
    let value: i64 = get(row, index)?;
    u32::try_from(value)
        .map_err(|_| StoreError::Database(format!("column {index} holds {value}, not a count")))
}

fn get_parsed<T: FromStr>(row: &PgRow, index: usize) -> StoreResult<T>
where
    T::Err: std::fmt::Display,
{
    let text: String = get(row, index)?;
    text.parse::<T>()
        .map_err(|error| StoreError::Database(format!("column {index}: {error}")))
}

fn get_parsed_optional<T: FromStr>(row: &PgRow, index: usize) -> StoreResult<Option<T>>
where
    T::Err: std::fmt::Display,
{
    let text: Option<String> = get(row, index)?;
    text.map(|text| {
        text.parse::<T>()
            .map_err(|error| StoreError::Database(format!("column {index}: {error}")))
    })
    .transpose()
}

const RUN_COLUMNS: &str = "id, pipeline, partition, version, state, trace_id, created_at, finished_at, cancel_requested, message, pass";

fn run_from_row(row: &PgRow) -> StoreResult<RunRecord> {
    Ok(RunRecord {
        id: RunId(get(row, 0)?),
        pipeline: get(row, 1)?,
        partition: get(row, 2)?,
        version: get(row, 3)?,
        state: get_parsed(row, 4)?,
        trace_id: get(row, 5)?,
        created_at: get(row, 6)?,
        finished_at: get(row, 7)?,
        cancel_requested: get(row, 8)?,
        message: get(row, 9)?,
        pass: get(row, 10)?,
    })
}

const TASK_COLUMNS: &str = "run_id, task, phase, state, outcome, attempts, charged, lease_epoch, not_before, first_started_at, message, rerun_pending, sensor_polls, sensor_errors";

fn task_from_row(row: &PgRow) -> StoreResult<TaskRunRecord> {
    Ok(TaskRunRecord {
        run: RunId(get(row, 0)?),
        task: get(row, 1)?,
        phase: get(row, 2)?,
        state: get_parsed(row, 3)?,
        outcome: get_parsed_optional(row, 4)?,
        attempts: get_count(row, 5)?,
        charged: get_count(row, 6)?,
        lease_epoch: get(row, 7)?,
        not_before: get(row, 8)?,
        first_started_at: get(row, 9)?,
        message: get(row, 10)?,
        rerun_pending: get(row, 11)?,
        sensor_polls: get_count(row, 12)?,
        sensor_errors: get_count(row, 13)?,
    })
}

const ATTEMPT_COLUMNS: &str = "id, run_id, pipeline, partition, task, number, lease_owner, lease_epoch, not_before, claimed_at, started_at, finished_at, outcome, exit_code, rows, metrics, message, pid, dir, version, task_version";

fn attempt_from_row(row: &PgRow) -> StoreResult<AttemptRecord> {
    let pid: Option<i64> = get(row, 17)?;
    Ok(AttemptRecord {
        id: AttemptId(get(row, 0)?),
        run: RunId(get(row, 1)?),
        pipeline: get(row, 2)?,
        partition: get(row, 3)?,
        task: get(row, 4)?,
        number: get_count(row, 5)?,
        lease_owner: get(row, 6)?,
        lease_epoch: get(row, 7)?,
        not_before: get(row, 8)?,
        claimed_at: get(row, 9)?,
        started_at: get(row, 10)?,
        finished_at: get(row, 11)?,
        outcome: get_parsed_optional(row, 12)?,
        exit_code: get(row, 13)?,
        rows: get(row, 14)?,
        metrics: get(row, 15)?,
        message: get(row, 16)?,
        pid: pid.and_then(|pid| u32::try_from(pid).ok()),
        dir: get(row, 18)?,
        version: get(row, 19)?,
        task_version: get(row, 20)?,
    })
}

const EVENT_COLUMNS: &str = "seq, at, run_id, task, attempt_id, kind, detail";

fn event_from_row(row: &PgRow) -> StoreResult<EventRecord> {
    Ok(EventRecord {
        seq: get(row, 0)?,
        at: get(row, 1)?,
        run: RunId(get(row, 2)?),
        task: get(row, 3)?,
        attempt: get::<Option<i64>>(row, 4)?.map(AttemptId),
        kind: get_parsed(row, 5)?,
        detail: get(row, 6)?,
    })
}

fn all<T>(rows: Vec<PgRow>, read: impl Fn(&PgRow) -> StoreResult<T>) -> StoreResult<Vec<T>> {
    rows.iter().map(read).collect()
}

async fn event(
    connection: &mut PgConnection,
    at: Millis,
    run: RunId,
    task: Option<&str>,
    attempt: Option<AttemptId>,
    kind: EventKind,
    detail: &str,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO events (at, run_id, task, attempt_id, kind, detail) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(at)
    .bind(run.0)
    .bind(task)
    .bind(attempt.map(|id| id.0))
    .bind(kind.as_str())
    .bind(detail)
    .execute(&mut *connection)
    .await?;
    Ok(())
}

/// Inserts a run and one task run per task, and its `run_created` event.
async fn insert_run(connection: &mut PgConnection, new_run: &NewRun) -> StoreResult<RunRecord> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO runs (pipeline, partition, version, state, trace_id, created_at, pass) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
    )
    .bind(&new_run.pipeline)
    .bind(&new_run.partition)
    .bind(&new_run.version)
    .bind(RunState::Running.as_str())
    .bind(&new_run.trace_id)
    .bind(new_run.at)
    .bind(&new_run.pass)
    .fetch_one(&mut *connection)
    .await?;
    let run = RunId(id);
    // One statement for every task, whatever their number: arrays unnested into rows.
    let mut names = Vec::with_capacity(new_run.tasks.len());
    let mut phases = Vec::with_capacity(new_run.tasks.len());
    let mut states = Vec::with_capacity(new_run.tasks.len());
    let mut outcomes: Vec<Option<String>> = Vec::with_capacity(new_run.tasks.len());
    for (task, phase, settled) in &new_run.tasks {
        names.push(task.clone());
        phases.push(phase.clone());
        states.push(
            if settled.is_some() {
                TaskState::Done
            } else {
                TaskState::Pending
            }
            .as_str()
            .to_string(),
        );
        outcomes.push(settled.map(|outcome| outcome.as_str().to_string()));
    }
    sqlx::query(
        "INSERT INTO task_runs (run_id, task, phase, position, state, outcome, updated_at)
         SELECT $1, task, phase, position - 1, state, outcome, $2
         FROM unnest($3::text[], $4::text[], $5::text[], $6::text[]) WITH ORDINALITY
             AS t(task, phase, state, outcome, position)",
    )
    .bind(run.0)
    .bind(new_run.at)
    .bind(names)
    .bind(phases)
    .bind(states)
    .bind(outcomes)
    .execute(&mut *connection)
    .await?;
    let mut detail = format!(
        "partition {} version {}",
        new_run.partition, new_run.version
    );
    if let Some(pass) = &new_run.pass {
        detail.push_str(&format!(" pass {pass}"));
    }
    event(
        connection,
        new_run.at,
        run,
        None,
        None,
        EventKind::RunCreated,
        &detail,
    )
    .await?;
    load_run(connection, run).await
}

async fn load_run(connection: &mut PgConnection, run: RunId) -> StoreResult<RunRecord> {
    let row = sqlx::query(AssertSqlSafe(format!(
        "SELECT {RUN_COLUMNS} FROM runs WHERE id = $1"
    )))
    .bind(run.0)
    .fetch_optional(&mut *connection)
    .await?
    .ok_or(StoreError::NoSuchRun(run))?;
    run_from_row(&row)
}

async fn load_attempt(
    connection: &mut PgConnection,
    attempt: AttemptId,
) -> StoreResult<AttemptRecord> {
    let row = sqlx::query(AssertSqlSafe(format!(
        "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE id = $1"
    )))
    .bind(attempt.0)
    .fetch_optional(&mut *connection)
    .await?
    .ok_or_else(|| StoreError::Database(format!("no attempt {attempt} in the state store")))?;
    attempt_from_row(&row)
}

/// Changes one task run that is not running; returns how many rows changed (0 or 1).
async fn change_task(
    connection: &mut PgConnection,
    run: RunId,
    change: &TaskChange,
    at: Millis,
) -> StoreResult<usize> {
    let count = sqlx::query(
        "UPDATE task_runs SET state = $1, outcome = $2, not_before = $3, message = $4, updated_at = $5,
             charged = CASE WHEN $6 THEN 0 ELSE charged END,
             first_started_at = CASE WHEN $6 THEN NULL WHEN $1 = 'waiting' THEN coalesce(first_started_at, $5) ELSE first_started_at END,
             sensor_polls = CASE WHEN $6 THEN 0 ELSE sensor_polls END,
             sensor_errors = CASE WHEN $6 THEN 0 ELSE sensor_errors END,
             rerun_pending = CASE WHEN $1 = 'pending' THEN FALSE ELSE rerun_pending END
         WHERE run_id = $7 AND task = $8 AND state <> 'running'",
    )
    .bind(change.state.as_str())
    .bind(change.outcome.map(Outcome::as_str))
    .bind(change.not_before)
    .bind(&change.message)
    .bind(at)
    .bind(change.reset_retry_budget)
    .bind(run.0)
    .bind(&change.task)
    .execute(&mut *connection)
    .await?
    .rows_affected() as usize;
    if count > 0 {
        let detail = match change.outcome {
            Some(outcome) => format!("{} ({outcome}): {}", change.state, change.reason),
            None => format!("{}: {}", change.state, change.reason),
        };
        event(
            connection,
            at,
            run,
            Some(&change.task),
            None,
            EventKind::TaskChanged,
            &detail,
        )
        .await?;
    }
    Ok(count)
}

async fn apply_one(
    connection: &mut PgConnection,
    run: RunId,
    change: Change,
    at: Millis,
) -> StoreResult<()> {
    match change {
        Change::Task(change) => {
            change_task(connection, run, &change, at).await?;
        }
        Change::MarkRerun { task, reason } => {
            let count = sqlx::query(
                "UPDATE task_runs SET rerun_pending = TRUE, updated_at = $1 WHERE run_id = $2 AND task = $3",
            )
            .bind(at)
            .bind(run.0)
            .bind(&task)
            .execute(&mut *connection)
            .await?
            .rows_affected();
            if count > 0 {
                event(
                    connection,
                    at,
                    run,
                    Some(&task),
                    None,
                    EventKind::RerunOwed,
                    &reason,
                )
                .await?;
            }
        }
        Change::Gate(gate) => {
            let (status, open_at) = match gate.status {
                GateState::Waiting => ("waiting", None),
                GateState::Sufficient { open_at } => ("sufficient", Some(open_at)),
                GateState::Open => ("open", None),
                GateState::Failed => ("failed", None),
            };
            sqlx::query(
                "INSERT INTO gates (run_id, phase, status, open_at, waived, updated_at) VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (run_id, phase) DO UPDATE SET status = excluded.status, open_at = excluded.open_at,
                     waived = excluded.waived, updated_at = excluded.updated_at",
            )
            .bind(run.0)
            .bind(&gate.phase)
            .bind(status)
            .bind(open_at)
            .bind(gate.waived.join("\n"))
            .bind(at)
            .execute(&mut *connection)
            .await?;
        }
        Change::Event { task, kind, detail } => {
            event(connection, at, run, task.as_deref(), None, kind, &detail).await?;
        }
        Change::Expand { task, items } => {
            let listed = serde_json::to_string(&items).map_err(|error| {
                StoreError::Database(format!("items of task {task:?}: {error}"))
            })?;
            let count = sqlx::query(
                "INSERT INTO expansions (run_id, task, items, item_count, created_at)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (run_id, task) DO NOTHING",
            )
            .bind(run.0)
            .bind(&task)
            .bind(listed)
            .bind(items.len() as i64)
            .bind(at)
            .execute(&mut *connection)
            .await?
            .rows_affected();
            if count > 0 {
                // Each item is a task run of its own, in the parent's phase, after the tasks
                // the run already has, in the upstream task's order: one statement for all.
                let names: Vec<String> = items
                    .iter()
                    .map(|item| keel_model::expand::item_task_name(&task, &item.key))
                    .collect();
                sqlx::query(
                    "INSERT INTO task_runs (run_id, task, phase, position, state, updated_at)
                     SELECT $1, item.name, parent.phase,
                            (SELECT coalesce(max(position) + 1, 0) FROM task_runs WHERE run_id = $1) + item.ordinal - 1,
                            $3, $4
                     FROM task_runs AS parent, unnest($2::text[]) WITH ORDINALITY AS item(name, ordinal)
                     WHERE parent.run_id = $1 AND parent.task = $5
                     ON CONFLICT (run_id, task) DO NOTHING",
                )
                .bind(run.0)
                .bind(names)
                .bind(TaskState::Pending.as_str())
                .bind(at)
                .bind(&task)
                .execute(&mut *connection)
                .await?;
                let detail = format!("{} items", items.len());
                event(
                    connection,
                    at,
                    run,
                    Some(&task),
                    None,
                    EventKind::Expanded,
                    &detail,
                )
                .await?;
            }
        }
    }
    Ok(())
}

async fn set_run_state_in(
    connection: &mut PgConnection,
    run: RunId,
    state: RunState,
    message: Option<String>,
    at: Millis,
) -> StoreResult<()> {
    let finished_at = state.is_finished().then_some(at);
    let changed = sqlx::query(
        "UPDATE runs SET state = $1, finished_at = $2, message = $3,
             cancel_requested = CASE WHEN $1 = 'running' THEN FALSE ELSE cancel_requested END
         WHERE id = $4",
    )
    .bind(state.as_str())
    .bind(finished_at)
    .bind(&message)
    .bind(run.0)
    .execute(&mut *connection)
    .await?
    .rows_affected();
    if changed == 0 {
        return Err(StoreError::NoSuchRun(run));
    }
    let detail = match &message {
        Some(message) => format!("{state}: {message}"),
        None => state.to_string(),
    };
    event(
        connection,
        at,
        run,
        None,
        None,
        EventKind::RunState,
        &detail,
    )
    .await
}

async fn record_sensor_poll_in(connection: &mut PgConnection, poll: SensorPoll) -> StoreResult<()> {
    let state = if poll.ready {
        TaskState::Pending
    } else {
        TaskState::Waiting
    };
    let changed = sqlx::query(
        "UPDATE task_runs SET state = $1, not_before = $2, message = $3, updated_at = $4,
             first_started_at = coalesce(first_started_at, $4), sensor_polls = sensor_polls + 1,
             sensor_errors = sensor_errors + $7
         WHERE run_id = $5 AND task = $6 AND state <> 'running'",
    )
    .bind(state.as_str())
    .bind(poll.not_before)
    .bind(&poll.message)
    .bind(poll.at)
    .bind(poll.run.0)
    .bind(&poll.task)
    .bind(i64::from(poll.error))
    .execute(&mut *connection)
    .await?
    .rows_affected();
    if changed > 0 {
        let detail = match (poll.ready, poll.not_before) {
            (true, _) => "ready".to_string(),
            (false, Some(next)) if poll.error => format!("sensor error; next poll at {next}"),
            (false, Some(next)) => format!("not ready; next poll at {next}"),
            (false, None) => "not ready".to_string(),
        };
        event(
            connection,
            poll.at,
            poll.run,
            Some(&poll.task),
            None,
            EventKind::SensorPolled,
            &detail,
        )
        .await?;
    }
    Ok(())
}

async fn set_resource_state_in(
    connection: &mut PgConnection,
    resource: ResourceStateRecord,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO resources (pipeline, name, state, detail, updated_at, open_since, open_until) VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (pipeline, name) DO UPDATE SET state = excluded.state, detail = excluded.detail, updated_at = excluded.updated_at,
             open_since = excluded.open_since, open_until = excluded.open_until",
    )
    .bind(&resource.pipeline)
    .bind(&resource.name)
    .bind(&resource.state)
    .bind(&resource.detail)
    .bind(resource.updated_at)
    .bind(resource.open_since)
    .bind(resource.open_until)
    .execute(&mut *connection)
    .await?;
    Ok(())
}

/// Writes the finishes gathered so far; the first refused (a stale lease) fails the commit.
async fn flush_finishes(
    connection: &mut PgConnection,
    finishes: &mut Vec<FinishAttempt>,
) -> StoreResult<()> {
    if finishes.is_empty() {
        return Ok(());
    }
    let results = batch::finish_attempts(connection, std::mem::take(finishes)).await?;
    results.into_iter().collect()
}

/// Writes the starts gathered so far; a start that no longer applies (the attempt ended, or
/// its lease was taken over) is ignored, as the write says.
async fn flush_starts(
    connection: &mut PgConnection,
    starts: &mut Vec<(AttemptId, i64, Option<u32>)>,
    at: Millis,
) -> StoreResult<()> {
    if starts.is_empty() {
        return Ok(());
    }
    batch::mark_attempts_started(connection, std::mem::take(starts), at).await?;
    Ok(())
}

async fn commit_one(connection: &mut PgConnection, write: Write, at: Millis) -> StoreResult<()> {
    match write {
        Write::Run { run, change } => apply_one(connection, run, change, at).await,
        Write::RunState {
            run,
            state,
            message,
        } => set_run_state_in(connection, run, state, message, at).await,
        Write::SensorPoll(poll) => record_sensor_poll_in(connection, poll).await,
        Write::Resource(resource) => set_resource_state_in(connection, resource).await,
        Write::Finish(finish) => {
            let mut finishes = vec![finish];
            flush_finishes(connection, &mut finishes).await
        }
        Write::Started {
            attempt,
            epoch,
            pid,
        } => {
            let mut starts = vec![(attempt, epoch, pid)];
            flush_starts(connection, &mut starts, at).await
        }
        Write::TaskVersion(change) => task_version_change_in(connection, change, at).await,
    }
}

const TASK_VERSION_COLUMNS: &str =
    "pipeline, task, version, spec, status, clean, failed, reason, created_at, updated_at";

fn task_version_from_row(row: &PgRow) -> StoreResult<TaskVersionRecord> {
    Ok(TaskVersionRecord {
        pipeline: get(row, 0)?,
        task: get(row, 1)?,
        version: get(row, 2)?,
        spec: get(row, 3)?,
        status: get_parsed(row, 4)?,
        clean: get_count(row, 5)?,
        failed: get_count(row, 6)?,
        reason: get(row, 7)?,
        created_at: get(row, 8)?,
        updated_at: get(row, 9)?,
    })
}

async fn task_versions_in(
    connection: &mut PgConnection,
    pipeline: &str,
) -> StoreResult<Vec<TaskVersionRecord>> {
    // `id` orders versions created in the same millisecond as SQLite's rowid does.
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT {TASK_VERSION_COLUMNS} FROM task_versions WHERE pipeline = $1 ORDER BY task, created_at DESC, id DESC"
    )))
    .bind(pipeline)
    .fetch_all(&mut *connection)
    .await?;
    all(rows, task_version_from_row)
}

async fn task_version_change_in(
    connection: &mut PgConnection,
    change: TaskVersionChange,
    at: Millis,
) -> StoreResult<()> {
    sqlx::query(
        "UPDATE task_versions SET status = $1, clean = $2, failed = $3, reason = coalesce($4, reason), updated_at = $5
         WHERE pipeline = $6 AND task = $7 AND version = $8",
    )
    .bind(change.status.as_str())
    .bind(i64::from(change.clean))
    .bind(i64::from(change.failed))
    .bind(&change.reason)
    .bind(at)
    .bind(&change.pipeline)
    .bind(&change.task)
    .bind(&change.version)
    .execute(&mut *connection)
    .await?;
    if change.status == keel_model::VersionStatus::Promoted {
        retire_other_promoted(
            connection,
            &change.pipeline,
            &change.task,
            &change.version,
            at,
        )
        .await?;
    }
    event(
        connection,
        at,
        change.run,
        Some(&change.task),
        change.attempt,
        change.event,
        &change.detail,
    )
    .await
}

/// Every other promoted version of the task is retired: one version is promoted at a time.
async fn retire_other_promoted(
    connection: &mut PgConnection,
    pipeline: &str,
    task: &str,
    version: &str,
    at: Millis,
) -> StoreResult<u64> {
    let retired = sqlx::query(
        "UPDATE task_versions SET status = 'retired', reason = 'replaced by version ' || $3, updated_at = $4
         WHERE pipeline = $1 AND task = $2 AND version <> $3 AND status = 'promoted'",
    )
    .bind(pipeline)
    .bind(task)
    .bind(version)
    .bind(at)
    .execute(&mut *connection)
    .await?
    .rows_affected();
    Ok(retired)
}

async fn task_version_status(
    connection: &mut PgConnection,
    pipeline: &str,
    task: &str,
    version: &str,
) -> StoreResult<Option<String>> {
    let status = sqlx::query_scalar(
        "SELECT status FROM task_versions WHERE pipeline = $1 AND task = $2 AND version = $3",
    )
    .bind(pipeline)
    .bind(task)
    .bind(version)
    .fetch_optional(&mut *connection)
    .await?;
    Ok(status)
}

async fn register_task_versions_in(
    connection: &mut PgConnection,
    pipeline: &str,
    versions: Vec<NewTaskVersion>,
    at: Millis,
) -> StoreResult<Vec<TaskVersionRecord>> {
    let Some(versions) = batch::register_task_versions(connection, pipeline, versions, at).await?
    else {
        return task_versions_in(connection, pipeline).await;
    };
    // One at a time: a version named again after it was retired, or a task named twice.
    for new in versions {
        let known = task_version_status(connection, pipeline, &new.task, &new.version).await?;
        match known.as_deref() {
            // A version promoted once and replaced since is what the file names again: going
            // back to it is a deployment of a version known to work, promoted at once.
            Some("retired") => {
                sqlx::query(
                    "UPDATE task_versions SET status = 'promoted', reason = 'the pipeline names it again', updated_at = $4
                     WHERE pipeline = $1 AND task = $2 AND version = $3",
                )
                .bind(pipeline)
                .bind(&new.task)
                .bind(&new.version)
                .bind(at)
                .execute(&mut *connection)
                .await?;
                retire_other_promoted(connection, pipeline, &new.task, &new.version, at).await?;
                continue;
            }
            Some(_) => continue,
            None => {}
        }
        let promoted: Option<String> = sqlx::query_scalar(
            "SELECT version FROM task_versions WHERE pipeline = $1 AND task = $2 AND status = 'promoted'",
        )
        .bind(pipeline)
        .bind(&new.task)
        .fetch_optional(&mut *connection)
        .await?;
        // A canary a newer version replaces never finished its rollout.
        sqlx::query(
            "UPDATE task_versions SET status = 'retired', reason = 'replaced by version ' || $3 || ' before it was promoted', updated_at = $4
             WHERE pipeline = $1 AND task = $2 AND status = 'canary'",
        )
        .bind(pipeline)
        .bind(&new.task)
        .bind(&new.version)
        .bind(at)
        .execute(&mut *connection)
        .await?;
        let (status, reason) = new_version_status(promoted.as_deref(), new.canary);
        sqlx::query(
            "INSERT INTO task_versions (pipeline, task, version, spec, status, clean, failed, reason, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, 0, 0, $6, $7, $7)",
        )
        .bind(pipeline)
        .bind(&new.task)
        .bind(&new.version)
        .bind(&new.spec)
        .bind(status)
        .bind(&reason)
        .bind(at)
        .execute(&mut *connection)
        .await?;
        if status == "promoted" {
            retire_other_promoted(connection, pipeline, &new.task, &new.version, at).await?;
        }
    }
    task_versions_in(connection, pipeline).await
}

/// The parameters of [`set_task_version_status_in`]: the version, its new status and why.
struct VersionStatusChange<'a> {
    pipeline: &'a str,
    task: &'a str,
    version: &'a str,
    status: keel_model::VersionStatus,
    reason: &'a str,
}

async fn set_task_version_status_in(
    connection: &mut PgConnection,
    change: VersionStatusChange<'_>,
    at: Millis,
) -> StoreResult<()> {
    let VersionStatusChange {
        pipeline,
        task,
        version,
        status,
        reason,
    } = change;
    let Some(before) = task_version_status(connection, pipeline, task, version).await? else {
        return Err(StoreError::Database(format!(
            "no version {version} of task {task:?} is recorded for pipeline {pipeline:?}"
        )));
    };
    sqlx::query(
        "UPDATE task_versions SET status = $1, reason = $2, updated_at = $3 WHERE pipeline = $4 AND task = $5 AND version = $6",
    )
    .bind(status.as_str())
    .bind(reason)
    .bind(at)
    .bind(pipeline)
    .bind(task)
    .bind(version)
    .execute(&mut *connection)
    .await?;
    match status {
        keel_model::VersionStatus::Promoted => {
            retire_other_promoted(connection, pipeline, task, version, at).await?;
        }
        keel_model::VersionStatus::RolledBack if before == "promoted" => {
            // The version it replaced runs again: the one retired last, and of those retired in
            // the same millisecond the one inserted last (`id`, as SQLite's rowid).
            sqlx::query(
                "UPDATE task_versions SET status = 'promoted', reason = 'promoted again: version ' || $3 || ' was rolled back', updated_at = $4
                 WHERE id = (SELECT id FROM task_versions WHERE pipeline = $1 AND task = $2 AND version <> $3 AND status = 'retired'
                             ORDER BY updated_at DESC, id DESC LIMIT 1)",
            )
            .bind(pipeline)
            .bind(task)
            .bind(version)
            .bind(at)
            .execute(&mut *connection)
            .await?;
        }
        _ => {}
    }
    let newest: Option<i64> = sqlx::query_scalar("SELECT max(id) FROM runs WHERE pipeline = $1")
        .bind(pipeline)
        .fetch_one(&mut *connection)
        .await?;
    if let Some(run) = newest {
        let kind = match status {
            keel_model::VersionStatus::Promoted => EventKind::RolloutPromoted,
            keel_model::VersionStatus::RolledBack => EventKind::RolloutRolledBack,
            keel_model::VersionStatus::Canary => EventKind::RolloutCanary,
            keel_model::VersionStatus::Retired => EventKind::RolloutPromoted,
        };
        event(
            connection,
            at,
            RunId(run),
            Some(task),
            None,
            kind,
            &format!("version {version} {status} by hand: {reason}"),
        )
        .await?;
    }
    Ok(())
}

/// The runs a status query selects: `r` is the runs table; the parameters are $1 pipeline, $2
/// and $3 the first and last partition, $4 a task the run must have, $5 one run id, $6 a pass.
const SELECTED_RUNS: &str = "r.pipeline = $1
     AND ($2::text IS NULL OR r.partition >= $2) AND ($3::text IS NULL OR r.partition <= $3)
     AND ($4::text IS NULL OR EXISTS (SELECT 1 FROM task_runs t WHERE t.run_id = r.id AND t.task = $4))
     AND ($5::bigint IS NULL OR r.id = $5)
     AND ($6::text IS NULL OR r.pass = $6)";

/// The newest selected run of each partition and pass.
fn newest_selected_runs() -> String {
    format!("SELECT max(r.id) FROM runs r WHERE {SELECTED_RUNS} GROUP BY r.partition, r.pass")
}

async fn status_view_in(
    connection: &mut PgConnection,
    query: StatusQuery,
) -> StoreResult<StatusView> {
    let (from, to) = query.partitions.clone().unzip();
    let run = query.run.map(|run| run.0);
    let selected = if query.every_run {
        format!("SELECT r.id FROM runs r WHERE {SELECTED_RUNS}")
    } else {
        newest_selected_runs()
    };
    // LIMIT NULL is no limit.
    let limit = query.limit.map(i64::from);
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT {RUN_COLUMNS} FROM runs WHERE id IN ({selected}) ORDER BY partition DESC, id DESC LIMIT $7"
    )))
    .bind(&query.pipeline)
    .bind(&from)
    .bind(&to)
    .bind(&query.task)
    .bind(run)
    .bind(&query.pass)
    .bind(limit)
    .fetch_all(&mut *connection)
    .await?;
    let records = all(rows, run_from_row)?;
    let total: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM ({selected}) AS selected"
    )))
    .bind(&query.pipeline)
    .bind(&from)
    .bind(&to)
    .bind(&query.task)
    .bind(run)
    .bind(&query.pass)
    .fetch_one(&mut *connection)
    .await?;
    // The summary counts one run per partition: the pipeline's own, or the pass's asked for.
    let newest_rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT partition, state FROM runs WHERE id IN ({}) AND pass IS NOT DISTINCT FROM $6 ORDER BY partition",
        newest_selected_runs()
    )))
    .bind(&query.pipeline)
    .bind(&from)
    .bind(&to)
    .bind(&query.task)
    .bind(run)
    .bind(&query.pass)
    .fetch_all(&mut *connection)
    .await?;
    let newest = newest_rows
        .iter()
        .map(|row| Ok((get::<String>(row, 0)?, get_parsed::<RunState>(row, 1)?)))
        .collect::<StoreResult<_>>()?;
    let omitted = (total.max(0) as u64).saturating_sub(records.len() as u64);
    let mut runs = Vec::with_capacity(records.len());
    for record in records {
        let mut tasks = task_runs_in(connection, record.id).await?;
        let mut attempts = attempts_in(connection, record.id).await?;
        if let Some(task) = &query.task {
            tasks.retain(|row| crate::records::is_row_of(&row.task, task));
            attempts.retain(|attempt| attempt.task == *task);
        }
        let shown: std::collections::HashSet<AttemptId> =
            attempts.iter().map(|attempt| attempt.id).collect();
        let kind_rows = sqlx::query("SELECT id, outcome, charged FROM attempts WHERE run_id = $1")
            .bind(record.id.0)
            .fetch_all(&mut *connection)
            .await?;
        let kinds = all(kind_rows, |row| {
            let outcome = get_parsed_optional::<Outcome>(row, 1)?;
            let charged: Option<bool> = get(row, 2)?;
            Ok((AttemptId(get(row, 0)?), AttemptKind::of(outcome, charged)))
        })?
        .into_iter()
        .filter(|(id, _)| shown.contains(id))
        .collect();
        let accepted: Option<String> = sqlx::query_scalar(
            "SELECT detail FROM events WHERE run_id = $1 AND kind = $2 AND seq > \
             coalesce((SELECT max(seq) FROM events WHERE run_id = $1 AND kind = $3), 0) \
             ORDER BY seq DESC LIMIT 1",
        )
        .bind(record.id.0)
        .bind(EventKind::Accepted.as_str())
        .bind(EventKind::RunState.as_str())
        .fetch_optional(&mut *connection)
        .await?;
        runs.push(RunView {
            record,
            tasks,
            attempts,
            kinds,
            accepted,
        });
    }
    let flags = flags_in(connection, &query.pipeline).await?;
    let rollouts = task_versions_in(connection, &query.pipeline)
        .await?
        .into_iter()
        .filter(|record| {
            matches!(
                record.status,
                keel_model::VersionStatus::Canary | keel_model::VersionStatus::RolledBack
            )
        })
        .collect();
    let resources = resource_states_in(connection, &query.pipeline).await?;
    Ok(StatusView {
        runs,
        resources,
        omitted,
        newest,
        flags,
        rollouts,
    })
}

async fn flags_in(connection: &mut PgConnection, pipeline: &str) -> StoreResult<Vec<FlagRecord>> {
    let rows = sqlx::query(
        "SELECT pipeline, task, state, set_at, set_by FROM flags WHERE pipeline = $1 ORDER BY task",
    )
    .bind(pipeline)
    .fetch_all(&mut *connection)
    .await?;
    all(rows, |row| {
        Ok(FlagRecord {
            pipeline: get(row, 0)?,
            task: get(row, 1)?,
            state: get(row, 2)?,
            set_at: get(row, 3)?,
            set_by: get(row, 4)?,
        })
    })
}

async fn task_runs_in(
    connection: &mut PgConnection,
    run: RunId,
) -> StoreResult<Vec<TaskRunRecord>> {
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT {TASK_COLUMNS} FROM task_runs WHERE run_id = $1 ORDER BY position"
    )))
    .bind(run.0)
    .fetch_all(&mut *connection)
    .await?;
    all(rows, task_from_row)
}

async fn attempts_in(connection: &mut PgConnection, run: RunId) -> StoreResult<Vec<AttemptRecord>> {
    let rows = sqlx::query(AssertSqlSafe(format!(
        "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE run_id = $1 ORDER BY id"
    )))
    .bind(run.0)
    .fetch_all(&mut *connection)
    .await?;
    all(rows, attempt_from_row)
}

async fn resource_states_in(
    connection: &mut PgConnection,
    pipeline: &str,
) -> StoreResult<Vec<ResourceStateRecord>> {
    let rows = sqlx::query(
        "SELECT pipeline, name, state, detail, updated_at, open_since, open_until FROM resources WHERE pipeline = $1 ORDER BY name",
    )
    .bind(pipeline)
    .fetch_all(&mut *connection)
    .await?;
    all(rows, |row| {
        Ok(ResourceStateRecord {
            pipeline: get(row, 0)?,
            name: get(row, 1)?,
            state: get(row, 2)?,
            detail: get(row, 3)?,
            updated_at: get(row, 4)?,
            open_since: get(row, 5)?,
            open_until: get(row, 6)?,
        })
    })
}

impl Store for PostgresStore {
    fn store_id(&self) -> &str {
        &self.store_id
    }

    async fn create_run(&self, new_run: NewRun) -> StoreResult<RunRecord> {
        let mut transaction = self.write().await?;
        let record = insert_run(&mut transaction, &new_run).await?;
        transaction.commit().await?;
        Ok(record)
    }

    async fn create_run_for_fire(
        &self,
        new_run: NewRun,
        fire: ScheduleFire,
        gates: Vec<Change>,
    ) -> StoreResult<FireOutcome> {
        let mut transaction = self.write().await?;
        let recorded: Option<i64> = sqlx::query_scalar(
            "SELECT run_id FROM schedule_fires WHERE pipeline = $1 AND trigger = $2 AND fire_at = $3",
        )
        .bind(&new_run.pipeline)
        .bind(&fire.trigger)
        .bind(fire.fire_at)
        .fetch_optional(&mut *transaction)
        .await?;
        if let Some(run) = recorded {
            transaction.commit().await?;
            return Ok(FireOutcome::AlreadyFired(RunId(run)));
        }
        let unfinished: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM runs WHERE pipeline = $1 AND partition = $2 AND pass IS NOT DISTINCT FROM $3
             AND finished_at IS NULL ORDER BY id DESC LIMIT 1",
        )
        .bind(&new_run.pipeline)
        .bind(&new_run.partition)
        .bind(&new_run.pass)
        .fetch_optional(&mut *transaction)
        .await?;
        let outcome = match unfinished {
            Some(run) => FireOutcome::Joined(RunId(run)),
            None => {
                let run = insert_run(&mut transaction, &new_run).await?.id;
                for change in gates {
                    apply_one(&mut transaction, run, change, new_run.at).await?;
                }
                FireOutcome::Created(run)
            }
        };
        let run = match outcome {
            FireOutcome::Created(run)
            | FireOutcome::Joined(run)
            | FireOutcome::AlreadyFired(run) => run,
        };
        sqlx::query(
            "INSERT INTO schedule_fires (pipeline, trigger, fire_at, partition, run_id) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&new_run.pipeline)
        .bind(&fire.trigger)
        .bind(fire.fire_at)
        .bind(&new_run.partition)
        .bind(run.0)
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(outcome)
    }

    async fn last_fire(&self, pipeline: &str, trigger: &str) -> StoreResult<Option<Millis>> {
        let mut transaction = self.read().await?;
        let last: Option<Millis> = sqlx::query_scalar(
            "SELECT MAX(fire_at) FROM schedule_fires WHERE pipeline = $1 AND trigger = $2",
        )
        .bind(pipeline)
        .bind(trigger)
        .fetch_one(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(last)
    }

    async fn run(&self, run: RunId) -> StoreResult<RunRecord> {
        let mut transaction = self.read().await?;
        let record = load_run(&mut transaction, run).await?;
        transaction.commit().await?;
        Ok(record)
    }

    async fn latest_run_of(
        &self,
        pipeline: &str,
        partition: &str,
        pass: Option<&str>,
    ) -> StoreResult<Option<RunRecord>> {
        let mut transaction = self.read().await?;
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE pipeline = $1 AND partition = $2 AND pass IS NOT DISTINCT FROM $3 ORDER BY id DESC LIMIT 1"
        )))
        .bind(pipeline)
        .bind(partition)
        .bind(pass)
        .fetch_optional(&mut *transaction)
        .await?;
        transaction.commit().await?;
        row.as_ref().map(run_from_row).transpose()
    }

    async fn list_runs(
        &self,
        pipeline: &str,
        partition: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<RunRecord>> {
        let mut transaction = self.read().await?;
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE id IN (
                 SELECT max(id) FROM runs WHERE pipeline = $1 AND ($2::text IS NULL OR partition = $2) GROUP BY partition, pass
             ) ORDER BY partition DESC, id DESC LIMIT $3"
        )))
        .bind(pipeline)
        .bind(partition)
        .bind(i64::from(limit))
        .fetch_all(&mut *transaction)
        .await?;
        transaction.commit().await?;
        all(rows, run_from_row)
    }

    async fn unfinished_runs(&self, pipeline: &str) -> StoreResult<Vec<RunRecord>> {
        let mut transaction = self.read().await?;
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE pipeline = $1 AND finished_at IS NULL ORDER BY id"
        )))
        .bind(pipeline)
        .fetch_all(&mut *transaction)
        .await?;
        transaction.commit().await?;
        all(rows, run_from_row)
    }

    async fn status_view(&self, query: &StatusQuery) -> StoreResult<StatusView> {
        let mut transaction = self.read().await?;
        let view = status_view_in(&mut transaction, query.clone()).await?;
        transaction.commit().await?;
        Ok(view)
    }

    async fn task_runs(&self, run: RunId) -> StoreResult<Vec<TaskRunRecord>> {
        let mut transaction = self.read().await?;
        let tasks = task_runs_in(&mut transaction, run).await?;
        transaction.commit().await?;
        Ok(tasks)
    }

    async fn attempts(&self, run: RunId) -> StoreResult<Vec<AttemptRecord>> {
        let mut transaction = self.read().await?;
        let attempts = attempts_in(&mut transaction, run).await?;
        transaction.commit().await?;
        Ok(attempts)
    }

    async fn live_attempts(&self, pipeline: &str) -> StoreResult<Vec<AttemptRecord>> {
        let mut transaction = self.read().await?;
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE pipeline = $1 AND finished_at IS NULL ORDER BY id"
        )))
        .bind(pipeline)
        .fetch_all(&mut *transaction)
        .await?;
        transaction.commit().await?;
        all(rows, attempt_from_row)
    }

    async fn events(&self, run: RunId) -> StoreResult<Vec<EventRecord>> {
        let mut transaction = self.read().await?;
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE run_id = $1 ORDER BY seq"
        )))
        .bind(run.0)
        .fetch_all(&mut *transaction)
        .await?;
        transaction.commit().await?;
        all(rows, event_from_row)
    }

    async fn events_after(&self, after: i64, limit: u32) -> StoreResult<Vec<EventRecord>> {
        let mut transaction = self.read().await?;
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE seq > $1 ORDER BY seq LIMIT $2"
        )))
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&mut *transaction)
        .await?;
        transaction.commit().await?;
        all(rows, event_from_row)
    }

    async fn recent_events(
        &self,
        pipeline: &str,
        kinds: Vec<EventKind>,
        limit: u32,
    ) -> StoreResult<Vec<EventRecord>> {
        let mut kinds: Vec<String> = kinds.iter().map(|kind| kind.to_string()).collect();
        kinds.sort_unstable();
        kinds.dedup();
        if kinds.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let mut transaction = self.read().await?;
        let rows = sqlx::query(
            "SELECT e.seq, e.at, e.run_id, e.task, e.attempt_id, e.kind, e.detail FROM events e
             JOIN runs r ON r.id = e.run_id
             WHERE e.kind = ANY($3) AND r.pipeline = $1 ORDER BY e.seq DESC LIMIT $2",
        )
        .bind(pipeline)
        .bind(i64::from(limit))
        .bind(kinds)
        .fetch_all(&mut *transaction)
        .await?;
        transaction.commit().await?;
        all(rows, event_from_row)
    }

    async fn renew_leases(
        &self,
        renewals: Vec<(AttemptId, i64)>,
        expires_at: Millis,
    ) -> StoreResult<Vec<StoreResult<()>>> {
        let mut transaction = self.write().await?;
        let mut results = Vec::with_capacity(renewals.len());
        for (attempt, epoch) in renewals {
            let changed = sqlx::query(
                "UPDATE attempts SET lease_expires_at = GREATEST(lease_expires_at, $1)
                 WHERE id = $2 AND lease_epoch = $3 AND finished_at IS NULL",
            )
            .bind(expires_at)
            .bind(attempt.0)
            .bind(epoch)
            .execute(&mut *transaction)
            .await?
            .rows_affected();
            results.push(if changed == 0 {
                Err(StoreError::StaleLease { attempt, epoch })
            } else {
                Ok(())
            });
        }
        transaction.commit().await?;
        Ok(results)
    }

    async fn expired_leases(&self, pipeline: &str, now: Millis) -> StoreResult<Vec<AttemptRecord>> {
        let mut transaction = self.read().await?;
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {ATTEMPT_COLUMNS} FROM attempts
             WHERE pipeline = $1 AND finished_at IS NULL AND lease_expires_at < $2 ORDER BY id"
        )))
        .bind(pipeline)
        .bind(now)
        .fetch_all(&mut *transaction)
        .await?;
        transaction.commit().await?;
        all(rows, attempt_from_row)
    }

    async fn claim_attempts(
        &self,
        claims: Vec<ClaimAttempt>,
    ) -> StoreResult<Vec<StoreResult<AttemptRecord>>> {
        let mut transaction = self.write().await?;
        let results = batch::claim_attempts(&mut transaction, claims).await?;
        transaction.commit().await?;
        Ok(results)
    }

    async fn mark_attempts_started(
        &self,
        started: Vec<(AttemptId, i64, Option<u32>)>,
        at: Millis,
    ) -> StoreResult<Vec<StoreResult<()>>> {
        let mut transaction = self.write().await?;
        let results = batch::mark_attempts_started(&mut transaction, started, at).await?;
        transaction.commit().await?;
        Ok(results)
    }

    async fn take_over_attempt(
        &self,
        attempt: AttemptId,
        new_owner: &str,
        at: Millis,
    ) -> StoreResult<i64> {
        let mut transaction = self.write().await?;
        let record = load_attempt(&mut transaction, attempt).await?;
        if record.finished_at.is_some() {
            return Err(StoreError::StaleLease {
                attempt,
                epoch: record.lease_epoch,
            });
        }
        let epoch: i64 = sqlx::query_scalar(
            "UPDATE task_runs SET lease_epoch = lease_epoch + 1, updated_at = $1 WHERE run_id = $2 AND task = $3
             RETURNING lease_epoch",
        )
        .bind(at)
        .bind(record.run.0)
        .bind(&record.task)
        .fetch_one(&mut *transaction)
        .await?;
        sqlx::query("UPDATE attempts SET lease_owner = $1, lease_epoch = $2 WHERE id = $3")
            .bind(new_owner)
            .bind(epoch)
            .bind(attempt.0)
            .execute(&mut *transaction)
            .await?;
        let detail = format!(
            "epoch {} → {epoch}, owner {} → {new_owner}",
            record.lease_epoch, record.lease_owner
        );
        event(
            &mut transaction,
            at,
            record.run,
            Some(&record.task),
            Some(attempt),
            EventKind::LeaseTakenOver,
            &detail,
        )
        .await?;
        transaction.commit().await?;
        Ok(epoch)
    }

    async fn finish_attempts(
        &self,
        finishes: Vec<FinishAttempt>,
    ) -> StoreResult<Vec<StoreResult<()>>> {
        let mut transaction = self.write().await?;
        let results = batch::finish_attempts(&mut transaction, finishes).await?;
        transaction.commit().await?;
        Ok(results)
    }

    async fn add_tasks(
        &self,
        run: RunId,
        tasks: Vec<(String, String)>,
        at: Millis,
    ) -> StoreResult<usize> {
        let mut transaction = self.write().await?;
        load_run(&mut transaction, run).await?;
        let mut added = 0;
        for (task, phase) in tasks {
            // After the tasks the run already has, in the order given.
            let count = sqlx::query(
                "INSERT INTO task_runs (run_id, task, phase, position, state, updated_at)
                 SELECT $1, $2, $3, coalesce(max(position) + 1, 0), $4, $5 FROM task_runs WHERE run_id = $1
                 ON CONFLICT (run_id, task) DO NOTHING",
            )
            .bind(run.0)
            .bind(&task)
            .bind(&phase)
            .bind(TaskState::Pending.as_str())
            .bind(at)
            .execute(&mut *transaction)
            .await?
            .rows_affected() as usize;
            if count > 0 {
                added += count;
                let detail = format!(
                    "phase {phase}: added to the run; the pipeline file gained it after the run was created"
                );
                event(
                    &mut transaction,
                    at,
                    run,
                    Some(&task),
                    None,
                    EventKind::TaskAdded,
                    &detail,
                )
                .await?;
            }
        }
        transaction.commit().await?;
        Ok(added)
    }

    async fn update_tasks(
        &self,
        run: RunId,
        changes: Vec<TaskChange>,
        at: Millis,
    ) -> StoreResult<usize> {
        let mut transaction = self.write().await?;
        load_run(&mut transaction, run).await?;
        let mut changed = 0;
        for change in changes {
            changed += change_task(&mut transaction, run, &change, at).await?;
        }
        transaction.commit().await?;
        Ok(changed)
    }

    async fn commit(&self, writes: Vec<Write>, at: Millis) -> StoreResult<()> {
        let mut transaction = self.write().await?;
        // Consecutive finishes, and consecutive starts, go as one batch each (a few statements
        // for the lot); the order of the writes is kept.
        let mut finishes = Vec::new();
        let mut starts = Vec::new();
        for write in writes {
            match write {
                Write::Finish(finish) => {
                    flush_starts(&mut transaction, &mut starts, at).await?;
                    finishes.push(finish);
                }
                Write::Started {
                    attempt,
                    epoch,
                    pid,
                } => {
                    flush_finishes(&mut transaction, &mut finishes).await?;
                    starts.push((attempt, epoch, pid));
                }
                other => {
                    flush_finishes(&mut transaction, &mut finishes).await?;
                    flush_starts(&mut transaction, &mut starts, at).await?;
                    commit_one(&mut transaction, other, at).await?;
                }
            }
        }
        flush_finishes(&mut transaction, &mut finishes).await?;
        flush_starts(&mut transaction, &mut starts, at).await?;
        transaction.commit().await?;
        Ok(())
    }

    async fn apply(&self, run: RunId, changes: Vec<Change>, at: Millis) -> StoreResult<()> {
        let mut transaction = self.write().await?;
        load_run(&mut transaction, run).await?;
        for change in changes {
            apply_one(&mut transaction, run, change, at).await?;
        }
        transaction.commit().await?;
        Ok(())
    }

    async fn expansions(&self, run: RunId) -> StoreResult<Vec<ExpansionRecord>> {
        let mut transaction = self.read().await?;
        let rows = sqlx::query(
            "SELECT task, items, created_at FROM expansions WHERE run_id = $1 ORDER BY task",
        )
        .bind(run.0)
        .fetch_all(&mut *transaction)
        .await?;
        transaction.commit().await?;
        rows.iter()
            .map(|row| {
                let task: String = get(row, 0)?;
                let listed: String = get(row, 1)?;
                let items = serde_json::from_str(&listed).map_err(|error| {
                    StoreError::Database(format!(
                        "the stored items of task {task:?} of run {run} do not read back: {error}"
                    ))
                })?;
                Ok(ExpansionRecord {
                    task,
                    items,
                    created_at: get(row, 2)?,
                })
            })
            .collect()
    }

    async fn gates(&self, run: RunId) -> StoreResult<Vec<GateRecord>> {
        let mut transaction = self.read().await?;
        let rows = sqlx::query(
            "SELECT phase, status, open_at, waived FROM gates WHERE run_id = $1 ORDER BY phase",
        )
        .bind(run.0)
        .fetch_all(&mut *transaction)
        .await?;
        transaction.commit().await?;
        all(rows, |row| {
            let status: String = get(row, 1)?;
            let open_at: Option<Millis> = get(row, 2)?;
            let waived: String = get(row, 3)?;
            Ok(GateRecord {
                phase: get(row, 0)?,
                status: match (status.as_str(), open_at) {
                    ("sufficient", Some(open_at)) => GateState::Sufficient { open_at },
                    ("open", _) => GateState::Open,
                    ("failed", _) => GateState::Failed,
                    _ => GateState::Waiting,
                },
                waived: waived
                    .split('\n')
                    .filter(|name| !name.is_empty())
                    .map(str::to_string)
                    .collect(),
            })
        })
    }

    async fn set_run_state(
        &self,
        run: RunId,
        state: RunState,
        message: Option<String>,
        at: Millis,
    ) -> StoreResult<()> {
        let mut transaction = self.write().await?;
        set_run_state_in(&mut transaction, run, state, message, at).await?;
        transaction.commit().await?;
        Ok(())
    }

    async fn request_cancel(&self, run: RunId, at: Millis) -> StoreResult<()> {
        let mut transaction = self.write().await?;
        let changed = sqlx::query("UPDATE runs SET cancel_requested = TRUE WHERE id = $1")
            .bind(run.0)
            .execute(&mut *transaction)
            .await?
            .rows_affected();
        if changed == 0 {
            return Err(StoreError::NoSuchRun(run));
        }
        event(
            &mut transaction,
            at,
            run,
            None,
            None,
            EventKind::CancelRequested,
            "",
        )
        .await?;
        transaction.commit().await?;
        Ok(())
    }

    async fn record_sensor_poll(&self, poll: SensorPoll) -> StoreResult<()> {
        let mut transaction = self.write().await?;
        record_sensor_poll_in(&mut transaction, poll).await?;
        transaction.commit().await?;
        Ok(())
    }

    async fn set_resource_state(&self, resource: ResourceStateRecord) -> StoreResult<()> {
        let mut transaction = self.write().await?;
        set_resource_state_in(&mut transaction, resource).await?;
        transaction.commit().await?;
        Ok(())
    }

    async fn attempt_starts_since(
        &self,
        pipeline: &str,
        since: Millis,
    ) -> StoreResult<Vec<(String, Millis)>> {
        let mut transaction = self.read().await?;
        let rows = sqlx::query(
            "SELECT task, claimed_at FROM attempts WHERE pipeline = $1 AND claimed_at >= $2 ORDER BY claimed_at, id",
        )
        .bind(pipeline)
        .bind(since)
        .fetch_all(&mut *transaction)
        .await?;
        transaction.commit().await?;
        all(rows, |row| Ok((get(row, 0)?, get(row, 1)?)))
    }

    async fn resource_states(&self, pipeline: &str) -> StoreResult<Vec<ResourceStateRecord>> {
        let mut transaction = self.read().await?;
        let states = resource_states_in(&mut transaction, pipeline).await?;
        transaction.commit().await?;
        Ok(states)
    }

    async fn set_flag(&self, flag: FlagRecord) -> StoreResult<()> {
        let mut transaction = self.write().await?;
        sqlx::query(
            "INSERT INTO flags (pipeline, task, state, set_at, set_by) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (pipeline, task) DO UPDATE SET state = excluded.state, set_at = excluded.set_at, set_by = excluded.set_by",
        )
        .bind(&flag.pipeline)
        .bind(&flag.task)
        .bind(&flag.state)
        .bind(flag.set_at)
        .bind(&flag.set_by)
        .execute(&mut *transaction)
        .await?;
        transaction.commit().await?;
        Ok(())
    }

    async fn clear_flag(&self, pipeline: &str, task: &str) -> StoreResult<bool> {
        let mut transaction = self.write().await?;
        let removed = sqlx::query("DELETE FROM flags WHERE pipeline = $1 AND task = $2")
            .bind(pipeline)
            .bind(task)
            .execute(&mut *transaction)
            .await?
            .rows_affected();
        transaction.commit().await?;
        Ok(removed > 0)
    }

    async fn flags(&self, pipeline: &str) -> StoreResult<Vec<FlagRecord>> {
        let mut transaction = self.read().await?;
        let flags = flags_in(&mut transaction, pipeline).await?;
        transaction.commit().await?;
        Ok(flags)
    }

    async fn register_task_versions(
        &self,
        pipeline: &str,
        versions: Vec<NewTaskVersion>,
        at: Millis,
    ) -> StoreResult<Vec<TaskVersionRecord>> {
        let mut transaction = self.write().await?;
        let records = register_task_versions_in(&mut transaction, pipeline, versions, at).await?;
        transaction.commit().await?;
        Ok(records)
    }

    async fn task_versions(&self, pipeline: &str) -> StoreResult<Vec<TaskVersionRecord>> {
        let mut transaction = self.read().await?;
        let records = task_versions_in(&mut transaction, pipeline).await?;
        transaction.commit().await?;
        Ok(records)
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
        let mut transaction = self.write().await?;
        set_task_version_status_in(
            &mut transaction,
            VersionStatusChange {
                pipeline,
                task,
                version,
                status,
                reason,
            },
            at,
        )
        .await?;
        transaction.commit().await?;
        Ok(())
    }

    async fn append_event(&self, new_event: NewEvent) -> StoreResult<()> {
        let mut transaction = self.write().await?;
        event(
            &mut transaction,
            new_event.at,
            new_event.run,
            new_event.task.as_deref(),
            new_event.attempt,
            new_event.kind,
            &new_event.detail,
        )
        .await?;
        transaction.commit().await?;
        Ok(())
    }
}

/// Runs `work` to completion on a thread of its own with a runtime of its own, so that a
/// synchronous caller may be inside another runtime.
fn on_own_thread<T, F>(name: &str, work: impl FnOnce() -> F + Send + 'static) -> StoreResult<T>
where
    T: Send + 'static,
    F: std::future::Future<Output = StoreResult<T>>,
{
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|error| StoreError::Database(error.to_string()))?;
            runtime.block_on(work())
        })
        .map_err(|error| StoreError::Database(error.to_string()))?
        .join()
        .map_err(|_| StoreError::Database(format!("{name} panicked")))?
}

pub mod testing {
    //! Throw-away PostgreSQL databases for Keel's own tests.
    //!
    //! The server comes from `KEEL_TEST_POSTGRES` (a URL such as
    //! `postgres://postgres@127.0.0.1:5432/postgres`, of a role that may create databases).
    //! Without it a test is skipped, saying so, except under `CI=true`, where a PostgreSQL test
    //! must run: there a missing or unreachable server fails the test.

    use super::*;

    /// A database `keel_test_<random>` made for one test and dropped when this is dropped.
    pub struct TestDatabase {
        admin: String,
        name: String,
        url: String,
    }

    impl TestDatabase {
        /// Makes a fresh database on the test server; `None` (after saying that `test` is
        /// skipped) when no server is configured outside CI. Panics with the reason when a
        /// server is configured but cannot be used, or when none is configured under CI.
        pub fn create(test: &str) -> Option<TestDatabase> {
            let in_ci = std::env::var("CI").is_ok_and(|value| value == "true");
            match TestDatabase::try_create() {
                Ok(Some(database)) => Some(database),
                Ok(None) if in_ci => panic!(
                    "{test}: CI=true but KEEL_TEST_POSTGRES is not set; the PostgreSQL tests must run in CI: start a server (.ci/start-postgres) and export KEEL_TEST_POSTGRES=postgres://USER@HOST:PORT/postgres"
                ),
                Ok(None) => {
                    eprintln!(
                        "{test}: skipped: KEEL_TEST_POSTGRES is not set (e.g. postgres://postgres@127.0.0.1:5432/postgres)"
                    );
                    None
                }
                Err(error) => panic!("{test}: {error}"),
            }
        }

        /// Makes a fresh database on the server of `KEEL_TEST_POSTGRES`; `None` when it is not
        /// set, and the reason, naming the server without its password, when it cannot be made.
        pub fn try_create() -> Result<Option<TestDatabase>, String> {
            let admin = match std::env::var("KEEL_TEST_POSTGRES") {
                Ok(url) if !url.trim().is_empty() => url,
                _ => return Ok(None),
            };
            let Some(parsed) = PostgresUrl::parse(&admin) else {
                return Err("KEEL_TEST_POSTGRES is not a postgres:// URL".into());
            };
            let random = crate::sqlite::new_store_id()
                .map_err(|error| format!("cannot read /dev/urandom: {error}"))?;
            let name = format!("keel_test_{}", &random[..16]);
            let url = with_database(&admin, &name);
            let (statement, server) = (format!("CREATE DATABASE {name}"), admin.clone());
            on_own_thread("keel-test-createdb", move || {
                admin_execute(server, statement)
            })
            .map_err(|error| {
                format!(
                    "cannot create a test database on KEEL_TEST_POSTGRES ({parsed}): {}",
                    parsed.scrub(&error.to_string())
                )
            })?;
            Ok(Some(TestDatabase { admin, name, url }))
        }

        /// The URL of the test database.
        pub fn url(&self) -> &str {
            &self.url
        }

        /// The URL of the test database, parsed.
        pub fn postgres_url(&self) -> PostgresUrl {
            PostgresUrl::parse(&self.url).expect("a postgres:// URL")
        }
    }

    impl Drop for TestDatabase {
        fn drop(&mut self) {
            let statement = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
            let server = self.admin.clone();
            if let Err(error) =
                on_own_thread("keel-test-dropdb", move || admin_execute(server, statement))
            {
                eprintln!("could not drop test database {}: {error}", self.name);
            }
        }
    }

    async fn admin_execute(server: String, statement: String) -> StoreResult<()> {
        let options = PgConnectOptions::from_str(&server)?;
        let mut connection =
            tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options))
                .await
                .map_err(|_| StoreError::Database("no answer within 10 s".into()))??;
        sqlx::raw_sql(AssertSqlSafe(statement))
            .execute(&mut connection)
            .await?;
        let _ = connection.close().await;
        Ok(())
    }

    /// `url` with its database (the path) replaced by `name`, keeping its query.
    fn with_database(url: &str, name: &str) -> String {
        let authority_start = url.find("://").map_or(0, |position| position + 3);
        let rest = &url[authority_start..];
        let authority_end = authority_start + rest.find(['/', '?']).unwrap_or(rest.len());
        let query = url[authority_end..]
            .find('?')
            .map_or("", |position| &url[authority_end + position..]);
        format!("{}/{name}{query}", &url[..authority_end])
    }
}
