//! Resource admission: rate limits, bulkheads, circuit breakers and retry budgets gate attempt
//! starts; waiting uses up no attempt, and an open breaker is stored and taken up again after a
//! restart.

use super::*;

impl Core {
    /// Asks every resource a task uses whether an attempt may start now. If so, takes the
    /// permits (kept until the claim is known); if not, parks the task until a time or until
    /// an attempt on the resource ends. Waiting uses up no attempt.
    pub(crate) fn admit(&mut self, book: &mut Book, run_index: usize, task: TaskIndex) -> bool {
        for resource in &self.task_uses[self.base_task(task)] {
            if !self.probe_allows(book, *resource, run_index, task) {
                return false;
            }
        }
        let now = book.now;
        let mut until: Option<Millis> = None;
        let mut release_of: Option<usize> = None;
        let task_name = self.name(task).to_string();
        for resource in &self.task_uses[self.base_task(task)] {
            match book.resources[*resource].check(now) {
                Ok(_) => {}
                Err(Wait::Until(at)) => {
                    until = Some(until.map_or(at, |current| current.max(at)));
                    (self.observer)(Progress::RateLimited {
                        resource: book.resources[*resource].name().to_string(),
                        task: task_name.clone(),
                    });
                }
                Err(Wait::ForRelease) => {
                    release_of.get_or_insert(*resource);
                }
                Err(Wait::Breaker(probe_at)) => {
                    self.wait_for_breaker(book, *resource, run_index, task, probe_at);
                    return false;
                }
            }
        }
        if let Some(at) = until {
            book.timers
                .push(Reverse((at.max(now + 1), run_index, Wake::Task(task))));
            return false;
        }
        if let Some(resource) = release_of {
            book.resource_waiters[resource].push((run_index, task));
            return false;
        }
        let is_retry = book.runs[run_index].slots[task].attempts > 0;
        let permits = self.task_uses[self.base_task(task)]
            .iter()
            .map(|resource| {
                let policy = &mut book.resources[*resource];
                if !is_retry {
                    policy.record_attempt(false, now);
                }
                (*resource, policy.acquire(now))
            })
            .collect();
        book.picked_permits.insert((run_index, task), permits);
        true
    }

    /// Queues a task behind a resource's breaker, or gives it up when the breaker has stayed
    /// open past its `max_open`: a dependency that stays down ends the run instead of hanging it.
    pub(crate) fn wait_for_breaker(
        &self,
        book: &mut Book,
        resource: usize,
        run_index: usize,
        task: TaskIndex,
        probe_at: Option<Millis>,
    ) {
        let now = book.now;
        let policy = &book.resources[resource];
        if policy.breaker_open_too_long(now) {
            let since = policy.breaker_open_since().unwrap_or(now);
            let down_for = std::time::Duration::from_millis((now - since).max(0) as u64);
            book.given_up.push((
                run_index,
                task,
                Outcome::Failed,
                format!(
                    "gave up waiting for resource {:?}: its circuit breaker has stayed open for {} and every probe failed; check the dependency, then `keel retry` this task",
                    policy.name(),
                    keel_model::format_duration(down_for)
                ),
            ));
            return;
        }
        let waiters = &mut book.breaker_waiters[resource];
        if !waiters.contains(&(run_index, task)) {
            waiters.push_back((run_index, task));
        }
        if let Some(at) = probe_at
            && book.breaker_wake[resource] != Some(at)
        {
            book.breaker_wake[resource] = Some(at);
            book.timers.push(Reverse((
                at.max(now + 1),
                run_index,
                Wake::Resource(resource),
            )));
        }
    }

    /// Ends the tasks that gave up on a resource whose breaker stayed open too long.
    pub(crate) fn settle_given_up(&mut self, book: &mut Book) -> Result<(), EngineError> {
        for (run_index, task, outcome, message) in std::mem::take(&mut book.given_up) {
            let active = &mut book.runs[run_index];
            if active.finished
                || !matches!(
                    active.slots[task].state,
                    TaskState::Pending | TaskState::Waiting
                )
            {
                continue;
            }
            self.settle_task(book, run_index, task, outcome, message)?;
        }
        Ok(())
    }

