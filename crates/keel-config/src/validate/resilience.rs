//! The resilience fields: `[resources.NAME]`, a phase's `gate`, a task's `uses` and `wait_for`.
//!
//! They are read in the first pass like every other field. The names they hold, the tasks a gate
//! requires and the resources a task uses, are resolved in the second pass, once every table has
//! been read.

use std::ops::Range;
use std::time::Duration;

use keel_model::{
    BreakerSpec, GateSpec, QuotaPeriod, QuotaSpec, Rate, ResourceSpec, RetryBudgetSpec, SensorSpec,
    TokenUse,
};
use toml::Spanned;
use toml::de::{DeString, DeValue};

use super::{
    Checker, CommandKind, NameListContext, NameRef, RawPhase, RawTask, entries, join_path,
};
use crate::MAX_DURATION;
use crate::error::{ConfigError, NameKind};
use crate::quantity::{RateProblem, parse_percentage, parse_rate};
use crate::suggest::closest;

const RESOURCE_FIELDS: &[&str] = &[
    "rate",
    "concurrency",
    "breaker",
    "retry_budget",
    "ready",
    "tokens",
    "quota",
    "warn",
];
const TOKEN_USES: &[&str] = &["attempt", "request"];
const EXPECT_QUOTA: &str = "a quota string such as \"500/month\"";
const QUOTA_SHAPE: &str = "write <count>/day or <count>/month, for example \"500/month\"";
const BREAKER_FIELDS: &[&str] = &["failures", "ratio", "window", "cooldown", "max_open"];
const RETRY_BUDGET_FIELDS: &[&str] = &["ratio", "window", "min"];
const GATE_FIELDS: &[&str] = &["required", "min", "grace", "tiers"];
const SENSOR_FIELDS: &[&str] = &["command", "http", "every", "max", "deadline"];

const EXPECT_RATE: &str = "a rate string such as \"20/s\"";
const EXPECT_SHARE: &str = "a percentage such as \"60%\" or a share such as 0.6";
const RATE_SHAPE: &str = "write <count>/<period>, for example \"20/s\", \"100/m\" or \"5/10s\"";

/// A breaker that sets no `failures` opens after this many consecutive failures.
const DEFAULT_BREAKER_FAILURES: u32 = 5;
/// How many of the latest attempts a breaker's `ratio` is measured over.
const DEFAULT_BREAKER_WINDOW: u32 = 20;
const DEFAULT_BREAKER_COOLDOWN: Duration = Duration::from_secs(30);
/// How long a breaker may stay open before the tasks waiting on it fail.
const DEFAULT_BREAKER_MAX_OPEN: Duration = Duration::from_secs(30 * 60);
const DEFAULT_RETRY_BUDGET_WINDOW: Duration = Duration::from_secs(60);
/// Retries always allowed on a resource, so a quiet resource can still retry its first failures.
const DEFAULT_RETRY_BUDGET_MIN: u32 = 3;
const DEFAULT_SENSOR_EVERY: Duration = Duration::from_secs(60);
/// Without `max`, a sensor's backoff grows to this many times `every`.
const SENSOR_MAX_PER_EVERY: u32 = 8;

/// Which shares a field accepts.
#[derive(Debug, Clone, Copy)]
pub(super) enum ShareRange {
    /// `[0, 1]`: a gate's `min` may be 0%.
    ZeroToOne,
    /// `(0, 1]`: a ratio of 0% would trip or exhaust on the first attempt.
    AboveZeroToOne,
}

#[derive(Debug)]
pub(super) struct RawResource {
    pub(super) name: NameRef,
    rate: Option<Rate>,
    concurrency: Option<u32>,
    breaker: Option<BreakerSpec>,
    retry_budget: Option<RetryBudgetSpec>,
    ready: Option<keel_model::ReadyProbe>,
    tokens: TokenUse,
    quota: Option<(u32, QuotaPeriod)>,
    warn: Option<f64>,
}

impl RawResource {
    pub(super) fn build(self) -> ResourceSpec {
        ResourceSpec {
            name: self.name.name,
            rate: self.rate,
            concurrency: self.concurrency,
            breaker: self.breaker,
            retry_budget: self.retry_budget,
            ready: self.ready,
            tokens: self.tokens,
            quota: self.quota.map(|(limit, period)| QuotaSpec {
                limit,
                period,
                warn: self.warn,
            }),
        }
    }
}

