//! Files that validate, and the specs they become.

use std::time::Duration;

use keel_model::{
    BreakerSpec, DEFAULT_CONCURRENCY, DEFAULT_DEADLINE, DEFAULT_TIMEOUT, Dag, GateSpec, Jitter,
    PartitionKind, PhaseSpec, PipelineSpec, Rate, ResourceSpec, RetryBudgetSpec, RetryPolicy,
    SensorSpec, TaskSpec,
};

fn seconds(count: u64) -> Duration {
    Duration::from_secs(count)
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|item| item.to_string()).collect()
}

fn parse(source: &str) -> PipelineSpec {
    keel_config::parse(source, "keel.toml").unwrap_or_else(|errors| panic!("{errors}"))
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
                gate: None,
                checks: Vec::new(),
            },
            PhaseSpec {
                name: "raw".into(),
                after: strings(&["scrape"]),
                gate: None,
                checks: Vec::new(),
            },
            PhaseSpec {
                name: "analytics".into(),
                after: strings(&["raw"]),
                gate: None,
                checks: Vec::new(),
            },
        ],
        tasks: vec![
            TaskSpec {
                name: "scrape_boxscores".into(),
                phase: "scrape".into(),
                command: strings(&["hoops", "scrape", "boxscores", "{date}"]),
                http: None,
                after: vec![],
                timeout: seconds(300),
                retries: RetryPolicy {
                    attempts: 6,
                    jitter: Jitter::None,
                    ..default_retries
                },
                heartbeat: Some(seconds(300)),
                deadline: seconds(3 * 3600),
                uses: vec![],
                wait_for: None,
                also_wait_for: Vec::new(),
                when: None,
                edges: Default::default(),
                expand: None,
                context: Default::default(),
                not_ready: None,
                secrets: Vec::new(),
                repeat: None,
                freeze_after: None,
                versioning: Default::default(),
                checks: Vec::new(),
            },
            TaskSpec {
                name: "scrape_injuries".into(),
                phase: "scrape".into(),
                command: strings(&["hoops", "scrape", "injuries", "{date}"]),
                http: None,
                after: strings(&["scrape_boxscores"]),
                timeout: seconds(20 * 60),
                retries: default_retries,
                heartbeat: Some(seconds(300)),
                deadline: seconds(30 * 60),
                uses: vec![],
                wait_for: None,
                also_wait_for: Vec::new(),
                when: None,
                edges: Default::default(),
                expand: None,
                context: Default::default(),
                not_ready: None,
                secrets: Vec::new(),
                repeat: None,
                freeze_after: None,
                versioning: Default::default(),
                checks: Vec::new(),
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
                http: None,
                after: vec![],
                timeout: seconds(20 * 60),
                retries: RetryPolicy {
                    max: seconds(300),
                    ..default_retries
                },
                heartbeat: Some(seconds(60)),
                deadline: seconds(3 * 3600),
                uses: vec![],
                wait_for: None,
                also_wait_for: Vec::new(),
                when: None,
                edges: Default::default(),
                expand: None,
                context: Default::default(),
                not_ready: None,
                secrets: Vec::new(),
                repeat: None,
                freeze_after: None,
                versioning: Default::default(),
                checks: Vec::new(),
            },
            TaskSpec {
                name: "ml_features".into(),
                phase: "analytics".into(),
                command: strings(&["sh", "-c", "awk '{{print $1}}' {date}.csv > {task}.out"]),
                http: None,
                after: strings(&["player_game_summary", "scrape_injuries"]),
                timeout: seconds(20 * 60),
                retries: default_retries,
                heartbeat: Some(seconds(300)),
                deadline: seconds(3 * 3600),
                uses: vec![],
                wait_for: None,
                also_wait_for: Vec::new(),
                when: None,
                edges: Default::default(),
                expand: None,
                context: Default::default(),
                not_ready: None,
                secrets: Vec::new(),
                repeat: None,
                freeze_after: None,
                versioning: Default::default(),
                checks: Vec::new(),
            },
        ],
        resources: vec![],
        schedule: None,
        max_active_partitions: None,
        passes: Vec::new(),
        alerts: None,
        secrets: None,
        smoke: Vec::new(),
        slos: Vec::new(),
        heal_budget: keel_model::DEFAULT_HEAL_BUDGET,
    };
    assert_eq!(spec, expected);

    let dag = Dag::new(&spec);
    let ml_features = dag.index_of("ml_features").unwrap();
    // Phases are followed transitively: analytics runs after raw, which runs after scrape.
    assert_eq!(dag.inputs(ml_features), &[0, 1, 2]);
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

