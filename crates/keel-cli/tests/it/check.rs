//! `keel check` with real files and a real environment: programs found on PATH or by path, a
//! script that is not executable, a credential's variable set or not (its value never printed),
//! a program named by a template, and the exit codes.

use std::os::unix::fs::PermissionsExt;

use serde_json::Value;

use crate::support::{keel, write_pipeline};

const PIPELINE: &str = r#"[pipeline]
name = "checked"

[resources.feed]
concurrency = 2

[phases.scrape]
[tasks.found]
phase = "scrape"
command = ["sh", "-c", "true"]
uses = ["feed"]

[tasks.missing]
phase = "scrape"
command = ["keel-test-no-such-program", "{date}"]

[tasks.script]
phase = "scrape"
command = ["./bin/load.sh"]

[tasks.unexecutable]
phase = "scrape"
command = ["./bin/notes.txt"]

[tasks.templated]
phase = "scrape"
command = ["{param.tool}", "run"]

[tasks.call]
phase = "scrape"
http = { url = "http://127.0.0.1:9/x", auth = { bearer_env = "KEEL_TEST_FEED_TOKEN" } }

[passes.nightly]
params = { tool = "sh" }
"#;

fn setup() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    std::fs::write(bin.join("load.sh"), "#!/bin/sh\necho load\n").unwrap();
    std::fs::set_permissions(bin.join("load.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(bin.join("notes.txt"), "not a program\n").unwrap();
    write_pipeline(dir.path(), PIPELINE);
    dir
}

#[test]
fn check_names_every_failure_and_exits_1() {
    let dir = setup();
    let output = keel()
        .current_dir(dir.path())
        .args(["check", "--json"])
        .env_remove("KEEL_TEST_FEED_TOKEN")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["ok"], false);
    let status_of = |target: &str| {
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|row| row["target"].as_str().unwrap().starts_with(target))
            .map(|row| row["status"].as_str().unwrap().to_string())
            .unwrap_or_else(|| panic!("no row for {target}: {report}"))
    };
    assert_eq!(status_of("task found: sh"), "pass");
    assert_eq!(status_of("task found uses feed"), "pass");
    assert_eq!(status_of("task missing: keel-test-no-such-program"), "fail");
    assert_eq!(status_of("task script: ./bin/load.sh"), "pass");
    assert_eq!(status_of("task unexecutable: ./bin/notes.txt"), "fail");
    assert_eq!(status_of("task templated: {param.tool}"), "skip");
    assert_eq!(status_of("task call: KEEL_TEST_FEED_TOKEN"), "fail");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("3 failed"), "{stderr}");

    // The table says the same; a set variable passes without its value being printed.
    let secret = "k8Tq2vLm9xR4wZ-check";
    let output = keel()
        .current_dir(dir.path())
        .arg("check")
        .env("KEEL_TEST_FEED_TOKEN", secret)
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!text.contains(secret), "{text}");
    assert!(text.contains("set (value not shown)"), "{text}");
    assert!(text.contains("is not executable"), "{text}");
    assert!(text.contains("2 failed"), "{text}");
}

#[test]
fn a_pipeline_that_passes_exits_0_and_a_broken_one_exits_2() {
    let dir = setup();
    let fixed = PIPELINE
        .replace("keel-test-no-such-program", "sh")
        .replace("./bin/notes.txt", "./bin/load.sh");
    write_pipeline(dir.path(), &fixed);
    let output = keel()
        .current_dir(dir.path())
        .arg("check")
        .env("KEEL_TEST_FEED_TOKEN", "x")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");

    write_pipeline(
        dir.path(),
        "[pipeline]\nname = \"x\"\n[phases.a]\n[tasks.t]\nphase = \"b\"\ncommand = [\"true\"]\n",
    );
    let output = keel()
        .current_dir(dir.path())
        .arg("check")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
}

/// Smoke tests run in parallel in the task's directory with its environment, without a shell:
/// one that exits 0 passes, one that fails shows the end of its output (a missing import, say),
/// and one that hangs is killed at `--timeout`. A version with a broken smoke test fails.
#[test]
fn smoke_tests_run_in_the_tasks_environment_and_a_broken_one_fails_the_check() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("work")).unwrap();
    write_pipeline(
        root,
        r#"[pipeline]
name = "smoked"

[phases.model]
[tasks.predict]
phase = "model"
command = ["sh", "-c", "true"]
cwd = "work"
env = { MODEL_PATH = "model-{date}.bin" }
smoke = ["sh", "-c", "pwd > smoke-pwd; echo $MODEL_PATH > smoke-env; echo loaded"]

[tasks.grade]
phase = "model"
command = ["sh", "-c", "true"]
smoke = ["sh", "-c", "echo 'Traceback (most recent call last):' >&2; echo 'ModuleNotFoundError: No module named scipy' >&2; exit 1"]

[tasks.hang]
phase = "model"
command = ["sh", "-c", "true"]
smoke = ["sleep", "30"]
"#,
    );
    let started = std::time::Instant::now();
    let output = keel()
        .current_dir(root)
        .args(["check", "--json", "--timeout", "2s"])
        .output()
        .unwrap();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(25),
        "the hanging test was killed"
    );
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let smoke: Vec<&Value> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row["check"] == "smoke")
        .collect();
    assert_eq!(smoke.len(), 3, "{report}");
    let row = |task: &str| {
        smoke
            .iter()
            .find(|row| {
                row["target"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("task {task}:"))
            })
            .unwrap()
    };
    assert_eq!(row("predict")["status"], "pass", "{report}");
    assert_eq!(row("grade")["status"], "fail");
    assert!(
        row("grade")["detail"]
            .as_str()
            .unwrap()
            .contains("No module named scipy"),
        "{report}"
    );
    assert_eq!(row("hang")["status"], "fail");
    assert!(row("hang")["detail"].as_str().unwrap().contains("killed"));
    let pwd = std::fs::read_to_string(root.join("work/smoke-pwd")).unwrap();
    assert!(pwd.trim().ends_with("work"), "{pwd}");
    let env = std::fs::read_to_string(root.join("work/smoke-env")).unwrap();
    assert!(
        env.starts_with("model-2") && env.trim().ends_with(".bin"),
        "{env}"
    );
}

/// A declared secret is read through the provider without its value being printed; one that
/// cannot be read fails the check, naming it.
#[test]
fn declared_secrets_are_resolved_without_being_shown() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("secrets")).unwrap();
    std::fs::write(root.join("secrets/FEED_TOKEN"), "k8Tq2vLm9x-check-secret\n").unwrap();
    write_pipeline(
        root,
        r#"[pipeline]
name = "withsecrets"

[secrets]
provider = "dir:secrets"

[phases.main]
[tasks.fetch]
phase = "main"
command = ["sh", "-c", "true"]
secrets = ["FEED_TOKEN", "MISSING_TOKEN"]
"#,
    );
    let output = keel()
        .current_dir(root)
        .args(["check", "--json"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(!text.contains("k8Tq2vLm9x-check-secret"), "{text}");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let row = |target: &str| {
        report["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|row| row["target"] == target)
            .cloned()
            .unwrap_or_else(|| panic!("no {target}: {report}"))
    };
    assert_eq!(row("task fetch: FEED_TOKEN")["status"], "pass");
    let missing = row("task fetch: MISSING_TOKEN");
    assert_eq!(missing["status"], "fail");
    assert!(
        missing["detail"]
            .as_str()
            .unwrap()
            .contains("MISSING_TOKEN"),
        "{missing}"
    );
}
