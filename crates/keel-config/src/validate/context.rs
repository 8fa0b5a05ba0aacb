//! Where a task runs and with which environment: `cwd`, `env`, `env_file` and `inherit_env`, on
//! `[defaults]` and on a task. They are read in the first pass; a task's own are laid over
//! `[defaults]`' when the spec is built.

use std::collections::BTreeMap;
use std::ops::Range;

use keel_model::template::{TemplateProblem, check_templates};
use keel_model::{InheritEnv, TaskContext};
use toml::Spanned;
use toml::de::DeValue;

use super::{Checker, EXPECT_STRING, entries, join_path};
use crate::error::ConfigError;
use crate::secrets::{find_secret, find_secret_in_variable};

/// The context fields, on `[defaults]` and on every task.
pub(super) const CONTEXT_FIELDS: &[&str] = &["cwd", "env", "env_file", "inherit_env"];

/// The prefix of the variables Keel sets for every task (docs/tasks.md).
pub(crate) const RESERVED_PREFIX: &str = "KEEL_";

const EXPECT_ENV: &str = "a table of variables such as { NAME = \"value\" }";
const EXPECT_VARIABLE: &str = "a string (write a number in quotes, such as \"8080\")";
const EXPECT_INHERIT: &str = "true, false or a list of variable names such as [\"PATH\", \"HOME\"]";

/// The context fields of one table as written; each may be left out.
#[derive(Debug, Default)]
pub(super) struct RawContext {
    cwd: Option<String>,
    env: Vec<(String, String)>,
    env_file: Option<String>,
    inherit_env: Option<InheritEnv>,
}

impl RawContext {
    /// A task's context: its own fields over `defaults`; `env` merges by name.
    pub(super) fn over(&self, defaults: &RawContext) -> TaskContext {
        let mut env: BTreeMap<String, String> = defaults.env.iter().cloned().collect();
        env.extend(self.env.iter().cloned());
        TaskContext {
            cwd: self.cwd.clone().or_else(|| defaults.cwd.clone()),
            env,
            env_file: self.env_file.clone().or_else(|| defaults.env_file.clone()),
            inherit_env: self
                .inherit_env
                .clone()
                .or_else(|| defaults.inherit_env.clone())
                .unwrap_or_default(),
        }
    }
}

/// Why a variable name cannot be passed to a process, if it cannot.
pub(crate) fn variable_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("a name cannot be empty")
    } else if name.contains('=') {
        Some("a name cannot contain \"=\", which separates a name from its value")
    } else if name.contains('\0') {
        Some("a name cannot contain a NUL byte")
    } else {
        None
    }
}

