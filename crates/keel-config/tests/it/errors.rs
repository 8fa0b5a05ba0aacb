//! One snapshot per kind of error. The wording is part of the product: read the `.snap` files.

use insta::assert_snapshot;

use crate::{HEADER, errors_of};

#[test]
fn unknown_field_with_suggestion() {
    assert_snapshot!(errors_of(&format!(
        r#"{HEADER}
[tasks.fetch]
phase = "scrape"
command = ["true"]
timout = "5m"
"#
    )));
}

#[test]
fn unknown_field_without_suggestion_lists_the_fields() {
    assert_snapshot!(errors_of(&format!(
        r#"{HEADER}
[defaults]
colour = "blue"
retries = {{ attempts = 2, backof = "1s" }}

[tasks.fetch]
phase = "scrape"
command = ["true"]
"#
    )));
}

#[test]
fn unknown_task_in_after_with_suggestion() {
    assert_snapshot!(errors_of(
        r#"[pipeline]
name = "hoops"

[phases.raw]
[phases.analytics]
after = ["raw"]

[tasks.player_summary]
phase = "raw"
command = ["true"]

[tasks.ml_features]
phase = "analytics"
command = ["true"]
after = [
        "player_summry",
]
"#
    ));
}

#[test]
fn unknown_phase_with_suggestion() {
    assert_snapshot!(errors_of(
        r#"[pipeline]
name = "hoops"

[phases.scrape]
[phases.raw]
after = ["scrap", "nowhere"]

[tasks.fetch]
phase = "Scrape"
command = ["true"]
"#
    ));
}

#[test]
fn phase_cycle() {
    assert_snapshot!(errors_of(
        r#"[pipeline]
name = "hoops"

[phases.scrape]
after = ["analytics"]
[phases.raw]
after = ["scrape"]
[phases.analytics]
after = ["raw"]
[phases.lonely]
after = ["lonely"]

[tasks.fetch]
phase = "scrape"
command = ["true"]
"#
    ));
}

#[test]
fn task_cycle() {
    assert_snapshot!(errors_of(&format!(
        r#"{HEADER}
[tasks.a]
phase = "scrape"
command = ["true"]
after = ["c"]

[tasks.b]
phase = "scrape"
command = ["true"]
after = ["a"]

[tasks.c]
phase = "scrape"
command = ["true"]
after = ["b", "a"]
"#
    )));
}

#[test]
fn task_after_a_later_phase() {
    assert_snapshot!(errors_of(
        r#"[pipeline]
name = "hoops"

[phases.scrape]
[phases.raw]
after = ["scrape"]
[phases.side]

[tasks.fetch]
phase = "scrape"
command = ["true"]
after = ["clean"]

[tasks.clean]
phase = "raw"
command = ["true"]
after = ["fetch", "odd", "fetch"]

[tasks.odd]
phase = "side"
command = ["true"]
after = ["side", "odd"]
"#
    ));
}

#[test]
fn duplicate_key() {
    assert_snapshot!(errors_of(&format!(
        r#"{HEADER}
[tasks.fetch]
phase = "scrape"
command = ["true"]
timeout = "1m"
timeout = "2m"

[tasks.fetch]
phase = "scrape"
command = ["false"]
"#
    )));
}

#[test]
fn bad_durations() {
    assert_snapshot!(errors_of(&format!(
        r#"{HEADER}
[defaults]
timeout = "10"
heartbeat = "5 minutes"
deadline = 3600
retries = {{ initial = "1x", max = "fast" }}

[tasks.fetch]
phase = "scrape"
command = ["true"]
timeout = "0s"
"#
    )));
}

#[test]
fn bad_timezone() {
    assert_snapshot!(errors_of(
        r#"[pipeline]
name = "hoops"
timezone = "America/New_Yrok"

[phases.scrape]
[tasks.fetch]
phase = "scrape"
command = ["true"]
"#
    ));
    assert_snapshot!(
        "bad_timezone_without_suggestion",
        errors_of(
            r#"[pipeline]
name = "hoops"
timezone = "Mars/Olympus_Mons"

[phases.scrape]
[tasks.fetch]
phase = "scrape"
command = ["true"]
"#
        )
    );
}

