use std::fmt;

use crate::MAX_NAME_LENGTH;
use keel_model::template::DateTemplateProblem;

/// Where in a pipeline file something was found: `keel.toml:48:9`.
///
/// `line` and `column` are 1-based; the column counts characters, not bytes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    pub file: String,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// What a name in the file names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NameKind {
    Pipeline,
    Phase,
    Task,
    Resource,
    Pass,
    Param,
    Slo,
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NameKind::Pipeline => "pipeline",
            NameKind::Phase => "phase",
            NameKind::Task => "task",
            NameKind::Resource => "resource",
            NameKind::Pass => "pass",
            NameKind::Param => "parameter",
            NameKind::Slo => "slo",
        })
    }
}

/// One thing wrong with a pipeline file.
///
/// Each variant carries the offending value and, when it comes from the file, its [`Location`].
/// The `Display` form is the message shown to users: lowercase, the value quoted, the location in
/// parentheses, and a hint after a semicolon.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("pipeline file {path:?} not found; create one with `keel init`")]
    FileNotFound { path: String },

    #[error("cannot read pipeline file {path:?}: {reason}")]
    FileUnreadable { path: String, reason: String },

    #[error("invalid TOML: {message} ({location})")]
    Syntax { message: String, location: Location },

    #[error("duplicate key {key:?} ({location}); a key or table may be defined only once")]
    DuplicateKey { key: String, location: Location },

    #[error(
        "unknown field {field:?}{} ({location}); {}",
        in_table(.table),
        suggest_or_list(.suggestion, .expected)
    )]
    UnknownField {
        field: String,
        /// The dotted path of the table, empty for the top level.
        table: String,
        location: Location,
        suggestion: Option<String>,
        /// The supported fields of that table.
        expected: &'static [&'static str],
    },

    #[error("{field:?} is not supported yet{} ({location}); remove it for now", in_table(.table))]
    NotSupportedYet {
        field: String,
        table: String,
        location: Location,
    },

    #[error("missing table [{table}] ({location}); add it with at least name = \"my_pipeline\"")]
    MissingTable { table: String, location: Location },

    #[error("missing field {field:?}{} ({location}); {}", in_table(.table), missing_hint(.table, .field))]
    MissingField {
        field: String,
        table: String,
        location: Location,
    },

    #[error("no tasks defined ({location}); add a [tasks.NAME] table with a phase and a command")]
    NoTasks { location: Location },

    #[error("{field:?}{} must be {expected}, found {found} ({location})", in_table(.table))]
    WrongType {
        field: String,
        table: String,
        expected: &'static str,
        found: &'static str,
        location: Location,
    },

    #[error(
        "invalid {kind} name {name:?} ({location}); a name is one or more letters, digits, \"_\" or \"-\""
    )]
    InvalidName {
        kind: NameKind,
        name: String,
        location: Location,
    },

    #[error(
        "{kind} name {:?} is {length} characters long ({location}); shorten it to at most {MAX_NAME_LENGTH} characters",
        shortened(.name)
    )]
    NameTooLong {
        kind: NameKind,
        name: String,
        /// In characters; every character of a valid name is one byte.
        length: usize,
        location: Location,
    },

    #[error(
        "{field:?}{} holds a NUL byte: {value:?} ({location}); remove it, the operating system cannot pass a NUL byte in {what}",
        in_table(.table)
    )]
    NulByte {
        /// `command[1]` or `state`.
        field: String,
        table: String,
        value: String,
        /// What the value becomes: `an argument` or `a path`.
        what: &'static str,
        location: Location,
    },

    #[error("empty command in task {task:?} ({location}); {EXAMPLE_COMMAND}")]
    EmptyCommand { task: String, location: Location },

    #[error("empty wait_for command in task {task:?} ({location}); {EXAMPLE_SENSOR_COMMAND}")]
    EmptySensorCommand { task: String, location: Location },

    #[error(
        "empty when command in task {task:?} ({location}); give a program that exits 0 to run the task and 1 to skip it, such as when = {{ command = [\"is-game-day\", \"{{date}}\"] }}"
    )]
    EmptyCalendarCommand { task: String, location: Location },

    #[error(
        "empty smoke command in task {task:?} ({location}); give a quick command that proves the task can start here, such as smoke = [\"hoops\", \"self-test\"]"
    )]
    EmptySmokeCommand { task: String, location: Location },

    #[error(
        "empty version command in task {task:?} ({location}); give a command whose output names the task's code, such as version = [\"hoops\", \"--version\"]"
    )]
    EmptyVersionCommand { task: String, location: Location },

    #[error("invalid {field} in task {task:?} ({location}): {reason}")]
    InvalidVersioning {
        task: String,
        field: String,
        reason: String,
        location: Location,
    },

    #[error("invalid secret name {name:?} in the secrets of task {task:?} ({location}); {reason}")]
    InvalidSecretName {
        task: String,
        name: String,
        reason: String,
        location: Location,
    },

    #[error(
        "invalid duration {value:?} for {field:?}{} ({location}); {reason}",
        in_table(.table)
    )]
    InvalidDuration {
        field: String,
        table: String,
        value: String,
        /// What is wrong and how to write it instead.
        reason: String,
        location: Location,
    },

    #[error("invalid {field} {value:?}{} ({location}); {reason}", in_table(.table))]
    InvalidSchedule {
        field: String,
        table: String,
        value: String,
        /// What is wrong and how to write it instead.
        reason: String,
        location: Location,
    },

    #[error("{field:?}{} must be {bound}, found {value} ({location})", in_table(.table))]
    OutOfRange {
        field: String,
        table: String,
        value: String,
        /// For example `at least 1`.
        bound: String,
        location: Location,
    },

    #[error(
        "invalid {field} {value:?}{} ({location}); {}",
        in_table(.table),
        suggest_or_list(.suggestion, .expected)
    )]
    InvalidChoice {
        field: String,
        table: String,
        value: String,
        expected: &'static [&'static str],
        suggestion: Option<String>,
        location: Location,
    },

    #[error("unknown time zone {timezone:?} ({location}); {}", timezone_hint(.suggestion))]
    UnknownTimezone {
        timezone: String,
        suggestion: Option<String>,
        location: Location,
    },

    #[error(
        "unknown template {template:?} in the {field} of task {task:?} ({location}); valid templates are {{date}}, {{partition}}, {{run_id}}, {{task}}, {{attempt}}, {{pass}} and {{param.NAME}}; write \"{{{{\" or \"}}}}\" for a literal brace"
    )]
    UnknownTemplate {
        task: String,
        /// Which command: `command` or `wait_for command`.
        field: &'static str,
        /// The whole placeholder, braces included: `{day}`.
        template: String,
        location: Location,
    },

    #[error(
        "unclosed \"{{\" in the {field} of task {task:?} ({location}); close it as in \"{{date}}\", or write \"{{{{\" for a literal brace"
    )]
    UnclosedTemplate {
        task: String,
        /// Which command: `command` or `wait_for command`.
        field: &'static str,
        location: Location,
    },

    #[error(
        "unknown template {template:?} in {field:?}{} ({location}); valid templates are {{date}}, {{partition}}, {{run_id}}, {{task}}, {{attempt}}, {{pass}} and {{param.NAME}}; write \"{{{{\" or \"}}}}\" for a literal brace",
        in_table(.table)
    )]
    UnknownValueTemplate {
        /// `cwd`, or the name of an `env` variable.
        field: String,
        table: String,
        /// The whole placeholder, braces included: `{day}`.
        template: String,
        location: Location,
    },

    #[error(
        "unclosed \"{{\" in {field:?}{} ({location}); close it as in \"{{date}}\", or write \"{{{{\" for a literal brace",
        in_table(.table)
    )]
    UnclosedValueTemplate {
        field: String,
        table: String,
        location: Location,
    },

    #[error("{field:?}{} is empty ({location}); {hint}", in_table(.table))]
    EmptyValue {
        field: String,
        table: String,
        /// What to write instead.
        hint: &'static str,
        location: Location,
    },

    #[error(
        "invalid environment variable name {name:?}{} ({location}); {reason}",
        in_table(.table)
    )]
    InvalidVariableName {
        name: String,
        table: String,
        /// What is wrong with it: `a name cannot be empty`.
        reason: &'static str,
        location: Location,
    },

    #[error(
        "{name:?}{} is a name Keel keeps for itself ({location}); Keel sets the KEEL_ variables of every task and they cannot be set or inherited: use another name",
        in_table(.table)
    )]
    ReservedVariable {
        name: String,
        table: String,
        location: Location,
    },

    #[error(
        "cannot read env file {path:?}, the env_file of task {task:?}: {reason}; create it, or fix env_file in the pipeline file (a relative path is relative to the pipeline file's directory)"
    )]
    EnvFileUnreadable {
        /// The file as the pipeline file's directory and `env_file` make it.
        path: String,
        /// The first task that names it.
        task: String,
        reason: String,
    },

    #[error(
        "invalid line in env file ({location}): {problem}; write one NAME=value a line, and start comment lines with #"
    )]
    EnvFileLine {
        /// What is wrong, without the line's value, which may be a secret.
        problem: String,
        location: Location,
    },

    #[error(
        "unknown weekday {weekday:?} in the when of task {task:?} ({location}); {}",
        weekday_hint(.suggestion)
    )]
    UnknownWeekday {
        task: String,
        weekday: String,
        suggestion: Option<String>,
        location: Location,
    },

    #[error(
        "weekday {weekday:?} is listed twice in the when of task {task:?} ({location}); list each weekday once"
    )]
    RepeatedWeekday {
        task: String,
        weekday: String,
        location: Location,
    },

    #[error(
        "the when of task {task:?} lists no weekdays ({location}); name the days it runs on, such as weekdays = [\"sun\", \"wed\"], or remove when to run it every day"
    )]
    NoWeekdays { task: String, location: Location },

    #[error(
        "task {task:?} waits for {entry:?} on an earlier partition, but the pipeline has partition = \"none\", which has no dates ({location}); remove the @ part, or set partition = \"date\" in [pipeline]"
    )]
    EarlierWithoutDates {
        task: String,
        entry: String,
        location: Location,
    },

    #[error("invalid after entry {entry:?} in task {task:?} ({location}): {reason}")]
    InvalidEarlier {
        task: String,
        entry: String,
        reason: String,
        location: Location,
    },

    #[error(
        "task {task:?} has weekdays in its when, but the pipeline has partition = \"none\", which has no weekday ({location}); remove when, or set partition = \"date\" in [pipeline]"
    )]
    WeekdaysWithoutDates { task: String, location: Location },

    #[error(
        "task {task:?} has {field}, but the pipeline has partition = \"none\", which has no date for it ({location}); remove {field}, or set partition = \"date\" in [pipeline]"
    )]
    TimeOfDayWithoutDates {
        task: String,
        field: &'static str,
        location: Location,
    },

    #[error(
        "invalid date template {template:?} in {place} ({location}): {problem}; {}",
        date_template_hint(.problem)
    )]
    DateTemplate {
        /// The whole placeholder, braces included: `{date-1w}`.
        template: String,
        /// Where the template is: `the command of task "fetch"`.
        place: String,
        problem: DateTemplateProblem,
        location: Location,
    },

    #[error(
        "unknown parameter {name:?} in {{param.{name}}} of {place} ({location}); {}",
        param_hint(.suggestion, .name)
    )]
    UnknownParam {
        name: String,
        /// Where the template is: `the command of task "fetch"`.
        place: String,
        /// The closest parameter any pass declares.
        suggestion: Option<String>,
        location: Location,
    },

    #[error(
        "pass {pass:?} sets both phases and tasks ({location}); keep one: phases = [...] runs whole phases, tasks = [...] runs the tasks it names"
    )]
    PassPhasesAndTasks { pass: String, location: Location },

    #[error(
        "pass {pass:?} runs no {kind} ({location}); name at least one {kind} of the pipeline, or leave out phases and tasks to run every task"
    )]
    EmptyPassSubset {
        pass: String,
        kind: NameKind,
        location: Location,
    },

    #[error(
        "pass {pass:?} runs {task:?}, which runs one item per entry of {from:?}'s list, but not {from:?} ({location}); the pass would have no items to run: add {from:?} to the pass"
    )]
    PassWithoutExpandSource {
        pass: String,
        task: String,
        from: String,
        location: Location,
    },

    #[error(
        "unknown {kind} {name:?} in pass {pass:?} ({location}); {}",
        pass_name_hint(.suggestion, *.kind, .name)
    )]
    UnknownPassName {
        pass: String,
        kind: NameKind,
        name: String,
        suggestion: Option<String>,
        location: Location,
    },

    #[error("unknown phase {phase:?} in task {task:?} ({location}); {}", phase_hint(.suggestion, .phase))]
    UnknownPhase {
        task: String,
        phase: String,
        suggestion: Option<String>,
        location: Location,
    },

    #[error(
        "unknown phase {dependency:?} in the after list of phase {phase:?} ({location}); {}",
        phase_hint(.suggestion, .dependency)
    )]
    UnknownPhaseDependency {
        phase: String,
        dependency: String,
        suggestion: Option<String>,
        location: Location,
    },

    #[error(
        "unknown dependency {dependency:?} in task {task:?} ({location}){}",
        dependency_hint(.suggestion, .dependency, *.names_a_phase)
    )]
    UnknownDependency {
        task: String,
        dependency: String,
        suggestion: Option<String>,
        /// Whether the name is a phase's, a common mix-up: phases are ordered in `[phases]`.
        names_a_phase: bool,
        location: Location,
    },

    #[error(
        "task {task:?} in phase {phase:?} cannot run after task {dependency:?} in phase {dependency_phase:?} ({location}); a task may only run after tasks of its own phase or of a phase that {phase:?} runs after"
    )]
    DependencyNotUpstream {
        task: String,
        phase: String,
        dependency: String,
        dependency_phase: String,
        location: Location,
    },

    #[error(
        "unknown task {input:?} in the inputs of task {task:?} ({location}){}",
        did_you_mean(.suggestion)
    )]
    UnknownInput {
        task: String,
        input: String,
        suggestion: Option<String>,
        location: Location,
    },

    #[error(
        "task {task:?} in phase {phase:?} lists {input:?} of phase {input_phase:?} in its inputs ({location}); inputs name tasks of the phases {phase:?} runs after (for a task of its own phase, use after)"
    )]
    InputNotUpstream {
        task: String,
        phase: String,
        input: String,
        input_phase: String,
        location: Location,
    },

    #[error(
        "task {task:?} expands over the items of {from:?}, which is no task ({location}); expand.from names the task whose result lists the items{}",
        did_you_mean(.suggestion)
    )]
    ExpandFromUnknown {
        task: String,
        from: String,
        suggestion: Option<String>,
        location: Location,
    },

    #[error(
        "task {task:?} freezes after the end of {other:?}, which is no task ({location}); freeze_after.task names another task of the pipeline{}",
        did_you_mean(.suggestion)
    )]
    FreezeAfterUnknown {
        task: String,
        other: String,
        suggestion: Option<String>,
        location: Location,
    },

    #[error(
        "{field} of task {task:?} heals {target:?}, which is no task ({location}); heal names upstream tasks to run again when the check fails{}",
        did_you_mean(.suggestion)
    )]
    HealUnknownTask {
        task: String,
        field: String,
        target: String,
        suggestion: Option<String>,
        location: Location,
    },

    #[error(
        "task {task:?} freezes after its own end ({location}); freeze_after.task names another task, such as the one that consumes this task's output"
    )]
    FreezeAfterItself { task: String, location: Location },

    #[error(
        "{field} of task {task:?} heals the task itself ({location}); heal names upstream tasks whose output it reads, and the task runs again after them anyway"
    )]
    HealItself {
        task: String,
        field: String,
        location: Location,
    },

    #[error(
        "{field} of task {task:?} heals {target:?}, which it does not wait for ({location}); name a task upstream of {task:?}, or add {target:?} to its after list"
    )]
    HealNotUpstream {
        task: String,
        field: String,
        target: String,
        location: Location,
    },

    #[error(
        "{field} of task {task:?} heals {target:?}, which expands over items ({location}); heal a task that is not expanded, such as the one its expand.from names"
    )]
    HealExpanded {
        task: String,
        field: String,
        target: String,
        location: Location,
    },

    #[error(
        "task {task:?} expands over its own items ({location}); expand.from names an upstream task whose result lists the items"
    )]
    ExpandFromItself { task: String, location: Location },

    #[error(
        "task {task:?} expands over the items of task {from:?}, which it does not wait for ({location}); add {from:?} to its after list, or move {from:?} to a phase that this task's phase runs after"
    )]
    ExpandFromNotUpstream {
        task: String,
        from: String,
        location: Location,
    },

    #[error(
        "{template} in the {field} of task {task:?} ({location}) has no item to stand for: only a task with expand = {{ from = \"TASK\" }} runs once per item; add expand to the task, or write \"{{{{\" for a literal brace"
    )]
    ItemWithoutExpand {
        task: String,
        field: &'static str,
        template: String,
        location: Location,
    },

    #[error(
        "{name:?} is listed twice in the {list} of {kind} {owner:?} ({location}); remove the repeat"
    )]
    RepeatedName {
        /// Which list: `after list`, `uses list` or `gate's required list`.
        list: &'static str,
        kind: NameKind,
        owner: String,
        name: String,
        location: Location,
    },

    #[error("invalid rate {value:?} for \"rate\" in [{table}] ({location}); {reason}")]
    InvalidRate {
        table: String,
        value: String,
        /// What is wrong and how to write it instead.
        reason: String,
        location: Location,
    },

    #[error("invalid quota {value:?} for \"quota\" in [{table}] ({location}); {reason}")]
    InvalidQuota {
        table: String,
        value: String,
        /// What is wrong and how to write it instead.
        reason: String,
        location: Location,
    },

    #[error(
        "invalid percentage {value:?} for {field:?}{} ({location}); write a percentage such as \"60%\" or a share such as 0.6",
        in_table(.table)
    )]
    InvalidPercentage {
        field: String,
        table: String,
        value: String,
        location: Location,
    },

    #[error(
        "{field:?}{} must be {bound}, found {value} ({location}){}",
        in_table(.table),
        did_you_mean(.suggestion)
    )]
    ShareOutOfRange {
        field: String,
        table: String,
        /// As written: `"150%"` with its quotes, or a bare number such as `60`.
        value: String,
        /// For example `between 0% and 100%`.
        bound: &'static str,
        /// A percentage for a bare number that reads like one: `60` → `"60%"`.
        suggestion: Option<String>,
        location: Location,
    },

    #[error("invalid {field} of {owner} ({location}): {reason}")]
    InvalidHttp {
        /// `task "NAME"` or `resource "NAME"`.
        owner: String,
        field: String,
        reason: String,
        location: Location,
    },

    #[error("invalid check {field} of task {task:?} ({location}): {reason}")]
    InvalidCheck {
        task: String,
        /// `checks[1]`, or `checks[1].rows.min`.
        field: String,
        reason: String,
        location: Location,
    },

    #[error("invalid {field:?} in [slo.{slo}] ({location}): {reason}")]
    InvalidSlo {
        slo: String,
        field: String,
        reason: String,
        location: Location,
    },

    #[error("invalid {field:?} in [alerts] ({location}): {reason}")]
    InvalidAlerts {
        field: String,
        reason: String,
        location: Location,
    },

    #[error("invalid {field:?} in [secrets] ({location}): {reason}")]
    InvalidSecrets {
        field: String,
        reason: String,
        location: Location,
    },

    #[error(
        "{field:?}{} has no effect without {needs:?} ({location}); add {example}, or remove {field:?}",
        in_table(.table)
    )]
    Ineffective {
        field: String,
        table: String,
        /// The field that gives `field` its meaning.
        needs: &'static str,
        /// How to set `needs`: `ratio = "50%"`.
        example: &'static str,
        location: Location,
    },

    #[error("the tiers of the gate of phase {phase:?} {problem} ({location}); {hint}")]
    InvalidTiers {
        phase: String,
        /// What is wrong, as a verb phrase: `are empty`.
        problem: String,
        hint: &'static str,
        location: Location,
    },

    #[error(
        "the gate of phase {phase:?} has neither required tasks nor a min share ({location}); set one or both, for example gate = {{ required = [\"TASK\"], min = \"60%\", grace = \"30m\" }}, or remove the gate"
    )]
    GateWithoutCondition { phase: String, location: Location },

    #[error(
        "unknown task {task:?} in the gate of phase {phase:?} ({location}); {}",
        gate_task_hint(.suggestion, .phase)
    )]
    UnknownGateTask {
        phase: String,
        task: String,
        /// The closest task of the same phase.
        suggestion: Option<String>,
        location: Location,
    },

    #[error(
        "task {task:?} in the gate of phase {phase:?} belongs to phase {task_phase:?} ({location}); a gate may only require tasks of its own phase"
    )]
    GateTaskInOtherPhase {
        phase: String,
        task: String,
        task_phase: String,
        location: Location,
    },

    #[error(
        "unknown resource {resource:?} in task {task:?} ({location}); {}",
        resource_hint(.suggestion, .resource)
    )]
    UnknownResource {
        task: String,
        resource: String,
        suggestion: Option<String>,
        location: Location,
    },

    #[error(
        "\"max\" ({max:?}) is shorter than {}\"every\" ({every:?}){} ({location}); the sensor polls every {every:?} at first and backs off up to max: make max at least {every:?}",
        if *.every_is_default { "the default " } else { "" },
        in_table(.table)
    )]
    SensorMaxBelowEvery {
        /// The dotted path of the `wait_for` table.
        table: String,
        /// As written.
        max: String,
        /// As written, or the default.
        every: String,
        every_is_default: bool,
        location: Location,
    },

    #[error(
        "\"initial\" ({initial:?}{}) is longer than \"max\" ({max:?}{}) in [{table}] ({location}); retry delays start at initial and double up to max, so make initial at most max",
        origin(.initial_origin),
        origin(.max_origin)
    )]
    RetryInitialAboveMax {
        /// The dotted path of the `retries` table that sets a delay.
        table: String,
        /// As written, or the value inherited.
        initial: String,
        /// Where an inherited value comes from: `the default` or `from [defaults.retries]`;
        /// `None` when the table itself sets it.
        initial_origin: Option<&'static str>,
        max: String,
        max_origin: Option<&'static str>,
        location: Location,
    },

    #[error("cycle in {kind}s: {} ({location}); {}", .path.join(" → "), cycle_hint(.path))]
    Cycle {
        kind: NameKind,
        /// The names along the cycle, the first one repeated at the end: `a → b → a`.
        path: Vec<String>,
        /// The `after` entry of the first name that names the second.
        location: Location,
    },

    #[error(
        "{field:?} looks like a plaintext {what} ({redacted:?}) ({location}); keep secrets out of keel.toml: commands run without a shell, so $VAR in a command is not expanded; give the secret to Keel's environment (or an env_file kept out of the repository), which tasks inherit, and have the task read it from its environment"
    )]
    PlaintextSecret {
        /// The dotted path of the value, for example `tasks.fetch.command[2]`.
        field: String,
        /// What kind of secret it looks like, for example `AWS access key`.
        what: &'static str,
        /// The recognisable start of the value with the secret part cut off: `AKIA…`.
        redacted: String,
        location: Location,
    },

    #[error(
        "\"pipeline.state\" holds a password in its URL ({redacted:?}) ({location}); leave the password out of keel.toml and give it to Keel in the PGPASSWORD environment variable (or ~/.pgpass)"
    )]
    StatePassword {
        /// The URL up to its password: `postgres://keel:…@`.
        redacted: String,
        location: Location,
    },
}