#[test]
fn a_full_example_with_gates_sensors_and_resources_becomes_the_expected_spec() {
    let source = r#"
[pipeline]
name = "hoops"
timezone = "America/New_York"

[defaults]
deadline = "3h"

[resources.stats_feed]
rate = "20/s"
concurrency = 4
breaker = { failures = 5, cooldown = "30s" }
retry_budget = { ratio = "20%", window = "1m", min = 3 }

[resources.odds_api]
rate = "5/10s"
breaker = { failures = 3, ratio = 0.5, window = 40, cooldown = "2m", max_open = "2h" }
retry_budget = { ratio = 0.1, window = "10m", min = 0 }

# A resource may only name a dependency, with no limit yet.
[resources.warehouse]

[phases.scrape]
[phases.raw]
after = ["scrape"]
[phases.analytics]
after = ["raw"]
gate = { required = ["player_game_summary", "upcoming_player_context"], min = "60%", grace = "30m" }

[tasks.scrape_boxscores]
phase = "scrape"
command = ["hoops", "scrape", "boxscores", "{date}"]
uses = ["stats_feed"]
wait_for = { command = ["hoops", "ready", "boxscores", "{date}"], every = "5m", deadline = "6h", max = "30m" }
timeout = "5m"

[tasks.scrape_props]
phase = "scrape"
command = ["hoops", "scrape", "props", "{date}"]
uses = ["odds_api", "stats_feed"]
deadline = "45m"
wait_for = { command = ["hoops", "ready", "props", "{partition}"] }

[tasks.load]
phase = "raw"
command = ["hoops", "load", "{date}"]
uses = ["warehouse"]

[tasks.player_game_summary]
phase = "analytics"
command = ["hoops", "analytics", "player_game_summary", "{date}"]

[tasks.upcoming_player_context]
phase = "analytics"
command = ["hoops", "analytics", "upcoming_player_context", "{date}"]
wait_for = { command = ["hoops", "ready", "context"], every = "30s" }

[tasks.team_offense]
phase = "analytics"
command = ["hoops", "analytics", "team_offense", "{date}"]
"#;
    let spec = parse(source);
    let retries = RetryPolicy::default();
    let task = |name: &str, phase: &str, command: &[&str]| TaskSpec {
        name: name.into(),
        phase: phase.into(),
        command: strings(command),
        http: None,
        after: vec![],
        timeout: DEFAULT_TIMEOUT,
        retries,
        heartbeat: None,
        deadline: seconds(3 * 3600),
        uses: vec![],
        wait_for: None,
        also_wait_for: Vec::new(),
        when: None,
        edges: Default::default(),
        expand: None,
        context: Default::default(),
        not_ready: None,
        secrets: Vec::new(),
        repeat: None,
        freeze_after: None,
        versioning: Default::default(),
        checks: Vec::new(),
    };
    let expected = PipelineSpec {
        name: "hoops".into(),
        timezone: "America/New_York".into(),
        partition: PartitionKind::Date,
        state: None,
        schedule: None,
        max_active_partitions: None,
        passes: Vec::new(),
        alerts: None,
        secrets: None,
        smoke: Vec::new(),
        slos: Vec::new(),
        heal_budget: keel_model::DEFAULT_HEAL_BUDGET,
        concurrency: DEFAULT_CONCURRENCY,
        phases: vec![
            PhaseSpec {
                name: "scrape".into(),
                after: vec![],
                gate: None,
                checks: Vec::new(),
            },
            PhaseSpec {
                name: "raw".into(),
                after: strings(&["scrape"]),
                gate: None,
                checks: Vec::new(),
            },
            PhaseSpec {
                name: "analytics".into(),
                after: strings(&["raw"]),
                gate: Some(GateSpec {
                    required: strings(&["player_game_summary", "upcoming_player_context"]),
                    min_share: 0.6,
                    grace: seconds(30 * 60),
                    tiers: Vec::new(),
                }),
                checks: Vec::new(),
            },
        ],
        tasks: vec![
            TaskSpec {
                uses: strings(&["stats_feed"]),
                wait_for: Some(SensorSpec {
                    command: strings(&["hoops", "ready", "boxscores", "{date}"]),
                    http: None,
                    every: seconds(5 * 60),
                    max: seconds(30 * 60),
                    deadline: seconds(6 * 3600),
                }),
                timeout: seconds(5 * 60),
                ..task(
                    "scrape_boxscores",
                    "scrape",
                    &["hoops", "scrape", "boxscores", "{date}"],
                )
            },
            TaskSpec {
                uses: strings(&["odds_api", "stats_feed"]),
                deadline: seconds(45 * 60),
                // Defaults: every 1m, max 8 × every, the deadline of the task itself.
                wait_for: Some(SensorSpec {
                    command: strings(&["hoops", "ready", "props", "{partition}"]),
                    http: None,
                    every: seconds(60),
                    max: seconds(8 * 60),
                    deadline: seconds(45 * 60),
                }),
                ..task(
                    "scrape_props",
                    "scrape",
                    &["hoops", "scrape", "props", "{date}"],
                )
            },
            TaskSpec {
                uses: strings(&["warehouse"]),
                ..task("load", "raw", &["hoops", "load", "{date}"])
            },
            task(
                "player_game_summary",
                "analytics",
                &["hoops", "analytics", "player_game_summary", "{date}"],
            ),
            TaskSpec {
                // The deadline comes from [defaults] through the task.
                wait_for: Some(SensorSpec {
                    command: strings(&["hoops", "ready", "context"]),
                    http: None,
                    every: seconds(30),
                    max: seconds(4 * 60),
                    deadline: seconds(3 * 3600),
                }),
                ..task(
                    "upcoming_player_context",
                    "analytics",
                    &["hoops", "analytics", "upcoming_player_context", "{date}"],
                )
            },
            task(
                "team_offense",
                "analytics",
                &["hoops", "analytics", "team_offense", "{date}"],
            ),
        ],
        resources: vec![
            ResourceSpec {
                name: "stats_feed".into(),
                rate: Some(Rate {
                    tokens: 20,
                    per: seconds(1),
                }),
                concurrency: Some(4),
                breaker: Some(BreakerSpec {
                    failures: 5,
                    ratio: None,
                    window: 20,
                    cooldown: seconds(30),
                    max_open: seconds(1800),
                }),
                retry_budget: Some(RetryBudgetSpec {
                    ratio: 0.2,
                    window: seconds(60),
                    min: 3,
                }),
                ready: None,
                tokens: keel_model::TokenUse::Attempt,
                quota: None,
            },
            ResourceSpec {
                name: "odds_api".into(),
                rate: Some(Rate {
                    tokens: 5,
                    per: seconds(10),
                }),
                concurrency: None,
                breaker: Some(BreakerSpec {
                    failures: 3,
                    ratio: Some(0.5),
                    window: 40,
                    cooldown: seconds(120),
                    max_open: seconds(7200),
                }),
                retry_budget: Some(RetryBudgetSpec {
                    ratio: 0.1,
                    window: seconds(600),
                    min: 0,
                }),
                ready: None,
                tokens: keel_model::TokenUse::Attempt,
                quota: None,
            },
            ResourceSpec {
                name: "warehouse".into(),
                rate: None,
                concurrency: None,
                breaker: None,
                retry_budget: None,
                ready: None,
                tokens: keel_model::TokenUse::Attempt,
                quota: None,
            },
        ],
    };
    assert_eq!(spec, expected);
    assert_eq!(spec.resource("odds_api"), Some(&expected.resources[1]));
}

