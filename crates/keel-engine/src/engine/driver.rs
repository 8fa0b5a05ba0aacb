//! The driver: the only part of the engine that awaits. It reads the store, commits what the
//! core decided (one transaction per step), claims and launches attempts, and follows them; the
//! core (`core/`) decides everything else without I/O.

use super::*;
use crate::engine::core::EarlierFact;

impl<S: Store, E: Executor, C: Clock> Engine<S, E, C> {
    /// Claims as many ready tasks as the concurrency cap allows, in one transaction, and starts
    /// them.
    pub(super) async fn start_ready(
        &mut self,
        book: &mut Book,
        inbox: &mut Inbox,
    ) -> Result<(), EngineError> {
        let cap = self.core.spec.concurrency.max(1) as usize;
        self.core.stamp_ready(book);
        loop {
            let room = cap.saturating_sub(book.live.len() + book.sensing);
            if room == 0 || book.shutting_down {
                break;
            }
            let queued = book.ready.len();
            let picked = self.core.pick_ready(book, room);
            // An expanded task picked runs its items: they are queued, and its quorum judged.
            self.core.drain(book)?;
            if picked.is_empty() {
                if !book.ready.is_empty() && book.ready.len() != queued {
                    self.core.stamp_ready(book);
                    continue;
                }
                break;
            }
            self.claim_and_launch(book, inbox, picked).await?;
        }
        self.core.report_queue_depth(book);
        Ok(())
    }

    /// Claims the picked tasks' attempts in one transaction, launches those claimed, and
    /// records their start in a second one.
    async fn claim_and_launch(
        &mut self,
        book: &mut Book,
        inbox: &mut Inbox,
        picked: Vec<(usize, TaskIndex)>,
    ) -> Result<(), EngineError> {
        // What earlier steps decided is committed before any claim acts on it.
        self.flush(book).await?;
        let now = self.clock.now();
        let claims = picked
            .iter()
            .map(|(run_index, task)| {
                let record = &book.runs[*run_index].record;
                let number = book.runs[*run_index].slots[*task].attempts + 1;
                let dir = self.core.attempt_dir(record.id, *task, number);
                ClaimAttempt {
                    run: record.id,
                    task: self.core.name(*task).to_string(),
                    owner: self.core.config.owner.clone(),
                    dir: dir.display().to_string(),
                    // A retry may run a newer pipeline file than its run was created with.
                    version: self.core.version.clone(),
                    task_version: Some(self.core.chosen_version(record, *task)),
                    lease_expires_at: now + self.core.config.lease_ttl.as_millis() as Millis,
                    at: now,
                }
            })
            .collect();
        let results = self.store.claim_attempts(claims).await?;
        let mut launches = Vec::new();
        for ((run_index, task), result) in picked.into_iter().zip(results) {
            let permits = book.picked_permits.remove(&(run_index, task));
            let attempt = match result {
                Ok(attempt) => attempt,
                Err(error) => {
                    if let Some(unused) = permits {
                        let verdict = ResourceVerdict::Neutral;
                        self.core.release_permits(book, unused, verdict);
                    }
                    match error {
                        // Another run of this partition is running the task; try again shortly.
                        StoreError::AlreadyLive { .. } => {
                            book.timers
                                .push(Reverse((now + 1_000, run_index, Wake::Task(task))))
                        }
                        StoreError::NotClaimable { .. } => {}
                        error => return Err(error.into()),
                    }
                    continue;
                }
            };
            if let Some(permits) = permits {
                book.permits.insert(attempt.id, permits);
            }
            let launch = self.core.prepare_attempt(book, run_index, task, &attempt);
            launches.push((attempt.id, attempt.lease_epoch, launch));
        }
        self.launch_all(book, inbox, launches).await
    }

