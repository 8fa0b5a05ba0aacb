//! `[slo.NAME]`: freshness, latency and success objectives.

use std::time::Duration;

use insta::assert_snapshot;
use keel_model::{DEFAULT_SLO_PERIOD, SloKind, SloSpec, TimeOfDay};

use crate::errors_of;

#[test]
fn slos_are_read_and_freshness_defaults_from_the_schedule() {
    let spec = keel_config::parse(
        r#"[pipeline]
name = "hoops"
timezone = "America/New_York"
schedule = "0 6 * * *"
schedule_partition = "-1d"

[slo.fresh_by_ten]
kind = "freshness"
by = "10:00"
objective = "99%"

[slo.overnight]
kind = "latency"
max = "6h"
objective = "95%"
period = "7d"

[slo.hands_off]
kind = "success"
objective = "99.9%"

[phases.scrape]

[tasks.scores]
phase = "scrape"
command = ["true"]
"#,
        "keel.toml",
    )
    .unwrap();
    assert_eq!(
        spec.slos,
        [
            SloSpec {
                name: "fresh_by_ten".into(),
                kind: SloKind::Freshness {
                    by: TimeOfDay {
                        hour: 10,
                        minute: 0
                    },
                    days_after: 1,
                },
                objective: 0.99,
                period: DEFAULT_SLO_PERIOD,
            },
            SloSpec {
                name: "overnight".into(),
                kind: SloKind::Latency {
                    max: Duration::from_secs(6 * 3600)
                },
                objective: 0.95,
                period: Duration::from_secs(7 * 24 * 3600),
            },
            SloSpec {
                name: "hands_off".into(),
                kind: SloKind::Success,
                objective: 0.999,
                period: DEFAULT_SLO_PERIOD,
            },
        ]
    );
    // SLOs judge runs and do not change them: the version stays.
    let without = keel_config::parse(
        r#"[pipeline]
name = "hoops"
timezone = "America/New_York"
schedule = "0 6 * * *"
schedule_partition = "-1d"

[phases.scrape]

[tasks.scores]
phase = "scrape"
command = ["true"]
"#,
        "keel.toml",
    )
    .unwrap();
    assert_eq!(spec.version(), without.version());
}

#[test]
fn bad_slos() {
    assert_snapshot!(errors_of(
        r#"[pipeline]
name = "hoops"

[slo.no_kind]
objective = "99%"

[slo.stale]
kind = "fresh"
objective = "99%"

[slo.freshness_without_by]
kind = "freshness"
objective = "99%"
max = "6h"

[slo.perfect]
kind = "success"
objective = "100%"
by = "10:00"

[slo.slow]
kind = "latency"
max = "six hours"
objective = 0.99
treshold = 1

[phases.scrape]

[tasks.scores]
phase = "scrape"
command = ["true"]
"#
    ));
}
