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

/// `[secrets]`, a task's `secrets` and `smoke` were once refused as not supported yet; they are
/// read now.
#[test]
fn secrets_and_smoke_once_refused_are_read() {
    let spec = keel_config::parse(
        r#"[pipeline]
name = "hoops"

[secrets]
provider = "env"

[phases.scrape]

[tasks.fetch]
phase = "scrape"
command = ["hoops", "scrape", "{date}"]
secrets = ["STATS_API_KEY"]
smoke = ["hoops", "self-test"]
"#,
        "keel.toml",
    )
    .unwrap();
    assert_eq!(spec.tasks[0].secrets, ["STATS_API_KEY"]);
    assert_eq!(spec.smoke[0].command, ["hoops", "self-test"]);
    assert!(spec.secrets.is_some());
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
fn bad_date_templates_everywhere_templates_are() {
    assert_snapshot!(errors_of(
        r#"[pipeline]
name = "hoops"

[phases.scrape]
[tasks.fetch]
phase = "scrape"
command = ["load", "{date-1w}", "{date+}", "{date:%H:%M}", "{date:}", "{date+99999d}"]
cwd = "out/{partition:%Q}"
env = { DAY = "{date-1day}" }
wait_for = { command = ["ready", "{date:%s}"] }

[tasks.post]
phase = "scrape"
http = { url = "https://svc.internal/{date-x}", query = { day = "{date:%Z}" } }
"#
    ));
}

#[test]
fn valid_date_templates_are_accepted() {
    let spec = keel_config::parse(
        r#"[pipeline]
name = "hoops"

[phases.scrape]
[tasks.fetch]
phase = "scrape"
command = ["load", "{date-1d}", "{date+7d}", "{partition-1d}", "{date:%Y%m%d}", "{date-1d:%Y/%m/%d}"]
env = { DAY = "{date-1d:%d}" }
"#,
        "keel.toml",
    )
    .expect("date templates are valid");
    assert_eq!(spec.tasks[0].command[1], "{date-1d}");
}

#[test]
fn date_arithmetic_needs_date_partitions() {
    assert_snapshot!(errors_of(
        r#"[pipeline]
name = "hoops"
partition = "none"

[phases.scrape]
[tasks.fetch]
phase = "scrape"
command = ["load", "{date}", "{date-1d}", "{partition:%Y}"]
"#
    ));
}

#[test]
fn bad_calendars() {
    assert_snapshot!(errors_of(&format!(
        r#"{HEADER}
[tasks.typo]
phase = "scrape"
command = ["true"]
when = {{ weekdays = ["sun", "wdn", "Monday", "someday", "sun", 3, "thr", "tu"] }}

[tasks.empty]
phase = "scrape"
command = ["true"]
when = {{ weekdays = [] }}

[tasks.missing]
phase = "scrape"
command = ["true"]
when = {{ weekday = ["sun"] }}

[tasks.decided]
phase = "scrape"
command = ["true"]
when = {{ weekdays = ["sun"], command = ["is-game-day", "{{date-x}}"] }}

[tasks.undecided]
phase = "scrape"
command = ["true"]
when = {{ command = [] }}

[tasks.wrong]
phase = "scrape"
command = ["true"]
when = "sundays"
"#
    )));
}

#[test]
fn weekdays_need_date_partitions() {
    assert_snapshot!(errors_of(
        r#"[pipeline]
name = "hoops"
partition = "none"

[phases.scrape]
[tasks.fetch]
phase = "scrape"
command = ["true"]
when = { weekdays = ["sun"] }
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

#[test]
fn bad_rates() {
    assert_snapshot!(errors_of(&format!(
        r#"{HEADER}
[resources.words]
rate = "20 per second"
[resources.zero]
rate = "0/s"
[resources.unit]
rate = "20/x"
[resources.spelt_out]
rate = "20/sec"
[resources.count]
rate = "many/s"
[resources.period]
rate = "20/5 minutes"
[resources.empty_period]
rate = "5/0s"
[resources.huge]
rate = "9999999999/s"
[resources.number]
rate = 20

[tasks.fetch]
phase = "scrape"
command = ["true"]
"#
    )));
}

#[test]
fn unknown_fields_in_resilience_tables() {
    assert_snapshot!(errors_of(
        r#"[pipeline]
name = "hoops"

[resources.feed]
concurency = 4
breaker = { failure = 5, cooldwn = "30s", threshold = 3 }
retry_budget = { ratio = "20%", windw = "1m" }

[phases.scrape]
gate = { requierd = ["fetch"], minimum = "60%" }

[tasks.fetch]
phase = "scrape"
command = ["true"]
wait_for = { command = ["true"], evry = "5m", timeout = "1h" }
"#
    ));
}

#[test]
fn wrong_types_in_resilience_fields() {
    assert_snapshot!(errors_of(
        r#"[pipeline]
name = "hoops"

[resources]
broken = 3

[resources.feed]
concurrency = "4"
breaker = "on"
retry_budget = 5

[resources.db]
breaker = { failures = "5", cooldown = 30 }
retry_budget = { ratio = true, min = "3" }

[phases.scrape]
gate = "60%"

[phases.raw]
after = ["scrape"]
gate = { required = "load", min = ["60%"], grace = 30 }

[tasks.fetch]
phase = "scrape"
command = ["true"]
uses = "feed"
wait_for = ["test", "-s", "file"]

[tasks.load]
phase = "raw"
command = ["true"]
uses = [1, "db"]
wait_for = { command = "test -s file", every = 5 }
"#
    ));
}

#[test]
fn bad_percentages() {
    assert_snapshot!(errors_of(
        r#"[pipeline]
name = "hoops"

[resources.feed]
breaker = { ratio = "0%", window = 10 }
retry_budget = { ratio = 0 }

[resources.db]
breaker = { ratio = "fifty%", window = 10 }
retry_budget = { ratio = "-5%" }

[phases.scrape]
gate = { min = "150%" }
[phases.raw]
gate = { min = 60 }
[phases.analytics]
gate = { min = 1.5 }
[phases.export]
gate = { min = "60" }

[tasks.fetch]
phase = "scrape"
command = ["true"]
"#
    ));
}

#[test]
fn out_of_range_counts_and_bad_names_in_resources() {
    assert_snapshot!(errors_of(&format!(
        r#"{HEADER}
[resources."stats feed"]
concurrency = 0
breaker = {{ failures = 0, ratio = "50%", window = 0, cooldown = "0s" }}
retry_budget = {{ ratio = "20%", window = "0s", min = -1 }}

[tasks.fetch]
phase = "scrape"
command = ["true"]
"#
    )));
}

#[test]
fn breaker_window_without_ratio_and_retry_budget_without_ratio() {
    assert_snapshot!(errors_of(&format!(
        r#"{HEADER}
[resources.feed]
breaker = {{ failures = 5, window = 20 }}
retry_budget = {{ window = "1m", min = 3 }}

[tasks.fetch]
phase = "scrape"
command = ["true"]
"#
    )));
}

#[test]
fn gate_requires_tasks_of_its_own_phase() {
    assert_snapshot!(errors_of(
        r#"[pipeline]
name = "hoops"

[phases.raw]
[phases.analytics]
after = ["raw"]
gate = { required = [
    "player_game_sumary",
    "load_games",
    "nothing_like_it",
    "team_offense",
    "team_offense",
    "upcoming_player_context",
], min = "60%" }

[tasks.load_games]
phase = "raw"
command = ["true"]

[tasks.player_game_summary]
phase = "analytics"
command = ["true"]

[tasks.team_offense]
phase = "analytics"
command = ["true"]

# Its misspelt phase is reported once, not again by the gate.
[tasks.upcoming_player_context]
phase = "analytcs"
command = ["true"]
"#
    ));
}

#[test]
fn gate_without_required_tasks_or_min() {
    assert_snapshot!(errors_of(
        r#"[pipeline]
name = "hoops"

[phases.scrape]
gate = { grace = "5m" }

[phases.raw]
after = ["scrape"]
gate = { required = [] }

[phases.analytics]
after = ["raw"]

[phases.analytics.gate]
grace = "1m"

[tasks.fetch]
phase = "scrape"
command = ["true"]
"#
    ));
}

#[test]
fn unknown_and_repeated_resources_in_uses() {
    assert_snapshot!(errors_of(&format!(
        r#"{HEADER}
[resources.stats_feed]
rate = "20/s"

[tasks.fetch]
phase = "scrape"
command = ["true"]
uses = ["stats_fed", "warehouse", "stats_feed", "stats_feed"]
"#
    )));
}

#[test]
fn bad_sensors() {
    assert_snapshot!(errors_of(&format!(
        r#"{HEADER}
[tasks.empty]
phase = "scrape"
command = ["true"]
wait_for = {{ command = [], every = "0s" }}

[tasks.missing_command]
phase = "scrape"
command = ["true"]
wait_for = {{ every = "5m", deadline = "0s" }}

[tasks.templates]
phase = "scrape"
command = ["true"]
wait_for = {{ command = ["hoops", "ready", "{{day}}", "{{date"], max = "5 minutes" }}

[tasks.max_below_every]
phase = "scrape"
command = ["true"]
wait_for = {{ command = ["true"], every = "5m", max = "1m" }}

[tasks.max_below_default_every]
phase = "scrape"
command = ["true"]
wait_for = {{ command = ["true"], max = "30s" }}

[tasks.bad_every_is_not_compared]
phase = "scrape"
command = ["true"]
wait_for = {{ command = ["true"], every = "often", max = "1s" }}
"#
    )));
}

#[test]
fn secrets_passed_as_command_arguments_are_refused_with_how_to_pass_them() {
    let message = errors_of(
        r#"[pipeline]
name = "hoops"

[phases.raw]
[tasks.load]
phase = "raw"
command = ["load", "--password=hunter2", "--user", "keel"]

[tasks.upload]
phase = "raw"
command = ["aws", "s3", "cp", "out.csv", "s3://bucket/", "--secret-access-key", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"]

[tasks.fine]
phase = "raw"
command = ["load", "--password", "$DB_PASSWORD", "--token=none", "--password-file", "/run/secrets/db"]
"#,
    );
    for secret in ["hunter2", "wJalrXUtnFEMI", "EXAMPLEKEY"] {
        assert!(!message.contains(secret), "{secret} leaked: {message}");
    }
    assert!(!message.contains("tasks.fine"), "{message}");
    assert!(message.contains("not expanded"), "{message}");
    assert_snapshot!(message);
}

#[test]
fn plaintext_secrets_in_wait_for_are_refused() {
    let message = errors_of(&format!(
        r#"{HEADER}
[tasks.fetch]
phase = "scrape"
command = ["true"]
wait_for = {{ command = ["curl", "-H", "Authorization: Bearer abcdefghijklmnopqrstuvwxyz0123", "https://feed.example/ready"] }}
"#
    ));
    assert!(
        !message.contains("abcdefghijklmnopqrstuvwxyz0123"),
        "the token leaked: {message}"
    );
    assert_snapshot!(message);
}

/// Regression: names of any length passed validation, but a task's name becomes the name of its
/// attempt directories, and a name past the file system's limit (255 bytes) failed every attempt.
#[test]
fn names_longer_than_100_characters() {
    let at_the_limit = "a".repeat(100);
    let phase = format!("phase_{}", "p".repeat(95));
    let task = format!("task_{}", "t".repeat(255));
    let resource = format!("feed_{}", "r".repeat(96));
    assert_snapshot!(errors_of(&format!(
        r#"[pipeline]
name = "{at_the_limit}"

[resources.{resource}]

[phases.{at_the_limit}]
[phases.{phase}]

[tasks.{task}]
phase = "{at_the_limit}"
command = ["true"]

[tasks.{at_the_limit}]
phase = "{at_the_limit}"
command = ["true"]
"#
    )));
}

/// Regression: a NUL byte, written "\u0000", passed validation, and then every attempt failed to
/// start because a program's arguments cannot hold one.
#[test]
fn nul_bytes_in_commands_and_the_state_path() {
    assert_snapshot!(errors_of(
        r#"[pipeline]
name = "hoops"
state = "state\u0000.db"

[phases.scrape]
[tasks.fetch]
phase = "scrape"
command = ["sh", "-c", "echo a\u0000b"]
wait_for = { command = ["test", "-s", "\u0000"] }
"#
    ));
}

/// Regression: `initial` above `max` passed validation, and every retry then silently waited
/// `max`. The error is reported where a delay is written, against what that table inherits.
#[test]
fn retry_initial_longer_than_max() {
    assert_snapshot!(errors_of(&format!(
        r#"{HEADER}
[defaults]
retries = {{ initial = "2m" }}

[tasks.inherits_the_bad_pair]
phase = "scrape"
command = ["true"]
retries = {{ attempts = 5 }}

[tasks.lowers_max_below_inherited_initial]
phase = "scrape"
command = ["true"]
retries = {{ max = "30s" }}

[tasks.swapped]
phase = "scrape"
command = ["true"]
retries = {{ initial = "10s", max = "5s" }}

[tasks.fixes_it]
phase = "scrape"
command = ["true"]
retries = {{ initial = "1m" }}

[tasks.invalid_initial_is_not_compared]
phase = "scrape"
command = ["true"]
retries = {{ initial = "soon", max = "1ms" }}
"#
    )));
    assert_snapshot!(
        "retry_max_below_the_default_initial",
        errors_of(&format!(
            r#"{HEADER}
[tasks.fetch]
phase = "scrape"
command = ["true"]
retries = {{ max = "500ms" }}
"#
        ))
    );
}

/// Regression: any duration that fit in 64 bits of milliseconds passed validation, and a retry
/// delay or timer computed from it overflowed at run time. Every duration is at most 365 days.
#[test]
fn durations_longer_than_365_days() {
    assert_snapshot!(errors_of(
        r#"[pipeline]
name = "hoops"

[defaults]
timeout = "366d"
heartbeat = "8761h"
deadline = "99999999999999999999s"
retries = { initial = "1s", max = "106751991167d" }

[resources.feed]
rate = "1/366d"
breaker = { cooldown = "1000d", max_open = "365d1ms" }
retry_budget = { ratio = "20%", window = "400d" }

[phases.scrape]
gate = { min = "50%", grace = "9999d" }

[tasks.fetch]
phase = "scrape"
command = ["true"]
wait_for = { command = ["true"], every = "365d", max = "366d" }

[tasks.at_the_limit]
phase = "scrape"
command = ["true"]
timeout = "365d"
retries = { initial = "365d", max = "365d" }
wait_for = { command = ["true"], every = "365d" }
"#
    ));
}

#[test]
fn bad_schedules() {
    assert_snapshot!(errors_of(
        r#"[pipeline]
name = "hoops"
timezone = "America/New_York"
schedule = "0 25 * * *"
schedule_partition = "yesterday"
catchup = "some"

[phases.scrape]
[tasks.fetch]
phase = "scrape"
command = ["true"]
"#
    ));
    assert_snapshot!(errors_of(
        r#"[pipeline]
name = "hoops"
schedule = "0 6 * *"

[phases.scrape]
[tasks.fetch]
phase = "scrape"
command = ["true"]
"#
    ));
}

#[test]
fn bad_max_active_partitions() {
    assert_snapshot!(errors_of(
        r#"[pipeline]
name = "hoops"
max_active_partitions = 0

[phases.scrape]
[tasks.fetch]
phase = "scrape"
command = ["true"]
"#
    ));
    assert_snapshot!(errors_of(
        r#"[pipeline]
name = "hoops"
max_active_partitions = "2"

[phases.scrape]
[tasks.fetch]
phase = "scrape"
command = ["true"]
"#
    ));
}

#[test]
fn bad_passes() {
    assert_snapshot!(errors_of(
        r#"[pipeline]
name = "hoops"
timezone = "America/New_York"

[phases.scrape]
[phases.analytics]
after = ["scrape"]
[phases.empty]

[tasks.fetch]
phase = "scrape"
command = ["fetch", "{pass}", "{param.mode}"]

[tasks.summary]
phase = "analytics"
command = ["summary", "{param.mdoe}"]
env = { WINDOW = "{param.window}" }

[passes.tomorrow]
schedule = "0 17 * * *"
partition = "+1d"
phases = ["analytcs"]

[passes.overnight]
schedule = "0 25 * * *"
partition = "yesterday"
catchup = "every"
tasks = ["summry", "fetch", "fetch"]

[passes.same_day]
schedule = "30 10 * * *"
phases = ["scrape"]
tasks = ["fetch"]
params = { mode = "same_day", "bad name" = "x", retries = 3 }
gate = { analytcs = { min = "50%" }, scrape = { required = ["summary"], grace = "5m" } }
colour = "blue"

[passes.nothing]
phases = []

[passes.hollow]
phases = ["empty"]

[passes.manual]
catchup = "all"
"#
    ));
}

#[test]
fn bad_secret_names() {
    assert_snapshot!(errors_of(
        r#"[pipeline]
name = "hoops"

[phases.scrape]
[tasks.fetch]
phase = "scrape"
command = ["fetch"]
secrets = ["STATS_API_KEY", "stats-key", "KEEL_TOKEN", "STATS_API_KEY", 7]

[tasks.other]
phase = "scrape"
command = ["fetch"]
secrets = "STATS_API_KEY"
"#
    ));
}
