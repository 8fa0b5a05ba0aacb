//! Dates in templates and task calendars (`when`), through the binary with real processes.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::support::{keel, write_pipeline};

/// Runs `keel SUBCOMMAND PIPELINE ARGS…` in `dir`; returns the exit code and the output.
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

fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name)).unwrap_or_else(|error| panic!("{name}: {error}"))
}

#[test]
fn date_templates_expand_to_the_partitions_neighbours_and_formats() {
    let dir = tempfile::tempdir().unwrap();
    write_pipeline(
        dir.path(),
        r#"[pipeline]
name = "dates"

[phases.main]

[tasks.echo]
phase = "main"
command = ["sh", "-c", "echo \"$1 $2 $3\" > dates.txt", "sh", "{date-1d}", "{date:%Y%m%d}", "{partition+1d:%d/%m}"]

[tasks.env]
phase = "main"
after = ["echo"]
command = ["sh", "-c", "echo \"$YESTERDAY\" > env.txt"]
env = { YESTERDAY = "{date-1d:%Y_%m_%d}" }
"#,
    );
    let (code, text) = run_keel(dir.path(), "run", &["--partition", "2024-03-01"]);
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(
        read(dir.path(), "dates.txt").trim(),
        "2024-02-29 20240301 02/03"
    );
    assert_eq!(read(dir.path(), "env.txt").trim(), "2024_02_29");
}
