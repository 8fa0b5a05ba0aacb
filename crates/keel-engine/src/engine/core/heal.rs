//! Remediation from downstream (docs/health.md, "Remediation"): a task whose `block` check
//! with `heal = [...]` failed, or whose result asked `{"heal": [...]}`, has the named upstream
//! tasks run again (new attempts, charged to no one), and runs again after them. Each run of a
//! partition makes at most `[pipeline] heal = { budget = N }` heals; once they are spent the
//! task follows its retry policy, and if it then ends without completing it ends with one
//! `heal_exhausted` event and alert, never another heal.
//!
//! A heal is decided in the step that records the asking attempt's end, and everything it
//! decides is in that step's writes: the attempt's finish (the task back to pending,
//! uncharged), the targets and the tasks between them and the asking task reset, and the
//! `heal_requested` event, whose count in the run's event log is the budget used. A Keel killed
//! before the commit finds the attempt's end again and decides again; one killed after it finds
//! every reset stored and the heal counted, so a heal is neither lost nor made twice.

use keel_model::{EventKind, Severity, failed_checks};

use super::*;

/// What an attempt asked to heal, and whether it may.
pub(super) enum HealDecision {
    /// Nothing was asked, or nothing asked can be healed: the usual retry decision applies.
    /// The note says what was asked and refused.
    None(Option<String>),
    /// A heal is granted: the task runs again after these tasks.
    Granted {
        targets: Vec<TaskIndex>,
        note: String,
    },
    /// The run's heal budget is spent.
    Exhausted {
        targets: Vec<TaskIndex>,
        note: String,
    },
}

impl Core {
    /// Which upstream tasks the attempt of `live` that ended with `report` (its checks already
    /// judged) asks to heal, and whether the run's budget allows it.
    pub(super) fn heal_decision(&self, book: &Book, live: &Live, report: &Report) -> HealDecision {
        let asked = self.heal_asked(live, report);
        if asked.is_empty() {
            return HealDecision::None(None);
        }
        let active = &book.runs[live.run];
        let mut refused = Vec::new();
        let mut targets = Vec::new();
        if self.is_item(live.task) {
            let note = format!(
                "heal of {} not made: an item of an expanded task cannot heal; heal from the expanded task's checks",
                quoted(&asked)
            );
            return HealDecision::None(Some(note));
        }
        let inputs = self.transitive_inputs(live.task);
        for name in &asked {
            match self.dag.index_of(name) {
                None => refused.push(format!("{name:?} is no task")),
                Some(target) if target == live.task => {
                    refused.push(format!("{name:?} is the task itself"))
                }
                Some(target) if !inputs.contains(&target) => {
                    refused.push(format!("{name:?} is not upstream of it"))
                }
                Some(target) if self.spec.tasks[target].expand.is_some() => {
                    refused.push(format!("{name:?} expands over items"))
                }
                Some(target) => match self.frozen_at(active, target, book.now) {
                    Some(frozen) => refused.push(format!("{name:?} is frozen {frozen}")),
                    None => targets.push(target),
                },
            }
        }
        let refused_note =
            (!refused.is_empty()).then(|| format!("heal refused: {}", refused.join(", ")));
        if targets.is_empty() || active.cancelling {
            return HealDecision::None(refused_note);
        }
        // A frozen task is not run again, so it heals nothing either.
        if let Some(frozen) = self.frozen_at(active, live.task, book.now) {
            let note = format!("heal not made: the task is frozen {frozen}");
            return HealDecision::None(Some(match refused_note {
                Some(refused) => format!("{note}; {refused}"),
                None => note,
            }));
        }
        let budget = self.spec.heal_budget;
        let names: Vec<&str> = targets.iter().map(|task| self.name(*task)).collect();
        let mut note = if active.heals_used < budget {
            format!(
                "healing {} ({} of {budget} heals of this run); runs again after them",
                quoted(&names),
                active.heals_used + 1
            )
        } else {
            format!(
                "heal of {} not made: the run's heal budget ({budget}) is spent",
                quoted(&names)
            )
        };
        if let Some(refused) = refused_note {
            note = format!("{note}; {refused}");
        }
        if active.heals_used < budget {
            HealDecision::Granted { targets, note }
        } else {
            HealDecision::Exhausted { targets, note }
        }
    }

    /// The tasks an attempt asks to heal: the `heal` of its failed `block` checks, then its
    /// result's `"heal"`, without repeats. A cancelled or lost attempt asks nothing.
    fn heal_asked(&self, live: &Live, report: &Report) -> Vec<String> {
        let mut asked: Vec<String> = Vec::new();
        if matches!(
            report.outcome,
            Outcome::Cancelled | Outcome::Lost | Outcome::NotReady
        ) {
            return asked;
        }
        if report.outcome == Outcome::FailedCheck {
            let spec = &self.spec.tasks[self.base_task(live.task)];
            for failure in failed_checks(&spec.checks, report.rows, report.metrics.as_deref()) {
                if failure.check.severity == Severity::Block {
                    asked.extend(failure.check.heal.iter().cloned());
                }
            }
        }
        asked.extend(report.heal.iter().cloned());
        let mut unique = Vec::new();
        for name in asked {
            if !unique.contains(&name) {
                unique.push(name);
            }
        }
        unique
    }

