use keel_model::{AttemptId, EventKind, Millis, Outcome, RunId, RunState, TaskState};

/// A run as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    pub id: RunId,
    pub pipeline: String,
    pub partition: String,
    pub version: String,
    pub state: RunState,
    /// The W3C trace id every attempt of the run shares.
    pub trace_id: String,
    pub created_at: Millis,
    pub finished_at: Option<Millis>,
    pub cancel_requested: bool,
    pub message: Option<String>,
    /// The pass (`[passes.NAME]`) the run belongs to; `None` for the pipeline's own runs.
    pub pass: Option<String>,
}

/// One task of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskRunRecord {
    pub run: RunId,
    pub task: String,
    pub phase: String,
    pub state: TaskState,
    /// Set once the task is done, or for the last attempt while it waits for a retry.
    pub outcome: Option<Outcome>,
    /// Attempts made so far.
    pub attempts: u32,
    /// Attempts charged against the retry policy (lost attempts are not charged).
    pub charged: u32,
    pub lease_epoch: i64,
    pub not_before: Option<Millis>,
    pub first_started_at: Option<Millis>,
    pub message: Option<String>,
    /// An upstream task landed late while this one ran: when it ends it must run again. Stored,
    /// so that a Keel that dies before the task ends still runs it again.
    pub rerun_pending: bool,
    /// Sensor polls so far, so that a restarted Keel keeps the sensor's backoff.
    pub sensor_polls: u32,
    /// Of those, polls that ended in a sensor error: they use up the task's retry attempts.
    pub sensor_errors: u32,
}

/// A quorum gate of one run, as last decided.
#[derive(Debug, Clone, PartialEq)]
pub struct GateRecord {
    pub phase: String,
    pub status: GateState,
    /// Tasks of the phase that were missing when the gate opened and have not landed since.
    pub waived: Vec<String>,
}

/// Where a gate stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateState {
    /// Not yet sufficient.
    Waiting,
    /// Sufficient; downstream proceeds at `open_at` unless the rest finish first.
    Sufficient {
        open_at: Millis,
    },
    Open,
    Failed,
}

/// One change of [`crate::Store::apply`]; every change of one call commits together.
#[derive(Debug, Clone)]
pub enum Change {
    /// A change to a task run that is not running (running ones are left alone).
    Task(TaskChange),
    /// The task, whatever its state, must run again once it ends.
    MarkRerun { task: String, reason: String },
    /// Records a gate's state.
    Gate(GateRecord),
    /// Appends to the event log.
    Event {
        task: Option<String>,
        kind: EventKind,
        detail: String,
    },
    /// Records the items an expanded task (`expand`) runs over, in the step that read them from
    /// its upstream task's result. The first record of a task in a run is kept and any later
    /// one ignored, so a run never expands twice or differently.
    Expand {
        task: String,
        items: Vec<keel_model::Item>,
    },
}

/// The items an expanded task of a run runs over, as recorded with [`Change::Expand`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpansionRecord {
    pub task: String,
    /// In the order the upstream task listed them.
    pub items: Vec<keel_model::Item>,
    pub created_at: Millis,
}

/// One write of [`crate::Store::commit`]: everything one step of the engine decided, committed
/// in one transaction before the engine acts on any of it.
#[derive(Debug, Clone)]
pub enum Write {
    /// A change to one run: a task, an owed rerun, a gate or an event.
    Run { run: RunId, change: Change },
    /// A run's state, and why.
    RunState {
        run: RunId,
        state: RunState,
        message: Option<String>,
    },
    /// One poll of a task's sensor.
    SensorPoll(SensorPoll),
    /// A resource's breaker state.
    Resource(ResourceStateRecord),
    /// How an attempt ended and where its task goes next; fenced by the lease epoch.
    Finish(FinishAttempt),
    /// That an attempt's process started (its supervisor's pid, if known); ignored when the
    /// attempt already ended or its lease was taken over.
    Started {
        attempt: AttemptId,
        epoch: i64,
        pid: Option<u32>,
    },
    /// A rollout decision about a version of a task (its counts, its status), with its event.
    TaskVersion(TaskVersionChange),
}

