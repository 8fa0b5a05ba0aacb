//! `keel serve --role worker`: claims queued attempts, runs them here with the process
//! executor, renews their leases by heartbeat and records each result under its claim's epoch.
//!
//! A worker needs no pipeline file: everything an attempt needs is in its row. The task's
//! working directory must exist on this machine at the same path as on the scheduler's (the
//! pipeline's files checked out at the same place).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use keel_exec::{Executor, ProcessExecutor, Report};
use keel_model::Outcome;
use keel_store::{PostgresUrl, WorkItem};

use super::{Job, WireReport, wall_millis};
use crate::serve_log::Logger;

/// How often a worker looks for work without a notice.
const CLAIM_POLL: Duration = Duration::from_millis(200);
/// The most of an attempt's output a worker uploads (its end, where the error usually is).
const LOG_UPLOAD_CAP: u64 = 256 << 10;
/// The longest wait between two tries to reach the database.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub url: PostgresUrl,
    /// Attempts run at once, at most.
    pub slots: u32,
    /// How long a claim holds without a heartbeat; heartbeats go every third of it.
    pub lease: Duration,
    /// Where this worker's attempt directories go.
    pub work_dir: PathBuf,
    /// How long running attempts may finish after a first SIGINT or SIGTERM.
    pub grace: Duration,
    /// Where it serves the cluster view (`--addr`), if anywhere.
    pub view_addr: Option<String>,
}

/// An attempt this worker runs.
struct Held {
    key: String,
    claim_epoch: i64,
    dir: PathBuf,
    stop: std::sync::Arc<dyn Fn() + Send + Sync>,
    /// Reaped: it is stopped and its result is not recorded.
    lost: bool,
}

/// A result not yet recorded (the database was away): sent again at the next turn.
struct Unsent {
    id: i64,
    claim_epoch: i64,
    report: String,
    log: String,
}

impl Unsent {
    /// The result of the attempt of `row`, with the end of its log, and whether that is the
    /// whole log.
    fn of(row: i64, attempt: &Held, report: &Report) -> (Unsent, bool) {
        let (log, whole) = read_log(&attempt.dir);
        let unsent = Unsent {
            id: row,
            claim_epoch: attempt.claim_epoch,
            report: WireReport::encode(report),
            log,
        };
        (unsent, whole)
    }
}

/// Empty attempt directories kept for the next attempts. A worker's copy of an attempt is not
/// needed once its result and its whole log are on their way to the scheduler, so its
/// directory is emptied and renamed into the next attempt's place: a rename allocates no inode,
/// and where the file system makes new inodes dear (ext4 skips and checks recently freed ones)
/// that is most of what starting a quiet task costs. An attempt whose log is longer than the
/// upload keeps its directory, which holds the only whole copy.
struct Spares {
    root: PathBuf,
    free: Vec<PathBuf>,
    /// How many are kept at most (the worker's slots): more are removed.
    keep: usize,
    next: u64,
}

impl Spares {
    fn new(root: PathBuf, keep: usize) -> Spares {
        // Spares of an earlier worker with this id would be stray: the id is unique.
        Spares {
            root,
            free: Vec::new(),
            keep,
            next: 0,
        }
    }

    /// Puts an empty directory at `dir`, if one is spare; otherwise the executor makes it.
    fn place(&mut self, dir: &Path) {
        while let Some(spare) = self.free.pop() {
            if std::fs::rename(&spare, dir).is_ok() {
                return;
            }
        }
    }

    /// Empties the directory of an attempt that has ended and keeps it for a later one. Anything
    /// that cannot be removed (the task's own files are the task's to make unremovable) leaves
    /// the directory where it is.
    fn recycle(&mut self, dir: &Path) {
        if empty_directory(dir).is_err() {
            return;
        }
        if self.free.len() >= self.keep {
            let _ = std::fs::remove_dir(dir);
            return;
        }
        if std::fs::create_dir_all(&self.root).is_err() {
            return;
        }
        self.next += 1;
        let spare = self.root.join(self.next.to_string());
        if std::fs::rename(dir, &spare).is_ok() {
            self.free.push(spare);
        }
    }
}

