//! The process executor end to end, through the real supervisor binary.

mod hardening;
mod threads;

use std::path::Path;
use std::time::Duration;

use keel_exec::{Adopted, Executor, Launch, ProcessExecutor};
use keel_model::Outcome;

fn executor() -> ProcessExecutor {
    ProcessExecutor::new(env!("CARGO_BIN_EXE_keel-attempt").into(), vec![])
}

fn launch(dir: &Path, script: &str) -> Launch {
    Launch {
        dir: dir.to_path_buf(),
        command: vec!["sh".into(), "-c".into(), script.into()],
        env: vec![(
            "KEEL_RESULT".into(),
            dir.join("result.json").display().to_string(),
        )],
        timeout: Duration::from_secs(20),
        heartbeat: None,
        kill_grace: Duration::from_millis(300),
        log_cap: 1 << 20,
        http: None,
        clear_env: false,
        cwd: None,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn captures_output_and_reads_the_result_file() {
    let dir = tempfile::tempdir().unwrap();
    let attempt = dir.path().join("a1");
    let report = runtime().block_on(async {
        let running = executor()
            .launch(launch(&attempt, r#"echo out; echo err >&2; printf '{"rows": 12, "metrics": {"mae": 1.5}}' > "$KEEL_RESULT""#))
            .unwrap();
        running.completion.await
    });
    assert_eq!(report.outcome, Outcome::Succeeded);
    assert_eq!(report.rows, Some(12));
    let output = std::fs::read_to_string(attempt.join("output.log")).unwrap();
    assert!(output.contains("out") && output.contains("err"), "{output}");
}

#[test]
fn a_missing_command_is_a_permanent_failure_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = launch(dir.path(), "");
    spec.command = vec!["keel-no-such-command-here".into()];
    let report = runtime().block_on(async { executor().launch(spec).unwrap().completion.await });
    assert_eq!(report.outcome, Outcome::FailedPermanent);
    assert_eq!(
        report.message.as_deref(),
        Some("command not found: keel-no-such-command-here")
    );
}

/// The task runs in its working directory and, with `clear_env`, with only the environment it
/// is given, whether its supervisor is forked by the attempt host or started on its own.
#[test]
fn the_working_directory_and_a_cleared_environment_reach_the_task_with_and_without_the_host() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    // SAFETY: set before any thread of this test reads the environment; tests that read it do
    // not look for this name.
    unsafe { std::env::set_var("EXEC_TEST_INHERITED_BY_TASKS", "from keel") };
    let script =
        r#"pwd > where; echo "${EXEC_TEST_INHERITED_BY_TASKS:-unset} ${GIVEN:-unset}" > env"#;
    for (name, executor) in [("host", executor()), ("own", executor().without_host())] {
        for clear_env in [false, true] {
            let mut spec = launch(&dir.path().join(format!("{name}-{clear_env}")), script);
            spec.command[0] = "/bin/sh".into();
            spec.cwd = Some(work.clone());
            spec.clear_env = clear_env;
            spec.env.push(("GIVEN".into(), "given".into()));
            let report =
                runtime().block_on(async { executor.launch(spec).unwrap().completion.await });
            assert_eq!(
                report.outcome,
                Outcome::Succeeded,
                "{name} {clear_env}: {report:?}"
            );
            let read = |file: &str| std::fs::read_to_string(work.join(file)).unwrap();
            assert_eq!(read("where").trim(), work.display().to_string(), "{name}");
            let expected = if clear_env {
                "unset given"
            } else {
                "from keel given"
            };
            assert_eq!(read("env").trim(), expected, "{name} clear_env={clear_env}");
        }
    }
}

#[test]
fn a_missing_working_directory_is_a_permanent_failure_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-dir");
    for (index, executor) in [executor(), executor().without_host()]
        .into_iter()
        .enumerate()
    {
        let mut spec = launch(&dir.path().join(format!("a{index}")), "true");
        spec.cwd = Some(missing.clone());
        let report = runtime().block_on(async { executor.launch(spec).unwrap().completion.await });
        assert_eq!(report.outcome, Outcome::FailedPermanent);
        let message = report.message.unwrap();
        assert!(
            message.starts_with(&format!(
                "working directory {:?} does not exist",
                missing.display().to_string()
            )),
            "{message}"
        );
    }
}

#[test]
fn a_timeout_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("grandchild.pid");
    let mut spec = launch(
        &dir.path().join("a1"),
        &format!("sleep 60 & echo $! > {}; wait", marker.display()),
    );
    spec.timeout = Duration::from_millis(300);
    let report = runtime().block_on(async { executor().launch(spec).unwrap().completion.await });
    assert_eq!(report.outcome, Outcome::TimedOut);
    assert!(report.message.unwrap().contains("timed out after"));
    let grandchild: i32 = std::fs::read_to_string(&marker)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // A killed process may linger as a zombie until its new parent reaps it; that is dead too.
    let state = std::fs::read_to_string(format!("/proc/{grandchild}/stat")).unwrap_or_default();
    let running = state
        .rsplit(')')
        .next()
        .map(|rest| rest.trim_start().starts_with(['R', 'S', 'D']))
        .unwrap_or(false);
    assert!(
        !running,
        "the background sleep in the task's group was killed: {state}"
    );
}

