//! The timing fields of a task: `not_ready = { every = "2h", max = 12 }`, the policy for
//! attempts that end *not ready*, apart from `retries`.

use keel_model::NotReadyPolicy;
use toml::Spanned;
use toml::de::{DeString, DeValue};

use super::{Checker, entries};
use crate::error::ConfigError;

const NOT_READY_FIELDS: &[&str] = &["every", "max"];

impl Checker<'_> {
    /// `not_ready = { … }` of the task whose table is `task_path`. Both fields are required:
    /// there is no default for how often a source is worth asking.
    pub(super) fn not_ready(
        &mut self,
        key: &Spanned<DeString<'_>>,
        value: &Spanned<DeValue<'_>>,
        task_path: &str,
    ) -> Option<NotReadyPolicy> {
        let path = format!("{task_path}.not_ready");
        let table = self.table(value, "not_ready", task_path)?;
        let mut every = None;
        let mut max = None;
        let mut valid = true;
        for (field_key, field_value) in entries(table) {
            let field = field_key.get_ref().as_ref();
            match field {
                "every" => {
                    every = self.duration(field_value, field, &path, false);
                    valid &= every.is_some();
                }
                "max" => {
                    max = self.positive_integer(field_value, field, &path);
                    valid &= max.is_some();
                }
                _ => {
                    valid = false;
                    self.unknown_field(field_key, &path, NOT_READY_FIELDS, &[]);
                }
            }
        }
        for field in NOT_READY_FIELDS {
            if !table.contains_key(*field) {
                valid = false;
                self.errors.push(ConfigError::MissingField {
                    field: field.to_string(),
                    table: path.clone(),
                    location: self.location(&key.span()),
                });
            }
        }
        match (every, max) {
            (Some(every), Some(max)) if valid => Some(NotReadyPolicy { every, max }),
            _ => None,
        }
    }
}
