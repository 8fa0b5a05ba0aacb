//! Settling: recording ended attempts, moving dependents on, propagating failures, cancelling,
//! and deciding how a run ends.

use super::heal::HealDecision;
use super::*;

impl Core {
    /// Ends a task that is not running with `outcome` (no attempt: a sensor that gave up, a
    /// resource that stayed down), then moves its dependents on.
    pub(crate) fn settle_task(
        &mut self,
        book: &mut Book,
        run_index: usize,
        task: TaskIndex,
        outcome: Outcome,
        message: String,
    ) -> Result<(), EngineError> {
        let active = &mut book.runs[run_index];
        let name = self.name(task).to_string();
        let change = TaskChange {
            task: name.clone(),
            state: TaskState::Done,
            outcome: Some(outcome),
            not_before: None,
            message: Some(message.clone()),
            reset_retry_budget: false,
            reason: message,
        };
        write_tasks(&mut book.writes, active.record.id, [change]);
        active.slots[task].state = TaskState::Done;
        active.slots[task].outcome = Some(outcome);
        (self.observer)(Progress::TasksSettled {
            run: active.record.id,
            partition: active.record.partition.clone(),
            tasks: vec![name],
            outcome,
        });
        let done = Followup::TaskDone {
            run_index,
            task,
            outcome,
        };
        self.follow_up(book, done)
    }

    /// Records a batch of ended attempts, and everything they decide, in one step.
    pub(crate) fn on_reports(
        &mut self,
        book: &mut Book,
        reports: Vec<(AttemptId, Report)>,
    ) -> Result<(), EngineError> {
        let pending: Vec<_> = reports
            .into_iter()
            .filter_map(|(attempt, report)| self.record_end(book, attempt, report))
            .collect();
        let mut done = Vec::new();
        let mut again = Vec::new();
        for (live, outcome, next, message) in pending {
            let active = &mut book.runs[live.run];
            let slot = &mut active.slots[live.task];
            slot.outcome = Some(outcome);
            slot.losses = if outcome == Outcome::Lost {
                slot.losses + 1
            } else {
                0
            };
            let retry_at = match &next {
                TaskNext::Done(final_outcome) => {
                    // The task stays running in memory until its follow-up settles it: until
                    // then, another task of the same batch that lands late must see it running
                    // (and owe it a rerun), and no count may take its end in twice.
                    done.push((live.run, live.task, *final_outcome));
                    None
                }
                TaskNext::Retry { not_before, charge } => {
                    slot.state = TaskState::Waiting;
                    slot.not_before = Some(*not_before);
                    slot.charged += u32::from(*charge);
                    book.timers
                        .push(Reverse((*not_before, live.run, Wake::Task(live.task))));
                    again.push((live.run, live.task));
                    Some(*not_before)
                }
                TaskNext::Resume => {
                    slot.state = TaskState::Pending;
                    again.push((live.run, live.task));
                    None
                }
            };
            let task = self.name(live.task).to_string();
            (self.observer)(Progress::AttemptFinished {
                run: active.record.id,
                partition: active.record.partition.clone(),
                attempt: live.number,
                outcome,
                message,
                retry_at,
                trace: active.trace,
                span: active.trace.attempt_span(&task, live.number),
                task,
                started_at: live.started_at,
                finished_at: book.now,
            });
        }
        book.followups
            .extend(
                done.into_iter()
                    .map(|(run_index, task, outcome)| Followup::TaskDone {
                        run_index,
                        task,
                        outcome,
                    }),
            );
        for (run_index, task) in again {
            if self.is_item(task) {
                continue;
            }
            self.settle_if_an_input_failed(book, run_index, task);
        }
        self.drain(book)
    }

