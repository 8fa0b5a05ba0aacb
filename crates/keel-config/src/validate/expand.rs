//! A task's dynamic fan-out, `expand = { from = "list_games", min = "95%", stall = "10m" }`:
//! `from` names a task the expanded task waits for (an earlier phase's, or one in its own
//! `after`) and not itself, `min` is a share above 0%, `stall` a duration; `{item}` and
//! `{item.FIELD}` are only for a task that expands.

use std::collections::HashMap;
use std::time::Duration;

use keel_model::ExpandSpec;
use keel_model::expand::DEFAULT_EXPAND_STALL;
use toml::Spanned;
use toml::de::{DeString, DeValue};

use super::resilience::ShareRange;
use super::{Checker, EXPECT_STRING, NameRef, RawPhase, RawTask, entries, upstream_phases};
use crate::error::ConfigError;
use crate::suggest::closest;

const EXPAND_FIELDS: &[&str] = &["from", "min", "stall"];

/// `expand` as read, before `from` is resolved against the other tasks.
#[derive(Debug)]
pub(super) struct RawExpand {
    from: NameRef,
    min_share: f64,
    stall: Duration,
}

impl RawExpand {
    /// The task whose items this task runs.
    pub(super) fn from(&self) -> &str {
        &self.from.name
    }

    pub(super) fn build(self) -> ExpandSpec {
        ExpandSpec {
            from: self.from.name,
            min_share: self.min_share,
            stall: self.stall,
        }
    }
}

impl Checker<'_> {
    /// `expand = { … }` of a task; `task_path` is the task's table.
    pub(super) fn expand(
        &mut self,
        key: &Spanned<DeString<'_>>,
        value: &Spanned<DeValue<'_>>,
        task_path: &str,
    ) -> Option<RawExpand> {
        let path = format!("{task_path}.expand");
        let table = self.table(value, "expand", task_path)?;
        let mut from = None;
        let mut min_share = Some(1.0);
        let mut stall = Some(DEFAULT_EXPAND_STALL);
        let mut valid = true;
        for (field_key, field_value) in entries(table) {
            let field = field_key.get_ref().as_ref();
            match field {
                "from" => {
                    from = self
                        .string(field_value, field, &path, EXPECT_STRING)
                        .map(|name| NameRef {
                            name,
                            span: field_value.span(),
                        });
                    valid &= from.is_some();
                }
                "min" => {
                    min_share = self.share(field_value, field, &path, ShareRange::AboveZeroToOne);
                }
                "stall" => stall = self.duration(field_value, field, &path, false),
                _ => {
                    valid = false;
                    self.unknown_field(field_key, &path, EXPAND_FIELDS, &[]);
                }
            }
        }
        if !table.contains_key("from") {
            self.errors.push(ConfigError::MissingField {
                field: "from".to_string(),
                table: path,
                location: self.location(&key.span()),
            });
            return None;
        }
        let (from, min_share, stall) = (from?, min_share?, stall?);
        valid.then_some(RawExpand {
            from,
            min_share,
            stall,
        })
    }

    /// Each `expand.from` names another task that the expanded task waits for, so the item list
    /// is in the store before any item starts.
    pub(super) fn check_expansions(&mut self, phases: &[RawPhase], tasks: &[RawTask]) {
        let phase_index: HashMap<&str, usize> = phases
            .iter()
            .enumerate()
            .map(|(position, phase)| (phase.name.name.as_str(), position))
            .collect();
        let upstream = upstream_phases(phases, &phase_index);
        let phase_of = |task: &RawTask| {
            task.phase
                .as_ref()
                .and_then(|phase| phase_index.get(phase.name.as_str()).copied())
        };
        for task in tasks {
            let Some(expand) = &task.expand else {
                continue;
            };
            let from = &expand.from;
            let location = self.location(&from.span);
            let Some(source) = tasks.iter().find(|each| each.name.name == from.name) else {
                self.errors.push(ConfigError::ExpandFromUnknown {
                    task: task.name.name.clone(),
                    from: from.name.clone(),
                    suggestion: closest(
                        &from.name,
                        tasks.iter().map(|each| each.name.name.as_str()),
                    ),
                    location,
                });
                continue;
            };
            if source.name.name == task.name.name {
                self.errors.push(ConfigError::ExpandFromItself {
                    task: task.name.name.clone(),
                    location,
                });
                continue;
            }
            let in_after = task.after.iter().any(|after| after.name == from.name);
            let upstream_phase = match (phase_of(task), phase_of(source)) {
                (Some(own), Some(theirs)) => upstream[own].contains(&theirs),
                // An unknown phase is reported on its own.
                _ => true,
            };
            if !in_after && !upstream_phase {
                self.errors.push(ConfigError::ExpandFromNotUpstream {
                    task: task.name.name.clone(),
                    from: from.name.clone(),
                    location,
                });
            }
        }
    }
}
