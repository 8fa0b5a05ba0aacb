//! `checks = [...]` of a task: bounds on the `rows` or a metric of what a succeeded attempt
//! reports, each `block` (the attempt ends `failed_check`) or `warn` (recorded and alerted).
//!
//! A phase's `checks = [{ complete = "90%", severity = "warn" }]` bound the share of its tasks
//! that completed when a run ends.
//!
//! ```toml
//! checks = [
//!   { metric = "accuracy", min = 0.30, severity = "block" },
//!   { rows = { min = 200 }, severity = "warn" },
//! ]
//! ```

use keel_model::{CheckSpec, CheckTarget, PhaseCheck, Severity};
use toml::Spanned;
use toml::de::{DeString, DeValue};

use super::resilience::ShareRange;
use super::{Checker, EXPECT_STRING, entries};
use crate::error::ConfigError;

const CHECK_FIELDS: &[&str] = &["metric", "rows", "min", "max", "severity", "heal"];
const ROWS_FIELDS: &[&str] = &["min", "max"];
const SEVERITIES: &[&str] = &["block", "warn"];
const PHASE_CHECK_FIELDS: &[&str] = &["complete", "severity"];
const EXPECT_NUMBER: &str = "a number such as 0.3 or 200";

impl Checker<'_> {
    /// The task's `checks`; the valid ones (the errors name the others).
    pub(super) fn checks(
        &mut self,
        key: &Spanned<DeString<'_>>,
        value: &Spanned<DeValue<'_>>,
        task_path: &str,
        task: &str,
    ) -> Vec<CheckSpec> {
        let DeValue::Array(items) = value.get_ref() else {
            self.wrong_type(
                value,
                key.get_ref().as_ref(),
                task_path,
                "a list of checks such as [{ metric = \"accuracy\", min = 0.3 }]",
            );
            return Vec::new();
        };
        items
            .iter()
            .enumerate()
            .filter_map(|(index, item)| self.check(item, index, task_path, task))
            .collect()
    }

    fn check(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        index: usize,
        task_path: &str,
        task: &str,
    ) -> Option<CheckSpec> {
        let field = format!("checks[{index}]");
        let path = format!("{task_path}.{field}");
        let table = self.table(value, &field, task_path)?;
        let errors_before = self.errors.len();
        let mut target = None;
        let mut bounds = (None, None);
        let mut rows_bounds = (None, None);
        let mut severity = Severity::Block;
        let mut heal = Vec::new();
        for (key, item) in entries(table) {
            let name = key.get_ref().as_ref();
            match name {
                "metric" => {
                    if let Some(metric) = self.string(item, name, &path, EXPECT_STRING) {
                        if metric.trim().is_empty() {
                            self.invalid_check(
                                task,
                                format!("{field}.metric"),
                                "the metric name is empty; name a number of the result file's metrics, such as \"accuracy\"",
                                item,
                            );
                        } else {
                            target = Some(CheckTarget::Metric(metric));
                        }
                    }
                }
                "rows" => {
                    target = Some(CheckTarget::Rows);
                    if let Some(rows) = self.table(item, name, &path) {
                        let rows_path = format!("{path}.rows");
                        for (bound_key, bound) in entries(rows) {
                            match bound_key.get_ref().as_ref() {
                                "min" => {
                                    rows_bounds.0 = self.check_number(bound, "min", &rows_path)
                                }
                                "max" => {
                                    rows_bounds.1 = self.check_number(bound, "max", &rows_path)
                                }
                                _ => self.unknown_field(bound_key, &rows_path, ROWS_FIELDS, &[]),
                            }
                        }
                    }
                }
                "min" => bounds.0 = self.check_number(item, name, &path),
                "max" => bounds.1 = self.check_number(item, name, &path),
                "severity" => {
                    if let Some(choice) = self.choice(item, name, &path, SEVERITIES) {
                        severity = if choice == "warn" {
                            Severity::Warn
                        } else {
                            Severity::Block
                        };
                    }
                }
                "heal" => heal = self.heal_list(item, &field, &path, task),
                _ => self.unknown_field(key, &path, CHECK_FIELDS, &[]),
            }
        }
        let both = table.contains_key("metric") && table.contains_key("rows");
        if both {
            self.invalid_check(
                task,
                field.clone(),
                "it names both a metric and rows; write one check for each",
                value,
            );
        }
        let (min, max) = match &target {
            Some(CheckTarget::Rows) => {
                if !both && (bounds.0.is_some() || bounds.1.is_some()) {
                    self.invalid_check(
                        task,
                        field.clone(),
                        "the bounds of rows go inside it: rows = { min = 200 }",
                        value,
                    );
                }
                rows_bounds
            }
            _ => bounds,
        };
        if !table.contains_key("metric") && !table.contains_key("rows") {
            self.invalid_check(
                task,
                field.clone(),
                "it checks nothing; add metric = \"NAME\" with min or max, or rows = { min = 200 }",
                value,
            );
        } else if self.errors.len() == errors_before && min.is_none() && max.is_none() {
            self.invalid_check(
                task,
                field.clone(),
                "it has no bound; add min, max or both",
                value,
            );
        }
        if let (Some(low), Some(high)) = (min, max)
            && low > high
        {
            self.invalid_check(
                task,
                field.clone(),
                &format!("min ({low}) is above max ({high}), so no value could pass; swap them"),
                value,
            );
        }
        let target = target?;
        (self.errors.len() == errors_before).then_some(CheckSpec {
            target,
            min,
            max,
            severity,
            heal,
        })
    }

    /// A bound: an integer or a finite float.
    fn check_number(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        field: &str,
        table: &str,
    ) -> Option<f64> {
        let number = match value.get_ref() {
            DeValue::Integer(integer) => i128::from_str_radix(integer.as_str(), integer.radix())
                .ok()
                .map(|number| number as f64),
            DeValue::Float(float) => float.to_string().parse::<f64>().ok(),
            _ => {
                self.wrong_type(value, field, table, EXPECT_NUMBER);
                return None;
            }
        };
        match number {
            Some(number) if number.is_finite() => Some(number),
            _ => {
                self.errors.push(ConfigError::OutOfRange {
                    field: field.to_string(),
                    table: table.to_string(),
                    value: self.map_text(value),
                    bound: "a finite number".to_string(),
                    location: self.location(&value.span()),
                });
                None
            }
        }
    }

    fn invalid_check(
        &mut self,
        task: &str,
        field: String,
        reason: &str,
        value: &Spanned<DeValue<'_>>,
    ) {
        self.errors.push(ConfigError::InvalidCheck {
            task: task.to_string(),
            field,
            reason: reason.to_string(),
            location: self.location(&value.span()),
        });
    }

    fn map_text(&self, value: &Spanned<DeValue<'_>>) -> String {
        match value.get_ref() {
            DeValue::Float(float) => float.to_string(),
            DeValue::Integer(integer) => integer.to_string(),
            other => other.type_str().to_string(),
        }
    }
}

