//! The one-executor lock of a state in PostgreSQL: a session-level advisory lock, held on a
//! connection of its own for as long as the executing Keel lives. The server releases it when
//! that connection ends, however the Keel ends, so a crashed Keel leaves no stale lock; and it
//! holds across machines, where the state directory's `keel.lock` cannot see.

use std::sync::mpsc;

use super::*;

/// The advisory lock of the one executor ("KEEL" and 3).
const EXECUTOR_LOCK: i64 = 0x4B45_454C_0000_0003;

/// How often the lock's session is checked, and the lock taken again after a lost connection.
const CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Held for as long as this value lives — unless the session holding it ends under it (the
/// server restarted, the network failed): [`PostgresLock::held`] then says `Reconnecting` while
/// the lock's thread connects again and tries to take the lock back, and `TakenElsewhere` once
/// the server answers and another Keel has taken it meanwhile.
pub struct PostgresLock {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    held: LockHold,
}

impl std::fmt::Debug for PostgresLock {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("PostgresLock")
    }
}

/// Why the lock was not taken.
#[derive(Debug)]
pub enum PostgresLockError {
    /// Another Keel holds it: who, as it named itself (`keel serve pid 42 on host-a`).
    Held {
        holder: String,
    },
    Store(StoreError),
}

impl PostgresLock {
    /// Takes the lock without waiting, naming this Keel `holder` to whoever finds it held.
    pub fn acquire(url: &PostgresUrl, holder: &str) -> Result<PostgresLock, PostgresLockError> {
        let options = PgConnectOptions::from_str(url.secret_url())
            .map_err(|error| {
                PostgresLockError::Store(StoreError::Unreachable {
                    location: url.to_string(),
                    detail: url.scrub(&error.to_string()),
                })
            })?
            .application_name(holder);
        let (ready_sender, ready) = mpsc::channel::<Result<(), PostgresLockError>>();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let url = url.clone();
        let held = LockHold::default();
        let flag = held.clone();
        let thread = std::thread::Builder::new()
            .name("keel-postgres-lock".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = ready_sender.send(Err(PostgresLockError::Store(
                            StoreError::Database(error.to_string()),
                        )));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let connection = match take(&url, &options).await {
                        Ok(connection) => connection,
                        Err(error) => {
                            let _ = ready_sender.send(Err(error));
                            return;
                        }
                    };
                    let _ = ready_sender.send(Ok(()));
                    // The session holds the lock; it ends when the lock is dropped. A session
                    // that ended under it is replaced, and the lock taken again if it is free.
                    let mut current = Some(connection);
                    loop {
                        tokio::select! {
                            _ = &mut stopped => break,
                            _ = tokio::time::sleep(CHECK_EVERY) => {}
                        }
                        let alive = match current.as_mut() {
                            Some(connection) => {
                                sqlx::query("SELECT 1").execute(connection).await.is_ok()
                            }
                            None => false,
                        };
                        if alive {
                            continue;
                        }
                        if flag.now() == LockNow::Held {
                            flag.set(LockNow::Reconnecting);
                        }
                        current = None;
                        match take(&url, &options).await {
                            Ok(connection) => {
                                current = Some(connection);
                                flag.set(LockNow::Held);
                            }
                            Err(PostgresLockError::Held { .. }) => {
                                flag.set(LockNow::TakenElsewhere)
                            }
                            Err(PostgresLockError::Store(_)) => flag.set(LockNow::Reconnecting),
                        }
                    }
                    if let Some(mut connection) = current {
                        let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
                            .bind(EXECUTOR_LOCK)
                            .execute(&mut connection)
                            .await;
                        let _ = connection.close().await;
                    }
                });
            })
            .map_err(|error| PostgresLockError::Store(StoreError::Database(error.to_string())))?;
        match ready.recv() {
            Ok(Ok(())) => Ok(PostgresLock {
                stop: Some(stop),
                thread: Some(thread),
                held,
            }),
            Ok(Err(error)) => {
                let _ = thread.join();
                Err(error)
            }
            Err(_) => {
                let _ = thread.join();
                Err(PostgresLockError::Store(StoreError::Database(
                    "the PostgreSQL lock's thread ended early".into(),
                )))
            }
        }
    }
}

impl PostgresLock {
    /// Whether the lock is held right now; false while its session is being replaced after it
    /// ended, and for good once another Keel took the lock meanwhile.
    pub fn held(&self) -> LockHold {
        self.held.clone()
    }
}

/// Where a [`PostgresLock`] stands, shared with whoever watches it.
#[derive(Debug, Clone, Default)]
pub struct LockHold(Arc<std::sync::atomic::AtomicU8>);

/// What a [`LockHold`] says now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockNow {
    /// This Keel holds the lock.
    Held,
    /// Its session ended and the server cannot be reached to take it back: nothing this Keel
    /// could write reaches the database either.
    Reconnecting,
    /// The server answers and another Keel holds the lock.
    TakenElsewhere,
}

impl LockHold {
    pub fn now(&self) -> LockNow {
        match self.0.load(std::sync::atomic::Ordering::SeqCst) {
            0 => LockNow::Held,
            1 => LockNow::Reconnecting,
            _ => LockNow::TakenElsewhere,
        }
    }

    fn set(&self, now: LockNow) {
        let value = match now {
            LockNow::Held => 0,
            LockNow::Reconnecting => 1,
            LockNow::TakenElsewhere => 2,
        };
        self.0.store(value, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for PostgresLock {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn take(
    url: &PostgresUrl,
    options: &PgConnectOptions,
) -> Result<PgConnection, PostgresLockError> {
    let store_error = |error: sqlx::Error| {
        PostgresLockError::Store(StoreError::Unreachable {
            location: url.to_string(),
            detail: url.scrub(&error.to_string()),
        })
    };
    let mut connection = tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(options))
        .await
        .map_err(|_| {
            PostgresLockError::Store(StoreError::Unreachable {
                location: url.to_string(),
                detail: format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
            })
        })?
        .map_err(store_error)?;
    let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(EXECUTOR_LOCK)
        .fetch_one(&mut connection)
        .await
        .map_err(store_error)?;
    if taken {
        return Ok(connection);
    }
    // A 64-bit advisory key shows in pg_locks as its high and low halves.
    let holder: Option<String> = sqlx::query_scalar(
        "SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
         WHERE l.locktype = 'advisory' AND l.granted AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND l.classid::bigint = $1 AND l.objid::bigint = $2 AND l.objsubid = 1
         LIMIT 1",
    )
    .bind(EXECUTOR_LOCK >> 32)
    .bind(EXECUTOR_LOCK & 0xFFFF_FFFF)
    .fetch_optional(&mut connection)
    .await
    .map_err(store_error)?;
    let _ = connection.close().await;
    Err(PostgresLockError::Held {
        holder: holder
            .filter(|name| !name.is_empty())
            .unwrap_or_else(|| "a Keel whose name the server does not show".into()),
    })
}