/// A version of a task as the store keeps it (`task_versions`): the spec it runs, where its
/// rollout stands and its canary's counts.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskVersionRecord {
    pub pipeline: String,
    pub task: String,
    pub version: String,
    /// The task's spec as JSON (`keel_model::TaskSpec`), so that the version can keep running
    /// after the pipeline file moved on.
    pub spec: String,
    pub status: keel_model::VersionStatus,
    /// Clean and failed canary attempts.
    pub clean: u32,
    pub failed: u32,
    /// Why the status is what it is (rolled back for a failure, promoted by hand, …).
    pub reason: Option<String>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// A version of a task the engine runs, registered when it starts.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTaskVersion {
    pub task: String,
    pub version: String,
    pub spec: String,
    /// The task has `rollout`: a new version starts as a canary beside the promoted one.
    /// Without it a new version is promoted at once.
    pub canary: bool,
}

/// A change to a version of a task, decided by the engine (or by hand), with the event that
/// records it on a run.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskVersionChange {
    pub pipeline: String,
    pub task: String,
    pub version: String,
    pub status: keel_model::VersionStatus,
    pub clean: u32,
    pub failed: u32,
    pub reason: Option<String>,
    /// The run (and attempt) the decision is about; its event goes on that run.
    pub run: RunId,
    pub attempt: Option<AttemptId>,
    pub event: keel_model::EventKind,
    pub detail: String,
}

/// One execution of a task.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptRecord {
    pub id: AttemptId,
    pub run: RunId,
    pub pipeline: String,
    pub partition: String,
    pub task: String,
    /// 1 for the first attempt of the task in this run.
    pub number: u32,
    pub lease_owner: String,
    pub lease_epoch: i64,
    pub not_before: Option<Millis>,
    pub claimed_at: Millis,
    pub started_at: Option<Millis>,
    pub finished_at: Option<Millis>,
    pub outcome: Option<Outcome>,
    pub exit_code: Option<i32>,
    pub rows: Option<i64>,
    /// The `metrics` object of the result file, as JSON text.
    pub metrics: Option<String>,
    pub message: Option<String>,
    pub pid: Option<u32>,
    /// The attempt directory: captured output, result file, heartbeat and exit record.
    pub dir: String,
    /// The version of the pipeline file whose command the attempt ran (a retry may run a newer
    /// one than its run was created with); `None` for attempts recorded before Keel kept it.
    pub version: Option<String>,
    /// The version of the task the attempt ran (its spec, and its code's identity): under a
    /// canary rollout, the new version or the promoted one. `None` before Keel kept it.
    pub task_version: Option<String>,
}

/// One entry of the append-only event log.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRecord {
    pub seq: i64,
    pub at: Millis,
    pub run: RunId,
    pub task: Option<String>,
    pub attempt: Option<AttemptId>,
    pub kind: EventKind,
    pub detail: String,
}

#[derive(Debug, Clone)]
pub struct NewRun {
    pub pipeline: String,
    pub partition: String,
    pub version: String,
    pub trace_id: String,
    /// (task, phase, outcome if the task is settled at creation, e.g. `skipped` outside `--only`)
    pub tasks: Vec<(String, String, Option<Outcome>)>,
    pub at: Millis,
    /// The pass the run belongs to; `None` for the pipeline's own runs.
    pub pass: Option<String>,
}

/// One firing of a schedule: which (`pipeline` for the pipeline's own `schedule`, `pass:NAME`
/// for a pass's) and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleFire {
    pub trigger: String,
    pub fire_at: Millis,
}