#[test]
fn rates_percentages_and_resilience_defaults() {
    let spec = parse(
        r#"
[pipeline]
name = "defaults"

[resources.per_second]
rate = "20/s"
breaker = {}
retry_budget = { ratio = "12.5%" }
[resources.per_minute]
rate = "100/m"
breaker = { ratio = "50%", window = 10 }
retry_budget = { ratio = 1 }
[resources.per_hour]
rate = "3/h"
[resources.per_duration]
rate = "1/1m30s"

[phases.only]
gate = { required = ["one"] }
[phases.second]
after = ["only"]
gate = { min = 0 }
[phases.third]
after = ["second"]
gate = { min = "100%", grace = "0s" }

[tasks.one]
phase = "only"
command = ["true"]
wait_for = { command = ["true"], every = "1h" }
"#,
    );
    let rates: Vec<Option<Rate>> = spec
        .resources
        .iter()
        .map(|resource| resource.rate)
        .collect();
    assert_eq!(
        rates,
        [
            (20, seconds(1)),
            (100, seconds(60)),
            (3, seconds(3600)),
            (1, seconds(90))
        ]
        .map(|(tokens, per)| Some(Rate { tokens, per }))
    );
    // An empty breaker table turns a breaker on with every default.
    assert_eq!(
        spec.resources[0].breaker,
        Some(BreakerSpec {
            failures: 5,
            ratio: None,
            window: 20,
            cooldown: seconds(30),
            max_open: seconds(1800),
        })
    );
    assert_eq!(
        spec.resources[1].breaker,
        Some(BreakerSpec {
            failures: 5,
            ratio: Some(0.5),
            window: 10,
            cooldown: seconds(30),
            max_open: seconds(1800),
        })
    );
    assert_eq!(
        spec.resources[0].retry_budget,
        Some(RetryBudgetSpec {
            ratio: 0.125,
            window: seconds(60),
            min: 3,
        })
    );
    assert_eq!(spec.resources[1].retry_budget.as_ref().unwrap().ratio, 1.0);
    assert_eq!(spec.resources[2].breaker, None);
    assert_eq!(spec.resources[2].retry_budget, None);
    assert_eq!(spec.resources[2].concurrency, None);

    let gates: Vec<GateSpec> = spec
        .phases
        .iter()
        .map(|phase| phase.gate.clone().unwrap())
        .collect();
    assert_eq!(
        gates,
        [
            GateSpec {
                required: strings(&["one"]),
                min_share: 0.0,
                grace: Duration::ZERO,
                tiers: Vec::new(),
            },
            GateSpec {
                required: vec![],
                min_share: 0.0,
                grace: Duration::ZERO,
                tiers: Vec::new(),
            },
            GateSpec {
                required: vec![],
                min_share: 1.0,
                grace: Duration::ZERO,
                tiers: Vec::new(),
            },
        ]
    );
    assert_eq!(
        spec.tasks[0].wait_for,
        Some(SensorSpec {
            command: strings(&["true"]),
            http: None,
            every: seconds(3600),
            max: seconds(8 * 3600),
            deadline: DEFAULT_DEADLINE,
        })
    );
    assert!(spec.tasks[0].uses.is_empty());
}

