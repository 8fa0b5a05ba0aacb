//! Feature flags with real processes: a task switched off is `skipped` (which counts as
//! complete, so what follows runs), a share of partitions picks the same partitions every time,
//! and a flag set while a run is under way applies to its tasks that have not started yet.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{keel, keel_path, write_pipeline};

const PIPELINE: &str = r#"[pipeline]
name = "flagged"
timezone = "UTC"
partition = "date"

[phases.main]
[tasks.first]
phase = "main"
command = ["sh", "-c", "while [ ! -e go ]; do sleep 0.05; done; echo first {date} >> ledger"]

[tasks.model]
phase = "main"
after = ["first"]
command = ["sh", "-c", "echo model {date} >> ledger"]

[tasks.export]
phase = "main"
after = ["model"]
command = ["sh", "-c", "echo export {date} >> ledger"]
"#;

fn status_of(root: &std::path::Path, partition: &str) -> Value {
    let output = keel()
        .current_dir(root)
        .args(["status", "--partition", partition, "--json"])
        .output()
        .unwrap();
    serde_json::from_slice(&output.stdout).unwrap()
}

fn task<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["runs"][0]["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|task| task["name"] == name)
        .unwrap()
}

#[test]
fn a_task_switched_off_is_skipped_and_what_follows_runs() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_pipeline(root, PIPELINE);
    std::fs::write(root.join("go"), "").unwrap();
    let set = keel()
        .current_dir(root)
        .args(["flags", "set", "model", "off"])
        .output()
        .unwrap();
    assert_eq!(set.status.code(), Some(0), "{set:?}");
    let ran = keel()
        .current_dir(root)
        .args(["run", "--partition", "2026-03-01"])
        .output()
        .unwrap();
    assert_eq!(ran.status.code(), Some(0), "{ran:?}");
    let ledger = std::fs::read_to_string(root.join("ledger")).unwrap();
    assert_eq!(ledger, "first 2026-03-01\nexport 2026-03-01\n");
    let status = status_of(root, "2026-03-01");
    let model = task(&status, "model");
    assert_eq!(model["outcome"], "skipped", "{status}");
    assert!(
        model["message"].as_str().unwrap().contains("switched off"),
        "{model}"
    );

    // Back on: the next partition runs it.
    keel()
        .current_dir(root)
        .args(["flags", "set", "model", "on"])
        .assert()
        .success();
    keel()
        .current_dir(root)
        .args(["run", "--partition", "2026-03-02"])
        .assert()
        .success();
    assert!(
        std::fs::read_to_string(root.join("ledger"))
            .unwrap()
            .contains("model 2026-03-02")
    );

    // `keel status` and the dashboard list the flags set.
    keel()
        .current_dir(root)
        .args(["flags", "set", "export", "25%"])
        .assert()
        .success();
    let status = keel()
        .current_dir(root)
        .args(["status", "--partition", "2026-03-02"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("flags: export 25%"), "{text}");
    assert_eq!(status_of(root, "2026-03-02")["flags"][0]["state"], "25%");
    let pipeline = root.join("keel.toml");
    let (served, addr) =
        crate::support::serve_on_free_port(&[&pipeline], &root.join("serve.log"), &[]);
    let page = crate::api::request(&addr, "GET", "/ui/flagged", &[], None);
    assert_eq!(page.status, 200);
    assert!(page.text().contains("export 25%"), "{}", page.text());
    drop(served);
}

#[test]
fn a_share_runs_the_same_partitions_every_time() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_pipeline(root, PIPELINE);
    std::fs::write(root.join("go"), "").unwrap();
    keel()
        .current_dir(root)
        .args(["flags", "set", "model", "30%"])
        .assert()
        .success();
    keel()
        .current_dir(root)
        .args(["run", "--from", "2026-03-01", "--to", "2026-03-20"])
        .assert()
        .success();
    let ran: Vec<String> = std::fs::read_to_string(root.join("ledger"))
        .unwrap()
        .lines()
        .filter_map(|line| line.strip_prefix("model ").map(str::to_string))
        .collect();
    assert!(
        !ran.is_empty() && ran.len() < 20,
        "30% of 20 partitions ran the model: {ran:?}"
    );
    // Every partition left out says why; rerunning one of them leaves it out again.
    let left_out = (1..=20)
        .map(|day| format!("2026-03-{day:02}"))
        .find(|date| !ran.contains(date))
        .unwrap();
    let status = status_of(root, &left_out);
    assert!(
        task(&status, "model")["message"]
            .as_str()
            .unwrap()
            .contains("runs in 30% of partitions"),
        "{status}"
    );
    keel()
        .current_dir(root)
        .args(["run", "--partition", &left_out, "--rerun"])
        .assert()
        .success();
    let again = std::fs::read_to_string(root.join("ledger")).unwrap();
    assert!(!again.contains(&format!("model {left_out}")), "{again}");
}

#[test]
fn a_flag_set_during_a_run_applies_to_tasks_not_yet_started() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_pipeline(root, PIPELINE);
    let mut run = Command::new(keel_path())
        .current_dir(root)
        .args(["run", "--partition", "2026-03-05"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // `first` is running (it waits for the go file); switch `model` off now.
    let started = Instant::now();
    while !root.join(".keel").exists() && started.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    keel()
        .current_dir(root)
        .args(["flags", "set", "model", "off"])
        .assert()
        .success();
    // A poll of the running Keel reads it before `first` ends.
    std::thread::sleep(Duration::from_millis(3000));
    std::fs::write(root.join("go"), "").unwrap();
    let status = run.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let ledger = std::fs::read_to_string(root.join("ledger")).unwrap();
    assert_eq!(ledger, "first 2026-03-05\nexport 2026-03-05\n");
}
