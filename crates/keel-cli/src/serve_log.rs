//! What `keel serve` writes on stderr, as text lines or as JSON lines (`--log-format`), and the
//! trace spans it hands to the OTLP exporter when one is configured.
//!
//! Every line serve writes goes through one [`Logger`], so that in JSON mode each line, the
//! startup and stop notices and the error that ends serve included, is one JSON object. A line
//! about a run, a task or an attempt names them in fields, with the run's trace id and the span
//! id of the run (its root span) or of the attempt (the parent id of its `TRACEPARENT`).

use std::sync::Arc;

use keel_engine::Progress;
use keel_model::{Millis, RunId, SpanId, TraceId};
use serde_json::{Map, Value};

use crate::display::printable;

/// How serve's log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `2026-03-07T05:00:00Z message`: for people.
    Text,
    /// One JSON object a line: `ts`, `level`, `msg`, and the pipeline, run, partition, task,
    /// attempt, outcome, trace id and span id the line concerns.
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

/// One log line before it is written: a message and the fields it concerns.
#[derive(Debug, Clone)]
pub struct Line {
    pub level: Level,
    pub msg: String,
    /// Whether text mode shows it: text mode keeps to what needs a person (failures, runs
    /// starting and ending), JSON mode also shows each attempt starting and succeeding.
    pub in_text: bool,
    pub run: Option<RunId>,
    pub partition: Option<String>,
    pub task: Option<String>,
    pub attempt: Option<u32>,
    pub outcome: Option<String>,
    pub trace: Option<(TraceId, SpanId)>,
    /// Further fields, JSON mode only.
    pub extra: Vec<(&'static str, Value)>,
}

impl Line {
    pub fn new(level: Level, msg: impl Into<String>) -> Line {
        Line {
            level,
            msg: msg.into(),
            in_text: true,
            run: None,
            partition: None,
            task: None,
            attempt: None,
            outcome: None,
            trace: None,
            extra: Vec::new(),
        }
    }
}

/// Writes serve's lines to stderr in the chosen format. Cheap to clone; every clone writes the
/// same way.
#[derive(Debug, Clone)]
pub struct Logger {
    format: LogFormat,
    pipeline: Option<Arc<str>>,
    zone: chrono_tz::Tz,
}

impl Logger {
    /// A logger for lines that concern no pipeline yet (serve could not read its file).
    pub fn new(format: LogFormat) -> Logger {
        Logger {
            format,
            pipeline: None,
            zone: chrono_tz::UTC,
        }
    }

    /// A logger whose lines name `pipeline`; schedule times are shown in `zone`.
    pub fn for_pipeline(format: LogFormat, pipeline: &str, zone: chrono_tz::Tz) -> Logger {
        Logger {
            format,
            pipeline: Some(pipeline.into()),
            zone,
        }
    }

    pub fn info(&self, msg: &str) {
        self.write(Line::new(Level::Info, msg));
    }

    pub fn warn(&self, msg: &str) {
        self.write(Line::new(Level::Warn, msg));
    }

    /// The line for an engine event, if it makes one.
    pub fn progress(&self, event: &Progress) {
        if let Some(line) = describe(event, self.zone) {
            self.write(line);
        }
    }

    pub fn write(&self, line: Line) {
        use std::io::Write;
        let now = chrono::Utc::now();
        let mut text = match self.format {
            LogFormat::Text if line.in_text => self.render_text(&line, now),
            LogFormat::Text => return,
            LogFormat::Json => self.render_json(line, now),
        };
        text.push('\n');
        // One write per line, so that lines from the exporter's thread never interleave; a
        // closed stderr loses the line instead of stopping serve (as `eprintln!` would).
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    }