#[test]
fn a_percentage_and_the_same_share_give_the_same_spec() {
    for (percentage, share) in [("60%", "0.6"), ("33.3%", "0.333"), ("7%", "0.07")] {
        let pipeline = |min: &str| {
            parse(&format!(
                "[pipeline]\nname = \"p\"\n[phases.a]\ngate = {{ min = {min} }}\n\
                 [tasks.t]\nphase = \"a\"\ncommand = [\"true\"]\n"
            ))
        };
        let from_percentage = pipeline(&format!("{percentage:?}"));
        assert_eq!(from_percentage, pipeline(share), "{percentage} vs {share}");
        assert_eq!(
            from_percentage.phases[0].gate.as_ref().unwrap().min_share,
            share.parse::<f64>().unwrap()
        );
    }
}

#[test]
fn resource_tables_may_be_written_as_headers() {
    let inline = parse(
        r#"
[pipeline]
name = "p"
[resources.feed]
breaker = { failures = 2, cooldown = "5s" }
[phases.a]
gate = { required = ["t"], grace = "1m" }
[tasks.t]
phase = "a"
command = ["true"]
wait_for = { command = ["true"], every = "2s" }
"#,
    );
    let headers = parse(
        r#"
[pipeline]
name = "p"
[resources.feed.breaker]
failures = 2
cooldown = "5s"
[phases.a.gate]
required = ["t"]
grace = "1m"
[tasks.t]
phase = "a"
command = ["true"]
[tasks.t.wait_for]
command = ["true"]
every = "2s"
"#,
    );
    assert_eq!(inline, headers);
}

