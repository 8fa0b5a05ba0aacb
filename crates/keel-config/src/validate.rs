//! Walks the span-aware TOML tree, collects every error, and builds the spec when there are none.
//!
//! Validation runs in two passes. The first reads each table on its own (types, fields, names,
//! durations, templates, secrets) into raw structs that remember where each name was written. The
//! second resolves names across tables (phases, dependencies, cycles, gates, resources). Whatever
//! is wrong with one value never stops the walk, so a single run reports everything.
//!
//! The resilience fields (`[resources.NAME]`, `gate`, `uses`, `wait_for`) are read in the
//! `resilience` submodule, and where a task runs and with which environment (`cwd`, `env`,
//! `env_file`, `inherit_env`) in the `context` submodule, and `[passes.NAME]` in `passes`.

mod alerts;
mod backfill;
mod calendar;
mod checks;
mod context;
mod edges;
mod expand;
mod heal;
mod http;
mod passes;
mod resilience;
mod rollout;
mod secrets_provider;
mod slo;
mod tiers;
mod timing;

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::str::FromStr;
use std::time::Duration;

use keel_model::{
    Catchup, DEFAULT_CONCURRENCY, DEFAULT_DEADLINE, DEFAULT_TIMEOUT, DurationError, Jitter,
    PartitionKind, PhaseSpec, PipelineSpec, RetryPolicy, ScheduleSpec, TaskSpec,
};
use toml::Spanned;
use toml::de::{DeString, DeTable, DeValue};

use crate::error::{ConfigError, ConfigErrors, Location, NameKind};
use crate::graph::find_cycles;
use crate::secrets::{find_secret, find_secret_in_arguments};
use crate::suggest::{closest, closest_timezone};
use crate::{MAX_DURATION, MAX_NAME_LENGTH};
use context::{CONTEXT_FIELDS, RawContext};
pub(crate) use context::{RESERVED_PREFIX, variable_name_problem};
use keel_model::template::{TemplateProblem, check_templates};
use resilience::{RawGate, RawResource, RawSensor};

const TOP_LEVEL_FIELDS: &[&str] = &[
    "pipeline",
    "defaults",
    "resources",
    "phases",
    "tasks",
    "passes",
    "alerts",
    "secrets",
    "slo",
];
const TOP_LEVEL_LATER: &[&str] = &[];
const PIPELINE_FIELDS: &[&str] = &[
    "name",
    "timezone",
    "partition",
    "state",
    "schedule",
    "schedule_partition",
    "catchup",
    "max_active_partitions",
    "heal",
    "backfill",
];
const PIPELINE_LATER: &[&str] = &[];
const CATCHUP_KINDS: &[&str] = &["all", "latest", "none"];
const DEFAULTS_FIELDS: &[&str] = &[
    "timeout",
    "retries",
    "heartbeat",
    "deadline",
    "concurrency",
    "cwd",
    "env",
    "env_file",
    "inherit_env",
];
const RETRIES_FIELDS: &[&str] = &["attempts", "initial", "max", "jitter"];
const PHASE_FIELDS: &[&str] = &["after", "gate", "checks"];
const TASK_FIELDS: &[&str] = &[
    "phase",
    "command",
    "http",
    "after",
    "timeout",
    "retries",
    "heartbeat",
    "deadline",
    "uses",
    "wait_for",
    "when",
    "inputs",
    "expand",
    "cwd",
    "env",
    "env_file",
    "inherit_env",
    "not_ready",
    "smoke",
    "secrets",
    "repeat",
    "freeze_after",
    "version",
    "code",
    "rollout",
    "checks",
];
const TASK_LATER: &[&str] = &[];
const PARTITION_KINDS: &[&str] = &["date", "none"];
const JITTER_KINDS: &[&str] = &["full", "equal", "none"];

/// Why a duration above [`MAX_DURATION`] is refused.
const MAX_DURATION_REASON: &str = "it must be at most 365d";

const EXPECT_TABLE: &str = "a table";
const EXPECT_STRING: &str = "a string";
const EXPECT_DURATION: &str = "a duration string such as \"10m\"";
const EXPECT_INTEGER: &str = "an integer";
const EXPECT_NAMES: &str = "a list of names such as [\"a\", \"b\"]";
const EXPECT_COMMAND: &str = "a list of strings such as [\"sh\", \"-c\", \"echo {date}\"]";

/// Parses and validates `source`; `file` is the label used in locations.
pub(crate) fn parse_spec(source: &str, file: &str) -> Result<PipelineSpec, ConfigErrors> {
    let mut checker = Checker {
        map: SourceMap::new(source, file),
        errors: Vec::new(),
        params: Vec::new(),
        partition: PartitionKind::Date,
        expanding: false,
        heals: Vec::new(),
    };
    let (document, parse_errors) = DeTable::parse_recoverable(source);
    let only_duplicates = checker.record_parse_errors(&parse_errors);
    // After a real syntax error the recovered tree can be missing whole tables, and validating
    // it would report errors that are not there. Duplicate keys leave a sound tree behind.
    let spec = if only_duplicates {
        checker.scan_for_secrets(document.get_ref(), "");
        checker.check_document(document.get_ref())
    } else {
        None
    };
    let mut errors = checker.errors;
    match spec {
        Some(spec) if errors.is_empty() => Ok(spec),
        _ => {
            // A stable sort keeps errors found at the same position in the order they were found.
            errors.sort_by_key(|error| {
                error
                    .location()
                    .map(|location| (location.line, location.column))
            });
            errors.dedup();
            Err(ConfigErrors(errors))
        }
    }
}

/// Turns byte offsets into `file:line:column` locations.
struct SourceMap<'s> {
    source: &'s str,
    file: String,
    line_starts: Vec<usize>,
}

impl<'s> SourceMap<'s> {
    fn new(source: &'s str, file: &str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(source.match_indices('\n').map(|(offset, _)| offset + 1))
            .collect();
        SourceMap {
            source,
            file: file.to_string(),
            line_starts,
        }
    }

    fn location(&self, offset: usize) -> Location {
        let mut offset = offset.min(self.source.len());
        while !self.source.is_char_boundary(offset) {
            offset -= 1;
        }
        let line = match self.line_starts.binary_search(&offset) {
            Ok(line) => line,
            Err(next_line) => next_line - 1,
        };
        let column = self.source[self.line_starts[line]..offset].chars().count() + 1;
        Location {
            file: self.file.clone(),
            line: line + 1,
            column,
        }
    }

    /// The byte offset of `inner` bytes into a string value written at `span`. Escapes make the
    /// written form differ from the value; then the start of the string is the best we can do.
    fn offset_in_string(&self, span: &Range<usize>, value: &str, inner: usize) -> usize {
        let written = self.source.get(span.clone()).unwrap_or("");
        let single_line_quoted = written.len() >= 2
            && ((written.starts_with('"') && !written.starts_with("\"\"\""))
                || (written.starts_with('\'') && !written.starts_with("'''")));
        if single_line_quoted && &written[1..written.len() - 1] == value {
            span.start + 1 + inner
        } else {
            span.start
        }
    }

    /// The text of a key as written, without quotes.
    fn key_text(&self, span: &Range<usize>) -> String {
        let written = self.source.get(span.clone()).unwrap_or("");
        written.trim_matches(|c| c == '"' || c == '\'').to_string()
    }

