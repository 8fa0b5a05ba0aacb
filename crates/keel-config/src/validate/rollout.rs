//! A task's versioning fields: `version = [...]` (a command whose output tells the task's code
//! apart), `code = ["path", …]` (files whose digests do) and `rollout = { canary, promote_after,
//! max_failure_rate, min_metrics }` (how a new version goes live).

use std::collections::BTreeMap;

use keel_model::RolloutSpec;
use toml::Spanned;
use toml::de::{DeString, DeValue};

use super::resilience::ShareRange;
use super::{Checker, entries};
use crate::error::ConfigError;

const ROLLOUT_FIELDS: &[&str] = &["canary", "promote_after", "max_failure_rate", "min_metrics"];
/// The canary's share when `canary` is not written.
const DEFAULT_CANARY_PERCENT: u8 = 10;
/// Clean canary attempts before a promotion when `promote_after` is not written.
const DEFAULT_PROMOTE_AFTER: u32 = 3;
const EXPECT_CODE: &str = "a list of file paths such as [\"bin/load.py\"]";
const EXPECT_METRIC: &str = "a number such as 0.4";

impl Checker<'_> {
    /// `code = ["path", …]`: non-empty paths, each once.
    pub(super) fn code_files(&mut self, value: &Spanned<DeValue<'_>>, path: &str) -> Vec<String> {
        let DeValue::Array(items) = value.get_ref() else {
            self.wrong_type(value, "code", path, EXPECT_CODE);
            return Vec::new();
        };
        let mut files: Vec<String> = Vec::new();
        for (position, item) in items.iter().enumerate() {
            let field = format!("code[{position}]");
            let Some(file) = self.string(item, &field, path, EXPECT_CODE) else {
                continue;
            };
            let reason = if file.trim().is_empty() {
                Some("the path is empty; name a file, relative to the pipeline file's folder")
            } else if file.contains('\0') {
                Some("the path holds a NUL byte; remove it")
            } else if file.contains('{') {
                Some("a code path is read before any run, so it cannot hold templates")
            } else if files.contains(&file) {
                Some("it is listed twice; remove the repeat")
            } else {
                None
            };
            match reason {
                Some(reason) => self.errors.push(ConfigError::InvalidVersioning {
                    task: path.trim_start_matches("tasks.").to_string(),
                    field,
                    reason: reason.to_string(),
                    location: self.location(&item.span()),
                }),
                None => files.push(file),
            }
        }
        files
    }

    /// `rollout = { … }` of the task whose table is `task_path`.
    pub(super) fn rollout(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        task_path: &str,
    ) -> Option<RolloutSpec> {
        let path = format!("{task_path}.rollout");
        let table = self.table(value, "rollout", task_path)?;
        let mut rollout = RolloutSpec {
            canary_percent: DEFAULT_CANARY_PERCENT,
            promote_after: DEFAULT_PROMOTE_AFTER,
            max_failure_rate: 0.0,
            min_metrics: BTreeMap::new(),
        };
        let mut valid = true;
        for (key, field_value) in entries(table) {
            let field = key.get_ref().as_ref();
            match field {
                "canary" => {
                    match self.share(field_value, field, &path, ShareRange::AboveZeroToOne) {
                        Some(share) if share * 100.0 >= 1.0 - 1e-9 => {
                            rollout.canary_percent = (share * 100.0).round().clamp(1.0, 100.0) as u8
                        }
                        Some(_) => {
                            valid = false;
                            self.errors.push(ConfigError::InvalidVersioning {
                                task: task_path.trim_start_matches("tasks.").to_string(),
                                field: "rollout.canary".to_string(),
                                reason: "the canary's share is in whole percentages, at least 1%"
                                    .to_string(),
                                location: self.location(&field_value.span()),
                            });
                        }
                        None => valid = false,
                    }
                }
                "promote_after" => match self.positive_integer(field_value, field, &path) {
                    Some(count) => rollout.promote_after = count,
                    None => valid = false,
                },
                "max_failure_rate" => {
                    match self.share(field_value, field, &path, ShareRange::ZeroToOne) {
                        Some(rate) => rollout.max_failure_rate = rate,
                        None => valid = false,
                    }
                }
                "min_metrics" => match self.min_metrics(key, field_value, &path) {
                    Some(floors) => rollout.min_metrics = floors,
                    None => valid = false,
                },
                _ => {
                    valid = false;
                    self.unknown_field(key, &path, ROLLOUT_FIELDS, &[]);
                }
            }
        }
        valid.then_some(rollout)
    }

    /// `min_metrics = { accuracy = 0.4 }`: a finite number per metric name.
    fn min_metrics(
        &mut self,
        _key: &Spanned<DeString<'_>>,
        value: &Spanned<DeValue<'_>>,
        rollout_path: &str,
    ) -> Option<BTreeMap<String, f64>> {
        let path = format!("{rollout_path}.min_metrics");
        let table = self.table(value, "min_metrics", rollout_path)?;
        let mut floors = BTreeMap::new();
        let mut valid = true;
        for (key, floor) in entries(table) {
            let name = key.get_ref().to_string();
            let number = match floor.get_ref() {
                DeValue::Float(float) => float.as_str().parse::<f64>().ok(),
                DeValue::Integer(integer) => {
                    i128::from_str_radix(integer.as_str(), integer.radix())
                        .ok()
                        .map(|number| number as f64)
                }
                _ => {
                    self.wrong_type(floor, &name, &path, EXPECT_METRIC);
                    valid = false;
                    continue;
                }
            };
            match number.filter(|number| number.is_finite()) {
                Some(number) => {
                    floors.insert(name, number);
                }
                None => {
                    valid = false;
                    self.errors.push(ConfigError::InvalidVersioning {
                        task: rollout_path
                            .trim_start_matches("tasks.")
                            .trim_end_matches(".rollout")
                            .to_string(),
                        field: format!("rollout.min_metrics.{name}"),
                        reason: "a metric's floor must be a finite number such as 0.4".to_string(),
                        location: self.location(&floor.span()),
                    });
                }
            }
        }
        valid.then_some(floors)
    }
}
