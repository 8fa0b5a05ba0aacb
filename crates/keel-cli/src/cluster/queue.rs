//! The active scheduler's executor: each attempt becomes a row of the work queue, and ends
//! when a worker records its report there (or the scheduler reaps its lapsed lease as lost).
//!
//! One watcher task per executor wakes on the queue's `NOTIFY` (polling every
//! [`WATCH_INTERVAL`] as the fallback), reaps lapsed leases, and resolves the completions of
//! the rows that are done, writing the log a worker uploaded into the attempt's `output.log`
//! here, so `keel logs` and the API read it as for any attempt.
//!
//! Queuing is group-committed: the attempts of one [`Executor::launch_many`] go in one
//! statement, and launches that arrive while a statement is out (a sensor's, another turn's)
//! share the next one. Each launch still returns only once its row is committed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use keel_exec::{Adopted, Executor, Launch, ProcessExecutor, Report, Running};
use keel_model::Outcome;
use keel_store::{WorkQueue, WorkState};

use super::{Job, WireReport, attempt_key, wall_millis};

/// How often the watcher looks at the queue without a notice.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);
/// How long a finished row stays in the queue: long enough for any scheduler that takes over to
/// read it while adopting.
const KEEP_DONE_MS: i64 = 24 * 3600 * 1000;

/// How long the watcher holds off reaping after it could not reach the database: the workers
/// were cut off too, and need a turn of their heartbeats to renew the leases that lapsed
/// meanwhile (a worker's default lease is 15 s).
const REAP_GRACE_MS: i64 = 15_000;
/// A turn of the watcher that took longer than this means the database was away.
const OUTAGE_MS: i64 = 2_000;

/// What a reaped row reports.
const LOST_REPORT: &str = r#"{"outcome":"lost","message":"its worker stopped renewing its lease (the worker died, hung or lost the database)"}"#;

/// Queues attempts for workers. Cloning shares it.
#[derive(Clone)]
pub struct QueueExecutor {
    inner: Arc<Inner>,
}

struct Inner {
    queue: WorkQueue,
    runtime: tokio::runtime::Handle,
    /// HTTP tasks and probes are sent by the scheduler itself.
    local: ProcessExecutor,
    /// Attempts waiting for their row to be done, by key.
    pending: Mutex<HashMap<String, Pending>>,
    /// Rows for the queue's writer ([`write_rows`]).
    enqueues: tokio::sync::mpsc::UnboundedSender<Enqueue>,
}

/// The rows of one launch call, `(key, payload)` each, and where to say whether they are queued.
struct Enqueue {
    rows: Vec<(String, String)>,
    queued: tokio::sync::oneshot::Sender<Result<(), String>>,
}

struct Pending {
    dir: PathBuf,
    done: tokio::sync::oneshot::Sender<Report>,
}

impl QueueExecutor {
    /// Must be called inside a runtime: the watcher runs on it until the executor is dropped.
    pub fn new(queue: WorkQueue, local: ProcessExecutor) -> QueueExecutor {
        QueueExecutor::polling_every(queue, local, WATCH_INTERVAL)
    }

    /// [`QueueExecutor::new`] with the watcher's fallback poll every `poll` instead.
    fn polling_every(queue: WorkQueue, local: ProcessExecutor, poll: Duration) -> QueueExecutor {
        let (enqueues, requests) = tokio::sync::mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            queue: queue.clone(),
            runtime: tokio::runtime::Handle::current(),
            local,
            pending: Mutex::new(HashMap::new()),
            enqueues,
        });
        inner.runtime.spawn(watch(Arc::downgrade(&inner), poll));
        // It stops when the executor is dropped (its sender with it).
        inner.runtime.spawn(write_rows(queue, requests));
        QueueExecutor { inner }
    }

    /// Queues `rows` with the next statement of the queue's writer and waits until it is
    /// committed. Runs on a blocking thread, never on the runtime itself.
    fn queue_rows(&self, rows: Vec<(String, String)>) -> Result<(), String> {
        const STOPPED: &str = "the scheduler's queue writer has stopped";
        let (queued, answer) = tokio::sync::oneshot::channel();
        self.inner
            .enqueues
            .send(Enqueue { rows, queued })
            .map_err(|_| STOPPED.to_string())?;
        self.inner
            .runtime
            .block_on(answer)
            .unwrap_or_else(|_| Err(STOPPED.to_string()))
    }

    /// Waits for the row of `key`; the attempt's log lands in `dir`.
    fn wait_for(&self, key: &str, dir: &Path) -> Running {
        let (done, ended) = tokio::sync::oneshot::channel();
        lock(&self.inner.pending).insert(
            key.to_string(),
            Pending {
                dir: dir.to_path_buf(),
                done,
            },
        );
        let stopper = Arc::downgrade(&self.inner);
        let key_for_stop = key.to_string();
        Running {
            pid: None,
            pid_later: None,
            completion: Box::pin(async move {
                ended.await.unwrap_or_else(|_| {
                    Report::new(Outcome::Lost, "the scheduler stopped watching the attempt")
                })
            }),
            stop: Arc::new(move || {
                let Some(inner) = stopper.upgrade() else {
                    return;
                };
                let key = key_for_stop.clone();
                let queue = inner.queue.clone();
                inner.runtime.spawn(async move {
                    let report = WireReport::encode(&Report::new(
                        Outcome::Cancelled,
                        "stopped before a worker took it",
                    ));
                    // A failed cancel is sent again by the engine's next stop, if any; the
                    // attempt otherwise finishes as the worker reports it.
                    let _ = queue.cancel(&key, &report, wall_millis()).await;
                });
            }),
        }
    }
}