/// What [`crate::Store::create_run_for_fire`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FireOutcome {
    Created(RunId),
    /// The partition had an unfinished run; the fire joined it.
    Joined(RunId),
    /// This fire was recorded before, with this run.
    AlreadyFired(RunId),
}

#[derive(Debug, Clone)]
pub struct ClaimAttempt {
    pub run: RunId,
    pub task: String,
    pub owner: String,
    /// Computes the attempt directory from the attempt number.
    pub dir: String,
    /// The version of the pipeline file whose command the attempt runs.
    pub version: String,
    /// The version of the task the attempt runs.
    pub task_version: Option<String>,
    pub lease_expires_at: Millis,
    pub at: Millis,
}

/// Where a task run goes after an attempt ends.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskNext {
    /// The task is done with this outcome.
    Done(Outcome),
    /// Another attempt may start at `not_before`. `charge` says whether the attempt that just
    /// ended counts against the retry policy.
    Retry { not_before: Millis, charge: bool },
    /// The attempt was interrupted by a shutdown; the task waits to be resumed, uncharged.
    Resume,
}

#[derive(Debug, Clone)]
pub struct FinishAttempt {
    pub attempt: AttemptId,
    pub epoch: i64,
    pub outcome: Outcome,
    pub exit_code: Option<i32>,
    pub rows: Option<i64>,
    pub metrics: Option<String>,
    pub message: Option<String>,
    pub next: TaskNext,
    pub at: Millis,
}

/// What a finish does to its task run, as every backend writes it.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskEffect {
    pub state: TaskState,
    pub outcome: Option<Outcome>,
    pub not_before: Option<Millis>,
    /// Added to the task run's charged attempts.
    pub charge: i64,
    /// The event logged after `attempt_finished`.
    pub kind: EventKind,
}

impl FinishAttempt {
    /// Whether the attempt used up one of the task's retry attempts.
    pub fn charged(&self) -> bool {
        match &self.next {
            TaskNext::Done(_) => self.outcome.uses_retry_attempt(),
            TaskNext::Retry { charge, .. } => *charge,
            TaskNext::Resume => false,
        }
    }

    /// Where the task run goes.
    pub fn task_effect(&self) -> TaskEffect {
        match &self.next {
            TaskNext::Done(outcome) => TaskEffect {
                state: TaskState::Done,
                outcome: Some(*outcome),
                not_before: None,
                charge: i64::from(self.outcome.uses_retry_attempt()),
                kind: EventKind::TaskDone,
            },
            TaskNext::Retry { not_before, charge } => TaskEffect {
                state: TaskState::Waiting,
                outcome: Some(self.outcome),
                not_before: Some(*not_before),
                charge: i64::from(*charge),
                kind: EventKind::RetryScheduled,
            },
            TaskNext::Resume => TaskEffect {
                state: TaskState::Pending,
                outcome: Some(self.outcome),
                not_before: None,
                charge: 0,
                kind: EventKind::TaskInterrupted,
            },
        }
    }

    /// The detail of its `attempt_finished` event, for attempt number `number`.
    pub fn finished_detail(&self, number: u32) -> String {
        let mut detail = format!("attempt {number} {}", self.outcome);
        if let Some(code) = self.exit_code {
            detail.push_str(&format!(" exit {code}"));
        }
        detail
    }

    /// The detail of the event that says where the task run goes.
    pub fn next_detail(&self) -> String {
        match &self.next {
            TaskNext::Done(outcome) => outcome.to_string(),
            TaskNext::Retry { not_before, charge } => format!(
                "not before {not_before}{}",
                if *charge { "" } else { ", uncharged" }
            ),
            TaskNext::Resume => "waits to be resumed".to_string(),
        }
    }
}