/// Removes everything in `dir` (not following links), leaving it empty.
fn empty_directory(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

pub async fn run(config: WorkerConfig, logger: Logger) -> Result<u8> {
    let store = {
        let url = config.url.clone();
        tokio::task::spawn_blocking(move || keel_store::PostgresStore::open(&url))
            .await
            .context("opening the state")??
    };
    let queue = store.work_queue(4);
    let _view = match &config.view_addr {
        Some(addr) => Some(super::view::start(
            addr,
            store.work_queue(2),
            "worker",
            &logger,
        )?),
        None => None,
    };
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    let id = format!(
        "{host}:{}:{:06x}",
        std::process::id(),
        wall_millis() as u64 & 0xFF_FFFF
    );
    let lease_ms = config.lease.as_millis() as i64;
    queue
        .register_worker(&id, &host, std::process::id(), config.slots, wall_millis())
        .await?;
    let own_dir = crate::state::absolute(&config.work_dir)?.join(id.replace(':', "-"));
    std::fs::create_dir_all(&own_dir)
        .with_context(|| format!("cannot create the worker's directory {own_dir:?}"))?;
    logger.info(&format!(
        "keel worker {id}: {} slots, lease {} ms, attempts under {}; state {}",
        config.slots,
        lease_ms,
        own_dir.display(),
        config.url
    ));
    let program = std::env::current_exe()
        .context("cannot find the keel executable to start attempt supervisors")?;
    // Bound: a worker that dies takes its attempts with it (each task's leader dies with the
    // worker's thread watching it), since the scheduler retries them elsewhere once their
    // leases lapse; so no attempt needs a supervisor process of its own. Except when the
    // worker is the first process of its container: the processes its tasks leave behind are
    // then handed to it, and only supervisors (and their host) collect what they are handed.
    let executor = ProcessExecutor::new(
        program,
        vec!["__attempt".into(), keel_exec::BOUND_ARGUMENT.into()],
    );
    let executor = if std::process::id() == 1 {
        executor
    } else {
        executor.in_threads()
    };
    let mut spares = Spares::new(own_dir.join(".spare"), config.slots as usize);
    let (ended_sender, mut ended) = tokio::sync::mpsc::unbounded_channel::<(i64, Report)>();
    let mut held: HashMap<i64, Held> = HashMap::new();
    let mut unsent: Vec<Unsent> = Vec::new();
    let mut notices = queue.notices(true).await.ok();
    let heartbeat_every = (config.lease / 3).max(Duration::from_millis(100));
    let mut heartbeat = tokio::time::interval(heartbeat_every);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut draining_until: Option<tokio::time::Instant> = None;
    let mut backoff = CLAIM_POLL;
    // Whether queued rows may be waiting: set by a notice or a poll, and while claims fill
    // every free slot; cleared by a claim that found fewer rows than it asked for. A slot that
    // frees up is filled at once only while it is set, so a worker does not ask an empty
    // queue again after every attempt it finishes.
    let mut look = true;
    loop {
        if let Some(until) = draining_until
            && (held.is_empty() || tokio::time::Instant::now() >= until)
        {
            break;
        }
        tokio::select! {
            _ = interrupt.recv() => draining_until = Some(drain(&logger, &held, draining_until, &config)),
            _ = terminate.recv() => draining_until = Some(drain(&logger, &held, draining_until, &config)),
            _ = heartbeat.tick() => {
                let holding: Vec<(i64, i64)> = held
                    .iter()
                    .filter(|(_, attempt)| !attempt.lost)
                    .map(|(id, attempt)| (*id, attempt.claim_epoch))
                    .collect();
                match queue.renew(&id, &holding, wall_millis(), lease_ms).await {
                    Ok(renewal) => {
                        for row in renewal.cancelled {
                            if let Some(attempt) = held.get(&row) {
                                (attempt.stop)();
                            }
                        }
                        for row in renewal.lost {
                            if let Some(attempt) = held.get_mut(&row) {
                                logger.warn(&format!(
                                    "keel worker {id}: lost the lease of {}; stopping it, its result will not be recorded",
                                    attempt.key
                                ));
                                attempt.lost = true;
                                (attempt.stop)();
                            }
                        }
                    }
                    Err(error) => logger.warn(&format!("keel worker {id}: heartbeat failed: {error}")),
                }
            }
            Some((row, report)) = ended.recv() => ended_here(&mut held, &mut unsent, &mut spares, row, report),
            _ = wait_for_work(&mut notices, backoff), if draining_until.is_none() => {
                look = true;
                // A row was asked to stop: the heartbeat, which learns which, goes now.
                if notices.as_mut().is_some_and(keel_store::WorkNotices::take_cancels) {
                    heartbeat.reset_immediately();
                }
            }
        }
        // Every result that ended meanwhile is taken in this turn: one statement for them all.
        while let Ok((row, report)) = ended.try_recv() {
            ended_here(&mut held, &mut unsent, &mut spares, row, report);
        }
        // Results first: they free the scheduler's work; a refused one was reaped meanwhile.
        send_results(&queue, &id, &logger, &mut unsent).await;
        if draining_until.is_some() {
            continue;
        }
        let free = config.slots.saturating_sub(held.len() as u32);
        if free == 0 || !look {
            continue;
        }
        match queue.claim(&id, free, wall_millis(), lease_ms).await {
            Ok(items) => {
                backoff = CLAIM_POLL;
                look = items.len() as u32 == free;
                for item in items {
                    let row = item.id;
                    match start(&executor, &own_dir, &mut spares, item, ended_sender.clone()).await
                    {
                        Ok(attempt) => {
                            held.insert(row, attempt);
                        }
                        Err((attempt, report)) => {
                            unsent.push(Unsent::of(row, &attempt, &report).0);
                        }
                    }
                }
            }
            Err(error) => {
                logger.warn(&format!(
                    "keel worker {id}: cannot claim work: {error}; trying again in {} ms",
                    backoff.as_millis()
                ));
                backoff = (backoff * 2).min(MAX_BACKOFF);
                if notices.is_none() {
                    notices = queue.notices(true).await.ok();
                }
            }
        }
    }
    let _ = queue.stop_worker(&id, wall_millis()).await;
    logger.info(&format!(
        "keel worker {id}: stopped; {} attempts left to lapse and be retried",
        held.len()
    ));
    Ok(0)
}

/// An attempt of this worker ended: its result waits to be sent, unless its lease was lost.
fn ended_here(
    held: &mut HashMap<i64, Held>,
    unsent: &mut Vec<Unsent>,
    spares: &mut Spares,
    row: i64,
    report: Report,
) {
    if let Some(attempt) = held.remove(&row)
        && !attempt.lost
    {
        let (result, whole) = Unsent::of(row, &attempt, &report);
        unsent.push(result);
        if whole {
            spares.recycle(&attempt.dir);
        }
    }
}

/// Records every unsent result in one statement. A refused one was reaped meanwhile (its
/// attempt was retried) and is only logged; if the call fails, all are kept for the next turn.
async fn send_results(
    queue: &keel_store::WorkQueue,
    worker: &str,
    logger: &Logger,
    unsent: &mut Vec<Unsent>,
) {
    if unsent.is_empty() {
        return;
    }
    let results: Vec<(i64, i64, &str, &str)> = unsent
        .iter()
        .map(|result| {
            (
                result.id,
                result.claim_epoch,
                result.report.as_str(),
                result.log.as_str(),
            )
        })
        .collect();
    let Ok(recorded) = queue.finish_many(&results, wall_millis()).await else {
        return;
    };
    for result in unsent.drain(..) {
        if !recorded.contains(&result.id) {
            logger.warn(&format!(
                "keel worker {worker}: the result of row {} was refused: its lease had lapsed and the attempt was retried",
                result.id
            ));
        }
    }
}

fn drain(
    logger: &Logger,
    held: &HashMap<i64, Held>,
    already: Option<tokio::time::Instant>,
    config: &WorkerConfig,
) -> tokio::time::Instant {
    match already {
        // A second signal stops at once; what runs lapses and is retried elsewhere.
        Some(_) => tokio::time::Instant::now(),
        None => {
            logger.warn(&format!(
                "keel worker: stopping; {} running attempts may finish within {} s",
                held.len(),
                config.grace.as_secs()
            ));
            tokio::time::Instant::now() + config.grace
        }
    }
}

async fn wait_for_work(notices: &mut Option<keel_store::WorkNotices>, poll: Duration) {
    match notices {
        Some(listening) => {
            listening.wait(poll).await;
        }
        None => tokio::time::sleep(poll).await,
    }
}

/// Starts a claimed row's attempt; a row that cannot start is reported at once.
async fn start(
    executor: &ProcessExecutor,
    own_dir: &Path,
    spares: &mut Spares,
    item: WorkItem,
    ended: tokio::sync::mpsc::UnboundedSender<(i64, Report)>,
) -> std::result::Result<Held, (Held, Report)> {
    let dir = own_dir.join(&item.key);
    let mut attempt = Held {
        key: item.key.clone(),
        claim_epoch: item.claim_epoch,
        dir: dir.clone(),
        stop: std::sync::Arc::new(|| {}),
        lost: false,
    };
    let job: Job = match serde_json::from_str(&item.payload) {
        Ok(job) => job,
        Err(error) => {
            let report = Report::new(
                Outcome::FailedPermanent,
                format!(
                    "the worker cannot read the attempt's job ({error}); is it a different keel version?"
                ),
            );
            return Err((attempt, report));
        }
    };
    let launch = match job.launch_in(&dir, |name| std::env::var(name).ok()) {
        Ok(launch) => launch,
        Err(problem) => return Err((attempt, Report::new(Outcome::FailedPermanent, problem))),
    };
    if let Some(parent) = dir.parent()
        && let Err(error) = std::fs::create_dir_all(parent)
    {
        let report = Report::new(
            Outcome::Lost,
            format!("the worker cannot create {}: {error}", parent.display()),
        );
        return Err((attempt, report));
    }
    spares.place(&dir);
    let executor = executor.clone();
    let launched = tokio::task::spawn_blocking(move || {
        executor.launch(launch).map(|mut running| {
            running.resolve_pid();
            running
        })
    })
    .await;
    match launched {
        Ok(Ok(running)) => {
            attempt.stop = running.stop.clone();
            let row = item.id;
            tokio::spawn(async move {
                let report = running.completion.await;
                let _ = ended.send((row, report));
            });
            Ok(attempt)
        }
        Ok(Err(error)) => Err((
            attempt,
            Report::new(
                Outcome::Failed,
                format!("cannot start the attempt on the worker: {error}"),
            ),
        )),
        Err(error) => Err((
            attempt,
            Report::new(
                Outcome::Lost,
                format!("the worker's launcher failed: {error}"),
            ),
        )),
    }
}

/// The end of the attempt's `output.log`, at most [`LOG_UPLOAD_CAP`] bytes, as text, and
/// whether that is all of it (a missing log is an empty one; an unreadable one is not whole).
fn read_log(dir: &Path) -> (String, bool) {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = match keel_exec::open_regular_file(&dir.join("output.log")) {
        Ok(Some(file)) => file,
        Ok(None) => return (String::new(), true),
        Err(_) => return (String::new(), false),
    };
    let length = file.metadata().map(|meta| meta.len()).unwrap_or(0);
    if length > LOG_UPLOAD_CAP {
        let _ = file.seek(SeekFrom::Start(length - LOG_UPLOAD_CAP));
    }
    let mut bytes = Vec::new();
    let _ = file.take(LOG_UPLOAD_CAP).read_to_end(&mut bytes);
    let whole = length <= LOG_UPLOAD_CAP && bytes.len() as u64 == length;
    (String::from_utf8_lossy(&bytes).into_owned(), whole)
}