    /// Whether `offset` is on a `[table]` or `[[array]]` header line.
    fn on_header_line(&self, offset: usize) -> bool {
        let location = self.location(offset);
        let start = self.line_starts[location.line - 1];
        self.source[start..].trim_start().starts_with('[')
    }

    /// The offset of the next header line after `offset`, or the end of the file.
    fn next_header_after(&self, offset: usize) -> usize {
        self.line_starts
            .iter()
            .copied()
            .filter(|start| *start > offset)
            .find(|start| self.source[*start..].trim_start().starts_with('['))
            .unwrap_or(self.source.len())
    }
}

/// A name as written somewhere in the file.
#[derive(Debug, Clone)]
struct NameRef {
    name: String,
    span: Range<usize>,
}

/// Retry settings that may each be left out and filled from the level above.
#[derive(Debug, Default, Clone)]
struct RetriesOverride {
    attempts: Option<u32>,
    initial: Option<Duration>,
    max: Option<Duration>,
    jitter: Option<Jitter>,
    /// Where the table is, `defaults.retries` or `tasks.NAME.retries`, for errors.
    path: String,
    /// `initial` and `max` as written, for errors that compare them; set only when valid.
    initial_written: Option<Written>,
    max_written: Option<Written>,
    /// Whether `initial` or `max` was written but invalid: comparing what is left would report
    /// a second, misleading error about the same value.
    delays_invalid: bool,
}

/// A value as written in the file, and where.
#[derive(Debug, Clone)]
struct Written {
    text: String,
    span: Range<usize>,
}

impl RetriesOverride {
    fn over(&self, base: RetryPolicy) -> RetryPolicy {
        RetryPolicy {
            attempts: self.attempts.unwrap_or(base.attempts),
            initial: self.initial.unwrap_or(base.initial),
            max: self.max.unwrap_or(base.max),
            jitter: self.jitter.unwrap_or(base.jitter),
        }
    }
}

#[derive(Debug, Default)]
struct RawPipeline {
    name: Option<String>,
    timezone: Option<String>,
    partition: Option<PartitionKind>,
    state: Option<String>,
    /// The cron expression and where it is, checked once the time zone is known.
    schedule: Option<(String, Range<usize>)>,
    schedule_partition: Option<i64>,
    catchup: Option<Catchup>,
    /// `backfill = { … }` and where it is, put with the schedule once that is known.
    backfill: Option<(keel_model::BackfillSpec, Range<usize>)>,
    schedule_spec: Option<ScheduleSpec>,
    max_active_partitions: Option<u32>,
    /// `heal = { budget = N }`.
    heal_budget: Option<u32>,
}

#[derive(Debug, Default)]
struct RawDefaults {
    timeout: Option<Duration>,
    retries: RetriesOverride,
    heartbeat: Option<Duration>,
    deadline: Option<Duration>,
    concurrency: Option<u32>,
    context: RawContext,
}

#[derive(Debug)]
struct RawPhase {
    name: NameRef,
    after: Vec<NameRef>,
    gate: Option<RawGate>,
    checks: Vec<keel_model::PhaseCheck>,
}

#[derive(Debug)]
struct RawTask {
    name: NameRef,
    phase: Option<NameRef>,
    command: Option<Vec<String>>,
    http: Option<keel_model::HttpSpec>,
    after: Vec<NameRef>,
    timeout: Option<Duration>,
    retries: RetriesOverride,
    heartbeat: Option<Duration>,
    deadline: Option<Duration>,
    uses: Vec<NameRef>,
    /// Every sensor `wait_for` names, in order: one for a single table.
    wait_for: Vec<RawSensor>,
    when: Option<keel_model::CalendarSpec>,
    context: RawContext,
    /// `after` entries written `{ task = "NAME", soft = true }`.
    soft: Vec<String>,
    /// `inputs = [...]`, when written.
    inputs: Option<Vec<NameRef>>,
    expand: Option<expand::RawExpand>,
    not_ready: Option<keel_model::NotReadyPolicy>,
    smoke: Option<Vec<String>>,
    secrets: Vec<String>,
    /// `after` entries on an earlier partition (`"NAME@-1d"`), apart from the graph's.
    earlier: Vec<edges::RawEarlier>,
    repeat: Option<keel_model::RepeatSpec>,
    freeze_after: Option<timing::RawFreeze>,
    /// `version`, `code` and `rollout`.
    versioning: keel_model::TaskVersioning,
    checks: Vec<keel_model::CheckSpec>,
}

/// Which command of a task is being read; errors name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CommandKind {
    Task,
    Sensor,
    /// `when.command`.
    Calendar,
    /// `smoke`, run by `keel check`.
    Smoke,
    /// `version`, whose output is part of the task's version.
    Version,
}

/// Where a list of names sits, for its errors.
struct NameListContext<'a> {
    /// The field holding the list: `after`, `uses` or `required`.
    field: &'a str,
    /// The dotted path of the table holding the field.
    table: &'a str,
    /// How a repeat names the list: `after list`.
    list: &'static str,
    owner_kind: NameKind,
    owner: &'a str,
}

struct Checker<'s> {
    map: SourceMap<'s>,
    errors: Vec<ConfigError>,
    /// The parameter names the passes declare: what `{param.NAME}` may name.
    params: Vec<String>,
    /// The pipeline's `partition`, read before anything else like `params`: whether templates
    /// may do date arithmetic. A misspelt value is reported where it is written.
    partition: PartitionKind,
    /// Whether the task being read has `expand`: whether `{item}` may appear in its templates.
    expanding: bool,
    /// The checks' `heal` targets, judged once every task is known (`check_heals`).
    heals: Vec<heal::RawHeal>,
}

/// The `partition` of `[pipeline]`, `date` unless it says `none`.
fn declared_partition(root: &DeTable<'_>) -> PartitionKind {
    let Some(DeValue::Table(pipeline)) = root.get("pipeline").map(Spanned::get_ref) else {
        return PartitionKind::Date;
    };
    match pipeline.get("partition").map(Spanned::get_ref) {
        Some(DeValue::String(kind)) if kind.as_ref() == "none" => PartitionKind::None,
        _ => PartitionKind::Date,
    }
}

/// A table's entries in file order; `DeTable` itself keeps them sorted by key.
fn entries<'a, 'i>(
    table: &'a DeTable<'i>,
) -> Vec<(&'a Spanned<DeString<'i>>, &'a Spanned<DeValue<'i>>)> {
    let mut entries: Vec<_> = table.iter().collect();
    entries.sort_by_key(|(key, _)| key.span().start);
    entries
}

/// `parent.name`, quoting the name when it is not a bare TOML key.
fn join_path(parent: &str, name: &str) -> String {
    let bare = is_valid_name(name);
    match (parent.is_empty(), bare) {
        (true, true) => name.to_string(),
        (true, false) => format!("{name:?}"),
        (false, true) => format!("{parent}.{name}"),
        (false, false) => format!("{parent}.{name:?}"),
    }
}

fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-')
}

