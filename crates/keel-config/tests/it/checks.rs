//! `checks = [...]` on a task: bounds on what its result reports.

use insta::assert_snapshot;
use keel_model::{CheckSpec, CheckTarget, Severity};

use crate::{HEADER, errors_of};

#[test]
fn checks_are_read_with_block_as_the_default_severity() {
    let spec = keel_config::parse(
        &format!(
            r#"{HEADER}
[tasks.grade]
phase = "scrape"
command = ["true"]
checks = [
  {{ metric = "accuracy", min = 0.30, severity = "block" }},
  {{ rows = {{ min = 200 }}, severity = "warn" }},
  {{ metric = "latency_ms", max = 5000 }},
  {{ metric = "share", min = 0, max = 1 }},
]

[tasks.plain]
phase = "scrape"
command = ["true"]
"#
        ),
        "keel.toml",
    )
    .unwrap();
    assert_eq!(
        spec.tasks[0].checks,
        [
            CheckSpec {
                target: CheckTarget::Metric("accuracy".into()),
                min: Some(0.3),
                max: None,
                severity: Severity::Block,
                heal: Vec::new(),
            },
            CheckSpec {
                target: CheckTarget::Rows,
                min: Some(200.0),
                max: None,
                severity: Severity::Warn,
                heal: Vec::new(),
            },
            CheckSpec {
                target: CheckTarget::Metric("latency_ms".into()),
                min: None,
                max: Some(5000.0),
                severity: Severity::Block,
                heal: Vec::new(),
            },
            CheckSpec {
                target: CheckTarget::Metric("share".into()),
                min: Some(0.0),
                max: Some(1.0),
                severity: Severity::Block,
                heal: Vec::new(),
            },
        ]
    );
    assert!(spec.tasks[1].checks.is_empty());
}

#[test]
fn checks_change_the_version_only_when_written() {
    let plain = format!("{HEADER}\n[tasks.grade]\nphase = \"scrape\"\ncommand = [\"true\"]\n");
    let checked = format!("{plain}checks = [{{ rows = {{ min = 1 }} }}]\n");
    let empty = format!("{plain}checks = []\n");
    let version = |source: &str| keel_config::parse(source, "keel.toml").unwrap().version();
    assert_eq!(version(&plain), version(&empty));
    assert_ne!(version(&plain), version(&checked));
}

#[test]
fn bad_checks() {
    assert_snapshot!(errors_of(&format!(
        r#"{HEADER}
[tasks.grade]
phase = "scrape"
command = ["true"]
checks = [
  {{ metric = "accuracy" }},
  {{ min = 0.3 }},
  {{ metric = "accuracy", rows = {{ min = 1 }}, min = 0.1 }},
  {{ rows = {{ min = 1 }}, min = 2 }},
  {{ metric = "accuracy", min = 0.9, max = 0.1 }},
  {{ metric = "accuracy", min = "high", severity = "fatal" }},
  {{ metric = "", max = 1, treshold = 2 }},
  {{ rows = {{ minimum = 1 }} }},
  "accuracy > 0.3",
]

[tasks.not_a_list]
phase = "scrape"
command = ["true"]
checks = {{ metric = "accuracy", min = 0.3 }}
"#
    )));
}

#[test]
fn a_phase_reads_its_completeness_checks() {
    let spec = keel_config::parse(
        r#"[pipeline]
name = "hoops"

[phases.scrape]
checks = [{ complete = "90%", severity = "warn" }, { complete = 0.5 }]

[tasks.scores]
phase = "scrape"
command = ["true"]
"#,
        "keel.toml",
    )
    .unwrap();
    assert_eq!(
        spec.phases[0].checks,
        [
            keel_model::PhaseCheck {
                min_share: 0.9,
                severity: Severity::Warn,
            },
            keel_model::PhaseCheck {
                min_share: 0.5,
                severity: Severity::Block,
            },
        ]
    );
}

#[test]
fn bad_phase_checks() {
    assert_snapshot!(errors_of(
        r#"[pipeline]
name = "hoops"

[phases.scrape]
checks = [{ complete = "140%" }, { severity = "warn" }, { complete = "0%", level = 1 }, "90%"]

[phases.raw]
checks = { complete = "90%" }

[tasks.scores]
phase = "scrape"
command = ["true"]
"#
    ));
}

const HEALING: &str = r#"[pipeline]
name = "hoops"
heal = { budget = 2 }

[phases.scrape]
[phases.model]
after = ["scrape"]

[tasks.scrape_boxscores]
phase = "scrape"
command = ["true"]

[tasks.features]
phase = "model"
command = ["true"]

[tasks.predictions]
phase = "model"
after = ["features"]
command = ["true"]
checks = [{ metric = "accuracy", min = 0.3, heal = ["scrape_boxscores", "features"] }]
"#;

#[test]
fn heal_names_upstream_tasks_and_the_budget_is_read() {
    let spec = keel_config::parse(HEALING, "keel.toml").unwrap();
    assert_eq!(spec.heal_budget, 2);
    assert_eq!(
        spec.tasks[2].checks[0].heal,
        ["scrape_boxscores", "features"]
    );
    let unset = HEALING.replace("heal = { budget = 2 }\n", "");
    let spec = keel_config::parse(&unset, "keel.toml").unwrap();
    assert_eq!(spec.heal_budget, keel_model::DEFAULT_HEAL_BUDGET);
}

#[test]
fn bad_heals() {
    let source = HEALING
        .replace("budget = 2", "budget = 0")
        .replace(
            r#"heal = ["scrape_boxscores", "features"]"#,
            r#"heal = ["scrape_boxscore", "predictions", 3]"#,
        )
        .replace(
            "[tasks.features]\nphase = \"model\"\ncommand = [\"true\"]",
            "[tasks.features]\nphase = \"model\"\ncommand = [\"true\"]\nchecks = [{ rows = { min = 1 }, heal = [\"predictions\"] }]",
        );
    assert_snapshot!(errors_of(&source));
    let no_budget = HEALING.replace("heal = { budget = 2 }", "heal = { budgt = 2 }");
    assert_snapshot!("bad_heal_budget", errors_of(&no_budget));
}