    /// Launches claimed attempts off the runtime thread (creating directories, taking locks and
    /// forking may block), follows those that started, records their start in one transaction,
    /// and records those that could not start as failed.
    async fn launch_all(
        &mut self,
        book: &mut Book,
        inbox: &mut Inbox,
        launches: Vec<(AttemptId, i64, Launch)>,
    ) -> Result<(), EngineError> {
        if launches.is_empty() {
            return Ok(());
        }
        let ids: Vec<AttemptId> = launches.iter().map(|(id, _, _)| *id).collect();
        let executor = self.executor.clone();
        let secrets = self.core.config.launch_context.secrets.clone();
        let launched = tokio::task::spawn_blocking(move || {
            // Every launch goes to the executor at once (a work queue queues them in one
            // statement), and every one is sent before any pid is waited for, so the forks
            // overlap.
            let mut prepared = Vec::new();
            let mut sending = Vec::new();
            for (id, epoch, mut launch) in launches {
                let redactor = with_secrets(&mut launch, secrets.as_ref());
                if redactor.is_ok() {
                    sending.push(launch);
                }
                prepared.push((id, epoch, redactor));
            }
            let mut sent = executor.launch_many(sending).into_iter();
            let mut results: Vec<_> = prepared
                .into_iter()
                .map(|(id, epoch, redactor)| {
                    let started = redactor.and_then(|redactor| {
                        let running = sent.next().unwrap_or_else(|| {
                            Err(std::io::Error::other(
                                "the executor answered fewer launches than it was given",
                            ))
                        })?;
                        Ok(redacted(running, redactor))
                    });
                    (id, epoch, started)
                })
                .collect();
            for (_, _, result) in &mut results {
                if let Ok(running) = result {
                    running.resolve_pid();
                }
            }
            results
        })
        .await;
        let mut started = Vec::new();
        let mut failed = Vec::new();
        match launched {
            Ok(results) => {
                for (id, epoch, result) in results {
                    match result {
                        Ok(running) => {
                            // Every attempt that started gets its start time, even when the
                            // executor cannot say which process supervises it.
                            started.push((id, epoch, running.pid));
                            watch(inbox, id, running);
                        }
                        Err(error) => {
                            let message = format!("cannot start the attempt: {error}");
                            failed.push((id, Report::new(Outcome::Failed, message)));
                        }
                    }
                }
            }
            Err(error) => {
                let message = format!("cannot start the attempt: the launcher failed: {error}");
                failed.extend(
                    ids.into_iter()
                        .map(|id| (id, Report::new(Outcome::Failed, message.clone()))),
                );
            }
        }
        book.writes.extend(
            started
                .into_iter()
                .map(|(attempt, epoch, pid)| Write::Started {
                    attempt,
                    epoch,
                    pid,
                }),
        );
        if !failed.is_empty() {
            self.core.on_reports(book, failed)?;
        }
        // The starts (pids an operator or a stop may need at once) and the ends of attempts
        // that could not start, in one transaction.
        self.flush(book).await
    }

    /// Loads a run into the book and carries it on from where the store says it stands.
    pub(super) async fn load_run(
        &mut self,
        book: &mut Book,
        inbox: &mut Inbox,
        run: RunId,
        live: &[AttemptRecord],
    ) -> Result<(), EngineError> {
        let record = self.store.run(run).await?;
        let stored = self.store.task_runs(run).await?;
        let run_index = book.runs.len();
        let mut active = self.core.active_run(record.clone(), &stored);
        if (self.core.has_repeats() || self.core.has_task_freezes()) && !record.state.is_finished()
        {
            let attempts = self.store.attempts(run).await?;
            self.core.restore_repeats(&mut active, &attempts);
            self.core.restore_task_ends(&mut active, &attempts);
        }
        if !record.state.is_finished() {
            // The heals the run made are its `heal_requested` events, stored with each heal.
            let heals = self.store.events(run).await?;
            active.heals_used = heals
                .iter()
                .filter(|event| event.kind == keel_model::EventKind::HealRequested)
                .count() as u32;
        }
        book.runs.push(active);
        if record.state.is_finished() {
            return Ok(());
        }
        // The items of its expanded tasks, as recorded, with their task runs as stored.
        for expansion in self.store.expansions(run).await? {
            if let Some(parent) = self.core.dag.index_of(&expansion.task) {
                self.core
                    .add_items(book, run_index, parent, expansion.items, &stored);
            }
        }
        self.core.restore_tasks(book, run_index, &stored)?;
        let stored_gates = self.store.gates(run).await?;
        let landed_late = self.core.restore_gates(book, run_index, &stored_gates)?;
        self.core.queue_what_can_start(book, run_index, &stored);
        // A reconcile a previous Keel did not get to record comes first: an attempt recovered
        // below could otherwise end the run before the tasks that must run again are reset.
        book.followups.extend(
            landed_late
                .into_iter()
                .map(|task| Followup::Reconcile { run_index, task }),
        );
        self.core.drain(book)?;
        for attempt in live.iter().filter(|attempt| attempt.run == run) {
            self.recover_attempt(book, inbox, run_index, attempt)
                .await?;
        }
        (self.core.observer)(Progress::RunLoaded {
            run,
            trace: book.runs[run_index].trace,
            partition: record.partition.clone(),
            tasks: self.core.dag.len(),
            done: book.runs[run_index].done,
        });
        if record.cancel_requested {
            self.core.begin_cancel(book, run_index)?;
        }
        let failed_roots: Vec<TaskIndex> = (0..self.core.dag.len())
            .filter(|task| {
                let slot = &book.runs[run_index].slots[*task];
                slot.state == TaskState::Done && !slot.outcome.is_some_and(Outcome::is_complete)
            })
            .collect();
        for root in failed_roots {
            book.followups.push_back(Followup::Propagate {
                run_index,
                task: root,
            });
        }
        // Where the tasks of earlier partitions its tasks wait on stand, before any is looked at.
        self.read_earlier(book, run_index).await?;
        // Tasks may have finished after a gate was last judged: judge again (a stored grace
        // period keeps its end).
        for gate in 0..self.core.topology_of(&book.runs[run_index]).gates.len() {
            book.followups
                .push_back(Followup::JudgeGate { run_index, gate });
        }
        self.core.follow_up(book, Followup::FinishRun { run_index })
    }