#[test]
fn a_silent_task_is_stalled_but_a_chatty_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let mut silent = launch(&dir.path().join("silent"), "sleep 30");
    silent.heartbeat = Some(Duration::from_millis(300));
    let mut chatty = launch(
        &dir.path().join("chatty"),
        "for i in 1 2 3 4 5 6; do echo tick; sleep 0.1; done",
    );
    chatty.heartbeat = Some(Duration::from_millis(400));
    let mut toucher = launch(
        &dir.path().join("toucher"),
        "for i in 1 2 3 4 5 6; do touch \"$0\"; sleep 0.1; done",
    );
    toucher.command = vec![
        "sh".into(),
        "-c".into(),
        "for i in 1 2 3 4 5 6; do touch \"$1\"; sleep 0.1; done".into(),
        "sh".into(),
        dir.path().join("toucher/heartbeat").display().to_string(),
    ];
    toucher.heartbeat = Some(Duration::from_millis(400));
    let (silent, chatty, toucher) = runtime().block_on(async {
        let executor = executor();
        let silent = executor.launch(silent).unwrap();
        let chatty = executor.launch(chatty).unwrap();
        let toucher = executor.launch(toucher).unwrap();
        (
            silent.completion.await,
            chatty.completion.await,
            toucher.completion.await,
        )
    });
    assert_eq!(silent.outcome, Outcome::Stalled);
    assert_eq!(chatty.outcome, Outcome::Succeeded);
    assert_eq!(toucher.outcome, Outcome::Succeeded);
}

#[test]
fn stop_cancels_the_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let report = runtime().block_on(async {
        let running = executor().launch(launch(dir.path(), "sleep 30")).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        (running.stop)();
        running.completion.await
    });
    assert_eq!(report.outcome, Outcome::Cancelled);
}

#[test]
fn output_is_capped() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = launch(dir.path(), "yes keel | head -c 100000");
    spec.log_cap = 1000;
    let report = runtime().block_on(async { executor().launch(spec).unwrap().completion.await });
    assert_eq!(report.outcome, Outcome::Succeeded);
    let output = std::fs::read_to_string(dir.path().join("output.log")).unwrap();
    assert!(output.len() < 1100, "{}", output.len());
    assert!(output.contains("[keel: output truncated at 1000 bytes]"));
}