/// The status a version new to a task starts in, and why: a canary beside the promoted version
/// when the task has a rollout, promoted at once otherwise.
pub fn new_version_status(promoted: Option<&str>, canary: bool) -> (&'static str, String) {
    match promoted {
        Some(previous) if canary => (
            "canary",
            format!("new version; version {previous} keeps running outside the canary"),
        ),
        Some(previous) => (
            "promoted",
            format!("new version without rollout; replaces version {previous}"),
        ),
        None => ("promoted", "first version recorded".to_string()),
    }
}

/// A change to a task run that is not running.
#[derive(Debug, Clone)]
pub struct TaskChange {
    pub task: String,
    pub state: TaskState,
    pub outcome: Option<Outcome>,
    pub not_before: Option<Millis>,
    pub message: Option<String>,
    /// Gives the task a fresh retry budget, as a manual retry does. Attempt numbers keep
    /// counting, so every attempt keeps its own number and output.
    pub reset_retry_budget: bool,
    /// Why, for the event log.
    pub reason: String,
}

impl TaskChange {
    /// Back to pending with a fresh retry budget, to run again: a manual retry, or a rerun owed
    /// to a task that ran without a late upstream task.
    pub fn reset(task: impl Into<String>, reason: impl Into<String>) -> TaskChange {
        TaskChange {
            task: task.into(),
            state: TaskState::Pending,
            outcome: None,
            not_before: None,
            message: None,
            reset_retry_budget: true,
            reason: reason.into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct NewEvent {
    pub run: RunId,
    pub task: Option<String>,
    pub attempt: Option<AttemptId>,
    pub kind: EventKind,
    pub detail: String,
    pub at: Millis,
}

/// One poll of a sensor, see [`crate::Store::record_sensor_poll`].
#[derive(Debug, Clone)]
pub struct SensorPoll {
    pub run: RunId,
    pub task: String,
    pub ready: bool,
    /// When to poll again, if not ready.
    pub not_before: Option<Millis>,
    /// The poll ended in a sensor error, not in *not ready*: it counts against the task's
    /// retry attempts.
    pub error: bool,
    pub message: Option<String>,
    pub at: Millis,
}

/// The last known state of a resource's circuit breaker.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceStateRecord {
    pub pipeline: String,
    pub name: String,
    /// `closed`, `open` or `half_open`.
    pub state: String,
    /// For example "opened after 5 consecutive failures; probing at 12:00:30".
    pub detail: String,
    pub updated_at: Millis,
    /// Since when the breaker has been open without closing in between, if it is not closed.
    pub open_since: Option<Millis>,
    /// When an open breaker lets its next probe through.
    pub open_until: Option<Millis>,
}

impl ResourceStateRecord {
    /// The breaker's state at `now` as a Keel starting now would use it, and a sentence saying
    /// what it means: an open breaker whose cooldown has passed lets the next attempt probe.
    pub fn state_at(&self, now: Millis) -> (&'static str, String) {
        let open_for = self
            .open_since
            .map(|since| {
                format!(
                    "; down for {}",
                    keel_model::format_duration(std::time::Duration::from_millis(
                        (now - since).max(0) as u64
                    ))
                )
            })
            .unwrap_or_default();
        match self.state.as_str() {
            "closed" => ("closed", self.detail.clone()),
            "open" if self.open_until.is_some_and(|until| until > now) => {
                let wait = self.open_until.unwrap_or(now) - now;
                (
                    "open",
                    format!(
                        "open: tasks using it wait, using up no attempts; one probe may run in {}{open_for}",
                        keel_model::format_duration(std::time::Duration::from_millis(wait as u64))
                    ),
                )
            }
            _ => (
                "half_open",
                format!("half open: the next attempt is a probe{open_for}"),
            ),
        }
    }
}

/// What an attempt was, for counting: a real try at the task, a check that found its data not
/// ready yet (exit 75), or a circuit breaker's probe that failed.
///
/// Only real attempts are what the retry policy's `attempts` is about; checks and failed probes
/// use up none of them, and `keel status` shows them apart ("2 (+5 checks)").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttemptKind {
    Attempt,
    Check,
    Probe,
}

impl AttemptKind {
    /// Classifies an attempt from how it ended and whether it was charged to the retry policy
    /// (`None` while it runs, or for attempts recorded before Keel kept it).
    ///
    /// The engine retries a task's own failure (`failed`, `timed_out`, `stalled`) without charging
    /// it in one case only: the attempt was a half-open breaker's probe, and its failure says the
    /// dependency is still down, not that the task is bad. A `lost` attempt is uncharged too, but
    /// it did run: it counts as an attempt.
    ///
    /// ```
    /// use keel_model::Outcome;
    /// use keel_store::AttemptKind;
    /// assert_eq!(AttemptKind::of(Some(Outcome::NotReady), Some(false)), AttemptKind::Check);
    /// assert_eq!(AttemptKind::of(Some(Outcome::Failed), Some(false)), AttemptKind::Probe);
    /// assert_eq!(AttemptKind::of(Some(Outcome::Failed), Some(true)), AttemptKind::Attempt);
    /// assert_eq!(AttemptKind::of(Some(Outcome::Lost), Some(false)), AttemptKind::Attempt);
    /// assert_eq!(AttemptKind::of(None, None), AttemptKind::Attempt);
    /// ```
    pub fn of(outcome: Option<Outcome>, charged: Option<bool>) -> AttemptKind {
        match (outcome, charged) {
            (Some(Outcome::NotReady), _) => AttemptKind::Check,
            (Some(Outcome::Failed | Outcome::TimedOut | Outcome::Stalled), Some(false)) => {
                AttemptKind::Probe
            }
            _ => AttemptKind::Attempt,
        }
    }
}

/// One run with its tasks and attempts, as read together.
#[derive(Debug, Clone, PartialEq)]
pub struct RunView {
    pub record: RunRecord,
    pub tasks: Vec<TaskRunRecord>,
    pub attempts: Vec<AttemptRecord>,
    /// What each attempt was, by id; see [`AttemptKind`].
    pub kinds: std::collections::BTreeMap<AttemptId, AttemptKind>,
    /// Who accepted the run as it ended, and why (`keel accept`): the detail of its newest
    /// `accepted` event since its state last changed.
    pub accepted: Option<String>,
}

/// One task of one run, summed up from its attempts for `keel status` and `keel history`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskSummary {
    /// Real attempts: neither not-ready checks nor failed breaker probes.
    pub attempts: u32,
    /// Attempts that found the data not ready yet (exit 75).
    pub checks: u32,
    /// Breaker probes that failed.
    pub probes: u32,
    /// Polls of the task's sensor (`wait_for`) since it was last reset; they are no attempts.
    pub polls: u32,
    /// Time spent working: the sum of the attempts' durations, up to `now` for one still running.
    /// Time between attempts (a backoff, a wait before a manual retry) is not in it.
    pub worked: Millis,
    /// `rows` of the newest finished attempt's result file.
    pub rows: Option<i64>,
    /// `metrics` of the newest finished attempt's result file, as JSON text.
    pub metrics: Option<String>,
}