#[test]
fn names_of_100_characters_and_durations_of_365_days_are_accepted() {
    let name = "n".repeat(keel_config::MAX_NAME_LENGTH);
    let spec = parse(&format!(
        r#"
[pipeline]
name = "{name}"
[resources.{name}]
rate = "1/365d"
[phases.{name}]
[tasks.{name}]
phase = "{name}"
command = ["true"]
timeout = "365d"
uses = ["{name}"]
wait_for = {{ command = ["true"], every = "365d" }}
"#
    ));
    assert_eq!(spec.tasks[0].name.len(), 100);
    assert_eq!(spec.tasks[0].timeout, keel_config::MAX_DURATION);
    // The derived backoff cap (8 × every) is held to the same limit as a written one.
    let sensor = spec.tasks[0].wait_for.as_ref().unwrap();
    assert_eq!(sensor.max, keel_config::MAX_DURATION);
}

#[test]
fn a_schedule_is_read_in_the_pipelines_time_zone() {
    let spec = keel_config::parse(
        r#"[pipeline]
name = "hoops"
timezone = "America/New_York"
schedule = "30 6 * * mon-fri"
schedule_partition = "-1d"
catchup = "all"

[phases.scrape]
[tasks.fetch]
phase = "scrape"
command = ["true"]
"#,
        "keel.toml",
    )
    .unwrap();
    assert_eq!(
        spec.schedule,
        Some(keel_model::ScheduleSpec {
            cron: "30 6 * * mon-fri".into(),
            partition_offset_days: -1,
            catchup: keel_model::Catchup::All,
            backfill: None,
        })
    );
    let unscheduled = keel_config::parse(
        "[pipeline]\nname = \"p\"\n[phases.a]\n[tasks.t]\nphase = \"a\"\ncommand = [\"true\"]\n",
        "keel.toml",
    )
    .unwrap();
    assert_eq!(unscheduled.schedule, None);
    // The schedule is not part of the version: it changes when runs start, not what they run.
    let mut rescheduled = spec.clone();
    rescheduled.schedule = None;
    assert_eq!(spec.version(), rescheduled.version());
}

#[test]
fn max_active_partitions_is_read_and_left_out_of_the_version() {
    let bounded = parse(
        "[pipeline]\nname = \"hoops\"\nmax_active_partitions = 2\n\n[phases.scrape]\n[tasks.fetch]\nphase = \"scrape\"\ncommand = [\"true\"]\n",
    );
    let unbounded = parse(
        "[pipeline]\nname = \"hoops\"\n\n[phases.scrape]\n[tasks.fetch]\nphase = \"scrape\"\ncommand = [\"true\"]\n",
    );
    assert_eq!(bounded.max_active_partitions, Some(2));
    assert_eq!(unbounded.max_active_partitions, None);
    assert_eq!(bounded.version(), unbounded.version());
}

/// The starter pipeline with every commented-out setting (`# key = …` and `# [table]` lines)
/// turned on, as a user following its comments would.
fn starter_uncommented() -> String {
    keel_config::STARTER_PIPELINE
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest) if is_setting(rest) => rest,
            _ => line,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `key = …` or `[table]`: a commented-out setting rather than prose.
fn is_setting(line: &str) -> bool {
    if line.starts_with('[') {
        return line.contains(']');
    }
    let Some((key, _)) = line.split_once(" = ") else {
        return false;
    };
    !key.is_empty()
        && key
            .chars()
            .all(|character| character.is_ascii_lowercase() || character == '_')
}

#[test]
fn the_starter_shows_a_gate_a_sensor_and_a_resource_that_validate_once_uncommented() {
    let source = starter_uncommented();
    for shown in [
        "[resources.orders_api]",
        "uses = [",
        "wait_for = {",
        "gate = {",
    ] {
        assert!(
            source.lines().any(|line| line.starts_with(shown)),
            "the starter pipeline shows {shown}"
        );
    }
    let spec = keel_config::parse(&source, "keel.toml")
        .unwrap_or_else(|errors| panic!("the uncommented starter pipeline is invalid:\n{errors}"));
    assert_eq!(spec.resources.len(), 1);
    let fetch_orders = spec.task("fetch_orders").unwrap();
    assert_eq!(fetch_orders.uses, ["orders_api"]);
    assert!(fetch_orders.wait_for.is_some());
    assert!(
        spec.phases
            .iter()
            .any(|phase| phase.name == "extract" && phase.gate.is_some())
    );
}