    /// Takes over an attempt a previous Keel left live: adopted if still running, recorded if it
    /// ended meanwhile, and otherwise `lost` and retried.
    async fn recover_attempt(
        &mut self,
        book: &mut Book,
        inbox: &mut Inbox,
        run_index: usize,
        attempt: &AttemptRecord,
    ) -> Result<(), EngineError> {
        let Some(task) = self.core.index_of(attempt.run, &attempt.task) else {
            return Ok(());
        };
        let now = self.clock.now();
        let epoch = match self
            .store
            .take_over_attempt(attempt.id, &self.core.config.owner, now)
            .await
        {
            Ok(epoch) => epoch,
            Err(StoreError::StaleLease { .. }) => return Ok(()),
            Err(error) => return Err(error.into()),
        };
        book.runs[run_index].slots[task].state = TaskState::Running;
        // Adoption may block: it takes a lock and may end an orphaned task group.
        let executor = self.executor.clone();
        let (dir, pid) = (PathBuf::from(&attempt.dir), attempt.pid);
        let adopted = tokio::task::spawn_blocking(move || executor.adopt(dir, pid))
            .await
            .unwrap_or_else(|error| Adopted::Gone(format!("adoption failed: {error}")));
        let how = match &adopted {
            Adopted::Running(_) => "adopted while still running",
            Adopted::Finished(_) => "finished while keel was down",
            Adopted::Gone(_) => "lost",
        };
        let trace = book.runs[run_index].trace;
        (self.core.observer)(Progress::AttemptRecovered {
            run: attempt.run,
            partition: book.runs[run_index].record.partition.clone(),
            task: attempt.task.clone(),
            attempt: attempt.number,
            how,
            trace,
            span: trace.attempt_span(&attempt.task, attempt.number),
        });
        let started_at = attempt.started_at.unwrap_or(attempt.claimed_at);
        let mut live = Live::new(run_index, task, attempt.number, epoch, started_at);
        live.task_version = attempt.task_version.clone();
        book.live.insert(attempt.id, live);
        match adopted {
            Adopted::Running(running) => {
                // It still holds its place in the bulkheads of the resources it uses.
                let permits: Vec<(usize, Permit)> = self.core.task_uses[self.core.base_task(task)]
                    .iter()
                    .map(|resource| (*resource, book.resources[*resource].adopt()))
                    .collect();
                if !permits.is_empty() {
                    book.permits.insert(attempt.id, permits);
                }
                watch(inbox, attempt.id, running);
                Ok(())
            }
            Adopted::Finished(report) => self.core.on_reports(book, vec![(attempt.id, report)]),
            Adopted::Gone(why) => {
                let report = lost_report(&why);
                self.core.on_reports(book, vec![(attempt.id, report)])
            }
        }
    }

