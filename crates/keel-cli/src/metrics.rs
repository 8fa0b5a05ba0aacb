//! What `keel serve` counts, in Prometheus/OpenMetrics text: one registry per serving Keel,
//! fed the engine's live [`Progress`] events and the alerts' deliveries, rendered on demand for
//! `/metrics`. Every series carries the `pipeline` label; the other labels take only values
//! from a bounded set (task and resource names of the pipeline, outcomes, states).
//!
//! Recording takes no lock but the registry's per-series atomics (and a family's map when a
//! series first appears), so the engine's loop never waits on a scrape for long.

use std::sync::Arc;

use keel_engine::Progress;
use keel_model::Millis;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PipelineLabel {
    pipeline: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    pipeline: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    pipeline: String,
    task: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    pipeline: String,
    task: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResourceLabels {
    pipeline: String,
    resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SensorLabels {
    pipeline: String,
    task: String,
    verdict: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AlertLabels {
    pipeline: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CheckLabels {
    pipeline: String,
    /// The task, or `phase NAME` for a phase's completeness check.
    task: String,
    severity: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SinkLabels {
    pipeline: String,
    sink: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Durations from a tenth of a second to about 4.5 hours (attempts, schedule lag).
fn long_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.1, 3.0, 11))
}

/// Waits from a millisecond to about a minute (ready to start).
fn short_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 3.0, 11))
}

struct Families {
    registry: Registry,
    runs_finished: Family<RunLabels, Counter>,
    attempts: Family<AttemptLabels, Counter>,
    attempt_duration: Histograms<TaskLabels>,
    ready_wait: Histograms<PipelineLabel>,
    queue_depth: Family<PipelineLabel, Gauge>,
    breaker_state: Family<ResourceLabels, Gauge>,
    rate_limit_waits: Family<ResourceLabels, Counter>,
    sensor_polls: Family<SensorLabels, Counter>,
    alerts_sent: Family<AlertLabels, Counter>,
    alert_failures: Family<SinkLabels, Counter>,
    schedule_lag: Histograms<PipelineLabel>,
    schedule_skipped: Family<PipelineLabel, Counter>,
    check_failures: Family<CheckLabels, Counter>,
}

/// The metrics of a serving Keel, for one pipeline. Cloning is cheap and clones share the
/// registry; [`Metrics::for_pipeline`] gives another pipeline's handle on the same registry.
#[derive(Clone)]
pub struct Metrics {
    families: Arc<Families>,
    pipeline: Arc<str>,
}

impl Metrics {
    /// A new registry, recording for `pipeline`.
    pub fn new(pipeline: &str) -> Metrics {
        let mut registry = Registry::with_prefix("keel");
        let runs_finished = Family::<RunLabels, Counter>::default();
        registry.register(
            "runs_finished",
            "Runs that ended, by the state they ended in",
            runs_finished.clone(),
        );
        let attempts = Family::<AttemptLabels, Counter>::default();
        registry.register(
            "attempts",
            "Attempts that ended, by task and outcome",
            attempts.clone(),
        );
        let attempt_duration: Histograms<TaskLabels> = Family::new_with_constructor(long_buckets);
        registry.register(
            "attempt_duration_seconds",
            "How long attempts ran, from start to end, by task",
            attempt_duration.clone(),
        );
        let ready_wait: Histograms<PipelineLabel> = Family::new_with_constructor(short_buckets);
        registry.register(
            "ready_wait_seconds",
            "From a task being ready (inputs complete, retry due) to its attempt starting",
            ready_wait.clone(),
        );
        let queue_depth = Family::<PipelineLabel, Gauge>::default();
        registry.register(
            "ready_queue_tasks",
            "Tasks in the ready queue, waiting for room to start",
            queue_depth.clone(),
        );
        let breaker_state = Family::<ResourceLabels, Gauge>::default();
        registry.register(
            "breaker_state",
            "A resource's circuit breaker: 0 closed, 1 half open, 2 open",
            breaker_state.clone(),
        );
        let rate_limit_waits = Family::<ResourceLabels, Counter>::default();
        registry.register(
            "rate_limit_waits",
            "Times a task waited for a resource's rate limit instead of starting",
            rate_limit_waits.clone(),
        );
        let sensor_polls = Family::<SensorLabels, Counter>::default();
        registry.register(
            "sensor_polls",
            "Sensor polls that ended, by task and verdict",
            sensor_polls.clone(),
        );
        let alerts_sent = Family::<AlertLabels, Counter>::default();
        registry.register(
            "alerts_sent",
            "Alert messages delivered, by kind (resolved ones as resolved)",
            alerts_sent.clone(),
        );
        let alert_failures = Family::<SinkLabels, Counter>::default();
        registry.register(
            "alert_delivery_failures",
            "Alert messages a sink failed to deliver, by sink (webhook, command)",
            alert_failures.clone(),
        );
        let schedule_lag: Histograms<PipelineLabel> = Family::new_with_constructor(long_buckets);
        registry.register(
            "schedule_lag_seconds",
            "From a schedule's fire time to the start of its run",
            schedule_lag.clone(),
        );
        let schedule_skipped = Family::<PipelineLabel, Counter>::default();
        registry.register(
            "schedule_skipped",
            "Schedule fires that could not start a run",
            schedule_skipped.clone(),
        );
        let check_failures = Family::<CheckLabels, Counter>::default();
        registry.register(
            "check_failures",
            "Checks of results that failed (checks = [...]), by task and severity",
            check_failures.clone(),
        );
        Metrics {
            families: Arc::new(Families {
                registry,
                runs_finished,
                attempts,
                attempt_duration,
                ready_wait,
                queue_depth,
                breaker_state,
                rate_limit_waits,
                sensor_polls,
                alerts_sent,
                alert_failures,
                schedule_lag,
                schedule_skipped,
                check_failures,
            }),
            pipeline: pipeline.into(),
        }
    }

