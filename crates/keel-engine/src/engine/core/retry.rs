//! The retry decision: where a task goes after an attempt ended, and what a manual retry
//! (`keel retry`) stores.

use super::*;

/// Attempts lost in a row after which a task stops being retried: something keeps attempts from
/// starting or from reporting (the attempt host out of file descriptors, a full disk), and
/// retrying faster only writes more rows.
const MAX_LOSSES_IN_A_ROW: u32 = 5;

impl Core {
    /// A lost attempt uses up no attempt: the first is retried at once (the normal case after a
    /// crash), further ones in a row back off with jitter like a failure would, and after
    /// [`MAX_LOSSES_IN_A_ROW`] the task ends `lost` with a message that says so.
    fn after_a_loss(&mut self, book: &Book, live: &Live) -> (TaskNext, Option<String>) {
        let losses = book.runs[live.run].slots[live.task].losses + 1;
        if losses >= MAX_LOSSES_IN_A_ROW {
            let note = format!(
                "lost {losses} attempts in a row: attempts cannot start or report (check the attempt host's file descriptors, process limits and free disk), so the task is not retried again"
            );
            return (TaskNext::Done(Outcome::Lost), Some(note));
        }
        let retries = &self.spec.tasks[self.base_task(live.task)].retries;
        let backoff = keel_model::RetryPolicy {
            attempts: u32::MAX,
            initial: retries.initial,
            max: retries.max,
            jitter: keel_model::Jitter::Equal,
        };
        let delay = match losses {
            1 => 0,
            _ => backoff.delay(losses - 1, self.random.unit()).as_millis() as Millis,
        };
        let next = TaskNext::Retry {
            not_before: book.now + delay,
            charge: false,
        };
        (next, None)
    }

    /// Where a task goes after an attempt ended with `outcome`: done, retried at a time (charged
    /// to the retry policy or not), or left to resume. This is the one retry decision; the
    /// deadline, the breaker probe and the resources' retry budgets are all consulted here, in
    /// this order, and a retry it grants is recorded in those budgets.
    pub(crate) fn next_step(
        &mut self,
        book: &mut Book,
        live: &Live,
        outcome: Outcome,
        probe: bool,
        retry_after: Option<std::time::Duration>,
    ) -> (TaskNext, Option<String>) {
        // An item of an expanded task neither repeats nor freezes.
        let own = (!self.is_item(live.task)).then(|| {
            let task = &self.spec.tasks[live.task];
            (task.repeat.is_some(), task.freeze_after.is_some())
        });
        if own.is_some_and(|(repeats, _)| repeats)
            && let Some(step) = self.repeat_step(book, live, outcome)
        {
            return step;
        }
        if own.is_some_and(|(_, freezes)| freezes)
            && let Some(step) = self.freeze_step(book, live, outcome)
        {
            return step;
        }
        let now = book.now;
        let active = &book.runs[live.run];
        let task_spec = &self.spec.tasks[self.base_task(live.task)];
        let slot = &active.slots[live.task];
        if outcome.is_complete() {
            return (TaskNext::Done(outcome), None);
        }
        if active.cancelling {
            let outcome = if outcome == Outcome::Lost {
                Outcome::Cancelled
            } else {
                outcome
            };
            return (TaskNext::Done(outcome), None);
        }
        if outcome == Outcome::Cancelled && book.shutting_down {
            return (TaskNext::Resume, None);
        }
        let deadline = task_spec.deadline.as_millis() as Millis;
        let within_deadline = now - slot.first_started_at.unwrap_or(now) < deadline;
        if outcome == Outcome::NotReady
            && let Some(policy) = task_spec.not_ready
        {
            return not_ready_policy_step(policy, slot, now, retry_after);
        }
        if outcome == Outcome::NotReady {
            if !within_deadline {
                let note = format!(
                    "still not ready after {}; the deadline passed",
                    keel_model::format_duration(task_spec.deadline)
                );
                return (TaskNext::Done(Outcome::NotReady), Some(note));
            }
            let checks = slot.attempts.saturating_sub(slot.charged).max(1);
            let delay = task_spec.retries.delay(checks, self.random.unit());
            // A service that said when to come back (an HTTP `Retry-After`) is not asked
            // sooner; the backoff still applies when it asked for less.
            let delay = delay.max(retry_after.unwrap_or_default());
            let not_before = now + delay.as_millis() as Millis;
            let charge = false;
            let note = retry_after.map(|wait| {
                format!(
                    "the service asked to be called again in {}",
                    keel_model::format_duration(wait)
                )
            });
            return (TaskNext::Retry { not_before, charge }, note);
        }
        if !outcome.is_retryable() {
            return (TaskNext::Done(outcome), None);
        }
        if outcome == Outcome::Lost {
            return self.after_a_loss(book, live);
        }
        if probe && within_deadline {
            // A failed breaker probe says the dependency is still down, not that the task is
            // bad: like waiting on an open breaker, it uses up no attempt.
            let note = "the breaker's probe failed; that uses up no attempt".to_string();
            let next = TaskNext::Retry {
                not_before: now,
                charge: false,
            };
            return (next, Some(note));
        }
        if !outcome.uses_retry_attempt() {
            let next = TaskNext::Retry {
                not_before: now,
                charge: false,
            };
            return (next, None);
        }
        self.charged_retry(book, live, outcome)
    }

