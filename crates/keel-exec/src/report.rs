use std::path::Path;

use keel_model::Outcome;

/// How the supervisor saw the task end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitKind {
    Exited,
    NotFound,
    NotExecutable,
    /// The task's working directory is missing or not a directory; the message is its path.
    NoWorkingDirectory,
    SpawnFailed,
    TimedOut,
    Stalled,
    Terminated,
}

/// How the task ended, written by the supervisor into the attempt's record file.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ExitRecord {
    pub kind: ExitKind,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub message: Option<String>,
    pub started_at: i64,
    pub finished_at: i64,
    /// Why `output.log` was cut short, when writing it failed (a full disk, a file size limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_problem: Option<String>,
}

/// The typed result of one attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub outcome: Outcome,
    pub exit_code: Option<i32>,
    pub rows: Option<i64>,
    /// The result file's `metrics` object, as compact JSON.
    pub metrics: Option<String>,
    pub message: Option<String>,
    /// How long the service asked to be left alone (an HTTP `Retry-After`): a *not ready*
    /// attempt is checked again no sooner.
    pub retry_after: Option<std::time::Duration>,
    /// The result's `"items"`, for a task others expand over (`expand`): `None` when the
    /// result lists none.
    pub items: Option<Vec<keel_model::Item>>,
    /// The result's `"heal"`: upstream tasks the task asks to run again before it runs again
    /// (docs/health.md, "Remediation"). The engine judges whether they are upstream.
    pub heal: Vec<String>,
}

impl Report {
    pub fn new(outcome: Outcome, message: impl Into<String>) -> Report {
        Report {
            outcome,
            exit_code: None,
            rows: None,
            metrics: None,
            message: Some(message.into()),
            retry_after: None,
            items: None,
            heal: Vec::new(),
        }
    }
}

/// The parts of `KEEL_RESULT` that Keel reads.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct ResultFile {
    pub(crate) outcome: Option<Outcome>,
    pub(crate) message: Option<String>,
    pub(crate) rows: Option<i64>,
    pub(crate) metrics: Option<String>,
    pub(crate) items: Option<Vec<keel_model::Item>>,
    pub(crate) heal: Vec<String>,
}

/// The most a result file may hold. Keel reads it whole, in its own process, so a task that
/// writes gigabytes there (or links it to an endless device) must not make Keel read them.
pub const RESULT_CAP: u64 = 1 << 20;
/// The most metrics a result file may report, and the longest name one may have: they are
/// stored with every attempt.
pub const MAX_METRICS: usize = 100;
pub const MAX_METRIC_NAME: usize = 200;

fn read_result_file(path: &Path) -> Result<Option<ResultFile>, String> {
    let bytes = match crate::files::read_regular_file(path, RESULT_CAP) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return Ok(None),
        Err(crate::files::FileProblem::TooLarge { cap }) => {
            return Err(format!(
                "result file {:?} is too large: it holds more than {}, the most Keel reads; write only the outcome, message, rows and metrics there, and large data elsewhere",
                path.display().to_string(),
                crate::files::format_bytes(cap)
            ));
        }
        Err(problem) => {
            return Err(format!(
                "cannot read result file {:?}: {problem}; write the result as a plain file at $KEEL_RESULT",
                path.display().to_string()
            ));
        }
    };
    parse_result(
        &bytes,
        &format!("result file {:?}", path.display().to_string()),
    )
}