impl RunView {
    /// The attempts of one task, oldest first.
    pub fn attempts_of<'a>(&'a self, task: &'a str) -> impl Iterator<Item = &'a AttemptRecord> {
        self.attempts
            .iter()
            .filter(move |attempt| attempt.task == task)
    }

    /// One task's attempts, checks, probes, working time and latest result at `now`.
    pub fn task_summary(&self, task: &str, now: Millis) -> TaskSummary {
        let mut summary = TaskSummary {
            polls: self
                .tasks
                .iter()
                .find(|row| row.task == task)
                .map_or(0, |row| row.sensor_polls),
            ..TaskSummary::default()
        };
        for attempt in self.attempts_of(task) {
            match self
                .kinds
                .get(&attempt.id)
                .copied()
                .unwrap_or(AttemptKind::Attempt)
            {
                AttemptKind::Attempt => summary.attempts += 1,
                AttemptKind::Check => summary.checks += 1,
                AttemptKind::Probe => summary.probes += 1,
            }
            let began = attempt.started_at.unwrap_or(attempt.claimed_at);
            let ended = attempt.finished_at.unwrap_or(now);
            summary.worked += (ended - began).max(0);
        }
        if let Some(last) = self
            .attempts_of(task)
            .filter(|attempt| attempt.finished_at.is_some())
            .last()
        {
            summary.rows = last.rows;
            summary.metrics = last.metrics.clone();
        }
        summary
    }
}

