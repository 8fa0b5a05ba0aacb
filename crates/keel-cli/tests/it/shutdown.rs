//! Graceful shutdown with real signals: the first SIGINT lets running attempts finish within the
//! grace period and starts nothing new; a second one stops them at once. Either way the next
//! `keel run` resumes and completes the run, running nothing twice.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{keel_path, write_pipeline};

fn pipeline(ledger: &std::path::Path, sleep: &str) -> String {
    format!(
        r#"
[pipeline]
name = "shutdown"
partition = "none"

[phases.first]
[phases.second]
after = ["first"]

[tasks.slow]
phase = "first"
command = ["sh", "-c", "echo start slow >> {ledger}; sleep {sleep}; echo end slow >> {ledger}"]

[tasks.after_slow]
phase = "second"
command = ["sh", "-c", "echo start after_slow >> {ledger}; echo end after_slow >> {ledger}"]
"#,
        ledger = ledger.display()
    )
}

fn start(pipeline: &std::path::Path, grace: &str) -> Child {
    Command::new(keel_path())
        .args(["run", "--partition", "none", "--grace", grace])
        .arg(pipeline)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn wait_for_line(path: &std::path::Path, line: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(path)
        .unwrap_or_default()
        .contains(line)
    {
        assert!(
            Instant::now() < deadline,
            "{line:?} never appeared in {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn interrupt(child: &Child) {
    // SAFETY: signalling the keel process this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
}

fn count(text: &str, line: &str) -> usize {
    text.lines().filter(|candidate| *candidate == line).count()
}

#[test]
fn a_first_interrupt_lets_the_running_attempt_finish_and_starts_nothing_new() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger");
    let pipeline = write_pipeline(dir.path(), &pipeline(&ledger, "1"));
    let child = start(&pipeline, "20s");
    wait_for_line(&ledger, "start slow");
    interrupt(&child);
    let output = child.wait_with_output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("Interrupt again to stop them now"));
    let text = std::fs::read_to_string(&ledger).unwrap();
    assert_eq!(
        count(&text, "end slow"),
        1,
        "the running attempt finished within the grace"
    );
    assert_eq!(
        count(&text, "start after_slow"),
        0,
        "nothing new started after the interrupt"
    );
    // The next run resumes: slow is not run again, after_slow runs once.
    let status = Command::new(keel_path())
        .args(["run", "--partition", "none"])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let text = std::fs::read_to_string(&ledger).unwrap();
    assert_eq!(
        (count(&text, "start slow"), count(&text, "start after_slow")),
        (1, 1),
        "{text}"
    );
}

#[test]
fn a_second_interrupt_stops_at_once_and_the_next_run_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger");
    let pipeline = write_pipeline(dir.path(), &pipeline(&ledger, "30"));
    let child = start(&pipeline, "10m");
    wait_for_line(&ledger, "start slow");
    interrupt(&child);
    std::thread::sleep(Duration::from_millis(300));
    let stopped_at = Instant::now();
    interrupt(&child);
    let output = child.wait_with_output().unwrap();
    assert!(
        stopped_at.elapsed() < Duration::from_secs(15),
        "the second interrupt did not stop at once"
    );
    assert_eq!(output.status.code(), Some(130));
    let json = Command::new(keel_path())
        .args(["status", "--json"])
        .arg(&pipeline)
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(json["runs"][0]["state"], "running");
    assert_eq!(
        json["runs"][0]["tasks"][0]["state"], "pending",
        "the stopped task waits to be resumed"
    );
    // Resume with a quick task: rewrite the pipeline so slow finishes fast this time.
    write_pipeline(dir.path(), &self::pipeline(&ledger, "0"));
    let resumed = Command::new(keel_path())
        .args(["run", "--partition", "none"])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    let text = std::fs::read_to_string(&ledger).unwrap();
    assert_eq!(count(&text, "end slow"), 1, "{text}");
    assert_eq!(count(&text, "end after_slow"), 1, "{text}");
}
