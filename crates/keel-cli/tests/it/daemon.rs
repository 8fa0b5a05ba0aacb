//! `keel serve` as a daemon: several pipelines in one process, and a pipeline file reloaded
//! while a task of it runs, once the new version validates.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::api::request;
use crate::support::{Served, keel_path, wait_for, write_pipeline};

fn serve(pipelines: &[&Path], log: &Path) -> Served {
    let file = std::fs::File::create(log).unwrap();
    Command::new(keel_path())
        .args(["serve", "--addr", "127.0.0.1:0"])
        .args(pipelines)
        .stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .map(Served)
        .unwrap()
}

/// The API's address, from serve's log line `API on http://ADDR; …`.
fn api_address(log: &str) -> String {
    let start = log
        .find("API on http://")
        .expect("serve logs its API address")
        + 14;
    let rest = &log[start..];
    rest[..rest.find(';').unwrap()].to_string()
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

fn stop(mut served: Served, log: &Path) {
    // SAFETY: signalling the child this test started.
    unsafe { libc::kill(served.0.id() as i32, libc::SIGTERM) };
    let code = served.0.wait().unwrap().code();
    assert_eq!(code, Some(0), "{}", read(log));
}

const FIRST: &str = r#"[pipeline]
name = "reloaded"
partition = "none"

[phases.load]
[tasks.slow]
phase = "load"
command = ["sh", "-c", "echo start >> ledger; while [ ! -e go ]; do sleep 0.05; done; echo end >> ledger"]
"#;

/// A changed file that does not validate is reported and the running version kept; once it
/// validates it is loaded, and the task that ran through both changes is neither stopped nor
/// run again; the task the new version added joins the unfinished run.
#[test]
fn a_changed_pipeline_file_is_reloaded_once_it_validates_without_touching_running_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let pipeline = write_pipeline(root, FIRST);
    let log = root.join("serve.log");
    let served = serve(&[&pipeline], &log);
    wait_for("keel serve to start", Duration::from_secs(30), || {
        read(&log).contains("keel serve: pipeline reloaded")
    });
    detach(&pipeline, "none");
    wait_for("the task to start", Duration::from_secs(30), || {
        read(&root.join("ledger")).contains("start")
    });

    std::fs::write(&pipeline, FIRST.replace("[phases.load]", "[phases.load\n")).unwrap();
    wait_for(
        "the broken file to be reported",
        Duration::from_secs(30),
        || read(&log).contains("does not validate; still running version"),
    );
    // `/ready` says so too, until the file validates again.
    let addr = api_address(&read(&log));
    let ready = request(&addr, "GET", "/ready", &[], None);
    assert_eq!(ready.status, 503, "{}", ready.text());
    let checks = ready.json()["checks"].clone();
    let pipeline_check = checks
        .as_array()
        .unwrap()
        .iter()
        .find(|check| check["name"] == "pipeline")
        .cloned()
        .unwrap();
    assert_eq!(pipeline_check["ok"], false, "{checks}");
    assert!(
        pipeline_check["detail"]
            .as_str()
            .is_some_and(|detail| detail.contains("does not validate")),
        "{checks}"
    );
    // A version that validates but names a program this machine does not have fails
    // `keel check`: it is refused the same way, naming the task and the program.
    let missing = format!(
        "{FIRST}\n[tasks.broken]\nphase = \"load\"\ncommand = [\"keel-test-no-such-program\", \"{{date}}\"]\n"
    );
    std::fs::write(&pipeline, missing).unwrap();
    wait_for(
        "the version failing keel check to be reported",
        Duration::from_secs(30),
        || read(&log).contains("fails keel check; still running version"),
    );
    assert!(
        read(&log).contains("task broken: keel-test-no-such-program: not found on the PATH"),
        "{}",
        read(&log)
    );
    let ready = request(&addr, "GET", "/ready", &[], None);
    assert_eq!(ready.status, 503, "{}", ready.text());
    assert!(
        ready.text().contains("fails keel check"),
        "{}",
        ready.text()
    );
    let added = format!(
        "{FIRST}\n[phases.report]\nafter = [\"load\"]\n[tasks.after]\nphase = \"report\"\ncommand = [\"sh\", \"-c\", \"echo after >> ledger\"]\n"
    );
    std::fs::write(&pipeline, added).unwrap();
    wait_for(
        "the new version to be loaded",
        Duration::from_secs(30),
        || read(&log).contains("pipeline reloaded: reloaded"),
    );
    wait_for("/ready to be 200 again", Duration::from_secs(30), || {
        request(&addr, "GET", "/ready", &[], None).status == 200
    });
    std::fs::write(root.join("go"), "").unwrap();
    wait_for("the run to finish", Duration::from_secs(30), || {
        read(&log).contains("run 1 finished")
    });
    assert_eq!(
        read(&root.join("ledger")).lines().collect::<Vec<_>>(),
        ["start", "end", "after"],
        "the slow task ran once, through both changes, and the added one after it:\n{}",
        read(&log)
    );
    assert!(
        read(&log).contains("run 1 finished succeeded"),
        "{}",
        read(&log)
    );
    stop(served, &log);
}