    /// A handle recording for another pipeline into the same registry.
    #[allow(dead_code)] // for `keel serve` of several pipelines
    pub fn for_pipeline(&self, pipeline: &str) -> Metrics {
        Metrics {
            families: self.families.clone(),
            pipeline: pipeline.into(),
        }
    }

    /// Counts one engine event.
    pub fn record(&self, event: &Progress) {
        let families = &self.families;
        let pipeline = self.pipeline.to_string();
        match event {
            Progress::RunFinished { state, .. } => {
                families
                    .runs_finished
                    .get_or_create(&RunLabels {
                        pipeline,
                        state: state.to_string(),
                    })
                    .inc();
            }
            Progress::AttemptStarted {
                ready_wait: Some(wait),
                ..
            } => {
                families
                    .ready_wait
                    .get_or_create(&PipelineLabel { pipeline })
                    .observe(seconds(*wait));
            }
            Progress::AttemptFinished {
                task,
                outcome,
                started_at,
                finished_at,
                ..
            } => {
                let duration = Some((finished_at - started_at).max(0));
                families
                    .attempts
                    .get_or_create(&AttemptLabels {
                        pipeline: pipeline.clone(),
                        task: task.clone(),
                        outcome: outcome.to_string(),
                    })
                    .inc();
                if let Some(duration) = duration {
                    families
                        .attempt_duration
                        .get_or_create(&TaskLabels {
                            pipeline,
                            task: task.clone(),
                        })
                        .observe(seconds(duration));
                }
            }
            Progress::QueueDepth { ready } => {
                families
                    .queue_depth
                    .get_or_create(&PipelineLabel { pipeline })
                    .set(i64::try_from(*ready).unwrap_or(i64::MAX));
            }
            Progress::BreakerChanged {
                resource, state, ..
            } => {
                let value = match *state {
                    "open" => 2,
                    "half_open" => 1,
                    _ => 0,
                };
                families
                    .breaker_state
                    .get_or_create(&ResourceLabels {
                        pipeline,
                        resource: resource.clone(),
                    })
                    .set(value);
            }
            Progress::RateLimited { resource, .. } => {
                families
                    .rate_limit_waits
                    .get_or_create(&ResourceLabels {
                        pipeline,
                        resource: resource.clone(),
                    })
                    .inc();
            }
            Progress::CheckFailed { task, severity, .. } => {
                families
                    .check_failures
                    .get_or_create(&CheckLabels {
                        pipeline,
                        task: task.clone(),
                        severity: severity.as_str().to_string(),
                    })
                    .inc();
            }
            // Logged by serve and in the event log; a spent budget is alerted.
            Progress::HealRequested { .. } | Progress::HealExhausted { .. } => {}
            // Logged by serve; the breaker gauges say more about a dependency's health.
            Progress::ResourceProbe { .. } => {}
            // Logged by serve and alerted; `keel rollout list` says where each version stands.
            Progress::RolloutDecided { .. } => {}
            Progress::SensorPolled { task, verdict, .. } => {
                families
                    .sensor_polls
                    .get_or_create(&SensorLabels {
                        pipeline,
                        task: task.clone(),
                        verdict: verdict.to_string(),
                    })
                    .inc();
            }
            Progress::RunScheduled {
                fire_at,
                started_at,
                joined: false,
                ..
            } => {
                families
                    .schedule_lag
                    .get_or_create(&PipelineLabel { pipeline })
                    .observe(seconds(started_at - fire_at));
            }
            Progress::ScheduleSkipped { .. } => {
                families
                    .schedule_skipped
                    .get_or_create(&PipelineLabel { pipeline })
                    .inc();
            }
            Progress::RunLoaded { .. }
            | Progress::AttemptStarted { .. }
            | Progress::AttemptRecovered { .. }
            | Progress::GateOpened { .. }
            | Progress::TasksSettled { .. }
            | Progress::RunRefused { .. }
            | Progress::RunScheduled { .. }
            | Progress::BackfillStarted { .. }
            | Progress::GapUnrepaired { .. } => {}
        }
    }

