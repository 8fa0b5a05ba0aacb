//! `expand`: a task's dynamic fan-out, its errors as snapshots and a valid one as a spec.

use std::time::Duration;

use insta::assert_snapshot;
use keel_model::ExpandSpec;

use crate::errors_of;

const PHASES: &str = r#"[pipeline]
name = "hoops"

[phases.discover]
[phases.scrape]
after = ["discover"]

[tasks.list_games]
phase = "discover"
command = ["hoops", "games", "{date}"]
"#;

#[test]
fn a_valid_expansion_becomes_the_spec() {
    let spec = keel_config::parse(
        &format!(
            r#"{PHASES}
[tasks.box_scores]
phase = "scrape"
command = ["hoops", "box-score", "{{item}}", "{{item.home}}"]
expand = {{ from = "list_games", min = "95%", stall = "15m" }}

[tasks.roster]
phase = "discover"
after = ["list_games"]
command = ["hoops", "roster", "{{item}}"]
expand = {{ from = "list_games" }}
"#
        ),
        "keel.toml",
    )
    .unwrap();
    let box_scores = spec.task("box_scores").unwrap();
    assert_eq!(
        box_scores.expand,
        Some(ExpandSpec {
            from: "list_games".into(),
            min_share: 0.95,
            stall: Duration::from_secs(15 * 60),
        })
    );
    assert_eq!(box_scores.command[2], "{item}");
    // Defaults: every item, a 10-minute stall; a task of the same phase in `after` is upstream.
    let roster = spec.task("roster").unwrap();
    assert_eq!(roster.expand.as_ref().unwrap().min_share, 1.0);
    assert_eq!(
        roster.expand.as_ref().unwrap().stall,
        Duration::from_secs(600)
    );
    assert!(spec.task("list_games").unwrap().expand.is_none());
}

#[test]
fn bad_expansions() {
    assert_snapshot!(errors_of(&format!(
        r#"{PHASES}
[tasks.typo]
phase = "scrape"
command = ["true"]
expand = {{ from = "list_gams" }}

[tasks.itself]
phase = "scrape"
command = ["true"]
expand = {{ from = "itself" }}

[tasks.sibling]
phase = "scrape"
command = ["true"]
expand = {{ from = "typo" }}

[tasks.later]
phase = "discover"
command = ["true"]
expand = {{ from = "sibling" }}

[tasks.no_from]
phase = "scrape"
command = ["true"]
expand = {{ min = "90%" }}

[tasks.bad_fields]
phase = "scrape"
command = ["true"]
expand = {{ from = "list_games", min = "0%", stall = "soon", each = "game" }}

[tasks.not_a_table]
phase = "scrape"
command = ["true"]
expand = "list_games"
"#
    )));
}

#[test]
fn item_placeholders_need_an_expansion() {
    assert_snapshot!(errors_of(&format!(
        r#"{PHASES}
[tasks.box_scores]
phase = "scrape"
command = ["hoops", "box-score", "--game={{item}}", "{{item.home}}", "{{{{item}}}}"]

[tasks.fine]
phase = "scrape"
command = ["hoops", "box-score", "{{item.home}}", "{{items}}"]
expand = {{ from = "list_games" }}
"#
    )));
}

#[test]
fn a_pass_running_a_fanned_out_task_runs_the_task_listing_its_items() {
    let source = |subset: &str| {
        format!(
            r#"[pipeline]
name = "hoops"
partition = "date"

[phases.scrape]
[phases.model]
after = ["scrape"]

[tasks.list_players]
phase = "scrape"
command = ["true"]

[tasks.predict]
phase = "model"
command = ["predict", "{{item}}"]
expand = {{ from = "list_players" }}

[passes.evening]
{subset}
"#
        )
    };
    let errors = crate::errors_of(&source("phases = [\"model\"]"));
    assert!(
        errors.contains(r#"pass "evening" runs "predict""#)
            && errors.contains(r#"add "list_players" to the pass"#)
            && errors.contains("keel.toml:19:"),
        "{errors}"
    );
    let errors = crate::errors_of(&source("tasks = [\"predict\"]"));
    assert!(errors.contains("would have no items to run"), "{errors}");
    for fine in [
        "tasks = [\"list_players\", \"predict\"]",
        "phases = [\"scrape\", \"model\"]",
        "",
    ] {
        keel_config::parse(&source(fine), "keel.toml")
            .unwrap_or_else(|errors| panic!("{fine}: {errors}"));
    }
}
