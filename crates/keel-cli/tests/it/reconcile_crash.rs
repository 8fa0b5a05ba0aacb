//! A rerun owed to a downstream task survives a real `kill -9`, end to end.
//!
//! Phase `p1` has a gate that lets `p2` go on without the slow task `x`; `d` (in `p2`) starts
//! without it. `x` lands while `d` still runs, so `d` owes a rerun with `x`'s output. Keel is
//! killed with SIGKILL right after that, while `d` still runs under its supervisor, and started
//! again: the run must end `succeeded` only after `d` ran once more, after `x` ended.
//!
//! Regression: the rerun was kept only in memory, so the restarted Keel adopted `d`, accepted
//! its result and ended the run `succeeded` with `d` having run once, without `x`.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{keel_path, write_pipeline};

const PARTITION: &str = "2026-03-01";

/// One line of the ledger: `start|end TASK ATTEMPT MILLIS`.
#[derive(Debug, Clone)]
struct Mark {
    what: String,
    task: String,
    attempt: u32,
    at: u128,
}

/// One execution of a task body, from its ledger lines.
#[derive(Debug, Clone, Copy)]
struct Body {
    attempt: u32,
    start: u128,
    end: Option<u128>,
}

struct Scenario {
    dir: tempfile::TempDir,
    pipeline: PathBuf,
    ledger: PathBuf,
    log: PathBuf,
}

impl Scenario {
    fn new() -> Scenario {
        let dir = tempfile::tempdir().unwrap();
        let ledger = dir.path().join("ledger");
        let log = dir.path().join("keel.log");
        let mark = |what: &str| {
            format!(
                "echo {what} $KEEL_TASK $KEEL_ATTEMPT $(date +%s%3N) >> {}",
                ledger.display()
            )
        };
        let task = |name: &str, phase: &str, sleep: &str| {
            let script = format!("{}; sleep {sleep}; {}", mark("start"), mark("end"));
            format!(
                "[tasks.{name}]\nphase = \"{phase}\"\ncommand = [\"sh\", \"-c\", {script:?}]\n\n"
            )
        };
        let mut text = String::from(
            r#"[pipeline]
name = "reconcile"
timezone = "UTC"

[defaults]
concurrency = 4
timeout = "60s"
retries = { attempts = 1, initial = "100ms", max = "200ms" }

[phases.p1]
gate = { required = ["y"], min = "50%", grace = "500ms" }
[phases.p2]
after = ["p1"]

"#,
        );
        text.push_str(&task("x", "p1", "2.5"));
        text.push_str(&task("y", "p1", "0"));
        text.push_str(&task("d", "p2", "3"));
        let pipeline = write_pipeline(dir.path(), &text);
        Scenario {
            dir,
            pipeline,
            ledger,
            log,
        }
    }

    fn spawn_run(&self) -> Child {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let stderr = log.try_clone().unwrap();
        Command::new(keel_path())
            .args(["run", "--partition", PARTITION])
            .arg(&self.pipeline)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .unwrap()
    }