impl ConfigError {
    /// Where in the file the error is, if it comes from the file's content.
    pub fn location(&self) -> Option<&Location> {
        match self {
            ConfigError::FileNotFound { .. }
            | ConfigError::FileUnreadable { .. }
            | ConfigError::EnvFileUnreadable { .. } => None,
            ConfigError::Syntax { location, .. }
            | ConfigError::DuplicateKey { location, .. }
            | ConfigError::UnknownField { location, .. }
            | ConfigError::NotSupportedYet { location, .. }
            | ConfigError::MissingTable { location, .. }
            | ConfigError::MissingField { location, .. }
            | ConfigError::NoTasks { location }
            | ConfigError::WrongType { location, .. }
            | ConfigError::InvalidName { location, .. }
            | ConfigError::NameTooLong { location, .. }
            | ConfigError::NulByte { location, .. }
            | ConfigError::RetryInitialAboveMax { location, .. }
            | ConfigError::EmptyCommand { location, .. }
            | ConfigError::EmptyCalendarCommand { location, .. }
            | ConfigError::EmptySmokeCommand { location, .. }
            | ConfigError::EmptyVersionCommand { location, .. }
            | ConfigError::InvalidVersioning { location, .. }
            | ConfigError::InvalidSecretName { location, .. }
            | ConfigError::EmptySensorCommand { location, .. }
            | ConfigError::InvalidDuration { location, .. }
            | ConfigError::InvalidSchedule { location, .. }
            | ConfigError::OutOfRange { location, .. }
            | ConfigError::InvalidChoice { location, .. }
            | ConfigError::UnknownTimezone { location, .. }
            | ConfigError::UnknownTemplate { location, .. }
            | ConfigError::UnclosedTemplate { location, .. }
            | ConfigError::UnknownValueTemplate { location, .. }
            | ConfigError::UnclosedValueTemplate { location, .. }
            | ConfigError::EmptyValue { location, .. }
            | ConfigError::InvalidVariableName { location, .. }
            | ConfigError::ReservedVariable { location, .. }
            | ConfigError::EnvFileLine { location, .. }
            | ConfigError::UnknownParam { location, .. }
            | ConfigError::DateTemplate { location, .. }
            | ConfigError::UnknownWeekday { location, .. }
            | ConfigError::RepeatedWeekday { location, .. }
            | ConfigError::NoWeekdays { location, .. }
            | ConfigError::WeekdaysWithoutDates { location, .. }
            | ConfigError::EarlierWithoutDates { location, .. }
            | ConfigError::InvalidEarlier { location, .. }
            | ConfigError::PassPhasesAndTasks { location, .. }
            | ConfigError::EmptyPassSubset { location, .. }
            | ConfigError::PassWithoutExpandSource { location, .. }
            | ConfigError::UnknownPassName { location, .. }
            | ConfigError::UnknownPhase { location, .. }
            | ConfigError::UnknownPhaseDependency { location, .. }
            | ConfigError::UnknownDependency { location, .. }
            | ConfigError::DependencyNotUpstream { location, .. }
            | ConfigError::UnknownInput { location, .. }
            | ConfigError::InputNotUpstream { location, .. }
            | ConfigError::ExpandFromUnknown { location, .. }
            | ConfigError::FreezeAfterUnknown { location, .. }
            | ConfigError::FreezeAfterItself { location, .. }
            | ConfigError::HealUnknownTask { location, .. }
            | ConfigError::HealItself { location, .. }
            | ConfigError::HealNotUpstream { location, .. }
            | ConfigError::HealExpanded { location, .. }
            | ConfigError::ExpandFromItself { location, .. }
            | ConfigError::ExpandFromNotUpstream { location, .. }
            | ConfigError::ItemWithoutExpand { location, .. }
            | ConfigError::RepeatedName { location, .. }
            | ConfigError::InvalidRate { location, .. }
            | ConfigError::InvalidQuota { location, .. }
            | ConfigError::InvalidPercentage { location, .. }
            | ConfigError::ShareOutOfRange { location, .. }
            | ConfigError::Ineffective { location, .. }
            | ConfigError::TimeOfDayWithoutDates { location, .. }
            | ConfigError::InvalidAlerts { location, .. }
            | ConfigError::InvalidCheck { location, .. }
            | ConfigError::InvalidSlo { location, .. }
            | ConfigError::InvalidSecrets { location, .. }
            | ConfigError::InvalidHttp { location, .. }
            | ConfigError::GateWithoutCondition { location, .. }
            | ConfigError::InvalidTiers { location, .. }
            | ConfigError::UnknownGateTask { location, .. }
            | ConfigError::GateTaskInOtherPhase { location, .. }
            | ConfigError::UnknownResource { location, .. }
            | ConfigError::SensorMaxBelowEvery { location, .. }
            | ConfigError::Cycle { location, .. }
            | ConfigError::PlaintextSecret { location, .. }
            | ConfigError::StatePassword { location, .. } => Some(location),
        }
    }
}

