//! Fan-out (`expand`) through the binary with real processes: results that list items, and a
//! pipeline with an expanded task, which this Keel validates but does not run yet.

use std::path::Path;
use std::time::Duration;

use crate::support::{keel, write_pipeline};

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

/// `keel validate` accepts an expanded task; `keel run` refuses the pipeline with exit 2,
/// naming the task, before anything runs.
#[test]
fn a_pipeline_with_an_expanded_task_validates_but_is_not_run() {
    let dir = tempfile::tempdir().unwrap();
    write_pipeline(
        dir.path(),
        r#"[pipeline]
name = "fanout"

[phases.discover]
[phases.scrape]
after = ["discover"]

[tasks.list_games]
phase = "discover"
command = ["sh", "-c", "touch ran; echo '{{\"items\": [\"0021\"]}}' > \"$KEEL_RESULT\""]

[tasks.box_scores]
phase = "scrape"
command = ["sh", "-c", "echo {item}"]
expand = { from = "list_games", min = "95%" }
"#,
    );
    let (code, text) = run_keel(dir.path(), "validate", &[]);
    assert_eq!(code, Some(0), "{text}");
    let (code, text) = run_keel(dir.path(), "run", &["--partition", "2026-01-18"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("task \"box_scores\" has expand"), "{text}");
    assert!(!dir.path().join("ran").exists(), "nothing ran");
}