impl Checker<'_> {
    /// A phase's `checks = [{ complete = "90%", severity = "warn" }]`.
    pub(super) fn phase_checks(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        phase_path: &str,
    ) -> Vec<PhaseCheck> {
        let DeValue::Array(items) = value.get_ref() else {
            self.wrong_type(
                value,
                "checks",
                phase_path,
                "a list of checks such as [{ complete = \"90%\", severity = \"warn\" }]",
            );
            return Vec::new();
        };
        let mut checks = Vec::new();
        for (index, item) in items.iter().enumerate() {
            let field = format!("checks[{index}]");
            let path = format!("{phase_path}.{field}");
            let Some(table) = self.table(item, &field, phase_path) else {
                continue;
            };
            let errors_before = self.errors.len();
            let mut min_share = None;
            let mut severity = Severity::Block;
            for (key, entry) in entries(table) {
                let name = key.get_ref().as_ref();
                match name {
                    "complete" => {
                        min_share = self.share(entry, name, &path, ShareRange::AboveZeroToOne);
                    }
                    "severity" => {
                        if self.choice(entry, name, &path, SEVERITIES) == Some("warn") {
                            severity = Severity::Warn;
                        }
                    }
                    _ => self.unknown_field(key, &path, PHASE_CHECK_FIELDS, &[]),
                }
            }
            if !table.contains_key("complete") {
                self.errors.push(ConfigError::MissingField {
                    field: "complete".to_string(),
                    table: path.clone(),
                    location: self.location(&item.span()),
                });
            }
            if let Some(min_share) = min_share
                && self.errors.len() == errors_before
            {
                checks.push(PhaseCheck {
                    min_share,
                    severity,
                });
            }
        }
        checks
    }
}
