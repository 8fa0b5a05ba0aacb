//! Task versions and canary rollout with the real binary: a broken new version of a task (a
//! missing import) rolled back automatically with no partition ending failed, a fixed one
//! promoted; `keel check` on the hoops example and on a copy whose version command fails; and
//! `keel serve` keeping the version in use when a new one fails its smoke test.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::{Served, keel, keel_path, wait_for, write_pipeline};

const PIPELINE: &str = r#"[pipeline]
name = "canaried"

[defaults]
retries = { attempts = 1 }

[phases.load]
[phases.report]
after = ["load"]

[tasks.load]
phase = "load"
command = ["./bin/VERSION.sh", "{date}"]
rollout = { canary = "50%", promote_after = 3, max_failure_rate = "0%" }

[tasks.report]
phase = "report"
command = ["sh", "-c", "echo report $KEEL_PARTITION >> ledger"]
"#;

/// Scripts for each version of `load`: v1 and v3 work, v2 fails like a Python program whose
/// import is missing.
fn scripts(root: &Path) {
    let bin = root.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let write = |name: &str, text: &str| {
        let path = bin.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    write("v1.sh", "#!/bin/sh\necho \"v1 $1\" >> ledger\n");
    write(
        "v2.sh",
        "#!/bin/sh\necho 'Traceback (most recent call last):' >&2\necho \"ModuleNotFoundError: No module named 'hoops_v2'\" >&2\nexit 1\n",
    );
    write("v3.sh", "#!/bin/sh\necho \"v3 $1\" >> ledger\n");
}

fn pipeline_at(root: &Path, version: &str) -> std::path::PathBuf {
    write_pipeline(root, &PIPELINE.replace("VERSION", version))
}

fn json_of(output: &std::process::Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "{error}: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn versions(pipeline: &Path) -> Vec<Value> {
    let output = keel()
        .args(["rollout", "list", "--json", "--pipeline"])
        .arg(pipeline)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    json_of(&output).as_array().unwrap().clone()
}

fn version_with(versions: &[Value], status: &str) -> Vec<String> {
    versions
        .iter()
        .filter(|version| version["task"] == "load" && version["status"] == status)
        .map(|version| version["version"].as_str().unwrap().to_string())
        .collect()
}

fn dates(from: u32, to: u32) -> Vec<String> {
    (from..=to).map(|day| format!("2026-01-{day:02}")).collect()
}

fn is_canary(partition: &str) -> bool {
    keel_model::RolloutSpec {
        canary_percent: 50,
        promote_after: 3,
        max_failure_rate: 0.0,
        min_metrics: Default::default(),
    }
    .is_canary_partition("canaried", "load", partition)
}

#[test]
fn a_broken_version_is_rolled_back_automatically_and_no_partition_fails() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    scripts(root);
    // Version 1 runs fine and is promoted: there is nothing before it.
    let pipeline = pipeline_at(root, "v1");
    keel()
        .args(["run", "--partition", "2026-01-01"])
        .arg(&pipeline)
        .assert()
        .code(0);
    let first = versions(&pipeline);
    let v1 = version_with(&first, "promoted");
    assert_eq!(v1.len(), 1, "{first:?}");

    // Version 2 of the task is broken. Half the partitions are its canary.
    let partitions = dates(2, 9);
    let canaries: Vec<&String> = partitions.iter().filter(|date| is_canary(date)).collect();
    assert!(
        !canaries.is_empty() && canaries.len() < partitions.len(),
        "the range holds canary and other partitions: {canaries:?}"
    );
    let pipeline = pipeline_at(root, "v2");
    let output = keel()
        .args(["run", "--from", "2026-01-02", "--to", "2026-01-09"])
        .arg(&pipeline)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(0),
        "every run succeeded: {stderr}"
    );

    // Every partition ran version 1 exactly once and ended succeeded, the canary's too.
    let ledger = std::fs::read_to_string(root.join("ledger")).unwrap();
    for date in &partitions {
        assert_eq!(
            ledger
                .lines()
                .filter(|line| *line == format!("v1 {date}"))
                .count(),
            1,
            "{date}:\n{ledger}"
        );
        assert!(ledger.contains(&format!("report {date}")), "{ledger}");
        let status = keel()
            .args(["status", "--json", "--partition", date])
            .arg(&pipeline)
            .output()
            .unwrap();
        let run = &json_of(&status)["runs"][0];
        assert_eq!(run["state"], "succeeded", "{run}");
        let load = run["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|task| task["name"] == "load")
            .unwrap();
        assert_eq!(load["outcome"], "succeeded");
        assert_eq!(load["task_version"], v1[0].as_str(), "{load}");
    }

    // The version is rolled back, with why, in the store and the event log.
    let after = versions(&pipeline);
    let rolled_back = version_with(&after, "rolled_back");
    assert_eq!(rolled_back.len(), 1, "{after:?}");
    assert_eq!(version_with(&after, "promoted"), v1);
    let broken = after
        .iter()
        .find(|version| version["status"] == "rolled_back")
        .unwrap();
    assert!(
        broken["reason"]
            .as_str()
            .is_some_and(|reason| reason.contains("ModuleNotFoundError")),
        "{broken}"
    );
    let events = keel()
        .args(["events", "--json"])
        .arg(&pipeline)
        .output()
        .unwrap();
    let events = String::from_utf8_lossy(&events.stdout);
    let decisions: Vec<Value> = events
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .filter(|event| {
            event["kind"]
                .as_str()
                .is_some_and(|kind| kind.starts_with("rollout_"))
        })
        .collect();
    assert!(
        decisions
            .iter()
            .any(|event| event["kind"] == "rollout_canary"
                && event["detail"].as_str().unwrap().contains("canary started")),
        "{decisions:?}"
    );
    let rollback = decisions
        .iter()
        .find(|event| event["kind"] == "rollout_rolled_back")
        .expect("the rollback is in the event log");
    assert!(
        canaries.contains(&&rollback["partition"].as_str().unwrap().to_string()),
        "the rollback came from a canary partition: {rollback}"
    );
    // `keel status` names the rollout that went wrong.
    let status = keel().args(["status"]).arg(&pipeline).output().unwrap();
    assert!(
        String::from_utf8_lossy(&status.stdout)
            .contains(&format!("rollouts: load {} rolled_back", rolled_back[0])),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );

    // A fixed version 3 runs on its canary partitions, the rest on version 1, and is promoted
    // after 3 clean runs.
    let pipeline = pipeline_at(root, "v3");
    let later = dates(10, 25);
    let output = keel()
        .args([
            "run",
            "--sequential",
            "--from",
            "2026-01-10",
            "--to",
            "2026-01-25",
        ])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let ledger = std::fs::read_to_string(root.join("ledger")).unwrap();
    let mut canary_runs = 0;
    for date in &later {
        let ran_v3 = ledger.contains(&format!("v3 {date}"));
        let ran_v1 = ledger.contains(&format!("v1 {date}"));
        assert!(ran_v1 != ran_v3, "{date} ran one version:\n{ledger}");
        if canary_runs < 3 {
            assert_eq!(ran_v3, is_canary(date), "{date}:\n{ledger}");
            canary_runs += usize::from(ran_v3);
        } else {
            assert!(ran_v3, "{date} runs the promoted version 3:\n{ledger}");
        }
    }
    assert_eq!(canary_runs, 3, "{ledger}");
    let last = versions(&pipeline);
    assert_eq!(version_with(&last, "promoted").len(), 1);
    assert_ne!(version_with(&last, "promoted"), v1, "{last:?}");
    assert_eq!(version_with(&last, "retired"), v1, "{last:?}");
}

