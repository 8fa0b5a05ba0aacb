//! A task's `version`, `code` and `rollout` fields.

use crate::{HEADER, errors_of};

#[test]
fn version_code_and_rollout_are_read() {
    let spec = keel_config::parse(
        &format!(
            r#"{HEADER}
[tasks.fetch]
phase = "scrape"
command = ["hoops", "scrape", "{{date}}"]
version = ["hoops", "--version"]
code = ["bin/fetch.py", "lib/common.py"]
rollout = {{ canary = "25%", promote_after = 2, max_failure_rate = "10%", min_metrics = {{ accuracy = 0.4, rows = 1 }} }}
"#
        ),
        "keel.toml",
    )
    .unwrap();
    let versioning = &spec.tasks[0].versioning;
    assert_eq!(
        versioning.command.as_deref(),
        Some(&["hoops".to_string(), "--version".to_string()][..])
    );
    assert_eq!(versioning.code, ["bin/fetch.py", "lib/common.py"]);
    let rollout = versioning.rollout.as_ref().unwrap();
    assert_eq!(rollout.canary_percent, 25);
    assert_eq!(rollout.promote_after, 2);
    assert!((rollout.max_failure_rate - 0.1).abs() < 1e-9);
    assert_eq!(rollout.min_metrics["accuracy"], 0.4);
    assert_eq!(rollout.min_metrics["rows"], 1.0);
}

#[test]
fn rollout_defaults_and_the_pipeline_version() {
    let plain = keel_config::parse(
        &format!("{HEADER}\n[tasks.fetch]\nphase = \"scrape\"\ncommand = [\"true\"]\n"),
        "keel.toml",
    )
    .unwrap();
    let with_rollout = keel_config::parse(
        &format!(
            "{HEADER}\n[tasks.fetch]\nphase = \"scrape\"\ncommand = [\"true\"]\nrollout = {{}}\n"
        ),
        "keel.toml",
    )
    .unwrap();
    let rollout = with_rollout.tasks[0].versioning.rollout.as_ref().unwrap();
    assert_eq!(
        (rollout.canary_percent, rollout.promote_after),
        (10, 3),
        "the defaults"
    );
    assert_eq!(rollout.max_failure_rate, 0.0);
    // How a version goes live is not part of what runs: the pipeline keeps its version.
    assert_eq!(plain.version(), with_rollout.version());
    let with_code = keel_config::parse(
        &format!(
            "{HEADER}\n[tasks.fetch]\nphase = \"scrape\"\ncommand = [\"true\"]\ncode = [\"a.py\"]\n"
        ),
        "keel.toml",
    )
    .unwrap();
    assert_ne!(plain.version(), with_code.version());
}

#[test]
fn bad_versioning_values_get_clear_errors() {
    let errors = errors_of(&format!(
        r#"{HEADER}
[tasks.fetch]
phase = "scrape"
command = ["true"]
version = []
code = ["", "a.py", "a.py", "{{date}}.py"]
rollout = {{ canary = "150%", promote_after = 0, max_failure_rate = "lots", colour = 1, min_metrics = {{ accuracy = "high" }} }}
"#
    ));
    for expected in [
        "empty version command in task \"fetch\"",
        "invalid code[0] in task \"fetch\"",
        "the path is empty",
        "invalid code[2] in task \"fetch\"",
        "listed twice",
        "invalid code[3] in task \"fetch\"",
        "cannot hold templates",
        "\"canary\" in [tasks.fetch.rollout] must be above 0% and at most 100%, found \"150%\"",
        "\"promote_after\" in [tasks.fetch.rollout] must be at least 1, found 0",
        "invalid percentage \"lots\" for \"max_failure_rate\"",
        "unknown field \"colour\"",
        "\"accuracy\" in [tasks.fetch.rollout.min_metrics] must be a number such as 0.4",
    ] {
        assert!(errors.contains(expected), "{expected:?} not in:\n{errors}");
    }
    // Each error says where it is.
    assert!(errors.contains("keel.toml:"), "{errors}");
}

#[test]
fn a_canary_share_below_one_percent_is_refused() {
    let errors = errors_of(&format!(
        "{HEADER}\n[tasks.fetch]\nphase = \"scrape\"\ncommand = [\"true\"]\nrollout = {{ canary = \"0.5%\" }}\n"
    ));
    assert!(
        errors.contains("whole percentages, at least 1%"),
        "{errors}"
    );
}
