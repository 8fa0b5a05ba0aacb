//! examples/hoops/keel.toml validates with Keel's own parser and runs exactly the tasks that
//! `hoops` implements, in their phases, as `hoops <task> {date}`.

use std::path::Path;

use hoops::tasks::PIPELINE;

#[test]
fn keel_toml_validates_and_matches_the_tasks() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("keel.toml");
    let spec = keel_config::load(&path).unwrap_or_else(|errors| panic!("{errors}"));
    assert_eq!(spec.name, "hoops");
    assert_eq!(spec.timezone, "America/New_York");
    let phases: Vec<&str> = spec.phases.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        phases,
        [
            "scrape",
            "raw",
            "analytics",
            "precompute",
            "predictions",
            "export",
            "grading"
        ]
    );
    let tasks: Vec<(&str, &str)> = spec
        .tasks
        .iter()
        .map(|t| (t.name.as_str(), t.phase.as_str()))
        .collect();
    assert_eq!(tasks, PIPELINE.to_vec());
    for task in &spec.tasks {
        // The box scores run once per game, the predictions once per player.
        let command: Vec<&str> = match task.name.as_str() {
            "scrape_boxscores" => vec!["hoops", "scrape_boxscores", "{date}", "{item.key}"],
            "predictions" => vec!["hoops", "predictions", "{date}", "{item}"],
            name => vec!["hoops", name, "{date}"],
        };
        assert_eq!(task.command, command, "{}", task.name);
        assert_eq!(
            task.expand.as_ref().map(|expand| expand.from.as_str()),
            match task.name.as_str() {
                "scrape_boxscores" => Some("scrape_schedule"),
                "predictions" => Some("feature_store"),
                _ => None,
            },
            "{}",
            task.name
        );
        assert_eq!(
            task.retries.jitter,
            keel_model::Jitter::Full,
            "{}",
            task.name
        );
        assert!(task.retries.attempts > 1, "{}", task.name);
    }
    let after = |name: &str| spec.task(name).unwrap().after.clone();
    assert_eq!(after("player_game_summary"), ["team_offense"]);
    assert_eq!(after("player_form"), ["rolling_averages", "rest_days"]);
    assert_eq!(after("feature_store"), ["player_form", "opponent_defense"]);
    let inputs = |name: &str| spec.task(name).unwrap().edges.inputs.clone();
    assert_eq!(
        inputs("rolling_averages").unwrap(),
        ["upcoming_player_context", "player_game_summary"]
    );
    assert_eq!(
        inputs("feature_store"),
        None,
        "it reads every upstream table"
    );
    assert_eq!(
        spec.task("rolling_averages").unwrap().edges.earlier,
        [keel_model::EarlierInput {
            task: "player_game_summary".into(),
            days: 1,
            soft: true,
        }],
        "rolling averages read yesterday's summary"
    );
    let live = spec.task("live_scores").unwrap().repeat.as_ref().unwrap();
    assert_eq!(
        (live.every, live.from.to_string(), live.until.to_string()),
        (
            std::time::Duration::from_secs(180),
            "19:00".to_string(),
            "02:00".to_string()
        ),
        "live scores poll every 3 minutes while the games are on"
    );
    assert_eq!(
        spec.task("export")
            .unwrap()
            .freeze_after
            .as_ref()
            .map(|time| time.to_string()),
        Some("18:00".to_string()),
        "the published picks are frozen from 18:00"
    );
}

#[test]
fn the_analytics_gate_and_the_props_sensor_are_in_the_spec() {
    let spec = keel_config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("keel.toml")).unwrap();
    let analytics = spec
        .phases
        .iter()
        .find(|phase| phase.name == "analytics")
        .unwrap();
    let gate = analytics.gate.as_ref().expect("analytics has a gate");
    assert_eq!(
        gate.required,
        ["player_game_summary", "upcoming_player_context"]
    );
    assert!((gate.min_share - 0.6).abs() < 1e-9);
    let props = spec.task("scrape_props").unwrap();
    let sensor = props
        .wait_for
        .as_ref()
        .expect("scrape_props waits for the props");
    assert_eq!(sensor.command, ["hoops", "ready", "props", "{date}"]);
}

#[test]
fn the_features_keel_lacks_are_written_down_as_comments() {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("keel.toml")).unwrap();
    assert!(
        text.contains("# smoke = "),
        "the smoke test waits, commented, for `keel check`"
    );
    assert!(text.contains("Enabled once Keel supports it"));
}

#[test]
fn keel_http_toml_is_the_same_pipeline_as_http_tasks_calling_hoops_serve() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let commands = keel_config::load(&dir.join("keel.toml")).unwrap();
    let spec =
        keel_config::load(&dir.join("keel-http.toml")).unwrap_or_else(|errors| panic!("{errors}"));
    assert_eq!(spec.name, "hoops_http");
    let phases = |spec: &keel_model::PipelineSpec| -> Vec<(String, Vec<String>)> {
        spec.phases
            .iter()
            .map(|p| (p.name.clone(), p.after.clone()))
            .collect()
    };
    assert_eq!(phases(&spec), phases(&commands));
    let tasks: Vec<(&str, &str)> = spec
        .tasks
        .iter()
        .map(|t| (t.name.as_str(), t.phase.as_str()))
        .collect();
    assert_eq!(tasks, PIPELINE.to_vec());
    let url = format!("http://{}/process/{{task}}", hoops::cli::SERVICE_ADDR);
    for task in &spec.tasks {
        let http = task
            .http
            .as_ref()
            .unwrap_or_else(|| panic!("{} is not an HTTP task", task.name));
        assert_eq!(http.url, url, "{}", task.name);
        assert_eq!(http.method, "POST", "{}", task.name);
        assert_eq!(
            http.body,
            keel_model::HttpBody::Json(serde_json::json!({"date": "{date}"})),
            "{}",
            task.name
        );
        assert_eq!(
            http.auth,
            Some(keel_model::HttpAuth::BearerEnv(
                "HOOPS_SERVICE_TOKEN".into()
            )),
            "{}",
            task.name
        );
        // The first resource is the connection pool: every task shares the service's.
        assert_eq!(
            task.uses.first().map(String::as_str),
            Some("service"),
            "{}",
            task.name
        );
        let same = commands.task(&task.name).unwrap();
        // The service processes a whole date per call: what keel.toml fans out per game or per
        // player is one call here, which waits for its phase and has the whole-date timeout.
        if same.expand.is_none() {
            assert_eq!(task.after, same.after, "{}", task.name);
            assert_eq!(task.timeout, same.timeout, "{}", task.name);
        }
        assert_eq!(task.edges, same.edges, "{}", task.name);
        assert_eq!(task.retries, same.retries, "{}", task.name);
        let feed = same.uses.contains(&"feed".to_string());
        assert_eq!(
            task.uses.contains(&"feed".to_string()),
            feed,
            "{}",
            task.name
        );
    }
    let sensor = spec
        .task("scrape_props")
        .unwrap()
        .wait_for
        .as_ref()
        .expect("the props sensor");
    assert_eq!(sensor.command, ["hoops", "ready", "props", "{date}"]);
    let passes = |spec: &keel_model::PipelineSpec| -> Vec<String> {
        spec.passes.iter().map(|p| p.name.clone()).collect()
    };
    assert_eq!(passes(&spec), passes(&commands));
}