#[test]
fn versions_are_rolled_back_and_promoted_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    scripts(root);
    let pipeline = pipeline_at(root, "v1");
    let output = keel()
        .args(["rollout", "promote", "load", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no state for pipeline"));
    keel()
        .args(["run", "--partition", "2026-01-01"])
        .arg(&pipeline)
        .assert()
        .code(0);
    let v1 = version_with(&versions(&pipeline), "promoted");
    let output = keel()
        .args(["rollout", "rollback", "load", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("is the only version ever promoted")
            && stderr.contains("nothing to roll back to"),
        "{stderr}"
    );
    // Version 3 is a canary; promoted by hand, every partition runs it.
    let pipeline = pipeline_at(root, "v3");
    let not_canary = dates(2, 28)
        .into_iter()
        .find(|date| !is_canary(date))
        .unwrap();
    keel()
        .args(["run", "--partition", &not_canary])
        .arg(&pipeline)
        .assert()
        .code(0);
    let ledger = std::fs::read_to_string(root.join("ledger")).unwrap();
    assert!(ledger.contains(&format!("v1 {not_canary}")), "{ledger}");
    let canary = version_with(&versions(&pipeline), "canary");
    assert_eq!(canary.len(), 1);
    let output = keel()
        .args(["rollout", "promote", "load", "--pipeline"])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(&format!(
            "task load: version {} promoted (was canary)",
            canary[0]
        )),
        "{stdout}"
    );
    keel()
        .args(["run", "--rerun", "--partition", &not_canary])
        .arg(&pipeline)
        .assert()
        .code(0);
    let ledger = std::fs::read_to_string(root.join("ledger")).unwrap();
    assert!(ledger.contains(&format!("v3 {not_canary}")), "{ledger}");
    // Rolled back by hand, version 1 runs again everywhere.
    keel()
        .args(["rollout", "rollback", "load", "--pipeline"])
        .arg(&pipeline)
        .assert()
        .code(0);
    assert_eq!(version_with(&versions(&pipeline), "promoted"), v1);
    keel()
        .args(["rollout", "promote", "nope", "--pipeline"])
        .arg(&pipeline)
        .assert()
        .code(2);
}

/// The hoops example passes `keel check` with `hoops` on PATH; a copy whose `predictions`
/// version command fails exits 1 naming the task.
#[test]
fn keel_check_runs_the_version_commands_of_the_hoops_example() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let bin = root.join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::os::unix::fs::symlink(keel_path(), bin.join("hoops")).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let example = include_str!("../../../../examples/hoops/keel.toml");
    assert!(example.contains("version = [\"hoops\", \"--version\"]"));
    let good = root.join("good");
    std::fs::create_dir(&good).unwrap();
    let pipeline = write_pipeline(&good, example);
    let output = keel()
        .args(["check", "--json"])
        .arg(&pipeline)
        .env("PATH", &path)
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let report = json_of(&output);
    let version = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|check| check["check"] == "version")
        .unwrap()
        .clone();
    assert_eq!(version["target"], "task predictions");
    assert!(
        version["detail"]
            .as_str()
            .unwrap()
            .contains("version command says hoops "),
        "{version}"
    );

    let broken = root.join("broken");
    std::fs::create_dir(&broken).unwrap();
    let pipeline = write_pipeline(
        &broken,
        &example.replace(
            "version = [\"hoops\", \"--version\"]",
            "version = [\"sh\", \"-c\", \"echo \\\"ModuleNotFoundError: No module named 'hoops_model'\\\" >&2; exit 1\"]",
        ),
    );
    let output = keel()
        .arg("check")
        .arg(&pipeline)
        .env("PATH", &path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    let failed: Vec<&str> = stdout
        .lines()
        .filter(|line| line.contains("FAIL"))
        .collect();
    assert_eq!(failed.len(), 1, "{stdout}");
    assert!(failed[0].contains("task predictions"), "{stdout}");
    assert!(failed[0].contains("ModuleNotFoundError"), "{stdout}");
    // `keel run` refuses it too, naming the task, before any attempt.
    let output = keel()
        .args(["run", "--partition", "2026-01-01"])
        .arg(&pipeline)
        .env("PATH", &path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("the version of task predictions cannot be read"),
        "{stderr}"
    );
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn detach(pipeline: &Path, partition: &str) {
    let output = Command::new(keel_path())
        .args(["run", "--detach", "--partition", partition])
        .arg(pipeline)
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Under `keel serve`: a new version whose smoke test fails (a missing import) is refused and
/// the version in use keeps running, `/ready` saying why; a version that passes goes live as a
/// canary, and its rollback raises an alert.
#[test]
fn serve_keeps_the_old_version_when_the_new_one_fails_and_alerts_on_a_rollback() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    scripts(root);
    let alerts = "\n[alerts]\ncommand = [\"sh\", \"-c\", \"cat >> alerts.jsonl\"]\n";
    let v1 = format!("{}{alerts}", PIPELINE.replace("VERSION", "v1"));
    let pipeline = write_pipeline(root, &v1);
    let log = root.join("serve.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut served = Command::new(keel_path())
        .args(["serve", "--addr", "127.0.0.1:0"])
        .arg(&pipeline)
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .map(Served)
        .unwrap();
    wait_for("keel serve to start", Duration::from_secs(30), || {
        read(&log).contains("API on http://")
    });
    detach(&pipeline, "2026-01-01");
    wait_for("version 1 to run", Duration::from_secs(30), || {
        read(&root.join("ledger")).contains("report 2026-01-01")
    });

    // Version 2 has a smoke test that fails as its program would: it is not switched to.
    let smoked = v1.replace(
        "command = [\"./bin/v1.sh\", \"{date}\"]",
        "command = [\"./bin/v2.sh\", \"{date}\"]\nsmoke = [\"./bin/v2.sh\", \"smoke\"]",
    );
    std::fs::write(&pipeline, smoked).unwrap();
    wait_for(
        "the failing smoke test to be reported",
        Duration::from_secs(60),
        || read(&log).contains("fails keel check; still running version"),
    );
    let text = read(&log);
    assert!(text.contains("smoke task load"), "{text}");
    assert!(text.contains("ModuleNotFoundError"), "{text}");
    let addr = {
        let start = text.find("API on http://").unwrap() + 14;
        text[start..][..text[start..].find(';').unwrap()].to_string()
    };
    let ready = crate::api::request(&addr, "GET", "/ready", &[], None);
    assert_eq!(ready.status, 503, "{}", ready.text());
    assert!(
        ready.text().contains("ModuleNotFoundError"),
        "{}",
        ready.text()
    );
    // The version in use still runs partitions.
    detach(&pipeline, "2026-01-02");
    wait_for("version 1 to run on", Duration::from_secs(30), || {
        read(&root.join("ledger")).contains("report 2026-01-02")
    });
    assert!(read(&root.join("ledger")).contains("v1 2026-01-02"));

    // Without the smoke test the broken version goes live as a canary and is rolled back at
    // its first canary partition, which runs again on version 1; the rollback alerts.
    let canary = dates(3, 28)
        .into_iter()
        .find(|date| is_canary(date))
        .unwrap();
    std::fs::write(&pipeline, v1.replace("v1.sh", "v2.sh")).unwrap();
    wait_for(
        "the new version to go live",
        Duration::from_secs(60),
        || read(&log).contains("pipeline canaried: reloaded"),
    );
    detach(&pipeline, &canary);
    wait_for(
        "the canary partition to finish",
        Duration::from_secs(60),
        || read(&root.join("ledger")).contains(&format!("report {canary}")),
    );
    assert!(read(&root.join("ledger")).contains(&format!("v1 {canary}")));
    wait_for("the rollback alert", Duration::from_secs(30), || {
        read(&root.join("alerts.jsonl")).contains("rolled_back")
    });
    let alert: Value = read(&root.join("alerts.jsonl"))
        .lines()
        .map(|line| serde_json::from_str::<Value>(line).unwrap())
        .find(|alert| alert["keel"]["kind"] == "rolled_back")
        .unwrap_or_else(|| panic!("{}", read(&root.join("alerts.jsonl"))));
    assert_eq!(alert["keel"]["subject"], "load", "{alert}");
    assert!(
        alert["text"]
            .as_str()
            .unwrap()
            .contains("ModuleNotFoundError"),
        "{alert}"
    );
    // The dashboard's health page lists the rolled-back version.
    let health = crate::api::request(&addr, "GET", "/ui/canaried/health", &[], None);
    assert_eq!(health.status, 200);
    let page = health.text();
    let rollouts = &page[page.find("id=\"rollouts\"").expect("a rollouts panel")..];
    assert!(
        rollouts.contains("data-task=\"load\"") && rollouts.contains("rolled_back"),
        "{rollouts}"
    );
    // SAFETY: signalling the child this test started.
    unsafe { libc::kill(served.0.id() as i32, libc::SIGTERM) };
    assert_eq!(served.0.wait().unwrap().code(), Some(0), "{}", read(&log));
    let status = keel()
        .args(["status", "--json", "--partition", &canary])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert_eq!(json_of(&status)["runs"][0]["state"], "succeeded");
}

/// The checks of a new version run beside the work of the version in use: a smoke test that
/// has not finished holds up no run, and the version goes live once it passes.
#[test]
fn a_slow_smoke_test_never_holds_up_running_work() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    scripts(root);
    let v1 = PIPELINE.replace("VERSION", "v1");
    let pipeline = write_pipeline(root, &v1);
    let log = root.join("serve.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut served = Command::new(keel_path())
        .args(["serve", "--addr", "127.0.0.1:0"])
        .arg(&pipeline)
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .map(Served)
        .unwrap();
    wait_for("keel serve to start", Duration::from_secs(30), || {
        read(&log).contains("API on http://")
    });
    // Version 3's smoke test runs until the test lets it finish.
    let slow = v1.replace(
        "command = [\"./bin/v1.sh\", \"{date}\"]",
        "command = [\"./bin/v3.sh\", \"{date}\"]\nsmoke = [\"sh\", \"-c\", \"touch smoking; while [ ! -e release-smoke ]; do sleep 0.05; done\"]",
    );
    std::fs::write(&pipeline, slow).unwrap();
    wait_for("the smoke test to start", Duration::from_secs(30), || {
        root.join("smoking").exists()
    });
    assert!(
        read(&log).contains("before it goes live; version"),
        "{}",
        read(&log)
    );
    // Meanwhile a run goes through on version 1.
    detach(&pipeline, "2026-01-02");
    wait_for(
        "a run while the smoke test runs",
        Duration::from_secs(30),
        || read(&root.join("ledger")).contains("report 2026-01-02"),
    );
    assert!(read(&root.join("ledger")).contains("v1 2026-01-02"));
    assert!(
        !read(&log).contains("pipeline canaried: reloaded"),
        "{}",
        read(&log)
    );
    std::fs::write(root.join("release-smoke"), "").unwrap();
    wait_for("version 3 to go live", Duration::from_secs(30), || {
        read(&log).contains("pipeline canaried: reloaded")
    });
    // SAFETY: signalling the child this test started.
    unsafe { libc::kill(served.0.id() as i32, libc::SIGTERM) };
    assert_eq!(served.0.wait().unwrap().code(), Some(0), "{}", read(&log));
}
