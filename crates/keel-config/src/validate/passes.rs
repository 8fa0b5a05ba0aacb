//! `[passes.NAME]`: the same partition processed again on another schedule, with a subset of the
//! tasks and parameters of its own.
//!
//! A pass is read in the first pass of validation like every other table; the phases and tasks
//! it names are resolved in the second, once every table has been read. The names of its
//! parameters are collected before anything else (`declared_params`), so that a `{param.NAME}`
//! in a command, a `cwd` or an `env` value can be checked where it is written.

use std::collections::BTreeMap;
use std::ops::Range;

use keel_model::{Catchup, PassSpec, ScheduleSpec};
use toml::Spanned;
use toml::de::{DeString, DeTable, DeValue};

use super::resilience::RawGate;
use super::{
    CATCHUP_KINDS, Checker, EXPECT_STRING, NameListContext, NameRef, RawPhase, RawTask, entries,
    is_valid_name, join_path,
};
use crate::error::{ConfigError, NameKind};
use crate::suggest::closest;

const PASS_FIELDS: &[&str] = &[
    "schedule",
    "partition",
    "catchup",
    "phases",
    "tasks",
    "params",
    "gate",
];

/// The parameter names every pass declares, in file order without repeats, read before the
/// rest of the file so that templates can be checked against them. Whatever is malformed here
/// is reported when the pass itself is read.
pub(super) fn declared_params(root: &DeTable<'_>) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let Some(DeValue::Table(passes)) = root.get("passes").map(Spanned::get_ref) else {
        return names;
    };
    for (_, pass) in entries(passes) {
        let DeValue::Table(pass) = pass.get_ref() else {
            continue;
        };
        let Some(DeValue::Table(params)) = pass.get("params").map(Spanned::get_ref) else {
            continue;
        };
        for (name, _) in entries(params) {
            let name = name.get_ref().to_string();
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names
}

/// A pass as written; its subset is resolved once every phase and task is known.
#[derive(Debug)]
pub(super) struct RawPass {
    name: NameRef,
    /// The cron expression and where it is, checked once the time zone is known.
    schedule: Option<(String, Range<usize>)>,
    partition: Option<i64>,
    catchup: Option<Catchup>,
    phases: Option<(Vec<NameRef>, Range<usize>)>,
    tasks: Option<(Vec<NameRef>, Range<usize>)>,
    params: BTreeMap<String, String>,
    /// Gates replacing the phases' own in the pass's runs: (phase, gate).
    gates: Vec<(NameRef, RawGate)>,
}

impl Checker<'_> {
    pub(super) fn pass(
        &mut self,
        name: &Spanned<DeString<'_>>,
        value: &Spanned<DeValue<'_>>,
    ) -> Option<RawPass> {
        let pass_name = NameRef {
            name: name.get_ref().to_string(),
            span: name.span(),
        };
        self.check_name(NameKind::Pass, &pass_name.name, &pass_name.span);
        let path = join_path("passes", &pass_name.name);
        let table = self.table(value, &pass_name.name, "passes")?;
        let mut pass = RawPass {
            name: pass_name,
            schedule: None,
            partition: None,
            catchup: None,
            phases: None,
            tasks: None,
            params: BTreeMap::new(),
            gates: Vec::new(),
        };
        for (key, value) in entries(table) {
            let field = key.get_ref().as_ref();
            match field {
                "schedule" => {
                    pass.schedule = self
                        .string(value, field, &path, EXPECT_STRING)
                        .map(|text| (text, value.span()));
                }
                "partition" => pass.partition = self.day_offset(value, field, &path),
                "catchup" => {
                    pass.catchup = match self.choice(value, field, &path, CATCHUP_KINDS) {
                        Some("all") => Some(Catchup::All),
                        Some("none") => Some(Catchup::None),
                        Some(_) => Some(Catchup::Latest),
                        None => None,
                    };
                }
                "phases" | "tasks" => {
                    let context = NameListContext {
                        field,
                        table: &path,
                        list: if field == "phases" {
                            "phases list"
                        } else {
                            "tasks list"
                        },
                        owner_kind: NameKind::Pass,
                        owner: &pass.name.name,
                    };
                    let names = self.name_list(value, &context);
                    let subset = Some((names, value.span()));
                    if field == "phases" {
                        pass.phases = subset;
                    } else {
                        pass.tasks = subset;
                    }
                }
                "params" => pass.params = self.params(value, &path),
                "gate" => {
                    if let Some(gates) = self.table(value, field, &path) {
                        for (phase, gate) in entries(gates) {
                            let phase_name = phase.get_ref().to_string();
                            if let Some(gate) = self.gate(phase, gate, &path, &phase_name) {
                                let phase = NameRef {
                                    name: phase_name,
                                    span: phase.span(),
                                };
                                pass.gates.push((phase, gate));
                            }
                        }
                    }
                }
                _ => self.unknown_field(key, &path, PASS_FIELDS, &[]),
            }
        }
        if let (Some(_), Some((_, span))) = (&pass.phases, &pass.tasks) {
            self.errors.push(ConfigError::PassPhasesAndTasks {
                pass: pass.name.name.clone(),
                location: self.location(span),
            });
        }
        if pass.schedule.is_none() && (pass.partition.is_some() || pass.catchup.is_some()) {
            let field = if table.contains_key("partition") {
                "partition"
            } else {
                "catchup"
            };
            self.errors.push(ConfigError::Ineffective {
                field: field.to_string(),
                table: path.clone(),
                needs: "schedule",
                example: "schedule = \"0 6 * * *\"",
                location: self.location(&pass.name.span),
            });
        }
        Some(pass)
    }

    /// `params = { NAME = "value" }`: names as for tasks, string values.
    fn params(&mut self, value: &Spanned<DeValue<'_>>, path: &str) -> BTreeMap<String, String> {
        let mut params = BTreeMap::new();
        let Some(table) = self.table(value, "params", path) else {
            return params;
        };
        let table_path = format!("{path}.params");
        for (key, value) in entries(table) {
            let name = key.get_ref().to_string();
            self.check_name(NameKind::Param, &name, &key.span());
            let Some(text) = self.string(value, &name, &table_path, EXPECT_PARAM) else {
                continue;
            };
            if text.contains('\0') {
                self.nul_byte(value, name, &table_path, text, "an argument");
                continue;
            }
            if is_valid_name(&name) {
                params.insert(name, text);
            }
        }
        params
    }

    /// Checks each pass's schedule in the pipeline's time zone and resolves its subset against
    /// the phases and tasks of the file.
    pub(super) fn check_passes(
        &mut self,
        passes: &mut [RawPass],
        zone: &str,
        phases: &[RawPhase],
        tasks: &[RawTask],
    ) {
        for pass in passes.iter_mut() {
            // A pass's gates name phases of the file and require tasks of their phase, as the
            // phases' own gates do; they are checked the same way.
            let mut overridden: Vec<RawPhase> = Vec::new();
            for (phase, gate) in std::mem::take(&mut pass.gates) {
                if phases.iter().any(|known| known.name.name == phase.name) {
                    overridden.push(RawPhase {
                        name: phase,
                        after: Vec::new(),
                        gate: Some(gate),
                        checks: Vec::new(),
                    });
                } else {
                    self.errors.push(ConfigError::UnknownPassName {
                        pass: pass.name.name.clone(),
                        kind: NameKind::Phase,
                        suggestion: closest(
                            &phase.name,
                            phases.iter().map(|known| known.name.name.as_str()),
                        ),
                        name: phase.name,
                        location: self.location(&phase.span),
                    });
                }
            }
            let mut every_phase: Vec<RawPhase> = phases
                .iter()
                .map(|phase| RawPhase {
                    name: phase.name.clone(),
                    after: Vec::new(),
                    gate: None,
                    checks: Vec::new(),
                })
                .collect();
            for phase in overridden {
                if let Some(slot) = every_phase
                    .iter_mut()
                    .find(|each| each.name.name == phase.name.name)
                {
                    *slot = phase;
                }
            }
            self.check_gates(&every_phase, tasks);
            pass.gates = every_phase
                .into_iter()
                .filter_map(|phase| Some((phase.name, phase.gate?)))
                .collect();
        }
        for pass in passes.iter() {
            if let Some((cron, span)) = &pass.schedule
                && let Err(error) = keel_model::schedule::Schedule::parse(cron, zone)
            {
                self.errors.push(ConfigError::InvalidSchedule {
                    field: "schedule".to_string(),
                    table: join_path("passes", &pass.name.name),
                    value: cron.clone(),
                    reason: error.to_string(),
                    location: self.location(span),
                });
            }
            for (subset, kind, known) in [
                (
                    &pass.phases,
                    NameKind::Phase,
                    phases
                        .iter()
                        .map(|phase| phase.name.name.as_str())
                        .collect::<Vec<_>>(),
                ),
                (
                    &pass.tasks,
                    NameKind::Task,
                    tasks.iter().map(|task| task.name.name.as_str()).collect(),
                ),
            ] {
                let Some((names, span)) = subset else {
                    continue;
                };
                if names.is_empty() {
                    self.errors.push(ConfigError::EmptyPassSubset {
                        pass: pass.name.name.clone(),
                        kind,
                        location: self.location(span),
                    });
                }
                for name in names {
                    if !known.contains(&name.name.as_str()) {
                        self.errors.push(ConfigError::UnknownPassName {
                            pass: pass.name.name.clone(),
                            kind,
                            suggestion: closest(&name.name, known.iter().copied()),
                            name: name.name.clone(),
                            location: self.location(&name.span),
                        });
                    }
                }
            }
            // A fanned-out task runs the items its `from` task listed in the same run: a pass
            // that runs it without that task would have no items to run.
            for task in tasks.iter().filter(|task| pass.selects(task)) {
                let Some(from) = task.expand.as_ref().map(|expand| expand.from()) else {
                    continue;
                };
                let source = tasks.iter().find(|other| other.name.name == from);
                if source.is_some_and(|source| !pass.selects(source)) {
                    let span = match (&pass.phases, &pass.tasks) {
                        (Some((_, span)), _) | (None, Some((_, span))) => span.clone(),
                        (None, None) => pass.name.span.clone(),
                    };
                    self.errors.push(ConfigError::PassWithoutExpandSource {
                        pass: pass.name.name.clone(),
                        task: task.name.name.clone(),
                        from: from.to_string(),
                        location: self.location(&span),
                    });
                }
            }
            if let Some((names, span)) = &pass.phases
                && !names.is_empty()
                && !tasks.iter().any(|task| {
                    task.phase
                        .as_ref()
                        .is_some_and(|phase| names.iter().any(|name| name.name == phase.name))
                })
                && names
                    .iter()
                    .all(|name| phases.iter().any(|phase| phase.name.name == name.name))
            {
                self.errors.push(ConfigError::EmptyPassSubset {
                    pass: pass.name.name.clone(),
                    kind: NameKind::Task,
                    location: self.location(span),
                });
            }
        }
    }
}

