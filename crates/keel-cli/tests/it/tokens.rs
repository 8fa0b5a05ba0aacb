//! `keel token`: tasks taking request tokens from the Keel that runs them, through real
//! processes and the real socket.

use std::path::Path;
use std::time::Duration;

use crate::support::{keel, keel_path, write_pipeline};

fn run_keel(dir: &Path, args: &[&str]) -> (Option<i32>, String) {
    let output = keel()
        .current_dir(dir)
        .arg("run")
        .arg(dir.join("keel.toml"))
        .args(args)
        .timeout(Duration::from_secs(60))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), text)
}

/// A task that asks for `count` tokens of `resource`, one at a time, and appends each exit code
/// and the time it was answered (ms) to `ledger`.
fn taker(name: &str, resource: &str, count: u32) -> String {
    format!(
        r#"
[tasks.{name}]
phase = "scrape"
command = ["sh", "-c", "for i in $(seq {count}); do \"$1\" token {resource} --timeout 20s 2>>errors.txt; echo \"$? $(date +%s%3N)\" >> ledger.txt; done", "sh", {keel:?}]
"#,
        keel = keel_path().display().to_string()
    )
}

fn ledger(dir: &Path) -> Vec<(i32, u64)> {
    std::fs::read_to_string(dir.join("ledger.txt"))
        .unwrap()
        .lines()
        .map(|line| {
            let (code, at) = line.split_once(' ').unwrap();
            (code.parse().unwrap(), at.parse().unwrap())
        })
        .collect()
}

#[test]
fn tasks_share_a_request_rate_and_the_socket_is_gone_after_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = r#"[pipeline]
name = "tokens"

[phases.scrape]

[resources.api]
rate = "2/s"
tokens = "request"
"#
    .to_string();
    text += &taker("first", "api", 3);
    text += &taker("second", "api", 3);
    write_pipeline(dir.path(), &text);
    let (code, output) = run_keel(dir.path(), &["--partition", "2024-03-01"]);
    assert_eq!(code, Some(0), "{output}");
    let mut grants = ledger(dir.path());
    assert_eq!(grants.len(), 6, "{grants:?}");
    assert!(grants.iter().all(|(code, _)| *code == 0), "{grants:?}");
    // Six tokens at two per second across both tasks: the last cannot come before two seconds
    // after the first (a lower bound, which no slow machine can break).
    grants.sort_by_key(|(_, at)| *at);
    assert!(grants[5].1 - grants[0].1 >= 1_900, "{grants:?}");
    let socket = dir.path().join(".keel/tokens/tokens.sock");
    assert!(!socket.exists(), "the socket outlived keel run");
}

#[test]
fn a_quota_counts_across_runs_warns_and_refuses_once_used_up() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = r#"[pipeline]
name = "quota"

[phases.scrape]