    /// Counts an alert message delivered; `kind` is the alert's kind, or `resolved`.
    pub fn alert_sent(&self, kind: &str) {
        self.families
            .alerts_sent
            .get_or_create(&AlertLabels {
                pipeline: self.pipeline.to_string(),
                kind: kind.to_string(),
            })
            .inc();
    }

    /// Counts an alert message a sink (`webhook`, `command`) failed to deliver.
    pub fn alert_failed(&self, sink: &str) {
        self.families
            .alert_failures
            .get_or_create(&SinkLabels {
                pipeline: self.pipeline.to_string(),
                sink: sink.to_string(),
            })
            .inc();
    }

    /// Every series in OpenMetrics text, ending with `# EOF`.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail; an encoder error would be a bug in a label value.
        if let Err(error) =
            prometheus_client::encoding::text::encode(&mut text, &self.families.registry)
        {
            text = format!("# keel: metrics could not be encoded: {error}\n# EOF\n");
        }
        text
    }

    /// The render callback the HTTP server's `/metrics` route takes.
    #[allow(dead_code)] // until the HTTP server's `/metrics` route is wired to it
    pub fn renderer(&self) -> Arc<dyn Fn() -> String + Send + Sync> {
        let metrics = self.clone();
        Arc::new(move || metrics.render())
    }
}