/// The parts of a result Keel reads from `bytes` (a result file, or the JSON body of an HTTP
/// task's response): `source` names where they came from in the errors.
pub(crate) fn parse_result(bytes: &[u8], source: &str) -> Result<Option<ResultFile>, String> {
    let invalid = |detail: String| format!("invalid {source}: {detail}");
    let text = std::str::from_utf8(bytes).map_err(|_| {
        invalid(
            "it is not UTF-8 text; write a JSON object such as {\"outcome\": \"no_data\"}".into(),
        )
    })?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|error| invalid(error.to_string()))?;
    let object = value.as_object().ok_or_else(|| {
        invalid("expected a JSON object such as {\"outcome\": \"no_data\"}".into())
    })?;
    let mut result = ResultFile::default();
    if let Some(outcome) = object.get("outcome") {
        let name = outcome.as_str().ok_or_else(|| {
            invalid(format!(
                "\"outcome\" must be a string, got {}",
                shown(outcome)
            ))
        })?;
        let parsed: Outcome = name.parse().map_err(|_| {
            invalid(format!("unknown outcome {:?}; use \"succeeded\", \"no_data\", \"skipped\", \"not_ready\", \"failed\" or \"failed_permanent\"", clipped(name)))
        })?;
        if !matches!(
            parsed,
            Outcome::Succeeded
                | Outcome::NoData
                | Outcome::Skipped
                | Outcome::NotReady
                | Outcome::Failed
                | Outcome::FailedPermanent
        ) {
            return Err(invalid(format!(
                "outcome {name:?} is set by keel, not by a task"
            )));
        }
        result.outcome = Some(parsed);
    }
    if let Some(message) = object.get("message") {
        let text = message.as_str().ok_or_else(|| {
            invalid(format!(
                "\"message\" must be a string, got {}",
                shown(message)
            ))
        })?;
        result.message = Some(text.chars().take(2000).collect());
    }
    if let Some(rows) = object.get("rows") {
        result.rows = Some(rows.as_i64().filter(|rows| *rows >= 0).ok_or_else(|| {
            invalid(format!(
                "\"rows\" must be a non-negative integer, got {}",
                shown(rows)
            ))
        })?);
    }
    if let Some(metrics) = object.get("metrics") {
        let map = metrics.as_object().ok_or_else(|| {
            invalid(format!(
                "\"metrics\" must be an object of numbers, got {}",
                shown(metrics)
            ))
        })?;
        if map.len() > MAX_METRICS {
            return Err(invalid(format!(
                "it reports {} metrics, more than the {MAX_METRICS} Keel keeps; report the ones worth watching",
                map.len()
            )));
        }
        if let Some(name) = map
            .keys()
            .find(|name| name.chars().count() > MAX_METRIC_NAME)
        {
            let start: String = name.chars().take(40).collect();
            return Err(invalid(format!(
                "metric name {start:?}… is {} characters long, more than the {MAX_METRIC_NAME} Keel keeps; use a shorter name",
                name.chars().count()
            )));
        }
        if let Some((name, value)) = map.iter().find(|(_, value)| !value.is_number()) {
            return Err(invalid(format!(
                "metric {name:?} must be a number, got {}",
                shown(value)
            )));
        }
        result.metrics = Some(metrics.to_string());
    }
    result.items =
        keel_model::expand::parse_items(&value).map_err(|error| invalid(error.to_string()))?;
    if let Some(heal) = object.get("heal") {
        result.heal = parse_heal(heal).map_err(invalid)?;
    }
    Ok(Some(result))
}

/// The most tasks a result may ask to heal; a pipeline's tasks are named, not listed in bulk.
const MAX_HEAL: usize = 64;

/// A result's `"heal"`: a list of task names, without repeats.
fn parse_heal(value: &serde_json::Value) -> Result<Vec<String>, String> {
    let expected = || {
        format!(
            "\"heal\" must be a list of task names such as [\"scrape\"], got {}",
            shown(value)
        )
    };
    let list = value.as_array().ok_or_else(expected)?;
    if list.len() > MAX_HEAL {
        return Err(format!(
            "\"heal\" names {} tasks, more than the {MAX_HEAL} Keel takes; name the upstream tasks to run again",
            list.len()
        ));
    }
    let mut names: Vec<String> = Vec::new();
    for entry in list {
        let name = entry.as_str().ok_or_else(expected)?;
        let name = clipped(name);
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names)
}

/// At most the first 100 characters of `text`, to quote a task's value in a message without
/// quoting all of it.
fn clipped(text: &str) -> String {
    let mut clipped: String = text.chars().take(100).collect();
    if clipped.len() < text.len() {
        clipped.push('…');
    }
    clipped
}

/// A JSON value from a result file as a message shows it: clipped.
fn shown(value: &serde_json::Value) -> String {
    clipped(&value.to_string())
}

/// The last non-empty line of the captured output, to explain a failure at a glance.
fn last_output_line(dir: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    // The task may have put something else than a plain file there.
    let mut file = crate::files::open_regular_file(&dir.join(crate::supervisor::OUTPUT_FILE))
        .ok()
        .flatten()?;
    let length = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(length.saturating_sub(2048)))
        .ok()?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).ok()?;
    let text = String::from_utf8_lossy(&tail);
    text.lines()
        .rev()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .map(|line| line.chars().take(300).collect())
}

