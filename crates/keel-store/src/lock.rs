//! The one-executor-per-state lock: a `flock` on `keel.lock` in the state directory, holding the
//! owner's pid. The kernel releases it when the process dies, however it dies, so a crashed Keel
//! never leaves a stale lock behind.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another keel is running this pipeline (pid {pid}); wait for it to finish or stop it first (lock {path:?})"
    )]
    Held { pid: String, path: PathBuf },
    #[error("cannot create the lock file {path:?}; check that the state directory is writable")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Held for as long as this value lives.
#[derive(Debug)]
pub struct StateLock {
    _file: File,
    path: PathBuf,
}

impl StateLock {
    /// Takes the lock without waiting.
    pub fn acquire(state_dir: &Path) -> Result<StateLock, LockError> {
        let path = state_dir.join("keel.lock");
        let io_error = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_error)?;
        // SAFETY: flock on a descriptor we own; it only reads the descriptor.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        if !locked {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io_error(error));
            }
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            return Err(LockError::Held {
                pid: if pid.is_empty() {
                    "unknown".into()
                } else {
                    pid.to_string()
                },
                path,
            });
        }
        file.set_len(0).map_err(io_error)?;
        file.seek(SeekFrom::Start(0)).map_err(io_error)?;
        write!(file, "{}", std::process::id()).map_err(io_error)?;
        file.flush().map_err(io_error)?;
        Ok(StateLock { _file: file, path })
    }

    /// Whether some process holds the lock right now.
    pub fn is_held(state_dir: &Path) -> bool {
        matches!(StateLock::acquire(state_dir), Err(LockError::Held { .. }))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}