#[derive(Debug)]
pub(super) struct RawGate {
    required: Vec<NameRef>,
    min: Option<f64>,
    grace: Option<Duration>,
    tiers: Vec<super::tiers::RawTier>,
}

impl RawGate {
    pub(super) fn build(self) -> GateSpec {
        if !self.tiers.is_empty() {
            return super::tiers::build(self.tiers);
        }
        GateSpec {
            required: self.required.into_iter().map(|name| name.name).collect(),
            // A gate without `min` has required tasks (validation makes sure of it), and they
            // alone make the phase sufficient.
            min_share: self.min.unwrap_or(0.0),
            grace: self.grace.unwrap_or(Duration::ZERO),
            tiers: Vec::new(),
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct RawSensor {
    command: Option<Vec<String>>,
    http: Option<keel_model::HttpSpec>,
    every: Option<Duration>,
    max: Option<Duration>,
    deadline: Option<Duration>,
}

impl RawSensor {
    /// `task_deadline` is the task's own deadline, defaults applied: a sensor waits no longer
    /// than the task would keep answering *not ready*.
    pub(super) fn build(self, task_deadline: Duration) -> SensorSpec {
        let every = self.every.unwrap_or(DEFAULT_SENSOR_EVERY);
        SensorSpec {
            command: self.command.unwrap_or_default(),
            http: self.http,
            every,
            // Capped like every written duration, so a long `every` does not derive a longer
            // backoff than any field could set.
            max: self
                .max
                .unwrap_or_else(|| every.saturating_mul(SENSOR_MAX_PER_EVERY).min(MAX_DURATION)),
            deadline: self.deadline.unwrap_or(task_deadline),
        }
    }
}

/// The text of a value as written in the file, for messages that quote a number.
fn written<'s>(checker: &Checker<'s>, span: &Range<usize>) -> &'s str {
    checker.map.source.get(span.clone()).unwrap_or("").trim()
}

/// A percentage for a bare number that reads like one, such as `60` for `"60%"`.
fn percentage_suggestion(number: f64) -> Option<String> {
    (number.fract() == 0.0 && number > 1.0 && number <= 100.0).then(|| format!("{number}%"))
}

impl Checker<'_> {
    pub(super) fn resource(
        &mut self,
        name: &Spanned<DeString<'_>>,
        value: &Spanned<DeValue<'_>>,
    ) -> Option<RawResource> {
        let resource_name = NameRef {
            name: name.get_ref().to_string(),
            span: name.span(),
        };
        self.check_name(NameKind::Resource, &resource_name.name, &resource_name.span);
        let path = join_path("resources", &resource_name.name);
        let table = self.table(value, &resource_name.name, "resources")?;
        let mut resource = RawResource {
            name: resource_name,
            rate: None,
            concurrency: None,
            breaker: None,
            retry_budget: None,
            ready: None,
            tokens: TokenUse::Attempt,
            quota: None,
            warn: None,
        };
        let mut tokens_span = None;
        let mut warn_span = None;
        for (key, value) in entries(table) {
            let field = key.get_ref().as_ref();
            match field {
                "rate" => resource.rate = self.rate(value, &path),
                "concurrency" => resource.concurrency = self.positive_integer(value, field, &path),
                "breaker" => resource.breaker = self.breaker(value, &path),
                "retry_budget" => resource.retry_budget = self.retry_budget(key, value, &path),
                "ready" => resource.ready = self.ready_probe(value, &path, &resource.name.name),
                "tokens" => {
                    if self.choice(value, field, &path, TOKEN_USES) == Some("request") {
                        resource.tokens = TokenUse::Request;
                        tokens_span = Some(key.span());
                    }
                }
                "quota" => resource.quota = self.quota(value, &path),
                "warn" => {
                    resource.warn = self.share(value, field, &path, ShareRange::AboveZeroToOne);
                    warn_span = Some(key.span());
                }
                _ => self.unknown_field(key, &path, RESOURCE_FIELDS, &[]),
            }
        }
        let has_quota = entries(table)
            .iter()
            .any(|(key, _)| key.get_ref().as_ref() == "quota");
        let has_rate = entries(table)
            .iter()
            .any(|(key, _)| key.get_ref().as_ref() == "rate");
        if let Some(span) = warn_span.filter(|_| !has_quota) {
            self.errors.push(ConfigError::Ineffective {
                field: "warn".to_string(),
                table: path.clone(),
                needs: "quota",
                example: "quota = \"500/month\"",
                location: self.location(&span),
            });
        }
        if let Some(span) = tokens_span.filter(|_| !has_quota && !has_rate) {
            self.errors.push(ConfigError::Ineffective {
                field: "tokens".to_string(),
                table: path.clone(),
                needs: "rate",
                example: "rate = \"20/m\" or quota = \"500/month\"",
                location: self.location(&span),
            });
        }
        Some(resource)
    }

