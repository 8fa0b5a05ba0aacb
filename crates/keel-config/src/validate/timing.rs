//! The timing fields of a task: `not_ready = { every = "2h", max = 12 }`, the policy for
//! attempts that end *not ready*, apart from `retries`; `repeat = { every, from, until }`, a
//! task run again and again inside a window of the partition's date; `freeze_after`, when Keel
//! stops running a task again on its own.

use std::time::Duration;

use keel_model::{NotReadyPolicy, PartitionKind, RepeatSpec, TimeOfDay};
use toml::Spanned;
use toml::de::{DeString, DeValue};

use super::{Checker, EXPECT_STRING, NameRef, RawTask, entries};
use crate::error::ConfigError;
use crate::suggest::closest;

const NOT_READY_FIELDS: &[&str] = &["every", "max"];
const REPEAT_FIELDS: &[&str] = &["every", "from", "until"];

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

impl Checker<'_> {
    /// `repeat = { every, from, until }` of the task `task`, whose table is `task_path`. All
    /// three are required, the window must not be empty, and the pipeline's partitions must be
    /// dates: the window is on the partition's date.
    pub(super) fn repeat(
        &mut self,
        key: &Spanned<DeString<'_>>,
        value: &Spanned<DeValue<'_>>,
        task_path: &str,
        task: &str,
    ) -> Option<RepeatSpec> {
        let path = format!("{task_path}.repeat");
        let table = self.table(value, "repeat", task_path)?;
        let mut every = None;
        let mut from = None;
        let mut until = None;
        let mut valid = true;
        for (field_key, field_value) in entries(table) {
            let field = field_key.get_ref().as_ref();
            match field {
                "every" => {
                    every = self.duration(field_value, field, &path, false);
                    valid &= every.is_some();
                }
                "from" | "until" => {
                    let time = self.time_of_day(field_value, field, &path);
                    valid &= time.is_some();
                    if field == "from" {
                        from = time;
                    } else {
                        until = time;
                    }
                }
                _ => {
                    valid = false;
                    self.unknown_field(field_key, &path, REPEAT_FIELDS, &[]);
                }
            }
        }
        for field in REPEAT_FIELDS {
            if !table.contains_key(*field) {
                valid = false;
                self.errors.push(ConfigError::MissingField {
                    field: field.to_string(),
                    table: path.clone(),
                    location: self.location(&key.span()),
                });
            }
        }
        if let (Some(from), Some(until)) = (from, until)
            && from == until
        {
            valid = false;
            let until_value = table.get("until").expect("read above");
            self.errors.push(ConfigError::InvalidSchedule {
                field: "until".to_string(),
                table: path.clone(),
                value: until.to_string(),
                reason: format!(
                    "the window would be empty, since until is from ({from}); write when it closes, on the next day when it is before from, such as \"02:00\""
                ),
                location: self.location(&until_value.span()),
            });
        }
        if self.partition == PartitionKind::None {
            valid = false;
            self.errors.push(ConfigError::TimeOfDayWithoutDates {
                task: task.to_string(),
                field: "repeat",
                location: self.location(&key.span()),
            });
        }
        match (every, from, until) {
            (Some(every), Some(from), Some(until)) if valid => {
                Some(RepeatSpec { every, from, until })
            }
            _ => None,
        }
    }

    /// `freeze_after` of the task `task`: a local time on the partition's date (`"19:00"`, so
    /// the pipeline's partitions must be dates), or `{ task = "grading", delay = "30m" }`, a
    /// time after another task of the run ended (checked by `check_freezes` once every task is
    /// read).
    pub(super) fn freeze_after(
        &mut self,
        key: &Spanned<DeString<'_>>,
        value: &Spanned<DeValue<'_>>,
        task_path: &str,
        task: &str,
    ) -> Option<RawFreeze> {
        if let DeValue::Table(_) = value.get_ref() {
            return self.freeze_after_task(key, value, task_path);
        }
        let time = self.time_of_day(value, "freeze_after", task_path)?;
        if self.partition == PartitionKind::None {
            self.errors.push(ConfigError::TimeOfDayWithoutDates {
                task: task.to_string(),
                field: "freeze_after",
                location: self.location(&key.span()),
            });
            return None;
        }
        Some(RawFreeze::At(time))
    }

    /// `freeze_after = { task = "grading", delay = "30m" }`; `delay` defaults to none.
    fn freeze_after_task(
        &mut self,
        key: &Spanned<DeString<'_>>,
        value: &Spanned<DeValue<'_>>,
        task_path: &str,
    ) -> Option<RawFreeze> {
        let path = format!("{task_path}.freeze_after");
        let table = self.table(value, "freeze_after", task_path)?;
        let mut task = None;
        let mut delay = Some(Duration::ZERO);
        let mut valid = true;
        for (field_key, field_value) in entries(table) {
            let field = field_key.get_ref().as_ref();
            match field {
                "task" => {
                    task = self
                        .string(field_value, field, &path, EXPECT_STRING)
                        .map(|name| NameRef {
                            name,
                            span: field_value.span(),
                        });
                    valid &= task.is_some();
                }
                "delay" => delay = self.duration(field_value, field, &path, true),
                _ => {
                    valid = false;
                    self.unknown_field(field_key, &path, FREEZE_FIELDS, &[]);
                }
            }
        }
        if !table.contains_key("task") {
            self.errors.push(ConfigError::MissingField {
                field: "task".to_string(),
                table: path,
                location: self.location(&key.span()),
            });
            return None;
        }
        let (task, delay) = (task?, delay?);
        valid.then_some(RawFreeze::AfterTask { task, delay })
    }

    /// Each `freeze_after = { task = … }` names another task of the pipeline.
    pub(super) fn check_freezes(&mut self, tasks: &[RawTask]) {
        for task in tasks {
            let Some(RawFreeze::AfterTask { task: other, .. }) = &task.freeze_after else {
                continue;
            };
            let location = self.location(&other.span);
            if other.name == task.name.name {
                self.errors.push(ConfigError::FreezeAfterItself {
                    task: task.name.name.clone(),
                    location,
                });
            } else if !tasks.iter().any(|each| each.name.name == other.name) {
                self.errors.push(ConfigError::FreezeAfterUnknown {
                    task: task.name.name.clone(),
                    other: other.name.clone(),
                    suggestion: closest(
                        &other.name,
                        tasks.iter().map(|each| each.name.name.as_str()),
                    ),
                    location,
                });
            }
        }
    }

    /// A wall-clock time `"HH:MM"`.
    pub(super) fn time_of_day(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        field: &str,
        table: &str,
    ) -> Option<TimeOfDay> {
        let text = self.string(value, field, table, EXPECT_STRING)?;
        if let Some(time) = TimeOfDay::parse(&text) {
            return Some(time);
        }
        self.errors.push(ConfigError::InvalidSchedule {
            field: field.to_string(),
            table: table.to_string(),
            value: text,
            reason: "write a 24-hour local time such as \"19:00\" or \"02:30\"".to_string(),
            location: self.location(&value.span()),
        });
        None
    }
}

/// The fields of `freeze_after = { … }`.
const FREEZE_FIELDS: &[&str] = &["task", "delay"];

/// A task's `freeze_after` as read, before the task it names is checked.
#[derive(Debug, Clone)]
pub(super) enum RawFreeze {
    At(TimeOfDay),
    AfterTask { task: NameRef, delay: Duration },
}

impl RawFreeze {
    pub(super) fn into_spec(self) -> keel_model::FreezeSpec {
        match self {
            RawFreeze::At(time) => keel_model::FreezeSpec::At(time),
            RawFreeze::AfterTask { task, delay } => keel_model::FreezeSpec::AfterTask {
                task: task.name,
                delay,
            },
        }
    }
}