#[test]
fn passes_become_subsets_with_their_schedules_and_params() {
    let source = r#"
[pipeline]
name = "hoops"
timezone = "America/New_York"

[phases.scrape]
[phases.analytics]
after = ["scrape"]
[phases.predictions]
after = ["analytics"]

[tasks.fetch]
phase = "scrape"
command = ["fetch", "{pass}"]
[tasks.summary]
phase = "analytics"
command = ["summary"]
[tasks.context]
phase = "analytics"
command = ["context"]
[tasks.predict]
phase = "predictions"
command = ["predict", "{param.mode}"]

[passes.tomorrow]
schedule = "0 17 * * *"
partition = "+1d"
phases = ["predictions", "analytics"]

[passes.overnight]
schedule = "0 6 * * *"
partition = "-1d"
catchup = "all"

[passes.same_day]
schedule = "30 10 * * *"
tasks = ["predict", "context"]
params = { mode = "same_day" }
gate = { analytics = { required = ["summary"], grace = "10m" } }
"#;
    let spec = parse(source);
    let names: Vec<&str> = spec.passes.iter().map(|pass| pass.name.as_str()).collect();
    assert_eq!(names, ["tomorrow", "overnight", "same_day"]);
    let tomorrow = spec.pass("tomorrow").unwrap();
    // Subsets are in file order, whatever order the pass lists them in.
    assert_eq!(tomorrow.tasks, strings(&["summary", "context", "predict"]));
    let schedule = tomorrow.schedule.as_ref().unwrap();
    assert_eq!(
        (schedule.cron.as_str(), schedule.partition_offset_days),
        ("0 17 * * *", 1)
    );
    assert_eq!(schedule.catchup, keel_model::Catchup::Latest);
    let overnight = spec.pass("overnight").unwrap();
    assert_eq!(overnight.tasks.len(), 4, "no subset runs every task");
    assert_eq!(
        overnight.schedule.as_ref().unwrap().catchup,
        keel_model::Catchup::All
    );
    let same_day = spec.pass("same_day").unwrap();
    assert_eq!(same_day.tasks, strings(&["context", "predict"]));
    assert_eq!(same_day.params["mode"], "same_day");
    assert_eq!(
        same_day.gates["analytics"],
        GateSpec {
            required: strings(&["summary"]),
            min_share: 0.0,
            grace: seconds(600),
            tiers: Vec::new(),
        }
    );
    assert!(tomorrow.gates.is_empty());

    // When a pass fires is not part of the version; what it runs is.
    let rescheduled = parse(&source.replace("0 17 * * *", "0 18 * * *"));
    assert_eq!(spec.version(), rescheduled.version());
    let other_mode = parse(&source.replace("\"same_day\" }", "\"late\" }"));
    assert_ne!(spec.version(), other_mode.version());
    let other_gate = parse(&source.replace("grace = \"10m\"", "grace = \"20m\""));
    assert_ne!(spec.version(), other_gate.version());
}

#[test]
fn a_calendar_is_read_and_part_of_the_version_only_when_written() {
    let task = |when: &str| {
        format!(
            "[pipeline]\nname = \"hoops\"\n\n[phases.scrape]\n[tasks.fetch]\nphase = \"scrape\"\ncommand = [\"true\"]\n{when}"
        )
    };
    let plain = parse(&task(""));
    let weekly = parse(&task("when = { weekdays = [\"sun\", \"wed\"] }\n"));
    let other = parse(&task("when = { weekdays = [\"sun\"] }\n"));
    assert_eq!(plain.tasks[0].when, None);
    assert_eq!(
        weekly.tasks[0].when,
        Some(keel_model::CalendarSpec {
            weekdays: vec![keel_model::Weekday::Sun, keel_model::Weekday::Wed],
            command: None,
        })
    );
    // A pipeline without calendars serialises as before, so it keeps its version.
    let canonical = serde_json::to_string(&plain).unwrap();
    assert!(!canonical.contains("when"), "{canonical}");
    assert!(
        serde_json::to_string(&weekly)
            .unwrap()
            .contains(r#""when":{"weekdays":["sun","wed"]}"#)
    );
    assert_ne!(plain.version(), weekly.version());
    assert_ne!(weekly.version(), other.version());
}