    fn rate(&mut self, value: &Spanned<DeValue<'_>>, table: &str) -> Option<Rate> {
        let text = self.string(value, "rate", table, EXPECT_RATE)?;
        let reason = match parse_rate(&text) {
            Ok(rate) if rate.per > MAX_DURATION => "the period must be at most 365d".to_string(),
            Ok(rate) => return Some(rate),
            Err(RateProblem::Shape) => RATE_SHAPE.to_string(),
            Err(RateProblem::Count) => {
                format!("the count before \"/\" must be a whole number; {RATE_SHAPE}")
            }
            Err(RateProblem::ZeroCount) => {
                "the count must be at least 1; for a slow resource write a longer period, such as \"1/m\"".to_string()
            }
            Err(RateProblem::CountTooLarge) => {
                format!("the count must be at most {}", u32::MAX)
            }
            Err(RateProblem::Period(keel_model::DurationError::UnknownUnit { unit, .. })) => {
                format!(
                    "unknown unit {unit:?} in the period; units are ms, s, m, h and d, as in \"20/s\" or \"5/10s\""
                )
            }
            Err(RateProblem::Period(keel_model::DurationError::Overflow(_))) => {
                "the period must be at most 365d".to_string()
            }
            Err(RateProblem::Period(_)) => {
                format!("the period after \"/\" is not a duration; {RATE_SHAPE}")
            }
            Err(RateProblem::ZeroPeriod) => "the period must be longer than zero".to_string(),
        };
        self.errors.push(ConfigError::InvalidRate {
            table: table.to_string(),
            value: text,
            reason,
            location: self.location(&value.span()),
        });
        None
    }

    /// `quota = "<count>/day"` or `"<count>/month"`: calendar periods, not durations, because a
    /// provider's quota resets at the start of a day or a month, not a rolling window.
    fn quota(&mut self, value: &Spanned<DeValue<'_>>, table: &str) -> Option<(u32, QuotaPeriod)> {
        let text = self.string(value, "quota", table, EXPECT_QUOTA)?;
        let reason = match text.split_once('/') {
            None => QUOTA_SHAPE.to_string(),
            Some((count, period)) => {
                let (count, period) = (count.trim(), period.trim());
                let period = match period {
                    "day" | "d" => Some(QuotaPeriod::Day),
                    "month" => Some(QuotaPeriod::Month),
                    _ => None,
                };
                match (count.parse::<u32>(), period) {
                    (Ok(0), Some(_)) => "the count must be at least 1".to_string(),
                    (Ok(limit), Some(period)) => return Some((limit, period)),
                    (Err(_), Some(_))
                        if count.bytes().all(|byte| byte.is_ascii_digit()) && !count.is_empty() =>
                    {
                        format!("the count must be at most {}", u32::MAX)
                    }
                    (Err(_), Some(_)) => {
                        format!("the count before \"/\" must be a whole number; {QUOTA_SHAPE}")
                    }
                    (_, None) => format!(
                        "a quota counts per calendar day or month, in the pipeline's time zone; {QUOTA_SHAPE} (for a rolling window use \"rate\")"
                    ),
                }
            }
        };
        self.errors.push(ConfigError::InvalidQuota {
            table: table.to_string(),
            value: text,
            reason,
            location: self.location(&value.span()),
        });
        None
    }