    /// A task that is to run again (a retry, a heal) whose input failed for good while it ran:
    /// the failure was passed downstream while the task was running, so it did not reach it,
    /// and the task could never start. It ends `upstream_failed` now, naming that input.
    fn settle_if_an_input_failed(&mut self, book: &mut Book, run_index: usize, task: TaskIndex) {
        let active = &book.runs[run_index];
        let mut inputs: Vec<TaskIndex> = self.dag.explicit(task).to_vec();
        inputs.extend(self.dag.phase_inputs(task));
        inputs.sort_unstable();
        inputs.dedup();
        let Some(failed) = inputs.into_iter().find(|input| {
            let slot = &active.slots[*input];
            slot.state == TaskState::Done
                && !is_complete(slot)
                && self.blocked_by_failure(active, *input).contains(&task)
        }) else {
            return;
        };
        let outcome = self.settle_upstream_failed(book, run_index, task, failed);
        let active = &book.runs[run_index];
        let name = self.name(task).to_string();
        (self.observer)(Progress::TasksSettled {
            run: active.record.id,
            partition: active.record.partition.clone(),
            tasks: vec![name],
            outcome,
        });
        book.followups.push_back(Followup::TaskDone {
            run_index,
            task,
            outcome,
        });
    }

    /// Records how one attempt ended and decides where its task goes next: its permits go back,
    /// the retry decision is taken, and the finish joins the step's writes. `None` for an attempt
    /// this engine does not follow (reported twice, say).
    fn record_end(
        &mut self,
        book: &mut Book,
        attempt: AttemptId,
        report: Report,
    ) -> Option<(Live, Outcome, TaskNext, Option<String>)> {
        let live = book.live.remove(&attempt)?;
        let mut probe = false;
        if let Some(permits) = book.permits.remove(&attempt) {
            probe = permits.iter().any(|(_, permit)| permit.probe);
            self.release_permits(book, permits, ResourceVerdict::of(report.outcome));
        }
        // Checks are judged after the resources are told how the call went: a result that
        // fails a check came from a service that answered. A canary's end (a failed check
        // counts as a failure) may then roll its version back, and its task runs again at once
        // on the promoted version instead of following its retry policy.
        let report = self.judge_checks(book, &live, report);
        // A heal (`heal` on a failed check, or the result's `"heal"`) is decided before the
        // retry policy: a granted one runs the upstream tasks again and this task after them,
        // uncharged.
        let heal = self.heal_decision(book, &live, &report);
        let (next, note) = match self.judge_canary(book, &live, attempt, &report) {
            Some((next, note)) => (next, Some(note)),
            None => match &heal {
                HealDecision::Granted { targets, note } => {
                    let source = if report.heal.is_empty() {
                        "check"
                    } else {
                        "result"
                    };
                    self.grant_heal(book, &live, targets, source);
                    (TaskNext::Resume, Some(note.clone()))
                }
                HealDecision::Exhausted {
                    note: heal_note, ..
                }
                | HealDecision::None(Some(heal_note)) => {
                    let (next, note) =
                        self.next_step(book, &live, report.outcome, probe, report.retry_after);
                    let note = match note {
                        Some(note) => format!("{heal_note}; {note}"),
                        None => heal_note.clone(),
                    };
                    (next, Some(note))
                }
                HealDecision::None(None) => {
                    self.next_step(book, &live, report.outcome, probe, report.retry_after)
                }
            },
        };
        if let (HealDecision::Exhausted { targets, .. }, TaskNext::Done(outcome)) = (&heal, &next)
            && !outcome.is_complete()
        {
            self.heal_exhausted(book, &live, targets, *outcome);
        }
        // Items an expanded task runs over are recorded with the end of the attempt that listed
        // them, in the same transaction.
        self.record_items(
            book,
            live.run,
            live.task,
            report.outcome,
            report.items.clone(),
        );
        let message = match (report.message.clone(), note) {
            (Some(message), Some(note)) if message.is_empty() => Some(note),
            (Some(message), Some(note)) => Some(format!("{message}; {note}")),
            (message, note) => message.or(note),
        };
        book.writes.push(Write::Finish(FinishAttempt {
            attempt,
            epoch: live.epoch,
            outcome: report.outcome,
            exit_code: report.exit_code,
            rows: report.rows,
            metrics: report.metrics,
            message: message.clone(),
            next: next.clone(),
            at: book.now,
        }));
        Some((live, report.outcome, next, message))
    }

