//! Checks on results (`checks = [...]` on a task): judged when an attempt that succeeded ends,
//! before its retry decision. A failed `block` check turns the attempt into `failed_check`,
//! which the retry policy retries like a failure and which flows downstream like one once no
//! retry is left; a failed `warn` check leaves the outcome alone. Either way each failed check
//! is recorded in the event log (`check_failed`) in the step's transaction and told to the
//! observer, which alerts.

use keel_model::{EventKind, Severity, failed_checks};

use super::*;

impl Core {
    /// Judges the checks of the task `live` ran on `report` and returns the report as the
    /// engine takes it: `failed_check` when a `block` check failed, its message saying which.
    /// Only a succeeded attempt is judged; any other outcome is already not a success.
    pub(crate) fn judge_checks(
        &mut self,
        book: &mut Book,
        live: &Live,
        mut report: Report,
    ) -> Report {
        let spec = &self.spec.tasks[self.base_task(live.task)];
        if spec.checks.is_empty() || report.outcome != Outcome::Succeeded {
            return report;
        }
        let failures = failed_checks(&spec.checks, report.rows, report.metrics.as_deref());
        if failures.is_empty() {
            return report;
        }
        let active = &book.runs[live.run];
        let task = self.name(live.task).to_string();
        let mut blocking = Vec::new();
        let mut warnings = Vec::new();
        for failure in &failures {
            let describe = failure.describe();
            let detail = serde_json::json!({
                "attempt": live.number,
                "severity": failure.check.severity.as_str(),
                "check": failure.check.target.to_string(),
                "value": failure.value,
                "min": failure.check.min,
                "max": failure.check.max,
                "describe": describe,
            });
            book.writes.push(Write::Run {
                run: active.record.id,
                change: Change::Event {
                    task: Some(task.clone()),
                    kind: EventKind::CheckFailed,
                    detail: detail.to_string(),
                },
            });
            (self.observer)(Progress::CheckFailed {
                run: active.record.id,
                partition: active.record.partition.clone(),
                task: task.clone(),
                attempt: live.number,
                severity: failure.check.severity,
                detail: describe.clone(),
            });
            match failure.check.severity {
                Severity::Block => blocking.push(describe),
                Severity::Warn => warnings.push(describe),
            }
        }
        let mut parts = Vec::new();
        if !blocking.is_empty() {
            report.outcome = Outcome::FailedCheck;
            parts.push(format!("check failed: {}", blocking.join("; ")));
        }
        if !warnings.is_empty() {
            parts.push(format!("check warning: {}", warnings.join("; ")));
        }
        let said = parts.join("; ");
        report.message = Some(match report.message.take() {
            Some(message) if !message.is_empty() => format!("{said} ({message})"),
            _ => said,
        });
        report
    }
}