fn outlives_its_launcher_and_is_adopted(executor: fn() -> ProcessExecutor) {
    let dir = tempfile::tempdir().unwrap();
    let attempt = dir.path().join("a1");
    // Launch from one runtime and executor, then drop both without waiting, as a killed Keel
    // would.
    {
        let runtime = runtime();
        let launcher = executor();
        let running = runtime.block_on(async {
            launcher
                .launch(launch(&attempt, "sleep 0.5; echo done"))
                .unwrap()
        });
        drop(running);
        drop(launcher);
    }
    let report = runtime().block_on(async {
        match executor().adopt(attempt.clone(), None) {
            Adopted::Running(running) => running.completion.await,
            Adopted::Finished(_) => panic!("finished too early"),
            Adopted::Gone(_) => panic!("the supervisor should still be alive"),
        }
    });
    assert_eq!(report.outcome, Outcome::Succeeded);
    // Once over, adopting again finds the exit record.
    match executor().adopt(attempt.clone(), None) {
        Adopted::Finished(report) => assert_eq!(report.outcome, Outcome::Succeeded),
        _ => panic!("expected the finished record"),
    }
    // A directory where nothing was started is gone.
    assert!(matches!(
        executor().adopt(dir.path().join("never"), None),
        Adopted::Gone(_)
    ));
}

#[test]
fn an_attempt_forked_by_the_host_outlives_its_launcher_and_is_adopted() {
    outlives_its_launcher_and_is_adopted(executor);
}

#[test]
fn an_attempt_with_its_own_supervisor_process_outlives_its_launcher_and_is_adopted() {
    outlives_its_launcher_and_is_adopted(|| executor().without_host());
}

