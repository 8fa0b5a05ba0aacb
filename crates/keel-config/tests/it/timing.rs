//! The timing fields of a task: `not_ready`.

use std::time::Duration;

use insta::assert_snapshot;
use keel_model::NotReadyPolicy;

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
