//! A planted secret, searched for everywhere: a task that declares it gets it (and only that
//! task does), prints it as written, base64-encoded and URL-encoded, and puts it in its result
//! message; then every captured log, every file under the state directory (the SQLite database
//! included), `keel status`, `keel logs`, `keel events` and `keel history` are searched, as bytes,
//! for any form of it. None may hold it.

use std::path::Path;

use base64::Engine;

use crate::support::{keel, write_pipeline};

const SECRET: &str = "pl4nted-S3cret/value+xyz";

const PIPELINE: &str = r#"[pipeline]
name = "planted"
timezone = "UTC"

[phases.main]
[tasks.uses_it]
phase = "main"
secrets = ["FEED_TOKEN"]
command = ["sh", "leak.sh"]

[tasks.other]
phase = "main"
command = ["sh", "-c", "echo other sees: ${{FEED_TOKEN:-nothing}} > other.txt"]
"#;

const LEAK: &str = r#"echo "token: $FEED_TOKEN"
echo "again: $FEED_TOKEN" >&2
printf '%s' "$FEED_TOKEN" | base64
echo "url: $FEED_TOKEN_URL"
[ -n "$FEED_TOKEN" ] && echo received > received.txt
printf '{"outcome": "succeeded", "message": "used %s"}' "$FEED_TOKEN" > "$KEEL_RESULT"
"#;

fn forms() -> Vec<String> {
    let base64 = base64::engine::general_purpose::STANDARD.encode(SECRET);
    vec![
        SECRET.to_string(),
        base64.trim_end_matches('=').to_string(),
        "pl4nted-S3cret%2Fvalue%2Bxyz".to_string(),
    ]
}

fn search_tree(dir: &Path, found: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            search_tree(&path, found);
        } else if let Ok(bytes) = std::fs::read(&path) {
            for form in forms() {
                if bytes
                    .windows(form.len())
                    .any(|window| window == form.as_bytes())
                {
                    found.push(format!("{} holds {form:?}", path.display()));
                }
            }
        }
    }
}

#[test]
fn a_planted_secret_reaches_its_task_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write_pipeline(root, PIPELINE);
    std::fs::write(root.join("leak.sh"), LEAK).unwrap();
    let url_form = "pl4nted-S3cret%2Fvalue%2Bxyz";
    let ran = keel()
        .current_dir(root)
        .args(["run", "--partition", "2026-04-01"])
        .env("FEED_TOKEN", SECRET)
        .env("FEED_TOKEN_URL", url_form)
        .output()
        .unwrap();
    assert_eq!(ran.status.code(), Some(0), "{ran:?}");
    assert!(
        root.join("received.txt").exists(),
        "the declaring task got the secret"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("other.txt")).unwrap(),
        "other sees: nothing\n",
        "a task that does not declare the secret does not get it"
    );

    let mut outputs = vec![
        String::from_utf8_lossy(&ran.stdout).into_owned(),
        String::from_utf8_lossy(&ran.stderr).into_owned(),
    ];
    for args in [
        vec!["status", "--partition", "2026-04-01"],
        vec!["status", "--partition", "2026-04-01", "--json"],
        vec!["logs", "uses_it", "--partition", "2026-04-01"],
        vec!["events", "--partition", "2026-04-01", "--json"],
        vec!["history", "uses_it", "--json"],
    ] {
        let output = keel().current_dir(root).args(&args).output().unwrap();
        outputs.push(String::from_utf8_lossy(&output.stdout).into_owned());
        outputs.push(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    let logs = &outputs[6];
    assert!(
        logs.contains("token: ***"),
        "the log is there, redacted: {logs}"
    );
    assert!(logs.contains("url: ***"), "{logs}");
    let status = &outputs[4];
    assert!(
        status.contains("used ***"),
        "the message is there, redacted: {status}"
    );
    for output in &outputs {
        for form in forms() {
            assert!(!output.contains(&form), "{form:?} leaked: {output}");
        }
    }
    let mut found = Vec::new();
    search_tree(&root.join(".keel"), &mut found);
    assert!(found.is_empty(), "{found:?}");
}