/// A whole duration in the largest unit that divides it: `1m`, `90s`, `250ms`.
fn plain_duration(duration: Duration) -> String {
    let ms = duration.as_millis();
    let units = [
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1_000, "s"),
    ];
    for (size, unit) in units {
        if ms > 0 && ms.is_multiple_of(size) {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

fn duration_reason(error: &DurationError) -> String {
    match error {
        DurationError::MissingUnit(_) => {
            "add a unit (ms, s, m, h or d), for example \"30s\" or \"10m\"".to_string()
        }
        DurationError::UnknownUnit { unit, .. } => {
            format!("unknown unit {unit:?}; units are ms, s, m, h and d")
        }
        DurationError::Empty | DurationError::Malformed(_) => {
            "write for example \"30s\", \"5m\", \"1h30m\" or \"250ms\"".to_string()
        }
        DurationError::Overflow(_) => MAX_DURATION_REASON.to_string(),
    }
}

impl Checker<'_> {
    fn location(&self, span: &Range<usize>) -> Location {
        self.map.location(span.start)
    }

    /// Records toml's own errors. Returns whether they were all duplicate keys (or none).
    fn record_parse_errors(&mut self, errors: &[toml::de::Error]) -> bool {
        let mut only_duplicates = true;
        // A repeated `[table]` header also makes each of its keys a duplicate; reporting the
        // header alone is enough, so keys up to the next header are skipped.
        let mut skip_until: Option<(usize, usize)> = None;
        let mut sorted: Vec<&toml::de::Error> = errors.iter().collect();
        sorted.sort_by_key(|error| error.span().map_or(0, |span| span.start));
        for error in sorted {
            let span = error.span().unwrap_or(0..0);
            if error.message() == "duplicate key" {
                if skip_until.is_some_and(|(from, to)| span.start > from && span.start < to) {
                    continue;
                }
                if self.map.on_header_line(span.start) {
                    skip_until = Some((span.start, self.map.next_header_after(span.start)));
                }
                self.errors.push(ConfigError::DuplicateKey {
                    key: self.map.key_text(&span),
                    location: self.location(&span),
                });
            } else {
                only_duplicates = false;
                self.errors.push(ConfigError::Syntax {
                    message: error.message().to_string(),
                    location: self.location(&span),
                });
            }
        }
        only_duplicates
    }

    /// Refuses every string in the file that looks like a plaintext secret, wherever it is.
    fn scan_for_secrets(&mut self, table: &DeTable<'_>, path: &str) {
        for (key, value) in entries(table) {
            self.scan_value(value, &join_path(path, key.get_ref()));
        }
    }

    fn scan_value(&mut self, value: &Spanned<DeValue<'_>>, path: &str) {
        match value.get_ref() {
            DeValue::String(text) => {
                if let Some(finding) = find_secret(text) {
                    let offset = self
                        .map
                        .offset_in_string(&value.span(), text, finding.offset);
                    if path == "pipeline.state" {
                        // The state's URL reaches the database: its password has a place of
                        // its own, which the driver reads.
                        self.errors.push(ConfigError::StatePassword {
                            redacted: finding.redacted,
                            location: self.map.location(offset),
                        });
                    } else {
                        self.errors.push(ConfigError::PlaintextSecret {
                            field: path.to_string(),
                            what: finding.what,
                            redacted: finding.redacted,
                            location: self.map.location(offset),
                        });
                    }
                }
            }
            DeValue::Array(items) => {
                for (position, item) in items.iter().enumerate() {
                    self.scan_value(item, &format!("{path}[{position}]"));
                }
                self.scan_arguments(items, path);
            }
            DeValue::Table(table) => self.scan_for_secrets(table, path),
            DeValue::Integer(_)
            | DeValue::Float(_)
            | DeValue::Boolean(_)
            | DeValue::Datetime(_) => {}
        }
    }

    /// A list of strings read as a command's arguments: a flag that names a credential followed
    /// by a literal value (`"--password", "hunter2"`) is refused, pointing at the value.
    fn scan_arguments(&mut self, items: &[Spanned<DeValue<'_>>], path: &str) {
        let Some(arguments) = items
            .iter()
            .map(|item| match item.get_ref() {
                DeValue::String(text) => Some(text.as_ref()),
                _ => None,
            })
            .collect::<Option<Vec<&str>>>()
        else {
            return;
        };
        // A value that is itself a secret was refused already, by `scan_value`.
        if let Some((index, finding)) = find_secret_in_arguments(&arguments)
            && find_secret(arguments[index]).is_none()
        {
            let item = &items[index];
            let offset = self.map.offset_in_string(&item.span(), arguments[index], 0);
            self.errors.push(ConfigError::PlaintextSecret {
                field: format!("{path}[{index}]"),
                what: finding.what,
                redacted: finding.redacted,
                location: self.map.location(offset),
            });
        }
    }

    fn unknown_field(
        &mut self,
        key: &Spanned<DeString<'_>>,
        table: &str,
        supported: &'static [&'static str],
        later: &[&str],
    ) {
        let field = key.get_ref().to_string();
        let suggestion = closest(&field, supported.iter().chain(later).copied());
        self.errors.push(ConfigError::UnknownField {
            field,
            table: table.to_string(),
            location: self.location(&key.span()),
            suggestion,
            expected: supported,
        });
    }

    fn not_supported_yet(&mut self, key: &Spanned<DeString<'_>>, table: &str) {
        self.errors.push(ConfigError::NotSupportedYet {
            field: key.get_ref().to_string(),
            table: table.to_string(),
            location: self.location(&key.span()),
        });
    }

    fn wrong_type(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        field: &str,
        table: &str,
        expected: &'static str,
    ) {
        self.errors.push(ConfigError::WrongType {
            field: field.to_string(),
            table: table.to_string(),
            expected,
            found: value.get_ref().type_str(),
            location: self.location(&value.span()),
        });
    }

    fn table<'a, 'i>(
        &mut self,
        value: &'a Spanned<DeValue<'i>>,
        field: &str,
        table: &str,
    ) -> Option<&'a DeTable<'i>> {
        match value.get_ref() {
            DeValue::Table(inner) => Some(inner),
            _ => {
                self.wrong_type(value, field, table, EXPECT_TABLE);
                None
            }
        }
    }

    fn string(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        field: &str,
        table: &str,
        expected: &'static str,
    ) -> Option<String> {
        match value.get_ref() {
            DeValue::String(text) => Some(text.to_string()),
            _ => {
                self.wrong_type(value, field, table, expected);
                None
            }
        }
    }

    fn duration(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        field: &str,
        table: &str,
        allow_zero: bool,
    ) -> Option<Duration> {
        let text = self.string(value, field, table, EXPECT_DURATION)?;
        let reason = match keel_model::parse_duration(&text) {
            Ok(duration) if duration > MAX_DURATION => MAX_DURATION_REASON.to_string(),
            Ok(duration) if allow_zero || !duration.is_zero() => return Some(duration),
            Ok(_) => "it must be longer than zero".to_string(),
            Err(error) => duration_reason(&error),
        };
        self.errors.push(ConfigError::InvalidDuration {
            field: field.to_string(),
            table: table.to_string(),
            value: text,
            reason,
            location: self.location(&value.span()),
        });
        None
    }

    fn nul_byte(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        field: String,
        table: &str,
        text: String,
        what: &'static str,
    ) {
        self.errors.push(ConfigError::NulByte {
            field,
            table: table.to_string(),
            value: text,
            what,
            location: self.location(&value.span()),
        });
    }

    fn positive_integer(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        field: &str,
        table: &str,
    ) -> Option<u32> {
        self.integer_at_least(value, field, table, 1)
    }

    fn integer_at_least(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        field: &str,
        table: &str,
        minimum: u32,
    ) -> Option<u32> {
        let DeValue::Integer(integer) = value.get_ref() else {
            self.wrong_type(value, field, table, EXPECT_INTEGER);
            return None;
        };
        let parsed = i128::from_str_radix(integer.as_str(), integer.radix()).ok();
        let bound = match parsed {
            Some(number) if number < i128::from(minimum) => format!("at least {minimum}"),
            Some(number) => match u32::try_from(number) {
                Ok(number) => return Some(number),
                Err(_) => format!("at most {}", u32::MAX),
            },
            None => format!("at most {}", u32::MAX),
        };
        self.errors.push(ConfigError::OutOfRange {
            field: field.to_string(),
            table: table.to_string(),
            value: integer.to_string(),
            bound,
            location: self.location(&value.span()),
        });
        None
    }

    fn choice(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        field: &str,
        table: &str,
        expected: &'static [&'static str],
    ) -> Option<&'static str> {
        let text = self.string(value, field, table, EXPECT_STRING)?;
        if let Some(found) = expected.iter().find(|choice| **choice == text) {
            return Some(found);
        }
        self.errors.push(ConfigError::InvalidChoice {
            field: field.to_string(),
            table: table.to_string(),
            suggestion: closest(&text, expected.iter().copied()),
            value: text,
            expected,
            location: self.location(&value.span()),
        });
        None
    }

    /// A list of phase, task or resource names, each checked for type and repeats; whether
    /// they name something is checked once every table has been read.
    fn name_list(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        context: &NameListContext<'_>,
    ) -> Vec<NameRef> {
        let DeValue::Array(items) = value.get_ref() else {
            self.wrong_type(value, context.field, context.table, EXPECT_NAMES);
            return Vec::new();
        };
        let mut names: Vec<NameRef> = Vec::new();
        for (position, item) in items.iter().enumerate() {
            let field = format!("{}[{position}]", context.field);
            let Some(name) = self.string(item, &field, context.table, EXPECT_STRING) else {
                continue;
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
            names.push(NameRef { name, span });
        }
        names
    }

    fn check_name(&mut self, kind: NameKind, name: &str, span: &Range<usize>) {
        if !is_valid_name(name) {
            self.errors.push(ConfigError::InvalidName {
                kind,
                name: name.to_string(),
                location: self.location(span),
            });
        } else if name.len() > MAX_NAME_LENGTH {
            // A valid name is ASCII, so its length in bytes is its length in characters.
            self.errors.push(ConfigError::NameTooLong {
                kind,
                name: name.to_string(),
                length: name.len(),
                location: self.location(span),
            });
        }
    }

    fn check_document(&mut self, root: &DeTable<'_>) -> Option<PipelineSpec> {
        let mut pipeline: Option<RawPipeline> = None;
        let mut pipeline_span: Option<Range<usize>> = None;
        let mut defaults = RawDefaults::default();
        let mut resources: Vec<RawResource> = Vec::new();
        let mut phases: Vec<RawPhase> = Vec::new();
        let mut tasks: Vec<RawTask> = Vec::new();
        let mut raw_passes: Vec<passes::RawPass> = Vec::new();
        let mut alerts = None;
        let mut secrets = None;
        let mut slos = Vec::new();
        // Whether any task was written at all, well-formed or not.
        let mut tasks_written = false;
        self.params = passes::declared_params(root);
        self.partition = declared_partition(root);
        for (key, value) in entries(root) {
            let field = key.get_ref().as_ref();
            match field {
                "pipeline" => {
                    // The start of the `[pipeline]` header (or of an inline table).
                    pipeline_span = Some(value.span().start.min(key.span().start)..key.span().end);
                    if let Some(table) = self.table(value, field, "") {
                        pipeline = Some(self.pipeline(table, &key.span()));
                    }
                }
                "defaults" => {
                    if let Some(table) = self.table(value, field, "") {
                        defaults = self.defaults(table);
                    }
                }
                "resources" => {
                    if let Some(table) = self.table(value, field, "") {
                        for (name, resource) in entries(table) {
                            resources.extend(self.resource(name, resource));
                        }
                    }
                }
                "phases" => {
                    if let Some(table) = self.table(value, field, "") {
                        for (name, phase) in entries(table) {
                            phases.extend(self.phase(name, phase));
                        }
                    }
                }
                "tasks" => {
                    tasks_written =
                        !matches!(value.get_ref(), DeValue::Table(table) if table.is_empty());
                    if let Some(table) = self.table(value, field, "") {
                        for (name, task) in entries(table) {
                            tasks.extend(self.task(name, task));
                        }
                    }
                }
                "passes" => {
                    if let Some(table) = self.table(value, field, "") {
                        for (name, pass) in entries(table) {
                            raw_passes.extend(self.pass(name, pass));
                        }
                    }
                }
                "alerts" => {
                    if let Some(table) = self.table(value, field, "") {
                        alerts = self.alerts(table, &key.span());
                    }
                }
                "secrets" => {
                    if let Some(table) = self.table(value, field, "") {
                        secrets = self.secrets(table, &key.span());
                    }
                }
                "slo" => {
                    if let Some(table) = self.table(value, field, "") {
                        for (name, slo) in entries(table) {
                            slos.extend(self.slo(name, slo));
                        }
                    }
                }
                _ if TOP_LEVEL_LATER.contains(&field) => self.not_supported_yet(key, ""),
                _ => self.unknown_field(key, "", TOP_LEVEL_FIELDS, TOP_LEVEL_LATER),
            }
        }
        if pipeline_span.is_none() {
            self.errors.push(ConfigError::MissingTable {
                table: "pipeline".to_string(),
                location: self.map.location(0),
            });
        }
        if !tasks_written {
            self.errors.push(ConfigError::NoTasks {
                location: self.location(&pipeline_span.unwrap_or(0..0)),
            });
        }
        self.check_phase_graph(&phases);
        self.check_task_graph(&phases, &tasks);
        self.check_expansions(&phases, &tasks);
        self.check_freezes(&tasks);
        self.check_heals(&phases, &tasks);
        self.check_gates(&phases, &tasks);
        self.check_uses(&resources, &tasks);
        self.check_retry_delays(&defaults, &tasks);
        let zone = pipeline
            .as_ref()
            .and_then(|pipeline| pipeline.timezone.clone())
            .unwrap_or_else(|| "UTC".to_string());
        self.check_passes(&mut raw_passes, &zone, &phases, &tasks);
        let pipeline = pipeline?;
        let passes = passes::build_passes(raw_passes, &tasks);
        let mut spec = build_spec(pipeline, &defaults, resources, phases, tasks, passes);
        spec.alerts = alerts;
        spec.secrets = secrets;
        // A scheduled run usually processes an earlier date (schedule_partition = "-1d"): a
        // freshness SLO's partition is then due that many days after its date.
        let days_after = spec.schedule.as_ref().map_or(0, |schedule| {
            u32::try_from(-schedule.partition_offset_days.min(0)).unwrap_or(0)
        });
        spec.slos = slos.into_iter().map(|slo| slo.build(days_after)).collect();
        Some(spec).filter(|_| self.errors.is_empty())
    }

    fn pipeline(&mut self, table: &DeTable<'_>, table_span: &Range<usize>) -> RawPipeline {
        const PATH: &str = "pipeline";
        let mut raw = RawPipeline::default();
        for (key, value) in entries(table) {
            let field = key.get_ref().as_ref();
            match field {
                "name" => {
                    if let Some(name) = self.string(value, field, PATH, EXPECT_STRING) {
                        self.check_name(NameKind::Pipeline, &name, &value.span());
                        raw.name = Some(name);
                    }
                }
                "timezone" => {
                    if let Some(timezone) = self.string(value, field, PATH, EXPECT_STRING) {
                        if chrono_tz::Tz::from_str(&timezone).is_ok() {
                            raw.timezone = Some(timezone);
                        } else {
                            self.errors.push(ConfigError::UnknownTimezone {
                                suggestion: closest_timezone(&timezone),
                                timezone,
                                location: self.location(&value.span()),
                            });
                        }
                    }
                }
                "partition" => {
                    raw.partition = match self.choice(value, field, PATH, PARTITION_KINDS) {
                        Some("date") => Some(PartitionKind::Date),
                        Some(_) => Some(PartitionKind::None),
                        None => None,
                    };
                }
                "state" => {
                    raw.state = self
                        .string(value, field, PATH, EXPECT_STRING)
                        .and_then(|state| {
                            if state.contains('\0') {
                                self.nul_byte(value, field.to_string(), PATH, state, "a path");
                                None
                            } else {
                                Some(state)
                            }
                        });
                }
                "schedule" => {
                    raw.schedule = self
                        .string(value, field, PATH, EXPECT_STRING)
                        .map(|text| (text, value.span()));
                }
                "schedule_partition" => {
                    raw.schedule_partition = self.day_offset(value, field, PATH)
                }
                "catchup" => {
                    raw.catchup = match self.choice(value, field, PATH, CATCHUP_KINDS) {
                        Some("all") => Some(Catchup::All),
                        Some("none") => Some(Catchup::None),
                        Some(_) => Some(Catchup::Latest),
                        None => None,
                    };
                }
                "max_active_partitions" => {
                    raw.max_active_partitions = self.positive_integer(value, field, PATH);
                }
                "heal" => raw.heal_budget = self.heal_budget(key, value),
                "backfill" => {
                    raw.backfill = self.backfill(key, value).map(|spec| (spec, key.span()));
                }
                _ if PIPELINE_LATER.contains(&field) => self.not_supported_yet(key, PATH),
                _ => self.unknown_field(key, PATH, PIPELINE_FIELDS, PIPELINE_LATER),
            }
        }
        self.check_schedule(&mut raw);
        if raw.name.is_none() && !table.contains_key("name") {
            self.errors.push(ConfigError::MissingField {
                field: "name".to_string(),
                table: PATH.to_string(),
                location: self.location(table_span),
            });
        }
        raw
    }

    /// `schedule_partition` (or a pass's `partition`): a whole number of days such as `"-1d"`,
    /// `"0d"` or `"+1d"`.
    fn day_offset(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        field: &str,
        table: &str,
    ) -> Option<i64> {
        let text = self.string(value, field, table, EXPECT_STRING)?;
        let parsed = text
            .strip_suffix('d')
            .and_then(|days| days.parse::<i64>().ok())
            .filter(|days| days.abs() <= 366);
        if parsed.is_none() {
            self.errors.push(ConfigError::InvalidSchedule {
                field: field.to_string(),
                table: table.to_string(),
                value: text,
                reason: "write a whole number of days from the scheduled time's local date, such as \"-1d\" (the day before), \"0d\" or \"+1d\", within a year".to_string(),
                location: self.location(&value.span()),
            });
        }
        parsed
    }

    /// Checks `schedule` in the pipeline's time zone and puts the schedule fields together.
    fn check_schedule(&mut self, raw: &mut RawPipeline) {
        let backfill = raw.backfill.take();
        if let Some((_, span)) = &backfill {
            // Gaps are partitions the schedule should have made: that takes a schedule, and
            // dates to count them in.
            let missing = if raw.schedule.is_none() {
                Some("a schedule (`schedule = \"0 6 * * *\"`)")
            } else if self.partition != PartitionKind::Date {
                Some("date partitions (`partition = \"date\"`)")
            } else {
                None
            };
            if let Some(missing) = missing {
                self.errors.push(ConfigError::InvalidSchedule {
                    field: "backfill".to_string(),
                    table: "pipeline".to_string(),
                    value: "{ … }".to_string(),
                    reason: format!(
                        "gap detection finds the partitions the schedule should have made, so the pipeline needs {missing}; add it or remove backfill"
                    ),
                    location: self.location(span),
                });
            }
        }
        let Some((cron, span)) = raw.schedule.take() else {
            return;
        };
        let zone = raw.timezone.as_deref().unwrap_or("UTC");
        match keel_model::schedule::Schedule::parse(&cron, zone) {
            Ok(_) => {
                raw.schedule_spec = Some(ScheduleSpec {
                    cron,
                    partition_offset_days: raw.schedule_partition.unwrap_or(0),
                    catchup: raw.catchup.unwrap_or_default(),
                    backfill: backfill.map(|(spec, _)| spec),
                })
            }
            Err(error) => self.errors.push(ConfigError::InvalidSchedule {
                field: "schedule".to_string(),
                table: "pipeline".to_string(),
                value: cron,
                reason: error.to_string(),
                location: self.location(&span),
            }),
        }
    }

    fn defaults(&mut self, table: &DeTable<'_>) -> RawDefaults {
        const PATH: &str = "defaults";
        let mut raw = RawDefaults::default();
        for (key, value) in entries(table) {
            let field = key.get_ref().as_ref();
            match field {
                "timeout" => raw.timeout = self.duration(value, field, PATH, false),
                "retries" => raw.retries = self.retries(value, "defaults.retries", PATH),
                "heartbeat" => raw.heartbeat = self.duration(value, field, PATH, false),
                "deadline" => raw.deadline = self.duration(value, field, PATH, true),
                "concurrency" => raw.concurrency = self.positive_integer(value, field, PATH),
                _ if CONTEXT_FIELDS.contains(&field) => {
                    self.context_field(field, value, PATH, &mut raw.context)
                }
                _ => self.unknown_field(key, PATH, DEFAULTS_FIELDS, &[]),
            }
        }
        raw
    }

    fn retries(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        path: &str,
        parent: &str,
    ) -> RetriesOverride {
        let mut raw = RetriesOverride {
            path: path.to_string(),
            ..RetriesOverride::default()
        };
        let Some(table) = self.table(value, "retries", parent) else {
            return raw;
        };
        for (key, value) in entries(table) {
            let field = key.get_ref().as_ref();
            match field {
                "attempts" => raw.attempts = self.positive_integer(value, field, path),
                "initial" | "max" => {
                    let duration = self.duration(value, field, path, true);
                    let written = duration.map(|_| Written {
                        text: value.get_ref().as_str().unwrap_or_default().to_string(),
                        span: value.span(),
                    });
                    raw.delays_invalid |= duration.is_none();
                    if field == "initial" {
                        (raw.initial, raw.initial_written) = (duration, written);
                    } else {
                        (raw.max, raw.max_written) = (duration, written);
                    }
                }
                "jitter" => {
                    raw.jitter = match self.choice(value, field, path, JITTER_KINDS) {
                        Some("full") => Some(Jitter::Full),
                        Some("equal") => Some(Jitter::Equal),
                        Some(_) => Some(Jitter::None),
                        None => None,
                    };
                }
                _ => self.unknown_field(key, path, RETRIES_FIELDS, &[]),
            }
        }
        raw
    }

    fn phase(
        &mut self,
        name: &Spanned<DeString<'_>>,
        value: &Spanned<DeValue<'_>>,
    ) -> Option<RawPhase> {
        let phase_name = NameRef {
            name: name.get_ref().to_string(),
            span: name.span(),
        };
        self.check_name(NameKind::Phase, &phase_name.name, &phase_name.span);
        let path = join_path("phases", &phase_name.name);
        let table = self.table(value, &phase_name.name, "phases")?;
        let mut after = Vec::new();
        let mut gate = None;
        let mut checks = Vec::new();
        for (key, value) in entries(table) {
            let field = key.get_ref().as_ref();
            match field {
                "after" => {
                    let context = NameListContext {
                        field,
                        table: &path,
                        list: "after list",
                        owner_kind: NameKind::Phase,
                        owner: &phase_name.name,
                    };
                    after = self.name_list(value, &context);
                }
                "gate" => gate = self.gate(key, value, &path, &phase_name.name),
                "checks" => checks = self.phase_checks(value, &path),
                _ => self.unknown_field(key, &path, PHASE_FIELDS, &[]),
            }
        }
        Some(RawPhase {
            name: phase_name,
            after,
            gate,
            checks,
        })
    }

    fn task(
        &mut self,
        name: &Spanned<DeString<'_>>,
        value: &Spanned<DeValue<'_>>,
    ) -> Option<RawTask> {
        let task_name = NameRef {
            name: name.get_ref().to_string(),
            span: name.span(),
        };
        self.check_name(NameKind::Task, &task_name.name, &task_name.span);
        let path = join_path("tasks", &task_name.name);
        let table = self.table(value, &task_name.name, "tasks")?;
        let mut task = RawTask {
            name: task_name,
            phase: None,
            command: None,
            http: None,
            after: Vec::new(),
            timeout: None,
            retries: RetriesOverride::default(),
            heartbeat: None,
            deadline: None,
            uses: Vec::new(),
            wait_for: Vec::new(),
            when: None,
            context: RawContext::default(),
            soft: Vec::new(),
            inputs: None,
            expand: None,
            not_ready: None,
            smoke: None,
            secrets: Vec::new(),
            earlier: Vec::new(),
            repeat: None,
            freeze_after: None,
            versioning: Default::default(),
            checks: Vec::new(),
        };
        self.expanding = table.contains_key("expand");
        for (key, value) in entries(table) {
            let field = key.get_ref().as_ref();
            match field {
                "phase" => {
                    task.phase = self
                        .string(value, field, &path, EXPECT_STRING)
                        .map(|phase| NameRef {
                            name: phase,
                            span: value.span(),
                        });
                }
                "command" => {
                    task.command = self.command(value, &path, &task.name.name, CommandKind::Task);
                }
                "http" => task.http = self.http(key, value, &path, &task.name.name),
                "after" | "uses" => {
                    let context = NameListContext {
                        field,
                        table: &path,
                        list: if field == "after" {
                            "after list"
                        } else {
                            "uses list"
                        },
                        owner_kind: NameKind::Task,
                        owner: &task.name.name,
                    };
                    if field == "after" {
                        let after = self.after_list(value, &context);
                        (task.after, task.soft, task.earlier) =
                            (after.names, after.soft, after.earlier);
                    } else {
                        task.uses = self.name_list(value, &context);
                    }
                }
                "inputs" => {
                    let context = edges::inputs_context(&path, &task.name.name);
                    task.inputs = Some(self.name_list(value, &context));
                }
                "secrets" => task.secrets = self.secret_names(value, &path),
                "smoke" => {
                    task.smoke = self.command(value, &path, &task.name.name, CommandKind::Smoke);
                }
                "version" => {
                    task.versioning.command =
                        self.command(value, &path, &task.name.name, CommandKind::Version);
                }
                "code" => task.versioning.code = self.code_files(value, &path),
                "rollout" => task.versioning.rollout = self.rollout(value, &path),
                "wait_for" => task.wait_for = self.sensors(key, value, &path, &task.name.name),
                "when" => task.when = self.calendar(key, value, &path, &task.name.name),
                "expand" => task.expand = self.expand(key, value, &path),
                "timeout" => task.timeout = self.duration(value, field, &path, false),
                "retries" => task.retries = self.retries(value, &format!("{path}.retries"), &path),
                "heartbeat" => task.heartbeat = self.duration(value, field, &path, false),
                "deadline" => task.deadline = self.duration(value, field, &path, true),
                "not_ready" => task.not_ready = self.not_ready(key, value, &path),
                "repeat" => task.repeat = self.repeat(key, value, &path, &task.name.name),
                "freeze_after" => {
                    task.freeze_after = self.freeze_after(key, value, &path, &task.name.name)
                }
                "checks" => task.checks = self.checks(key, value, &path, &task.name.name),
                _ if CONTEXT_FIELDS.contains(&field) => {
                    self.context_field(field, value, &path, &mut task.context)
                }
                _ if TASK_LATER.contains(&field) => self.not_supported_yet(key, &path),
                _ => self.unknown_field(key, &path, TASK_FIELDS, TASK_LATER),
            }
        }
        if !table.contains_key("phase") {
            self.errors.push(ConfigError::MissingField {
                field: "phase".to_string(),
                table: path.clone(),
                location: self.location(&task.name.span),
            });
        }
        match (table.contains_key("command"), table.contains_key("http")) {
            (false, false) => self.errors.push(ConfigError::MissingField {
                field: "command".to_string(),
                table: path.clone(),
                location: self.location(&task.name.span),
            }),
            (true, true) => self.errors.push(ConfigError::InvalidHttp {
                owner: format!("task {:?}", task.name.name),
                field: "http".to_string(),
                reason: "the task has both a command and http; an HTTP task sends its request instead of running a command, so keep one".to_string(),
                location: self.location(&task.name.span),
            }),
            _ => {}
        }
        Some(task)
    }

    /// A task's `secrets = ["NAME", …]`: names of environment variables (upper-case letters,
    /// digits and underscores), each once; none of Keel's own `KEEL_` names.
    fn secret_names(&mut self, value: &Spanned<DeValue<'_>>, path: &str) -> Vec<String> {
        let DeValue::Array(items) = value.get_ref() else {
            self.wrong_type(
                value,
                "secrets",
                path,
                "a list of secret names such as [\"STATS_API_KEY\"]",
            );
            return Vec::new();
        };
        let mut names: Vec<String> = Vec::new();
        for (position, item) in items.iter().enumerate() {
            let field = format!("secrets[{position}]");
            let Some(name) = self.string(
                item,
                &field,
                path,
                "a secret name such as \"STATS_API_KEY\"",
            ) else {
                continue;
            };
            let valid = name
                .chars()
                .next()
                .is_some_and(|first| first.is_ascii_uppercase() || first == '_')
                && name
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
                && !name.starts_with("KEEL_");
            if !valid || names.contains(&name) {
                let reason = if names.contains(&name) {
                    "it is listed twice; remove the repeat".to_string()
                } else if name.starts_with("KEEL_") {
                    "names starting with KEEL_ are Keel's own; pick another".to_string()
                } else {
                    "a secret is given to the task as an environment variable of that name: use upper-case letters, digits and underscores, such as STATS_API_KEY".to_string()
                };
                self.errors.push(ConfigError::InvalidSecretName {
                    task: path.trim_start_matches("tasks.").to_string(),
                    name,
                    reason,
                    location: self.location(&item.span()),
                });
                continue;
            }
            names.push(name);
        }
        names
    }

    /// A task's `command`, or the `command` of its `wait_for`; `path` is the table holding it.
    fn command(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        path: &str,
        task: &str,
        kind: CommandKind,
    ) -> Option<Vec<String>> {
        let DeValue::Array(items) = value.get_ref() else {
            self.wrong_type(value, "command", path, EXPECT_COMMAND);
            return None;
        };
        if items.is_empty() {
            let task = task.to_string();
            let location = self.location(&value.span());
            self.errors.push(match kind {
                CommandKind::Task => ConfigError::EmptyCommand { task, location },
                CommandKind::Sensor => ConfigError::EmptySensorCommand { task, location },
                CommandKind::Calendar => ConfigError::EmptyCalendarCommand { task, location },
                CommandKind::Smoke => ConfigError::EmptySmokeCommand { task, location },
                CommandKind::Version => ConfigError::EmptyVersionCommand { task, location },
            });
            return None;
        }
        let template_field = match kind {
            CommandKind::Task => "command",
            CommandKind::Sensor => "wait_for command",
            CommandKind::Calendar => "when command",
            CommandKind::Smoke => "smoke command",
            CommandKind::Version => "version command",
        };
        let mut command = Vec::with_capacity(items.len());
        for (position, item) in items.iter().enumerate() {
            let field = format!("command[{position}]");
            let Some(argument) = self.string(item, &field, path, EXPECT_STRING) else {
                continue;
            };
            // TOML allows "\u0000", but an argument reaches the program as a C string, which
            // ends at the first NUL: the attempt would fail to start on every try.
            if argument.contains('\0') {
                self.nul_byte(item, field, path, argument, "an argument");
                continue;
            }
            self.check_task_templates(item, &argument, task, template_field);
            command.push(argument);
        }
        (command.len() == items.len()).then_some(command)
    }

    /// Reports every template problem of `text`, a string value at `item` that belongs to
    /// `task`'s `field` (its command, its sensor's command, a part of its HTTP request).
    pub(super) fn check_task_templates(
        &mut self,
        item: &Spanned<DeValue<'_>>,
        text: &str,
        task: &str,
        template_field: &'static str,
    ) {
        let params: Vec<&str> = self.params.iter().map(String::as_str).collect();
        for problem in check_templates(text, &params, self.partition) {
            if let TemplateProblem::Unknown { template, offset } = &problem
                && keel_model::expand::is_item_placeholder(&template[1..template.len() - 1])
            {
                if !self.expanding {
                    let at = self.map.offset_in_string(&item.span(), text, *offset);
                    self.errors.push(ConfigError::ItemWithoutExpand {
                        task: task.to_string(),
                        field: template_field,
                        template: template.clone(),
                        location: self.map.location(at),
                    });
                }
                continue;
            }
            let (TemplateProblem::Unknown { offset, .. }
            | TemplateProblem::Unclosed { offset }
            | TemplateProblem::UnknownParam { offset, .. }
            | TemplateProblem::BadDate { offset, .. }) = problem;
            let location = self
                .map
                .location(self.map.offset_in_string(&item.span(), text, offset));
            let task = task.to_string();
            self.errors.push(match problem {
                TemplateProblem::Unknown { template, .. } => ConfigError::UnknownTemplate {
                    task,
                    field: template_field,
                    template,
                    location,
                },
                TemplateProblem::Unclosed { .. } => ConfigError::UnclosedTemplate {
                    task,
                    field: template_field,
                    location,
                },
                TemplateProblem::UnknownParam { name, .. } => ConfigError::UnknownParam {
                    place: format!("the {template_field} of task {task:?}"),
                    suggestion: closest(&name, params.iter().copied()),
                    name,
                    location,
                },
                TemplateProblem::BadDate {
                    template, problem, ..
                } => ConfigError::DateTemplate {
                    place: format!("the {template_field} of task {task:?}"),
                    template,
                    problem,
                    location,
                },
            });
        }
    }

    /// Retry delays start at `initial` and double up to `max`. With `initial` above `max` every
    /// delay would be `max`: the two are most likely swapped, or one was changed without the
    /// other. Each table is checked where it sets a delay, against what it inherits.
    fn check_retry_delays(&mut self, defaults: &RawDefaults, tasks: &[RawTask]) {
        let builtin = RetryPolicy::default();
        self.check_retry_delay(&defaults.retries, builtin, None);
        let inherited = defaults.retries.over(builtin);
        for task in tasks {
            self.check_retry_delay(&task.retries, inherited, Some(&defaults.retries));
        }
    }

    fn check_retry_delay(
        &mut self,
        own: &RetriesOverride,
        base: RetryPolicy,
        defaults: Option<&RetriesOverride>,
    ) {
        // A table that sets neither delay has nothing wrong of its own; an inherited pair that
        // is wrong was reported where it was written.
        let Some(location) = own.initial_written.as_ref().or(own.max_written.as_ref()) else {
            return;
        };
        let inherits_invalid = defaults.is_some_and(|defaults| defaults.delays_invalid);
        let writes_both = own.initial_written.is_some() && own.max_written.is_some();
        if own.delays_invalid || (inherits_invalid && !writes_both) {
            return;
        }
        let policy = own.over(base);
        if policy.initial <= policy.max {
            return;
        }
        let describe = |written: &Option<Written>,
                        in_defaults: Option<&Option<Written>>,
                        builtin: Duration|
         -> (String, Option<&'static str>) {
            match (written, in_defaults) {
                (Some(written), _) => (written.text.clone(), None),
                (None, Some(Some(inherited))) => {
                    (inherited.text.clone(), Some("from [defaults.retries]"))
                }
                _ => (plain_duration(builtin), Some("the default")),
            }
        };
        let builtin = RetryPolicy::default();
        let (initial, initial_origin) = describe(
            &own.initial_written,
            defaults.map(|defaults| &defaults.initial_written),
            builtin.initial,
        );
        let (max, max_origin) = describe(
            &own.max_written,
            defaults.map(|defaults| &defaults.max_written),
            builtin.max,
        );
        self.errors.push(ConfigError::RetryInitialAboveMax {
            table: own.path.clone(),
            initial,
            initial_origin,
            max,
            max_origin,
            location: self.location(&location.span),
        });
    }

    fn check_phase_graph(&mut self, phases: &[RawPhase]) {
        let index: HashMap<&str, usize> = phases
            .iter()
            .enumerate()
            .map(|(position, phase)| (phase.name.name.as_str(), position))
            .collect();
        let mut edges: Vec<Vec<(usize, Range<usize>)>> = vec![Vec::new(); phases.len()];
        for (position, phase) in phases.iter().enumerate() {
            for dependency in &phase.after {
                match index.get(dependency.name.as_str()) {
                    Some(target) => edges[position].push((*target, dependency.span.clone())),
                    None => self.errors.push(ConfigError::UnknownPhaseDependency {
                        phase: phase.name.name.clone(),
                        dependency: dependency.name.clone(),
                        suggestion: closest(
                            &dependency.name,
                            phases.iter().map(|phase| phase.name.name.as_str()),
                        ),
                        location: self.location(&dependency.span),
                    }),
                }
            }
        }
        for cycle in find_cycles(&edges) {
            self.errors.push(ConfigError::Cycle {
                kind: NameKind::Phase,
                path: cycle
                    .path
                    .iter()
                    .map(|node| phases[*node].name.name.clone())
                    .collect(),
                location: self.location(&cycle.first_edge),
            });
        }
    }

    fn check_task_graph(&mut self, phases: &[RawPhase], tasks: &[RawTask]) {
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
        // Phase edges and cross-phase `after` entries always point to an earlier phase, so once
        // the phase graph is acyclic a task cycle can only run through `after` entries. Checking
        // those alone finds the same cycles as the full graph without repeating phase cycles.
        let mut edges: Vec<Vec<(usize, Range<usize>)>> = vec![Vec::new(); tasks.len()];
        for (position, task) in tasks.iter().enumerate() {
            if let Some(phase) = &task.phase
                && !phase_index.contains_key(phase.name.as_str())
            {
                self.errors.push(ConfigError::UnknownPhase {
                    task: task.name.name.clone(),
                    phase: phase.name.clone(),
                    suggestion: closest(
                        &phase.name,
                        phases.iter().map(|phase| phase.name.name.as_str()),
                    ),
                    location: self.location(&phase.span),
                });
            }
            for dependency in &task.after {
                let Some(target) = task_index.get(dependency.name.as_str()).copied() else {
                    self.errors.push(ConfigError::UnknownDependency {
                        task: task.name.name.clone(),
                        dependency: dependency.name.clone(),
                        suggestion: closest(
                            &dependency.name,
                            tasks.iter().map(|task| task.name.name.as_str()),
                        ),
                        names_a_phase: phase_index.contains_key(dependency.name.as_str()),
                        location: self.location(&dependency.span),
                    });
                    continue;
                };
                let (Some(own_phase), Some(target_phase)) =
                    (phase_of(task), phase_of(&tasks[target]))
                else {
                    continue;
                };
                if own_phase == target_phase || upstream[own_phase].contains(&target_phase) {
                    edges[position].push((target, dependency.span.clone()));
                } else {
                    self.errors.push(ConfigError::DependencyNotUpstream {
                        task: task.name.name.clone(),
                        phase: phases[own_phase].name.name.clone(),
                        dependency: dependency.name.clone(),
                        dependency_phase: phases[target_phase].name.name.clone(),
                        location: self.location(&dependency.span),
                    });
                }
            }
        }
        self.check_inputs(tasks, &phase_index, &upstream, phases);
        self.check_earlier(tasks);
        for cycle in find_cycles(&edges) {
            self.errors.push(ConfigError::Cycle {
                kind: NameKind::Task,
                path: cycle
                    .path
                    .iter()
                    .map(|node| tasks[*node].name.name.clone())
                    .collect(),
                location: self.location(&cycle.first_edge),
            });
        }
    }
}

