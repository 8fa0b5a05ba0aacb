//! The work queue of distributed workers: the active scheduler queues each attempt as a row of
//! `keel_work`, workers on any machine claim rows with `FOR UPDATE SKIP LOCKED`, keep their
//! leases alive by heartbeat and record each result under the claim's epoch. The scheduler
//! reaps a lease that was not renewed in time: the row is done as lost and its epoch bumped, so
//! the worker that let it lapse can no longer write.
//!
//! Times are milliseconds since the Unix epoch, passed in by the caller (never read from the
//! database's clock), so the lease rules run on whatever clock the caller injects.
//!
//! What a row's payload and report hold is the caller's business: this module stores text.

use sqlx::postgres::PgListener;

use super::*;

/// The channel a new row or a cancel is announced on.
const WORK_CHANNEL: &str = "keel_work";
/// The payload of a notice on [`WORK_CHANNEL`] that says a claimed row was asked to stop;
/// a notice of queued rows has none.
const CANCEL_NOTICE: &str = "cancel";
/// The channel a finished row is announced on.
const DONE_CHANNEL: &str = "keel_work_done";

/// Where a row of the queue stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkState {
    Queued,
    Claimed,
    Done,
}

impl WorkState {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkState::Queued => "queued",
            WorkState::Claimed => "claimed",
            WorkState::Done => "done",
        }
    }

    fn parse(text: &str) -> StoreResult<WorkState> {
        match text {
            "queued" => Ok(WorkState::Queued),
            "claimed" => Ok(WorkState::Claimed),
            "done" => Ok(WorkState::Done),
            other => Err(StoreError::Database(format!(
                "keel_work holds the unknown state {other:?}"
            ))),
        }
    }
}

/// A row a worker claimed: what to run, and the epoch its result must be recorded under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkItem {
    pub id: i64,
    pub key: String,
    pub payload: String,
    pub claim_epoch: i64,
}

/// A row as the scheduler reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkRow {
    pub id: i64,
    pub key: String,
    pub state: WorkState,
    pub worker: Option<String>,
    pub claim_epoch: i64,
    pub lease_until: Option<Millis>,
    pub report: Option<String>,
    pub log: Option<String>,
}

/// What a worker's heartbeat found for the rows it holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaseRenewal {
    /// Renewed, and asked to stop.
    pub cancelled: Vec<i64>,
    /// No longer this worker's under the epoch it holds: reaped, so it must stop and not write.
    pub lost: Vec<i64>,
}

/// A worker as it registered itself, with the leases it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerRecord {
    pub id: String,
    pub host: String,
    pub pid: i64,
    pub slots: i64,
    pub started_at: Millis,
    pub heartbeat_at: Millis,
    pub running: i64,
    pub stopped_at: Option<Millis>,
    /// `(key, lease_until)` of each row it holds.
    pub leases: Vec<(String, Millis)>,
}

/// The whole cluster: every worker that ever registered, newest heartbeat first, and the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterView {
    pub workers: Vec<WorkerRecord>,
    pub queued: i64,
    pub claimed: i64,
    pub done: i64,
    /// Rows whose lease lapsed and was reaped (their attempts ended `lost`).
    pub reaped: i64,
}

/// The queue, on a pool of its own. Cloning shares the pool.
#[derive(Clone)]
pub struct WorkQueue {
    pool: PgPool,
    url: Arc<PostgresUrl>,
    options: Arc<PgConnectOptions>,
}

impl std::fmt::Debug for WorkQueue {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("WorkQueue")
            .field("url", &self.url)
            .finish()
    }
}

impl PostgresStore {
    /// The work queue of this state, on a pool of `connections` of its own (made as they are
    /// needed, by the runtime that first uses them).
    pub fn work_queue(&self, connections: u32) -> WorkQueue {
        WorkQueue {
            pool: new_pool(
                &self.options,
                PostgresConfig {
                    max_connections: connections,
                },
            ),
            url: self.url.clone(),
            options: self.options.clone(),
        }
    }
}

impl WorkQueue {
    fn unreachable(&self, error: sqlx::Error) -> StoreError {
        StoreError::Unreachable {
            location: self.url.to_string(),
            detail: self.url.scrub(&error.to_string()),
        }
    }

