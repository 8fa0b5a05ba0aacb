//! How a task ends: the task contract's exit codes (docs/tasks.md) and the `KEEL_RESULT` file.

use std::fmt;
use std::io::{self, Write};
use std::path::Path;

use serde_json::{Map, Value, json};

/// Exit 75 (EX_TEMPFAIL): the data is not there yet; Keel checks again later.
pub const EXIT_NOT_READY: i32 = 75;
/// Exit 65 (EX_DATAERR): permanent; never retried.
pub const EXIT_PERMANENT: i32 = 65;
/// Any other non-zero code is transient and retried under the task's policy.
pub const EXIT_TRANSIENT: i32 = 1;

/// Why a task did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskError {
    /// Exit 75.
    NotReady(String),
    /// Exit 65.
    Permanent(String),
    /// Exit 1.
    Transient(String),
}

impl TaskError {
    pub fn exit_code(&self) -> i32 {
        match self {
            TaskError::NotReady(_) => EXIT_NOT_READY,
            TaskError::Permanent(_) => EXIT_PERMANENT,
            TaskError::Transient(_) => EXIT_TRANSIENT,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            TaskError::NotReady(m) | TaskError::Permanent(m) | TaskError::Transient(m) => m,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            TaskError::NotReady(_) => "not ready",
            TaskError::Permanent(_) => "permanent failure",
            TaskError::Transient(_) => "transient failure",
        }
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind(), self.message())
    }
}

impl std::error::Error for TaskError {}

impl From<rusqlite::Error> for TaskError {
    /// Warehouse errors are worth a retry: a locked or briefly unavailable file heals.
    fn from(e: rusqlite::Error) -> TaskError {
        TaskError::Transient(format!("warehouse: {e}"))
    }
}

/// What a task that exits 0 reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// True for a date without games: the result file says `"outcome": "no_data"`.
    pub no_data: bool,
    pub message: String,
    pub rows: u64,
    pub metrics: Map<String, Value>,
    /// `"items"`: what a task that expands over this one (`expand` in keel.toml) runs once per
    /// item; `None` writes no list.
    pub items: Option<Vec<Value>>,
}

impl Report {
    pub fn ok(rows: u64, message: impl Into<String>) -> Report {
        Report {
            no_data: false,
            message: message.into(),
            rows,
            metrics: Map::new(),
            items: None,
        }
    }

    pub fn no_games(date: impl fmt::Display) -> Report {
        Report {
            no_data: true,
            message: format!("no games on {date}"),
            rows: 0,
            metrics: Map::new(),
            items: None,
        }
    }

    pub fn metric(mut self, name: &str, value: impl Into<Value>) -> Report {
        self.metrics.insert(name.to_string(), value.into());
        self
    }

    pub fn items(mut self, items: Vec<Value>) -> Report {
        self.items = Some(items);
        self
    }

    /// The `KEEL_RESULT` document. `outcome` appears only for `no_data`; a plain success needs
    /// none.
    pub fn to_json(&self) -> Value {
        let mut doc = Map::new();
        if self.no_data {
            doc.insert("outcome".into(), json!("no_data"));
        }
        doc.insert("message".into(), json!(self.message));
        doc.insert("rows".into(), json!(self.rows));
        if !self.metrics.is_empty() {
            doc.insert("metrics".into(), Value::Object(self.metrics.clone()));
        }
        if let Some(items) = &self.items {
            doc.insert("items".into(), Value::Array(items.clone()));
        }
        Value::Object(doc)
    }
}

/// Writes the result file atomically (a temporary file renamed into place), so Keel never
/// reads half a document.
pub fn write_result(path: &Path, doc: &Value) -> io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(doc.to_string().as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_data_document_matches_the_contract() {
        let doc = Report::no_games("2026-11-26").to_json();
        assert_eq!(
            doc,
            json!({"outcome": "no_data", "message": "no games on 2026-11-26", "rows": 0})
        );
        let doc = Report::ok(3, "ok").metric("accuracy", 0.5).to_json();
        assert_eq!(
            doc,
            json!({"message": "ok", "rows": 3, "metrics": {"accuracy": 0.5}})
        );
    }

    #[test]
    fn exit_codes() {
        assert_eq!(TaskError::NotReady(String::new()).exit_code(), 75);
        assert_eq!(TaskError::Permanent(String::new()).exit_code(), 65);
        assert_eq!(TaskError::Transient(String::new()).exit_code(), 1);
    }
}