impl Executor for QueueExecutor {
    fn launch(&self, launch: Launch) -> std::io::Result<Running> {
        self.launch_many(vec![launch])
            .pop()
            .unwrap_or_else(|| Err(std::io::Error::other("the launch was not answered")))
    }

    /// Queues every attempt of `launches` in one statement (HTTP tasks are sent here) and
    /// returns once they are committed: if the statement fails, none of them started.
    fn launch_many(&self, launches: Vec<Launch>) -> Vec<std::io::Result<Running>> {
        let mut results = Vec::with_capacity(launches.len());
        let mut rows = Vec::new();
        // (index in `results`, key) of each queued attempt.
        let mut queued = Vec::new();
        for launch in launches {
            if launch.http.is_some() {
                results.push(self.inner.local.launch(launch));
                continue;
            }
            // The attempt's directory here is made only when its worker sends back some
            // output (`write_log`): most attempts of a busy cluster print nothing, and every
            // file made per attempt costs the scheduler's file system an inode.
            match serde_json::to_string(&Job::of(&launch)).map_err(std::io::Error::other) {
                Ok(payload) => {
                    let key = attempt_key(&launch.dir);
                    results.push(Ok(self.wait_for(&key, &launch.dir)));
                    queued.push((results.len() - 1, key.clone()));
                    rows.push((key, payload));
                }
                Err(error) => results.push(Err(error)),
            }
        }
        if rows.is_empty() {
            return results;
        }
        if let Err(problem) = self.queue_rows(rows) {
            let mut pending = lock(&self.inner.pending);
            for (index, key) in queued {
                pending.remove(&key);
                results[index] = Err(std::io::Error::other(format!(
                    "cannot queue the attempt for a worker: {problem}"
                )));
            }
        }
        results
    }

    fn adopt(&self, dir: PathBuf, known_pid: Option<u32>) -> Adopted {
        let key = attempt_key(&dir);
        let row = self.inner.runtime.block_on(self.inner.queue.row(&key));
        match row {
            Ok(Some(row)) if row.state == WorkState::Done => {
                write_log(&dir, row.log.as_deref());
                Adopted::Finished(WireReport::decode(row.report.as_deref()))
            }
            // Queued or claimed: a worker has it or will; the watcher reaps a lapsed lease.
            Ok(Some(_)) => Adopted::Running(self.wait_for(&key, &dir)),
            // An HTTP task the scheduler sent itself.
            Ok(None) if keel_exec::http::was_in_flight(&dir) => {
                self.inner.local.adopt(dir, known_pid)
            }
            Ok(None) => Adopted::Gone("it was never queued for a worker".into()),
            Err(error) => Adopted::Gone(format!("the work queue cannot be read: {error}")),
        }
    }

    fn probe(&self, call: keel_exec::HttpCall, timeout: Duration) -> keel_exec::Completion {
        self.inner.local.probe(call, timeout)
    }
}

/// The queue's writer: one statement for the rows of every launch waiting. A launch that
/// arrives while a statement is out joins the next one, which takes every launch that arrived
/// meanwhile; each learns whether its rows were committed.
async fn write_rows(queue: WorkQueue, mut requests: tokio::sync::mpsc::UnboundedReceiver<Enqueue>) {
    while let Some(first) = requests.recv().await {
        let mut batch = vec![first];
        while let Ok(next) = requests.try_recv() {
            batch.push(next);
        }
        let rows: Vec<(&str, &str)> = batch
            .iter()
            .flat_map(|request| &request.rows)
            .map(|(key, payload)| (key.as_str(), payload.as_str()))
            .collect();
        let written = queue
            .enqueue_many(&rows, wall_millis())
            .await
            .map_err(|error| error.to_string());
        drop(rows);
        for request in batch {
            let _ = request.queued.send(written.clone());
        }
    }
}

