//! How a task reads its inputs: `after` entries that are names or `{ task = "NAME", soft = true }`
//! (soft inputs), and `inputs = [...]`, the tasks of upstream phases the task actually reads
//! (targeted reconciliation), and entries on an earlier partition, `"NAME@-1d"`, which stay
//! out of the graph. Names are resolved with the rest of the task graph.

use std::collections::{HashMap, HashSet};

use toml::Spanned;
use toml::de::DeValue;

use keel_model::PartitionKind;

use super::{Checker, NameListContext, NameRef, RawPhase, RawTask, entries};
use crate::error::{ConfigError, NameKind};
use crate::suggest::closest;

const AFTER_ENTRY_FIELDS: &[&str] = &["task", "soft"];
const EXPECT_AFTER: &str =
    "a list of task names or tables such as [\"a\", { task = \"b\", soft = true }]";
const EXPECT_AFTER_ENTRY: &str = "a task name or a table such as { task = \"b\", soft = true }";
const EXPECT_BOOLEAN: &str = "true or false";

/// A task's `after` list as read: the names of the graph's edges in order, those of them that
/// are soft, and the entries on an earlier partition, which the graph does not hold.
pub(super) struct AfterList {
    pub names: Vec<NameRef>,
    pub soft: Vec<String>,
    pub earlier: Vec<RawEarlier>,
}

/// An `after` entry on an earlier partition, `"NAME@-1d"`: checked against the task names with
/// the rest of the graph.
#[derive(Debug)]
pub(super) struct RawEarlier {
    pub name: NameRef,
    pub days: u32,
    pub soft: bool,
}

/// The largest offset an `after` entry may name, as for `schedule_partition`.
const MAX_EARLIER_DAYS: u32 = 366;

/// Why the part after `@` of an `after` entry is not a number of days before the partition.
fn earlier_offset(offset: &str) -> Result<u32, &'static str> {
    let days = |digits: &str| {
        digits
            .strip_suffix('d')
            .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|digits| digits.parse::<u32>().ok())
    };
    if let Some(rest) = offset.strip_prefix('-') {
        return match days(rest) {
            Some(0) => Err("-0d is the run's own partition: write the task's name alone"),
            Some(days) if days <= MAX_EARLIER_DAYS => Ok(days),
            Some(_) => Err("an offset is at most 366 days"),
            None => Err("write a whole number of days before the run's partition, such as -1d"),
        };
    }
    match days(offset.strip_prefix('+').unwrap_or(offset)) {
        Some(0) => Err("0d is the run's own partition: write the task's name alone"),
        Some(_) => Err(
            "a run may only wait for an earlier partition (such as -1d), never a later one, which runs after it",
        ),
        None => Err("write a whole number of days before the run's partition, such as -1d"),
    }
}

impl Checker<'_> {
    /// A task's `after`: each entry a name, or a table naming a task and whether it is soft;
    /// a name may end in `@-Nd` for that task on the partition N days earlier.
    pub(super) fn after_list(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        context: &NameListContext<'_>,
    ) -> AfterList {
        let mut list = AfterList {
            names: Vec::new(),
            soft: Vec::new(),
            earlier: Vec::new(),
        };
        let DeValue::Array(items) = value.get_ref() else {
            self.wrong_type(value, context.field, context.table, EXPECT_AFTER);
            return list;
        };
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
            if let Some((task, offset)) = name.rsplit_once('@') {
                self.earlier_entry(&mut list, context, &name, task, offset, is_soft, span);
                continue;
            }
            if list.names.iter().any(|seen| seen.name == name) {
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
                list.soft.push(name.clone());
            }
            list.names.push(NameRef { name, span });
        }
        list
    }

    /// One `"NAME@-Nd"` entry: a date partition, an offset into the past, not written twice.
    #[allow(clippy::too_many_arguments)]
    fn earlier_entry(
        &mut self,
        list: &mut AfterList,
        context: &NameListContext<'_>,
        written: &str,
        task: &str,
        offset: &str,
        soft: bool,
        span: std::ops::Range<usize>,
    ) {
        if self.partition == PartitionKind::None {
            self.errors.push(ConfigError::EarlierWithoutDates {
                task: context.owner.to_string(),
                entry: written.to_string(),
                location: self.location(&span),
            });
            return;
        }
        let days = match earlier_offset(offset) {
            Ok(days) => days,
            Err(reason) => {
                self.errors.push(ConfigError::InvalidEarlier {
                    task: context.owner.to_string(),
                    entry: written.to_string(),
                    reason: reason.to_string(),
                    location: self.location(&span),
                });
                return;
            }
        };
        if list
            .earlier
            .iter()
            .any(|seen| seen.name.name == task && seen.days == days)
        {
            self.errors.push(ConfigError::RepeatedName {
                list: context.list,
                kind: context.owner_kind,
                owner: context.owner.to_string(),
                name: written.to_string(),
                location: self.location(&span),
            });
            return;
        }
        list.earlier.push(RawEarlier {
            name: NameRef {
                name: task.to_string(),
                span,
            },
            days,
            soft,
        });
    }

    /// Every entry on an earlier partition names a task of the pipeline (itself included: a
    /// task may wait for its own run of the day before).
    pub(super) fn check_earlier(&mut self, tasks: &[RawTask]) {
        for task in tasks {
            for earlier in &task.earlier {
                if tasks.iter().any(|each| each.name.name == earlier.name.name) {
                    continue;
                }
                self.errors.push(ConfigError::UnknownDependency {
                    task: task.name.name.clone(),
                    dependency: format!("{}@-{}d", earlier.name.name, earlier.days),
                    suggestion: closest(
                        &earlier.name.name,
                        tasks.iter().map(|task| task.name.name.as_str()),
                    )
                    .map(|name| format!("{name}@-{}d", earlier.days)),
                    names_a_phase: false,
                    location: self.location(&earlier.name.span),
                });
            }
        }
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
