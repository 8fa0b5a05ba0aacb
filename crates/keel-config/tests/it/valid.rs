//! Files that validate, and the specs they become.

use std::time::Duration;

use keel_model::{
    DEFAULT_CONCURRENCY, DEFAULT_DEADLINE, DEFAULT_TIMEOUT, Dag, Jitter, PartitionKind, PhaseSpec,
    PipelineSpec, RetryPolicy, TaskSpec,
};

fn seconds(count: u64) -> Duration {
    Duration::from_secs(count)
}

#[test]
fn the_starter_pipeline_validates() {
    let spec = keel_config::parse(keel_config::STARTER_PIPELINE, "keel.toml")
        .unwrap_or_else(|errors| panic!("the starter pipeline is invalid:\n{errors}"));
    assert_eq!(spec.name, "my_pipeline");
    assert!(!spec.tasks.is_empty());
    // `keel init` promises plain commands that run anywhere.
    assert!(spec.tasks.iter().all(|task| task.command[0] == "sh"));
}

#[test]
fn a_full_example_becomes_the_expected_spec() {
    let source = r#"
[pipeline]
name = "hoops"
timezone = "America/New_York"
partition = "date"
state = "sqlite:.keel/hoops.db"

[defaults]
timeout = "20m"
retries = { attempts = 4, initial = "2s", max = "1m", jitter = "equal" }
heartbeat = "5m"
deadline = "3h"
concurrency = 3

# Declared out of alphabetical order on purpose: the spec keeps file order.
[phases.scrape]
[phases.raw]
after = ["scrape"]
[phases.analytics]
after = ["raw"]

[tasks.scrape_boxscores]
phase = "scrape"
command = ["hoops", "scrape", "boxscores", "{date}"]
timeout = "5m"
retries = { attempts = 6, jitter = "none" }

[tasks.scrape_injuries]
phase = "scrape"
command = ["hoops", "scrape", "injuries", "{date}"]
after = ["scrape_boxscores"]
deadline = "30m"

[tasks.player_game_summary]
phase = "raw"
command = ["hoops", "summary", "{partition}", "--run", "{run_id}", "--attempt", "{attempt}"]
retries = { max = "5m" }
heartbeat = "1m"

[tasks.ml_features]
phase = "analytics"
command = ["sh", "-c", "awk '{{print $1}}' {date}.csv > {task}.out"]
after = ["player_game_summary", "scrape_injuries"]
"#;
    let spec = keel_config::parse(source, "keel.toml").unwrap_or_else(|errors| panic!("{errors}"));
    let default_retries = RetryPolicy {
        attempts: 4,
        initial: seconds(2),
        max: seconds(60),
        jitter: Jitter::Equal,
    };
    let strings = |items: &[&str]| {
        items
            .iter()
            .map(|item| item.to_string())
            .collect::<Vec<_>>()
    };
    let expected = PipelineSpec {
        name: "hoops".into(),
        timezone: "America/New_York".into(),
        partition: PartitionKind::Date,
        state: Some("sqlite:.keel/hoops.db".into()),
        concurrency: 3,
        phases: vec![
            PhaseSpec {
                name: "scrape".into(),
                after: vec![],
            },
            PhaseSpec {
                name: "raw".into(),
                after: strings(&["scrape"]),
            },
            PhaseSpec {
                name: "analytics".into(),
                after: strings(&["raw"]),
            },
        ],
        tasks: vec![
            TaskSpec {
                name: "scrape_boxscores".into(),
                phase: "scrape".into(),
                command: strings(&["hoops", "scrape", "boxscores", "{date}"]),
                after: vec![],
                timeout: seconds(300),
                retries: RetryPolicy {
                    attempts: 6,
                    jitter: Jitter::None,
                    ..default_retries
                },
                heartbeat: Some(seconds(300)),
                deadline: seconds(3 * 3600),
            },
            TaskSpec {
                name: "scrape_injuries".into(),
                phase: "scrape".into(),
                command: strings(&["hoops", "scrape", "injuries", "{date}"]),
                after: strings(&["scrape_boxscores"]),
                timeout: seconds(20 * 60),
                retries: default_retries,
                heartbeat: Some(seconds(300)),
                deadline: seconds(30 * 60),
            },
            TaskSpec {
                name: "player_game_summary".into(),
                phase: "raw".into(),
                command: strings(&[
                    "hoops",
                    "summary",
                    "{partition}",
                    "--run",
                    "{run_id}",
                    "--attempt",
                    "{attempt}",
                ]),
                after: vec![],
                timeout: seconds(20 * 60),
                retries: RetryPolicy {
                    max: seconds(300),
                    ..default_retries
                },
                heartbeat: Some(seconds(60)),
                deadline: seconds(3 * 3600),
            },
            TaskSpec {
                name: "ml_features".into(),
                phase: "analytics".into(),
                command: strings(&["sh", "-c", "awk '{{print $1}}' {date}.csv > {task}.out"]),
                after: strings(&["player_game_summary", "scrape_injuries"]),
                timeout: seconds(20 * 60),
                retries: default_retries,
                heartbeat: Some(seconds(300)),
                deadline: seconds(3 * 3600),
            },
        ],
    };
    assert_eq!(spec, expected);

    let dag = Dag::new(&spec);
    let ml_features = dag.index_of("ml_features").unwrap();
    // Phases are followed transitively: analytics runs after raw, which runs after scrape.
    assert_eq!(dag.dependencies(ml_features), &[0, 1, 2]);
}

