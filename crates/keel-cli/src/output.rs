//! Writing to stdout and stderr without panicking when the reader has gone away.
//!
//! `keel status | head -1` closes the pipe while Keel still writes; the standard `println!`
//! panics then. Every `println!`, `eprintln!` and `eprint!` of this crate is the one
//! defined in `main.rs`, which comes here: what cannot be written is dropped, and a `keel run`
//! carries on to its own exit code.

use std::io::Write;

/// Writes to stdout, dropping the text if stdout is closed.
pub fn stdout(text: std::fmt::Arguments<'_>, newline: bool) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_fmt(text).and_then(|()| {
        if newline {
            stdout.write_all(b"\n")
        } else {
            Ok(())
        }
    });
}

/// Writes to stderr, dropping the text if stderr is closed.
pub fn stderr(text: std::fmt::Arguments<'_>, newline: bool) {
    let mut stderr = std::io::stderr().lock();
    let _ = stderr.write_fmt(text).and_then(|()| {
        if newline {
            stderr.write_all(b"\n")
        } else {
            Ok(())
        }
    });
}

/// Whether a command ended because its reader closed the pipe: a quiet end, not an error.
pub fn is_closed_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|error| error.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
