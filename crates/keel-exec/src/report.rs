use std::path::Path;

use keel_model::Outcome;

/// How the supervisor saw the task end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitKind {
    Exited,
    NotFound,
    NotExecutable,
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
}

impl Report {
    pub fn new(outcome: Outcome, message: impl Into<String>) -> Report {
        Report {
            outcome,
            exit_code: None,
            rows: None,
            metrics: None,
            message: Some(message.into()),
        }
    }
}

/// The parts of `KEEL_RESULT` that Keel reads.
#[derive(Debug, Default, PartialEq)]
struct ResultFile {
    outcome: Option<Outcome>,
    message: Option<String>,
    rows: Option<i64>,
    metrics: Option<String>,
}

fn read_result_file(path: &Path) -> Result<Option<ResultFile>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(format!(
                "cannot read result file {}: {error}",
                path.display()
            ));
        }
    };
    if text.trim().is_empty() {
        return Ok(None);
    }
    let invalid = |detail: String| format!("invalid result file {}: {detail}", path.display());
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|error| invalid(error.to_string()))?;
    let object = value.as_object().ok_or_else(|| {
        invalid("expected a JSON object such as {\"outcome\": \"no_data\"}".into())
    })?;
    let mut result = ResultFile::default();
    if let Some(outcome) = object.get("outcome") {
        let name = outcome
            .as_str()
            .ok_or_else(|| invalid(format!("\"outcome\" must be a string, got {outcome}")))?;
        let parsed: Outcome = name.parse().map_err(|_| {
            invalid(format!("unknown outcome {name:?}; use \"succeeded\", \"no_data\", \"skipped\", \"not_ready\", \"failed\" or \"failed_permanent\""))
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
        let text = message
            .as_str()
            .ok_or_else(|| invalid(format!("\"message\" must be a string, got {message}")))?;
        result.message = Some(text.chars().take(2000).collect());
    }
    if let Some(rows) = object.get("rows") {
        result.rows = Some(rows.as_i64().filter(|rows| *rows >= 0).ok_or_else(|| {
            invalid(format!(
                "\"rows\" must be a non-negative integer, got {rows}"
            ))
        })?);
    }
    if let Some(metrics) = object.get("metrics") {
        let map = metrics.as_object().ok_or_else(|| {
            invalid(format!(
                "\"metrics\" must be an object of numbers, got {metrics}"
            ))
        })?;
        if let Some((name, value)) = map.iter().find(|(_, value)| !value.is_number()) {
            return Err(invalid(format!(
                "metric {name:?} must be a number, got {value}"
            )));
        }
        result.metrics = Some(metrics.to_string());
    }
    Ok(Some(result))
}

/// The last non-empty line of the captured output, to explain a failure at a glance.
fn last_output_line(dir: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(dir.join(crate::supervisor::OUTPUT_FILE)).ok()?;
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

/// Turns how a task ended into an outcome (DESIGN §4): exit 0 is success unless the result file
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
    let (rows, metrics, result_message) = match result {
        Ok(Some(file)) => (file.rows, file.metrics, file.message),
        _ => (None, None, None),
    };
    if let Some(result_message) = result_message {
        message = Some(match message {
            Some(ours) if ours != result_message => format!("{ours}: {result_message}"),
            _ => result_message,
        });
    } else if !outcome.is_complete()
        && !matches!(exit.kind, ExitKind::NotFound | ExitKind::NotExecutable)
        && let Some(line) = last_output_line(dir)
    {
        message = Some(match message {
            Some(ours) => format!("{ours}; last output: {line}"),
            None => line,
        });
    }
    Report {
        outcome,
        exit_code: exit.code,
        rows,
        metrics,
        message,
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
        ] {
            let report = with_result(Some(text), exited(0));
            assert_eq!(report.outcome, Outcome::Failed, "{text}");
            let message = report.message.unwrap();
            assert!(message.contains(expected), "{text}: {message}");
            assert!(message.contains("result.json"), "names the file: {message}");
        }
    }
}