fn seconds(millis: Millis) -> f64 {
    millis.max(0) as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Mutex;
    use std::time::Duration;

    use keel_engine::{Engine, EngineConfig, Prepared, RunRequest, Shutdown, SplitMix64};
    use keel_exec::{Adopted, Executor, Launch, Report, Running};
    use keel_model::{Outcome, RunId};
    use keel_store::SqliteStore;

    use super::*;

    /// Runs each attempt's command as a real process (`sh -c`), its exit code read as the task
    /// contract reads it: 0 succeeded, 65 no data, 75 not ready, anything else failed.
    struct ShellExecutor;

    impl Executor for ShellExecutor {
        fn launch(&self, launch: Launch) -> std::io::Result<Running> {
            std::fs::create_dir_all(&launch.dir)?;
            let mut command = tokio::process::Command::new(&launch.command[0]);
            command
                .args(&launch.command[1..])
                .envs(launch.env.iter().cloned())
                .stderr(std::process::Stdio::null());
            let mut child = command.spawn()?;
            let completion = Box::pin(async move {
                let status = child.wait().await;
                let code = status.ok().and_then(|status| status.code());
                let outcome = match code {
                    Some(0) => Outcome::Succeeded,
                    Some(65) => Outcome::NoData,
                    Some(75) => Outcome::NotReady,
                    _ => Outcome::Failed,
                };
                let mut report = Report::new(outcome, format!("exit {code:?}"));
                report.exit_code = code;
                report
            });
            Ok(Running {
                pid: None,
                pid_later: None,
                completion,
                stop: Arc::new(|| {}),
            })
        }

        fn adopt(&self, _dir: PathBuf, _known_pid: Option<u32>) -> Adopted {
            Adopted::Gone("not adoptable in this test".into())
        }
    }

    const PIPELINE: &str = r#"
[pipeline]
name = "metered"
partition = "date"

[defaults]
timeout = "1m"
retries = { attempts = 2, initial = "10ms", max = "10ms", jitter = "none" }
concurrency = 1

[phases.main]

[tasks.extract]
phase = "main"
command = ["sh", "-c", "sleep 0.1"]

[tasks.extract_odds]
phase = "main"
command = ["sh", "-c", "sleep 0.1"]

[tasks.load]
phase = "main"
after = ["extract"]
command = ["sh", "-c", "echo broken >&2; exit 1"]

[tasks.holiday]
phase = "main"
wait_for = { command = ["sh", "-c", "exit 65"], every = "10ms", max = "10ms", deadline = "1m" }
command = ["sh", "-c", "exit 0"]
"#;

    /// Runs the pipeline above for real and records its progress.
    async fn run_pipeline(metrics: &Metrics) -> Vec<RunState> {
        let dir = tempfile::tempdir().unwrap();
        let spec = keel_config::parse(PIPELINE, "keel.toml").unwrap();
        let store = SqliteStore::open(&dir.path().join("state.db")).unwrap();
        let config = EngineConfig {
            owner: "metrics-test".into(),
            attempts_dir: dir.path().join("attempts"),
            kill_grace: Duration::from_millis(10),
            log_cap: 1024,
            lease_ttl: Duration::from_secs(60),
            poll_interval: Duration::from_millis(20),
            extra_env: vec![],
            launch_context: Default::default(),
            shutdown_grace: Duration::from_secs(5),
        };
        let mut engine = Engine::new(
            store,
            ShellExecutor,
            keel_engine::SystemClock,
            Box::new(SplitMix64::new(7)),
            spec,
            config,
        );
        let observer = metrics.clone();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let states = seen.clone();
        engine.observe(move |event| {
            if let Progress::RunFinished { state, .. } = &event {
                states.lock().unwrap().push(*state);
            }
            observer.record(&event);
        });
        let request = RunRequest {
            pass: None,
            partitions: vec!["2026-12-01".into()],
            only: vec![],
            rerun: false,
        };
        let runs: Vec<RunId> = engine
            .prepare(&request)
            .await
            .unwrap()
            .into_iter()
            .filter_map(|prepared| match prepared {
                Prepared::Created(run) | Prepared::Resumed(run) => Some(run),
                Prepared::AlreadyFinished(_) => None,
            })
            .collect();
        engine.execute(&runs, Shutdown::never()).await.unwrap();
        seen.lock().unwrap().clone()
    }

    use keel_model::RunState;

    fn parse(text: &str) -> prometheus_parse::Scrape {
        let lines = text.lines().map(|line| Ok(line.to_string()));
        prometheus_parse::Scrape::parse(lines).expect("the metrics parse")
    }

    fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
        let sample = scrape
            .samples
            .iter()
            .find(|sample| {
                sample.metric == name
                    && labels
                        .iter()
                        .all(|(key, value)| sample.labels.get(key) == Some(*value))
            })
            .unwrap_or_else(|| panic!("no sample {name} {labels:?} in the scrape"));
        match &sample.value {
            prometheus_parse::Value::Counter(value)
            | prometheus_parse::Value::Gauge(value)
            | prometheus_parse::Value::Untyped(value) => *value,
            prometheus_parse::Value::Histogram(buckets) => {
                buckets.last().map(|bucket| bucket.count).unwrap_or(0.0)
            }
            other => panic!("unexpected value {other:?} for {name}"),
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_real_run_renders_metrics_a_prometheus_parser_reads() {
        let metrics = Metrics::new("metered");
        let states = run_pipeline(&metrics).await;
        assert_eq!(states, vec![RunState::Failed]);
        let text = metrics.render();
        assert!(
            text.ends_with("# EOF\n"),
            "OpenMetrics text ends with # EOF:\n{text}"
        );
        let scrape = parse(&text);
        let run = [("pipeline", "metered"), ("state", "failed")];
        assert_eq!(value(&scrape, "keel_runs_finished_total", &run), 1.0);
        let failed = [
            ("pipeline", "metered"),
            ("task", "load"),
            ("outcome", "failed"),
        ];
        assert_eq!(value(&scrape, "keel_attempts_total", &failed), 2.0);
        let ok = [("task", "extract"), ("outcome", "succeeded")];
        assert_eq!(value(&scrape, "keel_attempts_total", &ok), 1.0);
        let poll = [("task", "holiday"), ("verdict", "no_data")];
        assert_eq!(value(&scrape, "keel_sensor_polls_total", &poll), 1.0);
        // Four attempts ran (the two extracts, and load twice); each reported its duration and
        // its wait.
        let durations: f64 = ["extract", "extract_odds", "load"]
            .iter()
            .map(|task| {
                let labels = [("pipeline", "metered"), ("task", *task)];
                value(&scrape, "keel_attempt_duration_seconds_count", &labels)
            })
            .sum();
        assert_eq!(durations, 4.0);
        let pipeline = [("pipeline", "metered")];
        let waits = value(&scrape, "keel_ready_wait_seconds_count", &pipeline);
        assert_eq!(waits, 4.0);
        // One at a time: whichever extract went second waited for the other's 100 ms sleep.
        let waited = value(&scrape, "keel_ready_wait_seconds_sum", &pipeline);
        assert!(waited >= 0.1, "ready waits add up to {waited}s");
        let slept = value(
            &scrape,
            "keel_attempt_duration_seconds_sum",
            &[("task", "extract")],
        );
        assert!(slept >= 0.1, "extract ran {slept}s");
        let depth = value(
            &scrape,
            "keel_ready_queue_tasks",
            &[("pipeline", "metered")],
        );
        assert!(depth >= 0.0);
        promtool_check(&text);
    }

    #[test]
    fn every_family_renders_and_parses() {
        let metrics = Metrics::new("one");
        let other = metrics.for_pipeline("two");
        let run = RunId(1);
        metrics.record(&Progress::BreakerChanged {
            resource: "feed".into(),
            state: "open",
            detail: "open".into(),
        });
        other.record(&Progress::RateLimited {
            resource: "feed".into(),
            task: "scrape".into(),
        });
        metrics.record(&Progress::RunScheduled {
            pass: None,
            run,
            partition: "2026-12-01".into(),
            fire_at: 1_000,
            joined: false,
            started_at: 3_500,
        });
        metrics.record(&Progress::ScheduleSkipped {
            fire_at: 1_000,
            reason: "test".into(),
        });
        metrics.record(&Progress::CheckFailed {
            run,
            partition: "2026-12-01".into(),
            task: "grade".into(),
            attempt: 1,
            severity: keel_model::Severity::Warn,
            detail: "accuracy 0.19 is below the minimum 0.3".into(),
        });
        metrics.alert_sent("failed_permanent");
        metrics.alert_failed("webhook");
        let text = metrics.render();
        let scrape = parse(&text);
        let breaker = [("pipeline", "one"), ("resource", "feed")];
        assert_eq!(value(&scrape, "keel_breaker_state", &breaker), 2.0);
        let waits = [("pipeline", "two"), ("resource", "feed")];
        assert_eq!(value(&scrape, "keel_rate_limit_waits_total", &waits), 1.0);
        let lag = [("pipeline", "one")];
        assert_eq!(value(&scrape, "keel_schedule_lag_seconds_sum", &lag), 2.5);
        assert_eq!(value(&scrape, "keel_schedule_skipped_total", &lag), 1.0);
        let check = [("pipeline", "one"), ("task", "grade"), ("severity", "warn")];
        assert_eq!(value(&scrape, "keel_check_failures_total", &check), 1.0);
        let alert = [("kind", "failed_permanent")];
        assert_eq!(value(&scrape, "keel_alerts_sent_total", &alert), 1.0);
        let failure = [("sink", "webhook")];
        assert_eq!(
            value(&scrape, "keel_alert_delivery_failures_total", &failure),
            1.0
        );
        assert_eq!(metrics.renderer()(), text);
        promtool_check(&text);
    }

    /// Prometheus's own checker (Debian's `prometheus` package) when it is installed; CI must
    /// have it (`.ci/install-promtool`), so there it never skips.
    fn promtool_check(text: &str) {
        let found = std::process::Command::new("promtool")
            .arg("--version")
            .output();
        if found.is_err() {
            assert!(
                std::env::var_os("CI").is_none(),
                "promtool is missing: run .ci/install-promtool"
            );
            eprintln!("promtool is not installed: only prometheus-parse checked the metrics");
            return;
        }
        use std::io::Write;
        let mut child = std::process::Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        // promtool reads the classic text format, where a counter's HELP names the `_total`
        // sample; OpenMetrics names the family without it. That one lint (exit 3) is expected;
        // a parse error (exit 1) or any other lint fails.
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let only_openmetrics_counters = output.status.code() == Some(3)
            && report.lines().filter(|line| !line.is_empty()).all(|line| {
                line.strip_suffix(" no help text")
                    .and_then(|name| name.strip_suffix("_total"))
                    .is_some_and(|family| text.contains(&format!("# TYPE {family} counter\n")))
            });
        assert!(
            output.status.success() || only_openmetrics_counters,
            "promtool check metrics failed:\n{}{}\n{text}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
