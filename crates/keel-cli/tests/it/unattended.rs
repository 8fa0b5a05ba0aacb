//! The hoops reference pipeline under `keel serve`, unattended for two days of its schedule and
//! passes on
//! an accelerated clock (`--clock-speed`: Keel's clock runs fast, the tasks and the feed keep
//! real time), with serve killed by SIGKILL while a scheduled run's tasks run and started
//! again: one run per schedule per partition, nothing lost, nothing run twice.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{Served, keel_path, wait_for};

/// 7,200 times as fast: an hour of the pipeline's time every half second.
const SPEED: i64 = 7_200;

/// 2026-11-09 00:00 in New York (EST): six hours (3 s) before the first 06:00 run, time enough
/// for serve to start on a loaded machine.
const START: &str = "2026-11-09T05:00:00Z";

/// The feed the hoops tasks read; killed when dropped.
struct Feed(Child, String);

impl Drop for Feed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_feed(hoops: &Path) -> Feed {
    let mut child = Command::new(hoops)
        .args([
            "feed",
            "--addr",
            "127.0.0.1:0",
            "--seed",
            "7",
            "--faults",
            "none",
        ])
        .args(["--exit-on-eof"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let address = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();
    Feed(child, address)
}

struct Setup {
    root: PathBuf,
    env: Vec<(String, String)>,
    _feed: Feed,
}

fn set_up(root: &Path) -> Setup {
    let bin = root.join("bin");
    std::fs::create_dir(&bin).unwrap();
    let hoops = bin.join("hoops");
    std::os::unix::fs::symlink(keel_path(), &hoops).unwrap();
    let feed = start_feed(&hoops);
    // Each task's process writes a line to the ledger as it starts, so a task run twice (or
    // started again beside itself) shows. While the file `hold` exists, `predictions` (each of
    // its per-player items) waits after its line (and says so with `held`): the test kills
    // serve with them running.
    // The analytics gate's grace is Keel time, which runs 7,200 times as fast here while tasks
    // keep real time: its 2 minutes are 17 ms, and a task slowed by a loaded machine would be
    // waived and reconciled (a second start, rightly). This test is about schedules and a kill,
    // so the grace is made longer than any task takes: 12 hours are 6 s.
    let pipeline = include_str!("../../../../examples/hoops/keel.toml")
        .replace("grace = \"2m\"", "grace = \"12h\"")
        // The fan-outs run whole-date here: a hundred processes per run for the predictions
        // would make a run take longer than the hours this clock gives it on a loaded machine.
        // Fan-out under serve has tests of its own; this one is about schedules and a kill.
        .replace(", \"{item.key}\"]", "]")
        .replace(", \"{item}\"]", "]")
        .replace(
            "expand = { from = \"scrape_schedule\", min = \"90%\", stall = \"10m\" }\n",
            "",
        )
        .replace(
            "expand = { from = \"feature_store\", min = \"95%\", stall = \"10m\" }\n",
            "",
        )
        .replace(
        "\ncommand = [\"hoops\",",
        &format!(
            "\ncommand = [\"sh\", \"-c\", \"echo $KEEL_PARTITION $KEEL_PASS $KEEL_TASK >> {ledger}; case $KEEL_TASK in predictions*) if [ -e {hold} ]; then touch {held}; while [ -e {hold} ]; do sleep 0.02; done; fi;; esac; exec \\\"$@\\\"\", \"sh\", \"hoops\",",
            ledger = root.join("ledger").display(),
            hold = root.join("hold").display(),
            held = root.join("held").display(),
        ),
    );
    assert!(
        pipeline.contains("grace = \"12h\""),
        "the gate's grace was not found"
    );
    assert!(
        !pipeline.contains("expand") && !pipeline.contains("{item"),
        "the fan-outs were not taken out"
    );
    std::fs::write(root.join("keel.toml"), pipeline).unwrap();
    let env = vec![
        (
            "PATH".to_string(),
            format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
        ),
        ("HOOPS_FEED".to_string(), format!("http://{}", feed.1)),
        (
            "HOOPS_WAREHOUSE".to_string(),
            root.join("warehouse.db").display().to_string(),
        ),
        (
            "HOOPS_EXPORT_DIR".to_string(),
            root.join("exports").display().to_string(),
        ),
    ];
    Setup {
        root: root.to_path_buf(),
        env,
        _feed: feed,
    }
}

/// `keel serve` with its clock at `start` (unix milliseconds), running `SPEED` times as fast.
fn serve(setup: &Setup, start: i64, log: &str) -> Served {
    let log = std::fs::File::create(setup.root.join(log)).unwrap();
    let start = chrono::DateTime::from_timestamp_millis(start).unwrap();
    Command::new(keel_path())
        .args(["serve", "--addr", "127.0.0.1:0"])
        .arg(setup.root.join("keel.toml"))
        .args(["--clock-speed", &SPEED.to_string(), "--clock-start"])
        .arg(start.to_rfc3339())
        .envs(setup.env.iter().cloned())
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .map(Served)
        .unwrap()
}

fn logs(root: &Path) -> String {
    ["serve1.log", "serve2.log"]
        .iter()
        .map(|name| std::fs::read_to_string(root.join(name)).unwrap_or_default())
        .collect()
}

fn status(root: &Path) -> Value {
    let output = Command::new(keel_path())
        .args(["status", "--all", "--json"])
        .arg(root.join("keel.toml"))
        .output()
        .unwrap();
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "status --json: {error}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// Pipeline time, given when (real) the clock started at `start`.
fn pipeline_now(start: i64, since: Instant) -> i64 {
    start + since.elapsed().as_millis() as i64 * SPEED
}

#[test]
fn two_days_of_the_hoops_schedule_run_unattended_through_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let setup = set_up(dir.path());
    let root = setup.root.clone();
    let start = chrono::DateTime::parse_from_rfc3339(START)
        .unwrap()
        .timestamp_millis();
    let began = Instant::now();
    let mut first = serve(&setup, start, "serve1.log");
    // Killed while the second day's scheduled run has a task running: once the first day's
    // runs are done (the evening pass, run 3, is its last), `predictions` is held, and the kill
    // comes while the second day's 06:00 run waits on it.
    wait_for("the first day's runs", Duration::from_secs(60), || {
        logs(&root).contains("run 3 finished")
    });
    std::fs::write(root.join("hold"), "").unwrap();
    wait_for(
        "the second day's predictions to run",
        Duration::from_secs(60),
        || root.join("held").exists(),
    );
    // SAFETY: killing the process this test started.
    unsafe { libc::kill(first.0.id() as i32, libc::SIGKILL) };
    first.0.wait().unwrap();
    let killed_at = pipeline_now(start, began);
    // Down for a pipeline hour; then a new Keel carries on at the time it would be, and adopts
    // the task still running, which then ends.
    std::thread::sleep(Duration::from_millis(500));
    let restart = pipeline_now(start, began);
    let _second = serve(&setup, restart, "serve2.log");
    let resumed = Instant::now();
    wait_for(
        "the second Keel to take the run up",
        Duration::from_secs(60),
        || {
            std::fs::read_to_string(root.join("serve2.log"))
                .unwrap_or_default()
                .contains("taken up")
        },
    );
    std::fs::remove_file(root.join("hold")).unwrap();
    // 11-11 07:00: the 06:00 runs of 11-08, 11-09 and 11-10, and the passes of 11-08 and 11-09
    // (12:00 and 17:00 the day after).
    let end = start + (55 * 3_600_000);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !(pipeline_now(restart, resumed) > end
        && status(&root)["runs"].as_array().is_some_and(|runs| {
            runs.len() == 7 && runs.iter().all(|run| run["state"] != "running")
        }))
    {
        assert!(
            Instant::now() < deadline,
            "two days did not pass: {:#}\n{}",
            status(&root),
            logs(&root)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = logs(&root);
    assert!(killed_at < end, "the kill came before the end");
    for fired in [
        "the schedule fired for 2026-11-09 06:00 EST",
        "the schedule fired for 2026-11-10 06:00 EST",
        "the schedule fired for 2026-11-11 06:00 EST",
        "pass \"regrade\" fired for 2026-11-09 12:00 EST",
        "pass \"regrade\" fired for 2026-11-10 12:00 EST",
        "pass \"evening\" fired for 2026-11-09 17:00 EST",
        "pass \"evening\" fired for 2026-11-10 17:00 EST",
    ] {
        assert_eq!(
            log.lines().filter(|line| line.contains(fired)).count(),
            1,
            "{fired}, once:\n{log}"
        );
    }
    let status = status(&root);
    let runs = status["runs"].as_array().unwrap();
    let mut partitions: Vec<(String, String)> = runs
        .iter()
        .map(|run| {
            let pass = run["pass"].as_str().unwrap_or("-");
            (
                run["partition"].as_str().unwrap().to_string(),
                pass.to_string(),
            )
        })
        .collect();
    partitions.sort();
    let expected: Vec<(String, String)> = [
        ("2026-11-08", "-"),
        ("2026-11-08", "evening"),
        ("2026-11-08", "regrade"),
        ("2026-11-09", "-"),
        ("2026-11-09", "evening"),
        ("2026-11-09", "regrade"),
        ("2026-11-10", "-"),
    ]
    .iter()
    .map(|(partition, pass)| (partition.to_string(), pass.to_string()))
    .collect();
    assert_eq!(
        partitions, expected,
        "one run per schedule per partition:\n{log}"
    );
    let ledger = std::fs::read_to_string(root.join("ledger")).unwrap();
    for run in runs {
        assert_eq!(run["state"], "succeeded", "{run}\n{log}");
        let pass = run["pass"].as_str().unwrap_or("");
        for task in run["tasks"].as_array().unwrap() {
            // A pass runs its own tasks; the rest of its run is skipped, never started.
            let left_out = task["outcome"] == "skipped" && task["attempts"] == 0;
            assert!(
                task["outcome"] == "succeeded" || (!pass.is_empty() && left_out),
                "{task}"
            );
            // A clean feed: every task's process started once per run, through the kill too:
            // one the kill found running was adopted, not started again. (An attempt the kill
            // caught between its claim and its start never ran; its retry is its only start.)
            // (`echo` runs the words together: no pass, no word.)
            let line = [
                run["partition"].as_str().unwrap(),
                pass,
                task["name"].as_str().unwrap(),
            ]
            .iter()
            .filter(|word| !word.is_empty())
            .copied()
            .collect::<Vec<_>>()
            .join(" ");
            // A fanned-out task starts no process of its own: each of its items starts once.
            if let Some(items) = task.get("items") {
                let prefix = format!("{line}[");
                let started: Vec<&str> = ledger
                    .lines()
                    .filter(|started| started.starts_with(&prefix))
                    .collect();
                let distinct: std::collections::BTreeSet<&&str> = started.iter().collect();
                assert_eq!(
                    (started.len(), distinct.len()),
                    (items["total"].as_u64().unwrap() as usize, started.len()),
                    "{line}: each item once:\n{ledger}\n{log}"
                );
                continue;
            }
            assert_eq!(
                ledger.lines().filter(|started| *started == line).count(),
                usize::from(!left_out),
                "{line}:\n{ledger}\n{log}"
            );
        }
    }
    // The run the kill interrupted: the one the second day's 06:00 fire started.
    let killed = std::fs::read_to_string(root.join("serve1.log")).unwrap();
    let restarted = std::fs::read_to_string(root.join("serve2.log")).unwrap();
    let run = killed
        .lines()
        .find(|line| line.contains("the schedule fired for 2026-11-10 06:00 EST"))
        .and_then(|line| line.split("; run ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the fire the kill came after");
    assert!(
        !killed.contains(&format!("run {run} finished"))
            && restarted.contains(&format!("run {run} taken up")),
        "the kill found run {run} unfinished, and the second Keel carried it on:\n{log}"
    );
}