    /// A task ended for good with `outcome`: it runs again if it owes a rerun (and still can),
    /// and otherwise its dependents move on, or its failure flows downstream.
    pub(crate) fn on_task_done(
        &mut self,
        book: &mut Book,
        run_index: usize,
        task: TaskIndex,
        outcome: Outcome,
    ) -> Result<(), EngineError> {
        if self.is_item(task) {
            self.on_item_done(book, run_index, task, outcome);
            return Ok(());
        }
        let active = &mut book.runs[run_index];
        active.slots[task].state = TaskState::Done;
        active.slots[task].outcome = Some(outcome);
        active.ended_at[task] = Some(book.now);
        let rerun_owed = std::mem::take(&mut active.needs_rerun[task]);
        let frozen = self.frozen_at(active, task, book.now);
        if rerun_owed
            && outcome.is_complete()
            && let Some(frozen) = &frozen
        {
            let why = "an upstream task landed late while it ran";
            let change = self.frozen_rerun_change(active, task, why, frozen);
            write_tasks(&mut book.writes, active.record.id, [change]);
        }
        let active = &mut book.runs[run_index];
        let owed_and_possible =
            rerun_owed && outcome.is_complete() && !active.cancelling && frozen.is_none();
        let outcome = if owed_and_possible {
            match self.failed_input(active, task) {
                Some(failed) => self.settle_upstream_failed(book, run_index, task, failed),
                None => {
                    self.run_again(book, run_index, task);
                    return Ok(());
                }
            }
        } else {
            outcome
        };
        let active = &mut book.runs[run_index];
        active.done += 1;
        if outcome.is_complete() {
            let landed_late = std::mem::take(&mut active.waived[task]);
            // An open gate already let this task's dependents outside its phase go on, except
            // those that name it in their own `after`: they waited for it.
            let edges = if landed_late {
                Edges::NotWaivable
            } else {
                Edges::All
            };
            self.release_dependents(&mut book.ready, active, run_index, task, edges);
            if landed_late {
                book.followups
                    .push_back(Followup::Reconcile { run_index, task });
            }
        } else {
            self.failed_behind_an_open_gate(book, run_index, task);
            book.followups
                .push_back(Followup::Propagate { run_index, task });
        }
        if let Some(gate) = self.topology_of(&book.runs[run_index]).gate_of_task(task) {
            book.followups
                .push_back(Followup::JudgeGate { run_index, gate });
        }
        book.followups.push_back(Followup::FinishRun { run_index });
        Ok(())
    }

    /// A task owed a rerun that can never run, because `failed` (an input) ended for good
    /// meanwhile: it ends `upstream_failed` instead. Returns its new outcome.
    fn settle_upstream_failed(
        &mut self,
        book: &mut Book,
        run_index: usize,
        task: TaskIndex,
        failed: TaskIndex,
    ) -> Outcome {
        let active = &mut book.runs[run_index];
        let reason = format!(
            "upstream task {:?} ended {}",
            self.name(failed),
            active.slots[failed]
                .outcome
                .map(Outcome::as_str)
                .unwrap_or("unfinished")
        );
        let change = TaskChange {
            task: self.name(task).to_string(),
            state: TaskState::Done,
            outcome: Some(Outcome::UpstreamFailed),
            not_before: None,
            message: Some(reason.clone()),
            reset_retry_budget: false,
            reason,
        };
        write_tasks(&mut book.writes, active.record.id, [change]);
        active.slots[task].outcome = Some(Outcome::UpstreamFailed);
        Outcome::UpstreamFailed
    }

    /// The task ran without an upstream task that landed late: once more, with it.
    fn run_again(&mut self, book: &mut Book, run_index: usize, task: TaskIndex) {
        let active = &mut book.runs[run_index];
        let slot = &mut active.slots[task];
        slot.state = TaskState::Pending;
        slot.outcome = None;
        let change = TaskChange::reset(
            self.name(task),
            "an upstream task landed late while it ran; running again with it",
        );
        write_tasks(&mut book.writes, active.record.id, [change]);
        // A task its gate let downstream go without has landed, if with stale inputs: it is no
        // longer missing, and what ran downstream without it runs again after its rerun.
        if active.waived[task] {
            book.followups
                .push_back(Followup::Reconcile { run_index, task });
        }
        self.recompute_remaining(active);
        if active.remaining[task] == 0 {
            book.ready.push_back((run_index, task));
        }
    }