/// Turns how a task ended into an outcome (the task contract, docs/tasks.md): exit 0 is success unless the result file
/// says otherwise, 75 is *not ready*, 65 is a permanent failure, any other code is transient.
/// A malformed result file fails the attempt with a message naming the file; it never panics.
pub fn interpret(exit: &ExitRecord, dir: &Path) -> Report {
    let result_path = dir.join(crate::supervisor::RESULT_FILE);
    let result = read_result_file(&result_path);
    let (outcome, mut message) = match exit.kind {
        ExitKind::NotFound => (
            Outcome::FailedPermanent,
            Some(format!("command not found: {}", first_word(exit))),
        ),
        ExitKind::NotExecutable => (
            Outcome::FailedPermanent,
            Some(format!("command is not executable: {}", first_word(exit))),
        ),
        ExitKind::NoWorkingDirectory => (
            Outcome::FailedPermanent,
            Some(format!(
                "working directory {:?} does not exist or is not a directory; create it, or fix cwd in the pipeline file",
                exit.message.as_deref().unwrap_or("?")
            )),
        ),
        ExitKind::SpawnFailed => (Outcome::Failed, exit.message.clone()),
        ExitKind::TimedOut => (Outcome::TimedOut, exit.message.clone()),
        ExitKind::Stalled => (Outcome::Stalled, exit.message.clone()),
        ExitKind::Terminated => (Outcome::Cancelled, exit.message.clone()),
        ExitKind::Exited => match (exit.code, exit.signal) {
            (Some(0), _) => match &result {
                Ok(Some(file)) => (file.outcome.unwrap_or(Outcome::Succeeded), None),
                Ok(None) => (Outcome::Succeeded, None),
                Err(problem) => (Outcome::Failed, Some(problem.clone())),
            },
            (Some(75), _) => (Outcome::NotReady, Some("not ready (exit 75)".to_string())),
            (Some(65), _) => (
                Outcome::FailedPermanent,
                Some("permanent failure (exit 65)".to_string()),
            ),
            (Some(code), _) => (Outcome::Failed, Some(format!("exited with code {code}"))),
            (None, Some(signal)) => (Outcome::Failed, Some(format!("killed by signal {signal}"))),
            (None, None) => (
                Outcome::Failed,
                Some("ended without an exit status".to_string()),
            ),
        },
    };
    let (rows, metrics, result_message, items, heal) = match result {
        Ok(Some(file)) => (file.rows, file.metrics, file.message, file.items, file.heal),
        _ => (None, None, None, None, Vec::new()),
    };
    if let Some(result_message) = result_message {
        message = Some(match message {
            Some(ours) if ours != result_message => format!("{ours}: {result_message}"),
            _ => result_message,
        });
    } else if !outcome.is_complete()
        && !matches!(
            exit.kind,
            ExitKind::NotFound | ExitKind::NotExecutable | ExitKind::NoWorkingDirectory
        )
        && let Some(line) = last_output_line(dir)
    {
        message = Some(match message {
            Some(ours) => format!("{ours}; last output: {line}"),
            None => line,
        });
    }
    if let Some(problem) = &exit.output_problem {
        message = Some(match message {
            Some(ours) => format!("{ours}; {problem}"),
            None => problem.clone(),
        });
    }
    Report {
        outcome,
        exit_code: exit.code,
        rows,
        metrics,
        message,
        retry_after: None,
        items,
        heal,
    }
}