    /// A percentage string (`"60%"`) or a number (`0.6`), as a share in the given range.
    pub(super) fn share(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        field: &str,
        table: &str,
        range: ShareRange,
    ) -> Option<f64> {
        let span = value.span();
        let (share, shown, suggestion) = match value.get_ref() {
            DeValue::String(text) => match parse_percentage(text) {
                Some(share) => (share, format!("{:?}", text.as_ref()), None),
                None => {
                    self.errors.push(ConfigError::InvalidPercentage {
                        field: field.to_string(),
                        table: table.to_string(),
                        value: text.to_string(),
                        location: self.location(&span),
                    });
                    return None;
                }
            },
            DeValue::Float(float) => {
                let share = float.as_str().parse::<f64>().unwrap_or(f64::NAN);
                let shown = written(self, &span).to_string();
                (share, shown, percentage_suggestion(share))
            }
            DeValue::Integer(integer) => {
                // Too large for an i128 is far out of range either way.
                let share = i128::from_str_radix(integer.as_str(), integer.radix())
                    .map_or(f64::INFINITY, |number| number as f64);
                let shown = written(self, &span).to_string();
                (share, shown, percentage_suggestion(share))
            }
            _ => {
                self.wrong_type(value, field, table, EXPECT_SHARE);
                return None;
            }
        };
        let (in_range, bound) = match range {
            ShareRange::ZeroToOne => ((0.0..=1.0).contains(&share), "between 0% and 100%"),
            ShareRange::AboveZeroToOne => {
                (share > 0.0 && share <= 1.0, "above 0% and at most 100%")
            }
        };
        if in_range {
            return Some(share);
        }
        self.errors.push(ConfigError::ShareOutOfRange {
            field: field.to_string(),
            table: table.to_string(),
            value: shown,
            bound,
            suggestion,
            location: self.location(&span),
        });
        None
    }

    fn breaker(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        resource_path: &str,
    ) -> Option<BreakerSpec> {
        let path = format!("{resource_path}.breaker");
        let table = self.table(value, "breaker", resource_path)?;
        let mut breaker = BreakerSpec {
            failures: DEFAULT_BREAKER_FAILURES,
            ratio: None,
            window: DEFAULT_BREAKER_WINDOW,
            cooldown: DEFAULT_BREAKER_COOLDOWN,
            max_open: DEFAULT_BREAKER_MAX_OPEN,
        };
        for (key, value) in entries(table) {
            let field = key.get_ref().as_ref();
            match field {
                "failures" => {
                    if let Some(failures) = self.positive_integer(value, field, &path) {
                        breaker.failures = failures;
                    }
                }
                "ratio" => {
                    breaker.ratio = self.share(value, field, &path, ShareRange::AboveZeroToOne);
                }
                "window" => {
                    if let Some(window) = self.positive_integer(value, field, &path) {
                        breaker.window = window;
                    }
                    // The window only measures the ratio; alone it would silently do nothing.
                    if !table.contains_key("ratio") {
                        self.errors.push(ConfigError::Ineffective {
                            field: field.to_string(),
                            table: path.clone(),
                            needs: "ratio",
                            example: "ratio = \"50%\"",
                            location: self.location(&key.span()),
                        });
                    }
                }
                "cooldown" => {
                    if let Some(cooldown) = self.duration(value, field, &path, false) {
                        breaker.cooldown = cooldown;
                    }
                }
                "max_open" => {
                    if let Some(max_open) = self.duration(value, field, &path, false) {
                        breaker.max_open = max_open;
                    }
                }
                _ => self.unknown_field(key, &path, BREAKER_FIELDS, &[]),
            }
        }
        Some(breaker)
    }

    fn retry_budget(
        &mut self,
        key: &Spanned<DeString<'_>>,
        value: &Spanned<DeValue<'_>>,
        resource_path: &str,
    ) -> Option<RetryBudgetSpec> {
        let path = format!("{resource_path}.retry_budget");
        let table = self.table(value, "retry_budget", resource_path)?;
        let mut ratio = None;
        let mut window = DEFAULT_RETRY_BUDGET_WINDOW;
        let mut min = DEFAULT_RETRY_BUDGET_MIN;
        for (key, value) in entries(table) {
            let field = key.get_ref().as_ref();
            match field {
                "ratio" => ratio = self.share(value, field, &path, ShareRange::AboveZeroToOne),
                "window" => {
                    if let Some(duration) = self.duration(value, field, &path, false) {
                        window = duration;
                    }
                }
                "min" => {
                    if let Some(count) = self.integer_at_least(value, field, &path, 0) {
                        min = count;
                    }
                }
                _ => self.unknown_field(key, &path, RETRY_BUDGET_FIELDS, &[]),
            }
        }
        if !table.contains_key("ratio") {
            self.errors.push(ConfigError::MissingField {
                field: "ratio".to_string(),
                table: path,
                location: self.location(&key.span()),
            });
        }
        Some(RetryBudgetSpec {
            ratio: ratio?,
            window,
            min,
        })
    }