    /// An input of `task` that ended for good without completing and that no open gate waived
    /// for it: with such an input the task can never run again.
    fn failed_input(&self, active: &ActiveRun, task: TaskIndex) -> Option<TaskIndex> {
        self.failed_input_where(active, task, |_| true)
    }

    /// [`Core::failed_input`] among the inputs `counts` keeps. An input named in the task's own
    /// `after` is hard; one reached through a phase is waived if its gate let it be.
    pub(crate) fn failed_input_where(
        &self,
        active: &ActiveRun,
        task: TaskIndex,
        counts: impl Fn(TaskIndex) -> bool,
    ) -> Option<TaskIndex> {
        let failed = |dependency: TaskIndex| {
            let slot = &active.slots[dependency];
            slot.state == TaskState::Done && !is_complete(slot) && counts(dependency)
        };
        let hard = self
            .dag
            .explicit(task)
            .iter()
            .copied()
            .find(|d| failed(*d) && !self.is_soft_edge(*d, task));
        hard.or_else(|| {
            let mut through_phases = self.dag.phase_inputs(task);
            through_phases.sort_unstable();
            through_phases
                .into_iter()
                .find(|dependency| failed(*dependency) && !active.waived[*dependency])
        })
    }

    /// Marks everything downstream of a task that ended without completing as `upstream_failed`.
    pub(crate) fn propagate_failure(
        &mut self,
        book: &mut Book,
        run_index: usize,
        task: TaskIndex,
    ) -> Result<(), EngineError> {
        let blocked = self.blocked_by_failure(&book.runs[run_index], task);
        let settled: Vec<TaskIndex> = std::iter::once(task)
            .chain(blocked.iter().copied())
            .collect();
        let active = &mut book.runs[run_index];
        if blocked.is_empty() {
            self.release_soft_dependents(book, run_index, &settled);
            return Ok(());
        }
        let upstream = self.name(task);
        let reason = format!(
            "upstream task {upstream:?} ended {}",
            active.slots[task]
                .outcome
                .map(Outcome::as_str)
                .unwrap_or("unfinished")
        );
        let changes: Vec<TaskChange> = blocked
            .iter()
            .map(|downstream| TaskChange {
                task: self.name(*downstream).to_string(),
                state: TaskState::Done,
                outcome: Some(Outcome::UpstreamFailed),
                not_before: None,
                message: Some(reason.clone()),
                reset_retry_budget: false,
                reason: reason.clone(),
            })
            .collect();
        write_tasks(&mut book.writes, active.record.id, changes);
        for downstream in &blocked {
            let slot = &mut active.slots[*downstream];
            slot.state = TaskState::Done;
            slot.outcome = Some(Outcome::UpstreamFailed);
            active.done += 1;
        }
        (self.observer)(Progress::TasksSettled {
            run: active.record.id,
            partition: active.record.partition.clone(),
            tasks: blocked
                .iter()
                .map(|task| self.dag.name(*task).to_string())
                .collect(),
            outcome: Outcome::UpstreamFailed,
        });
        self.release_soft_dependents(book, run_index, &settled);
        // A gated phase whose tasks were just settled may now be decided: a gate that can no
        // longer be met passes the failure on downstream.
        let mut gates: Vec<usize> = blocked
            .iter()
            .filter_map(|task| self.topology_of(&book.runs[run_index]).gate_of_task(*task))
            .collect();
        gates.sort_unstable();
        gates.dedup();
        for gate in gates {
            book.followups
                .push_back(Followup::JudgeGate { run_index, gate });
        }
        Ok(())
    }