fn first_word(exit: &ExitRecord) -> String {
    exit.message
        .as_deref()
        .and_then(|message| message.split(": ").next())
        .unwrap_or("?")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exited(code: i32) -> ExitRecord {
        ExitRecord {
            kind: ExitKind::Exited,
            code: Some(code),
            signal: None,
            message: None,
            started_at: 0,
            finished_at: 1,
            output_problem: None,
        }
    }

    fn with_result(text: Option<&str>, exit: ExitRecord) -> Report {
        let dir = tempfile::tempdir().unwrap();
        if let Some(text) = text {
            std::fs::write(dir.path().join("result.json"), text).unwrap();
        }
        interpret(&exit, dir.path())
    }

    #[test]
    fn exit_codes_map_to_outcomes() {
        assert_eq!(with_result(None, exited(0)).outcome, Outcome::Succeeded);
        assert_eq!(with_result(None, exited(75)).outcome, Outcome::NotReady);
        assert_eq!(
            with_result(None, exited(65)).outcome,
            Outcome::FailedPermanent
        );
        assert_eq!(with_result(None, exited(1)).outcome, Outcome::Failed);
        let not_found = ExitRecord {
            kind: ExitKind::NotFound,
            message: Some("hoopz: No such file or directory".into()),
            ..exited(0)
        };
        let report = with_result(None, not_found);
        assert_eq!(report.outcome, Outcome::FailedPermanent);
        assert_eq!(report.message.as_deref(), Some("command not found: hoopz"));
    }

    #[test]
    fn the_result_file_turns_success_into_no_data_and_carries_rows_and_metrics() {
        let report = with_result(
            Some(
                r#"{"outcome": "no_data", "message": "no games on 2026-01-18", "rows": 0, "metrics": {"accuracy": 0.54}}"#,
            ),
            exited(0),
        );
        assert_eq!(report.outcome, Outcome::NoData);
        assert_eq!(report.rows, Some(0));
        assert_eq!(report.metrics.as_deref(), Some(r#"{"accuracy":0.54}"#));
        assert_eq!(report.message.as_deref(), Some("no games on 2026-01-18"));
    }

    #[test]
    fn the_result_file_asks_upstream_tasks_to_heal() {
        let failed = with_result(
            Some(r#"{"outcome": "failed", "heal": ["scrape", "scrape", "load"]}"#),
            exited(0),
        );
        assert_eq!(failed.outcome, Outcome::Failed);
        assert_eq!(failed.heal, ["scrape", "load"]);
        assert!(with_result(Some("{}"), exited(0)).heal.is_empty());
        let bad = with_result(Some(r#"{"heal": "scrape"}"#), exited(0));
        assert_eq!(bad.outcome, Outcome::Failed);
        assert!(
            bad.message.as_deref().unwrap().ends_with(
                r#""heal" must be a list of task names such as ["scrape"], got "scrape""#
            ),
            "{bad:?}"
        );
    }

    #[test]
    fn the_result_file_carries_the_items_others_expand_over() {
        let report = with_result(
            Some(r#"{"items": ["0021", {"key": "0022", "home": "LAL"}], "rows": 2}"#),
            exited(0),
        );
        assert_eq!(report.outcome, Outcome::Succeeded);
        let items = report.items.unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[1].key, "0022");
        assert_eq!(items[1].field("home"), "LAL");
        assert_eq!(with_result(Some("{}"), exited(0)).items, None);
        assert_eq!(
            with_result(Some(r#"{"items": []}"#), exited(0)).items,
            Some(vec![])
        );
    }

    #[test]
    fn a_malformed_result_file_fails_the_attempt_with_the_file_and_the_error() {
        for (text, expected) in [
            ("{not json", "invalid result file"),
            ("[1, 2]", "expected a JSON object"),
            (r#"{"outcome": "great"}"#, "unknown outcome \"great\""),
            (r#"{"outcome": "lost"}"#, "set by keel"),
            (r#"{"rows": -3}"#, "\"rows\" must be a non-negative integer"),
            (
                r#"{"metrics": {"accuracy": "high"}}"#,
                "metric \"accuracy\" must be a number",
            ),
            (
                r#"{"items": "a,b"}"#,
                "the result's \"items\" is a string, not a list",
            ),
            (r#"{"items": ["a", "a"]}"#, "have the same key \"a\""),
        ] {
            let report = with_result(Some(text), exited(0));
            assert_eq!(report.outcome, Outcome::Failed, "{text}");
            let message = report.message.unwrap();
            assert!(message.contains(expected), "{text}: {message}");
            assert!(message.contains("result.json"), "names the file: {message}");
        }
    }

    #[test]
    fn metrics_are_bounded_in_number_and_name_length() {
        let numbered = |count: usize| {
            let metrics: Vec<String> = (0..count).map(|n| format!("\"m{n}\": {n}")).collect();
            format!("{{\"metrics\": {{{}}}}}", metrics.join(", "))
        };
        let report = with_result(Some(&numbered(MAX_METRICS)), exited(0));
        assert_eq!(report.outcome, Outcome::Succeeded, "{report:?}");
        let long_name = "n".repeat(MAX_METRIC_NAME + 1);
        let long_value = "v".repeat(5000);
        for (text, expected) in [
            (
                numbered(MAX_METRICS + 1),
                "it reports 101 metrics, more than the 100",
            ),
            (
                format!("{{\"metrics\": {{\"{long_name}\": 1}}}}"),
                "is 201 characters long, more than the 200",
            ),
            (
                format!("{{\"metrics\": {{\"m\": \"{long_value}\"}}}}"),
                "metric \"m\" must be a number",
            ),
        ] {
            let report = with_result(Some(&text), exited(0));
            assert_eq!(report.outcome, Outcome::Failed);
            let message = report.message.unwrap();
            assert!(message.contains(expected), "{message}");
            assert!(
                message.len() < 600,
                "a task's long value is clipped in the message: {} bytes",
                message.len()
            );
        }
    }

    #[test]
    fn a_cut_log_is_mentioned_in_the_message() {
        let record = ExitRecord {
            output_problem: Some("cannot write \"output.log\": No space left on device".into()),
            ..exited(0)
        };
        let report = with_result(None, record);
        assert_eq!(report.outcome, Outcome::Succeeded);
        assert!(
            report
                .message
                .unwrap_or_default()
                .contains("No space left on device")
        );
    }
}
