//! The timing fields of a task: `not_ready`.

use std::time::Duration;

use insta::assert_snapshot;
use keel_model::{FreezeSpec, NotReadyPolicy, TimeOfDay};

use crate::{HEADER, errors_of};

#[test]
fn a_not_ready_policy_is_read_and_left_out_when_unset() {
    let spec = keel_config::parse(
        &format!(
            r#"{HEADER}
[tasks.discover]
phase = "scrape"
command = ["true"]
not_ready = {{ every = "2h", max = 12 }}

[tasks.plain]
phase = "scrape"
command = ["true"]
"#
        ),
        "keel.toml",
    )
    .unwrap();
    assert_eq!(
        spec.tasks[0].not_ready,
        Some(NotReadyPolicy {
            every: Duration::from_secs(2 * 3600),
            max: 12,
        })
    );
    assert_eq!(spec.tasks[1].not_ready, None);
}

#[test]
fn bad_not_ready_policies() {
    assert_snapshot!(errors_of(&format!(
        r#"{HEADER}
[tasks.not_a_table]
phase = "scrape"
command = ["true"]
not_ready = "2h"

[tasks.missing_fields]
phase = "scrape"
command = ["true"]
not_ready = {{ evry = "2h" }}

[tasks.zero]
phase = "scrape"
command = ["true"]
not_ready = {{ every = "0s", max = 0 }}

[tasks.wrong_types]
phase = "scrape"
command = ["true"]
not_ready = {{ every = 7200, max = "12" }}
"#
    )));
}

#[test]
fn a_repeat_window_is_read_and_may_cross_midnight() {
    let spec = keel_config::parse(
        &format!(
            r#"{HEADER}
[tasks.live_scores]
phase = "scrape"
command = ["true"]
repeat = {{ every = "3m", from = "19:00", until = "02:00" }}

[tasks.plain]
phase = "scrape"
command = ["true"]
"#
        ),
        "keel.toml",
    )
    .unwrap();
    let repeat = spec.tasks[0].repeat.unwrap();
    assert_eq!(repeat.every, Duration::from_secs(180));
    assert_eq!(
        repeat.from,
        TimeOfDay {
            hour: 19,
            minute: 0
        }
    );
    assert_eq!(repeat.until, TimeOfDay { hour: 2, minute: 0 });
    assert!(repeat.crosses_midnight());
    assert_eq!(spec.tasks[1].repeat, None);
    // A pipeline without repeat keeps its version: the field is left out when unset.
    let version = serde_json::to_value(&spec.tasks[1]).unwrap();
    assert!(version.get("repeat").is_none(), "{version}");
}

#[test]
fn bad_repeat_windows() {
    assert_snapshot!(errors_of(&format!(
        r#"{HEADER}
[tasks.not_a_table]
phase = "scrape"
command = ["true"]
repeat = "3m"

[tasks.missing_fields]
phase = "scrape"
command = ["true"]
repeat = {{ evry = "3m" }}

[tasks.bad_times]
phase = "scrape"
command = ["true"]
repeat = {{ every = "0s", from = "7pm", until = "24:00" }}

[tasks.empty_window]
phase = "scrape"
command = ["true"]
repeat = {{ every = "3m", from = "19:00", until = "19:00" }}

[tasks.wrong_types]
phase = "scrape"
command = ["true"]
repeat = {{ every = 180, from = 1900, until = "02:00" }}
"#
    )));
}

#[test]
fn a_repeat_needs_dated_partitions() {
    assert_snapshot!(errors_of(
        r#"[pipeline]
name = "live"
partition = "none"

[phases.scrape]

[tasks.live_scores]
phase = "scrape"
command = ["true"]
repeat = { every = "3m", from = "19:00", until = "02:00" }
"#
    ));
}

#[test]
fn a_freeze_time_is_read() {
    let spec = keel_config::parse(
        &format!(
            r#"{HEADER}
[tasks.publish]
phase = "scrape"
command = ["true"]
freeze_after = "19:00"
"#
        ),
        "keel.toml",
    )
    .unwrap();
    assert_eq!(
        spec.tasks[0].freeze_after,
        Some(FreezeSpec::At(TimeOfDay {
            hour: 19,
            minute: 0
        }))
    );
}