    /// Every task `task` waits for, directly or through others.
    fn transitive_inputs(&self, task: TaskIndex) -> Vec<TaskIndex> {
        let mut seen = vec![false; self.dag.len()];
        let mut stack = vec![task];
        while let Some(current) = stack.pop() {
            for input in self.dag.inputs(current) {
                if !seen[input] {
                    seen[input] = true;
                    stack.push(input);
                }
            }
        }
        (0..self.dag.len()).filter(|task| seen[*task]).collect()
    }

    /// Carries out a granted heal in the step's writes: the targets, and the tasks between
    /// them and `asker` (which read what the targets wrote), run again; the asker waits for them
    /// (its own attempt's finish, `TaskNext::Resume`, puts it back to pending); the heal is
    /// counted with a `heal_requested` event.
    pub(crate) fn grant_heal(
        &mut self,
        book: &mut Book,
        live: &Live,
        targets: &[TaskIndex],
        source: &str,
    ) {
        let asker = live.task;
        let downstream = self.dag.downstream_of(targets);
        let inputs = self.transitive_inputs(asker);
        let between: Vec<TaskIndex> = downstream
            .into_iter()
            .filter(|task| inputs.contains(task))
            .collect();
        let mut rerun: Vec<TaskIndex> = targets.to_vec();
        rerun.extend(
            between
                .iter()
                .copied()
                .filter(|task| !targets.contains(task)),
        );
        rerun.sort_unstable();
        let active = &mut book.runs[live.run];
        active.heals_used += 1;
        let asker_name = self.name(asker).to_string();
        let reason = format!("healed for {asker_name:?}: running again");
        let mut changes = Vec::new();
        let mut reset = Vec::new();
        for task in &rerun {
            // A frozen task between is not rerun: it keeps what it wrote. Nor is an expanded
            // one: its items were recorded once for the run, and their results stand.
            if !targets.contains(task)
                && (self.frozen_at(active, *task, book.now).is_some()
                    || self.spec.tasks[*task].expand.is_some())
            {
                continue;
            }
            match active.slots[*task].state {
                TaskState::Done => {
                    let slot = &mut active.slots[*task];
                    slot.state = TaskState::Pending;
                    slot.outcome = None;
                    active.done -= 1;
                    changes.push(Change::Task(TaskChange::reset(
                        self.name(*task),
                        reason.clone(),
                    )));
                    reset.push(self.name(*task).to_string());
                }
                TaskState::Running => {
                    active.needs_rerun[*task] = true;
                    changes.push(Change::MarkRerun {
                        task: self.name(*task).to_string(),
                        reason: reason.clone(),
                    });
                    reset.push(self.name(*task).to_string());
                }
                TaskState::Pending | TaskState::Waiting => {}
            }
        }
        let healed: Vec<String> = targets
            .iter()
            .map(|task| self.name(*task).to_string())
            .collect();
        let detail = serde_json::json!({
            "attempt": live.number,
            "source": source,
            "heal": healed,
            "rerun": reset,
            "used": active.heals_used,
            "budget": self.spec.heal_budget,
        });
        changes.push(Change::Event {
            task: Some(asker_name.clone()),
            kind: EventKind::HealRequested,
            detail: detail.to_string(),
        });
        write_changes(&mut book.writes, active.record.id, changes);
        (self.observer)(Progress::HealRequested {
            run: active.record.id,
            partition: active.record.partition.clone(),
            task: asker_name,
            heal: healed,
            used: active.heals_used,
            budget: self.spec.heal_budget,
        });
        let active = &mut book.runs[live.run];
        self.recompute_remaining(active);
        for task in 0..self.dag.len() {
            if matches!(
                active.slots[task].state,
                TaskState::Pending | TaskState::Waiting
            ) && active.remaining[task] == 0
                && task != asker
                && !book.ready.contains(&(live.run, task))
            {
                book.ready.push_back((live.run, task));
            }
        }
    }

    /// The task asked to heal with its run's budget spent and ends without completing: one
    /// `heal_exhausted` event, told once.
    pub(crate) fn heal_exhausted(
        &mut self,
        book: &mut Book,
        live: &Live,
        targets: &[TaskIndex],
        outcome: Outcome,
    ) {
        let active = &book.runs[live.run];
        let task = self.name(live.task).to_string();
        let heal: Vec<String> = targets.iter().map(|t| self.name(*t).to_string()).collect();
        let describe = format!(
            "{task} ended {outcome} with its heal budget spent ({} of {}); healing {} did not help",
            active.heals_used,
            self.spec.heal_budget,
            quoted(&heal)
        );
        let detail = serde_json::json!({
            "attempt": live.number,
            "heal": heal,
            "used": active.heals_used,
            "budget": self.spec.heal_budget,
            "outcome": outcome.as_str(),
            "describe": describe,
        });
        book.writes.push(Write::Run {
            run: active.record.id,
            change: Change::Event {
                task: Some(task.clone()),
                kind: EventKind::HealExhausted,
                detail: detail.to_string(),
            },
        });
        (self.observer)(Progress::HealExhausted {
            run: active.record.id,
            partition: active.record.partition.clone(),
            task,
            detail: describe,
        });
    }
}

/// `"a", "b"`.
fn quoted<S: AsRef<str>>(names: &[S]) -> String {
    names
        .iter()
        .map(|name| format!("{:?}", name.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
#[path = "heal_tests.rs"]
mod tests;