/// Which runs a [`StatusView`] holds: by default the newest run of every partition of a
/// pipeline, newest partition first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusQuery {
    pub pipeline: String,
    /// Only this run (and only if it is of the pipeline).
    pub run: Option<RunId>,
    /// Only partitions from the first to the second, inclusive (compared as text, which orders
    /// `YYYY-MM-DD` dates by date).
    pub partitions: Option<(String, String)>,
    /// Every run of each partition, not only the newest.
    pub every_run: bool,
    /// Only runs that have this task, with only its row and its attempts (`keel history`), and
    /// the rows of its items when it is expanded, so that they can be counted.
    pub task: Option<String>,
    /// At most this many runs; how many more there were is [`StatusView::omitted`].
    pub limit: Option<u32>,
    /// Only runs of this pass; `None` selects runs of every pass and of none, the newest of
    /// each (partition, pass).
    pub pass: Option<String>,
}

impl StatusQuery {
    /// The newest run of every partition of `pipeline`, with no limit.
    pub fn new(pipeline: impl Into<String>) -> StatusQuery {
        StatusQuery {
            pipeline: pipeline.into(),
            run: None,
            partitions: None,
            every_run: false,
            task: None,
            limit: None,
            pass: None,
        }
    }

    /// Only one partition.
    pub fn partition(mut self, partition: impl Into<String>) -> StatusQuery {
        let partition = partition.into();
        self.partitions = Some((partition.clone(), partition));
        self
    }

    /// Only one run.
    pub fn run(mut self, run: RunId) -> StatusQuery {
        self.run = Some(run);
        self
    }

    pub fn limit(mut self, limit: u32) -> StatusQuery {
        self.limit = Some(limit);
        self
    }
}

/// Everything `keel status` shows, read in one transaction so that it is one consistent moment:
/// the runs a [`StatusQuery`] selects, with tasks and attempts, and the breakers.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatusView {
    pub runs: Vec<RunView>,
    pub resources: Vec<ResourceStateRecord>,
    /// Runs the query selected but its limit left out.
    pub omitted: u64,
    /// The state of the newest run of every partition the query selects, limit or not: what a
    /// summary of a range of partitions counts. Only runs of the query's pass count, or with
    /// none, only the pipeline's own runs.
    pub newest: std::collections::BTreeMap<String, RunState>,
    /// The pipeline's feature flags (`keel flags`), by task.
    pub flags: Vec<FlagRecord>,
    /// The canaries and rolled-back versions of the pipeline's tasks (`keel rollout`): the
    /// versions whose rollout is not settled or went wrong.
    pub rollouts: Vec<TaskVersionRecord>,
}

/// A feature flag on a task (`keel flags set`): what it says, when and by whom it was set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagRecord {
    pub pipeline: String,
    pub task: String,
    /// `off` or `N%`; a flag set `on` is removed instead.
    pub state: String,
    pub set_at: Millis,
    pub set_by: String,
}

/// Whether the task row `row` belongs to `task` for a query about `task`: its own row, or the
/// row of one of its items (`box_scores[0021]`).
pub(crate) fn is_row_of(row: &str, task: &str) -> bool {
    row == task
        || keel_model::expand::split_item_name(row).is_some_and(|(parent, _)| parent == task)
}
