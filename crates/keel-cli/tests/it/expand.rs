//! Fan-out (`expand`) through the binary with real processes: results that list items, and a
//! pipeline whose expanded task runs one attempt chain per item.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{keel, keel_path, write_pipeline};

fn run_keel(dir: &Path, subcommand: &str, args: &[&str]) -> (Option<i32>, String) {
    let output = keel()
        .current_dir(dir)
        .arg(subcommand)
        .arg(dir.join("keel.toml"))
        .args(args)
        .timeout(Duration::from_secs(30))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), text)
}

/// A task whose result lists items succeeds; one whose list is malformed fails, and the message
/// says which item is wrong.
#[test]
fn items_in_a_result_are_read_and_a_bad_list_fails_the_attempt() {
    let dir = tempfile::tempdir().unwrap();
    write_pipeline(
        dir.path(),
        r#"[pipeline]
name = "items"

[phases.main]

[defaults]
retries = { attempts = 1 }

[tasks.good]
phase = "main"
command = ["sh", "-c", "echo '{{\"items\": [\"0021\", {{\"key\": \"0022\", \"home\": \"LAL\"}}]}}' > \"$KEEL_RESULT\""]

[tasks.bad]
phase = "main"
command = ["sh", "-c", "echo '{{\"items\": [\"0021\", \"0021\"]}}' > \"$KEEL_RESULT\""]
"#,
    );
    let (code, text) = run_keel(dir.path(), "run", &["--partition", "2026-01-18"]);
    assert_eq!(code, Some(1), "{text}");
    let (_, status) = run_keel(dir.path(), "status", &["--partition", "2026-01-18"]);
    assert!(status.contains("good"), "{status}");
    assert!(
        status.contains("have the same key \"0021\""),
        "the failure names the repeated key: {status}"
    );
}

