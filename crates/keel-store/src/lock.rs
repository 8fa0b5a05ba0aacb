//! The one-executor-per-state lock: a `flock` on `keel.lock` in the state directory, holding the
//! owner's pid. The kernel releases it when the process dies, however it dies, so a crashed Keel
//! never leaves a stale lock behind.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another keel is running this pipeline (pid {pid}{}); wait for it to finish or stop it first (lock {path:?})",
        if *serving { ", keel serve" } else { "" }
    )]
    Held {
        pid: String,
        /// The holder is a `keel serve`, which takes up runs queued in the store.
        serving: bool,
        path: PathBuf,
    },
    #[error(
        "the lock file {path:?} is a symbolic link; keel follows no links in its state directory, so remove it and try again"
    )]
    SymbolicLink { path: PathBuf },
    #[error("the lock file {path:?} is not a regular file; remove it and try again")]
    NotAFile { path: PathBuf },
    #[error(
        "another keel is running this pipeline's state in PostgreSQL ({holder}, state {location}); wait for it to finish or stop it first, or queue a run for a keel serve with keel run --detach"
    )]
    HeldInPostgres { holder: String, location: String },
    #[error(transparent)]
    Store(#[from] crate::StoreError),
    #[error("cannot create the lock file {path:?}; check that the state directory is writable")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Written after the pid in the lock file by a `keel serve`.
const SERVE_MARK: &str = "serve";

/// Held for as long as this value lives.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
    path: PathBuf,
    /// For a state in PostgreSQL, the lock in the database too: the state directory is this
    /// machine's, the database everyone's.
    _postgres: Option<crate::PostgresLock>,
}

impl StateLock {
    /// Takes the lock without waiting.
    pub fn acquire(state_dir: &Path) -> Result<StateLock, LockError> {
        StateLock::acquire_as(state_dir, false)
    }

    /// Takes the lock without waiting, for a `keel serve` when `serving`: the lock file says
    /// so, and a `keel run` that finds it held queues its run instead of giving up.
    pub fn acquire_as(state_dir: &Path, serving: bool) -> Result<StateLock, LockError> {
        let path = state_dir.join("keel.lock");
        let io_error = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        // The pid is written into this file, truncating it first: through a link planted in the
        // state directory that would overwrite whatever the link points to. Only the owner may
        // read the lock file, like everything else in the state.
        let mut file = match OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&path)
        {
            Ok(file) => file,
            Err(error) if error.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
                return Err(LockError::SymbolicLink { path });
            }
            Err(error) => return Err(io_error(error)),
        };
        if !file.metadata().map_err(io_error)?.is_file() {
            return Err(LockError::NotAFile { path });
        }
        // An exclusive `flock` (what `File::try_lock` takes on Linux), dropped by the kernel when
        // its holder dies.
        if let Err(error) = file.try_lock() {
            if let std::fs::TryLockError::Error(error) = error {
                return Err(io_error(error));
            }
            let mut holder = String::new();
            let _ = file.take(256).read_to_string(&mut holder);
            let mut words = holder.split_whitespace();
            let pid = words.next().unwrap_or("unknown").to_string();
            let serving = words.next() == Some(SERVE_MARK);
            return Err(LockError::Held { pid, serving, path });
        }
        file.set_len(0).map_err(io_error)?;
        file.seek(SeekFrom::Start(0)).map_err(io_error)?;
        let mark = if serving { SERVE_MARK } else { "" };
        write!(file, "{} {mark}", std::process::id()).map_err(io_error)?;
        file.flush().map_err(io_error)?;
        Ok(StateLock {
            _file: file,
            path,
            _postgres: None,
        })
    }

    /// For a state in PostgreSQL, whether the lock in the database is still held (see
    /// [`crate::PostgresLock::held`]); `None` for an SQLite state.
    pub fn postgres_held(&self) -> Option<crate::LockHold> {
        self._postgres.as_ref().map(crate::PostgresLock::held)
    }

    /// Takes the executor's lock in the PostgreSQL database of the state as well, without
    /// waiting, after this one: another Keel on another machine, with a state directory of
    /// its own, executes the same state only once this Keel is gone.
    pub fn and_in_postgres(
        mut self,
        url: &crate::PostgresUrl,
        serving: bool,
    ) -> Result<StateLock, LockError> {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|name| name.trim().to_string())
            .unwrap_or_default();
        let holder = format!(
            "keel{} pid {} on {}",
            if serving { " serve" } else { "" },
            std::process::id(),
            if host.is_empty() {
                "an unnamed host"
            } else {
                &host
            }
        );
        match crate::PostgresLock::acquire(url, &holder) {
            Ok(lock) => {
                self._postgres = Some(lock);
                Ok(self)
            }
            Err(crate::PostgresLockError::Held { holder }) => Err(LockError::HeldInPostgres {
                holder,
                location: url.to_string(),
            }),
            Err(crate::PostgresLockError::Store(error)) => Err(LockError::Store(error)),
        }
    }

    /// Who holds the lock right now, as `(pid, serving)`, without making or changing anything:
    /// `None` when nobody does, or when there is no lock file.
    pub fn holder(state_dir: &Path) -> Option<(String, bool)> {
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(state_dir.join("keel.lock"))
            .ok()?;
        if !file.metadata().ok()?.is_file() {
            return None;
        }
        match file.try_lock_shared() {
            // Nobody holds it exclusively; the shared lock goes with the file.
            Ok(()) => None,
            Err(_) => {
                let mut holder = String::new();
                let _ = (&file).take(256).read_to_string(&mut holder);
                let mut words = holder.split_whitespace();
                let pid = words.next().unwrap_or("unknown").to_string();
                Some((pid, words.next() == Some(SERVE_MARK)))
            }
        }
    }

    /// Whether some process holds the lock right now.
    pub fn is_held(state_dir: &Path) -> bool {
        matches!(StateLock::acquire(state_dir), Err(LockError::Held { .. }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}
