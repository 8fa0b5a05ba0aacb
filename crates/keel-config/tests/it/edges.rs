//! Soft inputs (`after = [{ task = "NAME", soft = true }]`) and `inputs = [...]`: what a valid
//! file gives, and one snapshot of every error.

use insta::assert_snapshot;

use crate::errors_of;

const PHASES: &str = r#"[pipeline]
name = "hoops"

[phases.raw]
[phases.analytics]
after = ["raw"]
[phases.predictions]
after = ["analytics"]

[tasks.box_scores]
phase = "raw"
command = ["true"]

[tasks.odds_lines]
phase = "raw"
command = ["true"]
"#;

#[test]
fn soft_entries_and_inputs_reach_the_spec() {
    let spec = keel_config::parse(
        &format!(
            r#"{PHASES}
[tasks.summary]
phase = "analytics"
command = ["true"]
after = ["box_scores", {{ task = "odds_lines", soft = true }}]
inputs = ["box_scores"]

[tasks.plain]
phase = "analytics"
command = ["true"]
after = [{{ task = "box_scores" }}, {{ task = "odds_lines", soft = false }}]

[tasks.predict]
phase = "predictions"
command = ["true"]
inputs = []
"#
        ),
        "keel.toml",
    )
    .unwrap();
    let summary = spec.task("summary").unwrap();
    assert_eq!(summary.after, ["box_scores", "odds_lines"]);
    assert_eq!(summary.edges.soft, ["odds_lines"]);
    assert_eq!(
        summary.edges.inputs.as_deref(),
        Some(&["box_scores".to_string()][..])
    );
    let plain = spec.task("plain").unwrap();
    assert_eq!(plain.after, ["box_scores", "odds_lines"]);
    assert!(plain.edges.is_default(), "{:?}", plain.edges);
    assert_eq!(spec.task("predict").unwrap().edges.inputs, Some(vec![]));
}

/// A pipeline that writes neither keeps its version: nothing new goes into the version's input.
#[test]
fn a_pipeline_without_soft_inputs_or_inputs_keeps_its_version() {
    let plain = keel_config::parse(PHASES, "keel.toml").unwrap();
    let value = serde_json::to_value(&plain.tasks[0]).unwrap();
    assert!(value.get("edges").is_none(), "{value}");
}

#[test]
fn bad_soft_entries() {
    assert_snapshot!(errors_of(&format!(
        r#"{PHASES}
[tasks.summary]
phase = "analytics"
command = ["true"]
after = [
    {{ soft = true }},
    {{ task = "odds_lines", soft = "yes" }},
    {{ task = "box_scores", hard = true }},
    {{ task = "odds_line", soft = true }},
    7,
    "box_scores",
]
"#
    )));
}

#[test]
fn bad_inputs() {
    assert_snapshot!(errors_of(&format!(
        r#"{PHASES}
[tasks.summary]
phase = "analytics"
command = ["true"]

[tasks.predict]
phase = "predictions"
command = ["true"]
inputs = ["sumary", "predict", "box_scores", "box_scores"]

[tasks.early]
phase = "raw"
command = ["true"]
inputs = ["summary"]

[tasks.other]
phase = "raw"
command = ["true"]
inputs = "box_scores"
"#
    )));
}

#[test]
fn tiers_reach_the_spec_and_the_last_tier_is_the_gates_own() {
    let spec = keel_config::parse(
        &format!(
            r#"{PHASES}
[phases.analytics.gate]
tiers = [
    {{ after = "0s", min = "100%" }},
    {{ after = "1h", min = "80%", required = ["summary"] }},
    {{ after = "4h", min = "0%" }},
]

[tasks.summary]
phase = "analytics"
command = ["true"]
"#
        ),
        "keel.toml",
    )
    .unwrap();
    let gate = spec.phases[1].gate.as_ref().unwrap();
    assert_eq!(gate.tiers.len(), 3);
    assert_eq!(gate.tiers[1].after, std::time::Duration::from_secs(3600));
    assert_eq!(gate.tiers[1].required, ["summary"]);
    assert_eq!(gate.tiers[1].min_share, 0.8);
    assert_eq!(gate.min_share, 0.0);
    assert!(gate.required.is_empty());
}

#[test]
fn bad_tiers() {
    assert_snapshot!(errors_of(&format!(
        r#"{PHASES}
[phases.analytics.gate]
grace = "5m"
tiers = [
    {{ after = "1h", min = "80%", required = ["sumary"] }},
    {{ after = "30m", min = "60%" }},
    {{ min = "10%" }},
    {{ after = "5h" }},
    {{ after = "6h", min = "150%", when = "later" }},
]

[phases.predictions.gate]
tiers = []

[phases.raw.gate]
tiers = "soon"

[tasks.summary]
phase = "analytics"
command = ["true"]
"#
    )));
}

#[test]
fn entries_on_an_earlier_partition_reach_the_spec_outside_the_graph() {
    let spec = keel_config::parse(
        &format!(
            r#"{PHASES}
[tasks.summary]
phase = "analytics"
command = ["true"]
after = ["box_scores", "summary@-1d"]

[tasks.rolling]
phase = "analytics"
command = ["true"]
after = ["summary", {{ task = "summary@-7d", soft = true }}, "box_scores@-1d"]
"#
        ),
        "keel.toml",
    )
    .unwrap();
    let summary = spec.task("summary").unwrap();
    assert_eq!(summary.after, ["box_scores"]);
    assert_eq!(
        summary.edges.earlier,
        [keel_model::EarlierInput {
            task: "summary".into(),
            days: 1,
            soft: false
        }]
    );
    let rolling = spec.task("rolling").unwrap();
    assert_eq!(rolling.after, ["summary"]);
    let labels: Vec<(String, bool)> = rolling
        .edges
        .earlier
        .iter()
        .map(|input| (input.label(), input.soft))
        .collect();
    assert_eq!(
        labels,
        [
            ("summary@-7d".to_string(), true),
            ("box_scores@-1d".to_string(), false)
        ]
    );
    assert!(rolling.edges.soft.is_empty(), "{:?}", rolling.edges);
}

#[test]
fn bad_entries_on_an_earlier_partition() {
    assert_snapshot!(errors_of(&format!(
        r#"{PHASES}
[tasks.summary]
phase = "analytics"
command = ["true"]
after = [
    "box_scores@+1d",
    "box_scores@-0d",
    "box_scores@0d",
    "box_scores@yesterday",
    "box_scores@-1w",
    "box_scores@-400d",
    "box_score@-1d",
    {{ task = "odds_lines@-1d", soft = true }},
    "odds_lines@-1d",
    "summary@-1d",
]
"#
    )));
}

#[test]
fn entries_on_an_earlier_partition_need_dates() {
    assert_snapshot!(errors_of(
        r#"[pipeline]
name = "hoops"
partition = "none"

[phases.raw]

[tasks.box_scores]
phase = "raw"
command = ["true"]
after = ["box_scores@-1d"]
"#
    ));
}