/// The engine runs one attempt chain per item: `{item}`, `{item.FIELD}` and `KEEL_ITEM` reach
/// each item's process, an item retries on its own, one failing for good leaves the quorum
/// (`min = "50%"`) met, so the expanded task completes, naming the missing item, the task
/// downstream runs and the run ends degraded.
#[test]
fn items_run_as_their_own_attempt_chains_and_a_quorum_completes_the_task() {
    let dir = tempfile::tempdir().unwrap();
    write_pipeline(
        dir.path(),
        r#"[pipeline]
name = "fanout"

[phases.discover]
[phases.scrape]
after = ["discover"]
[phases.report]
after = ["scrape"]

[defaults]
retries = { attempts = 3, initial = "0s" }

[tasks.list_games]
phase = "discover"
command = ["sh", "-c", "echo list >> ledger; echo '{{\"items\": [\"0021\", \"0022\", {{\"key\": \"0023\", \"home\": \"LAL\"}}, \"0024\"]}}' > \"$KEEL_RESULT\""]

[tasks.box_scores]
phase = "scrape"
command = ["sh", "-c", "echo \"$KEEL_TASK $KEEL_ITEM {item.home}\" >> ledger; echo scraping game {item}; if [ {item} = 0024 ] && [ ! -e retried ]; then touch retried; exit 1; fi; if [ \"$KEEL_ITEM\" = 0022 ] && [ ! -e fixed ]; then exit 65; fi"]
expand = { from = "list_games", min = "50%" }

[tasks.summary]
phase = "report"
command = ["sh", "-c", "echo summary \"$KEEL_MISSING\" >> ledger"]
"#,
    );
    let (code, text) = run_keel(dir.path(), "run", &["--partition", "2026-01-18"]);
    // Complete under the quorum, with an item missing: the run is degraded (exit 3).
    assert_eq!(code, Some(3), "{text}");
    assert!(
        text.contains("degraded") && text.contains("1 of 4 items of box_scores missing"),
        "{text}"
    );
    let ledger = std::fs::read_to_string(dir.path().join("ledger")).unwrap();
    let mut lines: Vec<&str> = ledger.lines().collect();
    assert_eq!(lines.first(), Some(&"list"), "{ledger}");
    // Downstream is told which items are missing.
    assert_eq!(lines.last(), Some(&"summary box_scores[0022]"), "{ledger}");
    lines.sort_unstable();
    assert_eq!(
        lines,
        [
            r#"box_scores[0021] 0021 "#,
            r#"box_scores[0022] 0022 "#,
            r#"box_scores[0023] {"home":"LAL","key":"0023"} LAL"#,
            r#"box_scores[0024] 0024 "#,
            r#"box_scores[0024] 0024 "#,
            "list",
            "summary box_scores[0022]",
        ],
        "each item ran once, the one that failed once twice: {ledger}"
    );
    let (_, status) = run_keel(dir.path(), "status", &["--partition", "2026-01-18"]);
    assert!(
        status.contains("3/4 · 1 failed; missing: 0022"),
        "the expanded task says how many items succeeded and which is missing: {status}"
    );
    assert!(
        !status.contains("box_scores[0021]"),
        "one row stands for the items: {status}"
    );
    let (code, log) = run_keel(dir.path(), "logs", &["box_scores[0021]"]);
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("scraping game 0021"),
        "an item has its own log: {log}"
    );
    let (_, json) = run_keel(
        dir.path(),
        "status",
        &["--partition", "2026-01-18", "--json"],
    );
    let document: serde_json::Value = serde_json::from_str(&json).unwrap();
    let tasks = document["runs"][0]["tasks"].as_array().unwrap();
    let names: Vec<&str> = tasks
        .iter()
        .map(|task| task["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["list_games", "box_scores", "summary"], "{json}");
    assert_eq!(
        tasks[1]["items"],
        serde_json::json!({"total": 4, "succeeded": 3, "failed": 1, "open": 0, "summary": "3/4 · 1 failed"})
    );
    // History counts the items of each run in the task's row, and lists no item as a task.
    let (code, history) = run_keel(dir.path(), "history", &["box_scores"]);
    assert_eq!(code, Some(0), "{history}");
    assert!(history.contains("items 3/4 · 1 failed"), "{history}");
    assert!(!history.contains("box_scores[00"), "{history}");
    let (_, json) = run_keel(dir.path(), "history", &["box_scores", "--json"]);
    let document: serde_json::Value = serde_json::from_str(&json).unwrap();
    let runs = document["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1, "one row per run, not per item: {json}");
    assert_eq!(runs[0]["items"]["summary"], "3/4 · 1 failed", "{json}");
    // Once what failed it is fixed, `keel retry` names the item: it runs again (and no other
    // item does), the expanded task completes with all four, and downstream runs again.
    std::fs::write(dir.path().join("fixed"), "").unwrap();
    let (code, text) = run_keel(
        dir.path(),
        "retry",
        &["box_scores[0022]", "--partition", "2026-01-18"],
    );
    assert_eq!(code, Some(0), "{text}");
    let ledger = std::fs::read_to_string(dir.path().join("ledger")).unwrap();
    let again: Vec<&str> = ledger.lines().skip(lines.len()).collect();
    assert_eq!(again, ["box_scores[0022] 0022 ", "summary "], "{ledger}");
    let (_, status) = run_keel(dir.path(), "status", &["--partition", "2026-01-18"]);
    assert!(status.contains("4/4"), "{status}");
    assert!(status.contains("succeeded"), "{status}");
}

/// An upstream task that lists no items completes its expanded task at once, and downstream
/// runs.
#[test]
fn an_empty_list_completes_the_expanded_task_at_once() {
    let dir = tempfile::tempdir().unwrap();
    write_pipeline(
        dir.path(),
        r#"[pipeline]
name = "fanout"

[phases.main]

[tasks.list_games]
phase = "main"
command = ["sh", "-c", "echo '{{\"items\": []}}' > \"$KEEL_RESULT\""]

[tasks.box_scores]
phase = "main"
after = ["list_games"]
command = ["sh", "-c", "echo {item} >> ledger"]
expand = { from = "list_games" }

[tasks.summary]
phase = "main"
after = ["box_scores"]
command = ["sh", "-c", "echo summary >> ledger"]
"#,
    );
    let (code, text) = run_keel(dir.path(), "run", &["--partition", "2026-01-18"]);
    assert_eq!(code, Some(0), "{text}");
    let ledger = std::fs::read_to_string(dir.path().join("ledger")).unwrap();
    assert_eq!(ledger, "summary\n");
    let (_, status) = run_keel(dir.path(), "status", &["--partition", "2026-01-18"]);
    assert!(status.contains("no items to run"), "{status}");
    let (_, json) = run_keel(
        dir.path(),
        "status",
        &["--partition", "2026-01-18", "--json"],
    );
    let document: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        document["runs"][0]["tasks"][1]["outcome"], "succeeded",
        "{json}"
    );
}

/// A task that lists its items with no data (a day without games) leaves its expanded
/// task nothing to do: `no_data`, like the task it expands over, and downstream runs.
#[test]
fn a_list_with_no_data_leaves_the_expanded_task_no_data() {
    let dir = tempfile::tempdir().unwrap();
    write_pipeline(
        dir.path(),
        r#"[pipeline]
name = "fanout"

[phases.main]

[tasks.list_games]
phase = "main"
command = ["sh", "-c", "echo '{{\"outcome\": \"no_data\", \"message\": \"no games\"}}' > \"$KEEL_RESULT\""]

[tasks.box_scores]
phase = "main"
after = ["list_games"]
command = ["sh", "-c", "echo {item} >> ledger"]
expand = { from = "list_games" }

[tasks.summary]
phase = "main"
after = ["box_scores"]
command = ["sh", "-c", "echo summary >> ledger"]
"#,
    );
    let (code, text) = run_keel(dir.path(), "run", &["--partition", "2026-01-18"]);
    assert_eq!(code, Some(0), "{text}");
    let ledger = std::fs::read_to_string(dir.path().join("ledger")).unwrap();
    assert_eq!(ledger, "summary\n");
    let (_, json) = run_keel(
        dir.path(),
        "status",
        &["--partition", "2026-01-18", "--json"],
    );
    let document: serde_json::Value = serde_json::from_str(&json).unwrap();
    let box_scores = &document["runs"][0]["tasks"][1];
    assert_eq!(box_scores["outcome"], "no_data", "{json}");
    assert_eq!(
        box_scores["message"], "no items to run: \"list_games\" had no data",
        "{json}"
    );
}

/// `keel run` killed with SIGKILL again and again while an expanded task runs its items, then
/// run to the end: the items are listed once, and the ledger every process appends to shows each
/// item started and ended exactly once (an attempt outlives a killed Keel and is adopted or
/// recorded by the next), and the task downstream once.
#[test]
fn kill_dash_nine_during_an_expansion_runs_no_item_twice() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger");
    let pipeline = write_pipeline(
        dir.path(),
        &format!(
            r#"[pipeline]
name = "fanout"

[defaults]
concurrency = 4
retries = {{ attempts = 2, initial = "10ms", max = "50ms" }}

[phases.discover]
[phases.scrape]
after = ["discover"]
[phases.report]
after = ["scrape"]

[tasks.list_games]
phase = "discover"
command = ["sh", "-c", "echo list >> {ledger}; sleep 0.1; printf '{{{{\"items\": [' > \"$KEEL_RESULT\"; for n in $(seq 1 23); do printf '\"g%s\",' $n >> \"$KEEL_RESULT\"; done; printf '\"g24\"]}}}}' >> \"$KEEL_RESULT\""]

[tasks.box_scores]
phase = "scrape"
command = ["sh", "-c", "echo start $KEEL_TASK >> {ledger}; sleep 0.1; echo end $KEEL_TASK >> {ledger}"]
expand = {{ from = "list_games" }}

[tasks.summary]
phase = "report"
command = ["sh", "-c", "echo summary >> {ledger}"]
"#,
            ledger = ledger.display()
        ),
    );
    let mut kills = 0;
    let started = Instant::now();
    // Kill points spread over the listing and the items (a fixed sequence, not random).
    let delays = [60, 150, 220, 90, 300, 130, 250, 180, 70, 330];
    for delay in delays {
        let mut child = Command::new(keel_path())
            .args(["run", "--partition", "2026-01-18"])
            .arg(&pipeline)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        if child.try_wait().unwrap().is_some() {
            break;
        }
        child.kill().unwrap();
        child.wait().unwrap();
        kills += 1;
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the crash test is taking too long"
        );
    }
    let (code, text) = run_keel(dir.path(), "run", &["--partition", "2026-01-18"]);
    assert!(matches!(code, Some(0)), "{text}");
    assert!(kills >= 3, "only {kills} kills happened");
    eprintln!("{kills} kills");
    let ledger = std::fs::read_to_string(&ledger).unwrap();
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for line in ledger.lines() {
        *counts.entry(line).or_default() += 1;
    }
    assert_eq!(counts.get("summary"), Some(&1), "{ledger}");
    for n in 1..=24 {
        for edge in ["start", "end"] {
            let line = format!("{edge} box_scores[g{n}]");
            assert_eq!(
                counts.get(line.as_str()),
                Some(&1),
                "{line:?} once, after {kills} kills: {ledger}"
            );
        }
    }
    // The listing may have been killed before it was recorded and run again; the items come
    // from the one recorded list.
    let (_, status) = run_keel(dir.path(), "status", &["--partition", "2026-01-18"]);
    assert!(status.contains("24/24"), "{status}");
}
