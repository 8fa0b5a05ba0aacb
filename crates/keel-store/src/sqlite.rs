//! The embedded backend: one SQLite file in WAL mode behind one connection, so there is exactly
//! one writer. Every call runs on tokio's blocking pool so the engine's runtime never waits on
//! the disk.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use keel_model::{AttemptId, EventKind, Millis, Outcome, RunId, RunState, TaskState};
use rusqlite::{Connection, OptionalExtension, Row, Transaction, params};

use crate::*;

/// `PRAGMA application_id` of a Keel state file ("KEEL" in ASCII), so a foreign SQLite file is
/// refused instead of being migrated into.
const APPLICATION_ID: i64 = 0x4B45_454C;

/// Schema migrations; `PRAGMA user_version` is the number applied.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE runs (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    pipeline         TEXT    NOT NULL,
    partition        TEXT    NOT NULL,
    version          TEXT    NOT NULL,
    state            TEXT    NOT NULL,
    trace_id         TEXT    NOT NULL,
    created_at       INTEGER NOT NULL,
    finished_at      INTEGER,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    message          TEXT
);
CREATE INDEX runs_by_partition ON runs (pipeline, partition, id);
CREATE INDEX runs_unfinished ON runs (pipeline) WHERE finished_at IS NULL;

CREATE TABLE task_runs (
    run_id           INTEGER NOT NULL REFERENCES runs (id),
    task             TEXT    NOT NULL,
    phase            TEXT    NOT NULL,
    position         INTEGER NOT NULL,
    state            TEXT    NOT NULL,
    outcome          TEXT,
    attempts         INTEGER NOT NULL DEFAULT 0,
    charged          INTEGER NOT NULL DEFAULT 0,
    lease_epoch      INTEGER NOT NULL DEFAULT 0,
    not_before       INTEGER,
    first_started_at INTEGER,
    message          TEXT,
    updated_at       INTEGER NOT NULL,
    PRIMARY KEY (run_id, task)
);

CREATE TABLE attempts (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id           INTEGER NOT NULL REFERENCES runs (id),
    pipeline         TEXT    NOT NULL,
    partition        TEXT    NOT NULL,
    task             TEXT    NOT NULL,
    number           INTEGER NOT NULL,
    lease_owner      TEXT    NOT NULL,
    lease_epoch      INTEGER NOT NULL,
    lease_expires_at INTEGER NOT NULL,
    not_before       INTEGER,
    claimed_at       INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER,
    outcome          TEXT,
    exit_code        INTEGER,
    rows             INTEGER,
    metrics          TEXT,
    message          TEXT,
    pid              INTEGER,
    dir              TEXT    NOT NULL
);
CREATE INDEX attempts_by_run ON attempts (run_id, task, number);
-- At most one live attempt per (task, partition), across every run of the pipeline.
CREATE UNIQUE INDEX attempts_one_live ON attempts (pipeline, partition, task) WHERE finished_at IS NULL;

CREATE TABLE events (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    at         INTEGER NOT NULL,
    run_id     INTEGER NOT NULL,
    task       TEXT,
    attempt_id INTEGER,
    kind       TEXT    NOT NULL,
    detail     TEXT    NOT NULL
);
CREATE INDEX events_by_run ON events (run_id, seq);
"#,
    r#"
-- The last known state of each resource's circuit breaker, for `keel status`.
CREATE TABLE resources (
    pipeline   TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    state      TEXT    NOT NULL,
    detail     TEXT    NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (pipeline, name)
);
"#,
    r#"
-- Facts about the store itself. `store_id` is inserted with the migration (see STORE_ID_KEY):
-- attempt directories live under it, so two state files in one directory, or a state file
-- deleted and created again, never share an attempt's files.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"#,
    r#"
-- The pipeline version whose command each attempt ran: a retry runs the pipeline file as it is
-- now, which may differ from the version its run was created with. NULL for older attempts.
ALTER TABLE attempts ADD COLUMN version TEXT;
"#,
    r#"
-- What the engine decided and must not forget in a crash: reruns owed to a task that ran while
-- an upstream task landed late, sensor backoff, gate grace periods and waivers, and breakers.
ALTER TABLE task_runs ADD COLUMN rerun_pending INTEGER NOT NULL DEFAULT 0;
ALTER TABLE task_runs ADD COLUMN sensor_polls INTEGER NOT NULL DEFAULT 0;
CREATE TABLE gates (
    run_id     INTEGER NOT NULL REFERENCES runs (id),
    phase      TEXT    NOT NULL,
    status     TEXT    NOT NULL,
    open_at    INTEGER,
    waived     TEXT    NOT NULL DEFAULT '',
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (run_id, phase)
);
ALTER TABLE resources ADD COLUMN open_since INTEGER;
ALTER TABLE resources ADD COLUMN open_until INTEGER;
"#,
    r#"
-- Whether each finished attempt used up one of its retry policy's attempts, so that `keel status`
-- can tell real attempts from not-ready checks and failed breaker probes. NULL while an attempt
-- runs, and for attempts recorded before Keel kept it.
ALTER TABLE attempts ADD COLUMN charged INTEGER;
"#,
    r#"
-- Each time a schedule fired for `keel serve`, and the run it started or joined: written in the
-- transaction that creates the run, so a Keel killed at any instant neither loses a fire nor
-- runs one twice, and knows on restart which fires it missed.
CREATE TABLE schedule_fires (
    pipeline  TEXT    NOT NULL,
    trigger   TEXT    NOT NULL,
    fire_at   INTEGER NOT NULL,
    partition TEXT    NOT NULL,
    run_id    INTEGER NOT NULL REFERENCES runs (id),
    PRIMARY KEY (pipeline, trigger, fire_at)
);
"#,
    r#"
-- Sensor polls that ended in a sensor error (an exit other than 0, 65 or 75, a timeout): they
-- use up the task's retry attempts, so a restarted Keel must keep counting them.
ALTER TABLE task_runs ADD COLUMN sensor_errors INTEGER NOT NULL DEFAULT 0;
"#,
    r#"
-- The pass a run belongs to (`[passes.NAME]`), NULL for the pipeline's own runs. Runs of a pass
-- are kept apart: the newest run of a partition is looked up per pass.
ALTER TABLE runs ADD COLUMN pass TEXT;
CREATE INDEX runs_by_pass ON runs (pipeline, partition, pass, id);
"#,
    r#"
-- The newest events of some kinds (a resource's breaker transitions, say) without scanning the
-- whole log: `recent_events` walks this index backwards from the newest entry of each kind.
CREATE INDEX events_by_kind ON events (kind, seq);
"#,
    r#"
-- Feature flags (`keel flags set TASK off|N%`): read when a run is created and whenever a task
-- becomes ready, so a flag applies without a restart.
CREATE TABLE flags (
    pipeline TEXT    NOT NULL,
    task     TEXT    NOT NULL,
    state    TEXT    NOT NULL,
    set_at   INTEGER NOT NULL,
    set_by   TEXT    NOT NULL,
    PRIMARY KEY (pipeline, task)
);
"#,
    r#"
-- The items of an expanded task (`expand`), recorded once per task and run in the step that read
-- them: `items` is their JSON list ([{"key": ..., "value": ...}, ...]).
CREATE TABLE expansions (
    run_id     INTEGER NOT NULL REFERENCES runs (id),
    task       TEXT    NOT NULL,
    items      TEXT    NOT NULL,
    item_count INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (run_id, task)
);
"#,
    r#"
-- Requests counted against a resource's quota (`quota = "500/month"`), per calendar period
-- (`2026-12` or `2026-12-02` in the pipeline's time zone), so a restart keeps counting.
CREATE TABLE quota_use (
    pipeline   TEXT    NOT NULL,
    resource   TEXT    NOT NULL,
    period     TEXT    NOT NULL,
    used       INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (pipeline, resource, period)
);
"#,
    r#"
-- Task versions (`version`, `code`, `rollout`): the version of its task each attempt ran, and
-- every version of a task with the spec it runs (JSON), its rollout status (canary, promoted,
-- rolled_back, retired), its canary's clean and failed attempts, and why it stands there.
ALTER TABLE attempts ADD COLUMN task_version TEXT;
CREATE TABLE task_versions (
    pipeline     TEXT    NOT NULL,
    task         TEXT    NOT NULL,
    version      TEXT    NOT NULL,
    spec         TEXT    NOT NULL,
    status       TEXT    NOT NULL,
    clean        INTEGER NOT NULL DEFAULT 0,
    failed       INTEGER NOT NULL DEFAULT 0,
    reason       TEXT,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    PRIMARY KEY (pipeline, task, version)
);
"#,
];

/// The `meta` key of the store's identity.
const STORE_ID_KEY: &str = "store_id";

/// A new store identity: 16 bytes from the kernel's random source, hex-encoded. Run ids start
/// again at 1 in every new database, so the identity must not be derivable from anything a
/// second database could share (its path, the time, the pid).
pub(crate) fn new_store_id() -> std::io::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// Creates the state file empty, readable and writable by its owner only, unless it exists.
///
/// SQLite would create it with mode 0644 less the umask, and it gives the `-wal` and `-shm`
/// files it makes beside a database the database's own mode: made here first, none of the three
/// is readable by other users. An empty file is a new database to SQLite.
fn create_private_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        // Already there, or made by another process opening it at the same time.
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(error) => Err(error),
    }
}

/// The SQLite state store. Cloning shares the one connection.
#[derive(Clone)]
pub struct SqliteStore {
    connection: Arc<Mutex<Connection>>,
    path: Arc<PathBuf>,
    store_id: Arc<str>,
    /// Transactions that changed something, for tests that check how many a step takes.
    write_transactions: Arc<std::sync::atomic::AtomicU64>,
    /// Opened by [`SqliteStore::open_read_only`]: its transactions are deferred, because an
    /// immediate one asks for the write lock, which a reader neither needs nor may take.
    read_only: bool,
}