#[test]
fn built_in_defaults_apply_when_nothing_is_set() {
    let spec = keel_config::parse(
        r#"
[pipeline]
name = "tiny"
partition = "none"

[phases.only]

[tasks.one]
phase = "only"
command = ["true"]
"#,
        "keel.toml",
    )
    .unwrap();
    assert_eq!(spec.timezone, "UTC");
    assert_eq!(spec.partition, PartitionKind::None);
    assert_eq!(spec.state, None);
    assert_eq!(spec.concurrency, DEFAULT_CONCURRENCY);
    let task = &spec.tasks[0];
    assert_eq!(task.timeout, DEFAULT_TIMEOUT);
    assert_eq!(task.deadline, DEFAULT_DEADLINE);
    assert_eq!(task.heartbeat, None);
    assert_eq!(task.retries, RetryPolicy::default());
    assert_eq!(
        RetryPolicy::default(),
        RetryPolicy {
            attempts: 3,
            initial: seconds(1),
            max: seconds(60),
            jitter: Jitter::Full,
        }
    );
}

#[test]
fn load_reads_a_file_and_names_it_in_errors() {
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("keel.toml");
    std::fs::write(&path, keel_config::STARTER_PIPELINE).unwrap();
    assert_eq!(
        keel_config::load(&path).unwrap(),
        keel_config::parse(keel_config::STARTER_PIPELINE, "keel.toml").unwrap()
    );

    std::fs::write(&path, "[pipeline]\nname = 1\n").unwrap();
    let errors = keel_config::load(&path).unwrap_err();
    let wrong_type = errors
        .iter()
        .find(|error| matches!(error, keel_config::ConfigError::WrongType { .. }))
        .unwrap_or_else(|| panic!("no type error in {errors}"));
    let location = wrong_type.location().unwrap();
    assert_eq!(location.file, path.display().to_string());
    assert_eq!((location.line, location.column), (2, 8));
}

#[test]
fn a_directory_is_unreadable_not_missing() {
    let directory = tempfile::tempdir().unwrap();
    let errors = keel_config::load(directory.path()).unwrap_err();
    assert!(
        matches!(
            errors.0.as_slice(),
            [keel_config::ConfigError::FileUnreadable { .. }]
        ),
        "{errors:?}"
    );
}
