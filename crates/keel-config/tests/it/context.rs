//! Where tasks run and their environment: `cwd`, `env`, `env_file` and `inherit_env`, their
//! errors as snapshots, how `[defaults]` and a task combine, and reading env files.

use std::collections::BTreeMap;

use insta::assert_snapshot;
use keel_model::{InheritEnv, TaskContext};

use crate::{HEADER, errors_of};

fn parse(source: &str) -> keel_model::PipelineSpec {
    keel_config::parse(source, "keel.toml").unwrap_or_else(|errors| panic!("{errors}"))
}

#[test]
fn defaults_and_a_task_combine_into_the_task_context() {
    let spec = parse(&format!(
        r#"{HEADER}
[defaults]
cwd = "work/{{date}}"
env = {{ LOG_LEVEL = "info", REGION = "eu" }}
env_file = ".env"
inherit_env = ["PATH", "HOME", "PATH"]

[tasks.plain]
phase = "scrape"
command = ["true"]

[tasks.own]
phase = "scrape"
command = ["true"]
cwd = "/srv/data"
env_file = "own.env"
inherit_env = false

[tasks.own.env]
LOG_LEVEL = "debug"
OUT = "out/{{task}}-{{date}}.csv"
"#
    ));
    let env = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect()
    };
    assert_eq!(
        spec.tasks[0].context,
        TaskContext {
            cwd: Some("work/{date}".into()),
            env: env(&[("LOG_LEVEL", "info"), ("REGION", "eu")]),
            env_file: Some(".env".into()),
            inherit_env: InheritEnv::Only(vec!["PATH".into(), "HOME".into()]),
        }
    );
    assert_eq!(
        spec.tasks[1].context,
        TaskContext {
            cwd: Some("/srv/data".into()),
            env: env(&[
                ("LOG_LEVEL", "debug"),
                ("OUT", "out/{task}-{date}.csv"),
                ("REGION", "eu")
            ]),
            env_file: Some("own.env".into()),
            inherit_env: InheritEnv::Nothing,
        }
    );
}

#[test]
fn without_context_fields_a_task_inherits_everything_and_runs_beside_the_file() {
    let spec = parse(&format!(
        "{HEADER}\n[tasks.t]\nphase = \"scrape\"\ncommand = [\"true\"]\n"
    ));
    assert_eq!(spec.tasks[0].context, TaskContext::default());
    assert_eq!(spec.tasks[0].context.inherit_env, InheritEnv::All);
}

#[test]
fn bad_working_directories_and_env_files() {
    assert_snapshot!(errors_of(&format!(
        r#"{HEADER}
[defaults]
cwd = 5
env_file = [".env"]

[tasks.a]
phase = "scrape"
command = ["true"]
cwd = ""
env_file = ""

[tasks.b]
phase = "scrape"
command = ["true"]
cwd = "out/{{day}}/{{date"

[tasks.c]
phase = "scrape"
command = ["true"]
cwd = "a\u0000b"
"#
    )));
}

#[test]
fn bad_environment_variables() {
    assert_snapshot!(errors_of(&format!(
        r#"{HEADER}
[defaults]
env = "LOG_LEVEL=info"
inherit_env = "yes"

[tasks.a]
phase = "scrape"
command = ["true"]
inherit_env = ["PATH", 3, "KEEL_RESULT", "", "A=B"]

[tasks.a.env]
"" = "empty name"
"A=B" = "equals in the name"
"NUL\u0000" = "nul in the name"
KEEL_TASK = "overriding keel"
PORT = 8080
OUT = "out/{{dat}}"
VALUE_WITH_NUL = "a\u0000b"
EMPTY_VALUE_IS_FINE = ""
"#
    )));
}

#[test]
fn plaintext_secrets_in_env_are_refused_without_being_printed() {
    let message = errors_of(&format!(
        r#"{HEADER}
[defaults]
env = {{ DB_PASSWORD = "hunter2hunter2", DB_PASSWORD_FILE = "/run/secrets/db" }}

[tasks.fetch]
phase = "scrape"
command = ["true"]
env = {{ GITHUB = "ghp_0123456789abcdefghij0123456789abcdef", STATS_API_KEY = "k3y-0f-the-feed-123", FROM_KEEL = "$STATS_API_KEY" }}
"#
    ));
    for secret in [
        "hunter2hunter2",
        "0123456789abcdefghij",
        "k3y-0f-the-feed-123",
    ] {
        assert!(!message.contains(secret), "{secret} leaked: {message}");
    }
    assert_snapshot!(message);
}

#[test]
fn env_files_are_read_relative_to_the_pipeline_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".env"),
        "# shared\nFEED=http://feed\nexport RETRIES='3'\n",
    )
    .unwrap();
    let spec = parse(&format!(
        r#"{HEADER}
[defaults]
env_file = ".env"

[tasks.a]
phase = "scrape"
command = ["true"]

[tasks.b]
phase = "scrape"
command = ["true"]
"#
    ));
    let files = keel_config::load_env_files(&spec, dir.path()).unwrap();
    assert_eq!(files.len(), 1, "read once for the tasks that share it");
    assert_eq!(
        files[".env"],
        [
            ("FEED".to_string(), "http://feed".to_string()),
            ("RETRIES".to_string(), "3".to_string())
        ]
    );
}

#[test]
fn a_missing_or_malformed_env_file_names_the_file_and_the_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.env"),
        "OK=1\nnot a variable\nKEEL_RUN_ID=7\n",
    )
    .unwrap();
    let spec = parse(&format!(
        r#"{HEADER}
[tasks.a]
phase = "scrape"
command = ["true"]
env_file = "missing.env"

[tasks.b]
phase = "scrape"
command = ["true"]
env_file = "bad.env"
"#
    ));
    let errors = keel_config::load_env_files(&spec, dir.path()).unwrap_err();
    let shown = errors
        .to_string()
        .replace(&dir.path().display().to_string(), "[DIR]");
    assert!(
        !shown.contains("not a variable"),
        "a line's text is never quoted: {shown}"
    );
    assert_snapshot!(shown);
}
