//! Dispatch: which ready task starts next, under the concurrency cap, and how its attempt is
//! claimed (one transaction per batch) and launched with the task contract's environment.

use super::*;

impl Core {
    /// Takes up to `room` tasks off the ready queue that may start an attempt now. Tasks that
    /// must first poll their sensor start the poll instead; tasks a resource holds back are
    /// parked until it lets them go.
    pub(crate) fn pick_ready(&mut self, book: &mut Book, room: usize) -> Vec<(usize, TaskIndex)> {
        let mut picked: Vec<(usize, TaskIndex)> = Vec::new();
        while picked.len() < room {
            let Some((run_index, task)) = book.ready.pop_front() else {
                break;
            };
            let active = &book.runs[run_index];
            if active.cancelling
                || active.finished
                || !matches!(
                    active.slots[task].state,
                    TaskState::Pending | TaskState::Waiting
                )
                || picked.contains(&(run_index, task))
            {
                continue;
            }
            // Queued earlier, but an upstream task was reset for a rerun since, or a retry is not
            // due yet: it is queued again when its inputs complete or its timer fires.
            let slot = &active.slots[task];
            let not_due =
                slot.state == TaskState::Waiting && slot.not_before.is_some_and(|at| at > book.now);
            if active.remaining[task] > 0 || not_due {
                continue;
            }
            if self.spec.tasks[task].wait_for.is_some()
                && !active.sensor_ready[task]
                && active.slots[task].attempts == 0
            {
                self.start_sensor(book, run_index, task);
                continue;
            }
            if !self.task_uses[task].is_empty() && !self.admit(book, run_index, task) {
                continue;
            }
            picked.push((run_index, task));
        }
        picked
    }

    pub(crate) fn attempt_dir(&self, run: RunId, task: TaskIndex, number: u32) -> PathBuf {
        // One directory per attempt, flat under the run: every inode created costs, and an
        // attempt already creates its directory and its record file. Runs are numbered per
        // store, from 1, so the store's identity keeps two stores' attempts apart.
        self.config
            .attempts_dir
            .join(&*self.store_id)
            .join(run.0.to_string())
            .join(format!("{}.{number}", self.dag.name(task)))
    }

    /// A command of a task with its templates expanded, and the task environment of docs/tasks.md.
    pub(crate) fn task_command_and_env(
        &mut self,
        record: &RunRecord,
        task: TaskIndex,
        sensor: bool,
        attempt: u32,
        dir: &std::path::Path,
    ) -> (Vec<String>, Vec<(String, String)>) {
        let span_id = self.random.hex(16);
        let task_spec = &self.spec.tasks[task];
        let run_id = record.id.0.to_string();
        let attempt_text = attempt.to_string();
        let values = TemplateValues {
            date: &record.partition,
            partition: &record.partition,
            run_id: &run_id,
            task: &task_spec.name,
            attempt: &attempt_text,
        };
        let templates = if sensor {
            self.commands[task].sensor.as_deref().unwrap_or_default()
        } else {
            &self.commands[task].task
        };
        let command: Vec<String> = templates.iter().map(|part| part.expand(&values)).collect();
        let mut env = vec![
            ("KEEL_PIPELINE".to_string(), self.spec.name.clone()),
            ("KEEL_RUN_ID".to_string(), run_id.clone()),
            ("KEEL_TASK".to_string(), task_spec.name.clone()),
            ("KEEL_PARTITION".to_string(), record.partition.clone()),
            ("KEEL_ATTEMPT".to_string(), attempt_text.clone()),
            (
                "KEEL_IDEMPOTENCY_KEY".to_string(),
                format!("{}:{}:{}", self.spec.name, task_spec.name, record.partition),
            ),
            (
                "KEEL_RESULT".to_string(),
                dir.join(keel_exec::supervisor::RESULT_FILE)
                    .display()
                    .to_string(),
            ),
            (
                "KEEL_HEARTBEAT".to_string(),
                dir.join(keel_exec::supervisor::HEARTBEAT_FILE)
                    .display()
                    .to_string(),
            ),
            (
                "TRACEPARENT".to_string(),
                format!("00-{}-{span_id}-01", record.trace_id),
            ),
        ];
        env.extend(self.config.extra_env.iter().cloned());
        (command, env)
    }

    /// Marks a claimed attempt running and describes its launch: the command with its
    /// templates expanded and the task contract's environment.
    pub(crate) fn prepare_attempt(
        &mut self,
        book: &mut Book,
        run_index: usize,
        task: TaskIndex,
        attempt: &AttemptRecord,
    ) -> Launch {
        let now = book.now;
        let record = book.runs[run_index].record.clone();
        let task_spec = &self.spec.tasks[task];
        let (timeout, heartbeat) = (task_spec.timeout, task_spec.heartbeat);
        let dir = PathBuf::from(&attempt.dir);
        // A new attempt runs with whatever landed upstream: no rerun is owed any more (the claim
        // cleared the stored mark too).
        book.runs[run_index].needs_rerun[task] = false;
        let slot = &mut book.runs[run_index].slots[task];
        slot.state = TaskState::Running;
        slot.attempts = attempt.number;
        slot.first_started_at.get_or_insert(now);
        let (command, env) = self.task_command_and_env(&record, task, false, attempt.number, &dir);
        let live = Live::new(run_index, task, attempt.number, attempt.lease_epoch);
        book.live.insert(attempt.id, live);
        (self.observer)(Progress::AttemptStarted {
            run: record.id,
            partition: record.partition.clone(),
            task: self.dag.name(task).to_string(),
            attempt: attempt.number,
        });
        Launch {
            dir,
            command,
            env,
            timeout,
            heartbeat,
            kill_grace: self.config.kill_grace,
            log_cap: self.config.log_cap,
        }
    }

    pub(crate) fn fire_timers(&mut self, book: &mut Book) -> Vec<(usize, usize)> {
        let now = book.now;
        let mut gates_due = Vec::new();
        while let Some(Reverse((at, run_index, wake))) = book.timers.peek().copied() {
            if at > now {
                break;
            }
            book.timers.pop();
            match wake {
                Wake::Task(task) => {
                    if matches!(
                        book.runs[run_index].slots[task].state,
                        TaskState::Waiting | TaskState::Pending
                    ) {
                        book.ready.push_back((run_index, task));
                    }
                }
                Wake::Gate(gate) => gates_due.push((run_index, gate)),
                Wake::Resource(resource) => {
                    if book.breaker_wake[resource].is_some_and(|wake| wake <= now) {
                        book.breaker_wake[resource] = None;
                    }
                    book.ready.extend(book.breaker_waiters[resource].drain(..));
                }
            }
        }
        gates_due
    }
}
