//! The driver: the only part of the engine that awaits. It reads the store, commits what the
//! core decided (one transaction per step), claims and launches attempts, and follows them; the
//! core (`core/`) decides everything else without I/O.

use super::*;

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
            let picked = self.core.pick_ready(book, room);
            if picked.is_empty() {
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
                    task: self.core.dag.name(*task).to_string(),
                    owner: self.core.config.owner.clone(),
                    dir: dir.display().to_string(),
                    // A retry may run a newer pipeline file than its run was created with.
                    version: self.core.version.clone(),
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
        let launched = tokio::task::spawn_blocking(move || {
            // Every launch is sent before any pid is waited for, so the forks overlap.
            let mut results: Vec<_> = launches
                .into_iter()
                .map(|(id, epoch, launch)| (id, epoch, executor.launch(launch)))
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
        if self.core.has_repeats() && !record.state.is_finished() {
            let attempts = self.store.attempts(run).await?;
            self.core.restore_repeats(&mut active, &attempts);
        }
        book.runs.push(active);
        if record.state.is_finished() {
            return Ok(());
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
        let Some(task) = self.core.dag.index_of(&attempt.task) else {
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
        let live = Live::new(run_index, task, attempt.number, epoch, started_at);
        book.live.insert(attempt.id, live);
        match adopted {
            Adopted::Running(running) => {
                // It still holds its place in the bulkheads of the resources it uses.
                let permits: Vec<(usize, Permit)> = self.core.task_uses[task]
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
                        self.core
                            .dag
                            .index_of(task)
                            .is_some_and(|task| self.core.task_uses[task].contains(&index))
                    })
                    .map(|(_, at)| *at)
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

    pub(super) async fn poll_requests(&mut self, book: &mut Book) -> Result<(), EngineError> {
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
        self.renew_leases_if_due(book).await
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
