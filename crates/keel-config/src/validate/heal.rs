//! Remediation from downstream (docs/health.md, "Remediation"): `heal = ["scrape_boxscores"]`
//! on a task's check names upstream tasks to run again when the check fails, and
//! `[pipeline] heal = { budget = 2 }` bounds how many heals a run of a partition makes. A heal
//! target is another task that the checked task waits for, directly or through others: only
//! what feeds a task can mend what it read.

use std::collections::{HashMap, HashSet};

use toml::Spanned;
use toml::de::{DeString, DeValue};

use super::{Checker, EXPECT_STRING, NameRef, RawPhase, RawTask, entries, upstream_phases};
use crate::error::ConfigError;
use crate::suggest::closest;

const HEAL_FIELDS: &[&str] = &["budget"];

/// One `heal` entry of a check, kept with where it is written until every task is known.
#[derive(Debug)]
pub(super) struct RawHeal {
    /// The checked task.
    pub task: String,
    /// `checks[0].heal[1]`.
    pub field: String,
    pub target: NameRef,
}

impl Checker<'_> {
    /// `heal = ["TASK", …]` of a check; `path` is the check's table.
    pub(super) fn heal_list(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        field: &str,
        path: &str,
        task: &str,
    ) -> Vec<String> {
        let DeValue::Array(items) = value.get_ref() else {
            self.wrong_type(
                value,
                "heal",
                path,
                "a list of task names such as [\"scrape\"]",
            );
            return Vec::new();
        };
        let mut names: Vec<String> = Vec::new();
        for (position, item) in items.iter().enumerate() {
            let entry = format!("{field}.heal[{position}]");
            let Some(name) = self.string(item, &entry, path, EXPECT_STRING) else {
                continue;
            };
            if names.contains(&name) {
                continue;
            }
            names.push(name.clone());
            self.heals.push(RawHeal {
                task: task.to_string(),
                field: entry,
                target: NameRef {
                    name,
                    span: item.span(),
                },
            });
        }
        names
    }

    /// `[pipeline] heal = { budget = N }`: the heals a run of a partition may make, at least 1.
    pub(super) fn heal_budget(
        &mut self,
        key: &Spanned<DeString<'_>>,
        value: &Spanned<DeValue<'_>>,
    ) -> Option<u32> {
        const PATH: &str = "pipeline.heal";
        let table = self.table(value, key.get_ref().as_ref(), "pipeline")?;
        let mut budget = None;
        for (field_key, field_value) in entries(table) {
            match field_key.get_ref().as_ref() {
                "budget" => budget = self.positive_integer(field_value, "budget", PATH),
                _ => self.unknown_field(field_key, PATH, HEAL_FIELDS, &[]),
            }
        }
        if !table.contains_key("budget") {
            self.errors.push(ConfigError::MissingField {
                field: "budget".to_string(),
                table: PATH.to_string(),
                location: self.location(&key.span()),
            });
        }
        budget
    }

    /// Each heal target is a task, not the checked task itself, and upstream of it.
    pub(super) fn check_heals(&mut self, phases: &[RawPhase], tasks: &[RawTask]) {
        let heals = std::mem::take(&mut self.heals);
        if heals.is_empty() {
            return;
        }
        let phase_index: HashMap<&str, usize> = phases
            .iter()
            .enumerate()
            .map(|(position, phase)| (phase.name.name.as_str(), position))
            .collect();
        let upstream = upstream_phases(phases, &phase_index);
        let task_index: HashMap<&str, usize> = tasks
            .iter()
            .enumerate()
            .map(|(position, task)| (task.name.name.as_str(), position))
            .collect();
        let phase_of = |task: &RawTask| {
            task.phase
                .as_ref()
                .and_then(|phase| phase_index.get(phase.name.as_str()).copied())
        };
        // What each task waits for directly: its own `after`, and every task of the phases its
        // phase runs after.
        let direct: Vec<Vec<usize>> = tasks
            .iter()
            .map(|task| {
                let mut inputs: Vec<usize> = task
                    .after
                    .iter()
                    .filter_map(|after| task_index.get(after.name.as_str()).copied())
                    .collect();
                if let Some(own) = phase_of(task) {
                    inputs.extend(
                        tasks
                            .iter()
                            .enumerate()
                            .filter(|(_, other)| {
                                phase_of(other)
                                    .is_some_and(|theirs| upstream[own].contains(&theirs))
                            })
                            .map(|(position, _)| position),
                    );
                }
                inputs
            })
            .collect();
        let upstream_of = |task: usize| {
            let mut seen = HashSet::new();
            let mut stack = vec![task];
            while let Some(current) = stack.pop() {
                for input in &direct[current] {
                    if seen.insert(*input) {
                        stack.push(*input);
                    }
                }
            }
            seen
        };
        for heal in heals {
            let location = self.location(&heal.target.span);
            let Some(target) = task_index.get(heal.target.name.as_str()).copied() else {
                self.errors.push(ConfigError::HealUnknownTask {
                    suggestion: closest(
                        &heal.target.name,
                        tasks.iter().map(|each| each.name.name.as_str()),
                    ),
                    task: heal.task,
                    field: heal.field,
                    target: heal.target.name,
                    location,
                });
                continue;
            };
            if heal.target.name == heal.task {
                self.errors.push(ConfigError::HealItself {
                    task: heal.task,
                    field: heal.field,
                    location,
                });
                continue;
            }
            let Some(checked) = task_index.get(heal.task.as_str()).copied() else {
                continue;
            };
            if tasks[target].expand.is_some() {
                self.errors.push(ConfigError::HealExpanded {
                    task: heal.task,
                    field: heal.field,
                    target: heal.target.name,
                    location,
                });
                continue;
            }
            if !upstream_of(checked).contains(&target) {
                self.errors.push(ConfigError::HealNotUpstream {
                    task: heal.task,
                    field: heal.field,
                    target: heal.target.name,
                    location,
                });
            }
        }
    }
}
