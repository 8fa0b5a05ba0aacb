//! Hardening of the supervisor and the process executor, with real processes: a supervisor that
//! dies takes its task with it before the attempt is reported, daemons that left the task's
//! process group included, a task that ends by itself just as its timeout passes is not recorded
//! as timed out, descendants that leave the task's process group end with the attempt, and a log
//! that cannot be written is cut with a marker.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use keel_exec::supervisor::{AttemptRecordFile, read_record};
use keel_exec::{Adopted, Executor};
use keel_model::Outcome;

use super::{executor, launch, runtime};

/// The one-letter state of `pid` (`R`, `S`, `Z`…), or `None` when there is no such process.
fn state_of(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.trim_start().chars().next()
}

/// Whether `pid` can still run. A zombie has ended; it only waits to be collected, which the
/// first process of some containers never does.
pub(crate) fn is_running(pid: i32) -> bool {
    state_of(pid).is_some_and(|state| !matches!(state, 'Z' | 'X'))
}

/// Waits until a task has written a pid into `path`, and returns it.
pub(crate) fn wait_for_pid(path: &Path) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(pid) = std::fs::read_to_string(path)
            .ok()
            .and_then(|text| text.trim().parse().ok())
        {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "the task never wrote {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Kills the processes it holds when dropped, so that a failing test leaves nothing running.
struct Leftovers(Vec<i32>);

impl Drop for Leftovers {
    fn drop(&mut self) {
        for pid in &self.0 {
            if is_running(*pid) {
                // SAFETY: killing a process this test's task started.
                unsafe { libc::kill(*pid, libc::SIGKILL) };
            }
        }
    }
}

/// A task whose shell leads its group and waits on a long sleep in the background, writing both
/// pids first.
fn sleeping_task(dir: &Path) -> String {
    format!(
        "echo $$ > {leader}; sleep 60 & echo $! > {sleeper}; wait",
        leader = dir.join("leader.pid").display(),
        sleeper = dir.join("sleeper.pid").display()
    )
}

/// Regression: a supervisor killed by SIGKILL (an operator, the OOM killer) left its task running
/// unobserved, and the attempt was reported `lost` at once, so the next attempt ran beside it.
/// Now the report comes only once the task's whole process group is gone.
#[test]
fn a_killed_supervisor_takes_its_task_with_it_before_the_attempt_is_reported() {
    for (name, executor) in [
        ("host", executor()),
        ("own process", executor().without_host()),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let attempt = dir.path().join("a1");
        let mut leftovers = Leftovers(Vec::new());
        let report = runtime().block_on(async {
            let mut running = executor
                .launch(launch(&attempt, &sleeping_task(dir.path())))
                .unwrap();
            running.resolve_pid();
            let leader = wait_for_pid(&dir.path().join("leader.pid"));
            let sleeper = wait_for_pid(&dir.path().join("sleeper.pid"));
            leftovers.0.extend([leader, sleeper]);
            let supervisor = running.pid.expect("the supervisor's pid is known") as i32;
            // SAFETY: killing the supervisor this test started.
            unsafe { libc::kill(supervisor, libc::SIGKILL) };
            let report = running.completion.await;
            // Checked the moment the attempt is reported: this is when the engine would start
            // the next attempt.
            for (what, pid) in [("leader", leader), ("background sleep", sleeper)] {
                assert!(
                    !is_running(pid),
                    "{name}: the task's {what} (pid {pid}) still runs after the attempt was reported: {report:?}"
                );
            }
            report
        });
        assert_eq!(report.outcome, Outcome::Lost, "{name}: {report:?}");
        let message = report.message.unwrap_or_default();
        assert!(
            message.contains("without an exit record") && message.contains("has been killed"),
            "{name}: the message says what happened: {message}"
        );
    }
}

/// The same when no Keel was watching: a supervisor killed while Keel was down leaves its task
/// running, and the next Keel must end that task before it gives the attempt up as gone.
#[test]
fn adopting_an_attempt_whose_supervisor_was_killed_ends_its_task_first() {
    let dir = tempfile::tempdir().unwrap();
    let attempt = dir.path().join("a1");
    let mut leftovers = Leftovers(Vec::new());
    // Launch, then drop the launcher without waiting, as a killed Keel would.
    let supervisor = {
        let runtime = runtime();
        let launcher = executor();
        let mut running = runtime.block_on(async {
            launcher
                .launch(launch(&attempt, &sleeping_task(dir.path())))
                .unwrap()
        });
        running.resolve_pid();
        running.pid.expect("the supervisor's pid is known") as i32
    };
    let leader = wait_for_pid(&dir.path().join("leader.pid"));
    let sleeper = wait_for_pid(&dir.path().join("sleeper.pid"));
    leftovers.0.extend([leader, sleeper]);
    // The supervisor records the task's group as the task starts; the task wrote its pids
    // after that.
    match read_record(&attempt) {
        Some(Ok(AttemptRecordFile::Running {
            task: Some(group), ..
        })) => assert_eq!(group.id, leader, "the task leads its own group"),
        other => panic!("the record names the task's group: {other:?}"),
    }
    // SAFETY: killing the supervisor this test started.
    unsafe { libc::kill(supervisor, libc::SIGKILL) };
    // Wait until the supervisor is really gone (its lock is then free), as a new Keel finds it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while is_running(supervisor) {
        assert!(Instant::now() < deadline, "the supervisor did not die");
        std::thread::sleep(Duration::from_millis(5));
    }
    let adopted = executor().adopt(attempt.clone(), Some(supervisor as u32));
    assert!(
        matches!(adopted, Adopted::Gone(_)),
        "no supervisor and no exit record: the attempt is gone"
    );
    assert!(
        !is_running(sleeper) && !is_running(leader),
        "the orphaned task was ended before the attempt was given up"
    );
}