/// The watcher: reaps lapsed leases and resolves finished rows, until the executor is gone.
async fn watch(inner: Weak<Inner>, poll: Duration) {
    let queue = match inner.upgrade() {
        Some(inner) => inner.queue.clone(),
        None => return,
    };
    // Listening from the start: the first attempts' ends are noticed, not polled for.
    let mut notices = queue.notices(false).await.ok();
    let mut last_forget = 0;
    let mut reap_not_before = 0;
    let mut last_reap = 0;
    loop {
        match &mut notices {
            Some(listening) => {
                let _ = keel_store::WorkNotices::wait(listening, poll).await;
            }
            None => {
                tokio::time::sleep(poll).await;
                notices = queue.notices(false).await.ok();
            }
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let now = wall_millis();
        // A database that is away is tried again at the next turn. After an outage, leases
        // the workers could not renew are not taken for lapsed until they had a turn.
        // Reaping looks at every claimed row: once per interval, not on every notice.
        let mut failed = false;
        if now >= reap_not_before && now - last_reap >= poll.as_millis() as i64 {
            last_reap = now;
            failed |= queue.reap(now, LOST_REPORT).await.is_err();
        }
        if now - last_forget > 60_000 {
            last_forget = now;
            let _ = queue.forget_done(now - KEEP_DONE_MS).await;
        }
        let keys: Vec<String> = lock(&inner.pending).keys().cloned().collect();
        let rows = queue.done_among(&keys).await;
        // A call that failed, or waited long for a connection, means the database was away.
        let answered = wall_millis();
        if failed || rows.is_err() || answered - now > OUTAGE_MS {
            reap_not_before = answered + REAP_GRACE_MS;
        }
        let Ok(rows) = rows else {
            continue;
        };
        let finished: Vec<(Pending, keel_store::WorkRow)> = {
            let mut pending = lock(&inner.pending);
            rows.into_iter()
                .filter_map(|row| Some((pending.remove(&row.key)?, row)))
                .collect()
        };
        if finished.is_empty() {
            continue;
        }
        // Every log first, then every report: the engine takes the reports that arrive
        // together in one turn (and launches what they free in one statement).
        let finished = tokio::task::spawn_blocking(move || {
            for (pending, row) in &finished {
                write_log(&pending.dir, row.log.as_deref());
            }
            finished
        })
        .await;
        let Ok(finished) = finished else {
            continue;
        };
        for (pending, row) in finished {
            let _ = pending.done.send(WireReport::decode(row.report.as_deref()));
        }
    }
}

/// Writes the log a worker uploaded as the attempt's `output.log`, unless one is there. An
/// attempt that printed nothing leaves no file, and no directory, as a local attempt does: a
/// missing log reads as "no output".
fn write_log(dir: &Path, log: Option<&str>) {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let Some(log) = log.filter(|log| !log.is_empty()) else {
        return;
    };
    let _ = std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir);
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dir.join(keel_exec::supervisor::OUTPUT_FILE))
        .and_then(|mut file| std::io::Write::write_all(&mut file, log.as_bytes()));
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_store::testing::TestDatabase;

    /// The watcher listens from its start: the end of the very first attempt reaches the
    /// engine on the worker's notice, with the fallback poll an hour away.
    #[test]
    fn the_first_attempts_end_is_noticed_without_a_poll() {
        let Some(database) =
            TestDatabase::create("the_first_attempts_end_is_noticed_without_a_poll")
        else {
            return;
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let store = keel_store::PostgresStore::open(&database.postgres_url()).unwrap();
        let queue = store.work_queue(2);
        let state = tempfile::tempdir().unwrap();
        let dir = state.path().join("attempts/abc/1/load.1");
        let executor = {
            let _inside = runtime.enter();
            QueueExecutor::polling_every(
                queue.clone(),
                crate::setup::local_executor().unwrap(),
                Duration::from_secs(3600),
            )
        };
        let launch = Launch {
            dir: dir.clone(),
            command: vec!["true".into()],
            env: Vec::new(),
            clear_env: false,
            cwd: None,
            timeout: Duration::from_secs(60),
            heartbeat: None,
            kill_grace: Duration::from_secs(5),
            log_cap: 1024,
            http: None,
        };
        let report = runtime.block_on(async {
            // Queued from a blocking thread, as the engine does.
            let launching = executor.clone();
            let running = tokio::task::spawn_blocking(move || launching.launch(launch))
                .await
                .unwrap()
                .unwrap();
            let claimed = queue
                .claim("test-worker", 10, wall_millis(), 60_000)
                .await
                .unwrap();
            assert_eq!(claimed.len(), 1, "the attempt was queued once");
            assert_eq!(claimed[0].key, attempt_key(&dir));
            let mut done = Report::new(Outcome::Succeeded, "done on the worker");
            done.rows = Some(3);
            let encoded = WireReport::encode(&done);
            let recorded = queue
                .finish_many(
                    &[(
                        claimed[0].id,
                        claimed[0].claim_epoch,
                        encoded.as_str(),
                        "a line\n",
                    )],
                    wall_millis(),
                )
                .await
                .unwrap();
            assert_eq!(recorded, vec![claimed[0].id]);
            // Far longer than a notice takes, far shorter than the poll.
            tokio::time::timeout(Duration::from_secs(60), running.completion)
                .await
                .expect("the end of the attempt was not noticed: the watcher was not listening")
        });
        assert_eq!(report.outcome, Outcome::Succeeded);
        assert_eq!(report.rows, Some(3));
        assert_eq!(
            std::fs::read_to_string(dir.join(keel_exec::supervisor::OUTPUT_FILE)).unwrap(),
            "a line\n"
        );
    }
}