    /// `TIME [PIPELINE PARTITION: ]MESSAGE`, with control characters made visible: one serve
    /// may run several pipelines.
    fn render_text(&self, line: &Line, now: chrono::DateTime<chrono::Utc>) -> String {
        let text = match (&line.partition, &self.pipeline) {
            (Some(partition), Some(pipeline)) => format!("{pipeline} {partition}: {}", line.msg),
            (Some(partition), None) => format!("{partition}: {}", line.msg),
            (None, _) => line.msg.clone(),
        };
        format!("{} {}", now.format("%Y-%m-%dT%H:%M:%SZ"), printable(&text))
    }

    /// One JSON object, escaped by serde_json (a line break in a message stays inside its
    /// string).
    fn render_json(&self, line: Line, now: chrono::DateTime<chrono::Utc>) -> String {
        let mut object = Map::new();
        object.insert(
            "ts".into(),
            now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                .into(),
        );
        object.insert("level".into(), line.level.name().into());
        object.insert("msg".into(), line.msg.into());
        if let Some(pipeline) = &self.pipeline {
            object.insert("pipeline".into(), pipeline.as_ref().into());
        }
        if let Some(run) = line.run {
            object.insert("run".into(), run.0.into());
        }
        if let Some(partition) = line.partition {
            object.insert("partition".into(), partition.into());
        }
        if let Some(task) = line.task {
            object.insert("task".into(), task.into());
        }
        if let Some(attempt) = line.attempt {
            object.insert("attempt".into(), attempt.into());
        }
        if let Some(outcome) = line.outcome {
            object.insert("outcome".into(), outcome.into());
        }
        if let Some((trace, span)) = line.trace {
            object.insert("trace_id".into(), trace.to_string().into());
            object.insert("span_id".into(), span.to_string().into());
        }
        for (name, value) in line.extra {
            object.insert(name.into(), value);
        }
        Value::Object(object).to_string()
    }
}

fn rfc3339(at: Millis) -> Value {
    chrono::DateTime::from_timestamp_millis(at)
        .map(|at| {
            at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                .into()
        })
        .unwrap_or(Value::Null)
}

/// The line an engine event makes: the text of serve's text log, with its fields.
fn describe(event: &Progress, zone: chrono_tz::Tz) -> Option<Line> {
    let local = |at: Millis| {
        chrono::DateTime::from_timestamp_millis(at)
            .map(|at| {
                at.with_timezone(&zone)
                    .format("%Y-%m-%d %H:%M %Z")
                    .to_string()
            })
            .unwrap_or_default()
    };
    let line = match event {
        Progress::RunScheduled {
            run,
            partition,
            fire_at,
            joined,
            pass,
            ..
        } => {
            // `the schedule`, or `pass "NAME"` for a pass's schedule.
            let what = match pass {
                None => "the schedule".to_string(),
                Some(pass) => format!("pass {pass:?}"),
            };
            let msg = if *joined {
                format!(
                    "{what} fired for {}; unfinished run {run} carries on",
                    local(*fire_at)
                )
            } else {
                format!("{what} fired for {}; run {run} started", local(*fire_at))
            };
            Line {
                run: Some(*run),
                partition: Some(partition.clone()),
                extra: vec![("fire_at", rfc3339(*fire_at))],
                ..Line::new(Level::Info, msg)
            }
        }
        Progress::RunLoaded {
            run,
            partition,
            tasks,
            done,
            trace,
        } => Line {
            run: Some(*run),
            partition: Some(partition.clone()),
            trace: Some((*trace, trace.root_span())),
            ..Line::new(
                Level::Info,
                format!(
                    "run {run} taken up ({done}/{} done)",
                    crate::display::count(*tasks as u64, "task", "tasks")
                ),
            )
        },
        Progress::AttemptStarted {
            run,
            partition,
            task,
            attempt,
            trace,
            span,
            ..
        } => Line {
            in_text: false,
            run: Some(*run),
            partition: Some(partition.clone()),
            task: Some(task.clone()),
            attempt: Some(*attempt),
            trace: Some((*trace, *span)),
            ..Line::new(Level::Info, format!("{task} attempt {attempt} started"))
        },
        Progress::AttemptRecovered {
            run,
            partition,
            task,
            attempt,
            how,
            trace,
            span,
        } => Line {
            in_text: false,
            run: Some(*run),
            partition: Some(partition.clone()),
            task: Some(task.clone()),
            attempt: Some(*attempt),
            trace: Some((*trace, *span)),
            ..Line::new(Level::Info, format!("{task} attempt {attempt} {how}"))
        },
        Progress::AttemptFinished {
            run,
            partition,
            task,
            attempt,
            outcome,
            message,
            retry_at,
            trace,
            span,
            started_at,
            finished_at,
        } => {
            let complete = outcome.is_complete();
            let next = match (complete, retry_at) {
                (true, _) => "",
                (false, Some(_)) => " (will retry)",
                (false, None) => " (gave up)",
            };
            let detail = message
                .as_ref()
                .map(|message| format!(": {message}"))
                .unwrap_or_default();
            let level = match (complete, retry_at) {
                (true, _) => Level::Info,
                (false, Some(_)) => Level::Warn,
                (false, None) => Level::Error,
            };
            let mut extra = vec![("duration_ms", Value::from(finished_at - started_at))];
            if let Some(retry_at) = retry_at {
                extra.push(("retry_at", rfc3339(*retry_at)));
            }
            Line {
                in_text: !complete,
                run: Some(*run),
                partition: Some(partition.clone()),
                task: Some(task.clone()),
                attempt: Some(*attempt),
                outcome: Some(outcome.to_string()),
                trace: Some((*trace, *span)),
                extra,
                ..Line::new(
                    level,
                    format!("{task} attempt {attempt} {outcome}{detail}{next}"),
                )
            }
        }
        Progress::GateOpened {
            run,
            trace,
            partition,
            phase,
            missing,
        } => Line {
            run: Some(*run),
            partition: Some(partition.clone()),
            trace: Some((*trace, trace.root_span())),
            extra: vec![("phase", phase.as_str().into())],
            ..Line::new(
                Level::Warn,
                format!(
                    "gate of phase {phase} opened without {}",
                    missing.join(", ")
                ),
            )
        },
        Progress::BreakerChanged {
            resource,
            state,
            detail,
        } => Line {
            extra: vec![
                ("resource", resource.as_str().into()),
                ("breaker", (*state).into()),
            ],
            ..Line::new(
                Level::Warn,
                format!("resource {resource}: breaker {detail}"),
            )
        },
        Progress::RolloutDecided {
            run,
            partition,
            task,
            version,
            status,
            detail,
        } => Line {
            run: Some(*run),
            partition: Some(partition.clone()),
            task: Some(task.clone()),
            extra: vec![
                ("task_version", version.as_str().into()),
                ("rollout", status.as_str().into()),
            ],
            ..Line::new(
                if *status == keel_model::VersionStatus::RolledBack {
                    Level::Error
                } else {
                    Level::Info
                },
                format!("task {task}: {detail}"),
            )
        },
        Progress::RunFinished {
            run,
            partition,
            state,
            trace,
            ..
        } => {
            let level = match state {
                keel_model::RunState::Failed => Level::Error,
                keel_model::RunState::Succeeded => Level::Info,
                _ => Level::Warn,
            };
            Line {
                run: Some(*run),
                partition: Some(partition.clone()),
                outcome: Some(state.to_string()),
                trace: Some((*trace, trace.root_span())),
                ..Line::new(level, format!("run {run} finished {state}"))
            }
        }
        Progress::RunRefused {
            run,
            partition,
            reason,
        } => Line {
            run: Some(*run),
            partition: Some(partition.clone()),
            ..Line::new(
                Level::Error,
                format!("run {run} is not carried on: {reason}"),
            )
        },
        Progress::CheckFailed {
            run,
            partition,
            task,
            attempt,
            severity,
            detail,
        } => Line {
            run: Some(*run),
            partition: Some(partition.clone()),
            task: Some(task.clone()),
            attempt: Some(*attempt),
            extra: vec![("severity", severity.as_str().into())],
            ..Line::new(
                Level::Warn,
                format!(
                    "{task} attempt {attempt}: {} check failed: {detail}",
                    severity.as_str()
                ),
            )
        },
        Progress::HealRequested {
            run,
            partition,
            task,
            heal,
            used,
            budget,
        } => Line {
            run: Some(*run),
            partition: Some(partition.clone()),
            task: Some(task.clone()),
            ..Line::new(
                Level::Warn,
                format!(
                    "{task}: healing {} ({used} of {budget} heals of the run)",
                    heal.join(", ")
                ),
            )
        },
        Progress::HealExhausted {
            run,
            partition,
            task,
            detail,
        } => Line {
            run: Some(*run),
            partition: Some(partition.clone()),
            task: Some(task.clone()),
            ..Line::new(Level::Error, detail.clone())
        },
        Progress::ScheduleSkipped { fire_at, reason } => Line {
            extra: vec![("fire_at", rfc3339(*fire_at))],
            ..Line::new(
                Level::Error,
                format!(
                    "the schedule fired for {} but could not run: {reason}",
                    local(*fire_at)
                ),
            )
        },
        Progress::BackfillStarted {
            run,
            partition,
            kind,
            repair,
            ..
        } => Line {
            run: Some(*run),
            partition: Some(partition.clone()),
            ..Line::new(
                Level::Warn,
                format!(
                    "backfill: partition {partition} was {kind}; repair {repair} started as run {run}"
                ),
            )
        },
        Progress::GapUnrepaired {
            run,
            partition,
            detail,
            ..
        } => Line {
            run: Some(*run),
            partition: Some(partition.clone()),
            ..Line::new(Level::Error, detail.clone())
        },
        Progress::ResourceProbe {
            resource,
            healthy,
            message,
        } => {
            let text = if *healthy {
                format!("resource {resource}: its ready probe passes again; tasks using it start")
            } else {
                format!(
                    "resource {resource}: its ready probe failed ({}); tasks using it wait, using up no attempts",
                    message.as_deref().unwrap_or("no answer")
                )
            };
            Line::new(if *healthy { Level::Info } else { Level::Warn }, text)
        }
        Progress::TasksSettled { .. }
        | Progress::RateLimited { .. }
        | Progress::SensorPolled { .. }
        | Progress::QueueDepth { .. } => return None,
    };
    Some(line)
}

/// The error that ends serve, as one line of the logger's format: text mode leaves it to the
/// usual `error:`/`hint:` report, JSON mode logs it and ends with its exit code, saying no more.
pub fn end_with(format: LogFormat, error: anyhow::Error) -> anyhow::Error {
    if format == LogFormat::Text {
        return error;
    }
    let (text, code) = crate::report::render(&error);
    // One JSON line per error (a pipeline file can have several), each with its hint; lines
    // that follow an error (quoted output, the count of errors) stay with it.
    let mut lines: Vec<Line> = Vec::new();
    for part in text.lines() {
        let hint = part.strip_prefix("hint: ");
        match (part.strip_prefix("error: "), lines.last_mut()) {
            (Some(what), _) => lines.push(Line::new(Level::Error, what)),
            (None, None) => lines.push(Line::new(Level::Error, part)),
            (None, Some(line)) => match hint {
                Some(hint) => line.extra.push(("hint", hint.into())),
                None => {
                    line.msg.push('\n');
                    line.msg.push_str(part);
                }
            },
        }
    }
    let logger = Logger::new(format);
    for line in lines {
        logger.write(line);
    }
    anyhow::Error::new(crate::Exit {
        code,
        message: String::new(),
    })
}

/// Where traces go, from `--otlp-endpoint` or else `OTEL_EXPORTER_OTLP_ENDPOINT`; `None` when
/// neither is set.
#[cfg(feature = "otlp")]
pub fn trace_endpoint(flag: Option<&str>) -> anyhow::Result<Option<crate::otlp::Endpoint>> {
    let (text, origin) = match (flag, std::env::var(OTLP_VARIABLE)) {
        (Some(flag), _) => (flag.to_string(), "--otlp-endpoint"),
        (None, Ok(variable)) if !variable.trim().is_empty() => (variable, OTLP_VARIABLE),
        _ => return Ok(None),
    };
    crate::otlp::Endpoint::parse(&text, origin)
        .map(Some)
        .map_err(crate::Exit::usage)
}

/// Without the `otlp` feature, a flag asking for traces is refused; the variable, which may be
/// set for other programs, is only mentioned in the log.
#[cfg(not(feature = "otlp"))]
pub fn trace_endpoint(flag: Option<&str>) -> anyhow::Result<Option<NoEndpoint>> {
    match flag {
        Some(_) => Err(crate::Exit::usage(
            "--otlp-endpoint: this keel was built without trace export; build it with `cargo build --release -p keel-cli --features otlp`, or leave the flag out".to_string(),
        )),
        None => Ok(std::env::var(OTLP_VARIABLE)
            .ok()
            .filter(|variable| !variable.trim().is_empty())
            .map(|_| NoEndpoint)),
    }
}

const OTLP_VARIABLE: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set, but this keel cannot export.
#[cfg(not(feature = "otlp"))]
#[derive(Debug, Clone)]
pub struct NoEndpoint;

/// What serve does with each engine event: a log line, and a span for the exporter.
pub struct Telemetry {
    logger: Logger,
    #[cfg(feature = "otlp")]
    exporter: Option<crate::otlp::Exporter>,
}

/// Serve's hold on the exporter's thread, to let the last spans out when it stops.
pub struct ExportHandle {
    #[cfg(feature = "otlp")]
    sender: Option<(crate::otlp::Sender, String)>,
}

impl Telemetry {
    #[cfg(feature = "otlp")]
    pub fn start(
        logger: &Logger,
        pipeline: &str,
        endpoint: Option<crate::otlp::Endpoint>,
    ) -> (Telemetry, ExportHandle) {
        let Some(endpoint) = endpoint else {
            let telemetry = Telemetry {
                logger: logger.clone(),
                exporter: None,
            };
            return (telemetry, ExportHandle { sender: None });
        };
        let shown = endpoint.to_string();
        logger.info(&format!("keel serve: exporting traces to {shown}"));
        let (exporter, sender) = crate::otlp::start(endpoint, pipeline, logger.clone());
        let telemetry = Telemetry {
            logger: logger.clone(),
            exporter: Some(exporter),
        };
        (
            telemetry,
            ExportHandle {
                sender: Some((sender, shown)),
            },
        )
    }

