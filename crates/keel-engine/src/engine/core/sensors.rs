//! Sensors (`wait_for`): polls run as processes without attempt rows, back off with jitter and
//! end the task `not_ready` at its deadline.

use super::*;

impl Core {
    /// Polls a task's sensor once, as a process like any attempt, but without an attempt row:
    /// a poll is not an attempt and uses up none.
    pub(crate) fn start_sensor(&mut self, book: &mut Book, run_index: usize, task: TaskIndex) {
        let now = book.now;
        let record = book.runs[run_index].record.clone();
        let sensor = self.spec.tasks[task]
            .wait_for
            .clone()
            .expect("called for tasks with a sensor");
        let active = &mut book.runs[run_index];
        active.slots[task].first_started_at.get_or_insert(now);
        active.slots[task].state = TaskState::Waiting;
        active.sensor_polls[task] += 1;
        let dir = self
            .config
            .attempts_dir
            .join(&*self.store_id)
            .join(record.id.0.to_string())
            .join(format!("{}.sensor.{now}", self.dag.name(task)));
        let launch = Launch {
            timeout: sensor
                .every
                .max(std::time::Duration::from_secs(1))
                .min(self.spec.tasks[task].timeout),
            heartbeat: None,
            ..self.task_launch(&record, task, true, 0, dir)
        };
        book.sensing += 1;
        book.effects.push(Effect::PollSensor {
            run_index,
            task,
            launch,
        });
    }

    /// A sensor poll ended: start the task, poll again later, or give up at the deadline.
    pub(crate) fn on_sensor(
        &mut self,
        book: &mut Book,
        run_index: usize,
        task: TaskIndex,
        report: Report,
    ) -> Result<(), EngineError> {
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
        let (ready, not_before, message) = match self.sensor_verdict(active, task, report, now) {
            SensorVerdict::Ready => (true, None, None),
            SensorVerdict::Again { at, message } => (false, Some(at), message),
            SensorVerdict::Final { outcome, message } => {
                return self.settle_task(book, run_index, task, outcome, message);
            }
        };
        let poll = SensorPoll {
            run: active.record.id,
            task: self.dag.name(task).to_string(),
            ready,
            not_before,
            message,
            at: now,
        };
        book.writes.push(Write::SensorPoll(poll));
        let active = &mut book.runs[run_index];
        match not_before {
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

    /// What one poll's report means for the task.
    fn sensor_verdict(
        &mut self,
        active: &ActiveRun,
        task: TaskIndex,
        report: Report,
        now: Millis,
    ) -> SensorVerdict {
        let sensor = self.spec.tasks[task]
            .wait_for
            .as_ref()
            .expect("a sensor report for a task with a sensor");
        let started = active.slots[task].first_started_at.unwrap_or(now);
        let deadline = started + sensor.deadline.as_millis() as Millis;
        match report.outcome {
            Outcome::Succeeded | Outcome::NoData | Outcome::Skipped => SensorVerdict::Ready,
            Outcome::FailedPermanent => SensorVerdict::Final {
                outcome: Outcome::FailedPermanent,
                message: format!(
                    "sensor failed permanently: {}",
                    report.message.unwrap_or_default()
                ),
            },
            _ if now >= deadline => SensorVerdict::Final {
                outcome: Outcome::NotReady,
                message: format!(
                    "still not ready after {}: the sensor {:?} never reported ready",
                    keel_model::format_duration(sensor.deadline),
                    sensor.command.join(" ")
                ),
            },
            _ => {
                // Jittered backoff from `every` up to `max`: the upper half of the ceiling, so
                // polls spread out but never come in a burst. The poll count is stored, so a
                // restart keeps the backoff where it was.
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
                    message: report.message,
                }
            }
        }
    }
}

/// What a sensor poll means for its task.
enum SensorVerdict {
    /// Ready: the task may start its first attempt.
    Ready,
    /// Not ready yet: poll again at `at`.
    Again { at: Millis, message: Option<String> },
    /// The task ends without an attempt.
    Final { outcome: Outcome, message: String },
}