/// Regression: a task that exited 0 just before its timeout was recorded `timed_out` when the
/// supervisor judged the timeout before looking at the exit. The supervisor is stopped with
/// SIGSTOP while the task runs and resumed only once the task has exited and the timeout has
/// passed, so it finds both at once, whatever the machine's speed.
#[test]
fn a_task_that_exited_just_before_its_timeout_is_judged_by_its_exit() {
    let executor = executor();
    // The supervisor must be stopped well before the timeout; on a machine too busy for that,
    // the scenario is run again with a longer one.
    for timeout_seconds in [2, 4, 8, 16] {
        let dir = tempfile::tempdir().unwrap();
        let task_pid_file = dir.path().join("task.pid");
        let go = dir.path().join("go");
        let mut spec = launch(
            &dir.path().join("a1"),
            &format!(
                "echo $$ > {}; while [ ! -e {} ]; do sleep 0.01; done; exit 0",
                task_pid_file.display(),
                go.display()
            ),
        );
        let timeout = Duration::from_secs(timeout_seconds);
        spec.timeout = timeout;
        let launched = Instant::now();
        let (report, stopped_in_time) = runtime().block_on(async {
            let mut running = executor.launch(spec).unwrap();
            running.resolve_pid();
            let supervisor = running.pid.expect("the supervisor's pid is known") as i32;
            let task = wait_for_pid(&task_pid_file);
            // SAFETY: pausing the supervisor this test started.
            unsafe { libc::kill(supervisor, libc::SIGSTOP) };
            let stopped_in_time = launched.elapsed() < timeout / 2;
            std::fs::write(&go, "").unwrap();
            if stopped_in_time {
                // The task now exits by itself, and stays a zombie until the paused supervisor
                // collects it.
                let deadline = Instant::now() + Duration::from_secs(30);
                while state_of(task) != Some('Z') {
                    assert!(Instant::now() < deadline, "the task did not exit");
                    std::thread::sleep(Duration::from_millis(5));
                }
                // And the timeout passes.
                let past_timeout = timeout + Duration::from_millis(200);
                if let Some(left) = past_timeout.checked_sub(launched.elapsed()) {
                    std::thread::sleep(left);
                }
            }
            // SAFETY: resuming the supervisor this test paused.
            unsafe { libc::kill(supervisor, libc::SIGCONT) };
            (running.completion.await, stopped_in_time)
        });
        if !stopped_in_time {
            eprintln!("the machine is busy; trying again with a longer timeout");
            continue;
        }
        assert_eq!(
            report.outcome,
            Outcome::Succeeded,
            "the task exited 0 before the timeout was judged: {report:?}"
        );
        assert_eq!(report.exit_code, Some(0));
        return;
    }
    panic!("the supervisor could never be paused before the timeout");
}