    #[cfg(not(feature = "otlp"))]
    pub fn start(
        logger: &Logger,
        _pipeline: &str,
        endpoint: Option<NoEndpoint>,
    ) -> (Telemetry, ExportHandle) {
        if endpoint.is_some() {
            logger.warn(&format!(
                "keel serve: {OTLP_VARIABLE} is set, but this keel was built without trace export (cargo feature `otlp`); no traces are sent"
            ));
        }
        (
            Telemetry {
                logger: logger.clone(),
            },
            ExportHandle {},
        )
    }

    pub fn observe(&self, event: &Progress) {
        self.logger.progress(event);
        #[cfg(feature = "otlp")]
        if let Some(exporter) = &self.exporter {
            exporter.observe(event);
        }
    }
}

impl ExportHandle {
    /// Waits for the exporter's last batch (bounded by its request timeout) once the engine,
    /// and with it the [`Telemetry`], is dropped; says how many spans were dropped, if any.
    pub fn finish(self, logger: &Logger) {
        #[cfg(feature = "otlp")]
        if let Some((sender, endpoint)) = self.sender {
            let dropped = sender.finish();
            if dropped > 0 {
                logger.warn(&format!(
                    "keel serve: {dropped} spans could not be sent to {endpoint}"
                ));
            }
        }
        #[cfg(not(feature = "otlp"))]
        let _ = logger;
    }
}
