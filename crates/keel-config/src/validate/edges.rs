//! How a task reads its inputs: `after` entries that are names or `{ task = "NAME", soft = true }`
//! (soft inputs), and `inputs = [...]`, the tasks of upstream phases the task actually reads
//! (targeted reconciliation). Names are resolved with the rest of the task graph.

use std::collections::{HashMap, HashSet};

use toml::Spanned;
use toml::de::DeValue;

use super::{Checker, NameListContext, NameRef, RawPhase, RawTask, entries};
use crate::error::{ConfigError, NameKind};
use crate::suggest::closest;

const AFTER_ENTRY_FIELDS: &[&str] = &["task", "soft"];
const EXPECT_AFTER: &str =
    "a list of task names or tables such as [\"a\", { task = \"b\", soft = true }]";
const EXPECT_AFTER_ENTRY: &str = "a task name or a table such as { task = \"b\", soft = true }";
const EXPECT_BOOLEAN: &str = "true or false";

impl Checker<'_> {
    /// A task's `after`: each entry a name, or a table naming a task and whether it is soft.
    /// Returns the names in order and, apart, those that are soft.
    pub(super) fn after_list(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        context: &NameListContext<'_>,
    ) -> (Vec<NameRef>, Vec<String>) {
        let DeValue::Array(items) = value.get_ref() else {
            self.wrong_type(value, context.field, context.table, EXPECT_AFTER);
            return (Vec::new(), Vec::new());
        };
        let mut names: Vec<NameRef> = Vec::new();
        let mut soft = Vec::new();
        for (position, item) in items.iter().enumerate() {
            let field = format!("{}[{position}]", context.field);
            let (name, is_soft) = match item.get_ref() {
                DeValue::String(text) => (text.to_string(), false),
                DeValue::Table(table) => {
                    let path = format!("{}.{field}", context.table);
                    let mut name = None;
                    let mut is_soft = false;
                    for (key, value) in entries(table) {
                        match key.get_ref().as_ref() {
                            "task" => name = self.string(value, "task", &path, "a task name"),
                            "soft" => match value.get_ref() {
                                DeValue::Boolean(flag) => is_soft = *flag,
                                _ => self.wrong_type(value, "soft", &path, EXPECT_BOOLEAN),
                            },
                            _ => self.unknown_field(key, &path, AFTER_ENTRY_FIELDS, &[]),
                        }
                    }
                    if !table.contains_key("task") {
                        self.errors.push(ConfigError::MissingField {
                            field: "task".to_string(),
                            table: path,
                            location: self.location(&item.span()),
                        });
                    }
                    let Some(name) = name else { continue };
                    (name, is_soft)
                }
                _ => {
                    self.wrong_type(item, &field, context.table, EXPECT_AFTER_ENTRY);
                    continue;
                }
            };
            let span = item.span();
            if names.iter().any(|seen| seen.name == name) {
                self.errors.push(ConfigError::RepeatedName {
                    list: context.list,
                    kind: context.owner_kind,
                    owner: context.owner.to_string(),
                    name,
                    location: self.location(&span),
                });
                continue;
            }
            if is_soft {
                soft.push(name.clone());
            }
            names.push(NameRef { name, span });
        }
        (names, soft)
    }

    /// Every task's `inputs` names a task of a phase its own phase runs after.
    pub(super) fn check_inputs(
        &mut self,
        tasks: &[RawTask],
        phase_index: &HashMap<&str, usize>,
        upstream: &[HashSet<usize>],
        phases: &[RawPhase],
    ) {
        let phase_of = |task: &RawTask| {
            task.phase
                .as_ref()
                .and_then(|phase| phase_index.get(phase.name.as_str()).copied())
        };
        for task in tasks {
            let Some(inputs) = &task.inputs else { continue };
            for input in inputs {
                let Some(target) = tasks.iter().find(|each| each.name.name == input.name) else {
                    self.errors.push(ConfigError::UnknownInput {
                        task: task.name.name.clone(),
                        input: input.name.clone(),
                        suggestion: closest(
                            &input.name,
                            tasks.iter().map(|task| task.name.name.as_str()),
                        ),
                        location: self.location(&input.span),
                    });
                    continue;
                };
                let (Some(own_phase), Some(target_phase)) = (phase_of(task), phase_of(target))
                else {
                    continue;
                };
                if !upstream[own_phase].contains(&target_phase) {
                    self.errors.push(ConfigError::InputNotUpstream {
                        task: task.name.name.clone(),
                        phase: phases[own_phase].name.name.clone(),
                        input: input.name.clone(),
                        input_phase: phases[target_phase].name.name.clone(),
                        location: self.location(&input.span),
                    });
                }
            }
        }
    }
}

/// The context of a task's `inputs` list, for its repeats.
pub(super) fn inputs_context<'a>(path: &'a str, task: &'a str) -> NameListContext<'a> {
    NameListContext {
        field: "inputs",
        table: path,
        list: "inputs list",
        owner_kind: NameKind::Task,
        owner: task,
    }
}