/// A task's daemon that calls `setsid` leaves the task's process group, so the group kill missed
/// it and it outlived the attempt. The supervisor, a child subreaper, now ends every descendant
/// with the attempt: when the task exits, when it times out and when it is stopped.
#[test]
fn a_daemon_that_left_the_task_group_ends_with_the_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let mut leftovers = Leftovers(Vec::new());
    for (case, after, timeout, stop, expected) in [
        ("exits", "exit 0", 20, false, Outcome::Succeeded),
        ("times out", "sleep 60", 1, false, Outcome::TimedOut),
        ("is stopped", "sleep 60", 20, true, Outcome::Cancelled),
    ] {
        let attempt = dir.path().join(case.replace(' ', "_"));
        let daemon_file = dir
            .path()
            .join(format!("{}.daemon", case.replace(' ', "_")));
        let mut spec = launch(
            &attempt,
            &format!(
                "setsid sh -c 'echo $$ > {daemon}; exec sleep 1000' & while [ ! -s {daemon} ]; do sleep 0.01; done; {after}",
                daemon = daemon_file.display()
            ),
        );
        spec.timeout = Duration::from_secs(timeout);
        let report = runtime().block_on(async {
            let running = executor().launch(spec).unwrap();
            let daemon = wait_for_pid(&daemon_file);
            leftovers.0.push(daemon);
            if stop {
                (running.stop)();
            }
            running.completion.await
        });
        assert_eq!(report.outcome, expected, "{case}: {report:?}");
        let daemon = *leftovers.0.last().unwrap();
        assert!(
            !is_running(daemon),
            "when the task {case}, its setsid daemon (pid {daemon}) ends with the attempt"
        );
    }
}

/// A task that starts a daemon with `setsid` (a new session, out of the task's process group),
/// writes the daemon's pid, and sleeps.
fn daemon_task(dir: &Path) -> String {
    format!(
        "echo $$ > {leader}; setsid sh -c 'echo $$ > {daemon}; exec sleep 300' & while [ ! -s {daemon} ]; do sleep 0.01; done; sleep 60",
        leader = dir.join("leader.pid").display(),
        daemon = dir.join("daemon.pid").display()
    )
}

