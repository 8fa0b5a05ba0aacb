//! Task versions and canary rollout: which version of a task an attempt runs, and what a
//! canary attempt's end decides (counted, promoted, rolled back).
//!
//! A task's version is `keel_model::task_version_of` its spec and its code's identity (the
//! output of its `version` command or the digests of its `code` files, which the CLI reads and
//! hands in through `LaunchContext::code_identities`). The store keeps every version of a task
//! with its spec (`task_versions`); the driver registers the engine's versions when it starts
//! and reads them again on every poll, so a decision taken by hand applies without a restart.
//!
//! While the file's version of a task is a `canary`, the partitions its rollout's share picks
//! (a hash of pipeline, task and partition) run it, and every other partition runs the promoted
//! version's command, working directory and environment. A canary attempt that fails, or
//! succeeds with a metric below a `min_metrics` floor, counts against the canary; once the
//! failed share is above `max_failure_rate` the version is rolled back and the failed attempt's
//! task runs again at once, uncharged, on the promoted version, so that no partition ends
//! failed because of the canary. `promote_after` clean canary attempts promote it.

use std::sync::Arc;

use keel_model::{Outcome, RolloutDecision, TaskSpec, VersionStatus};
use keel_store::{NewTaskVersion, TaskVersionChange, TaskVersionRecord};

use super::*;

/// Where the file's version of one task stands, as last read from the store.
#[derive(Debug, Clone)]
pub(crate) struct TaskRollout {
    pub status: VersionStatus,
    pub clean: u32,
    pub failed: u32,
    /// The promoted version, when it is not the file's: it runs outside the canary, and
    /// everywhere once the file's version is rolled back.
    pub previous: Option<Arc<PreviousVersion>>,
    /// Its canary's start is in the event log.
    pub announced: bool,
}

impl Default for TaskRollout {
    fn default() -> Self {
        TaskRollout {
            status: VersionStatus::Promoted,
            clean: 0,
            failed: 0,
            previous: None,
            announced: false,
        }
    }
}

/// A stored version of a task that still runs: the file's task with the stored version's
/// command, working directory and environment.
#[derive(Debug)]
pub(crate) struct PreviousVersion {
    pub version: String,
    pub spec: TaskSpec,
    pub commands: Commands,
}

impl std::fmt::Debug for Commands {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Commands").finish_non_exhaustive()
    }
}

/// Which version an attempt of a task runs.
#[derive(Debug, Clone)]
pub(crate) enum VersionChoice {
    /// The file's version (promoted, or a canary on one of its partitions).
    Current {
        canary: bool,
    },
    Previous(Arc<PreviousVersion>),
}

/// The version a stored spec describes, run with what the file's task says about the rest
/// (timeout, retries, resources): a version's command and environment are what tell its code
/// apart. `None` when the stored spec does not read back.
fn previous_from(record: &TaskVersionRecord, current: &TaskSpec) -> Option<PreviousVersion> {
    let stored: serde_json::Value = serde_json::from_str(&record.spec).ok()?;
    let mut spec = current.clone();
    if let Some(command) = stored.get("command") {
        spec.command = serde_json::from_value(command.clone()).ok()?;
    }
    spec.context = match stored.get("context") {
        Some(context) => serde_json::from_value(context.clone()).ok()?,
        None => keel_model::TaskContext::default(),
    };
    if spec.command.is_empty() && spec.http.is_none() {
        return None;
    }
    let commands = Commands::of(&spec);
    Some(PreviousVersion {
        version: record.version.clone(),
        spec,
        commands,
    })
}

/// Whether an attempt's outcome counts for or against a canary; `None` when it says nothing
/// about the version (not ready, lost, cancelled).
fn counts_as_clean(outcome: Outcome) -> Option<bool> {
    match outcome {
        Outcome::Succeeded | Outcome::NoData => Some(true),
        Outcome::Failed | Outcome::FailedPermanent | Outcome::TimedOut | Outcome::Stalled => {
            Some(false)
        }
        _ => None,
    }
}

impl Core {
    /// Every task's version: its spec and its code's identity.
    pub(crate) fn compute_task_versions(spec: &PipelineSpec, config: &EngineConfig) -> Vec<String> {
        spec.tasks
            .iter()
            .map(|task| {
                let json = serde_json::to_string(task).expect("a task spec always serialises");
                let identity = config
                    .launch_context
                    .code_identities
                    .get(&task.name)
                    .map_or("", String::as_str);
                keel_model::task_version_of(&json, identity)
            })
            .collect()
    }

