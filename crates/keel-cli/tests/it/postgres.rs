//! `keel` with its state in PostgreSQL, end to end, against the server of
//! `KEEL_TEST_POSTGRES` (a fresh database per test; skipped without a server outside CI, a
//! failure under `CI=true`).

use keel_store::testing::TestDatabase;
use serde_json::Value;

use crate::support::{keel, write_pipeline};

/// Two phases; `flaky` fails its first attempt, so a retry goes through the store too.
const PIPELINE: &str = r#"[pipeline]
name = "pg_e2e"
partition = "date"

[phases.extract]
[phases.load]
after = ["extract"]

[tasks.fetch]
phase = "extract"
command = ["sh", "-c", "echo fetched {date} >> ledger"]

[tasks.flaky]
phase = "extract"
command = ["sh", "-c", "test -f tried-{date} || {{ touch tried-{date}; exit 3; }}; echo flaky {date} >> ledger"]
retries = { attempts = 3, initial = "10ms", max = "20ms" }

[tasks.load]
phase = "load"
command = ["sh", "-c", "echo loaded {date} >> ledger"]
"#;

fn status_json(dir: &std::path::Path, state: Option<&str>) -> Value {
    let mut command = keel();
    command.current_dir(dir).args(["status", "--json"]);
    if let Some(state) = state {
        command.args(["--state", state]);
    }
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn keel_run_keeps_its_state_in_postgres_given_with_state() {
    let Some(database) = TestDatabase::create("keel_run_keeps_its_state_in_postgres") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    write_pipeline(dir.path(), PIPELINE);
    keel()
        .current_dir(dir.path())
        .args([
            "run",
            "--partition",
            "2026-01-18",
            "--state",
            database.url(),
        ])
        .assert()
        .success();
    let status = status_json(dir.path(), Some(database.url()));
    let run = &status["runs"][0];
    assert_eq!(run["partition"], "2026-01-18", "{status}");
    assert_eq!(run["state"], "succeeded", "{status}");
    let tasks = run["tasks"].as_array().unwrap();
    let outcome = |name: &str| {
        tasks
            .iter()
            .find(|task| task["name"] == name)
            .map(|task| (task["outcome"].clone(), task["attempts"].clone()))
            .unwrap()
    };
    assert_eq!(outcome("fetch"), ("succeeded".into(), 1.into()));
    assert_eq!(outcome("flaky"), ("succeeded".into(), 2.into()));
    assert_eq!(outcome("load"), ("succeeded".into(), 1.into()));
    // Nothing of the state went into an SQLite file beside the pipeline.
    assert!(!dir.path().join(".keel/state.db").exists());
    // A finished partition is not run again.
    keel()
        .current_dir(dir.path())
        .args([
            "run",
            "--partition",
            "2026-01-18",
            "--state",
            database.url(),
        ])
        .assert()
        .success();
    let ledger = std::fs::read_to_string(dir.path().join("ledger")).unwrap();
    let mut lines: Vec<&str> = ledger.lines().collect();
    lines.sort_unstable();
    assert_eq!(
        lines,
        [
            "fetched 2026-01-18",
            "flaky 2026-01-18",
            "loaded 2026-01-18"
        ],
        "each task succeeded exactly once"
    );
}

#[test]
fn the_starter_pipeline_runs_with_state_in_keel_toml() {
    let Some(database) = TestDatabase::create("the_starter_pipeline_runs_in_postgres") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    keel()
        .current_dir(dir.path())
        .args(["init", "."])
        .assert()
        .success();
    let path = dir.path().join("keel.toml");
    let starter = std::fs::read_to_string(&path).unwrap();
    let line = starter
        .lines()
        .find(|line| line.trim_start().starts_with("# state ="))
        .expect("the starter mentions state");
    std::fs::write(
        &path,
        starter.replace(line, &format!("state = {:?}", database.url())),
    )
    .unwrap();
    keel()
        .current_dir(dir.path())
        .args(["run", "--partition", "2026-01-18"])
        .assert()
        .success();
    let status = status_json(dir.path(), None);
    assert_eq!(status["runs"][0]["state"], "succeeded", "{status}");
    let tasks = status["runs"][0]["tasks"].as_array().unwrap();
    assert!(!tasks.is_empty());
    assert!(tasks.iter().all(|task| task["outcome"] == "succeeded"));
}

#[test]
fn an_unreachable_postgres_state_is_a_clear_error_without_its_password() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    write_pipeline(dir.path(), PIPELINE);
    let password = format!("pw{}", std::process::id());
    let url = format!("postgres://keel:{password}@127.0.0.1:{port}/keel");
    let output = keel()
        .current_dir(dir.path())
        .args(["run", "--partition", "2026-01-18", "--state", &url])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!stderr.contains(&password), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot reach the PostgreSQL state postgres://keel:***@127.0.0.1:{port}/keel"
        )),
        "{stderr}"
    );
    assert!(stderr.contains("PGPASSWORD"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "warning: --state postgres://keel:***@127.0.0.1:{port}/keel holds a password"
        )),
        "{stderr}"
    );
}

/// Two Keels with state directories of their own (two machines, as far as `keel.lock` can
/// tell) on one PostgreSQL state: while a `keel serve` executes it, a `keel run` elsewhere is
/// refused, naming the holder; once the serve is gone, the run goes ahead.
#[test]
fn one_keel_executes_a_postgres_state_across_state_directories() {
    let Some(database) = TestDatabase::create("one_keel_executes_a_postgres_state") else {
        return;
    };
    let serving = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let text = PIPELINE.replace(
        "partition = \"date\"",
        &format!("partition = \"date\"\nstate = {:?}", database.url()),
    );
    let served_pipeline = write_pipeline(serving.path(), &text);
    write_pipeline(elsewhere.path(), &text);
    let log = serving.path().join("serve.log");
    let (served, _addr) = crate::support::serve_on_free_port(&[&served_pipeline], &log, &[]);
    let output = keel()
        .current_dir(elsewhere.path())
        .args(["run", "--partition", "2026-01-18"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(
            "another keel is running this pipeline's state in PostgreSQL (keel serve pid"
        ),
        "{stderr}"
    );
    assert!(!elsewhere.path().join("ledger").exists(), "nothing ran");
    drop(served);
    keel()
        .current_dir(elsewhere.path())
        .args(["run", "--partition", "2026-01-18"])
        .assert()
        .success();
}