/// Waits until the supervisor has put `pid` on record among the processes that left the task's
/// process group.
fn wait_until_recorded_as_escaped(attempt: &Path, pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(Ok(AttemptRecordFile::Running { escaped, .. })) = read_record(attempt)
            && escaped.iter().any(|process| process.pid == pid)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the supervisor never recorded the daemon {pid}: {:?}",
            read_record(attempt)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Regression: a task's daemon that called `setsid` left the task's process group and session,
/// so when the supervisor was killed with SIGKILL, the group kill missed it; it was handed to
/// the system's first process and ran on for good, beside the attempt's retry. Now the
/// supervisor records such processes as it sees them, and the attempt is reported only once
/// they are dead, through the attempt host and through a supervisor of its own alike.
#[test]
fn a_daemon_of_a_killed_supervisor_is_killed_before_the_attempt_is_reported() {
    for (name, executor) in [
        ("host", executor()),
        ("own process", executor().without_host()),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let attempt = dir.path().join("a1");
        let mut leftovers = Leftovers(Vec::new());
        let report = runtime().block_on(async {
            let mut running = executor
                .launch(launch(&attempt, &daemon_task(dir.path())))
                .unwrap();
            running.resolve_pid();
            let leader = wait_for_pid(&dir.path().join("leader.pid"));
            let daemon = wait_for_pid(&dir.path().join("daemon.pid"));
            leftovers.0.extend([leader, daemon]);
            wait_until_recorded_as_escaped(&attempt, daemon);
            let supervisor = running.pid.expect("the supervisor's pid is known") as i32;
            // SAFETY: killing the supervisor this test started.
            unsafe { libc::kill(supervisor, libc::SIGKILL) };
            let report = running.completion.await;
            // Checked the moment the attempt is reported: this is when the engine would start
            // the next attempt.
            for (what, pid) in [("leader", leader), ("setsid daemon", daemon)] {
                assert!(
                    !is_running(pid),
                    "{name}: the task's {what} (pid {pid}) still runs after the attempt was reported: {report:?}"
                );
            }
            report
        });
        assert_eq!(report.outcome, Outcome::Lost, "{name}: {report:?}");
        let message = report.message.unwrap_or_default();
        assert!(
            message.contains("without an exit record") && message.contains("has been killed"),
            "{name}: the message says what happened: {message}"
        );
    }
}

/// The attempt host is a child subreaper too: a supervisor killed before it could see its task's
/// daemon (here it is stopped with SIGSTOP before the task starts the daemon, so it never
/// looks) hands every process it leaves to the host, which kills them before it reports the
/// supervisor's end.
///
/// Regression (flaky, about 1 run in 50): the host read its list of children while the task's
/// leader was dying, found the leader a zombie, and reported the end, though the leader's
/// children (the daemon and a sleep) had become the host's meanwhile; now a dead child found
/// means another look, and the task's process group must be empty too.
#[test]
fn the_attempt_host_kills_a_daemon_its_killed_supervisor_never_saw() {
    let dir = tempfile::tempdir().unwrap();
    let attempt = dir.path().join("a1");
    let go = dir.path().join("go");
    let daemon_file = dir.path().join("daemon.pid");
    let script = format!(
        "echo $$ > {leader}; while [ ! -e {go} ]; do sleep 0.01; done; setsid sh -c 'echo $$ > {daemon}; exec sleep 300' & sleep 60",
        leader = dir.path().join("leader.pid").display(),
        go = go.display(),
        daemon = daemon_file.display()
    );
    let mut leftovers = Leftovers(Vec::new());
    let report = runtime().block_on(async {
        let mut running = executor().launch(launch(&attempt, &script)).unwrap();
        running.resolve_pid();
        let leader = wait_for_pid(&dir.path().join("leader.pid"));
        leftovers.0.push(leader);
        let supervisor = running.pid.expect("the supervisor's pid is known") as i32;
        // SAFETY: pausing the supervisor this test started.
        unsafe { libc::kill(supervisor, libc::SIGSTOP) };
        std::fs::write(&go, "").unwrap();
        let daemon = wait_for_pid(&daemon_file);
        leftovers.0.push(daemon);
        match read_record(&attempt) {
            Some(Ok(AttemptRecordFile::Running { escaped, .. })) => assert!(
                escaped.iter().all(|process| process.pid != daemon),
                "the paused supervisor cannot have seen the daemon: {escaped:?}"
            ),
            other => panic!("the attempt is still running: {other:?}"),
        }
        // SAFETY: killing the supervisor this test started.
        unsafe { libc::kill(supervisor, libc::SIGKILL) };
        let report = running.completion.await;
        assert!(
            !is_running(daemon) && !is_running(leader),
            "the daemon (pid {daemon}) and the leader (pid {leader}) are dead once the attempt is reported: {report:?}"
        );
        report
    });
    assert_eq!(report.outcome, Outcome::Lost, "{report:?}");
    let message = report.message.unwrap_or_default();
    assert!(
        message.contains("killed by the attempt host"),
        "the message says what happened: {message}"
    );
}

/// The same when no Keel was watching and there is no host: a supervisor killed while Keel was
/// down leaves its task's daemon running, and the next Keel ends it, from the record, before it
/// gives the attempt up as gone.
#[test]
fn adopting_an_attempt_whose_supervisor_was_killed_ends_its_daemon_too() {
    let dir = tempfile::tempdir().unwrap();
    let attempt = dir.path().join("a1");
    let mut leftovers = Leftovers(Vec::new());
    let supervisor = {
        let runtime = runtime();
        let launcher = executor().without_host();
        let mut running = runtime.block_on(async {
            launcher
                .launch(launch(&attempt, &daemon_task(dir.path())))
                .unwrap()
        });
        running.resolve_pid();
        running.pid.expect("the supervisor's pid is known") as i32
    };
    let leader = wait_for_pid(&dir.path().join("leader.pid"));
    let daemon = wait_for_pid(&dir.path().join("daemon.pid"));
    leftovers.0.extend([leader, daemon]);
    wait_until_recorded_as_escaped(&attempt, daemon);
    // SAFETY: killing the supervisor this test started.
    unsafe { libc::kill(supervisor, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while is_running(supervisor) {
        assert!(Instant::now() < deadline, "the supervisor did not die");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        is_running(daemon),
        "the daemon outlived its supervisor, as nothing else ends it"
    );
    let adopted = executor()
        .without_host()
        .adopt(attempt.clone(), Some(supervisor as u32));
    assert!(
        matches!(adopted, Adopted::Gone(_)),
        "no supervisor and no exit record: the attempt is gone"
    );
    assert!(
        !is_running(daemon) && !is_running(leader),
        "the daemon (pid {daemon}) was ended before the attempt was given up"
    );
}

/// Regression: a write error on `output.log` (a full disk; here a file size limit, which fails
/// the write the same way) could cut the log mid-line without a word, and past a file size
/// limit the kernel's SIGXFSZ killed the supervisor, so the attempt was lost. Now the supervisor
/// carries on, the log ends in a marker line after the last complete line, and the exit record
/// says what happened.
#[test]
fn a_log_that_cannot_be_written_is_cut_at_a_line_with_a_marker() {
    let dir = tempfile::tempdir().unwrap();
    let attempt = dir.path().join("a1");
    std::fs::create_dir(&attempt).unwrap();
    let limit: u64 = 16 << 10;
    let mut command = Command::new(env!("CARGO_BIN_EXE_keel-attempt"));
    command.args([
        "--dir",
        &attempt.display().to_string(),
        "--log-cap",
        "1048576",
        "--",
        "sh",
        "-c",
        "i=0; while [ $i -lt 3000 ]; do echo \"line $i of the task's output\"; i=$((i+1)); done",
    ]);
    // SAFETY: setrlimit is async-signal-safe and only changes the child's own limits.
    unsafe {
        command.pre_exec(move || {
            let cap = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &cap) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let status = command.status().unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "the supervisor survives the failed writes and records the end: {status}"
    );
    let record = match read_record(&attempt) {
        Some(Ok(AttemptRecordFile::Ended(record))) => record,
        other => panic!("an exit record: {other:?}"),
    };
    assert_eq!(record.code, Some(0), "{record:?}");
    let problem = record.output_problem.clone().unwrap_or_default();
    assert!(
        problem.contains("output.log") && problem.contains("File too large"),
        "the record names the file and the error: {problem}"
    );
    let report = keel_exec::interpret(&record, &attempt);
    assert_eq!(report.outcome, Outcome::Succeeded);
    assert!(
        report
            .message
            .unwrap_or_default()
            .contains("File too large"),
        "the attempt's message carries the problem"
    );

    let log = std::fs::read_to_string(attempt.join("output.log")).unwrap();
    assert!(log.len() as u64 <= limit, "{} bytes", log.len());
    assert!(
        log.ends_with('\n'),
        "the marker ends the log on its own line"
    );
    let lines: Vec<&str> = log.lines().collect();
    let marker = lines.last().unwrap();
    assert!(
        marker.starts_with("[keel: output cut after ")
            && marker.contains("File too large")
            && marker.ends_with("later output was dropped]"),
        "{marker}"
    );
    let kept = &lines[..lines.len() - 1];
    assert!(
        kept.len() > 100,
        "most of what fitted was kept: {}",
        kept.len()
    );
    for (number, line) in kept.iter().enumerate() {
        assert_eq!(
            *line,
            format!("line {number} of the task's output"),
            "every line before the marker is whole, and none is missing"
        );
    }
}

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

/// Regression: attempt directories were made 0755 and output.log 0644, readable by every user.
#[test]
fn attempt_files_are_private_to_their_user() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let attempt = dir.path().join("run").join("a.1");
    let report = runtime().block_on(async {
        let running = executor().launch(launch(&attempt, "echo private")).unwrap();
        running.completion.await
    });
    assert_eq!(report.outcome, Outcome::Succeeded, "{report:?}");
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.path().join("run")), 0o700);
    assert_eq!(mode(&attempt), 0o700);
    assert_eq!(mode(&attempt.join("output.log")), 0o600);
    assert_eq!(mode(&attempt.join("attempt.lock")), 0o600);
}
