//! The process executor of a bound worker, [`ProcessExecutor::in_threads`]: each attempt is
//! watched from a thread of the calling process instead of a supervisor process of its own. The
//! same rules hold as under a supervisor (output, result file, timeout, stall, stop, output cap,
//! the whole group killed), and the task dies with the thread that watches it.

use std::path::Path;
use std::time::Duration;

use keel_exec::{Executor, ProcessExecutor};
use keel_model::Outcome;

use super::hardening::{is_running, wait_for_pid};
use super::{executor, launch, runtime};

fn threads() -> ProcessExecutor {
    executor().in_threads()
}

#[test]
fn output_the_result_file_and_the_environment_reach_keel_with_no_supervisor_process() {
    let dir = tempfile::tempdir().unwrap();
    let attempt = dir.path().join("a1");
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let mut spec = launch(
        &attempt,
        r#"echo out; echo err >&2; pwd > where; echo "$GIVEN" > given; printf '{"rows": 12, "metrics": {"mae": 1.5}}' > "$KEEL_RESULT""#,
    );
    spec.cwd = Some(work.clone());
    spec.env.push(("GIVEN".into(), "given".into()));
    let report = runtime().block_on(async {
        let running = threads().launch(spec).unwrap();
        assert_eq!(running.pid, None, "no supervisor process");
        running.completion.await
    });
    assert_eq!(report.outcome, Outcome::Succeeded, "{report:?}");
    assert_eq!(report.rows, Some(12));
    let output = std::fs::read_to_string(attempt.join("output.log")).unwrap();
    assert!(output.contains("out") && output.contains("err"), "{output}");
    assert_eq!(
        std::fs::read_to_string(work.join("where")).unwrap().trim(),
        work.display().to_string()
    );
    assert_eq!(
        std::fs::read_to_string(work.join("given")).unwrap().trim(),
        "given"
    );
    // Nothing is kept on record: a worker's attempts are never adopted.
    let files: Vec<String> = std::fs::read_dir(&attempt)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(!files.iter().any(|name| name.contains("lock")), "{files:?}");
}

#[test]
fn a_missing_command_and_a_missing_working_directory_fail_permanently_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut missing = launch(&dir.path().join("a1"), "");
    missing.command = vec!["keel-no-such-command-here".into()];
    let mut nowhere = launch(&dir.path().join("a2"), "true");
    nowhere.cwd = Some(dir.path().join("no-such-dir"));
    let (missing, nowhere) = runtime().block_on(async {
        let executor = threads();
        let missing = executor.launch(missing).unwrap().completion.await;
        let nowhere = executor.launch(nowhere).unwrap().completion.await;
        (missing, nowhere)
    });
    assert_eq!(missing.outcome, Outcome::FailedPermanent);
    assert_eq!(
        missing.message.as_deref(),
        Some("command not found: keel-no-such-command-here")
    );
    assert_eq!(nowhere.outcome, Outcome::FailedPermanent);
    assert!(
        nowhere.message.unwrap().starts_with("working directory"),
        "names the directory"
    );
}

#[test]
fn a_timeout_a_stall_and_a_stop_end_the_whole_group() {
    let dir = tempfile::tempdir().unwrap();
    let grandchild = |name: &str| dir.path().join(format!("{name}.pid"));
    let task = |name: &str| format!("sleep 60 & echo $! > {}; wait", grandchild(name).display());
    let mut timed = launch(&dir.path().join("timed"), &task("timed"));
    timed.timeout = Duration::from_millis(300);
    let mut silent = launch(&dir.path().join("silent"), &task("silent"));
    silent.heartbeat = Some(Duration::from_millis(300));
    let stopped = launch(&dir.path().join("stopped"), &task("stopped"));
    let (timed, silent, stopped) = runtime().block_on(async {
        let executor = threads();
        let timed = executor.launch(timed).unwrap();
        let silent = executor.launch(silent).unwrap();
        let stopped = executor.launch(stopped).unwrap();
        wait_for_pid(&grandchild("stopped"));
        (stopped.stop)();
        (
            timed.completion.await,
            silent.completion.await,
            stopped.completion.await,
        )
    });
    assert_eq!(timed.outcome, Outcome::TimedOut, "{timed:?}");
    assert_eq!(silent.outcome, Outcome::Stalled, "{silent:?}");
    assert_eq!(stopped.outcome, Outcome::Cancelled, "{stopped:?}");
    for name in ["timed", "silent", "stopped"] {
        let pid = wait_for_pid(&grandchild(name));
        assert!(
            !is_running(pid),
            "{name}: the sleep in the task's group was killed"
        );
    }
}

#[test]
fn output_is_capped_and_a_daemon_seen_leaving_the_group_ends_with_the_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let mut capped = launch(&dir.path().join("capped"), "yes keel | head -c 100000");
    capped.log_cap = 1000;
    let daemon_file = dir.path().join("daemon.pid");
    // The task outlives the watch's first look (100 ms), so the daemon is seen as its
    // descendant while the task still runs.
    let daemon = launch(
        &dir.path().join("daemon"),
        &format!(
            "setsid sh -c 'echo $$ > {daemon}; exec sleep 1000' & while [ ! -s {daemon} ]; do sleep 0.01; done; sleep 0.5",
            daemon = daemon_file.display()
        ),
    );
    let (capped, daemon) = runtime().block_on(async {
        let executor = threads();
        let capped = executor.launch(capped).unwrap().completion.await;
        let daemon = executor.launch(daemon).unwrap().completion.await;
        (capped, daemon)
    });
    assert_eq!(capped.outcome, Outcome::Succeeded);
    let output = std::fs::read_to_string(dir.path().join("capped/output.log")).unwrap();
    assert!(output.len() < 1100, "{}", output.len());
    assert!(output.contains("[keel: output truncated at 1000 bytes]"));
    assert_eq!(daemon.outcome, Outcome::Succeeded, "{daemon:?}");
    let pid = wait_for_pid(&daemon_file);
    assert!(
        !is_running(pid),
        "the setsid daemon (pid {pid}) ended with the attempt"
    );
}

/// The task's leader dies with the process that watches it: here a child process of the test
/// runs an attempt in a thread and is killed with SIGKILL while the task sleeps.
#[test]
fn the_task_dies_with_the_process_watching_it() {
    if let Ok(dir) = std::env::var("KEEL_EXEC_TEST_THREAD_CHILD") {
        // The child: start the attempt, then wait to be killed.
        let dir = Path::new(&dir);
        let spec = launch(
            &dir.join("attempt"),
            &format!(
                "echo $$ > {}; exec sleep 60",
                dir.join("leader.pid").display()
            ),
        );
        runtime().block_on(async {
            let running = threads().launch(spec).unwrap();
            running.completion.await
        });
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "threads::the_task_dies_with_the_process_watching_it",
            "--nocapture",
        ])
        .env("KEEL_EXEC_TEST_THREAD_CHILD", dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let leader = wait_for_pid(&dir.path().join("leader.pid"));
    assert!(is_running(leader));
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while is_running(leader) {
        assert!(
            std::time::Instant::now() < deadline,
            "the task (pid {leader}) outlived the process watching it"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