const EXPECT_PARAM: &str = "a string (write numbers in quotes)";

impl RawPass {
    /// Whether the pass runs `task`: by its phase, by its name, or every task.
    fn selects(&self, task: &RawTask) -> bool {
        match (&self.phases, &self.tasks) {
            (Some((phases, _)), _) => task
                .phase
                .as_ref()
                .is_some_and(|phase| phases.iter().any(|name| name.name == phase.name)),
            (None, Some((names, _))) => names.iter().any(|name| name.name == task.name.name),
            (None, None) => true,
        }
    }
}

/// The specs of valid passes: the subset resolved to task names in file order.
pub(super) fn build_passes(passes: Vec<RawPass>, tasks: &[RawTask]) -> Vec<PassSpec> {
    passes
        .into_iter()
        .map(|pass| {
            let selected: Vec<String> = tasks
                .iter()
                .filter(|task| pass.selects(task))
                .map(|task| task.name.name.clone())
                .collect();
            PassSpec {
                name: pass.name.name,
                schedule: pass.schedule.map(|(cron, _)| ScheduleSpec {
                    cron,
                    partition_offset_days: pass.partition.unwrap_or(0),
                    catchup: pass.catchup.unwrap_or_default(),
                    backfill: None,
                }),
                tasks: selected,
                params: pass.params,
                gates: pass
                    .gates
                    .into_iter()
                    .map(|(phase, gate)| (phase.name, gate.build()))
                    .collect(),
            }
        })
        .collect()
}