    /// The tasks still to run downstream of a task that failed for good, in index order. The
    /// walk does not leave a gated phase whose gate is deciding, or has opened without this
    /// task: there the gate decides, not this failure. Only a failed gate passes it on.
    fn blocked_by_failure(&self, active: &ActiveRun, task: TaskIndex) -> Vec<TaskIndex> {
        let mut seen = vec![false; self.dag.nodes()];
        let mut stack = vec![task];
        let mut blocked: Vec<TaskIndex> = Vec::new();
        while let Some(current) = stack.pop() {
            for dependent in self.dag.node_dependents(current) {
                // A soft input's failure does not flow through it: its dependent runs without it.
                if seen[*dependent] || self.is_soft_edge(current, *dependent) {
                    continue;
                }
                if let Some(gate) = self.waivable(active, current, *dependent)
                    && active.gates[gate] != GateStatus::Failed
                {
                    continue;
                }
                seen[*dependent] = true;
                stack.push(*dependent);
                if self.dag.is_task(*dependent)
                    && matches!(
                        active.slots[*dependent].state,
                        TaskState::Pending | TaskState::Waiting
                    )
                {
                    blocked.push(*dependent);
                }
            }
        }
        blocked.sort_unstable();
        blocked
    }

    pub(crate) fn finish_run_if_done(
        &mut self,
        book: &mut Book,
        run_index: usize,
    ) -> Result<(), EngineError> {
        let phase_check_failed = self.judge_phase_checks(book, run_index);
        let active = &mut book.runs[run_index];
        if active.finished || active.done < active.slots.len() {
            return Ok(());
        }
        let not_complete: Vec<&str> = (0..active.slots.len())
            .filter(|task| {
                !active.slots[*task]
                    .outcome
                    .is_some_and(Outcome::is_complete)
            })
            .map(|task| self.name(task))
            .collect();
        // Tasks an open gate let the run go on without: missing, not failed.
        let missing: Vec<&str> = (0..active.slots.len())
            .filter(|task| {
                !is_complete(&active.slots[*task])
                    && self
                        .topology_of(active)
                        .gate_of_task(*task)
                        .is_some_and(|gate| active.gates[gate] == GateStatus::Open)
            })
            .map(|task| self.name(task))
            .collect();
        // Expanded tasks that completed under their quorum, with items missing.
        let mut short_of_items: Vec<String> = active
            .expansions
            .iter()
            .filter(|(parent, _)| is_complete(&active.slots[**parent]))
            .filter_map(|(parent, expansion)| {
                let missing = expansion
                    .items
                    .iter()
                    .filter(|item| !is_complete(&active.slots[**item]))
                    .count();
                (missing > 0).then(|| {
                    format!(
                        "{} of {} items of {} missing",
                        missing,
                        expansion.items.len(),
                        self.dag.name(*parent)
                    )
                })
            })
            .collect();
        short_of_items.sort_unstable();
        let (state, message) = if active.cancelling {
            (
                RunState::Cancelled,
                Some("cancelled on request".to_string()),
            )
        } else if not_complete.is_empty() && !active.left_out.is_empty() {
            (
                RunState::Partial,
                Some(self.left_out_message(&active.left_out)),
            )
        } else if not_complete.is_empty() && !short_of_items.is_empty() {
            // An expanded task completed under its quorum: the run is degraded, as with a gate.
            (RunState::Degraded, Some(short_of_items.join("; ")))
        } else if not_complete.is_empty() {
            (RunState::Succeeded, None)
        } else if missing.len() == not_complete.len() {
            (
                RunState::Degraded,
                Some(format!(
                    "{} missing: {}; retry them to complete the run",
                    missing.len(),
                    missing.join(", ")
                )),
            )
        } else {
            let shown: Vec<&str> = not_complete.iter().take(5).copied().collect();
            let more = not_complete.len().saturating_sub(shown.len());
            let total = active.slots.len();
            let mut message = format!(
                "{} of {total} {} did not complete: {}",
                not_complete.len(),
                if total == 1 { "task" } else { "tasks" },
                shown.join(", ")
            );
            if more > 0 {
                message.push_str(&format!(" and {more} more"));
            }
            (RunState::Failed, Some(message))
        };
        // A phase short of its completeness check fails a run that would have succeeded.
        let (state, message) = match phase_check_failed {
            Some(failed) if matches!(state, RunState::Succeeded | RunState::Degraded) => {
                (RunState::Failed, Some(failed))
            }
            _ => (state, message),
        };
        book.writes.push(Write::RunState {
            run: active.record.id,
            state,
            message,
        });
        active.finished = true;
        active.record.state = state;
        (self.observer)(Progress::RunFinished {
            run: active.record.id,
            partition: active.record.partition.clone(),
            state,
            trace: active.trace,
            started_at: active.record.created_at,
            finished_at: book.now,
        });
        book.release_partition_waiters();
        Ok(())
    }