/// For each phase, every phase it runs after, directly or through others.
fn upstream_phases(phases: &[RawPhase], index: &HashMap<&str, usize>) -> Vec<HashSet<usize>> {
    phases
        .iter()
        .map(|phase| {
            let mut seen = HashSet::new();
            let mut stack: Vec<&RawPhase> = vec![phase];
            while let Some(current) = stack.pop() {
                for dependency in &current.after {
                    if let Some(target) = index.get(dependency.name.as_str())
                        && seen.insert(*target)
                    {
                        stack.push(&phases[*target]);
                    }
                }
            }
            seen
        })
        .collect()
}

fn build_spec(
    pipeline: RawPipeline,
    defaults: &RawDefaults,
    resources: Vec<RawResource>,
    phases: Vec<RawPhase>,
    tasks: Vec<RawTask>,
    passes: Vec<keel_model::PassSpec>,
) -> PipelineSpec {
    let default_retries = defaults.retries.over(RetryPolicy::default());
    PipelineSpec {
        name: pipeline.name.unwrap_or_default(),
        timezone: pipeline.timezone.unwrap_or_else(|| "UTC".to_string()),
        partition: pipeline.partition.unwrap_or(PartitionKind::Date),
        state: pipeline.state,
        schedule: pipeline.schedule_spec,
        max_active_partitions: pipeline.max_active_partitions,
        heal_budget: pipeline
            .heal_budget
            .unwrap_or(keel_model::DEFAULT_HEAL_BUDGET),
        alerts: None,
        secrets: None,
        slos: Vec::new(),
        smoke: tasks
            .iter()
            .filter_map(|task| {
                Some(keel_model::SmokeTest {
                    task: task.name.name.clone(),
                    command: task.smoke.clone()?,
                })
            })
            .collect(),
        concurrency: defaults.concurrency.unwrap_or(DEFAULT_CONCURRENCY),
        phases: phases
            .into_iter()
            .map(|phase| PhaseSpec {
                name: phase.name.name,
                after: phase.after.into_iter().map(|after| after.name).collect(),
                gate: phase.gate.map(RawGate::build),
                checks: phase.checks,
            })
            .collect(),
        tasks: tasks
            .into_iter()
            .map(|task| {
                let deadline = task
                    .deadline
                    .or(defaults.deadline)
                    .unwrap_or(DEFAULT_DEADLINE);
                let mut sensors = task
                    .wait_for
                    .into_iter()
                    .map(|sensor| sensor.build(deadline));
                TaskSpec {
                    name: task.name.name,
                    phase: task.phase.map(|phase| phase.name).unwrap_or_default(),
                    command: task.command.unwrap_or_default(),
                    http: task.http,
                    after: task.after.into_iter().map(|after| after.name).collect(),
                    timeout: task.timeout.or(defaults.timeout).unwrap_or(DEFAULT_TIMEOUT),
                    retries: task.retries.over(default_retries),
                    heartbeat: task.heartbeat.or(defaults.heartbeat),
                    deadline,
                    uses: task.uses.into_iter().map(|name| name.name).collect(),
                    wait_for: sensors.next(),
                    also_wait_for: sensors.collect(),
                    when: task.when,
                    expand: task.expand.map(expand::RawExpand::build),
                    context: task.context.over(&defaults.context),
                    edges: keel_model::TaskEdges {
                        soft: task.soft,
                        earlier: task
                            .earlier
                            .into_iter()
                            .map(|earlier| keel_model::EarlierInput {
                                task: earlier.name.name,
                                days: earlier.days,
                                soft: earlier.soft,
                            })
                            .collect(),
                        inputs: task
                            .inputs
                            .map(|inputs| inputs.into_iter().map(|input| input.name).collect()),
                    },
                    not_ready: task.not_ready,
                    secrets: task.secrets,
                    repeat: task.repeat,
                    freeze_after: task.freeze_after.map(timing::RawFreeze::into_spec),
                    versioning: task.versioning.clone(),
                    checks: task.checks,
                }
            })
            .collect(),
        resources: resources.into_iter().map(RawResource::build).collect(),
        passes,
    }
}
