//! Sensors (`wait_for`): polls run as processes without attempt rows. A poll that exits 0 lets
//! the task start, 75 (*not ready*) polls again with jittered backoff until the deadline, and 65
//! ends the task `no_data`. Anything else is a *sensor error*: it uses up one of the task's
//! retry attempts and is polled again after the task's retry backoff, and once the attempts are
//! spent the task ends `failed` with the sensor's last output in its message.

use super::*;

impl Core {
    /// Polls a task's sensor once, as a process like any attempt, but without an attempt row:
    /// a poll is not an attempt.
    pub(crate) fn start_sensor(&mut self, book: &mut Book, run_index: usize, task: TaskIndex) {
        let now = book.now;
        let record = book.runs[run_index].record.clone();
        let stage = book.runs[run_index].sensor_stage[task];
        let sensor = self.spec.tasks[task]
            .sensor(stage)
            .cloned()
            .expect("called for tasks with a sensor");
        let active = &mut book.runs[run_index];
        active.slots[task].first_started_at.get_or_insert(now);
        active.slots[task].state = TaskState::Waiting;
        active.sensor_polls[task] += 1;
        let dir = self.poll_dir(record.id, task, "sensor", now);
        let span = active
            .trace
            .sensor_span(self.name(task), active.sensor_polls[task]);
        let launch = Launch {
            timeout: sensor
                .every
                .max(std::time::Duration::from_secs(1))
                .min(self.spec.tasks[task].timeout),
            heartbeat: None,
            ..self.task_launch(&record, task, Some(stage), 0, span, dir)
        };
        self.push_poll(book, run_index, task, launch);
    }

    /// A sensor poll ended: start the task, poll again later, or end the task.
    pub(crate) fn on_sensor(
        &mut self,
        book: &mut Book,
        run_index: usize,
        task: TaskIndex,
        report: Report,
    ) -> Result<(), EngineError> {
        // A task polls its `when` command before its sensor, one at a time.
        if self.commands[task].calendar.is_some() && !book.runs[run_index].calendar_passed[task] {
            return self.on_calendar(book, run_index, task, report);
        }
        let active = &book.runs[run_index];
        if active.cancelling
            || active.finished
            || !matches!(
                active.slots[task].state,
                TaskState::Waiting | TaskState::Pending
            )
        {
            return Ok(());
        }
        let now = book.now;
        let verdict = self.sensor_verdict(active, task, report, now);
        (self.observer)(Progress::SensorPolled {
            run: active.record.id,
            partition: active.record.partition.clone(),
            task: self.dag.name(task).to_string(),
            verdict: match &verdict {
                SensorVerdict::Ready => "ready",
                SensorVerdict::Again { .. } => "not_ready",
                SensorVerdict::Error { .. } => "error",
                SensorVerdict::Final { outcome, .. } => outcome.as_str(),
            },
        });
        let (ready, not_before, message, error) = match verdict {
            SensorVerdict::Ready => (true, None, None, false),
            SensorVerdict::Again { at, message } => (false, Some(at), message, false),
            SensorVerdict::Error { at, message } => (false, Some(at), Some(message), true),
            SensorVerdict::Final { outcome, message } => {
                return self.settle_task(book, run_index, task, outcome, message);
            }
        };
        let poll = SensorPoll {
            run: active.record.id,
            task: self.name(task).to_string(),
            ready,
            not_before,
            error,
            message,
            at: now,
        };
        book.writes.push(Write::SensorPoll(poll));
        let active = &mut book.runs[run_index];
        active.sensor_errors[task] += u32::from(error);
        match not_before {
            // Passed, and another sensor is next: it is polled at once.
            None if self.spec.tasks[task]
                .sensor(active.sensor_stage[task] + 1)
                .is_some() =>
            {
                active.sensor_stage[task] += 1;
                active.slots[task].state = TaskState::Pending;
                active.slots[task].not_before = None;
                book.ready.push_back((run_index, task));
            }
            None => {
                active.sensor_ready[task] = true;
                active.slots[task].state = TaskState::Pending;
                book.ready.push_back((run_index, task));
            }
            Some(at) => {
                active.slots[task].state = TaskState::Waiting;
                active.slots[task].not_before = Some(at);
                book.timers.push(Reverse((at, run_index, Wake::Task(task))));
            }
        }
        Ok(())
    }

    /// What one poll's report means for the task, by how the sensor exited.
    fn sensor_verdict(
        &mut self,
        active: &ActiveRun,
        task: TaskIndex,
        report: Report,
        now: Millis,
    ) -> SensorVerdict {
        match report.outcome {
            Outcome::Succeeded | Outcome::Skipped => SensorVerdict::Ready,
            // Exit 65, or exit 0 with a result file saying `no_data`: nothing to wait for.
            Outcome::NoData => self.sensor_no_data(active, task, report.message),
            Outcome::FailedPermanent if report.exit_code == Some(65) => {
                self.sensor_no_data(active, task, None)
            }
            // The sensor cannot run at all (command not found, no working directory) or its
            // result file says so: polling again would fail the same way.
            Outcome::FailedPermanent => SensorVerdict::Final {
                outcome: Outcome::FailedPermanent,
                message: format!(
                    "sensor failed permanently: {}",
                    report.message.unwrap_or_default()
                ),
            },
            Outcome::Failed | Outcome::TimedOut | Outcome::Stalled => {
                self.sensor_error(active, task, report.message, now)
            }
            // Exit 75; or the poll was lost or stopped, which says nothing about the data.
            _ => self.sensor_not_ready(active, task, report.message, now),
        }
    }

