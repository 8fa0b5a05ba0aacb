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

impl Core {
    /// Judges the completeness checks of the phases (`checks = [{ complete = "90%" }]` on a
    /// phase) of a run whose every task has ended, before its end state is decided: each failed
    /// check is recorded (`check_failed`) and told, and the message of the first failed `block`
    /// check is returned, which fails the run. A run cancelled, or one `--only` left tasks out
    /// of, is not judged: what it lacks was asked for.
    pub(crate) fn judge_phase_checks(
        &mut self,
        book: &mut Book,
        run_index: usize,
    ) -> Option<String> {
        let active = &book.runs[run_index];
        if active.finished
            || active.done < active.slots.len()
            || active.cancelling
            || !active.left_out.is_empty()
            || self.spec.phases.iter().all(|phase| phase.checks.is_empty())
        {
            return None;
        }
        let mut blocking = None;
        let mut failures = Vec::new();
        for phase in &self.spec.phases {
            if phase.checks.is_empty() {
                continue;
            }
            // Each task of the phase is one unit, or each of its items once it expanded.
            let (mut complete, mut total) = (0, 0);
            for (task, spec) in self.spec.tasks.iter().enumerate() {
                if spec.phase != phase.name {
                    continue;
                }
                match active.expansions.get(&task) {
                    Some(expansion) if !expansion.items.is_empty() => {
                        total += expansion.items.len();
                        complete += expansion
                            .items
                            .iter()
                            .filter(|item| is_complete(&active.slots[**item]))
                            .count();
                    }
                    _ => {
                        total += 1;
                        complete += usize::from(is_complete(&active.slots[task]));
                    }
                }
            }
            for check in &phase.checks {
                if let Some(describe) = check.judge(&phase.name, complete, total) {
                    failures.push((phase.name.clone(), check.clone(), complete, total, describe));
                }
            }
        }
        let run = active.record.id;
        let partition = active.record.partition.clone();
        for (phase, check, complete, total, describe) in failures {
            let detail = serde_json::json!({
                "phase": phase,
                "severity": check.severity.as_str(),
                "check": "complete",
                "value": complete as f64 / total as f64,
                "complete": complete,
                "total": total,
                "min": check.min_share,
                "describe": describe,
            });
            book.writes.push(Write::Run {
                run,
                change: Change::Event {
                    task: None,
                    kind: EventKind::CheckFailed,
                    detail: detail.to_string(),
                },
            });
            (self.observer)(Progress::CheckFailed {
                run,
                partition: partition.clone(),
                task: format!("phase {phase}"),
                attempt: 0,
                severity: check.severity,
                detail: describe.clone(),
            });
            if check.severity == Severity::Block && blocking.is_none() {
                blocking = Some(format!("check failed: {describe}"));
            }
        }
        blocking
    }
}