#[test]
fn bad_partition_kind_and_other_choices() {
    assert_snapshot!(errors_of(
        r#"[pipeline]
name = "hoops"
partition = "daily"

[defaults]
concurrency = 0
retries = { attempts = 0, jitter = "fulll" }

[phases.scrape]
[tasks.fetch]
phase = "scrape"
command = ["true"]
"#
    ));
}

#[test]
fn not_supported_yet() {
    assert_snapshot!(errors_of(
        r#"[pipeline]
name = "hoops"
schedule = "0 6 * * *"

[resources.stats_feed]
rate = "20/s"

[phases.scrape]
[phases.analytics]
after = ["scrape"]
gate = { required = ["fetch"], min = "60%", grace = "30m" }

[tasks.fetch]
phase = "scrape"
command = ["hoops", "scrape", "{date}"]
uses = ["stats_feed"]
wait_for = { command = ["hoops", "ready"], every = "5m" }
"#
    ));
}

#[test]
fn bad_templates() {
    assert_snapshot!(errors_of(
        r#"[pipeline]
name = "hoops"

[phases.scrape]
[tasks.fetch]
phase = "scrape"
command = ["sh", "-c", "echo {day} for {date} in {{braces}} ${HOME}", "{partition"]
"#
    ));
}

#[test]
fn plaintext_secrets_are_refused_without_being_printed() {
    let message = errors_of(
        r#"[pipeline]
name = "hoops"
state = "postgres://keel:hunter2hunter2@db.internal/keel"

[phases.scrape]
[tasks.fetch]
phase = "scrape"
command = ["fetch", "--key", "AKIAIOSFODNN7EXAMPLE", "--api-token=s3cr3tvalue123"]

[tasks.notify]
phase = "scrape"
command = ["sh", "-c", "curl -d ok https://slack.example/ --token ghp_0123456789abcdefghij0123456789abcdef"]
"#,
    );
    for secret in [
        "hunter2hunter2",
        "IOSFODNN7EXAMPLE",
        "s3cr3tvalue123",
        "0123456789abcdefghij",
    ] {
        assert!(!message.contains(secret), "{secret} leaked: {message}");
    }
    assert_snapshot!(message);
}

#[test]
fn toml_syntax_error() {
    assert_snapshot!(errors_of(
        r#"[pipeline]
name = "hoops"

[tasks.fetch
phase = "scrape"
"#
    ));
}

#[test]
fn missing_file() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("keel.toml");
    let message = keel_config::load(&path).unwrap_err().to_string();
    let shown = path.display().to_string();
    assert_snapshot!(message.replace(&shown, "[DIR]/keel.toml"));
}

#[test]
fn missing_pipeline_table_and_tasks() {
    assert_snapshot!(errors_of("[phases.scrape]\n"));
}

#[test]
fn missing_fields_wrong_types_and_bad_names() {
    assert_snapshot!(errors_of(
        r#"[pipeline]
name = "my pipeline"

[phases.scrape]
after = "raw"

[tasks."fetch games"]
command = []

[tasks.parse]
phase = 1
command = ["parse", 2]
timeout = 30
retries = 3

[tasks.load]
"#
    ));
}

#[test]
fn several_errors_at_once_sorted_by_position() {
    assert_snapshot!(errors_of(
        r#"[pipeline]
name = "hoops"
timezone = "Europe/Pariss"
partiton = "date"

[defaults]
timeout = "10 m"

[phases.scrape]
[phases.raw]
after = ["scrape", "scrape"]

[tasks.scrape_boxscores]
phase = "scrap"
command = ["hoops", "scrape", "{dat}"]
after = ["nothing_like_it"]

[tasks.player_summary]
phase = "raw"
command = ["hoops", "summary", "--password=correcthorsebattery"]
after = ["scrape_boxscore"]
smoke = ["hoops", "self-test"]
"#
    ));
}