    pub(super) fn gate(
        &mut self,
        key: &Spanned<DeString<'_>>,
        value: &Spanned<DeValue<'_>>,
        phase_path: &str,
        phase: &str,
    ) -> Option<RawGate> {
        let path = format!("{phase_path}.gate");
        let table = self.table(value, "gate", phase_path)?;
        let mut gate = RawGate {
            required: Vec::new(),
            min: None,
            grace: None,
            tiers: Vec::new(),
        };
        let mut misspelt = false;
        for (key, value) in entries(table) {
            let field = key.get_ref().as_ref();
            match field {
                "required" => {
                    let context = NameListContext {
                        field,
                        table: &path,
                        list: "gate's required list",
                        owner_kind: NameKind::Phase,
                        owner: phase,
                    };
                    gate.required = self.name_list(value, &context);
                }
                "min" => gate.min = self.share(value, field, &path, ShareRange::ZeroToOne),
                "grace" => gate.grace = self.duration(value, field, &path, true),
                "tiers" => gate.tiers = self.tiers(key, value, &path, phase),
                _ => {
                    misspelt = true;
                    self.unknown_field(key, &path, GATE_FIELDS, &[]);
                }
            }
        }
        // A gate with neither would let downstream start at once, which is never what a gate
        // is written for. A `required` of the wrong type has its own error already, and so
        // does a misspelt field, which is most likely the missing one.
        let requires_tasks = table.get("required").is_some_and(
            |required| !matches!(required.get_ref(), DeValue::Array(items) if items.is_empty()),
        );
        if table.contains_key("tiers") {
            self.tiers_alone(key, table, phase);
        } else if !requires_tasks && !table.contains_key("min") && !misspelt {
            self.errors.push(ConfigError::GateWithoutCondition {
                phase: phase.to_string(),
                location: self.location(&key.span()),
            });
        }
        Some(gate)
    }

    /// `wait_for`: one sensor table, or a list of them that must all pass, in order.
    pub(super) fn sensors(
        &mut self,
        key: &Spanned<DeString<'_>>,
        value: &Spanned<DeValue<'_>>,
        task_path: &str,
        task: &str,
    ) -> Vec<RawSensor> {
        let DeValue::Array(items) = value.get_ref() else {
            let path = format!("{task_path}.wait_for");
            return self
                .sensor(key, value, task_path, &path, task)
                .into_iter()
                .collect();
        };
        if items.is_empty() {
            self.errors.push(ConfigError::EmptyValue {
                field: "wait_for".to_string(),
                table: task_path.to_string(),
                hint: "name at least one sensor, such as wait_for = [{ command = [\"test\", \"-e\", \"data/{date}.csv\"] }], or remove wait_for",
                location: self.location(&value.span()),
            });
            return Vec::new();
        }
        let mut sensors = Vec::new();
        for (index, item) in items.iter().enumerate() {
            let path = format!("{task_path}.wait_for[{index}]");
            if let Some(sensor) = self.sensor(key, item, task_path, &path, task) {
                sensors.push(sensor);
            }
        }
        sensors
    }