/// Turns what goes wrong opening a state file into the store's errors, naming the file.
struct OpenErrors {
    display: String,
}

impl OpenErrors {
    fn new(path: &Path) -> OpenErrors {
        OpenErrors {
            display: path.display().to_string(),
        }
    }

    fn open(&self, detail: String) -> StoreError {
        StoreError::Open {
            path: self.display.clone(),
            detail,
        }
    }

    fn classify(&self, error: rusqlite::Error) -> StoreError {
        let text = error.to_string();
        match error.sqlite_error_code() {
            Some(rusqlite::ErrorCode::NotADatabase) => StoreError::Foreign {
                path: self.display.clone(),
                detail: "the file is not an SQLite database".into(),
            },
            Some(rusqlite::ErrorCode::DatabaseCorrupt) => StoreError::Corrupt {
                path: self.display.clone(),
                detail: text,
            },
            Some(rusqlite::ErrorCode::CannotOpen)
            | Some(rusqlite::ErrorCode::ReadOnly)
            | Some(rusqlite::ErrorCode::PermissionDenied)
            | Some(rusqlite::ErrorCode::SystemIoFailure) => self.open(text),
            _ => StoreError::Database(text),
        }
    }

    /// Refuses a file that is not a Keel state, or one of a newer schema; returns the schema
    /// version it is at.
    fn check_header(&self, connection: &Connection) -> StoreResult<i64> {
        // One statement, so one consistent snapshot even while another process migrates.
        let (application_id, user_version, table_count): (i64, i64, i64) = connection
            .query_row(
                "SELECT (SELECT application_id FROM pragma_application_id()),
                        (SELECT user_version FROM pragma_user_version()),
                        (SELECT count(*) FROM sqlite_master)",
                [],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .map_err(|error| self.classify(error))?;
        if application_id != APPLICATION_ID && (application_id != 0 || table_count > 0) {
            return Err(StoreError::Foreign {
                path: self.display.clone(),
                detail: format!(
                    "it holds {table_count} {} and application id {application_id:#x}, not Keel's",
                    if table_count == 1 { "table" } else { "tables" }
                ),
            });
        }
        let known = MIGRATIONS.len() as i64;
        if user_version > known {
            return Err(StoreError::TooNew {
                path: self.display.clone(),
                found: user_version,
                known,
            });
        }
        Ok(user_version)
    }

    fn check_integrity(&self, connection: &Connection) -> StoreResult<()> {
        let integrity: String = connection
            .query_row("PRAGMA quick_check", [], |row| row.get(0))
            .map_err(|error| self.classify(error))?;
        if integrity != "ok" {
            return Err(StoreError::Corrupt {
                path: self.display.clone(),
                detail: integrity,
            });
        }
        Ok(())
    }

    fn read_store_id(&self, connection: &Connection) -> StoreResult<String> {
        let store_id: Option<String> = connection
            .query_row(
                "SELECT value FROM meta WHERE key = ?1",
                [STORE_ID_KEY],
                |row| row.get(0),
            )
            .optional()
            .map_err(|error| self.classify(error))?;
        store_id.ok_or_else(|| StoreError::Corrupt {
            path: self.display.clone(),
            detail: format!("its meta table has no {STORE_ID_KEY:?}"),
        })
    }
}

/// `file:` URI of `path` with a query, for the open flags only a URI can give.
fn file_uri(path: &Path, query: &str) -> String {
    use std::os::unix::ffi::OsStrExt;
    // An absolute path gets the empty authority, `file:///…`, so that a path starting with
    // `//` is not read as a host.
    let mut uri = String::from(if path.is_absolute() {
        "file://"
    } else {
        "file:"
    });
    for byte in path.as_os_str().as_bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                uri.push(char::from(*byte));
            }
            _ => uri.push_str(&format!("%{byte:02X}")),
        }
    }
    uri.push('?');
    uri.push_str(query);
    uri
}

/// Whether this process may create files in `dir`.
fn may_write_in(dir: &Path) -> bool {
    rustix::fs::access(dir, rustix::fs::Access::WRITE_OK).is_ok()
}

/// A connection that reads an existing state file and writes nothing in it, nor leaves any file
/// beside it.
///
/// SQLite reads a WAL database through a `-shm` index beside it, and makes one (and an empty
/// `-wal`) if it can. A read-only connection cannot checkpoint, so it would leave both behind
/// in a directory it may write in; there a read-write connection with `query_only` set is used
/// instead, which refuses every write and, closing last, removes them as any Keel does.
///
/// Where no file can be made, a read-only connection works while a running Keel keeps its
/// `-shm` and `-wal` there. Without them SQLite cannot build the index, and the database is read
/// as immutable, from the database file alone: with no `-wal` file, every committed transaction
/// is in it. A Keel that starts writing during such a read is not seen.
fn connect_for_reading(path: &Path, errors: &OpenErrors) -> StoreResult<Connection> {
    use rusqlite::OpenFlags;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let connect = |target: &str, flags: OpenFlags| {
        Connection::open_with_flags(target, flags | OpenFlags::SQLITE_OPEN_URI)
            .map_err(|error| errors.open(error.to_string()))
    };
    if may_write_in(dir) {
        let connection = connect(
            &file_uri(path, "mode=rw"),
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        connection
            .pragma_update(None, "query_only", true)
            .map_err(|error| errors.classify(error))?;
        return Ok(connection);
    }
    let read_only = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let connection = connect(&file_uri(path, "mode=ro"), read_only)?;
    // SQLite opens lazily: the first read tells whether it could set up the index.
    let error = match connection.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(())) {
        Ok(()) => return Ok(connection),
        Err(error) => error,
    };
    let index_unavailable = matches!(
        error.sqlite_error_code(),
        Some(rusqlite::ErrorCode::ReadOnly) | Some(rusqlite::ErrorCode::CannotOpen)
    );
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    if !index_unavailable || Path::new(&wal).exists() {
        return Err(errors.classify(error));
    }
    drop(connection);
    connect(&file_uri(path, "mode=ro&immutable=1"), read_only)
}

