//! Checks on what a task reports (`checks = [...]` on a task, docs/health.md): bounds on its
//! `rows` or on one of its `metrics`, judged when an attempt that succeeded ends. A `block`
//! check that fails turns the attempt into `failed_check`, which is retried and flows downstream
//! like a failure; a `warn` check that fails is recorded and alerts, and the task goes on.

use std::fmt;

/// What a check bounds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckTarget {
    /// The `rows` of the result file.
    Rows,
    /// One number of the result file's `metrics` object.
    Metric(String),
}

impl fmt::Display for CheckTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckTarget::Rows => f.write_str("rows"),
            CheckTarget::Metric(name) => f.write_str(name),
        }
    }
}

/// What a failed check does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// The attempt ends `failed_check`: retried like a failure, and downstream waits.
    Block,
    /// Recorded and alerted; the task counts as done.
    Warn,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Block => "block",
            Severity::Warn => "warn",
        }
    }
}

/// One check of a task: `{ metric = "accuracy", min = 0.30, severity = "block" }` or
/// `{ rows = { min = 200 }, severity = "warn" }`. At least one bound is set.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CheckSpec {
    pub target: CheckTarget,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    pub severity: Severity,
    /// `heal = ["scrape_boxscores"]`: upstream tasks a failed `block` check asks to run again
    /// before the task runs again (docs/health.md, "Remediation"), within the pipeline's heal
    /// budget. Left out of the task's version when empty, so older checks keep theirs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub heal: Vec<String>,
}

/// A completeness check of a phase: when a run ends, at least `min_share` of the phase's tasks
/// (each item of an expanded task counted on its own) completed.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PhaseCheck {
    /// In `[0, 1]`.
    pub min_share: f64,
    pub severity: Severity,
}

impl PhaseCheck {
    /// Why `complete` of `total` units of `phase` fail the check, or `None` when they pass.
    ///
    /// ```
    /// use keel_model::{PhaseCheck, Severity};
    /// let check = PhaseCheck { min_share: 0.8, severity: Severity::Warn };
    /// assert_eq!(
    ///     check.judge("analytics", 3, 5).as_deref(),
    ///     Some("phase analytics: 3 of 5 complete (60%), below the check's 80%")
    /// );
    /// assert_eq!(check.judge("analytics", 4, 5), None);
    /// ```
    pub fn judge(&self, phase: &str, complete: usize, total: usize) -> Option<String> {
        if total == 0 || complete as f64 >= self.min_share * total as f64 - 1e-9 {
            return None;
        }
        let percent = |share: f64| format!("{}%", (share * 1000.0).round() / 10.0);
        Some(format!(
            "phase {phase}: {complete} of {total} complete ({}), below the check's {}",
            percent(complete as f64 / total as f64),
            percent(self.min_share)
        ))
    }
}

/// A check that did not pass, with what was found.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckFailure {
    pub check: CheckSpec,
    /// The value reported; `None` when the result file did not report it at all.
    pub value: Option<f64>,
}

impl CheckFailure {
    /// One line: `accuracy 0.19 is below the minimum 0.3`, `rows missing from the result`.
    pub fn describe(&self) -> String {
        let target = &self.check.target;
        match self.value {
            None => format!("{target} missing from the result"),
            Some(value) => match (self.check.min, self.check.max) {
                (Some(min), _) if value < min => {
                    format!(
                        "{target} {} is below the minimum {}",
                        number(value),
                        number(min)
                    )
                }
                (_, Some(max)) => {
                    format!(
                        "{target} {} is above the maximum {}",
                        number(value),
                        number(max)
                    )
                }
                _ => format!("{target} {} is out of bounds", number(value)),
            },
        }
    }
}

fn number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

/// The checks of `checks` that fail for an attempt that reported `rows` and `metrics` (the
/// result file's `metrics` object as JSON text). A value the result did not report fails its
/// check: a task that stopped reporting accuracy is not a task whose accuracy is fine.
///
/// ```
/// use keel_model::{CheckSpec, CheckTarget, Severity, failed_checks};
/// let accuracy = CheckSpec {
///     target: CheckTarget::Metric("accuracy".into()),
///     min: Some(0.3),
///     max: None,
///     severity: Severity::Block,
///     heal: Vec::new(),
/// };
/// let checks = [accuracy];
/// let failed = failed_checks(&checks, Some(12), Some(r#"{"accuracy":0.19}"#));
/// assert_eq!(failed[0].describe(), "accuracy 0.19 is below the minimum 0.3");
/// assert!(failed_checks(&checks, Some(12), Some(r#"{"accuracy":0.4}"#)).is_empty());
/// ```
pub fn failed_checks(
    checks: &[CheckSpec],
    rows: Option<i64>,
    metrics: Option<&str>,
) -> Vec<CheckFailure> {
    let metrics = metrics.and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok());
    checks
        .iter()
        .filter_map(|check| {
            let value = match &check.target {
                CheckTarget::Rows => rows.map(|rows| rows as f64),
                CheckTarget::Metric(name) => metrics
                    .as_ref()
                    .and_then(|metrics| metrics.get(name))
                    .and_then(serde_json::Value::as_f64),
            };
            let passes = value.is_some_and(|value| {
                check.min.is_none_or(|min| value >= min) && check.max.is_none_or(|max| value <= max)
            });
            (!passes).then(|| CheckFailure {
                check: check.clone(),
                value,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(target: CheckTarget, min: Option<f64>, max: Option<f64>) -> CheckSpec {
        CheckSpec {
            target,
            min,
            max,
            severity: Severity::Warn,
            heal: Vec::new(),
        }
    }

    #[test]
    fn bounds_are_inclusive_and_missing_values_fail() {
        let rows = check(CheckTarget::Rows, Some(200.0), Some(1000.0));
        assert!(failed_checks(std::slice::from_ref(&rows), Some(200), None).is_empty());
        assert!(failed_checks(std::slice::from_ref(&rows), Some(1000), None).is_empty());
        let low = failed_checks(std::slice::from_ref(&rows), Some(150), None);
        assert_eq!(low[0].describe(), "rows 150 is below the minimum 200");
        let high = failed_checks(std::slice::from_ref(&rows), Some(1001), None);
        assert_eq!(high[0].describe(), "rows 1001 is above the maximum 1000");
        let missing = failed_checks(&[rows], None, Some("{}"));
        assert_eq!(missing[0].describe(), "rows missing from the result");
    }

    #[test]
    fn a_metric_that_is_not_a_number_fails() {
        let accuracy = check(CheckTarget::Metric("accuracy".into()), Some(0.3), None);
        let text = failed_checks(
            std::slice::from_ref(&accuracy),
            None,
            Some(r#"{"accuracy":"high"}"#),
        );
        assert_eq!(text[0].value, None);
        assert!(failed_checks(&[accuracy], None, Some(r#"{"accuracy":0.3}"#)).is_empty());
    }
}
