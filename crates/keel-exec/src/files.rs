//! Reading files that a task can tamper with.
//!
//! An attempt directory belongs to its task: the task writes its result file there and may put
//! anything at any of the paths Keel reads afterwards. A named pipe would block a plain read
//! forever, and a link to `/dev/zero` would feed it without end, so these files are opened
//! without following links and without blocking, must turn out to be regular files, and are
//! read only up to a cap.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use rustix::fs::OFlags;
use rustix::io::Errno;

/// Why a file could not be read.
#[derive(Debug)]
pub enum FileProblem {
    /// The path is a symbolic link.
    Link,
    /// The path is something other than a regular file; says what.
    NotRegular(&'static str),
    /// The file holds more than the cap.
    TooLarge {
        cap: u64,
    },
    Io(std::io::Error),
}

impl std::fmt::Display for FileProblem {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FileProblem::Link => formatter.write_str("it is a symbolic link, not a regular file"),
            FileProblem::NotRegular(kind) => write!(formatter, "it is {kind}, not a regular file"),
            FileProblem::TooLarge { cap } => {
                write!(
                    formatter,
                    "it holds more than {}, the most Keel reads",
                    format_bytes(*cap)
                )
            }
            FileProblem::Io(error) => write!(formatter, "{error}"),
        }
    }
}

/// `1 MiB` for 1048576, `64 KiB` for 65536, and plain bytes otherwise.
pub(crate) fn format_bytes(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes.is_multiple_of(1 << 10) {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} {}", if bytes == 1 { "byte" } else { "bytes" })
    }
}

fn kind_of(file_type: std::fs::FileType) -> &'static str {
    if file_type.is_dir() {
        "a directory"
    } else if file_type.is_fifo() {
        "a named pipe"
    } else if file_type.is_socket() {
        "a socket"
    } else if file_type.is_char_device() {
        "a character device"
    } else if file_type.is_block_device() {
        "a block device"
    } else {
        "not a plain file"
    }
}

/// Opens `path` for reading if it is a regular file, without following a symbolic link and
/// without blocking on a pipe. `Ok(None)` when there is nothing at the path.
pub fn open_regular_file(path: &Path) -> Result<Option<File>, FileProblem> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags((OFlags::NOFOLLOW | OFlags::NONBLOCK).bits() as i32)
        .open(path)
    {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) if error.raw_os_error() == Some(Errno::LOOP.raw_os_error()) => {
            return Err(FileProblem::Link);
        }
        Err(error) => return Err(FileProblem::Io(error)),
    };
    // Checked on the open descriptor, so the path cannot be swapped between check and read.
    let file_type = file.metadata().map_err(FileProblem::Io)?.file_type();
    if !file_type.is_file() {
        return Err(FileProblem::NotRegular(kind_of(file_type)));
    }
    Ok(Some(file))
}

/// Reads the regular file at `path`, which must hold at most `cap` bytes. `Ok(None)` when
/// there is nothing at the path.
pub(crate) fn read_regular_file(path: &Path, cap: u64) -> Result<Option<Vec<u8>>, FileProblem> {
    let Some(file) = open_regular_file(path)? else {
        return Ok(None);
    };
    let mut bytes = Vec::new();
    // One byte past the cap tells a file of exactly `cap` bytes from a longer one.
    file.take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(FileProblem::Io)?;
    if bytes.len() as u64 > cap {
        return Err(FileProblem::TooLarge { cap });
    }
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_read_naturally() {
        assert_eq!(format_bytes(1 << 20), "1 MiB");
        assert_eq!(format_bytes(64 << 10), "64 KiB");
        assert_eq!(format_bytes(1000), "1000 bytes");
    }

    #[test]
    fn only_a_regular_file_within_the_cap_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "12345").unwrap();
        assert_eq!(read_regular_file(&plain, 5).unwrap().unwrap(), b"12345");
        assert!(matches!(
            read_regular_file(&plain, 4),
            Err(FileProblem::TooLarge { cap: 4 })
        ));
        assert!(
            read_regular_file(&dir.path().join("missing"), 5)
                .unwrap()
                .is_none()
        );
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&plain, &link).unwrap();
        assert!(matches!(
            read_regular_file(&link, 5),
            Err(FileProblem::Link)
        ));
        assert!(matches!(
            read_regular_file(dir.path(), 5),
            Err(FileProblem::NotRegular("a directory"))
        ));
    }
}