    /// Fresh resource policies, with the rate limits remembering the attempt starts of the last
    /// window from the store, so a restarted Keel does not grant itself a second burst.
    pub(super) async fn resource_policies(&mut self) -> Result<Vec<ResourcePolicy>, EngineError> {
        let now = self.clock.now();
        let longest = self
            .core
            .spec
            .resources
            .iter()
            .filter_map(|resource| resource.rate.map(|rate| rate.per.as_millis() as Millis))
            .max();
        let starts = match longest {
            Some(window) => {
                self.store
                    .attempt_starts_since(&self.core.spec.name, now - window)
                    .await?
            }
            None => Vec::new(),
        };
        let stored = self.store.resource_states(&self.core.spec.name).await?;
        Ok(self
            .core
            .spec
            .resources
            .iter()
            .enumerate()
            .map(|(index, resource)| {
                let mine: Vec<Millis> = starts
                    .iter()
                    .filter(|(task, _)| {
                        // An item's attempt (`box_scores[0021]`) uses its expanded task's.
                        let named = keel_model::expand::split_item_name(task)
                            .map_or(task.as_str(), |(parent, _)| parent);
                        self.core
                            .dag
                            .index_of(named)
                            .is_some_and(|task| self.core.task_uses[task].contains(&index))
                    })
                    // A start after this clock's now (a clock set back, or a state written
                    // by a clock ahead of this one, as `keel serve --clock-start` makes) counts
                    // as now: replayed as it is, the limit would hold every start until then.
                    .map(|(_, at)| (*at).min(now))
                    .collect();
                let mut policy =
                    ResourcePolicy::new(resource, mine.first().copied().unwrap_or(now).min(now));
                policy.replay_starts(&mine);
                // A breaker a previous Keel left open stays open: the state `keel status` shows
                // is the state used.
                if let Some(stored) = stored.iter().find(|stored| stored.name == resource.name)
                    && stored.state != "closed"
                {
                    // A record from before Keel kept the times: open since it was written, and
                    // the next attempt probes.
                    policy.restore_breaker(
                        stored.open_since.unwrap_or(stored.updated_at),
                        stored.open_until.unwrap_or(stored.updated_at),
                    );
                }
                policy
            })
            .collect())
    }

    /// Reads the feature flags (`keel flags`) from the store; a flag that does not parse (a
    /// newer Keel's, say) is left out, so the task runs.
    pub(super) async fn refresh_flags(&mut self, book: &mut Book) -> Result<(), EngineError> {
        book.flags = self
            .store
            .flags(&self.core.spec.name)
            .await?
            .into_iter()
            .filter_map(|flag| Some((flag.task, (flag.state.parse().ok()?, flag.set_by))))
            .collect();
        Ok(())
    }

    /// Registers the versions of the tasks this engine runs, and takes up where each rollout
    /// stands.
    pub(super) async fn register_task_versions(&mut self) -> Result<(), EngineError> {
        let versions = self.core.new_task_versions();
        let records = self
            .store
            .register_task_versions(&self.core.spec.name, versions, self.clock.now())
            .await?;
        self.core.load_rollouts(&records);
        Ok(())
    }

    /// Reads the rollouts again: a version promoted or rolled back by hand applies at once.
    pub(super) async fn refresh_rollouts(&mut self) -> Result<(), EngineError> {
        let records = self.store.task_versions(&self.core.spec.name).await?;
        self.core.load_rollouts(&records);
        Ok(())
    }

    pub(super) async fn poll_requests(&mut self, book: &mut Book) -> Result<(), EngineError> {
        self.refresh_flags(book).await?;
        // What this engine decided is stored before the store is read back over it.
        self.flush(book).await?;
        self.refresh_rollouts().await?;
        for run_index in 0..book.runs.len() {
            let active = &book.runs[run_index];
            if active.finished || active.cancelling {
                continue;
            }
            let record = self.store.run(active.record.id).await?;
            if record.cancel_requested {
                self.core.begin_cancel(book, run_index)?;
            }
        }
        // Tasks waiting on earlier partitions look again at what the store now says: another
        // process may have run or retried those dates.
        if !book.earlier_waiters.is_empty() {
            let mut waiting_runs: Vec<usize> =
                book.earlier_waiters.iter().map(|(run, _)| *run).collect();
            waiting_runs.sort_unstable();
            waiting_runs.dedup();
            for run_index in waiting_runs {
                self.read_earlier(book, run_index).await?;
            }
            self.core.wake_earlier_waiters(book, None);
        }
        self.renew_leases_if_due(book).await
    }

