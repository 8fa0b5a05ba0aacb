//! `backfill = { … }` of `[pipeline]`: gap detection and automatic repair.

use keel_model::BackfillSpec;

use crate::errors_of;

const TASKS: &str = "\n[phases.scrape]\n[tasks.fetch]\nphase = \"scrape\"\ncommand = [\"true\"]\n";

fn pipeline(fields: &str) -> String {
    format!("[pipeline]\nname = \"hoops\"\npartition = \"date\"\n{fields}\n{TASKS}")
}

#[test]
fn backfill_is_read_with_its_defaults_and_put_with_the_schedule() {
    let spec = keel_config::parse(
        &pipeline(
            "schedule = \"0 6 * * *\"\nbackfill = { auto = true, max_per_day = 3, lookback = \"60d\", from = \"2026-10-01\", tries = 4 }",
        ),
        "keel.toml",
    )
    .unwrap();
    assert_eq!(
        spec.schedule.unwrap().backfill,
        Some(BackfillSpec {
            auto: true,
            max_per_day: 3,
            lookback_days: 60,
            from: Some("2026-10-01".into()),
            tries: 4,
        })
    );
    let defaults = keel_config::parse(
        &pipeline("schedule = \"0 6 * * *\"\nbackfill = {}"),
        "keel.toml",
    )
    .unwrap();
    assert_eq!(
        defaults.schedule.unwrap().backfill,
        Some(BackfillSpec::default())
    );
    assert!(
        !BackfillSpec::default().auto,
        "repairs are asked for, never assumed"
    );
}

#[test]
fn bad_backfill_fields_are_named_with_what_to_write() {
    let errors = errors_of(&pipeline(
        "schedule = \"0 6 * * *\"\nbackfill = { auto = \"yes\", max_per_day = 0, lookback = \"2w\", from = \"01/10/2026\", tries = 11, every = \"1h\" }",
    ));
    for expected in [
        "auto",
        "true or false",
        "max_per_day",
        "at least 1",
        "lookback",
        "\"30d\"",
        "from",
        "YYYY-MM-DD",
        "tries",
        "at most 10",
        "every",
    ] {
        assert!(errors.contains(expected), "{expected:?} in {errors}");
    }
    assert!(errors.contains("keel.toml:5:"), "names the line: {errors}");
}

#[test]
fn backfill_needs_a_schedule_and_dates() {
    let unscheduled = errors_of(&pipeline("backfill = { auto = true }"));
    assert!(unscheduled.contains("needs a schedule"), "{unscheduled}");
    let undated = errors_of(&format!(
        "[pipeline]\nname = \"hoops\"\npartition = \"none\"\nschedule = \"0 6 * * *\"\nbackfill = {{ auto = true }}\n{TASKS}"
    ));
    assert!(undated.contains("needs date partitions"), "{undated}");
}