#[test]
fn an_attempt_survives_the_death_of_the_host_and_still_reports() {
    let dir = tempfile::tempdir().unwrap();
    let report = runtime().block_on(async {
        let executor = executor();
        let running = executor
            .launch(launch(dir.path(), "sleep 0.4; echo finished"))
            .unwrap();
        let host = executor.host_pid().expect("the host started");
        // Wait until the forked supervisor has started: its record file then holds its pid.
        // (Killed before that, the attempt never starts and is reported lost, which the next
        // test covers.)
        for _ in 0..200 {
            if std::fs::read_to_string(dir.path().join("attempt.lock"))
                .unwrap_or_default()
                .contains("pid")
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // SAFETY: killing the host process this test started.
        unsafe { libc::kill(host as i32, libc::SIGKILL) };
        running.completion.await
    });
    assert_eq!(report.outcome, Outcome::Succeeded);
    let output = std::fs::read_to_string(dir.path().join("output.log")).unwrap();
    assert!(output.contains("finished"));
}

#[test]
fn without_the_host_the_basics_still_hold() {
    let dir = tempfile::tempdir().unwrap();
    let executor = executor().without_host();
    let (ok, missing) = runtime().block_on(async {
        let ok = executor
            .launch(launch(&dir.path().join("ok"), "echo hi"))
            .unwrap()
            .completion
            .await;
        let mut spec = launch(&dir.path().join("missing"), "");
        spec.command = vec!["keel-no-such-command-here".into()];
        let missing = executor.launch(spec).unwrap().completion.await;
        (ok, missing)
    });
    assert_eq!(ok.outcome, Outcome::Succeeded);
    assert_eq!(missing.outcome, Outcome::FailedPermanent);
    assert_eq!(executor.host_pid(), None);
}

#[test]
fn a_launch_after_the_host_died_fails_over_to_its_own_supervisor() {
    let dir = tempfile::tempdir().unwrap();
    let report = runtime().block_on(async {
        let executor = executor();
        // Start the host, then kill it, then launch: the launch fails over to a supervisor
        // process of its own.
        drop(
            executor
                .launch(launch(&dir.path().join("warm"), "true"))
                .unwrap()
                .completion
                .await,
        );
        let host = executor.host_pid().expect("the host started");
        // SAFETY: killing the host process this test started.
        unsafe { libc::kill(host as i32, libc::SIGKILL) };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let running = executor
            .launch(launch(&dir.path().join("a1"), "echo after the host"))
            .unwrap();
        running.completion.await
    });
    assert_eq!(report.outcome, Outcome::Succeeded, "{report:?}");
}

/// Regression: with the attempt host, `Running.pid` was always `None`, so the store never
/// learned the supervisor's pid. The task's parent is the supervisor, so its `$PPID` must be
/// the pid the launch reports, on both paths.
#[test]
fn the_launch_reports_the_supervisors_pid_with_and_without_the_host() {
    for (name, executor) in [
        ("host", executor()),
        ("own process", executor().without_host()),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let parent_file = dir.path().join("parent.pid");
        let (pid, report) = runtime().block_on(async {
            let mut running = executor
                .launch(launch(
                    &dir.path().join("a1"),
                    &format!("echo $PPID > {}", parent_file.display()),
                ))
                .unwrap();
            running.resolve_pid();
            (running.pid, running.completion.await)
        });
        assert_eq!(report.outcome, Outcome::Succeeded, "{name}: {report:?}");
        let parent: u32 = std::fs::read_to_string(&parent_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(pid, Some(parent), "{name}: the pid is the task's parent");
        assert_ne!(
            executor.host_pid(),
            Some(parent),
            "{name}: the supervisor, not the host"
        );
    }
}

/// A launch must never find another attempt's files in its directory: it could read that
/// attempt's result file or exit record as its own. An empty directory is fine.
#[test]
fn a_launch_into_a_directory_holding_another_attempts_files_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let used = dir.path().join("t.1");
    std::fs::create_dir(&used).unwrap();
    std::fs::write(used.join("result.json"), r#"{"outcome": "no_data"}"#).unwrap();
    let marker = dir.path().join("ran");
    let error = runtime()
        .block_on(async {
            executor().launch(launch(&used, &format!("touch {}", marker.display())))
        })
        .err()
        .expect("the launch is refused");
    let message = error.to_string();
    assert!(
        message.contains(&format!("{:?}", used.display().to_string())),
        "the error names the directory: {message}"
    );
    assert!(message.contains("already holds"), "{message}");
    assert!(!marker.exists(), "nothing was started");
    assert_eq!(
        std::fs::read_dir(&used).unwrap().count(),
        1,
        "the other attempt's files are untouched"
    );

    let empty = dir.path().join("t.2");
    std::fs::create_dir(&empty).unwrap();
    let report = runtime().block_on(async {
        executor()
            .launch(launch(&empty, "true"))
            .unwrap()
            .completion
            .await
    });
    assert_eq!(report.outcome, Outcome::Succeeded, "{report:?}");
}

/// A long-lived Keel (`keel serve`) outlives its attempt host: a host that was killed is started
/// again for the next launch, instead of every later supervisor being started the slow way.
#[test]
fn a_killed_attempt_host_is_started_again_for_later_launches() {
    let dir = tempfile::tempdir().unwrap();
    let executor = executor();
    runtime().block_on(async {
        let first = executor
            .launch(launch(&dir.path().join("a1"), "exit 0"))
            .unwrap();
        assert_eq!(first.completion.await.outcome, Outcome::Succeeded);
        let host = executor.host_pid().expect("the first launch starts a host");
        // SAFETY: killing the attempt host this test's executor started.
        unsafe { libc::kill(host as i32, libc::SIGKILL) };
        // A launch sent as the host died is lost (the engine retries those); once the executor
        // has noticed, a new host runs the attempts.
        let mut seen = Vec::new();
        for number in 2..8 {
            let running = executor
                .launch(launch(&dir.path().join(format!("a{number}")), "exit 0"))
                .unwrap();
            let outcome = running.completion.await.outcome;
            seen.push((outcome, executor.host_pid()));
        }
        let (outcome, restarted) = *seen.last().unwrap();
        assert!(
            outcome == Outcome::Succeeded && restarted.is_some_and(|pid| pid != host),
            "a new host runs the later attempts: {seen:?} (the killed one was {host})"
        );
    });
}