    /// Reads from the store where the tasks of earlier partitions stand that the tasks of the
    /// run at `run_index` wait on, for the dates no run loaded here answers (see
    /// `core/earlier.rs`).
    pub(super) async fn read_earlier(
        &mut self,
        book: &mut Book,
        run_index: usize,
    ) -> Result<(), EngineError> {
        let wanted = self.core.earlier_to_read(book, run_index);
        let mut first_partition: Option<Option<String>> = None;
        for (partition, task) in wanted {
            let latest = self
                .store
                .latest_run_of(&self.core.spec.name, &partition, None)
                .await?;
            let fact = match latest {
                Some(run) => {
                    let stored = self.store.task_runs(run.id).await?;
                    let left_out = |index| {
                        run.state == RunState::Partial
                            && self.core.calendar_skip(&partition, index).is_none()
                    };
                    match stored.iter().find(|stored| stored.task == task) {
                        None => EarlierFact::Ended("is not part of its run".to_string()),
                        Some(stored) => match (stored.state, stored.outcome) {
                            (TaskState::Done, Some(Outcome::Skipped))
                                if stored.attempts == 0
                                    && self.core.dag.index_of(&task).is_some_and(left_out) =>
                            {
                                EarlierFact::Ended(
                                    "was left out of its run (keel run --only)".to_string(),
                                )
                            }
                            (TaskState::Done, Some(outcome)) if outcome.is_complete() => {
                                EarlierFact::Complete
                            }
                            (TaskState::Done, Some(outcome)) => {
                                EarlierFact::Ended(format!("ended {outcome}"))
                            }
                            _ => EarlierFact::Unfinished,
                        },
                    }
                }
                None => {
                    if first_partition.is_none() {
                        first_partition = Some(self.first_partition().await?);
                    }
                    let first = first_partition.clone().flatten();
                    if first.is_none_or(|first| partition < first) {
                        EarlierFact::BeforeHistory
                    } else {
                        EarlierFact::NoRun
                    }
                }
            };
            book.earlier.insert((partition, task), fact);
        }
        Ok(())
    }

    /// The earliest partition the pipeline has a run of (its own, not a pass's).
    async fn first_partition(&mut self) -> Result<Option<String>, EngineError> {
        let runs = self
            .store
            .list_runs(&self.core.spec.name, None, u32::MAX)
            .await?;
        Ok(runs
            .into_iter()
            .filter(|run| run.pass.is_none())
            .map(|run| run.partition)
            .min())
    }

    /// Renews the leases of every running attempt once a third of their time has passed, so a
    /// lease that expires means its holder is gone.
    async fn renew_leases_if_due(&mut self, book: &mut Book) -> Result<(), EngineError> {
        let now = self.clock.now();
        let ttl = self.core.config.lease_ttl.as_millis() as Millis;
        if book.live.is_empty() || now < book.leases_renewed_at + ttl / 3 {
            return Ok(());
        }
        book.leases_renewed_at = now;
        let renewals = book
            .live
            .iter()
            .map(|(attempt, live)| (*attempt, live.epoch))
            .collect();
        // A stale renewal only means the attempt ended or was taken over; its report says so.
        self.store.renew_leases(renewals, now + ttl).await?;
        Ok(())
    }
}

/// `running`, whose report's message has the task's secrets redacted.
fn redacted(
    mut running: keel_exec::Running,
    redactor: keel_exec::redact::Redactor,
) -> keel_exec::Running {
    if !redactor.is_empty() {
        let completion = running.completion;
        running.completion = Box::pin(async move {
            let mut report = completion.await;
            report.message = report.message.map(|text| redactor.redact_text(&text));
            report
        });
    }
    running
}

/// Adds the secrets a launch's task declares (named by `KEEL_REDACT` in its environment) to its
/// environment, read from `source`; returns the redactor for its report. An error names the
/// secret and why it could not be read, never a value.
fn with_secrets(
    launch: &mut keel_exec::Launch,
    source: Option<&crate::SecretSource>,
) -> std::io::Result<keel_exec::redact::Redactor> {
    let names: Vec<String> = launch
        .env
        .iter()
        .rev()
        .find(|(name, _)| name == keel_exec::supervisor::REDACT_VARIABLE)
        .map(|(_, names)| names.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    if names.is_empty() {
        return Ok(keel_exec::redact::Redactor::default());
    }
    let Some(source) = source else {
        return Err(std::io::Error::other(
            "the task declares secrets but no secret provider is configured",
        ));
    };
    let mut values = Vec::new();
    for name in &names {
        let value = source(name)
            .map_err(|why| std::io::Error::other(format!("cannot read secret {name}: {why}")))?;
        values.push(value.clone());
        launch.env.push((name.clone(), value));
    }
    Ok(keel_exec::redact::Redactor::new(
        values.iter().map(String::as_str),
    ))
}