    /// Why a run ended `partial`: the tasks `--only` left out, and what runs them.
    fn left_out_message(&self, left_out: &[TaskIndex]) -> String {
        let names: Vec<&str> = left_out.iter().map(|task| self.name(*task)).collect();
        format!(
            "{} left out by --only: {}; a plain `keel run` of the partition runs them",
            names.len(),
            names.join(", ")
        )
    }

    pub(crate) fn begin_cancel(
        &mut self,
        book: &mut Book,
        run_index: usize,
    ) -> Result<(), EngineError> {
        let active = &mut book.runs[run_index];
        if active.cancelling || active.finished {
            return Ok(());
        }
        active.cancelling = true;
        book.effects.extend(
            book.live
                .iter()
                .filter(|(_, live)| live.run == run_index)
                .map(|(attempt, _)| Effect::Stop(*attempt)),
        );
        self.cancel_expansions(book, run_index);
        let active = &mut book.runs[run_index];
        let waiting: Vec<TaskIndex> = (0..active.slots.len())
            .filter(|task| {
                matches!(
                    active.slots[*task].state,
                    TaskState::Pending | TaskState::Waiting
                )
            })
            .collect();
        if !waiting.is_empty() {
            let changes: Vec<TaskChange> = waiting
                .iter()
                .map(|task| TaskChange {
                    task: self.name(*task).to_string(),
                    state: TaskState::Done,
                    outcome: Some(Outcome::Cancelled),
                    not_before: None,
                    message: Some("the run was cancelled".into()),
                    reset_retry_budget: false,
                    reason: "the run was cancelled".into(),
                })
                .collect();
            write_tasks(&mut book.writes, active.record.id, changes);
            for task in &waiting {
                active.slots[*task].state = TaskState::Done;
                active.slots[*task].outcome = Some(Outcome::Cancelled);
                active.done += 1;
            }
        }
        let event = Change::Event {
            task: None,
            kind: keel_model::EventKind::Cancelling,
            detail: format!(
                "{} waiting tasks cancelled, running attempts stopped",
                waiting.len()
            ),
        };
        write_changes(&mut book.writes, active.record.id, [event]);
        self.follow_up(book, Followup::FinishRun { run_index })
    }

    /// Nothing is running, ready or scheduled, yet a run has unfinished tasks. With a valid DAG
    /// this cannot happen; if it does, the run fails loudly rather than hanging.
    pub(crate) fn settle_stuck_runs(&mut self, book: &mut Book) -> Result<(), EngineError> {
        for run_index in 0..book.runs.len() {
            if book.runs[run_index].finished {
                continue;
            }
            let active = &mut book.runs[run_index];
            let stuck: Vec<TaskIndex> = (0..active.slots.len())
                .filter(|task| active.slots[*task].state != TaskState::Done)
                .collect();
            let changes: Vec<TaskChange> = stuck
                .iter()
                .map(|task| TaskChange {
                    task: self.name(*task).to_string(),
                    state: TaskState::Done,
                    outcome: Some(Outcome::UpstreamFailed),
                    not_before: None,
                    message: Some(
                        "no path to start this task; its dependencies can never complete".into(),
                    ),
                    reset_retry_budget: false,
                    reason: "stuck".into(),
                })
                .collect();
            write_tasks(&mut book.writes, active.record.id, changes);
            for task in stuck {
                active.slots[task].state = TaskState::Done;
                active.slots[task].outcome = Some(Outcome::UpstreamFailed);
                active.done += 1;
            }
            book.followups.push_back(Followup::FinishRun { run_index });
        }
        self.drain(book)
    }
}