impl Checker<'_> {
    /// Reads one of [`CONTEXT_FIELDS`] of the table at `path` into `context`.
    pub(super) fn context_field(
        &mut self,
        field: &str,
        value: &Spanned<DeValue<'_>>,
        path: &str,
        context: &mut RawContext,
    ) {
        match field {
            "cwd" => {
                let hint =
                    "leave it out to run tasks in the pipeline file's directory, or write \".\"";
                context.cwd = self.context_path(value, field, path, hint);
                if let Some(cwd) = &context.cwd {
                    let cwd = cwd.clone();
                    self.value_templates(value, &cwd, field, path);
                }
            }
            "env_file" => {
                let hint = "give a path such as \".env\", or leave it out";
                context.env_file = self.context_path(value, field, path, hint);
            }
            "env" => context.env = self.env_table(value, path),
            _ => context.inherit_env = self.inherit_env(value, path),
        }
    }

    /// `cwd` or `env_file`: a path that is neither empty nor holds a NUL byte.
    fn context_path(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        field: &str,
        path: &str,
        hint: &'static str,
    ) -> Option<String> {
        let text = self.string(value, field, path, EXPECT_STRING)?;
        if text.is_empty() {
            self.errors.push(ConfigError::EmptyValue {
                field: field.to_string(),
                table: path.to_string(),
                hint,
                location: self.location(&value.span()),
            });
            return None;
        }
        if text.contains('\0') {
            self.nul_byte(value, field.to_string(), path, text, "a path");
            return None;
        }
        Some(text)
    }

    /// Reports the template problems of a `cwd` or an `env` value; returns whether it has none.
    fn value_templates(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        text: &str,
        field: &str,
        table: &str,
    ) -> bool {
        let params: Vec<&str> = self.params.iter().map(String::as_str).collect();
        let problems = check_templates(text, &params, self.partition);
        for problem in &problems {
            let (TemplateProblem::Unknown { offset, .. }
            | TemplateProblem::Unclosed { offset }
            | TemplateProblem::UnknownParam { offset, .. }
            | TemplateProblem::BadDate { offset, .. }) = problem;
            let offset = self.map.offset_in_string(&value.span(), text, *offset);
            let location = self.map.location(offset);
            let (field, table) = (field.to_string(), table.to_string());
            self.errors.push(match problem {
                TemplateProblem::Unknown { template, .. } => ConfigError::UnknownValueTemplate {
                    field,
                    table,
                    template: template.clone(),
                    location,
                },
                TemplateProblem::Unclosed { .. } => ConfigError::UnclosedValueTemplate {
                    field,
                    table,
                    location,
                },
                TemplateProblem::UnknownParam { name, .. } => ConfigError::UnknownParam {
                    place: format!("{field:?} in [{table}]"),
                    suggestion: crate::suggest::closest(name, params.iter().copied()),
                    name: name.clone(),
                    location,
                },
                TemplateProblem::BadDate {
                    template, problem, ..
                } => ConfigError::DateTemplate {
                    place: format!("{field:?} in [{table}]"),
                    template: template.clone(),
                    problem: problem.clone(),
                    location,
                },
            });
        }
        problems.is_empty()
    }

    /// `env = { NAME = "value" }`: names a process can take and Keel does not keep for itself,
    /// string values without NUL bytes, valid templates, and nothing that looks like a secret.
    fn env_table(&mut self, value: &Spanned<DeValue<'_>>, path: &str) -> Vec<(String, String)> {
        let DeValue::Table(table) = value.get_ref() else {
            self.wrong_type(value, "env", path, EXPECT_ENV);
            return Vec::new();
        };
        let table_path = format!("{path}.env");
        let mut env = Vec::new();
        for (key, item) in entries(table) {
            let name = key.get_ref().to_string();
            if !self.variable_name(&name, &key.span(), &table_path) {
                continue;
            }
            let Some(text) = self.string(item, &name, &table_path, EXPECT_VARIABLE) else {
                continue;
            };
            if text.contains('\0') {
                self.nul_byte(item, name, &table_path, text, "an environment variable");
                continue;
            }
            if !self.value_templates(item, &text, &name, &table_path) {
                continue;
            }
            // A secret-shaped value is reported by the scan of the whole file; this adds values
            // that only the variable's name gives away.
            if find_secret(&text).is_none()
                && let Some(finding) = find_secret_in_variable(&name, &text)
            {
                self.errors.push(ConfigError::PlaintextSecret {
                    field: join_path(&table_path, &name),
                    what: finding.what,
                    redacted: finding.redacted,
                    location: self.location(&item.span()),
                });
                continue;
            }
            env.push((name, text));
        }
        env
    }

    /// Whether `name` may be set for a task; reports why not.
    fn variable_name(&mut self, name: &str, span: &Range<usize>, table: &str) -> bool {
        if let Some(reason) = variable_name_problem(name) {
            self.errors.push(ConfigError::InvalidVariableName {
                name: name.to_string(),
                table: table.to_string(),
                reason,
                location: self.location(span),
            });
            return false;
        }
        if name.starts_with(RESERVED_PREFIX) {
            self.errors.push(ConfigError::ReservedVariable {
                name: name.to_string(),
                table: table.to_string(),
                location: self.location(span),
            });
            return false;
        }
        true
    }

    /// `inherit_env = true | false | ["PATH", …]`.
    fn inherit_env(&mut self, value: &Spanned<DeValue<'_>>, path: &str) -> Option<InheritEnv> {
        let items = match value.get_ref() {
            DeValue::Boolean(true) => return Some(InheritEnv::All),
            DeValue::Boolean(false) => return Some(InheritEnv::Nothing),
            DeValue::Array(items) => items,
            _ => {
                self.wrong_type(value, "inherit_env", path, EXPECT_INHERIT);
                return None;
            }
        };
        let mut names: Vec<String> = Vec::new();
        let mut all_valid = true;
        for (position, item) in items.iter().enumerate() {
            let field = format!("inherit_env[{position}]");
            let Some(name) = self.string(item, &field, path, EXPECT_STRING) else {
                all_valid = false;
                continue;
            };
            if !self.variable_name(&name, &item.span(), path) {
                all_valid = false;
            } else if !names.contains(&name) {
                names.push(name);
            }
        }
        all_valid.then_some(InheritEnv::Only(names))
    }
}