    /// Queues `payload` under `key` (an attempt's, unique) and tells listening workers. A key
    /// already queued is left as it is.
    pub async fn enqueue(&self, key: &str, payload: &str, now: Millis) -> StoreResult<()> {
        self.enqueue_many(&[(key, payload)], now).await
    }

    /// Queues every `(key, payload)` in one statement, in their order (the order workers claim
    /// them in), with one notice for the lot. A key already queued, or named twice here, keeps
    /// its first payload. Returns once the rows are committed, or the statement failed (then
    /// none of them is queued).
    pub async fn enqueue_many(&self, rows: &[(&str, &str)], now: Millis) -> StoreResult<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let keys: Vec<&str> = rows.iter().map(|(key, _)| *key).collect();
        let payloads: Vec<&str> = rows.iter().map(|(_, payload)| *payload).collect();
        // One round trip: a data-modifying WITH runs once whether or not it is read; the notice
        // goes out only when a row was queued (a key queued again was announced the first time).
        sqlx::query(
            "WITH queued AS (
                 INSERT INTO keel_work (key, payload, state, queued_at)
                 SELECT j.key, j.payload, 'queued', $3
                 FROM unnest($1::TEXT[], $2::TEXT[]) WITH ORDINALITY AS j(key, payload, position)
                 ORDER BY j.position
                 ON CONFLICT (key) DO NOTHING
                 RETURNING 1)
             SELECT pg_notify($4, '') WHERE EXISTS (SELECT 1 FROM queued)",
        )
        .bind(&keys)
        .bind(&payloads)
        .bind(now)
        .bind(WORK_CHANNEL)
        .execute(&self.pool)
        .await
        .map_err(|error| self.unreachable(error))?;
        Ok(())
    }

    async fn notify(&self, channel: &str, payload: &str) -> StoreResult<()> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(channel)
            .bind(payload)
            .execute(&self.pool)
            .await
            .map_err(|error| self.unreachable(error))?;
        Ok(())
    }

    /// Claims up to `limit` queued rows, oldest first, for `worker`, leased until `now +
    /// lease`. Rows other workers are claiming at the same moment are skipped, not waited for.
    pub async fn claim(
        &self,
        worker: &str,
        limit: u32,
        now: Millis,
        lease: Millis,
    ) -> StoreResult<Vec<WorkItem>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "UPDATE keel_work SET state = 'claimed', worker = $1, claimed_at = $2, lease_until = $3
             WHERE id IN (SELECT id FROM keel_work WHERE state = 'queued' ORDER BY id
                          FOR UPDATE SKIP LOCKED LIMIT $4)
             RETURNING id, key, payload, claim_epoch",
        )
        .bind(worker)
        .bind(now)
        .bind(now + lease)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|error| self.unreachable(error))?;
        let mut items = rows
            .iter()
            .map(|row| {
                Ok(WorkItem {
                    id: get(row, 0)?,
                    key: get(row, 1)?,
                    payload: get(row, 2)?,
                    claim_epoch: get(row, 3)?,
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        items.sort_by_key(|item| item.id);
        Ok(items)
    }

    /// Renews the leases `worker` holds, as `(id, claim_epoch)`, until `now + lease`, and
    /// stamps its heartbeat. Says which rows were asked to stop and which it no longer holds.
    pub async fn renew(
        &self,
        worker: &str,
        held: &[(i64, i64)],
        now: Millis,
        lease: Millis,
    ) -> StoreResult<LeaseRenewal> {
        let ids: Vec<i64> = held.iter().map(|(id, _)| *id).collect();
        let epochs: Vec<i64> = held.iter().map(|(_, epoch)| *epoch).collect();
        let mut transaction = self
            .pool
            .begin()
            .await
            .map_err(|error| self.unreachable(error))?;
        let rows = sqlx::query(
            "UPDATE keel_work w SET lease_until = $2
             FROM unnest($3::BIGINT[], $4::BIGINT[]) AS h(id, epoch)
             WHERE w.id = h.id AND w.claim_epoch = h.epoch AND w.state = 'claimed' AND w.worker = $1
             RETURNING w.id, w.cancel",
        )
        .bind(worker)
        .bind(now + lease)
        .bind(&ids)
        .bind(&epochs)
        .fetch_all(&mut *transaction)
        .await?;
        sqlx::query("UPDATE keel_workers SET heartbeat_at = $2, running = $3 WHERE id = $1")
            .bind(worker)
            .bind(now)
            .bind(held.len() as i64)
            .execute(&mut *transaction)
            .await?;
        transaction
            .commit()
            .await
            .map_err(|error| self.unreachable(error))?;
        let mut renewal = LeaseRenewal::default();
        let mut kept = std::collections::HashSet::new();
        for row in &rows {
            let id: i64 = get(row, 0)?;
            let cancel: bool = get(row, 1)?;
            kept.insert(id);
            if cancel {
                renewal.cancelled.push(id);
            }
        }
        renewal.lost = ids.into_iter().filter(|id| !kept.contains(id)).collect();
        Ok(renewal)
    }

    /// Records a claimed row's end, only under the epoch it was claimed with: false when the
    /// claim was reaped meanwhile (the result is then not recorded).
    pub async fn finish(
        &self,
        id: i64,
        claim_epoch: i64,
        report: &str,
        log: &str,
        now: Millis,
    ) -> StoreResult<bool> {
        let recorded = self
            .finish_many(&[(id, claim_epoch, report, log)], now)
            .await?;
        Ok(recorded == [id])
    }

    /// Records the ends of claimed rows, `(id, claim_epoch, report, log)` each, in one
    /// statement, each only under the epoch it was claimed with, with one notice if any was
    /// recorded. Returns the ids recorded; the others were reaped meanwhile (or already done)
    /// and are not recorded. A failed call records none of them.
    pub async fn finish_many(
        &self,
        results: &[(i64, i64, &str, &str)],
        now: Millis,
    ) -> StoreResult<Vec<i64>> {
        if results.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = results.iter().map(|result| result.0).collect();
        let epochs: Vec<i64> = results.iter().map(|result| result.1).collect();
        let reports: Vec<&str> = results.iter().map(|result| result.2).collect();
        let logs: Vec<&str> = results.iter().map(|result| result.3).collect();
        // One round trip. `pg_notify` runs once per recorded row, but PostgreSQL delivers a
        // transaction's identical notices once: one notice for the batch, none if nothing
        // changed. DISTINCT ON keeps one result per row should the caller name a row twice.
        let rows = sqlx::query(
            "WITH finished AS (
                 UPDATE keel_work w SET state = 'done', report = r.report, log = r.log,
                     finished_at = $5, lease_until = NULL
                 FROM (SELECT DISTINCT ON (id) id, epoch, report, log
                       FROM unnest($1::BIGINT[], $2::BIGINT[], $3::TEXT[], $4::TEXT[])
                           AS u(id, epoch, report, log)) AS r
                 WHERE w.id = r.id AND w.claim_epoch = r.epoch AND w.state = 'claimed'
                 RETURNING w.id)
             SELECT id, pg_notify($6, '') FROM finished ORDER BY id",
        )
        .bind(&ids)
        .bind(&epochs)
        .bind(&reports)
        .bind(&logs)
        .bind(now)
        .bind(DONE_CHANNEL)
        .fetch_all(&self.pool)
        .await
        .map_err(|error| self.unreachable(error))?;
        rows.iter().map(|row| get(row, 0)).collect()
    }

    /// Ends every claimed row whose lease ran out before `now` with `report` (the caller's
    /// "lost"), bumping its epoch so the worker that held it cannot record anything. Returns
    /// the keys reaped.
    pub async fn reap(&self, now: Millis, report: &str) -> StoreResult<Vec<String>> {
        let keys: Vec<String> = sqlx::query_scalar(
            "UPDATE keel_work SET state = 'done', claim_epoch = claim_epoch + 1, report = $2,
                 finished_at = $1, lease_until = NULL
             WHERE state = 'claimed' AND lease_until < $1
             RETURNING key",
        )
        .bind(now)
        .bind(report)
        .fetch_all(&self.pool)
        .await
        .map_err(|error| self.unreachable(error))?;
        if !keys.is_empty() {
            self.notify(DONE_CHANNEL, "").await?;
        }
        Ok(keys)
    }

    /// Asks the row of `key` to stop: a queued row ends at once with `report` (no worker has
    /// it); a claimed one is flagged, and its worker stops it at its next heartbeat or notice.
    pub async fn cancel(&self, key: &str, report: &str, now: Millis) -> StoreResult<()> {
        let mut transaction = self
            .pool
            .begin()
            .await
            .map_err(|error| self.unreachable(error))?;
        sqlx::query(
            "UPDATE keel_work SET state = 'done', report = $2, finished_at = $3
             WHERE key = $1 AND state = 'queued'",
        )
        .bind(key)
        .bind(report)
        .bind(now)
        .execute(&mut *transaction)
        .await?;
        sqlx::query("UPDATE keel_work SET cancel = TRUE WHERE key = $1 AND state = 'claimed'")
            .bind(key)
            .execute(&mut *transaction)
            .await?;
        transaction
            .commit()
            .await
            .map_err(|error| self.unreachable(error))?;
        self.notify(WORK_CHANNEL, CANCEL_NOTICE).await?;
        self.notify(DONE_CHANNEL, "").await
    }

    /// The row of `key`, if it was ever queued.
    pub async fn row(&self, key: &str) -> StoreResult<Option<WorkRow>> {
        let keys = [key.to_string()];
        Ok(self.rows(&keys, false).await?.into_iter().next())
    }

    /// The rows among `keys` that are done.
    pub async fn done_among(&self, keys: &[String]) -> StoreResult<Vec<WorkRow>> {
        self.rows(keys, true).await
    }

    async fn rows(&self, keys: &[String], only_done: bool) -> StoreResult<Vec<WorkRow>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(
            "SELECT id, key, state, worker, claim_epoch, lease_until, report, log FROM keel_work
             WHERE key = ANY($1) AND (NOT $2 OR state = 'done') ORDER BY id",
        )
        .bind(keys)
        .bind(only_done)
        .fetch_all(&self.pool)
        .await
        .map_err(|error| self.unreachable(error))?;
        rows.iter()
            .map(|row| {
                let state: String = get(row, 2)?;
                Ok(WorkRow {
                    id: get(row, 0)?,
                    key: get(row, 1)?,
                    state: WorkState::parse(&state)?,
                    worker: get(row, 3)?,
                    claim_epoch: get(row, 4)?,
                    lease_until: get(row, 5)?,
                    report: get(row, 6)?,
                    log: get(row, 7)?,
                })
            })
            .collect()
    }

    /// Removes done rows finished before `before` (their attempts are recorded by then), and
    /// workers whose last heartbeat is older than that (they died long ago).
    pub async fn forget_done(&self, before: Millis) -> StoreResult<u64> {
        let rows = sqlx::query("DELETE FROM keel_work WHERE state = 'done' AND finished_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await
            .map_err(|error| self.unreachable(error))?
            .rows_affected();
        sqlx::query("DELETE FROM keel_workers WHERE heartbeat_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await
            .map_err(|error| self.unreachable(error))?;
        Ok(rows)
    }

    /// Registers a worker (or registers it again after a restart under the same id).
    pub async fn register_worker(
        &self,
        id: &str,
        host: &str,
        pid: u32,
        slots: u32,
        now: Millis,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO keel_workers (id, host, pid, slots, started_at, heartbeat_at, running)
             VALUES ($1, $2, $3, $4, $5, $5, 0)
             ON CONFLICT (id) DO UPDATE SET host = excluded.host, pid = excluded.pid,
                 slots = excluded.slots, started_at = excluded.started_at,
                 heartbeat_at = excluded.heartbeat_at, running = 0, stopped_at = NULL",
        )
        .bind(id)
        .bind(host)
        .bind(i64::from(pid))
        .bind(i64::from(slots))
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(|error| self.unreachable(error))?;
        Ok(())
    }

    /// Marks a worker stopped (it left cleanly).
    pub async fn stop_worker(&self, id: &str, now: Millis) -> StoreResult<()> {
        sqlx::query("UPDATE keel_workers SET stopped_at = $2, running = 0 WHERE id = $1")
            .bind(id)
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(|error| self.unreachable(error))?;
        Ok(())
    }

    /// Every worker, newest heartbeat first, with its leases, and the queue's counts.
    pub async fn cluster(&self) -> StoreResult<ClusterView> {
        let mut transaction = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await
            .map_err(|error| self.unreachable(error))?;
        let worker_rows = sqlx::query(
            "SELECT id, host, pid, slots, started_at, heartbeat_at, running, stopped_at
             FROM keel_workers ORDER BY heartbeat_at DESC, id",
        )
        .fetch_all(&mut *transaction)
        .await?;
        let lease_rows = sqlx::query(
            "SELECT worker, key, lease_until FROM keel_work WHERE state = 'claimed' ORDER BY id",
        )
        .fetch_all(&mut *transaction)
        .await?;
        let counts = sqlx::query(
            "SELECT count(*) FILTER (WHERE state = 'queued'), count(*) FILTER (WHERE state = 'claimed'),
                    count(*) FILTER (WHERE state = 'done'), count(*) FILTER (WHERE claim_epoch > 0)
             FROM keel_work",
        )
        .fetch_one(&mut *transaction)
        .await?;
        transaction.commit().await?;
        let mut workers = worker_rows
            .iter()
            .map(|row| {
                Ok(WorkerRecord {
                    id: get(row, 0)?,
                    host: get(row, 1)?,
                    pid: get(row, 2)?,
                    slots: get(row, 3)?,
                    started_at: get(row, 4)?,
                    heartbeat_at: get(row, 5)?,
                    running: get(row, 6)?,
                    stopped_at: get(row, 7)?,
                    leases: Vec::new(),
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        for row in &lease_rows {
            let worker: Option<String> = get(row, 0)?;
            let key: String = get(row, 1)?;
            let until: Option<i64> = get(row, 2)?;
            if let Some(record) = workers
                .iter_mut()
                .find(|record| Some(&record.id) == worker.as_ref())
            {
                record.leases.push((key, until.unwrap_or(0)));
            }
        }
        Ok(ClusterView {
            workers,
            queued: get(&counts, 0)?,
            claimed: get(&counts, 1)?,
            done: get(&counts, 2)?,
            reaped: get(&counts, 3)?,
        })
    }

    /// The connections to this state's database right now, every client's (for `keel bench`).
    pub async fn connections(&self) -> StoreResult<i64> {
        sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(|error| self.unreachable(error))
    }

    /// Listens for new work and cancels (`for_workers`) or for finished rows (the scheduler).
    pub async fn notices(&self, for_workers: bool) -> StoreResult<WorkNotices> {
        let pool = new_pool(&self.options, PostgresConfig { max_connections: 1 });
        let mut listener = PgListener::connect_with(&pool)
            .await
            .map_err(|error| self.unreachable(error))?;
        let channel = if for_workers {
            WORK_CHANNEL
        } else {
            DONE_CHANNEL
        };
        listener
            .listen(channel)
            .await
            .map_err(|error| self.unreachable(error))?;
        Ok(WorkNotices {
            listener,
            _pool: pool,
            cancels: false,
        })
    }
}

/// Notices on one channel of the queue. Polling stays the fallback: a notice only wakes the
/// listener early.
pub struct WorkNotices {
    listener: PgListener,
    _pool: PgPool,
    /// A notice taken said a claimed row was asked to stop.
    cancels: bool,
}

impl WorkNotices {
    /// Waits up to `timeout` for a notice; true if one came. Notices that arrived together
    /// count as one: those already received are taken too, so a burst of them (a batch of
    /// rows, or rows queued while the listener was busy) wakes it once, not once each. A
    /// broken connection counts as no notice (the listener reconnects on the next call).
    ///
    /// Cancel-safe: once it has taken a notice it returns without waiting again, so a caller
    /// that drops it for another event (a worker's `select!`) never loses a notice it took.
    pub async fn wait(&mut self, timeout: Duration) -> bool {
        let Ok(Ok(first)) = tokio::time::timeout(timeout, self.listener.recv()).await else {
            return false;
        };
        self.cancels |= first.payload() == CANCEL_NOTICE;
        // Each look polls once and never waits (a zero timeout could: its timer fires only at
        // the next tick). The bound keeps a flood of notices from holding the listener here.
        for _ in 0..1024 {
            match futures_util::FutureExt::now_or_never(self.listener.recv()) {
                Some(Ok(next)) => self.cancels |= next.payload() == CANCEL_NOTICE,
                _ => break,
            }
        }
        true
    }

    /// Whether a notice taken since the last call said a claimed row was asked to stop (its
    /// worker should look at its rows now rather than at its next heartbeat).
    pub fn take_cancels(&mut self) -> bool {
        std::mem::take(&mut self.cancels)
    }
}