    fn marks(&self) -> Vec<Mark> {
        let text = std::fs::read_to_string(&self.ledger).unwrap_or_default();
        text.lines()
            .map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                assert_eq!(fields.len(), 4, "torn ledger line {line:?}");
                Mark {
                    what: fields[0].to_string(),
                    task: fields[1].to_string(),
                    attempt: fields[2].parse().unwrap(),
                    at: fields[3].parse().unwrap(),
                }
            })
            .collect()
    }

    /// The executions of `task`'s body, in the order they started.
    fn bodies(&self, task: &str) -> Vec<Body> {
        let marks = self.marks();
        let mut bodies: Vec<Body> = marks
            .iter()
            .filter(|mark| mark.task == task && mark.what == "start")
            .map(|start| Body {
                attempt: start.attempt,
                start: start.at,
                end: marks
                    .iter()
                    .find(|end| {
                        end.task == task && end.what == "end" && end.attempt == start.attempt
                    })
                    .map(|end| end.at),
            })
            .collect();
        bodies.sort_by_key(|body| body.start);
        bodies
    }

    fn status(&self) -> serde_json::Value {
        let output = Command::new(keel_path())
            .args(["status", "--json", "--partition", PARTITION])
            .arg(&self.pipeline)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "keel status failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        json["runs"][0].clone()
    }

    fn diagnostics(&self) -> String {
        format!(
            "--- ledger ---\n{}--- keel output ---\n{}--- directory {} ---",
            std::fs::read_to_string(&self.ledger).unwrap_or_default(),
            std::fs::read_to_string(&self.log).unwrap_or_default(),
            self.dir.path().display()
        )
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Stop what a failed scenario may have left running, the supported way.
            let _ = Command::new(keel_path())
                .args(["cancel", "--partition", PARTITION])
                .arg(&self.pipeline)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Waits for `condition` on the ledger, or fails with the scenario's diagnostics.
fn wait_for(
    scenario: &Scenario,
    what: &str,
    limit: Duration,
    condition: impl Fn(&Scenario) -> bool,
) {
    let deadline = Instant::now() + limit;
    while !condition(scenario) {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            scenario.diagnostics()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn wait_exit(scenario: &Scenario, child: &mut Child, limit: Duration) -> i32 {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status
                .code()
                .unwrap_or_else(|| panic!("keel died from a signal: {status}"));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("keel did not finish in time\n{}", scenario.diagnostics());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn is_running(scenario: &Scenario, task: &str) -> bool {
    scenario
        .bodies(task)
        .last()
        .is_some_and(|body| body.end.is_none())
}

#[test]
fn a_rerun_owed_to_a_running_task_survives_kill_dash_nine() {
    let scenario = Scenario::new();
    let started = Instant::now();
    let mut first = scenario.spawn_run();
    wait_for(&scenario, "x to end", Duration::from_secs(30), |scenario| {
        scenario.bodies("x").iter().any(|body| body.end.is_some())
    });
    // The scenario this test is about: x landed late, while d (which started without it) ran.
    assert!(
        is_running(&scenario, "d"),
        "d should be running, having started without x, when x ends\n{}",
        scenario.diagnostics()
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        first.try_wait().unwrap().is_none(),
        "the first keel run ended before it could be killed\n{}",
        scenario.diagnostics()
    );
    first.kill().unwrap();
    first.wait().unwrap();
    let d_running_at_kill = is_running(&scenario, "d");

    let mut second = scenario.spawn_run();
    let code = wait_exit(&scenario, &mut second, Duration::from_secs(60));
    let run = scenario.status();
    assert_eq!(
        code,
        0,
        "the resumed keel run should exit 0: {run}\n{}",
        scenario.diagnostics()
    );
    assert_eq!(
        run["state"],
        "succeeded",
        "{run}\n{}",
        scenario.diagnostics()
    );

    let x_end = scenario.bodies("x")[0].end.unwrap();
    let d = scenario.bodies("d");
    assert!(
        d[0].start < x_end,
        "d's first run started without x: {d:?}, x ended at {x_end}"
    );
    assert!(
        d.len() >= 2 && d.iter().skip(1).any(|body| body.start > x_end),
        "d started a second time after x ended (it must run with x's output): {d:?}, x ended at {x_end}\n{}",
        scenario.diagnostics()
    );
    let with_x: Vec<&Body> = d
        .iter()
        .filter(|body| body.start > x_end && body.end.is_some())
        .collect();
    assert_eq!(
        with_x.len(),
        1,
        "exactly one complete run of d started after x ended: {d:?}, x ended at {x_end}\n{}",
        scenario.diagnostics()
    );
    for pair in d.windows(2) {
        let (earlier, later) = (pair[0], pair[1]);
        let earlier_end = earlier.end.unwrap_or_else(|| {
            panic!(
                "d attempt {} never ended, yet attempt {} started: {d:?}",
                earlier.attempt, later.attempt
            )
        });
        assert!(
            later.start >= earlier_end,
            "d attempt {} started at {} while attempt {} still ran until {earlier_end}: {d:?}",
            later.attempt,
            later.start,
            earlier.attempt
        );
    }
    eprintln!(
        "reconcile crash: x ended {} ms after d first started; d ran {} times (still running at the kill: {d_running_at_kill}); {:.1}s in all",
        x_end.saturating_sub(d[0].start),
        d.len(),
        started.elapsed().as_secs_f64()
    );
}