    /// Returns permits to their resources, records breaker transitions, and wakes the tasks
    /// that waited for an attempt on those resources to end.
    pub(crate) fn release_permits(
        &mut self,
        book: &mut Book,
        permits: Vec<(usize, Permit)>,
        verdict: ResourceVerdict,
    ) {
        let now = book.now;
        for (resource, permit) in permits {
            let transition = book.resources[resource].release(permit, verdict, now);
            book.ready
                .extend(std::mem::take(&mut book.resource_waiters[resource]));
            book.ready.extend(book.breaker_waiters[resource].drain(..));
            if let Some(state) = transition {
                let name = self.spec.resources[resource].name.clone();
                let (label, detail) = match state {
                    BreakerState::Closed => {
                        ("closed", "closed: the dependency answers again".to_string())
                    }
                    BreakerState::Open { until } => (
                        "open",
                        format!(
                            "open: tasks using it wait, using up no attempts; one probe may run in {}",
                            keel_model::format_duration(std::time::Duration::from_millis(
                                (until - now).max(0) as u64
                            ))
                        ),
                    ),
                    BreakerState::HalfOpen { .. } => (
                        "half_open",
                        "half open: the next attempt is a probe".to_string(),
                    ),
                };
                book.writes
                    .push(Write::Resource(keel_store::ResourceStateRecord {
                        pipeline: self.spec.name.clone(),
                        name: name.clone(),
                        state: label.to_string(),
                        detail: detail.clone(),
                        updated_at: now,
                        open_since: book.resources[resource].breaker_open_since(),
                        open_until: match state {
                            BreakerState::Closed => None,
                            BreakerState::Open { until } => Some(until),
                            BreakerState::HalfOpen { .. } => Some(now),
                        },
                    }));
                for run in book.runs.iter().filter(|run| !run.finished) {
                    let event = Change::Event {
                        task: None,
                        kind: keel_model::EventKind::Breaker,
                        detail: format!("resource {name}: {detail}"),
                    };
                    write_changes(&mut book.writes, run.record.id, [event]);
                }
                (self.observer)(Progress::BreakerChanged {
                    resource: name,
                    state: label,
                    detail,
                });
            }
        }
    }

    /// Whether a resource's health probe lets a task start: yes without a probe or while the
    /// last one passed and holds. Otherwise the task waits, using up no attempt, while a probe
    /// is asked for (one at a time) or until a failed one is old enough to be asked again.
    fn probe_allows(
        &self,
        book: &mut Book,
        resource: usize,
        run_index: usize,
        task: TaskIndex,
    ) -> bool {
        let Some(spec) = &self.spec.resources[resource].ready else {
            return true;
        };
        let now = book.now;
        let every = spec.every.as_millis() as Millis;
        let state = &mut book.probes[resource];
        let fresh = state.checked_at.is_some_and(|at| now - at < every);
        if fresh && state.healthy {
            return true;
        }
        if !state.waiters.contains(&(run_index, task)) {
            state.waiters.push((run_index, task));
        }
        if state.in_flight {
            return false;
        }
        if let (true, Some(checked_at)) = (fresh, state.checked_at) {
            let at = checked_at + every;
            if state.wake_at != Some(at) {
                state.wake_at = Some(at);
                book.timers
                    .push(Reverse((at, run_index, Wake::Probe(resource))));
            }
            return false;
        }
        state.in_flight = true;
        book.probing += 1;
        book.effects.push(Effect::Probe { resource });
        false
    }

    /// A resource's health probe answered: its waiters start when it passed, and wait for the
    /// next probe, `every` later, when it failed.
    pub(crate) fn on_probe(&mut self, book: &mut Book, resource: usize, report: Report) {
        let now = book.now;
        let every = self.spec.resources[resource]
            .ready
            .as_ref()
            .map_or(0, |spec| spec.every.as_millis() as Millis);
        book.probing = book.probing.saturating_sub(1);
        let state = &mut book.probes[resource];
        let was_healthy = state.healthy || state.checked_at.is_none();
        state.in_flight = false;
        state.checked_at = Some(now);
        state.healthy = report.outcome == Outcome::Succeeded;
        state.message = report.message;
        if state.healthy != was_healthy || !state.healthy {
            (self.observer)(Progress::ResourceProbe {
                resource: self.spec.resources[resource].name.clone(),
                healthy: state.healthy,
                message: state.message.clone(),
            });
        }
        if state.healthy {
            book.ready.extend(state.waiters.drain(..));
            return;
        }
        if let Some(&(run_index, _)) = state.waiters.first() {
            let at = now + every.max(1);
            state.wake_at = Some(at);
            book.timers
                .push(Reverse((at, run_index, Wake::Probe(resource))));
        }
    }
}
