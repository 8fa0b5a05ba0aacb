//! What Keel says, across commands: one style for every error (`error: …`, then `hint: …` when
//! there is something to do), the same exit code for the same condition whichever command meets
//! it, English plurals, and the commands Keel suggests working when pasted as printed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use insta::assert_snapshot;

use crate::support::{keel, write_pipeline};

const DAY: &str = "2026-01-18";

const PIPELINE: &str = r#"[pipeline]
name = "t"
timezone = "UTC"
partition = "date"

[defaults]
timeout = "20s"
retries = { attempts = 1, initial = "10ms", max = "50ms" }

[phases.main]

[tasks.fetch_orders]
phase = "main"
command = ["true"]

[tasks.report]
phase = "main"
command = ["true"]
after = ["fetch_orders"]
"#;

/// A temporary directory that is the working directory of every `keel` started in it.
struct Dir {
    dir: tempfile::TempDir,
}

impl Dir {
    fn new() -> Dir {
        Dir {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn with_pipeline(text: &str) -> Dir {
        let dir = Dir::new();
        write_pipeline(dir.path(), text);
        dir
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn file(&self, name: &str) -> PathBuf {
        self.path().join(name)
    }

    /// `keel ARGS…` here: the exit code and output, with this directory's path as `[DIR]`.
    fn keel(&self, args: &[&str]) -> (Option<i32>, String) {
        let output = keel()
            .current_dir(self.path())
            .timeout(Duration::from_secs(20))
            .args(args)
            .output()
            .unwrap();
        let mut text = format!("$ keel {}\nexit {}\n", args.join(" "), {
            output
                .status
                .code()
                .map_or("signal".into(), |code| code.to_string())
        });
        for (name, bytes) in [("stderr", &output.stderr), ("stdout", &output.stdout)] {
            if !bytes.is_empty() {
                text.push_str(&format!("--- {name}\n{}", String::from_utf8_lossy(bytes)));
            }
        }
        let dir = self.path().to_str().unwrap();
        let text = text.replace(dir, "[DIR]");
        (output.status.code(), text)
    }
}

/// Every line of a command's error output is `error: …` or `hint: …`.
fn assert_styled(transcript: &str) {
    let stderr = transcript
        .split("--- stderr\n")
        .nth(1)
        .map(|rest| rest.split("--- stdout\n").next().unwrap_or_default())
        .unwrap_or_default();
    for line in stderr.lines() {
        assert!(
            line.starts_with("error: ") || line.starts_with("hint: "),
            "an error line not in Keel's style: {line:?}\n{transcript}"
        );
    }
}

#[test]
fn errors_read_alike_and_exit_alike_across_commands() {
    let dir = Dir::with_pipeline(PIPELINE);
    assert_eq!(dir.keel(&["run", "--partition", DAY]).0, Some(0));
    let cases: &[(&[&str], i32)] = &[
        // An unknown task: exit 2, naming the pipeline's tasks, wherever it is named.
        (&["run", "--partition", DAY, "--only", "fetch_order"], 2),
        (&["retry", "--partition", DAY, "fetch_order"], 2),
        (&["history", "fetch_order"], 2),
        (&["logs", "fetch_order"], 2),
        // A partition without a run: exit 2, saying how to start one.
        (&["retry", "--partition", "2026-01-19", "report"], 2),
        (&["cancel", "--partition", "2026-01-19"], 2),
        (&["logs", "report", "--partition", "2026-01-19"], 2),
        // An unknown run or attempt: exit 2.
        (&["status", "--run", "99"], 2),
        (&["logs", "report", "--attempt", "9"], 2),
        // Dates: badly written, not a day, out of order.
        (&["status", "--partition", "2026-2-3"], 2),
        (&["run", "--partition", "2026-02-30"], 2),
        (&["status", "--from", "2026-01-20", "--to", DAY], 2),
        // A keel.toml already there.
        (&["init"], 2),
    ];
    let mut transcripts = Vec::new();
    for (args, code) in cases {
        let (exit, transcript) = dir.keel(args);
        assert_eq!(exit, Some(*code), "{transcript}");
        assert_styled(&transcript);
        transcripts.push(transcript);
    }
    // A pipeline file with errors: each one an error line with its hint, then the count.
    let broken = Dir::with_pipeline(&PIPELINE.replace(
        "after = [\"fetch_orders\"]",
        "after = [\"fetch_order\"]\ntimout = \"1m\"",
    ));
    let (exit, transcript) = broken.keel(&["validate"]);
    assert_eq!(exit, Some(2));
    transcripts.push(transcript);
    assert_snapshot!("errors_across_commands", transcripts.join("\n"));
}

#[test]
fn counts_are_singular_for_one() {
    let one = Dir::with_pipeline(
        r#"[pipeline]
name = "one"
timezone = "UTC"

[phases.main]

[tasks.only]
phase = "main"
command = ["true"]
"#,
    );
    let (exit, text) = one.keel(&["validate"]);
    assert_eq!(exit, Some(0));
    assert!(
        text.contains(r#"is valid: pipeline "one", 1 phase, 1 task, version"#),
        "{text}"
    );
    let two = Dir::with_pipeline(PIPELINE);
    let (_, text) = two.keel(&["validate"]);
    assert!(text.contains(r#"pipeline "t", 1 phase, 2 tasks"#), "{text}");
}

#[test]
fn status_of_a_partition_without_a_run_says_how_to_start_one() {
    let dir = Dir::with_pipeline(PIPELINE);
    // Before any state exists, and once other partitions have runs.
    let (exit, before) = dir.keel(&["status", "--partition", "2026-01-05"]);
    assert_eq!(exit, Some(0));
    assert_eq!(dir.keel(&["run", "--partition", DAY]).0, Some(0));
    let (exit, after) = dir.keel(&["status", "--partition", "2026-01-05"]);
    assert_eq!(exit, Some(0));
    assert_snapshot!(
        "status_partition_without_a_run",
        format!("{before}\n{after}")
    );
}

#[test]
fn a_well_written_date_that_does_not_exist_says_so() {
    let dir = Dir::with_pipeline(PIPELINE);
    let mut transcripts = Vec::new();
    for date in [
        "2026-02-30",
        "2024-02-30",
        "2026-04-31",
        "2026-13-01",
        "2026-2-3",
    ] {
        let (exit, transcript) = dir.keel(&["status", "--partition", date]);
        assert_eq!(exit, Some(2), "{transcript}");
        transcripts.push(transcript);
    }
    assert_snapshot!("dates_that_do_not_exist", transcripts.join("\n"));
}

#[test]
fn init_ignores_the_state_in_git_and_prints_a_next_step_that_runs() {
    // A fresh directory: .gitignore written, and the printed next step works pasted in a shell
    // as it is, though the keel under test is not on PATH.
    let dir = Dir::new();
    let output = keel()
        .current_dir(dir.path())
        .env("PATH", "/usr/bin:/bin")
        .arg("init")
        .output()
        .unwrap();
    assert!(output.status.success());
    assert_eq!(
        std::fs::read_to_string(dir.file(".gitignore")).unwrap(),
        ".keel/\n"
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let next = stdout
        .lines()
        .find_map(|line| line.strip_prefix("next: "))
        .unwrap_or_else(|| panic!("no next step in {stdout}"));
    assert!(
        !next.starts_with("keel "),
        "keel is not on PATH here: {next}"
    );
    let pasted = std::process::Command::new("sh")
        .args(["-c", next])
        .current_dir(dir.path())
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    assert!(
        pasted.status.success(),
        "{next}\n{}",
        String::from_utf8_lossy(&pasted.stderr)
    );

    // An existing .gitignore gains the line, once, with what it held kept.
    let other = Dir::new();
    std::fs::write(other.file(".gitignore"), "target").unwrap();
    assert_eq!(other.keel(&["init"]).0, Some(0));
    assert_eq!(
        std::fs::read_to_string(other.file(".gitignore")).unwrap(),
        "target\n.keel/\n"
    );
    assert_eq!(other.keel(&["init", "--force"]).0, Some(0));
    assert_eq!(
        std::fs::read_to_string(other.file(".gitignore")).unwrap(),
        "target\n.keel/\n"
    );
    // A refused init leaves .gitignore alone.
    let refused = Dir::with_pipeline(PIPELINE);
    assert_eq!(refused.keel(&["init"]).0, Some(2));
    assert!(!refused.file(".gitignore").exists());
}

/// Regression: `keel events | head -1` (and status, history, logs) panicked with a backtrace
/// once `head` had closed the pipe.
#[test]
fn a_reader_that_goes_away_ends_a_printing_command_quietly() {
    let dir = Dir::with_pipeline(PIPELINE);
    assert_eq!(dir.keel(&["run", "--partition", DAY]).0, Some(0));
    for args in [
        &["events"][..],
        &["status", "--all"],
        &["history", "report"],
        &["validate"],
    ] {
        // The reader is gone before keel starts, so its first write meets a broken pipe.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let output = std::process::Command::new(crate::support::keel_path())
            .args(args)
            .current_dir(dir.path())
            .stdout(writer)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "keel {args:?}: {stderr}"
        );
        // What the reader wanted, it has: a command that only prints ends with exit 0.
        assert_eq!(output.status.code(), Some(0), "keel {args:?}");
    }
}