/// One `keel serve` runs two pipelines, each from its own file with its own state, and refuses
/// two files that define the same pipeline.
#[test]
fn one_serve_runs_several_pipelines() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for name in ["scores", "odds"] {
        let root = dir.path().join(name);
        std::fs::create_dir(&root).unwrap();
        files.push(write_pipeline(
            &root,
            &format!(
                "[pipeline]\nname = \"{name}\"\n\n[phases.a]\n[tasks.t]\nphase = \"a\"\ncommand = [\"sh\", \"-c\", \"echo $KEEL_PIPELINE $KEEL_PARTITION >> {}\"]\n",
                dir.path().join("ledger").display()
            ),
        ));
    }
    let log = dir.path().join("serve.log");
    let paths: Vec<&Path> = files.iter().map(|file| file.as_path()).collect();
    let served = serve(&paths, &log);
    wait_for("keel serve to start", Duration::from_secs(30), || {
        let log = read(&log);
        log.contains("keel serve: pipeline scores") && log.contains("keel serve: pipeline odds")
    });
    detach(&files[0], "2026-03-01");
    detach(&files[1], "2026-03-02");
    wait_for("both runs to finish", Duration::from_secs(30), || {
        read(&log).matches("finished succeeded").count() == 2
    });
    let mut ledger: Vec<String> = read(&dir.path().join("ledger"))
        .lines()
        .map(str::to_string)
        .collect();
    ledger.sort();
    assert_eq!(ledger, ["odds 2026-03-02", "scores 2026-03-01"]);
    stop(served, &log);

    let twice = Command::new(keel_path())
        .args(["serve", "--addr", "127.0.0.1:0"])
        .args([&files[0], &files[0]])
        .output()
        .unwrap();
    assert_eq!(twice.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&twice.stderr);
    assert!(stderr.contains("both define pipeline scores"), "{stderr}");
}

/// Once asked to stop, serve drains, and `/ready` says so (503) while its running task may
/// still finish: whatever routes work to it stops before the API goes away.
#[test]
fn a_draining_serve_is_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let pipeline = write_pipeline(root, FIRST);
    let log = root.join("serve.log");
    let served = serve(&[&pipeline], &log);
    wait_for("keel serve to start", Duration::from_secs(30), || {
        read(&log).contains("API on http://")
    });
    let addr = api_address(&read(&log));
    wait_for("/ready", Duration::from_secs(30), || {
        request(&addr, "GET", "/ready", &[], None).status == 200
    });
    detach(&pipeline, "none");
    wait_for("the task to start", Duration::from_secs(30), || {
        read(&root.join("ledger")).contains("start")
    });
    // SAFETY: signalling the child this test started.
    unsafe { libc::kill(served.0.id() as i32, libc::SIGTERM) };
    wait_for(
        "/ready to say serve is stopping",
        Duration::from_secs(30),
        || {
            let ready = request(&addr, "GET", "/ready", &[], None);
            ready.status == 503 && ready.text().contains("keel serve is stopping")
        },
    );
    std::fs::write(root.join("go"), "").unwrap();
    let mut served = served;
    let code = served.0.wait().unwrap().code();
    assert_eq!(code, Some(0), "{}", read(&log));
    assert_eq!(
        read(&root.join("ledger")).lines().collect::<Vec<_>>(),
        ["start", "end"],
        "the running task finished within the grace period"
    );
}

/// Bad serve arguments end it before anything runs, with exit 2 and what to write instead.
#[test]
fn bad_clock_arguments_are_refused_with_what_to_write() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = write_pipeline(dir.path(), FIRST);
    for (args, expected) in [
        (
            vec!["--clock-start", "yesterday noon"],
            "--clock-start \"yesterday noon\" is not a time",
        ),
        (vec!["--clock-speed", "0"], "--clock-speed"),
        (vec!["--clock-speed", "many"], "--clock-speed"),
    ] {
        let output = Command::new(keel_path())
            .args(["serve", "--addr", "127.0.0.1:0"])
            .args(&args)
            .arg(&pipeline)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    assert!(
        !dir.path().join(".keel").join("api-token").exists(),
        "nothing was started"
    );
}