#[test]
fn a_freeze_after_another_task_is_read() {
    let spec = keel_config::parse(
        &format!(
            r#"{HEADER}
[tasks.export]
phase = "scrape"
command = ["true"]

[tasks.picks]
phase = "scrape"
command = ["true"]
freeze_after = {{ task = "export", delay = "30m" }}

[tasks.notes]
phase = "scrape"
command = ["true"]
freeze_after = {{ task = "export" }}
"#
        ),
        "keel.toml",
    )
    .unwrap();
    assert_eq!(
        spec.tasks[1].freeze_after,
        Some(FreezeSpec::AfterTask {
            task: "export".into(),
            delay: Duration::from_secs(1800)
        })
    );
    assert_eq!(
        spec.tasks[2].freeze_after,
        Some(FreezeSpec::AfterTask {
            task: "export".into(),
            delay: Duration::ZERO
        })
    );
}

#[test]
fn bad_freezes_after_another_task() {
    assert_snapshot!(errors_of(&format!(
        r#"{HEADER}
[tasks.export]
phase = "scrape"
command = ["true"]

[tasks.unknown]
phase = "scrape"
command = ["true"]
freeze_after = {{ task = "exprot" }}

[tasks.itself]
phase = "scrape"
command = ["true"]
freeze_after = {{ task = "itself" }}

[tasks.no_task]
phase = "scrape"
command = ["true"]
freeze_after = {{ delay = "1h" }}

[tasks.bad_delay]
phase = "scrape"
command = ["true"]
freeze_after = {{ task = "export", delay = "soon", until = "19:00" }}
"#
    )));
}

#[test]
fn bad_freeze_times() {
    assert_snapshot!(errors_of(&format!(
        r#"{HEADER}
[tasks.not_a_time]
phase = "scrape"
command = ["true"]
freeze_after = "7pm"

[tasks.wrong_type]
phase = "scrape"
command = ["true"]
freeze_after = 1900
"#
    )));
    assert_snapshot!(errors_of(
        r#"[pipeline]
name = "live"
partition = "none"

[phases.scrape]

[tasks.publish]
phase = "scrape"
command = ["true"]
freeze_after = "19:00"
"#
    ));
}

#[test]
fn several_sensors_are_read_in_order_and_one_table_keeps_its_version() {
    let spec = keel_config::parse(
        &format!(
            r#"{HEADER}
[tasks.several]
phase = "scrape"
command = ["true"]
wait_for = [{{ command = ["odds-posted"] }}, {{ command = ["lineups-posted"], every = "5m" }}]

[tasks.one]
phase = "scrape"
command = ["true"]
wait_for = {{ command = ["odds-posted"] }}
"#
        ),
        "keel.toml",
    )
    .unwrap();
    let commands: Vec<&str> = spec.tasks[0]
        .sensors()
        .map(|sensor| sensor.command[0].as_str())
        .collect();
    assert_eq!(commands, ["odds-posted", "lineups-posted"]);
    assert_eq!(
        spec.tasks[0].sensor(1).unwrap().every,
        Duration::from_secs(300)
    );
    let one = &spec.tasks[1];
    assert!(one.also_wait_for.is_empty());
    let version = serde_json::to_value(one).unwrap();
    assert!(version.get("also_wait_for").is_none(), "{version}");
    assert!(version["wait_for"].is_object(), "{version}");
}

#[test]
fn bad_sensor_lists() {
    assert_snapshot!(errors_of(&format!(
        r#"{HEADER}
[tasks.empty]
phase = "scrape"
command = ["true"]
wait_for = []

[tasks.bad_items]
phase = "scrape"
command = ["true"]
wait_for = ["odds-posted", {{ every = "1m" }}, {{ command = ["ok"], evry = "1m" }}]
"#
    )));
}