    fn sensor(
        &mut self,
        key: &Spanned<DeString<'_>>,
        value: &Spanned<DeValue<'_>>,
        task_path: &str,
        path: &str,
        task: &str,
    ) -> Option<RawSensor> {
        let path = path.to_string();
        let table = self.table(value, "wait_for", task_path)?;
        let mut sensor = RawSensor::default();
        for (key, value) in entries(table) {
            let field = key.get_ref().as_ref();
            match field {
                "command" => {
                    sensor.command = self.command(value, &path, task, CommandKind::Sensor);
                }
                "http" => sensor.http = self.http(key, value, &path, task),
                "every" => sensor.every = self.duration(value, field, &path, false),
                "max" => sensor.max = self.duration(value, field, &path, false),
                "deadline" => sensor.deadline = self.duration(value, field, &path, false),
                _ => self.unknown_field(key, &path, SENSOR_FIELDS, &[]),
            }
        }
        match (table.contains_key("command"), table.contains_key("http")) {
            (false, false) => self.errors.push(ConfigError::MissingField {
                field: "command".to_string(),
                table: path.clone(),
                location: self.location(&key.span()),
            }),
            (true, true) => self.errors.push(ConfigError::InvalidHttp {
                owner: format!("task {task:?}"),
                field: "wait_for.http".to_string(),
                reason: "the sensor has both a command and http; keep one".to_string(),
                location: self.location(&key.span()),
            }),
            _ => {}
        }
        let every_written = table.get("every");
        // Compare only valid values: a bad `every` already has its own error.
        if let (Some(max), Some(max_value)) = (sensor.max, table.get("max"))
            && (sensor.every.is_some() || every_written.is_none())
        {
            let every = sensor.every.unwrap_or(DEFAULT_SENSOR_EVERY);
            if max < every {
                let text = |value: &Spanned<DeValue<'_>>| {
                    value.get_ref().as_str().unwrap_or_default().to_string()
                };
                self.errors.push(ConfigError::SensorMaxBelowEvery {
                    table: path,
                    max: text(max_value),
                    every: every_written.map_or_else(|| "1m".to_string(), text),
                    every_is_default: every_written.is_none(),
                    location: self.location(&max_value.span()),
                });
            }
        }
        Some(sensor)
    }

    /// Every task a gate requires exists and belongs to the gate's phase.
    pub(super) fn check_gates(&mut self, phases: &[RawPhase], tasks: &[RawTask]) {
        for phase in phases {
            let Some(gate) = &phase.gate else {
                continue;
            };
            let phase_name = phase.name.name.as_str();
            let in_phase = |task: &&RawTask| {
                task.phase
                    .as_ref()
                    .is_some_and(|own| own.name == phase_name)
            };
            let in_tiers = gate.tiers.iter().flat_map(|tier| &tier.required);
            for required in gate.required.iter().chain(in_tiers) {
                match tasks.iter().find(|task| task.name.name == required.name) {
                    None => self.errors.push(ConfigError::UnknownGateTask {
                        phase: phase_name.to_string(),
                        task: required.name.clone(),
                        suggestion: closest(
                            &required.name,
                            tasks
                                .iter()
                                .filter(in_phase)
                                .map(|task| task.name.name.as_str()),
                        ),
                        location: self.location(&required.span),
                    }),
                    Some(task) => {
                        // A task without a phase, or with an unknown one, has its own error.
                        if let Some(task_phase) = &task.phase
                            && task_phase.name != phase_name
                            && phases
                                .iter()
                                .any(|other| other.name.name == task_phase.name)
                        {
                            self.errors.push(ConfigError::GateTaskInOtherPhase {
                                phase: phase_name.to_string(),
                                task: required.name.clone(),
                                task_phase: task_phase.name.clone(),
                                location: self.location(&required.span),
                            });
                        }
                    }
                }
            }
        }
    }

    /// Every resource a task uses is defined.
    pub(super) fn check_uses(&mut self, resources: &[RawResource], tasks: &[RawTask]) {
        for task in tasks {
            for used in &task.uses {
                if resources
                    .iter()
                    .any(|resource| resource.name.name == used.name)
                {
                    continue;
                }
                self.errors.push(ConfigError::UnknownResource {
                    task: task.name.name.clone(),
                    resource: used.name.clone(),
                    suggestion: closest(
                        &used.name,
                        resources.iter().map(|resource| resource.name.name.as_str()),
                    ),
                    location: self.location(&used.span),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_a_percentage_only_for_whole_numbers_that_read_like_one() {
        assert_eq!(percentage_suggestion(60.0).as_deref(), Some("60%"));
        assert_eq!(percentage_suggestion(100.0).as_deref(), Some("100%"));
        assert_eq!(percentage_suggestion(1.5), None);
        assert_eq!(percentage_suggestion(1.0), None);
        assert_eq!(percentage_suggestion(150.0), None);
        assert_eq!(percentage_suggestion(-5.0), None);
    }
}