    /// The versions this engine runs, for the store to register.
    pub(crate) fn new_task_versions(&self) -> Vec<NewTaskVersion> {
        self.spec
            .tasks
            .iter()
            .zip(&self.task_versions)
            .map(|(task, version)| NewTaskVersion {
                task: task.name.clone(),
                version: version.clone(),
                spec: serde_json::to_string(task).expect("a task spec always serialises"),
                canary: task.versioning.rollout.is_some(),
            })
            .collect()
    }

    /// Takes up what the store says about the pipeline's task versions.
    pub(crate) fn load_rollouts(&mut self, records: &[TaskVersionRecord]) {
        for (index, task) in self.spec.tasks.iter().enumerate() {
            let version = &self.task_versions[index];
            let own = records
                .iter()
                .find(|record| record.task == task.name && record.version == *version);
            let promoted = records.iter().find(|record| {
                record.task == task.name
                    && record.version != *version
                    && record.status == VersionStatus::Promoted
            });
            let before = std::mem::take(&mut self.rollouts[index]);
            let previous = match (&before.previous, promoted) {
                (Some(kept), Some(record)) if kept.version == record.version => Some(kept.clone()),
                (_, Some(record)) => previous_from(record, task).map(Arc::new),
                (_, None) => None,
            };
            self.rollouts[index] = match own {
                Some(own) => TaskRollout {
                    status: own.status,
                    clean: own.clean,
                    failed: own.failed,
                    previous,
                    announced: before.announced || own.clean + own.failed > 0,
                },
                None => TaskRollout {
                    previous,
                    ..TaskRollout::default()
                },
            };
        }
    }

    /// The version an attempt of `task` in `record`'s partition runs.
    pub(crate) fn version_choice(&self, record: &RunRecord, task: TaskIndex) -> VersionChoice {
        let base = self.base_task(task);
        let rollout = &self.rollouts[base];
        let previous = || rollout.previous.clone();
        match rollout.status {
            VersionStatus::Promoted => VersionChoice::Current { canary: false },
            VersionStatus::Canary => {
                let spec = &self.spec.tasks[base];
                let in_canary = spec.versioning.rollout.as_ref().is_none_or(|rollout| {
                    rollout.is_canary_partition(&self.spec.name, &spec.name, &record.partition)
                });
                match previous() {
                    Some(previous) if !in_canary => VersionChoice::Previous(previous),
                    _ => VersionChoice::Current { canary: true },
                }
            }
            VersionStatus::RolledBack | VersionStatus::Retired => match previous() {
                Some(previous) => VersionChoice::Previous(previous),
                None => VersionChoice::Current { canary: false },
            },
        }
    }

    /// The version string an attempt of `task` in `record`'s partition records.
    pub(crate) fn chosen_version(&self, record: &RunRecord, task: TaskIndex) -> String {
        match self.version_choice(record, task) {
            VersionChoice::Current { .. } => self.task_versions[self.base_task(task)].clone(),
            VersionChoice::Previous(previous) => previous.version.clone(),
        }
    }

    /// The first canary attempt of a version is in the event log, with the partition it runs on.
    pub(crate) fn announce_canary(&mut self, book: &mut Book, run_index: usize, task: TaskIndex) {
        let base = self.base_task(task);
        if self.rollouts[base].announced {
            return;
        }
        self.rollouts[base].announced = true;
        let record = &book.runs[run_index].record;
        let spec = &self.spec.tasks[base];
        let rollout = &self.rollouts[base];
        let share = spec
            .versioning
            .rollout
            .as_ref()
            .map_or(100, |rollout| rollout.canary_percent);
        let previous = rollout
            .previous
            .as_ref()
            .map_or("none".to_string(), |previous| previous.version.clone());
        book.writes.push(Write::TaskVersion(TaskVersionChange {
            pipeline: self.spec.name.clone(),
            task: spec.name.clone(),
            version: self.task_versions[base].clone(),
            status: VersionStatus::Canary,
            clean: rollout.clean,
            failed: rollout.failed,
            reason: None,
            run: record.id,
            attempt: None,
            event: keel_model::EventKind::RolloutCanary,
            detail: format!(
                "canary started: version {} runs on {share}% of partitions (first: {}); version {previous} runs on the rest",
                self.task_versions[base], record.partition
            ),
        }));
    }

