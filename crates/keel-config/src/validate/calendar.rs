//! A task's calendar, `when = { weekdays = ["sun", "wed"], command = [...] }`: known weekday
//! names, each once, at least one, and only in a pipeline whose partitions are dates; a command
//! as a task's, with its templates.

use keel_model::{CalendarSpec, PartitionKind, WEEKDAY_NAMES, parse_weekday};
use toml::Spanned;
use toml::de::{DeString, DeValue};

use super::{Checker, CommandKind, EXPECT_STRING, entries};
use crate::error::ConfigError;
use crate::suggest::closest;

const WHEN_FIELDS: &[&str] = &["weekdays", "command"];
const EXPECT_WEEKDAYS: &str = "a list of weekdays such as [\"sun\", \"wed\"]";

impl Checker<'_> {
    /// `when = { … }` of task `task`; `task_path` is the task's table.
    pub(super) fn calendar(
        &mut self,
        key: &Spanned<DeString<'_>>,
        value: &Spanned<DeValue<'_>>,
        task_path: &str,
        task: &str,
    ) -> Option<CalendarSpec> {
        let path = format!("{task_path}.when");
        let table = self.table(value, "when", task_path)?;
        let mut weekdays = Some(Vec::new());
        let mut command = None;
        let mut valid = true;
        for (field_key, field_value) in entries(table) {
            match field_key.get_ref().as_ref() {
                "weekdays" => weekdays = self.weekdays(field_value, &path, task),
                "command" => {
                    command = self.command(field_value, &path, task, CommandKind::Calendar);
                    valid &= command.is_some();
                }
                _ => {
                    valid = false;
                    self.unknown_field(field_key, &path, WHEN_FIELDS, &[]);
                }
            }
        }
        if !table.contains_key("weekdays") && !table.contains_key("command") {
            self.errors.push(ConfigError::MissingField {
                field: "weekdays".to_string(),
                table: path,
                location: self.location(&key.span()),
            });
            return None;
        }
        let weekdays = weekdays?;
        if !weekdays.is_empty() && self.partition == PartitionKind::None {
            self.errors.push(ConfigError::WeekdaysWithoutDates {
                task: task.to_string(),
                location: self.location(&key.span()),
            });
            return None;
        }
        valid.then_some(CalendarSpec { weekdays, command })
    }

    fn weekdays(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        path: &str,
        task: &str,
    ) -> Option<Vec<keel_model::Weekday>> {
        let DeValue::Array(items) = value.get_ref() else {
            self.wrong_type(value, "weekdays", path, EXPECT_WEEKDAYS);
            return None;
        };
        if items.is_empty() {
            self.errors.push(ConfigError::NoWeekdays {
                task: task.to_string(),
                location: self.location(&value.span()),
            });
            return None;
        }
        let mut weekdays = Vec::with_capacity(items.len());
        let mut valid = true;
        for item in items {
            let Some(name) = self.string(item, "weekdays", path, EXPECT_STRING) else {
                valid = false;
                continue;
            };
            match parse_weekday(&name) {
                Some(day) if weekdays.contains(&day) => {
                    valid = false;
                    self.errors.push(ConfigError::RepeatedWeekday {
                        task: task.to_string(),
                        weekday: name,
                        location: self.location(&item.span()),
                    });
                }
                Some(day) => weekdays.push(day),
                None => {
                    valid = false;
                    self.errors.push(ConfigError::UnknownWeekday {
                        task: task.to_string(),
                        suggestion: weekday_suggestion(&name),
                        weekday: name,
                        location: self.location(&item.span()),
                    });
                }
            }
        }
        valid.then_some(weekdays)
    }
}

/// The weekday `name` most likely means: the closest name, a full or capitalised name
/// ("Monday", "MON"), or for a short typo the one name with its first letter that shares the
/// most letters with it ("wdn" is "wed").
fn weekday_suggestion(name: &str) -> Option<String> {
    let lower = name.to_lowercase();
    if let Some(known) = closest(&lower, WEEKDAY_NAMES.iter().copied()) {
        return Some(known);
    }
    let short: String = lower.chars().take(3).collect();
    if parse_weekday(&short).is_some() {
        return Some(short);
    }
    if lower.chars().count() > 4 {
        return None;
    }
    let shared = |known: &str| {
        known
            .chars()
            .filter(|letter| lower.contains(*letter))
            .count()
    };
    let mut candidates: Vec<(usize, &str)> = WEEKDAY_NAMES
        .iter()
        .filter(|known| known.chars().next() == lower.chars().next())
        .map(|known| (shared(known), *known))
        .collect();
    candidates.sort_by_key(|(shared, _)| std::cmp::Reverse(*shared));
    match candidates.as_slice() {
        [(best, known), rest @ ..]
            if *best >= 2 && rest.first().is_none_or(|(next, _)| next < best) =>
        {
            Some(known.to_string())
        }
        _ => None,
    }
}
