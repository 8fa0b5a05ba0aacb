//! Hardening of the supervisor and the process executor, with real processes: files in an
//! attempt directory that a task swapped for something else do not block Keel.

use std::process::Command;
use std::time::Duration;

use keel_exec::supervisor::read_record;

/// Keel reads an attempt's record file itself; a task that swapped it for a named pipe must not
/// block Keel.
#[test]
fn a_record_file_swapped_for_a_pipe_does_not_block_keel() {
    let dir = tempfile::tempdir().unwrap();
    let status = Command::new("mkfifo")
        .arg(dir.path().join("attempt.lock"))
        .status()
        .unwrap();
    assert!(status.success());
    let (sender, receiver) = std::sync::mpsc::channel();
    let path = dir.path().to_path_buf();
    std::thread::spawn(move || {
        let _ = sender.send(format!("{:?}", read_record(&path)));
    });
    let read = receiver
        .recv_timeout(Duration::from_secs(20))
        .expect("reading the record returned");
    assert!(read.contains("named pipe"), "{read}");
}