/// Every error found in a pipeline file, sorted by position.
///
/// `Display` writes one error per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// The errors in order of position.
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }

    /// How many errors there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none; a returned `ConfigErrors` always has at least one.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (position, error) in self.0.iter().enumerate() {
            if position > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(error: ConfigError) -> Self {
        ConfigErrors(vec![error])
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

const EXAMPLE_COMMAND: &str =
    "give the program and its arguments, for example [\"sh\", \"-c\", \"echo {date}\"]";

const EXAMPLE_SENSOR_COMMAND: &str = "give a program that exits 0 once the data is ready, for example [\"test\", \"-s\", \"/data/{date}.csv\"]";

/// The start of a long name, enough to recognise it; the location says where it is.
fn shortened(name: &str) -> String {
    const SHOWN: usize = 40;
    if name.chars().count() <= SHOWN {
        return name.to_string();
    }
    let start: String = name.chars().take(SHOWN).collect();
    format!("{start}…")
}

/// ` in [tasks.fetch]` for a table's dotted path, nothing for the top level.
fn in_table(table: &str) -> String {
    if table.is_empty() {
        " at the top level".to_string()
    } else {
        format!(" in [{table}]")
    }
}

/// `, the default` after an inherited value.
fn origin(origin: &Option<&'static str>) -> String {
    origin
        .map(|origin| format!(", {origin}"))
        .unwrap_or_default()
}

fn did_you_mean(suggestion: &Option<String>) -> String {
    match suggestion {
        Some(name) => format!("; did you mean {name:?}?"),
        None => String::new(),
    }
}

fn suggest_or_list(suggestion: &Option<String>, expected: &[&str]) -> String {
    if let Some(name) = suggestion {
        return format!("did you mean {name:?}?");
    }
    let quoted: Vec<String> = expected.iter().map(|name| format!("{name:?}")).collect();
    match quoted.as_slice() {
        [] => "remove it".to_string(),
        [only] => format!("expected {only}"),
        [rest @ .., last] => format!("expected {} or {last}", rest.join(", ")),
    }
}

fn missing_hint(table: &str, field: &str) -> String {
    match field {
        "name" => "add name = \"my_pipeline\"".to_string(),
        "phase" => "add phase = \"...\" naming one of the [phases.NAME] tables".to_string(),
        "command" if table.ends_with(".wait_for") => EXAMPLE_SENSOR_COMMAND.to_string(),
        "command" => EXAMPLE_COMMAND.to_string(),
        "ratio" => "add ratio = \"20%\"".to_string(),
        "task" if table.contains(".after[") => {
            "add task = \"NAME\", naming the task to wait for".to_string()
        }
        "every" if table.ends_with(".not_ready") => {
            "add every = \"2h\": how long to wait after a not-ready answer before asking again"
                .to_string()
        }
        "max" if table.ends_with(".not_ready") => {
            "add max = 12: how many not-ready answers the task may give before it ends not_ready"
                .to_string()
        }
        "every" if table.ends_with(".repeat") => {
            "add every = \"3m\": how long from the start of one repetition to the next".to_string()
        }
        "from" if table.ends_with(".repeat") => {
            "add from = \"19:00\": when the window opens, on the partition's date".to_string()
        }
        "until" if table.ends_with(".repeat") => {
            "add until = \"02:00\": when the window closes (on the next day when not after from)"
                .to_string()
        }
        "kind" if table.starts_with("slo.") => {
            "add kind = \"freshness\", \"latency\" or \"success\"".to_string()
        }
        "objective" if table.starts_with("slo.") => {
            "add objective = \"99.9%\": the share of partitions or runs that must meet the target"
                .to_string()
        }
        "by" if table.starts_with("slo.") => {
            "add by = \"10:00\": the local time the partition must have succeeded by".to_string()
        }
        "max" if table.starts_with("slo.") => {
            "add max = \"6h\": the longest a run may take from its creation to its end".to_string()
        }
        "complete" => {
            "add complete = \"90%\": the share of the phase's tasks that must have completed"
                .to_string()
        }
        other => format!("add {other} = ..."),
    }
}

fn dependency_hint(suggestion: &Option<String>, dependency: &str, names_a_phase: bool) -> String {
    match suggestion {
        Some(_) => did_you_mean(suggestion),
        None if names_a_phase => format!(
            "; {dependency:?} is a phase, not a task: to wait for a whole phase, add it to the after list of this task's phase"
        ),
        None => String::new(),
    }
}

fn cycle_hint(path: &[String]) -> String {
    match path {
        [only, _] => format!("remove {only:?} from its own after list"),
        _ => "remove one of these \"after\" entries".to_string(),
    }
}

fn timezone_hint(suggestion: &Option<String>) -> String {
    match suggestion {
        Some(name) => format!("did you mean {name:?}?"),
        None => "use an IANA name such as \"UTC\" or \"America/New_York\"".to_string(),
    }
}

fn phase_hint(suggestion: &Option<String>, phase: &str) -> String {
    match suggestion {
        Some(name) => format!("did you mean {name:?}?"),
        None => format!("define it with a [phases.{phase}] table"),
    }
}

fn gate_task_hint(suggestion: &Option<String>, phase: &str) -> String {
    match suggestion {
        Some(name) => format!("did you mean {name:?}?"),
        None => format!("a gate may only require tasks of its own phase, {phase:?}"),
    }
}

fn resource_hint(suggestion: &Option<String>, resource: &str) -> String {
    match suggestion {
        Some(name) => format!("did you mean {name:?}?"),
        None => format!("define it with a [resources.{resource}] table"),
    }
}

fn param_hint(suggestion: &Option<String>, name: &str) -> String {
    match suggestion {
        Some(known) => format!("did you mean {known:?}?"),
        None => format!(
            "declare it in the params of a pass, such as [passes.NAME] params = {{ {name} = \"...\" }}"
        ),
    }
}

fn pass_name_hint(suggestion: &Option<String>, kind: NameKind, name: &str) -> String {
    match (suggestion, kind) {
        (Some(known), _) => format!("did you mean {known:?}?"),
        (None, NameKind::Phase) => format!("define it with a [phases.{name}] table"),
        (None, _) => format!("define it with a [tasks.{name}] table"),
    }
}

/// How to write a date template; a pipeline without dates is told what it can use instead.
fn date_template_hint(problem: &DateTemplateProblem) -> &'static str {
    match problem {
        DateTemplateProblem::NoDatePartitions => {
            "write {date} for the partition as it is, or set partition = \"date\" in [pipeline] for date arithmetic"
        }
        _ => {
            "valid forms are {date-1d}, {date+7d}, {date:%Y%m%d} and {date-1d:%Y%m%d} (and the same with {partition…})"
        }
    }
}

fn weekday_hint(suggestion: &Option<String>) -> String {
    match suggestion {
        Some(known) => format!("did you mean {known:?}?"),
        None => "weekdays are mon, tue, wed, thu, fri, sat and sun".to_string(),
    }
}