    /// A canary attempt ended: counts it, and promotes or rolls back the version when its counts
    /// say so. Returns the next step of the task when the rollback reruns it on the promoted
    /// version (the attempt failed).
    pub(crate) fn judge_canary(
        &mut self,
        book: &mut Book,
        live: &Live,
        attempt: AttemptId,
        report: &Report,
    ) -> Option<(TaskNext, String)> {
        let base = self.base_task(live.task);
        if live.task_version.as_deref() != Some(self.task_versions[base].as_str()) {
            return None;
        }
        if self.rollouts[base].status == VersionStatus::RolledBack {
            // A canary attempt that was running when another one rolled the version back:
            // its partition runs again on the promoted version too, if it failed.
            let previous = self.rollouts[base].previous.clone()?;
            if counts_as_clean(report.outcome) != Some(false) {
                return None;
            }
            let note = format!(
                "version {} was rolled back; running again on version {}",
                self.task_versions[base], previous.version
            );
            let next = TaskNext::Retry {
                not_before: book.now,
                charge: false,
            };
            return Some((next, note));
        }
        if self.rollouts[base].status != VersionStatus::Canary {
            return None;
        }
        let spec = &self.spec.tasks[base];
        let rollout_spec = spec.versioning.rollout.clone()?;
        let mut clean = counts_as_clean(report.outcome)?;
        let mut why = report
            .message
            .clone()
            .unwrap_or_else(|| format!("attempt ended {}", report.outcome.as_str()));
        if clean
            && report.outcome == Outcome::Succeeded
            && let Some(regression) = rollout_spec.metric_regression(report.metrics.as_deref())
        {
            clean = false;
            why = regression;
        }
        let rollout = &mut self.rollouts[base];
        if clean {
            rollout.clean += 1;
        } else {
            rollout.failed += 1;
        }
        let decision = rollout_spec.decide(rollout.clean, rollout.failed);
        let record = book.runs[live.run].record.clone();
        let version = self.task_versions[base].clone();
        let previous = rollout
            .previous
            .as_ref()
            .map(|previous| previous.version.clone());
        let (status, event, detail, reason) = match decision {
            RolloutDecision::KeepGoing => (VersionStatus::Canary, None, String::new(), None),
            RolloutDecision::Promote => (
                VersionStatus::Promoted,
                Some(keel_model::EventKind::RolloutPromoted),
                format!(
                    "promoted version {version} after {} clean canary attempts ({} failed)",
                    rollout.clean, rollout.failed
                ),
                Some(format!("{} clean canary attempts", rollout.clean)),
            ),
            RolloutDecision::RollBack => {
                let back_to = previous.clone().unwrap_or_else(|| "none".to_string());
                (
                    VersionStatus::RolledBack,
                    Some(keel_model::EventKind::RolloutRolledBack),
                    format!(
                        "rolled back version {version} to version {back_to}: partition {} attempt {}: {why} ({} failed of {} canary attempts, more than {:.0}% allowed)",
                        record.partition,
                        live.number,
                        rollout.failed,
                        rollout.clean + rollout.failed,
                        rollout_spec.max_failure_rate * 100.0
                    ),
                    Some(why.clone()),
                )
            }
        };
        rollout.status = status;
        if status == VersionStatus::Promoted {
            rollout.previous = None;
        }
        // The counts are stored with every canary attempt's end, in the same step; only a
        // decision goes in the event log.
        book.writes.push(Write::TaskVersion(TaskVersionChange {
            pipeline: self.spec.name.clone(),
            task: spec.name.clone(),
            version: version.clone(),
            status,
            clean: rollout.clean,
            failed: rollout.failed,
            reason: reason.clone(),
            run: record.id,
            attempt: Some(attempt),
            event: event.unwrap_or(keel_model::EventKind::RolloutCanary),
            detail: if event.is_some() {
                detail.clone()
            } else {
                format!(
                    "canary attempt {}: {} clean, {} failed of {} to promote",
                    if clean { "clean" } else { "failed" },
                    rollout.clean,
                    rollout.failed,
                    rollout_spec.promote_after
                )
            },
        }));
        match decision {
            RolloutDecision::KeepGoing => None,
            RolloutDecision::Promote => {
                (self.observer)(Progress::RolloutDecided {
                    run: record.id,
                    partition: record.partition.clone(),
                    task: spec.name.clone(),
                    version,
                    status,
                    detail,
                });
                None
            }
            RolloutDecision::RollBack => {
                (self.observer)(Progress::RolloutDecided {
                    run: record.id,
                    partition: record.partition.clone(),
                    task: spec.name.clone(),
                    version: version.clone(),
                    status,
                    detail,
                });
                if clean || previous.is_none() {
                    return None;
                }
                // The partition that failed on the canary runs again at once on the promoted
                // version, without using up an attempt.
                let note = format!(
                    "version {version} rolled back; running again on version {}",
                    previous.unwrap_or_default()
                );
                Some((
                    TaskNext::Retry {
                        not_before: book.now,
                        charge: false,
                    },
                    note,
                ))
            }
        }
    }
}

#[cfg(test)]
#[path = "rollout_tests.rs"]
mod tests;