    /// A failure that uses up an attempt: retried after a jittered backoff while the policy has
    /// attempts left (sensor errors before the first attempt used some up too) and every
    /// resource the task uses has retry budget, and recorded in those budgets; otherwise the
    /// task ends with this outcome.
    fn charged_retry(
        &mut self,
        book: &mut Book,
        live: &Live,
        outcome: Outcome,
    ) -> (TaskNext, Option<String>) {
        let now = book.now;
        let task_spec = &self.spec.tasks[self.base_task(live.task)];
        let active = &book.runs[live.run];
        let charged = active.slots[live.task].charged + active.sensor_errors[live.task] + 1;
        if charged >= task_spec.retries.attempts {
            return (TaskNext::Done(outcome), None);
        }
        let uses = &self.task_uses[self.base_task(live.task)];
        if let Some(spent) = uses
            .iter()
            .find(|resource| !book.resources[**resource].can_retry(now))
        {
            let note = format!(
                "not retried: resource {:?} has spent its retry budget, so a storm of retries cannot build up",
                self.spec.resources[*spent].name
            );
            return (TaskNext::Done(outcome), Some(note));
        }
        for resource in uses {
            book.resources[*resource].record_attempt(true, now);
        }
        let delay = task_spec.retries.delay(charged, self.random.unit());
        let not_before = now + delay.as_millis() as Millis;
        (
            TaskNext::Retry {
                not_before,
                charge: true,
            },
            None,
        )
    }
}

/// Where a task with a `not_ready` policy goes after an attempt answered *not ready*: asked
/// again after `every` (or later, when the service said when to come back) while that next
/// check still falls within `max` × `every` of the task's first attempt or sensor poll, and
/// otherwise ended `not_ready`. Measured from the stored first start, which `keel retry` clears,
/// the policy survives a restart and starts afresh on a retry; with attempts shorter than
/// `every`, that is exactly `max` checks.
fn not_ready_policy_step(
    policy: keel_model::NotReadyPolicy,
    slot: &Slot,
    now: Millis,
    retry_after: Option<std::time::Duration>,
) -> (TaskNext, Option<String>) {
    let every = policy.every.as_millis() as Millis;
    let first = slot.first_started_at.unwrap_or(now);
    let window = every.saturating_mul(Millis::from(policy.max));
    let delay = policy.every.max(retry_after.unwrap_or_default());
    let next_check = now + delay.as_millis() as Millis;
    let every_text = keel_model::format_duration(policy.every);
    if next_check - first >= window {
        let note = format!(
            "still not ready; the not_ready policy asks every {every_text}, {} times at most, and that is used up",
            policy.max
        );
        return (TaskNext::Done(Outcome::NotReady), Some(note));
    }
    // The check this answer was, counted on the interval: 1 for the first attempt.
    let check = (now - first) / every.max(1) + 1;
    let note = format!(
        "not ready (check {check} of {}, every {every_text}); asked again in {}",
        policy.max,
        keel_model::format_duration(delay)
    );
    let next = TaskNext::Retry {
        not_before: next_check,
        charge: false,
    };
    (next, Some(note))
}

impl Core {
    /// What `keel retry` of `roots` stores in one transaction: the roots and everything
    /// downstream reset to pending, the gates they belong to waiting again, an event when the
    /// pipeline changed since the run started, and the run running again. A crash leaves the
    /// retry either wholly asked for or not at all.
    pub(crate) fn retry_writes(
        &self,
        run: &RunRecord,
        roots: &[TaskIndex],
        downstream: &[TaskIndex],
        why: &str,
    ) -> Vec<Write> {
        let because = roots
            .iter()
            .map(|root| self.name(*root))
            .collect::<Vec<_>>()
            .join(", ");
        let topology = self.topology_index(run.pass.as_deref());
        let reset = |task: TaskIndex, reason: String| {
            Change::Task(TaskChange::reset(self.name(task), reason))
        };
        let mut changes: Vec<Change> = roots
            .iter()
            .map(|root| reset(*root, why.to_string()))
            .chain(
                downstream
                    .iter()
                    .map(|task| reset(*task, format!("downstream of retried {because}"))),
            )
            .collect();
        let mut gates: Vec<usize> = roots
            .iter()
            .chain(downstream)
            .filter_map(|task| self.topologies[topology].gate_of_task(*task))
            .collect();
        gates.sort_unstable();
        gates.dedup();
        changes.extend(self.waiting_gates(topology, gates));
        if self.version != run.version {
            changes.push(Change::Event {
                task: None,
                kind: keel_model::EventKind::PipelineChanged,
                detail: format!(
                    "the retry uses pipeline version {} (was {})",
                    self.version, run.version
                ),
            });
        }
        let mut writes: Vec<Write> = changes
            .into_iter()
            .map(|change| Write::Run {
                run: run.id,
                change,
            })
            .collect();
        if run.state != RunState::Running {
            writes.push(Write::RunState {
                run: run.id,
                state: RunState::Running,
                message: Some("retry".into()),
            });
        }
        writes
    }
}
