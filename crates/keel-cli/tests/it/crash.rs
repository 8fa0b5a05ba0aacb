//! Crash safety, for real: `keel run` is killed with SIGKILL at random moments and started
//! again, and every task must still succeed exactly once per partition, never overlapping
//! itself. Attempts outlive a killed Keel (their supervisor keeps running), so the ledger must
//! show exactly one start and one end per task: nothing lost, nothing run twice.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{keel_path, write_pipeline};

/// A 30-task pipeline in three phases with chains inside each phase. Each task appends a start
/// and an end line to the ledger around a short sleep.
fn ledger_pipeline(ledger: &Path) -> String {
    let mut text = String::from(
        "[pipeline]\nname = \"crash\"\ntimezone = \"UTC\"\n\n[defaults]\nconcurrency = 4\ntimeout = \"30s\"\nretries = { attempts = 2, initial = \"10ms\", max = \"50ms\" }\n\n[phases.one]\n[phases.two]\nafter = [\"one\"]\n[phases.three]\nafter = [\"two\"]\n\n",
    );
    let phases = ["one", "two", "three"];
    for task in 0..30 {
        let phase = phases[task / 10];
        let sleep_ms = 40 + (task * 37) % 120;
        let after = if task % 10 >= 5 {
            format!("after = [\"t{:02}\"]\n", task - 1)
        } else {
            String::new()
        };
        text.push_str(&format!(
            "[tasks.t{task:02}]\nphase = \"{phase}\"\n{after}command = [\"sh\", \"-c\", \"echo start $KEEL_TASK $KEEL_PARTITION $KEEL_ATTEMPT $(date +%s%N) >> {ledger}; sleep 0.{sleep_ms:03}; echo end $KEEL_TASK $KEEL_PARTITION $KEEL_ATTEMPT $(date +%s%N) >> {ledger}\"]\n\n",
            ledger = ledger.display()
        ));
    }
    text
}

/// A small deterministic generator for kill delays.
struct Xorshift(u64);

impl Xorshift {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

fn run_state(pipeline: &Path, partition: &str) -> Option<serde_json::Value> {
    let output = Command::new(keel_path())
        .args(["status", "--json", "--partition", partition])
        .arg(pipeline)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    json["runs"]
        .as_array()
        .and_then(|runs| runs.first().cloned())
}

#[test]
fn kill_dash_nine_at_random_points_loses_nothing_and_runs_nothing_twice() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.txt");
    let pipeline = write_pipeline(dir.path(), &ledger_pipeline(&ledger));
    let mut random = Xorshift(0x5eed_cafe);
    let partitions = ["2026-03-01", "2026-03-02", "2026-03-03", "2026-03-04"];
    let mut kills = 0;
    let mut used = Vec::new();
    let started = Instant::now();
    'partitions: for partition in partitions {
        used.push(partition);
        loop {
            let mut child = Command::new(keel_path())
                .args(["run", "--partition", partition])
                .arg(&pipeline)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            if kills >= 24 {
                let status = child.wait().unwrap();
                assert!(
                    status.success(),
                    "the final run of {partition} failed: {status}"
                );
                break;
            }
            let delay = Duration::from_millis(30 + random.below(350));
            let deadline = Instant::now() + delay;
            let mut exited = None;
            while Instant::now() < deadline {
                if let Some(status) = child.try_wait().unwrap() {
                    exited = Some(status);
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            match exited {
                Some(status) => {
                    assert!(status.success(), "run of {partition} failed: {status}");
                    continue 'partitions;
                }
                None => {
                    child.kill().unwrap();
                    child.wait().unwrap();
                    kills += 1;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "the crash test is taking too long"
            );
        }
        if kills >= 24 {
            // Complete every partition touched so far, then stop.
            break;
        }
    }
    // Finish any partition whose last run was interrupted.
    for partition in &used {
        let status = Command::new(keel_path())
            .args(["run", "--partition", partition])
            .arg(&pipeline)
            .output()
            .unwrap();
        assert!(
            status.status.success(),
            "{}",
            String::from_utf8_lossy(&status.stderr)
        );
    }
    assert!(kills >= 20, "only {kills} kills happened");

    let text = std::fs::read_to_string(&ledger).unwrap();
    let mut starts: HashMap<(String, String), Vec<u128>> = HashMap::new();
    let mut ends: HashMap<(String, String), Vec<u128>> = HashMap::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields.len(), 5, "torn ledger line {line:?}");
        let key = (fields[1].to_string(), fields[2].to_string());
        let at: u128 = fields[4].parse().unwrap();
        match fields[0] {
            "start" => starts.entry(key).or_default().push(at),
            "end" => ends.entry(key).or_default().push(at),
            other => panic!("unexpected ledger entry {other}"),
        }
    }
    for partition in &used {
        let run = run_state(&pipeline, partition).expect("the partition has a run");
        assert_eq!(run["state"], "succeeded", "{partition}: {run}");
        for task in 0..30 {
            let key = (format!("t{task:02}"), partition.to_string());
            let task_starts = starts.get(&key).cloned().unwrap_or_default();
            let task_ends = ends.get(&key).cloned().unwrap_or_default();
            assert_eq!(
                task_starts.len(),
                1,
                "{key:?} started {} times",
                task_starts.len()
            );
            assert_eq!(
                task_ends.len(),
                1,
                "{key:?} finished {} times",
                task_ends.len()
            );
            assert!(task_starts[0] <= task_ends[0]);
        }
        let tasks = run["tasks"].as_array().unwrap();
        assert!(
            tasks.iter().all(|task| task["outcome"] == "succeeded"),
            "{run}"
        );
    }
    // No task ever overlapped itself: with one start and one end each this is implied, and the
    // order of the ledger confirms it.
    eprintln!(
        "{kills} kills over {} partitions in {:.1}s",
        used.len(),
        started.elapsed().as_secs_f64()
    );
}