impl SqliteStore {
    /// Opens (creating if needed) and migrates the state file. A file that is not SQLite, or is
    /// SQLite but not Keel's, is refused with a clear error and left untouched.
    pub fn open(path: &Path) -> StoreResult<SqliteStore> {
        let errors = OpenErrors::new(path);
        create_private_file(path).map_err(|error| errors.open(error.to_string()))?;
        let connection = Connection::open(path).map_err(|error| errors.open(error.to_string()))?;
        let classify = |error: rusqlite::Error| errors.classify(error);
        connection
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(classify)?;
        let user_version = errors.check_header(&connection)?;
        retry_while_busy(|| {
            connection.execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
            )
        })
        .map_err(classify)?;
        errors.check_integrity(&connection)?;
        if user_version < MIGRATIONS.len() as i64 {
            // Made before the transaction so that a missing random source is an open error;
            // used only if no other process gave the store its identity first.
            let store_id = new_store_id().map_err(|error| {
                errors.open(format!(
                    "cannot read /dev/urandom for the store's identity: {error}"
                ))
            })?;
            // Another process may be migrating the same file right now: decide what to apply
            // only once holding the write lock.
            retry_while_busy(|| connection.execute_batch("BEGIN IMMEDIATE")).map_err(classify)?;
            let migrated = (|| -> rusqlite::Result<()> {
                let current: i64 =
                    connection.query_row("PRAGMA user_version", [], |row| row.get(0))?;
                for (number, migration) in
                    MIGRATIONS.iter().enumerate().skip(current.max(0) as usize)
                {
                    let version = number as i64 + 1;
                    connection.execute_batch(&format!(
                        "{migration}; PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {version};"
                    ))?;
                }
                connection.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES (?1, ?2)",
                    params![STORE_ID_KEY, store_id],
                )?;
                connection.execute_batch("COMMIT")
            })();
            if let Err(error) = migrated {
                let _ = connection.execute_batch("ROLLBACK");
                return Err(classify(error));
            }
        }
        let store_id = errors.read_store_id(&connection)?;
        Ok(SqliteStore {
            connection: Arc::new(Mutex::new(connection)),
            path: Arc::new(path.to_path_buf()),
            store_id: store_id.into(),
            read_only: false,
            write_transactions: Arc::default(),
        })
    }

    /// Opens an existing state file only to read it, for `keel status` and `keel logs`: nothing
    /// in the file changes (no migration, no journal mode), no file is left beside it, and it
    /// works in a directory this process may not write to. A store opened so refuses every
    /// write.
    ///
    /// `Ok(None)` when the file is not a whole state of this Keel's schema yet: one being created
    /// by another Keel right now, or one an older Keel made. Only [`SqliteStore::open`] can take
    /// those up, since it migrates them. A file that is not a Keel state is refused as by
    /// `open`.
    pub fn open_read_only(path: &Path) -> StoreResult<Option<SqliteStore>> {
        let errors = OpenErrors::new(path);
        let connection = connect_for_reading(path, &errors)?;
        connection
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|error| errors.classify(error))?;
        if errors.check_header(&connection)? < MIGRATIONS.len() as i64 {
            return Ok(None);
        }
        errors.check_integrity(&connection)?;
        let store_id = errors.read_store_id(&connection)?;
        Ok(Some(SqliteStore {
            connection: Arc::new(Mutex::new(connection)),
            path: Arc::new(path.to_path_buf()),
            store_id: store_id.into(),
            read_only: true,
            write_transactions: Arc::default(),
        }))
    }

    /// How many transactions of this store (and its clones) changed something so far.
    pub fn write_transactions(&self) -> u64 {
        self.write_transactions
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The finished runs of `pipeline` that finished before `before` and whose attempt
    /// directories `keel gc` has not removed since they last changed state, oldest first.
    pub async fn runs_to_prune(
        &self,
        pipeline: &str,
        before: Millis,
    ) -> StoreResult<Vec<RunRecord>> {
        let pipeline = pipeline.to_string();
        self.transact(move |transaction| {
            let finished: Vec<&str> = RunState::ALL
                .iter()
                .filter(|state| state.is_finished())
                .map(|state| state.as_str())
                .collect();
            let runs = select_all(
                transaction,
                &format!(
                    "SELECT {RUN_COLUMNS} FROM runs r WHERE pipeline = ?1 AND finished_at < ?2 \
                     AND NOT EXISTS (SELECT 1 FROM events e WHERE e.run_id = r.id AND e.kind = ?3 \
                     AND e.seq > coalesce((SELECT max(seq) FROM events s WHERE s.run_id = r.id \
                     AND s.kind = ?4), 0)) ORDER BY id"
                ),
                params![
                    pipeline,
                    before,
                    EventKind::Pruned.as_str(),
                    EventKind::RunState.as_str()
                ],
                run_from_row,
            )?;
            Ok(runs
                .into_iter()
                .filter(|run| finished.contains(&run.state.as_str()))
                .collect())
        })
        .await
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
        let (pipeline, resource, period) = (
            pipeline.to_string(),
            resource.to_string(),
            period.to_string(),
        );
        self.transact(move |transaction| {
            let used: i64 = transaction.query_row(
                "INSERT INTO quota_use (pipeline, resource, period, used, updated_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (pipeline, resource, period) DO UPDATE SET used = used + excluded.used, updated_at = excluded.updated_at
                 RETURNING used",
                params![pipeline, resource, period, count, at],
                |row| row.get(0),
            )?;
            Ok(u32::try_from(used).unwrap_or(u32::MAX))
        })
        .await
    }

    /// The quota use of every resource of `pipeline` in its newest counted period:
    /// `(resource, period, used)`, by resource.
    pub async fn quota_uses(&self, pipeline: &str) -> StoreResult<Vec<(String, String, u32)>> {
        let pipeline = pipeline.to_string();
        self.transact(move |transaction| {
            select_all(
                transaction,
                "SELECT resource, period, used FROM quota_use AS outer_use WHERE pipeline = ?1
                   AND period = (SELECT MAX(period) FROM quota_use WHERE pipeline = ?1 AND resource = outer_use.resource)
                 ORDER BY resource",
                params![pipeline],
                |row| {
                    let used: i64 = row.get(2)?;
                    Ok((row.get(0)?, row.get(1)?, u32::try_from(used).unwrap_or(u32::MAX)))
                },
            )
        })
        .await
    }

    /// The names of the pipelines that have runs in this state, by name: what the commands
    /// that read fall back on when the pipeline file is missing or does not validate.
    pub async fn pipelines(&self) -> StoreResult<Vec<String>> {
        self.transact(|transaction| {
            let mut statement =
                transaction.prepare("SELECT DISTINCT pipeline FROM runs ORDER BY pipeline")?;
            let names = statement
                .query_map([], |row| row.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok(names)
        })
        .await
    }

    /// Runs `work` in one transaction on the blocking pool: an immediate one, which takes the
    /// write lock at once, unless the store is only read.
    async fn transact<T, F>(&self, work: F) -> StoreResult<T>
    where
        T: Send + 'static,
        F: FnOnce(&Transaction<'_>) -> StoreResult<T> + Send + 'static,
    {
        let connection = self.connection.clone();
        let writes = self.write_transactions.clone();
        let behavior = if self.read_only {
            rusqlite::TransactionBehavior::Deferred
        } else {
            rusqlite::TransactionBehavior::Immediate
        };
        tokio::task::spawn_blocking(move || {
            let mut connection = connection
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let changes_before = connection.total_changes();
            let transaction = connection.transaction_with_behavior(behavior)?;
            let value = work(&transaction)?;
            transaction.commit()?;
            if connection.total_changes() != changes_before {
                writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Ok(value)
        })
        .await
        .map_err(|error| StoreError::Database(format!("store worker failed: {error}")))?
    }
}

/// Switching a new file to WAL, or starting its first migration, while another process opens
/// it too can fail with SQLITE_BUSY at once, without the busy handler (SQLite will not wait
/// where waiting could deadlock). Those races are brief; this tries again for up to 5 s.
fn retry_while_busy<T>(mut work: impl FnMut() -> rusqlite::Result<T>) -> rusqlite::Result<T> {
    let give_up = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match work() {
            Err(error)
                if error.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
                    && std::time::Instant::now() < give_up =>
            {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// Every row of a query, mapped.
fn select_all<T>(
    transaction: &Transaction<'_>,
    sql: &str,
    params: impl rusqlite::Params,
    read: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
) -> StoreResult<Vec<T>> {
    let mut statement = transaction.prepare_cached(sql)?;
    let rows = statement.query_map(params, read)?;
    Ok(rows.collect::<Result<Vec<_>, _>>()?)
}

fn cached_execute(
    transaction: &Transaction<'_>,
    sql: &str,
    params: impl rusqlite::Params,
) -> rusqlite::Result<usize> {
    transaction.prepare_cached(sql)?.execute(params)
}

fn cached_query_row<T>(
    transaction: &Transaction<'_>,
    sql: &str,
    params: impl rusqlite::Params,
    read: impl FnOnce(&Row<'_>) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    transaction.prepare_cached(sql)?.query_row(params, read)
}

fn event(
    transaction: &Transaction<'_>,
    at: Millis,
    run: RunId,
    task: Option<&str>,
    attempt: Option<AttemptId>,
    kind: EventKind,
    detail: &str,
) -> StoreResult<()> {
    cached_execute(
        transaction,
        "INSERT INTO events (at, run_id, task, attempt_id, kind, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            at,
            run.0,
            task,
            attempt.map(|id| id.0),
            kind.as_str(),
            detail
        ],
    )?;
    Ok(())
}

fn parse_column<T: std::str::FromStr>(row: &Row<'_>, index: usize) -> rusqlite::Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let text: String = row.get(index)?;
    text.parse::<T>().map_err(|error| {
        rusqlite::Error::FromSqlConversionFailure(
            index,
            rusqlite::types::Type::Text,
            Box::new(error),
        )
    })
}

fn parse_optional<T: std::str::FromStr>(row: &Row<'_>, index: usize) -> rusqlite::Result<Option<T>>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let text: Option<String> = row.get(index)?;
    text.map(|text| {
        text.parse::<T>().map_err(|error| {
            rusqlite::Error::FromSqlConversionFailure(
                index,
                rusqlite::types::Type::Text,
                Box::new(error),
            )
        })
    })
    .transpose()
}

const RUN_COLUMNS: &str = "id, pipeline, partition, version, state, trace_id, created_at, finished_at, cancel_requested, message, pass";

fn run_from_row(row: &Row<'_>) -> rusqlite::Result<RunRecord> {
    Ok(RunRecord {
        id: RunId(row.get(0)?),
        pipeline: row.get(1)?,
        partition: row.get(2)?,
        version: row.get(3)?,
        state: parse_column(row, 4)?,
        trace_id: row.get(5)?,
        created_at: row.get(6)?,
        finished_at: row.get(7)?,
        cancel_requested: row.get::<_, i64>(8)? != 0,
        message: row.get(9)?,
        pass: row.get(10)?,
    })
}

const TASK_COLUMNS: &str = "run_id, task, phase, state, outcome, attempts, charged, lease_epoch, not_before, first_started_at, message, rerun_pending, sensor_polls, sensor_errors";

fn task_from_row(row: &Row<'_>) -> rusqlite::Result<TaskRunRecord> {
    Ok(TaskRunRecord {
        run: RunId(row.get(0)?),
        task: row.get(1)?,
        phase: row.get(2)?,
        state: parse_column(row, 3)?,
        outcome: parse_optional(row, 4)?,
        attempts: row.get(5)?,
        charged: row.get(6)?,
        lease_epoch: row.get(7)?,
        not_before: row.get(8)?,
        first_started_at: row.get(9)?,
        message: row.get(10)?,
        rerun_pending: row.get::<_, i64>(11)? != 0,
        sensor_polls: row.get(12)?,
        sensor_errors: row.get(13)?,
    })
}

const ATTEMPT_COLUMNS: &str = "id, run_id, pipeline, partition, task, number, lease_owner, lease_epoch, not_before, claimed_at, started_at, finished_at, outcome, exit_code, rows, metrics, message, pid, dir, version, task_version";

fn attempt_from_row(row: &Row<'_>) -> rusqlite::Result<AttemptRecord> {
    Ok(AttemptRecord {
        id: AttemptId(row.get(0)?),
        run: RunId(row.get(1)?),
        pipeline: row.get(2)?,
        partition: row.get(3)?,
        task: row.get(4)?,
        number: row.get(5)?,
        lease_owner: row.get(6)?,
        lease_epoch: row.get(7)?,
        not_before: row.get(8)?,
        claimed_at: row.get(9)?,
        started_at: row.get(10)?,
        finished_at: row.get(11)?,
        outcome: parse_optional(row, 12)?,
        exit_code: row.get(13)?,
        rows: row.get(14)?,
        metrics: row.get(15)?,
        message: row.get(16)?,
        pid: row.get(17)?,
        dir: row.get(18)?,
        version: row.get(19)?,
        task_version: row.get(20)?,
    })
}

fn event_from_row(row: &Row<'_>) -> rusqlite::Result<EventRecord> {
    Ok(EventRecord {
        seq: row.get(0)?,
        at: row.get(1)?,
        run: RunId(row.get(2)?),
        task: row.get(3)?,
        attempt: row.get::<_, Option<i64>>(4)?.map(AttemptId),
        kind: parse_column(row, 5)?,
        detail: row.get(6)?,
    })
}

/// Inserts a run and one task run per task, and its `run_created` event.
fn insert_run(transaction: &Transaction<'_>, new_run: &NewRun) -> StoreResult<RunRecord> {
    cached_execute(
        transaction,
        "INSERT INTO runs (pipeline, partition, version, state, trace_id, created_at, pass) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            new_run.pipeline,
            new_run.partition,
            new_run.version,
            RunState::Running.as_str(),
            new_run.trace_id,
            new_run.at,
            new_run.pass
        ],
    )?;
    let run = RunId(transaction.last_insert_rowid());
    {
        let mut insert = transaction.prepare_cached(
            "INSERT INTO task_runs (run_id, task, phase, position, state, outcome, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?;
        for (position, (task, phase, settled)) in new_run.tasks.iter().enumerate() {
            let state = if settled.is_some() {
                TaskState::Done
            } else {
                TaskState::Pending
            };
            insert.execute(params![
                run.0,
                task,
                phase,
                position as i64,
                state.as_str(),
                settled.map(Outcome::as_str),
                new_run.at
            ])?;
        }
    }
    let mut detail = format!(
        "partition {} version {}",
        new_run.partition, new_run.version
    );
    if let Some(pass) = &new_run.pass {
        detail.push_str(&format!(" pass {pass}"));
    }
    event(
        transaction,
        new_run.at,
        run,
        None,
        None,
        EventKind::RunCreated,
        &detail,
    )?;
    load_run(transaction, run)
}

fn load_run(transaction: &Transaction<'_>, run: RunId) -> StoreResult<RunRecord> {
    transaction
        .query_row(
            &format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"),
            [run.0],
            run_from_row,
        )
        .optional()?
        .ok_or(StoreError::NoSuchRun(run))
}

fn load_attempt(transaction: &Transaction<'_>, attempt: AttemptId) -> StoreResult<AttemptRecord> {
    Ok(cached_query_row(
        transaction,
        &format!("SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE id = ?1"),
        [attempt.0],
        attempt_from_row,
    )?)
}

fn claim_one(transaction: &Transaction<'_>, claim: ClaimAttempt) -> StoreResult<AttemptRecord> {
    let run = load_run(transaction, claim.run)?;
    let task: TaskRunRecord = transaction
        .query_row(
            &format!("SELECT {TASK_COLUMNS} FROM task_runs WHERE run_id = ?1 AND task = ?2"),
            params![claim.run.0, claim.task],
            task_from_row,
        )
        .optional()?
        .ok_or_else(|| StoreError::NotClaimable {
            run: claim.run,
            task: claim.task.clone(),
            state: "not part of the run".into(),
        })?;
    if !matches!(task.state, TaskState::Pending | TaskState::Waiting) {
        return Err(StoreError::NotClaimable {
            run: claim.run,
            task: claim.task,
            state: task.state.as_str().into(),
        });
    }
    let live: Option<i64> = transaction
        .query_row(
            "SELECT id FROM attempts WHERE pipeline = ?1 AND partition = ?2 AND task = ?3 AND finished_at IS NULL",
            params![run.pipeline, run.partition, claim.task],
            |row| row.get(0),
        )
        .optional()?;
    if let Some(live) = live {
        return Err(StoreError::AlreadyLive {
            run: claim.run,
            task: claim.task,
            attempt: AttemptId(live),
        });
    }
    let epoch = task.lease_epoch + 1;
    let number = task.attempts + 1;
    cached_execute(
        transaction,
        "INSERT INTO attempts (run_id, pipeline, partition, task, number, lease_owner, lease_epoch, lease_expires_at, not_before, claimed_at, dir, version, task_version)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        params![claim.run.0, run.pipeline, run.partition, claim.task, number, claim.owner, epoch, claim.lease_expires_at, task.not_before, claim.at, claim.dir, claim.version, claim.task_version],
    )?;
    let attempt = AttemptId(transaction.last_insert_rowid());
    cached_execute(
        transaction,
        "UPDATE task_runs SET state = ?1, attempts = ?2, lease_epoch = ?3, first_started_at = coalesce(first_started_at, ?4), updated_at = ?4,
             rerun_pending = 0
         WHERE run_id = ?5 AND task = ?6",
        params![TaskState::Running.as_str(), number, epoch, claim.at, claim.run.0, claim.task],
    )?;
    let detail = format!("attempt {number} epoch {epoch} owner {}", claim.owner);
    event(
        transaction,
        claim.at,
        claim.run,
        Some(&claim.task),
        Some(attempt),
        EventKind::AttemptClaimed,
        &detail,
    )?;
    load_attempt(transaction, attempt)
}

fn finish_one(transaction: &Transaction<'_>, finish: FinishAttempt) -> StoreResult<()> {
    let record = load_attempt(transaction, finish.attempt)?;
    let current_epoch: i64 = cached_query_row(
        transaction,
        "SELECT lease_epoch FROM task_runs WHERE run_id = ?1 AND task = ?2",
        params![record.run.0, record.task],
        |row| row.get(0),
    )?;
    if record.finished_at.is_some()
        || record.lease_epoch != finish.epoch
        || current_epoch != finish.epoch
    {
        return Err(StoreError::StaleLease {
            attempt: finish.attempt,
            epoch: finish.epoch,
        });
    }
    let charged = finish.charged();
    cached_execute(
        transaction,
        "UPDATE attempts SET finished_at = ?1, outcome = ?2, exit_code = ?3, rows = ?4, metrics = ?5, message = ?6, charged = ?7
         WHERE id = ?8",
        params![
            finish.at,
            finish.outcome.as_str(),
            finish.exit_code,
            finish.rows,
            finish.metrics,
            finish.message,
            charged,
            finish.attempt.0
        ],
    )?;
    let TaskEffect {
        state,
        outcome,
        not_before,
        charge,
        kind,
    } = finish.task_effect();
    cached_execute(
        transaction,
        "UPDATE task_runs SET state = ?1, outcome = ?2, not_before = ?3, charged = charged + ?4, message = ?5, updated_at = ?6
         WHERE run_id = ?7 AND task = ?8",
        params![state.as_str(), outcome.map(Outcome::as_str), not_before, charge, finish.message, finish.at, record.run.0, record.task],
    )?;
    let detail = finish.finished_detail(record.number);
    event(
        transaction,
        finish.at,
        record.run,
        Some(&record.task),
        Some(finish.attempt),
        EventKind::AttemptFinished,
        &detail,
    )?;
    let next_detail = finish.next_detail();
    event(
        transaction,
        finish.at,
        record.run,
        Some(&record.task),
        Some(finish.attempt),
        kind,
        &next_detail,
    )?;
    Ok(())
}

/// Changes one task run that is not running; returns how many rows changed (0 or 1).
fn change_task(
    transaction: &Transaction<'_>,
    run: RunId,
    change: &TaskChange,
    at: Millis,
) -> StoreResult<usize> {
    let reset = i64::from(change.reset_retry_budget);
    let count = cached_execute(
        transaction,
        "UPDATE task_runs SET state = ?1, outcome = ?2, not_before = ?3, message = ?4, updated_at = ?5,
             charged = CASE WHEN ?6 = 1 THEN 0 ELSE charged END,
             first_started_at = CASE WHEN ?6 = 1 THEN NULL WHEN ?1 = 'waiting' THEN coalesce(first_started_at, ?5) ELSE first_started_at END,
             sensor_polls = CASE WHEN ?6 = 1 THEN 0 ELSE sensor_polls END,
             sensor_errors = CASE WHEN ?6 = 1 THEN 0 ELSE sensor_errors END,
             rerun_pending = CASE WHEN ?1 = 'pending' THEN 0 ELSE rerun_pending END
         WHERE run_id = ?7 AND task = ?8 AND state <> 'running'",
        params![change.state.as_str(), change.outcome.map(Outcome::as_str), change.not_before, change.message, at, reset, run.0, change.task],
    )?;
    if count > 0 {
        let detail = match change.outcome {
            Some(outcome) => format!("{} ({outcome}): {}", change.state, change.reason),
            None => format!("{}: {}", change.state, change.reason),
        };
        event(
            transaction,
            at,
            run,
            Some(&change.task),
            None,
            EventKind::TaskChanged,
            &detail,
        )?;
    }
    Ok(count)
}

fn apply_one(
    transaction: &Transaction<'_>,
    run: RunId,
    change: Change,
    at: Millis,
) -> StoreResult<()> {
    match change {
        Change::Task(change) => {
            change_task(transaction, run, &change, at)?;
        }
        Change::MarkRerun { task, reason } => {
            let count = cached_execute(
                transaction,
                "UPDATE task_runs SET rerun_pending = 1, updated_at = ?1 WHERE run_id = ?2 AND task = ?3",
                params![at, run.0, task],
            )?;
            if count > 0 {
                event(
                    transaction,
                    at,
                    run,
                    Some(&task),
                    None,
                    EventKind::RerunOwed,
                    &reason,
                )?;
            }
        }
        Change::Gate(gate) => {
            let (status, open_at) = match gate.status {
                GateState::Waiting => ("waiting", None),
                GateState::Sufficient { open_at } => ("sufficient", Some(open_at)),
                GateState::Open => ("open", None),
                GateState::Failed => ("failed", None),
            };
            cached_execute(
                transaction,
                "INSERT INTO gates (run_id, phase, status, open_at, waived, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (run_id, phase) DO UPDATE SET status = excluded.status, open_at = excluded.open_at,
                     waived = excluded.waived, updated_at = excluded.updated_at",
                params![run.0, gate.phase, status, open_at, gate.waived.join("\n"), at],
            )?;
        }
        Change::Event { task, kind, detail } => {
            event(transaction, at, run, task.as_deref(), None, kind, &detail)?;
        }
        Change::Expand { task, items } => {
            let listed = serde_json::to_string(&items).map_err(|error| {
                StoreError::Database(format!("items of task {task:?}: {error}"))
            })?;
            let count = cached_execute(
                transaction,
                "INSERT INTO expansions (run_id, task, items, item_count, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (run_id, task) DO NOTHING",
                params![run.0, task, listed, items.len() as i64, at],
            )?;
            if count > 0 {
                // Each item is a task run of its own (`box_scores[0021]`), in the parent's
                // phase, added in this same transaction: attempts, logs and the one-live-attempt
                // index work for items as for any task.
                // After the tasks the run already has, in the upstream task's order; the next
                // position is read once, so 10,000 items cost 10,000 inserts and no more.
                let first: i64 = transaction.query_row(
                    "SELECT coalesce(max(position) + 1, 0) FROM task_runs WHERE run_id = ?1",
                    params![run.0],
                    |row| row.get(0),
                )?;
                for (offset, item) in items.iter().enumerate() {
                    cached_execute(
                        transaction,
                        "INSERT OR IGNORE INTO task_runs (run_id, task, phase, position, state, updated_at)
                         SELECT ?1, ?2, parent.phase, ?3, ?4, ?5
                         FROM task_runs AS parent WHERE parent.run_id = ?1 AND parent.task = ?6",
                        params![
                            run.0,
                            keel_model::expand::item_task_name(&task, &item.key),
                            first + offset as i64,
                            TaskState::Pending.as_str(),
                            at,
                            task
                        ],
                    )?;
                }
                let detail = format!("{} items", items.len());
                event(
                    transaction,
                    at,
                    run,
                    Some(&task),
                    None,
                    EventKind::Expanded,
                    &detail,
                )?;
            }
        }
    }
    Ok(())
}

fn set_run_state_in(
    transaction: &Transaction<'_>,
    run: RunId,
    state: RunState,
    message: Option<String>,
    at: Millis,
) -> StoreResult<()> {
    let finished_at = state.is_finished().then_some(at);
    let changed = cached_execute(
        transaction,
        "UPDATE runs SET state = ?1, finished_at = ?2, message = ?3,
             cancel_requested = CASE WHEN ?1 = 'running' THEN 0 ELSE cancel_requested END
         WHERE id = ?4",
        params![state.as_str(), finished_at, message, run.0],
    )?;
    if changed == 0 {
        return Err(StoreError::NoSuchRun(run));
    }
    let detail = match &message {
        Some(message) => format!("{state}: {message}"),
        None => state.to_string(),
    };
    event(
        transaction,
        at,
        run,
        None,
        None,
        EventKind::RunState,
        &detail,
    )
}

fn record_sensor_poll_in(transaction: &Transaction<'_>, poll: SensorPoll) -> StoreResult<()> {
    let state = if poll.ready {
        TaskState::Pending
    } else {
        TaskState::Waiting
    };
    let changed = cached_execute(
        transaction,
        "UPDATE task_runs SET state = ?1, not_before = ?2, message = ?3, updated_at = ?4,
             first_started_at = coalesce(first_started_at, ?4), sensor_polls = sensor_polls + 1,
             sensor_errors = sensor_errors + ?7
         WHERE run_id = ?5 AND task = ?6 AND state <> 'running'",
        params![
            state.as_str(),
            poll.not_before,
            poll.message,
            poll.at,
            poll.run.0,
            poll.task,
            i64::from(poll.error)
        ],
    )?;
    if changed > 0 {
        let detail = match (poll.ready, poll.not_before) {
            (true, _) => "ready".to_string(),
            (false, Some(next)) if poll.error => format!("sensor error; next poll at {next}"),
            (false, Some(next)) => format!("not ready; next poll at {next}"),
            (false, None) => "not ready".to_string(),
        };
        event(
            transaction,
            poll.at,
            poll.run,
            Some(&poll.task),
            None,
            EventKind::SensorPolled,
            &detail,
        )?;
    }
    Ok(())
}

fn set_resource_state_in(
    transaction: &Transaction<'_>,
    resource: ResourceStateRecord,
) -> StoreResult<()> {
    cached_execute(
        transaction,
        "INSERT INTO resources (pipeline, name, state, detail, updated_at, open_since, open_until) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (pipeline, name) DO UPDATE SET state = excluded.state, detail = excluded.detail, updated_at = excluded.updated_at,
             open_since = excluded.open_since, open_until = excluded.open_until",
        params![resource.pipeline, resource.name, resource.state, resource.detail, resource.updated_at, resource.open_since, resource.open_until],
    )?;
    Ok(())
}

fn commit_one(transaction: &Transaction<'_>, write: Write, at: Millis) -> StoreResult<()> {
    match write {
        Write::Run { run, change } => apply_one(transaction, run, change, at),
        Write::RunState {
            run,
            state,
            message,
        } => set_run_state_in(transaction, run, state, message, at),
        Write::SensorPoll(poll) => record_sensor_poll_in(transaction, poll),
        Write::Resource(resource) => set_resource_state_in(transaction, resource),
        Write::Finish(finish) => finish_one(transaction, finish),
        Write::Started {
            attempt,
            epoch,
            pid,
        } => {
            mark_started_in(transaction, attempt, epoch, pid, at)?;
            Ok(())
        }
        Write::TaskVersion(change) => task_version_change_in(transaction, change, at),
    }
}

const TASK_VERSION_COLUMNS: &str =
    "pipeline, task, version, spec, status, clean, failed, reason, created_at, updated_at";

fn task_version_from_row(row: &Row<'_>) -> rusqlite::Result<TaskVersionRecord> {
    Ok(TaskVersionRecord {
        pipeline: row.get(0)?,
        task: row.get(1)?,
        version: row.get(2)?,
        spec: row.get(3)?,
        status: {
            let text: String = row.get(4)?;
            text.parse().map_err(|problem: String| {
                rusqlite::Error::FromSqlConversionFailure(
                    4,
                    rusqlite::types::Type::Text,
                    problem.into(),
                )
            })?
        },
        clean: row.get(5)?,
        failed: row.get(6)?,
        reason: row.get(7)?,
        created_at: row.get(8)?,
        updated_at: row.get(9)?,
    })
}

fn task_versions_in(
    transaction: &Transaction<'_>,
    pipeline: &str,
) -> StoreResult<Vec<TaskVersionRecord>> {
    select_all(
        transaction,
        &format!(
            "SELECT {TASK_VERSION_COLUMNS} FROM task_versions WHERE pipeline = ?1 ORDER BY task, created_at DESC, rowid DESC"
        ),
        [pipeline],
        task_version_from_row,
    )
}

fn task_version_change_in(
    transaction: &Transaction<'_>,
    change: TaskVersionChange,
    at: Millis,
) -> StoreResult<()> {
    cached_execute(
        transaction,
        "UPDATE task_versions SET status = ?1, clean = ?2, failed = ?3, reason = coalesce(?4, reason), updated_at = ?5
         WHERE pipeline = ?6 AND task = ?7 AND version = ?8",
        params![
            change.status.as_str(),
            change.clean,
            change.failed,
            change.reason,
            at,
            change.pipeline,
            change.task,
            change.version
        ],
    )?;
    if change.status == keel_model::VersionStatus::Promoted {
        retire_other_promoted(
            transaction,
            &change.pipeline,
            &change.task,
            &change.version,
            at,
        )?;
    }
    event(
        transaction,
        at,
        change.run,
        Some(&change.task),
        change.attempt,
        change.event,
        &change.detail,
    )
}

/// Every other promoted version of the task is retired: one version is promoted at a time.
fn retire_other_promoted(
    transaction: &Transaction<'_>,
    pipeline: &str,
    task: &str,
    version: &str,
    at: Millis,
) -> rusqlite::Result<usize> {
    cached_execute(
        transaction,
        "UPDATE task_versions SET status = 'retired', reason = 'replaced by version ' || ?3, updated_at = ?4
         WHERE pipeline = ?1 AND task = ?2 AND version <> ?3 AND status = 'promoted'",
        params![pipeline, task, version, at],
    )
}

fn register_task_versions_in(
    transaction: &Transaction<'_>,
    pipeline: &str,
    versions: Vec<NewTaskVersion>,
    at: Millis,
) -> StoreResult<Vec<TaskVersionRecord>> {
    for new in versions {
        let known: Option<String> = transaction
            .query_row(
                "SELECT status FROM task_versions WHERE pipeline = ?1 AND task = ?2 AND version = ?3",
                params![pipeline, new.task, new.version],
                |row| row.get(0),
            )
            .optional()?;
        match known.as_deref() {
            // A version promoted once and replaced since is what the file names again: going
            // back to it is a deployment of a version known to work, promoted at once.
            Some("retired") => {
                cached_execute(
                    transaction,
                    "UPDATE task_versions SET status = 'promoted', reason = 'the pipeline names it again', updated_at = ?4
                     WHERE pipeline = ?1 AND task = ?2 AND version = ?3",
                    params![pipeline, new.task, new.version, at],
                )?;
                retire_other_promoted(transaction, pipeline, &new.task, &new.version, at)?;
                continue;
            }
            Some(_) => continue,
            None => {}
        }
        let promoted: Option<String> = transaction
            .query_row(
                "SELECT version FROM task_versions WHERE pipeline = ?1 AND task = ?2 AND status = 'promoted'",
                params![pipeline, new.task],
                |row| row.get(0),
            )
            .optional()?;
        // A canary a newer version replaces never finished its rollout.
        cached_execute(
            transaction,
            "UPDATE task_versions SET status = 'retired', reason = 'replaced by version ' || ?3 || ' before it was promoted', updated_at = ?4
             WHERE pipeline = ?1 AND task = ?2 AND status = 'canary'",
            params![pipeline, new.task, new.version, at],
        )?;
        let (status, reason) = new_version_status(promoted.as_deref(), new.canary);
        cached_execute(
            transaction,
            "INSERT INTO task_versions (pipeline, task, version, spec, status, clean, failed, reason, created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, 0, 0, ?6, ?7, ?7)",
            params![pipeline, new.task, new.version, new.spec, status, reason, at],
        )?;
        if status == "promoted" {
            retire_other_promoted(transaction, pipeline, &new.task, &new.version, at)?;
        }
    }
    task_versions_in(transaction, pipeline)
}

fn set_task_version_status_in(
    transaction: &Transaction<'_>,
    pipeline: &str,
    task: &str,
    version: &str,
    status: keel_model::VersionStatus,
    reason: &str,
    at: Millis,
) -> StoreResult<()> {
    let before: Option<String> = transaction
        .query_row(
            "SELECT status FROM task_versions WHERE pipeline = ?1 AND task = ?2 AND version = ?3",
            params![pipeline, task, version],
            |row| row.get(0),
        )
        .optional()?;
    let Some(before) = before else {
        return Err(StoreError::Database(format!(
            "no version {version} of task {task:?} is recorded for pipeline {pipeline:?}"
        )));
    };
    cached_execute(
        transaction,
        "UPDATE task_versions SET status = ?1, reason = ?2, updated_at = ?3 WHERE pipeline = ?4 AND task = ?5 AND version = ?6",
        params![status.as_str(), reason, at, pipeline, task, version],
    )?;
    match status {
        keel_model::VersionStatus::Promoted => {
            retire_other_promoted(transaction, pipeline, task, version, at)?;
        }
        keel_model::VersionStatus::RolledBack if before == "promoted" => {
            // The version it replaced runs again.
            cached_execute(
                transaction,
                "UPDATE task_versions SET status = 'promoted', reason = 'promoted again: version ' || ?3 || ' was rolled back', updated_at = ?4
                 WHERE rowid = (SELECT rowid FROM task_versions WHERE pipeline = ?1 AND task = ?2 AND version <> ?3 AND status = 'retired'
                                ORDER BY updated_at DESC, rowid DESC LIMIT 1)",
                params![pipeline, task, version, at],
            )?;
        }
        _ => {}
    }
    let newest: Option<i64> = transaction
        .query_row(
            "SELECT max(id) FROM runs WHERE pipeline = ?1",
            [pipeline],
            |row| row.get(0),
        )
        .optional()?
        .flatten();
    if let Some(run) = newest {
        let kind = match status {
            keel_model::VersionStatus::Promoted => EventKind::RolloutPromoted,
            keel_model::VersionStatus::RolledBack => EventKind::RolloutRolledBack,
            keel_model::VersionStatus::Canary => EventKind::RolloutCanary,
            keel_model::VersionStatus::Retired => EventKind::RolloutPromoted,
        };
        event(
            transaction,
            at,
            RunId(run),
            Some(task),
            None,
            kind,
            &format!("version {version} {status} by hand: {reason}"),
        )?;
    }
    Ok(())
}

/// Records an attempt's start under its epoch; returns whether it changed (not when the attempt
/// already ended or its lease was taken over). An unknown pid keeps a known one.
fn mark_started_in(
    transaction: &Transaction<'_>,
    attempt: AttemptId,
    epoch: i64,
    pid: Option<u32>,
    at: Millis,
) -> rusqlite::Result<bool> {
    let changed = cached_execute(
        transaction,
        "UPDATE attempts SET pid = coalesce(?1, pid), started_at = ?2 WHERE id = ?3 AND lease_epoch = ?4 AND finished_at IS NULL",
        params![pid, at, attempt.0, epoch],
    )?;
    Ok(changed > 0)
}

fn list_runs_in(
    transaction: &Transaction<'_>,
    pipeline: String,
    partition: Option<String>,
    limit: u32,
) -> StoreResult<Vec<RunRecord>> {
    select_all(
        transaction,
        &format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE id IN (
                 SELECT max(id) FROM runs WHERE pipeline = ?1 AND (?2 IS NULL OR partition = ?2) GROUP BY partition, pass
             ) ORDER BY partition DESC, id DESC LIMIT ?3"
        ),
        params![pipeline, partition, limit],
        run_from_row,
    )
}

/// The runs a status query selects: `r` is the runs table; the parameters are ?1 pipeline, ?2
/// and ?3 the first and last partition, ?4 a task the run must have, ?5 one run id, ?6 a pass.
const SELECTED_RUNS: &str = "r.pipeline = ?1
     AND (?2 IS NULL OR r.partition >= ?2) AND (?3 IS NULL OR r.partition <= ?3)
     AND (?4 IS NULL OR EXISTS (SELECT 1 FROM task_runs t WHERE t.run_id = r.id AND t.task = ?4))
     AND (?5 IS NULL OR r.id = ?5)
     AND (?6 IS NULL OR r.pass = ?6)";

/// The newest selected run of each partition and pass.
fn newest_selected_runs() -> String {
    format!("SELECT max(r.id) FROM runs r WHERE {SELECTED_RUNS} GROUP BY r.partition, r.pass")
}

fn status_view_in(transaction: &Transaction<'_>, query: StatusQuery) -> StoreResult<StatusView> {
    let (from, to) = query.partitions.clone().unzip();
    let run = query.run.map(|run| run.0);
    let task = query.task.clone();
    let pass = query.pass.clone();
    let filter: [&dyn rusqlite::ToSql; 6] = [&query.pipeline, &from, &to, &task, &run, &pass];
    let selected = if query.every_run {
        format!("SELECT r.id FROM runs r WHERE {SELECTED_RUNS}")
    } else {
        newest_selected_runs()
    };
    // SQLite reads a negative limit as none.
    let limit = query.limit.map_or(-1, i64::from);
    let records = select_all(
        transaction,
        &format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE id IN ({selected}) ORDER BY partition DESC, id DESC LIMIT ?7"
        ),
        params![query.pipeline, from, to, task, run, pass, limit],
        run_from_row,
    )?;
    let total: i64 = transaction.query_row(
        &format!("SELECT count(*) FROM ({selected})"),
        filter,
        |row| row.get(0),
    )?;
    // The summary counts one run per partition: the pipeline's own, or the pass's asked for.
    let newest = select_all(
        transaction,
        &format!(
            "SELECT partition, state FROM runs WHERE id IN ({}) AND pass IS ?6 ORDER BY partition",
            newest_selected_runs()
        ),
        filter,
        |row| Ok((row.get::<_, String>(0)?, parse_column::<RunState>(row, 1)?)),
    )?
    .into_iter()
    .collect();
    let omitted = (total.max(0) as u64).saturating_sub(records.len() as u64);
    let mut runs = Vec::with_capacity(records.len());
    for record in records {
        let mut tasks = task_runs_in(transaction, record.id)?;
        let mut attempts = attempts_in(transaction, record.id)?;
        if let Some(task) = &query.task {
            tasks.retain(|row| crate::records::is_row_of(&row.task, task));
            attempts.retain(|attempt| attempt.task == *task);
        }
        let shown: std::collections::HashSet<AttemptId> =
            attempts.iter().map(|attempt| attempt.id).collect();
        let kinds = select_all(
            transaction,
            "SELECT id, outcome, charged FROM attempts WHERE run_id = ?1",
            [record.id.0],
            |row| {
                let outcome = parse_optional::<Outcome>(row, 1)?;
                let charged = row.get::<_, Option<i64>>(2)?.map(|charged| charged != 0);
                Ok((AttemptId(row.get(0)?), AttemptKind::of(outcome, charged)))
            },
        )?
        .into_iter()
        .filter(|(id, _)| shown.contains(id))
        .collect();
        let accepted = transaction
            .query_row(
                "SELECT detail FROM events WHERE run_id = ?1 AND kind = ?2 AND seq > \
                 coalesce((SELECT max(seq) FROM events WHERE run_id = ?1 AND kind = ?3), 0) \
                 ORDER BY seq DESC LIMIT 1",
                params![
                    record.id.0,
                    EventKind::Accepted.as_str(),
                    EventKind::RunState.as_str()
                ],
                |row| row.get::<_, String>(0),
            )
            .optional()?;
        runs.push(RunView {
            record,
            tasks,
            attempts,
            kinds,
            accepted,
        });
    }
    let flags = flags_in(transaction, &query.pipeline)?;
    let rollouts = task_versions_in(transaction, &query.pipeline)?
        .into_iter()
        .filter(|record| {
            matches!(
                record.status,
                keel_model::VersionStatus::Canary | keel_model::VersionStatus::RolledBack
            )
        })
        .collect();
    let resources = resource_states_in(transaction, query.pipeline)?;
    Ok(StatusView {
        runs,
        resources,
        omitted,
        newest,
        flags,
        rollouts,
    })
}

fn flags_in(transaction: &Transaction<'_>, pipeline: &str) -> StoreResult<Vec<FlagRecord>> {
    select_all(
        transaction,
        "SELECT pipeline, task, state, set_at, set_by FROM flags WHERE pipeline = ?1 ORDER BY task",
        [pipeline],
        |row| {
            Ok(FlagRecord {
                pipeline: row.get(0)?,
                task: row.get(1)?,
                state: row.get(2)?,
                set_at: row.get(3)?,
                set_by: row.get(4)?,
            })
        },
    )
}

fn task_runs_in(transaction: &Transaction<'_>, run: RunId) -> StoreResult<Vec<TaskRunRecord>> {
    select_all(
        transaction,
        &format!("SELECT {TASK_COLUMNS} FROM task_runs WHERE run_id = ?1 ORDER BY position"),
        [run.0],
        task_from_row,
    )
}

fn attempts_in(transaction: &Transaction<'_>, run: RunId) -> StoreResult<Vec<AttemptRecord>> {
    select_all(
        transaction,
        &format!("SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE run_id = ?1 ORDER BY id"),
        [run.0],
        attempt_from_row,
    )
}

fn resource_states_in(
    transaction: &Transaction<'_>,
    pipeline: String,
) -> StoreResult<Vec<ResourceStateRecord>> {
    select_all(
        transaction,
        "SELECT pipeline, name, state, detail, updated_at, open_since, open_until FROM resources WHERE pipeline = ?1 ORDER BY name",
        [pipeline],
        |row| {
            Ok(ResourceStateRecord {
                pipeline: row.get(0)?,
                name: row.get(1)?,
                state: row.get(2)?,
                detail: row.get(3)?,
                updated_at: row.get(4)?,
                open_since: row.get(5)?,
                open_until: row.get(6)?,
            })
        },
    )
}

impl Store for SqliteStore {
    fn store_id(&self) -> &str {
        &self.store_id
    }

    async fn create_run(&self, new_run: NewRun) -> StoreResult<RunRecord> {
        self.transact(move |transaction| insert_run(transaction, &new_run))
            .await
    }

    async fn create_run_for_fire(
        &self,
        new_run: NewRun,
        fire: ScheduleFire,
        gates: Vec<Change>,
    ) -> StoreResult<FireOutcome> {
        self.transact(move |transaction| {
            let recorded: Option<i64> = transaction
                .query_row(
                    "SELECT run_id FROM schedule_fires WHERE pipeline = ?1 AND trigger = ?2 AND fire_at = ?3",
                    params![new_run.pipeline, fire.trigger, fire.fire_at],
                    |row| row.get(0),
                )
                .optional()?;
            if let Some(run) = recorded {
                return Ok(FireOutcome::AlreadyFired(RunId(run)));
            }
            let unfinished: Option<i64> = transaction
                .query_row(
                    "SELECT id FROM runs WHERE pipeline = ?1 AND partition = ?2 AND pass IS ?3 AND finished_at IS NULL ORDER BY id DESC LIMIT 1",
                    params![new_run.pipeline, new_run.partition, new_run.pass],
                    |row| row.get(0),
                )
                .optional()?;
            let outcome = match unfinished {
                Some(run) => FireOutcome::Joined(RunId(run)),
                None => {
                    let run = insert_run(transaction, &new_run)?.id;
                    for change in gates {
                        apply_one(transaction, run, change, new_run.at)?;
                    }
                    FireOutcome::Created(run)
                }
            };
            let run = match outcome {
                FireOutcome::Created(run) | FireOutcome::Joined(run) | FireOutcome::AlreadyFired(run) => run,
            };
            cached_execute(
                transaction,
                "INSERT INTO schedule_fires (pipeline, trigger, fire_at, partition, run_id) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![new_run.pipeline, fire.trigger, fire.fire_at, new_run.partition, run.0],
            )?;
            Ok(outcome)
        })
        .await
    }

    async fn last_fire(&self, pipeline: &str, trigger: &str) -> StoreResult<Option<Millis>> {
        let (pipeline, trigger) = (pipeline.to_string(), trigger.to_string());
        self.transact(move |transaction| {
            Ok(transaction.query_row(
                "SELECT MAX(fire_at) FROM schedule_fires WHERE pipeline = ?1 AND trigger = ?2",
                params![pipeline, trigger],
                |row| row.get(0),
            )?)
        })
        .await
    }

    async fn run(&self, run: RunId) -> StoreResult<RunRecord> {
        self.transact(move |transaction| load_run(transaction, run))
            .await
    }

    async fn latest_run_of(
        &self,
        pipeline: &str,
        partition: &str,
        pass: Option<&str>,
    ) -> StoreResult<Option<RunRecord>> {
        let (pipeline, partition) = (pipeline.to_string(), partition.to_string());
        let pass = pass.map(str::to_string);
        self.transact(move |transaction| {
            Ok(transaction
                .query_row(
                    &format!("SELECT {RUN_COLUMNS} FROM runs WHERE pipeline = ?1 AND partition = ?2 AND pass IS ?3 ORDER BY id DESC LIMIT 1"),
                    params![pipeline, partition, pass],
                    run_from_row,
                )
                .optional()?)
        })
        .await
    }

    async fn list_runs(
        &self,
        pipeline: &str,
        partition: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<RunRecord>> {
        let (pipeline, partition) = (pipeline.to_string(), partition.map(str::to_string));
        self.transact(move |transaction| list_runs_in(transaction, pipeline, partition, limit))
            .await
    }

    async fn unfinished_runs(&self, pipeline: &str) -> StoreResult<Vec<RunRecord>> {
        let pipeline = pipeline.to_string();
        self.transact(move |transaction| {
            select_all(transaction, &format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE pipeline = ?1 AND finished_at IS NULL ORDER BY id"
            ), [pipeline], run_from_row)
        })
        .await
    }

    async fn status_view(&self, query: &StatusQuery) -> StoreResult<StatusView> {
        let query = query.clone();
        self.transact(move |transaction| status_view_in(transaction, query))
            .await
    }

    async fn task_runs(&self, run: RunId) -> StoreResult<Vec<TaskRunRecord>> {
        self.transact(move |transaction| task_runs_in(transaction, run))
            .await
    }

    async fn attempts(&self, run: RunId) -> StoreResult<Vec<AttemptRecord>> {
        self.transact(move |transaction| attempts_in(transaction, run))
            .await
    }

    async fn live_attempts(&self, pipeline: &str) -> StoreResult<Vec<AttemptRecord>> {
        let pipeline = pipeline.to_string();
        self.transact(move |transaction| {
            select_all(transaction, &format!(
                "SELECT {ATTEMPT_COLUMNS} FROM attempts WHERE pipeline = ?1 AND finished_at IS NULL ORDER BY id"
            ), [pipeline], attempt_from_row)
        })
        .await
    }

    async fn events(&self, run: RunId) -> StoreResult<Vec<EventRecord>> {
        self.transact(move |transaction| {
            select_all(
                transaction,
                "SELECT seq, at, run_id, task, attempt_id, kind, detail FROM events WHERE run_id = ?1 ORDER BY seq",
                [run.0],
                event_from_row,
            )
        })
        .await
    }

    async fn events_after(&self, after: i64, limit: u32) -> StoreResult<Vec<EventRecord>> {
        self.transact(move |transaction| {
            select_all(
                transaction,
                "SELECT seq, at, run_id, task, attempt_id, kind, detail FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                params![after, limit],
                event_from_row,
            )
        })
        .await
    }

    async fn recent_events(
        &self,
        pipeline: &str,
        kinds: Vec<EventKind>,
        limit: u32,
    ) -> StoreResult<Vec<EventRecord>> {
        let pipeline = pipeline.to_string();
        self.transact(move |transaction| {
            let mut kinds: Vec<&'static str> = kinds.iter().map(|kind| kind.as_str()).collect();
            kinds.sort_unstable();
            kinds.dedup();
            if kinds.is_empty() || limit == 0 {
                return Ok(Vec::new());
            }
            // One bound parameter per kind: the statement differs only by how many there are,
            // so the cache holds a handful of them at most.
            let placeholders: Vec<String> =
                (0..kinds.len()).map(|index| format!("?{}", index + 3)).collect();
            let sql = format!(
                "SELECT e.seq, e.at, e.run_id, e.task, e.attempt_id, e.kind, e.detail FROM events e \
                 JOIN runs r ON r.id = e.run_id \
                 WHERE e.kind IN ({}) AND r.pipeline = ?1 ORDER BY e.seq DESC LIMIT ?2",
                placeholders.join(", ")
            );
            let mut values: Vec<rusqlite::types::Value> = vec![
                rusqlite::types::Value::Text(pipeline),
                rusqlite::types::Value::Integer(i64::from(limit)),
            ];
            values.extend(
                kinds
                    .iter()
                    .map(|kind| rusqlite::types::Value::Text(kind.to_string())),
            );
            select_all(
                transaction,
                &sql,
                rusqlite::params_from_iter(values),
                event_from_row,
            )
        })
        .await
    }

    async fn renew_leases(
        &self,
        renewals: Vec<(AttemptId, i64)>,
        expires_at: Millis,
    ) -> StoreResult<Vec<StoreResult<()>>> {
        self.transact(move |transaction| {
            let mut results = Vec::with_capacity(renewals.len());
            for (attempt, epoch) in renewals {
                let changed = cached_execute(
                    transaction,
                    "UPDATE attempts SET lease_expires_at = max(lease_expires_at, ?1)
                     WHERE id = ?2 AND lease_epoch = ?3 AND finished_at IS NULL",
                    params![expires_at, attempt.0, epoch],
                )?;
                results.push(if changed == 0 {
                    Err(StoreError::StaleLease { attempt, epoch })
                } else {
                    Ok(())
                });
            }
            Ok(results)
        })
        .await
    }

    async fn expired_leases(&self, pipeline: &str, now: Millis) -> StoreResult<Vec<AttemptRecord>> {
        let pipeline = pipeline.to_string();
        self.transact(move |transaction| {
            select_all(
                transaction,
                &format!(
                    "SELECT {ATTEMPT_COLUMNS} FROM attempts
                     WHERE pipeline = ?1 AND finished_at IS NULL AND lease_expires_at < ?2 ORDER BY id"
                ),
                params![pipeline, now],
                attempt_from_row,
            )
        })
        .await
    }

    async fn claim_attempts(
        &self,
        claims: Vec<ClaimAttempt>,
    ) -> StoreResult<Vec<StoreResult<AttemptRecord>>> {
        self.transact(move |transaction| {
            let mut results = Vec::with_capacity(claims.len());
            for claim in claims {
                match claim_one(transaction, claim) {
                    Err(StoreError::Database(error)) => return Err(StoreError::Database(error)),
                    result => results.push(result),
                }
            }
            Ok(results)
        })
        .await
    }

    async fn mark_attempts_started(
        &self,
        started: Vec<(AttemptId, i64, Option<u32>)>,
        at: Millis,
    ) -> StoreResult<Vec<StoreResult<()>>> {
        self.transact(move |transaction| {
            let mut results = Vec::with_capacity(started.len());
            for (attempt, epoch, pid) in started {
                let changed = mark_started_in(transaction, attempt, epoch, pid, at)?;
                results.push(if changed {
                    Ok(())
                } else {
                    Err(StoreError::StaleLease { attempt, epoch })
                });
            }
            Ok(results)
        })
        .await
    }

    async fn take_over_attempt(
        &self,
        attempt: AttemptId,
        new_owner: &str,
        at: Millis,
    ) -> StoreResult<i64> {
        let new_owner = new_owner.to_string();
        self.transact(move |transaction| {
            let record = load_attempt(transaction, attempt)?;
            if record.finished_at.is_some() {
                return Err(StoreError::StaleLease { attempt, epoch: record.lease_epoch });
            }
            cached_execute(
        transaction,
                "UPDATE task_runs SET lease_epoch = lease_epoch + 1, updated_at = ?1 WHERE run_id = ?2 AND task = ?3",
                params![at, record.run.0, record.task],
            )?;
            let epoch: i64 = cached_query_row(transaction,
                "SELECT lease_epoch FROM task_runs WHERE run_id = ?1 AND task = ?2",
                params![record.run.0, record.task],
                |row| row.get(0),
            )?;
            cached_execute(
        transaction,
                "UPDATE attempts SET lease_owner = ?1, lease_epoch = ?2 WHERE id = ?3",
                params![new_owner, epoch, attempt.0],
            )?;
            let detail = format!("epoch {} → {epoch}, owner {} → {new_owner}", record.lease_epoch, record.lease_owner);
            event(transaction, at, record.run, Some(&record.task), Some(attempt), EventKind::LeaseTakenOver, &detail)?;
            Ok(epoch)
        })
        .await
    }

    async fn finish_attempts(
        &self,
        finishes: Vec<FinishAttempt>,
    ) -> StoreResult<Vec<StoreResult<()>>> {
        self.transact(move |transaction| {
            let mut results = Vec::with_capacity(finishes.len());
            for finish in finishes {
                match finish_one(transaction, finish) {
                    Err(StoreError::Database(error)) => return Err(StoreError::Database(error)),
                    result => results.push(result),
                }
            }
            Ok(results)
        })
        .await
    }

    async fn add_tasks(
        &self,
        run: RunId,
        tasks: Vec<(String, String)>,
        at: Millis,
    ) -> StoreResult<usize> {
        self.transact(move |transaction| {
            load_run(transaction, run)?;
            let mut added = 0;
            for (task, phase) in tasks {
                // After the tasks the run already has, in the order given.
                let count = cached_execute(
                    transaction,
                    "INSERT OR IGNORE INTO task_runs (run_id, task, phase, position, state, updated_at)
                     SELECT ?1, ?2, ?3, coalesce(max(position) + 1, 0), ?4, ?5 FROM task_runs WHERE run_id = ?1",
                    params![run.0, task, phase, TaskState::Pending.as_str(), at],
                )?;
                if count > 0 {
                    added += count;
                    let detail = format!(
                        "phase {phase}: added to the run; the pipeline file gained it after the run was created"
                    );
                    event(transaction, at, run, Some(&task), None, EventKind::TaskAdded, &detail)?;
                }
            }
            Ok(added)
        })
        .await
    }

    async fn update_tasks(
        &self,
        run: RunId,
        changes: Vec<TaskChange>,
        at: Millis,
    ) -> StoreResult<usize> {
        self.transact(move |transaction| {
            load_run(transaction, run)?;
            let mut changed = 0;
            for change in changes {
                changed += change_task(transaction, run, &change, at)?;
            }
            Ok(changed)
        })
        .await
    }

    async fn commit(&self, writes: Vec<Write>, at: Millis) -> StoreResult<()> {
        self.transact(move |transaction| {
            for write in writes {
                commit_one(transaction, write, at)?;
            }
            Ok(())
        })
        .await
    }

    async fn apply(&self, run: RunId, changes: Vec<Change>, at: Millis) -> StoreResult<()> {
        self.transact(move |transaction| {
            load_run(transaction, run)?;
            for change in changes {
                apply_one(transaction, run, change, at)?;
            }
            Ok(())
        })
        .await
    }

    async fn expansions(&self, run: RunId) -> StoreResult<Vec<ExpansionRecord>> {
        self.transact(move |transaction| {
            let rows = select_all(
                transaction,
                "SELECT task, items, created_at FROM expansions WHERE run_id = ?1 ORDER BY task",
                [run.0],
                |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, Millis>(2)?,
                    ))
                },
            )?;
            rows.into_iter()
                .map(|(task, listed, created_at)| {
                    let items = serde_json::from_str(&listed).map_err(|error| {
                        StoreError::Database(format!(
                            "the stored items of task {task:?} of run {run} do not read back: {error}"
                        ))
                    })?;
                    Ok(ExpansionRecord {
                        task,
                        items,
                        created_at,
                    })
                })
                .collect()
        })
        .await
    }

    async fn gates(&self, run: RunId) -> StoreResult<Vec<GateRecord>> {
        self.transact(move |transaction| {
            select_all(
                transaction,
                "SELECT phase, status, open_at, waived FROM gates WHERE run_id = ?1 ORDER BY phase",
                [run.0],
                |row| {
                    let status: String = row.get(1)?;
                    let open_at: Option<Millis> = row.get(2)?;
                    let waived: String = row.get(3)?;
                    Ok(GateRecord {
                        phase: row.get(0)?,
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
                },
            )
        })
        .await
    }

    async fn set_run_state(
        &self,
        run: RunId,
        state: RunState,
        message: Option<String>,
        at: Millis,
    ) -> StoreResult<()> {
        self.transact(move |transaction| set_run_state_in(transaction, run, state, message, at))
            .await
    }

    async fn request_cancel(&self, run: RunId, at: Millis) -> StoreResult<()> {
        self.transact(move |transaction| {
            let changed = cached_execute(
                transaction,
                "UPDATE runs SET cancel_requested = 1 WHERE id = ?1",
                [run.0],
            )?;
            if changed == 0 {
                return Err(StoreError::NoSuchRun(run));
            }
            event(
                transaction,
                at,
                run,
                None,
                None,
                EventKind::CancelRequested,
                "",
            )
        })
        .await
    }

    async fn record_sensor_poll(&self, poll: SensorPoll) -> StoreResult<()> {
        self.transact(move |transaction| record_sensor_poll_in(transaction, poll))
            .await
    }

    async fn set_resource_state(&self, resource: ResourceStateRecord) -> StoreResult<()> {
        self.transact(move |transaction| set_resource_state_in(transaction, resource))
            .await
    }

    async fn attempt_starts_since(
        &self,
        pipeline: &str,
        since: Millis,
    ) -> StoreResult<Vec<(String, Millis)>> {
        let pipeline = pipeline.to_string();
        self.transact(move |transaction| {
            select_all(
                transaction,
                "SELECT task, claimed_at FROM attempts WHERE pipeline = ?1 AND claimed_at >= ?2 ORDER BY claimed_at, id",
                params![pipeline, since],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
        })
        .await
    }

    async fn resource_states(&self, pipeline: &str) -> StoreResult<Vec<ResourceStateRecord>> {
        let pipeline = pipeline.to_string();
        self.transact(move |transaction| resource_states_in(transaction, pipeline))
            .await
    }

    async fn set_flag(&self, flag: FlagRecord) -> StoreResult<()> {
        self.transact(move |transaction| {
            cached_execute(
                transaction,
                "INSERT INTO flags (pipeline, task, state, set_at, set_by) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (pipeline, task) DO UPDATE SET state = excluded.state, set_at = excluded.set_at, set_by = excluded.set_by",
                params![flag.pipeline, flag.task, flag.state, flag.set_at, flag.set_by],
            )?;
            Ok(())
        })
        .await
    }

    async fn clear_flag(&self, pipeline: &str, task: &str) -> StoreResult<bool> {
        let (pipeline, task) = (pipeline.to_string(), task.to_string());
        self.transact(move |transaction| {
            let removed = cached_execute(
                transaction,
                "DELETE FROM flags WHERE pipeline = ?1 AND task = ?2",
                params![pipeline, task],
            )?;
            Ok(removed > 0)
        })
        .await
    }

    async fn flags(&self, pipeline: &str) -> StoreResult<Vec<FlagRecord>> {
        let pipeline = pipeline.to_string();
        self.transact(move |transaction| flags_in(transaction, &pipeline))
            .await
    }

    async fn register_task_versions(
        &self,
        pipeline: &str,
        versions: Vec<NewTaskVersion>,
        at: Millis,
    ) -> StoreResult<Vec<TaskVersionRecord>> {
        let pipeline = pipeline.to_string();
        self.transact(move |transaction| {
            register_task_versions_in(transaction, &pipeline, versions, at)
        })
        .await
    }

    async fn task_versions(&self, pipeline: &str) -> StoreResult<Vec<TaskVersionRecord>> {
        let pipeline = pipeline.to_string();
        self.transact(move |transaction| task_versions_in(transaction, &pipeline))
            .await
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
        let (pipeline, task, version, reason) = (
            pipeline.to_string(),
            task.to_string(),
            version.to_string(),
            reason.to_string(),
        );
        self.transact(move |transaction| {
            set_task_version_status_in(transaction, &pipeline, &task, &version, status, &reason, at)
        })
        .await
    }

    async fn append_event(&self, new_event: NewEvent) -> StoreResult<()> {
        self.transact(move |transaction| {
            event(
                transaction,
                new_event.at,
                new_event.run,
                new_event.task.as_deref(),
                new_event.attempt,
                new_event.kind,
                &new_event.detail,
            )
        })
        .await
    }
}