    fn sensor_no_data(
        &self,
        active: &ActiveRun,
        task: TaskIndex,
        detail: Option<String>,
    ) -> SensorVerdict {
        let command = self.sensor_command(active, task);
        SensorVerdict::Final {
            outcome: Outcome::NoData,
            message: match detail {
                Some(detail) => format!("the sensor {command:?} reported no data: {detail}"),
                None => format!("the sensor {command:?} reported no data (exit 65)"),
            },
        }
    }

    /// Not ready yet: poll again after a jittered backoff from `every` up to `max`, unless the
    /// deadline has passed.
    fn sensor_not_ready(
        &mut self,
        active: &ActiveRun,
        task: TaskIndex,
        message: Option<String>,
        now: Millis,
    ) -> SensorVerdict {
        let sensor = self.spec.tasks[task]
            .sensor(active.sensor_stage[task])
            .expect("a sensor report for a task with a sensor");
        let deadline = sensor_deadline(active, task, sensor, now);
        if now >= deadline {
            return SensorVerdict::Final {
                outcome: Outcome::NotReady,
                message: format!(
                    "still not ready after {}: the sensor {:?} never reported ready",
                    keel_model::format_duration(sensor.deadline),
                    self.sensor_command(active, task)
                ),
            };
        }
        // The upper half of the ceiling, so polls spread out but never come in a burst. The
        // poll count is stored, so a restart keeps the backoff where it was.
        let polls = active.sensor_polls[task].max(1);
        let policy = keel_model::RetryPolicy {
            attempts: u32::MAX,
            initial: sensor.every,
            max: sensor.max,
            jitter: keel_model::Jitter::Equal,
        };
        let next = now + policy.delay(polls, self.random.unit()).as_millis() as Millis;
        SensorVerdict::Again {
            at: next.min(deadline).max(now),
            message,
        }
    }

    /// A sensor error uses up one of the task's retry attempts, like a failed attempt: polled
    /// again after the task's retry backoff while attempts are left (and the deadline has not
    /// passed), and otherwise the task ends `failed` with what the sensor said.
    fn sensor_error(
        &mut self,
        active: &ActiveRun,
        task: TaskIndex,
        detail: Option<String>,
        now: Millis,
    ) -> SensorVerdict {
        let retries = self.spec.tasks[task].retries;
        let sensor = self.spec.tasks[task]
            .sensor(active.sensor_stage[task])
            .expect("a sensor report for a task with a sensor");
        let errors = active.sensor_errors[task] + 1;
        let command = self.sensor_command(active, task);
        let detail = detail.unwrap_or_else(|| "it failed".to_string());
        if errors >= retries.attempts {
            let message = format!(
                "the sensor {command:?} failed {errors} time{} (retries.attempts = {}), the last time: {detail}",
                if errors == 1 { "" } else { "s" },
                retries.attempts
            );
            return SensorVerdict::Final {
                outcome: Outcome::Failed,
                message,
            };
        }
        let deadline = sensor_deadline(active, task, sensor, now);
        if now >= deadline {
            return SensorVerdict::Final {
                outcome: Outcome::Failed,
                message: format!(
                    "the sensor {command:?} failed after its deadline of {}: {detail}",
                    keel_model::format_duration(sensor.deadline)
                ),
            };
        }
        let delay = retries.delay(errors, self.random.unit()).as_millis() as Millis;
        SensorVerdict::Error {
            at: (now + delay).min(deadline),
            message: format!(
                "sensor error {errors} of {}: {detail}; polling again",
                retries.attempts
            ),
        }
    }

    /// The sensor's command as it runs for this run, templates expanded, for messages.
    fn sensor_command(&self, active: &ActiveRun, task: TaskIndex) -> String {
        let record = &active.record;
        let run_id = record.id.0.to_string();
        let values = TemplateValues {
            date: &record.partition,
            partition: &record.partition,
            run_id: &run_id,
            task: self.name(task),
            attempt: "0",
            pass: record.pass.as_deref().unwrap_or_default(),
            params: self.params_of(record),
        };
        let parts = self.commands[task]
            .sensors
            .get(active.sensor_stage[task])
            .map(Vec::as_slice)
            .unwrap_or_default();
        let expanded: Vec<String> = parts.iter().map(|part| part.expand(&values)).collect();
        expanded.join(" ")
    }
}

/// When a task's sensor stops polling: its deadline after the first poll.
fn sensor_deadline(
    active: &ActiveRun,
    task: TaskIndex,
    sensor: &keel_model::SensorSpec,
    now: Millis,
) -> Millis {
    active.slots[task].first_started_at.unwrap_or(now) + sensor.deadline.as_millis() as Millis
}

/// What a sensor poll means for its task.
enum SensorVerdict {
    /// Ready: the task may start its first attempt.
    Ready,
    /// Not ready yet: poll again at `at`.
    Again { at: Millis, message: Option<String> },
    /// A sensor error that leaves attempts: poll again at `at`, one attempt used up.
    Error { at: Millis, message: String },
    /// The task ends without an attempt.
    Final { outcome: Outcome, message: String },
}