[resources.api]
quota = "4/day"
warn = "50%"
tokens = "request"
"#
    .to_string();
    text += &taker("fetch", "api", 3);
    write_pipeline(dir.path(), &text);
    let (code, first) = run_keel(dir.path(), &["--partition", "2024-03-01"]);
    assert_eq!(code, Some(0), "{first}");
    assert!(first.contains("has used 2 of its quota of 4"), "{first}");
    // A new process: the count of the day is read back from the state.
    let (code, second) = run_keel(dir.path(), &["--partition", "2024-03-02"]);
    assert_eq!(code, Some(0), "{second}");
    assert!(
        second.contains("has used up its quota (4 of 4)"),
        "{second}"
    );
    assert!(!second.contains("has used 2"), "warned twice: {second}");
    let codes: Vec<i32> = ledger(dir.path()).iter().map(|(code, _)| *code).collect();
    assert_eq!(codes, vec![0, 0, 0, 0, 75, 75]);
    let errors = std::fs::read_to_string(dir.path().join("errors.txt")).unwrap();
    assert!(
        errors.contains("the quota of resource \"api\" is used up for"),
        "{errors}"
    );
    // `keel status` says where the quota stands in its period.
    let status = keel()
        .current_dir(dir.path())
        .args(["status", "keel.toml"])
        .timeout(Duration::from_secs(30))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("quotas: api 4/4 for "), "{text}");
    assert!(text.contains("(100%; warns at 50%; used up)"), "{text}");
    let json = keel()
        .current_dir(dir.path())
        .args(["status", "keel.toml", "--json"])
        .timeout(Duration::from_secs(30))
        .output()
        .unwrap();
    let document: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let quota = &document["quotas"][0];
    assert_eq!(quota["resource"], "api", "{document}");
    assert_eq!(quota["used"], 4, "{document}");
    assert_eq!(quota["limit"], 4, "{document}");
    assert_eq!(quota["exhausted"], true, "{document}");

    // Under `keel serve`, a quota past its warning or used up goes through `[alerts]`, once.
    let mut with_alerts = std::fs::read_to_string(dir.path().join("keel.toml")).unwrap();
    with_alerts += "\n[alerts]\ncommand = [\"sh\", \"-c\", \"cat >> alerts.jsonl\"]\n";
    std::fs::write(dir.path().join("keel.toml"), with_alerts).unwrap();
    let (_served, _addr) = crate::support::serve_on_free_port(
        &[&dir.path().join("keel.toml")],
        &dir.path().join("serve.log"),
        &[],
    );
    let alerts = || std::fs::read_to_string(dir.path().join("alerts.jsonl")).unwrap_or_default();
    crate::support::wait_for("the quota alert", Duration::from_secs(30), || {
        alerts().contains("used up until the period ends")
    });
    // Looked at again every few seconds, it is not told twice.
    std::thread::sleep(Duration::from_secs(7));
    let told = alerts();
    assert_eq!(told.lines().count(), 1, "{told}");
    let alert: serde_json::Value = serde_json::from_str(told.lines().next().unwrap()).unwrap();
    assert_eq!(alert["keel"]["kind"], "quota", "{alert}");
    assert_eq!(alert["keel"]["subject"], "api", "{alert}");
}

#[test]
fn an_unknown_resource_a_missing_keel_and_no_socket_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = r#"[pipeline]
name = "unknown"

[phases.scrape]

[resources.api]
rate = "5/s"
tokens = "request"
"#
    .to_string();
    text += &taker("fetch", "apu", 1);
    write_pipeline(dir.path(), &text);
    let (code, output) = run_keel(dir.path(), &["--partition", "2024-03-01"]);
    assert_eq!(code, Some(0), "{output}");
    assert_eq!(ledger(dir.path())[0].0, 2);
    let errors = std::fs::read_to_string(dir.path().join("errors.txt")).unwrap();
    assert!(
        errors.contains(
            "error: pipeline \"unknown\" has no resource \"apu\"\nhint: did you mean \"api\"?"
        ),
        "{errors}"
    );

    let outside = keel()
        .arg("token")
        .arg("api")
        .env_remove("KEEL_TOKEN_SOCKET")
        .output()
        .unwrap();
    assert_eq!(outside.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&outside.stderr).contains("KEEL_TOKEN_SOCKET is not set"));

    let gone = keel()
        .arg("token")
        .arg("api")
        .env("KEEL_TOKEN_SOCKET", dir.path().join("nothing.sock"))
        .output()
        .unwrap();
    assert_eq!(gone.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&gone.stderr).contains("cannot reach Keel's token server"));
}

#[test]
fn a_stale_socket_left_by_a_killed_keel_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = r#"[pipeline]
name = "stale"

[phases.scrape]

[resources.api]
rate = "5/s"
tokens = "request"
"#
    .to_string();
    text += &taker("fetch", "api", 1);
    write_pipeline(dir.path(), &text);
    let tokens_dir = dir.path().join(".keel/tokens");
    std::fs::create_dir_all(&tokens_dir).unwrap();
    // A bound socket whose listener is gone: what a SIGKILLed Keel leaves.
    drop(std::os::unix::net::UnixListener::bind(tokens_dir.join("stale.sock")).unwrap());
    let (code, output) = run_keel(dir.path(), &["--partition", "2024-03-01"]);
    assert_eq!(code, Some(0), "{output}");
    assert_eq!(ledger(dir.path())[0].0, 0);
}
