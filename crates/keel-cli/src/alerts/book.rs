//! The alert book: a pure state machine that reads the engine's [`Progress`] events with the
//! time they happened and says which messages to send. It reads no clock and sends nothing;
//! `alerts::deliver` does the sending.
//!
//! A problem is known by its [`Signature`]: the pipeline, the kind, and the task or resource
//! (never the partition or the attempt, so a task failing every night is one problem). Per
//! signature:
//!
//! - **open**: the first occurrence sends an alert. Each later occurrence in another run sends
//!   one too, as long as fewer than `max_per_hour` alerts of that signature went out in the last
//!   hour (a sliding window); past that it is counted, and the next alert says how many were
//!   held back. The same run reporting the same problem twice sends nothing more.
//! - **resolved**: when the problem heals (the task completes, the breaker closes, the run
//!   succeeds, a fire of the schedule starts a run again), exactly one `resolved` message goes
//!   out and the signature is closed. Its send times are kept, so a flapping task is still held
//!   to `max_per_hour`.
//!
//! Only actionable events alert: `failed_permanent`, retries used up, a missed deadline, a run
//! still `degraded` after its grace, a breaker open too long, a schedule fire that could not
//! run, a gap automatic backfill cannot repair. `no_data` is a normal answer and never alerts.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;

use keel_engine::Progress;
use keel_model::{Millis, Outcome, RunId, RunState};

const HOUR: Millis = 3_600_000;

/// What kind of problem an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AlertKind {
    /// A task ended `failed_permanent`: retrying cannot help.
    FailedPermanent,
    /// A task's attempt failed and no retry is left.
    RetriesExhausted,
    /// A task missed its deadline: its sensor gave up, or it timed out with no retry left.
    DeadlineMissed,
    /// A run ended `degraded` and stayed so past `degraded_grace`.
    RunDegraded,
    /// A resource's breaker stayed open past `breaker_open_for`.
    BreakerOpen,
    /// A fire of the schedule could not start a run.
    ScheduleMissed,
    /// A partition the schedule should have made is missing, failed or stale, and automatic
    /// backfill will not repair it.
    GapUnrepaired,
    /// A canary version of a task was rolled back (`rollout`).
    RolledBack,
    /// A `block` check of a task's result failed and no retry is left: the task ended
    /// `failed_check`.
    CheckFailed,
    /// A `warn` check of a task's result failed; the task went on.
    CheckWarned,
    /// A task asked its upstream tasks to heal (`heal`), the run's heal budget is spent, and it
    /// ended without completing: told in place of its own failure.
    HealExhausted,
    /// A task's rows, a metric or its time far outside its baseline (told once per partition).
    Anomaly,
    /// An SLO's error budget burns fast or slowly (`[slo.NAME]`).
    SloBurn,
    /// The daily report (`[alerts] report`), not a problem: sent once a day.
    DailyReport,
    /// A resource's quota passed its `warn` share, or is used up, for the current period.
    Quota,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::FailedPermanent => "failed_permanent",
            AlertKind::RetriesExhausted => "retries_exhausted",
            AlertKind::DeadlineMissed => "deadline_missed",
            AlertKind::RunDegraded => "run_degraded",
            AlertKind::BreakerOpen => "breaker_open",
            AlertKind::ScheduleMissed => "schedule_missed",
            AlertKind::GapUnrepaired => "gap_unrepaired",
            AlertKind::RolledBack => "rolled_back",
            AlertKind::CheckFailed => "check_failed",
            AlertKind::CheckWarned => "check_warned",
            AlertKind::HealExhausted => "heal_exhausted",
            AlertKind::Anomaly => "anomaly",
            AlertKind::SloBurn => "slo_burn",
            AlertKind::DailyReport => "daily_report",
            AlertKind::Quota => "quota",
        }
    }
}

impl fmt::Display for AlertKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which problem: the same signature is the same problem, whatever the partition or attempt.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Signature {
    pub pipeline: String,
    pub kind: AlertKind,
    /// The task or resource, or empty for the run and the schedule.
    pub subject: String,
}

/// Whether a message raises a problem or says it healed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Firing,
    Resolved,
}

/// One message to deliver.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertMessage {
    pub signature: Signature,
    pub status: Status,
    /// When the event happened (milliseconds since the epoch).
    pub at: Millis,
    pub partition: Option<String>,
    pub run: Option<RunId>,
    /// What happened, in a sentence.
    pub detail: String,
    /// Occurrences held back by the rate limit since the last alert of this signature.
    pub suppressed: u32,
}

impl AlertMessage {
    /// The one-line text a chat channel shows.
    pub fn text(&self) -> String {
        let subject = if self.signature.subject.is_empty() {
            String::new()
        } else {
            format!(" {}", self.signature.subject)
        };
        let head = match self.status {
            Status::Firing => format!(
                "[keel] {}{subject}: {}",
                self.signature.pipeline, self.signature.kind
            ),
            Status::Resolved => format!(
                "[keel] resolved: {}{subject}: {}",
                self.signature.pipeline, self.signature.kind
            ),
        };
        let partition = self
            .partition
            .as_deref()
            .map(|partition| format!(" ({partition})"))
            .unwrap_or_default();
        let held = if self.suppressed > 0 {
            format!("; {} more held back by the rate limit", self.suppressed)
        } else {
            String::new()
        };
        format!("{head}{partition}: {}{held}", self.detail)
    }
}

/// How often problems are told; from `[alerts]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlertPolicy {
    pub max_per_hour: u32,
    pub degraded_grace: Millis,
    pub breaker_open_for: Millis,
}

/// An open problem.
#[derive(Debug, Default)]
struct Open {
    /// The run that last reported it, so one run's problem is told once.
    last_run: Option<RunId>,
    suppressed: u32,
}

/// A run that ended `degraded`.
#[derive(Debug)]
struct DegradedRun {
    partition: String,
    since: Millis,
    told: bool,
}

/// A breaker that is open now.
#[derive(Debug)]
struct OpenBreaker {
    since: Millis,
    told: bool,
}

/// See the module documentation.
#[derive(Debug)]
pub struct AlertBook {
    pipeline: String,
    policy: AlertPolicy,
    open: BTreeMap<Signature, Open>,
    /// Per signature, when its alerts went out in the last hour (kept across resolutions).
    sent: HashMap<Signature, VecDeque<Millis>>,
    /// Runs that ended `degraded`, until they are fixed or accepted.
    degraded: BTreeMap<RunId, DegradedRun>,
    breakers: BTreeMap<String, OpenBreaker>,
    /// Tasks whose attempt, ending now, failed a `warn` check: its success does not heal the
    /// warning. A check's event comes just before its attempt's end.
    warned: std::collections::HashSet<String>,
    /// Runs a phase's completeness check failed in: their end heals no phase check.
    phase_flagged: std::collections::HashSet<RunId>,
    /// (task, metric, partition) of the anomalies told, so each is told once.
    anomalies_told: std::collections::HashSet<(String, String, String)>,
    /// Per resource, the period and level (1 past `warn`, 2 used up) of its last quota alert.
    quotas_told: HashMap<String, (String, u8)>,
    /// (run, task) of tasks whose attempt just asked to heal: its end, which comes next, is not
    /// a failure to tell when the heal was made (the task runs again after its upstream), and
    /// was told already when the heal budget was spent.
    heal_told: std::collections::HashSet<(RunId, String)>,
}

impl AlertBook {
    pub fn new(pipeline: &str, policy: AlertPolicy) -> AlertBook {
        AlertBook {
            pipeline: pipeline.to_string(),
            policy,
            open: BTreeMap::new(),
            sent: HashMap::new(),
            degraded: BTreeMap::new(),
            breakers: BTreeMap::new(),
            warned: std::collections::HashSet::new(),
            phase_flagged: std::collections::HashSet::new(),
            anomalies_told: std::collections::HashSet::new(),
            quotas_told: HashMap::new(),
            heal_told: std::collections::HashSet::new(),
        }
    }

    /// Takes in one event that happened at `now`; returns the messages it calls for.
    pub fn observe(&mut self, event: &Progress, now: Millis) -> Vec<AlertMessage> {
        let mut messages = Vec::new();
        match event {
            Progress::AttemptFinished {
                run,
                partition,
                task,
                outcome,
                message,
                retry_at,
                ..
            } => {
                let warned = self.warned.remove(task);
                let heal_told = self.heal_told.remove(&(*run, task.clone()));
                if outcome.is_complete() {
                    self.task_healed(task, Some(partition), now, &mut messages);
                    if !warned {
                        let detail = format!("{task} passed its checks");
                        self.resolve(
                            AlertKind::CheckWarned,
                            task,
                            Some(partition),
                            detail,
                            now,
                            &mut messages,
                        );
                    }
                } else if retry_at.is_none()
                    && !heal_told
                    && let Some(kind) = given_up_kind(*outcome)
                {
                    let detail = match message {
                        Some(message) => format!("{task} ended {outcome}: {message}"),
                        None => format!("{task} ended {outcome}"),
                    };
                    self.occurred(kind, task, *run, partition, detail, now, &mut messages);
                }
            }
            Progress::TasksSettled {
                run,
                partition,
                tasks,
                outcome,
            } => {
                // Tasks that ended without an attempt: a sensor that gave up, a resource that
                // stayed down. Upstream failures and cancellations are not problems of their own.
                let kind = match outcome {
                    Outcome::NotReady | Outcome::TimedOut => Some(AlertKind::DeadlineMissed),
                    Outcome::FailedPermanent => Some(AlertKind::FailedPermanent),
                    Outcome::Failed | Outcome::Stalled | Outcome::Lost => {
                        Some(AlertKind::RetriesExhausted)
                    }
                    _ => None,
                };
                for task in tasks {
                    if outcome.is_complete() {
                        self.task_healed(task, Some(partition), now, &mut messages);
                    } else if let Some(kind) = kind {
                        let detail = format!("{task} ended {outcome} without an attempt");
                        self.occurred(kind, task, *run, partition, detail, now, &mut messages);
                    }
                }
            }
            Progress::SensorPolled {
                task,
                partition,
                verdict: "ready",
                ..
            } => self.task_healed(task, Some(partition), now, &mut messages),
            Progress::RunFinished {
                run,
                partition,
                state,
                ..
            } => {
                let flagged = self.phase_flagged.remove(run);
                if !flagged && *state == RunState::Succeeded {
                    self.phase_checks_healed(partition, now, &mut messages);
                }
                self.run_finished(*run, partition, *state, now, &mut messages);
            }
            Progress::BreakerChanged {
                resource, state, ..
            } => match *state {
                "closed" => {
                    self.breakers.remove(resource);
                    let detail = format!("the breaker of {resource} closed");
                    self.resolve(
                        AlertKind::BreakerOpen,
                        resource,
                        None,
                        detail,
                        now,
                        &mut messages,
                    );
                }
                _ => {
                    // Half open is not healed yet: the episode goes on from when it opened.
                    self.breakers
                        .entry(resource.clone())
                        .or_insert(OpenBreaker {
                            since: now,
                            told: false,
                        });
                }
            },
            Progress::RolloutDecided {
                run,
                partition,
                task,
                status,
                detail,
                ..
            } => match status {
                keel_model::VersionStatus::RolledBack => {
                    let signature = self.signature(AlertKind::RolledBack, task);
                    self.fire(
                        signature,
                        None,
                        Some(*run),
                        Some(partition),
                        format!("{task}: {detail}"),
                        now,
                        &mut messages,
                    );
                }
                keel_model::VersionStatus::Promoted => {
                    let detail = format!("{task}: {detail}");
                    self.resolve(
                        AlertKind::RolledBack,
                        task,
                        Some(partition),
                        detail,
                        now,
                        &mut messages,
                    );
                }
                _ => {}
            },
            Progress::CheckFailed {
                run,
                partition,
                task,
                severity: keel_model::Severity::Warn,
                detail,
                attempt,
            } => {
                if *attempt == 0 {
                    self.phase_flagged.insert(*run);
                } else {
                    self.warned.insert(task.clone());
                }
                let detail = format!("{task}: {detail}");
                self.occurred(
                    AlertKind::CheckWarned,
                    task,
                    *run,
                    partition,
                    detail,
                    now,
                    &mut messages,
                );
            }
            // A phase's block check failed the run as it ended: no retry will come of itself.
            Progress::CheckFailed {
                run,
                partition,
                task,
                attempt: 0,
                severity: keel_model::Severity::Block,
                detail,
            } => {
                self.phase_flagged.insert(*run);
                self.occurred(
                    AlertKind::CheckFailed,
                    task,
                    *run,
                    partition,
                    detail.clone(),
                    now,
                    &mut messages,
                );
            }
            Progress::HealRequested { run, task, .. } => {
                self.heal_told.insert((*run, task.clone()));
            }
            Progress::HealExhausted {
                run,
                partition,
                task,
                detail,
            } => {
                self.heal_told.insert((*run, task.clone()));
                self.occurred(
                    AlertKind::HealExhausted,
                    task,
                    *run,
                    partition,
                    detail.clone(),
                    now,
                    &mut messages,
                );
            }
            Progress::ScheduleSkipped { reason, .. } => {
                let signature = self.signature(AlertKind::ScheduleMissed, "");
                let detail = format!("a fire of the schedule could not run: {reason}");
                self.fire(signature, None, None, None, detail, now, &mut messages);
            }
            Progress::GapUnrepaired {
                run,
                partition,
                detail,
                ..
            } => {
                // The subject is the partition: each gap is its own problem, told once.
                let signature = self.signature(AlertKind::GapUnrepaired, partition);
                self.fire(
                    signature,
                    Some(*run),
                    Some(*run),
                    Some(partition),
                    detail.clone(),
                    now,
                    &mut messages,
                );
            }
            Progress::RunScheduled {
                partition,
                joined: false,
                ..
            } => {
                let detail = format!("the schedule started a run of {partition}");
                self.resolve(
                    AlertKind::ScheduleMissed,
                    "",
                    Some(partition),
                    detail,
                    now,
                    &mut messages,
                );
            }
            _ => {}
        }
        messages.extend(self.tick(now));
        messages
    }

    /// A run ended: a degraded one is watched, a succeeded one heals its partition's.
    fn run_finished(
        &mut self,
        run: RunId,
        partition: &str,
        state: RunState,
        now: Millis,
        messages: &mut Vec<AlertMessage>,
    ) {
        match state {
            RunState::Degraded => {
                self.degraded.insert(
                    run,
                    DegradedRun {
                        partition: partition.to_string(),
                        since: now,
                        told: false,
                    },
                );
            }
            RunState::Succeeded => {
                // A degraded run that was retried to success, or any later good run.
                self.degraded.remove(&run);
                self.degraded
                    .retain(|_, degraded| degraded.partition != partition);
                if self.degraded.is_empty() {
                    let detail = format!("run {run} of {partition} succeeded");
                    self.resolve(
                        AlertKind::RunDegraded,
                        "",
                        Some(partition),
                        detail,
                        now,
                        messages,
                    );
                }
            }
            _ => {}
        }
    }

    /// An anomaly found in `partition` (of `run`) for `task`'s `metric`; `detail` shows it with
    /// its baseline. Told once per task, metric and partition, whatever reruns follow.
    pub fn anomaly(
        &mut self,
        task: &str,
        metric: &str,
        run: RunId,
        partition: &str,
        detail: String,
        now: Millis,
    ) -> Vec<AlertMessage> {
        let mut messages = Vec::new();
        let key = (task.to_string(), metric.to_string(), partition.to_string());
        if self.anomalies_told.insert(key) {
            let signature = self.signature(AlertKind::Anomaly, &format!("{task} {metric}"));
            let detail = format!("{task}: {detail}");
            self.fire(
                signature,
                None,
                Some(run),
                Some(partition),
                detail,
                now,
                &mut messages,
            );
        }
        messages
    }

    /// Where a quota stands: told once when it passes its `warn` share in a period and once
    /// when it is used up; resolved once a new period starts below the warning.
    pub fn quota(
        &mut self,
        quota: &crate::tokens::QuotaStanding,
        now: Millis,
    ) -> Vec<AlertMessage> {
        let mut messages = Vec::new();
        let level = if quota.exhausted() {
            2
        } else if quota.warned() {
            1
        } else {
            0
        };
        let told = self.quotas_told.get(&quota.resource);
        let same_period = told.is_some_and(|(period, _)| *period == quota.period);
        let told_level = if same_period {
            told.map_or(0, |(_, level)| *level)
        } else {
            0
        };
        if level > told_level {
            self.quotas_told
                .insert(quota.resource.clone(), (quota.period.clone(), level));
            let signature = self.signature(AlertKind::Quota, &quota.resource);
            let detail = if level == 2 {
                format!(
                    "used up until the period ends (keel token refuses it): {}",
                    quota.describe()
                )
            } else {
                format!("past its warning: {}", quota.describe())
            };
            // A second level in one period is a new message, not one held back as a repeat.
            self.open.remove(&signature);
            self.fire(signature, None, None, None, detail, now, &mut messages);
        } else if level == 0 && told.is_some() && !same_period {
            self.quotas_told.remove(&quota.resource);
            let detail = format!("a new quota period started: {}", quota.describe());
            self.resolve(
                AlertKind::Quota,
                &quota.resource,
                None,
                detail,
                now,
                &mut messages,
            );
        }
        messages
    }

    /// An SLO's budget burns (`burning` names the rules that fire, empty when none does): the
    /// first tick that finds it burning alerts, and the first that finds it no longer burning
    /// resolves it.
    pub fn slo_burn(
        &mut self,
        slo: &str,
        burning: Option<String>,
        now: Millis,
    ) -> Vec<AlertMessage> {
        let mut messages = Vec::new();
        let signature = self.signature(AlertKind::SloBurn, slo);
        match burning {
            Some(detail) if !self.open.contains_key(&signature) => {
                self.fire(signature, None, None, None, detail, now, &mut messages);
            }
            Some(_) => {}
            None => {
                let detail = format!("the error budget of {slo} no longer burns fast");
                self.resolve(AlertKind::SloBurn, slo, None, detail, now, &mut messages);
            }
        }
        messages
    }

    /// The daily report of `date`, as a message to every sink. It is not rate limited: one a
    /// day.
    pub fn daily_report(&self, date: &str, text: String, now: Millis) -> AlertMessage {
        AlertMessage {
            signature: self.signature(AlertKind::DailyReport, ""),
            status: Status::Firing,
            at: now,
            partition: Some(date.to_string()),
            run: None,
            detail: text,
            suppressed: 0,
        }
    }

    /// A run succeeded with no phase short of its checks: the phases' check alerts healed.
    fn phase_checks_healed(
        &mut self,
        partition: &str,
        now: Millis,
        messages: &mut Vec<AlertMessage>,
    ) {
        let open: Vec<Signature> = self
            .open
            .keys()
            .filter(|signature| {
                matches!(
                    signature.kind,
                    AlertKind::CheckFailed | AlertKind::CheckWarned
                ) && signature.subject.starts_with("phase ")
            })
            .cloned()
            .collect();
        for signature in open {
            let detail = format!("{} passed its checks", signature.subject);
            self.resolve(
                signature.kind,
                &signature.subject,
                Some(partition),
                detail,
                now,
                messages,
            );
        }
    }

    /// The runs that ended `degraded` and were not fixed or accepted since, with when they
    /// ended: an acceptance recorded after that heals them.
    pub fn degraded_runs(&self) -> Vec<(RunId, Millis)> {
        self.degraded
            .iter()
            .map(|(run, degraded)| (*run, degraded.since))
            .collect()
    }

    /// A degraded run was accepted (`keel accept`): it no longer needs anyone.
    pub fn run_accepted(&mut self, run: RunId, now: Millis) -> Vec<AlertMessage> {
        let mut messages = Vec::new();
        if let Some(DegradedRun { partition, .. }) = self.degraded.remove(&run)
            && self.degraded.is_empty()
        {
            let detail = format!("run {run} of {partition} was accepted");
            self.resolve(
                AlertKind::RunDegraded,
                "",
                Some(&partition),
                detail,
                now,
                &mut messages,
            );
        }
        messages
    }

    /// The alerts that are due because time passed: degraded runs past their grace, breakers
    /// open too long.
    pub fn tick(&mut self, now: Millis) -> Vec<AlertMessage> {
        let mut messages = Vec::new();
        let grace = self.policy.degraded_grace;
        let mut overdue = Vec::new();
        for (run, degraded) in &mut self.degraded {
            // Told once per run; it stays known as degraded until something heals it.
            if !degraded.told && now - degraded.since >= grace {
                degraded.told = true;
                overdue.push((*run, degraded.partition.clone(), degraded.since));
            }
        }
        for (run, partition, since) in overdue {
            let detail = format!(
                "run {run} of {partition} is still degraded {} after it ended; fix and retry it, or `keel accept` it",
                keel_model::format_duration(std::time::Duration::from_millis(
                    (now - since).max(0) as u64
                ))
            );
            let signature = self.signature(AlertKind::RunDegraded, "");
            self.fire(
                signature,
                Some(run),
                Some(run),
                Some(&partition),
                detail,
                now,
                &mut messages,
            );
        }
        let due: Vec<(String, Millis)> = self
            .breakers
            .iter()
            .filter(|(_, open)| !open.told && now - open.since >= self.policy.breaker_open_for)
            .map(|(resource, open)| (resource.clone(), open.since))
            .collect();
        for (resource, since) in due {
            if let Some(open) = self.breakers.get_mut(&resource) {
                open.told = true;
            }
            let detail = format!(
                "the breaker of {resource} has been open for {}; check the dependency",
                keel_model::format_duration(std::time::Duration::from_millis(
                    (now - since).max(0) as u64
                ))
            );
            let signature = self.signature(AlertKind::BreakerOpen, &resource);
            self.fire(signature, None, None, None, detail, now, &mut messages);
        }
        messages
    }

    /// When [`AlertBook::tick`] next has something to do, if anything is pending.
    #[allow(dead_code)] // the serve loop ticks on an interval; kept for a timer-driven caller
    pub fn next_due(&self) -> Option<Millis> {
        let degraded = self
            .degraded
            .values()
            .filter(|degraded| !degraded.told)
            .map(|degraded| degraded.since + self.policy.degraded_grace);
        let breakers = self
            .breakers
            .values()
            .filter(|open| !open.told)
            .map(|open| open.since + self.policy.breaker_open_for);
        degraded.chain(breakers).min()
    }

    fn signature(&self, kind: AlertKind, subject: &str) -> Signature {
        Signature {
            pipeline: self.pipeline.clone(),
            kind,
            subject: subject.to_string(),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn occurred(
        &mut self,
        kind: AlertKind,
        task: &str,
        run: RunId,
        partition: &str,
        detail: String,
        now: Millis,
        messages: &mut Vec<AlertMessage>,
    ) {
        let signature = self.signature(kind, task);
        self.fire(
            signature,
            Some(run),
            Some(run),
            Some(partition),
            detail,
            now,
            messages,
        );
    }

    /// One occurrence of a problem: an alert if the rate limit allows, else counted.
    #[allow(clippy::too_many_arguments)]
    fn fire(
        &mut self,
        signature: Signature,
        dedup_run: Option<RunId>,
        run: Option<RunId>,
        partition: Option<&str>,
        detail: String,
        now: Millis,
        messages: &mut Vec<AlertMessage>,
    ) {
        let open = self.open.entry(signature.clone()).or_default();
        if dedup_run.is_some() && open.last_run == dedup_run {
            return;
        }
        open.last_run = dedup_run;
        let sent = self.sent.entry(signature.clone()).or_default();
        while sent.front().is_some_and(|at| *at <= now - HOUR) {
            sent.pop_front();
        }
        if sent.len() >= self.policy.max_per_hour as usize {
            open.suppressed += 1;
            return;
        }
        sent.push_back(now);
        let suppressed = std::mem::take(&mut open.suppressed);
        messages.push(AlertMessage {
            signature,
            status: Status::Firing,
            at: now,
            partition: partition.map(str::to_string),
            run,
            detail,
            suppressed,
        });
    }

    /// The problem healed: one `resolved` message if it was open.
    fn resolve(
        &mut self,
        kind: AlertKind,
        subject: &str,
        partition: Option<&str>,
        detail: String,
        now: Millis,
        messages: &mut Vec<AlertMessage>,
    ) {
        let signature = self.signature(kind, subject);
        if let Some(open) = self.open.remove(&signature) {
            messages.push(AlertMessage {
                signature,
                status: Status::Resolved,
                at: now,
                partition: partition.map(str::to_string),
                run: None,
                detail,
                suppressed: open.suppressed,
            });
        }
    }

    /// A task completed: whatever was open about it healed.
    fn task_healed(
        &mut self,
        task: &str,
        partition: Option<&str>,
        now: Millis,
        messages: &mut Vec<AlertMessage>,
    ) {
        for kind in [
            AlertKind::FailedPermanent,
            AlertKind::RetriesExhausted,
            AlertKind::DeadlineMissed,
            AlertKind::CheckFailed,
            AlertKind::HealExhausted,
        ] {
            let detail = format!("{task} completed");
            self.resolve(kind, task, partition, detail, now, messages);
        }
    }
}

/// What an attempt that will not be retried means, if anything needs someone.
fn given_up_kind(outcome: Outcome) -> Option<AlertKind> {
    match outcome {
        Outcome::FailedPermanent => Some(AlertKind::FailedPermanent),
        Outcome::TimedOut | Outcome::NotReady => Some(AlertKind::DeadlineMissed),
        Outcome::Failed | Outcome::Stalled | Outcome::Lost => Some(AlertKind::RetriesExhausted),
        Outcome::FailedCheck => Some(AlertKind::CheckFailed),
        // Cancelled on request, or never a failure of its own.
        Outcome::Cancelled
        | Outcome::UpstreamFailed
        | Outcome::Succeeded
        | Outcome::NoData
        | Outcome::Skipped => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Millis = 60_000;

    fn policy() -> AlertPolicy {
        AlertPolicy {
            max_per_hour: 5,
            degraded_grace: 30 * MINUTE,
            breaker_open_for: 10 * MINUTE,
        }
    }

    fn finished(run: u64, task: &str, outcome: Outcome, retry_at: Option<Millis>) -> Progress {
        Progress::AttemptFinished {
            run: RunId(run as _),
            partition: "2026-12-01".into(),
            task: task.into(),
            attempt: 1,
            outcome,
            message: Some("boom".into()),
            retry_at,
            trace: keel_model::TraceId::from_stored("0af7651916cd43dd8448eb211c80319c"),
            span: keel_model::TraceId::from_stored("0af7651916cd43dd8448eb211c80319c").root_span(),
            started_at: 0,
            finished_at: 1_000,
        }
    }

    fn standing(period: &str, used: u32) -> crate::tokens::QuotaStanding {
        crate::tokens::QuotaStanding {
            resource: "odds_api".into(),
            period: period.into(),
            used,
            limit: 500,
            warn: Some(0.8),
            resets_at: 0,
        }
    }

    /// A month of quota use looked at again and again: one alert at the warning, one when used
    /// up, none in between or after; the next month resolves it, and warns again in its turn.
    #[test]
    fn a_quota_alerts_once_per_level_and_period_and_resolves_in_the_next_period() {
        let mut book = AlertBook::new("hoops", policy());
        let mut now: Millis = 1_780_000_000_000;
        let mut told = Vec::new();
        for used in [10, 399, 400, 401, 450, 499, 500, 500, 500] {
            now += MINUTE;
            told.extend(book.quota(&standing("2026-12", used), now));
        }
        assert_eq!(told.len(), 2, "{told:?}");
        assert!(told.iter().all(|message| message.status == Status::Firing));
        assert!(
            told[0]
                .detail
                .starts_with("past its warning: odds_api 400/500"),
            "{told:?}"
        );
        assert!(
            told[1].detail.starts_with("used up until the period ends"),
            "{told:?}"
        );
        assert_eq!(told[1].signature.kind, AlertKind::Quota);
        assert_eq!(told[1].signature.subject, "odds_api");

        let resolved = book.quota(&standing("2027-01", 3), now + MINUTE);
        assert_eq!(resolved.len(), 1, "{resolved:?}");
        assert_eq!(resolved[0].status, Status::Resolved);
        assert!(
            book.quota(&standing("2027-01", 4), now + 2 * MINUTE)
                .is_empty()
        );
        let again = book.quota(&standing("2027-01", 420), now + 3 * MINUTE);
        assert_eq!(again.len(), 1, "{again:?}");
        assert_eq!(again[0].status, Status::Firing);
    }

    /// A run every 10 minutes for a day on a manual clock, `load` failing permanently in each:
    /// never more than 5 alerts in any hour, the held-back ones counted, then one resolved.
    #[test]
    fn a_day_of_permanent_failures_alerts_at_most_five_an_hour_then_resolves_once() {
        let mut book = AlertBook::new("hoops", policy());
        let start: Millis = 1_780_000_000_000;
        let mut firing: Vec<AlertMessage> = Vec::new();
        let runs = 24 * 6;
        for run in 0..runs {
            let now = start + run * 10 * MINUTE;
            let event = finished(run as u64 + 1, "load", Outcome::FailedPermanent, None);
            let messages = book.observe(&event, now);
            // The same run reporting the same failure again is not a new occurrence.
            assert!(book.observe(&event, now + 1).is_empty());
            for message in messages {
                assert_eq!(message.status, Status::Firing);
                assert_eq!(message.signature.kind, AlertKind::FailedPermanent);
                assert_eq!(message.signature.subject, "load");
                firing.push(message);
            }
        }
        for message in &firing {
            let in_hour = firing
                .iter()
                .filter(|other| other.at > message.at - HOUR && other.at <= message.at)
                .count();
            assert!(
                in_hour <= 5,
                "{in_hour} alerts in the hour up to {}",
                message.at
            );
        }
        // Five an hour, and nothing lost: every occurrence was sent or counted as held back.
        assert_eq!(firing.len(), 5 * 24);
        let held: u32 = firing.iter().map(|message| message.suppressed).sum();
        let last_held = runs as u32 - firing.len() as u32 - held;
        assert!(firing[5].suppressed == 1 && firing[5].text().contains("1 more held back"));
        let healed_at = start + runs * 10 * MINUTE;
        let resolved = book.observe(&finished(999, "load", Outcome::Succeeded, None), healed_at);
        assert_eq!(resolved.len(), 1, "{resolved:?}");
        assert_eq!(resolved[0].status, Status::Resolved);
        assert_eq!(resolved[0].suppressed, last_held);
        assert!(
            resolved[0]
                .text()
                .starts_with("[keel] resolved: hoops load: failed_permanent")
        );
        // Healed once: later successes say nothing more.
        let again = book.observe(&finished(1000, "load", Outcome::Succeeded, None), healed_at);
        assert!(again.is_empty());
    }

    fn check_failed(run: u64, task: &str, severity: keel_model::Severity) -> Progress {
        Progress::CheckFailed {
            run: RunId(run as _),
            partition: "2026-12-01".into(),
            task: task.into(),
            attempt: 1,
            severity,
            detail: "rows 150 is below the minimum 200".into(),
        }
    }

    #[test]
    fn a_heal_is_not_a_failure_and_a_spent_budget_alerts_once_in_place_of_it() {
        let mut book = AlertBook::new("hoops", policy());
        let healing = Progress::HealRequested {
            run: RunId(1),
            partition: "2026-12-01".into(),
            task: "grade".into(),
            heal: vec!["scrape".into()],
            used: 1,
            budget: 1,
        };
        assert!(book.observe(&healing, 0).is_empty());
        // The healing attempt ends failed_check and waits for its upstream: nothing to tell.
        let waiting = finished(1, "grade", Outcome::FailedCheck, None);
        assert!(book.observe(&waiting, 1).is_empty());
        let spent = Progress::HealExhausted {
            run: RunId(1),
            partition: "2026-12-01".into(),
            task: "grade".into(),
            detail: "grade ended failed_check with its heal budget spent (1 of 1)".into(),
        };
        let told = book.observe(&spent, 2);
        assert_eq!(told.len(), 1, "{told:?}");
        assert_eq!(told[0].signature.kind, AlertKind::HealExhausted);
        assert_eq!(
            told[0].text(),
            "[keel] hoops grade: heal_exhausted (2026-12-01): grade ended failed_check with its heal budget spent (1 of 1)"
        );
        // The attempt's end that follows is the same problem, not a second alert.
        assert!(book.observe(&waiting, 3).is_empty());
        // A later run whose task completes resolves it.
        let resolved = book.observe(&finished(2, "grade", Outcome::Succeeded, None), 4);
        assert_eq!(resolved.len(), 1, "{resolved:?}");
        assert_eq!(resolved[0].signature.kind, AlertKind::HealExhausted);
        assert_eq!(resolved[0].status, Status::Resolved);
    }

    #[test]
    fn a_warn_check_alerts_once_per_run_and_a_passing_run_resolves_it() {
        use keel_model::Severity::{Block, Warn};
        let mut book = AlertBook::new("hoops", policy());
        let warned = book.observe(&check_failed(1, "load", Warn), 0);
        assert_eq!(warned.len(), 1);
        assert_eq!(warned[0].signature.kind, AlertKind::CheckWarned);
        assert_eq!(
            warned[0].text(),
            "[keel] hoops load: check_warned (2026-12-01): load: rows 150 is below the minimum 200"
        );
        // A second check of the same attempt failing is the same run's problem.
        assert!(book.observe(&check_failed(1, "load", Warn), 1).is_empty());
        // The attempt that warned succeeded: that does not heal the warning.
        assert!(
            book.observe(&finished(1, "load", Outcome::Succeeded, None), 2)
                .is_empty()
        );
        // A block check alerts only once no retry is left, as failed_check.
        assert!(book.observe(&check_failed(2, "grade", Block), 3).is_empty());
        let retried = book.observe(&finished(2, "grade", Outcome::FailedCheck, Some(10)), 3);
        assert!(retried.is_empty());
        let given_up = book.observe(&finished(3, "grade", Outcome::FailedCheck, None), 4);
        assert_eq!(given_up[0].signature.kind, AlertKind::CheckFailed);
        // The next run of load passes its checks: resolved once.
        let resolved = book.observe(&finished(4, "load", Outcome::Succeeded, None), 5);
        assert_eq!(resolved.len(), 1, "{resolved:?}");
        assert_eq!(resolved[0].status, Status::Resolved);
        assert_eq!(resolved[0].signature.kind, AlertKind::CheckWarned);
        let healed = book.observe(&finished(5, "grade", Outcome::Succeeded, None), 6);
        assert_eq!(healed[0].signature.kind, AlertKind::CheckFailed);
    }

    fn run_finished(run: i64, state: RunState) -> Progress {
        Progress::RunFinished {
            run: RunId(run),
            partition: "2026-12-01".into(),
            state,
            trace: keel_model::TraceId::from_stored("0af7651916cd43dd8448eb211c80319c"),
            started_at: 0,
            finished_at: 1_000,
        }
    }

    #[test]
    fn a_phase_check_alerts_and_a_later_run_that_passes_it_resolves_it() {
        let mut book = AlertBook::new("hoops", policy());
        let phase_check = Progress::CheckFailed {
            run: RunId(1),
            partition: "2026-12-01".into(),
            task: "phase analytics".into(),
            attempt: 0,
            severity: keel_model::Severity::Block,
            detail: "phase analytics: 3 of 5 complete (60%), below the check's 80%".into(),
        };
        let fired = book.observe(&phase_check, 0);
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].signature.kind, AlertKind::CheckFailed);
        assert_eq!(fired[0].signature.subject, "phase analytics");
        assert!(
            book.observe(&run_finished(1, RunState::Failed), 1)
                .is_empty()
        );
        let resolved = book.observe(&run_finished(2, RunState::Succeeded), 2);
        assert_eq!(resolved.len(), 1, "{resolved:?}");
        assert_eq!(resolved[0].status, Status::Resolved);
        assert_eq!(resolved[0].signature.subject, "phase analytics");
    }

    #[test]
    fn an_anomaly_is_told_once_per_partition_with_its_baseline() {
        let mut book = AlertBook::new("hoops", policy());
        let detail = "accuracy 0.19, usual 0.39–0.5 over 28 days".to_string();
        let told = book.anomaly(
            "grade",
            "accuracy",
            RunId(7),
            "2026-12-01",
            detail.clone(),
            0,
        );
        assert_eq!(told.len(), 1);
        assert_eq!(
            told[0].text(),
            "[keel] hoops grade accuracy: anomaly (2026-12-01): grade: accuracy 0.19, usual 0.39–0.5 over 28 days"
        );
        // A rerun of the same partition finds it again: not told again.
        assert!(
            book.anomaly(
                "grade",
                "accuracy",
                RunId(8),
                "2026-12-01",
                detail.clone(),
                1
            )
            .is_empty()
        );
        assert_eq!(
            book.anomaly("grade", "accuracy", RunId(9), "2026-12-02", detail, 2)
                .len(),
            1
        );
    }

    #[test]
    fn an_slo_burn_alerts_when_it_starts_and_resolves_when_it_stops() {
        let mut book = AlertBook::new("hoops", policy());
        let burning = Some("fast burn: 1 h at 20.0, 5 min at 30.0".to_string());
        let fired = book.slo_burn("fresh_by_ten", burning.clone(), 0);
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].signature.kind, AlertKind::SloBurn);
        assert!(book.slo_burn("fresh_by_ten", burning, 1_000).is_empty());
        let resolved = book.slo_burn("fresh_by_ten", None, 2_000);
        assert_eq!(resolved.len(), 1);
        assert_eq!(resolved[0].status, Status::Resolved);
        assert!(book.slo_burn("fresh_by_ten", None, 3_000).is_empty());
    }

    #[test]
    fn no_data_retries_and_upstream_failures_never_alert() {
        let mut book = AlertBook::new("hoops", policy());
        let events = [
            finished(1, "holiday", Outcome::NoData, None),
            // A failure that will be retried is not actionable yet.
            finished(1, "scrape", Outcome::Failed, Some(5_000)),
            finished(1, "scrape", Outcome::Cancelled, None),
            Progress::TasksSettled {
                run: RunId(1),
                partition: "2026-12-01".into(),
                tasks: vec!["report".into()],
                outcome: Outcome::UpstreamFailed,
            },
            Progress::TasksSettled {
                run: RunId(1),
                partition: "2026-12-01".into(),
                tasks: vec!["holiday".into()],
                outcome: Outcome::NoData,
            },
            Progress::SensorPolled {
                run: RunId(1),
                partition: "2026-12-01".into(),
                task: "holiday".into(),
                verdict: "no_data",
            },
        ];
        for (step, event) in events.iter().enumerate() {
            let messages = book.observe(event, step as Millis * MINUTE);
            assert!(messages.is_empty(), "{event:?} alerted: {messages:?}");
        }
        assert!(book.tick(1_000 * HOUR).is_empty());
    }

    #[test]
    fn each_actionable_kind_fires_once_and_resolves_once() {
        let mut book = AlertBook::new("hoops", policy());
        let kinds = |messages: &[AlertMessage]| -> Vec<(AlertKind, Status, String)> {
            messages
                .iter()
                .map(|m| (m.signature.kind, m.status, m.signature.subject.clone()))
                .collect()
        };
        // Retries used up, and a deadline missed (a timeout with no retry, a sensor that gave up).
        let out = book.observe(&finished(1, "scrape", Outcome::Failed, None), 0);
        assert_eq!(
            kinds(&out),
            [(AlertKind::RetriesExhausted, Status::Firing, "scrape".into())]
        );
        let out = book.observe(&finished(1, "feed", Outcome::TimedOut, None), 0);
        assert_eq!(
            kinds(&out),
            [(AlertKind::DeadlineMissed, Status::Firing, "feed".into())]
        );
        let settled = Progress::TasksSettled {
            run: RunId(1),
            partition: "2026-12-01".into(),
            tasks: vec!["props".into()],
            outcome: Outcome::NotReady,
        };
        let out = book.observe(&settled, 0);
        assert_eq!(
            kinds(&out),
            [(AlertKind::DeadlineMissed, Status::Firing, "props".into())]
        );
        let ready = Progress::SensorPolled {
            run: RunId(2),
            partition: "2026-12-02".into(),
            task: "props".into(),
            verdict: "ready",
        };
        let out = book.observe(&ready, MINUTE);
        assert_eq!(
            kinds(&out),
            [(AlertKind::DeadlineMissed, Status::Resolved, "props".into())]
        );

        // A degraded run alerts only once its grace is over, and heals when a run succeeds.
        let degraded = Progress::RunFinished {
            run: RunId(1),
            partition: "2026-12-01".into(),
            state: RunState::Degraded,
            trace: keel_model::TraceId::from_stored("0af7651916cd43dd8448eb211c80319c"),
            started_at: 0,
            finished_at: 0,
        };
        assert!(book.observe(&degraded, 0).is_empty());
        assert_eq!(book.next_due(), Some(30 * MINUTE));
        assert!(book.tick(30 * MINUTE - 1).is_empty());
        let out = book.tick(30 * MINUTE);
        assert_eq!(
            kinds(&out),
            [(AlertKind::RunDegraded, Status::Firing, String::new())]
        );
        assert!(out[0].text().contains("keel accept"));
        assert!(book.tick(40 * MINUTE).is_empty());
        let succeeded = Progress::RunFinished {
            run: RunId(1),
            partition: "2026-12-01".into(),
            state: RunState::Succeeded,
            trace: keel_model::TraceId::from_stored("0af7651916cd43dd8448eb211c80319c"),
            started_at: 0,
            finished_at: 0,
        };
        let out = book.observe(&succeeded, 41 * MINUTE);
        assert_eq!(
            kinds(&out),
            [(AlertKind::RunDegraded, Status::Resolved, String::new())]
        );
        // Accepted after it was told: one resolution.
        let degraded_told = Progress::RunFinished {
            run: RunId(2),
            partition: "2026-12-02".into(),
            state: RunState::Degraded,
            trace: keel_model::TraceId::from_stored("0af7651916cd43dd8448eb211c80319c"),
            started_at: 0,
            finished_at: 0,
        };
        assert!(book.observe(&degraded_told, 0).is_empty());
        assert_eq!(book.degraded_runs(), vec![(RunId(2), 0)]);
        let out = book.tick(31 * MINUTE);
        assert_eq!(
            kinds(&out),
            [(AlertKind::RunDegraded, Status::Firing, String::new())]
        );
        let out = book.run_accepted(RunId(2), 32 * MINUTE);
        assert_eq!(
            kinds(&out),
            [(AlertKind::RunDegraded, Status::Resolved, String::new())]
        );
        assert!(book.degraded_runs().is_empty());
        // Accepted before its grace ran out: nothing was told, so nothing resolves.
        let degraded_again = Progress::RunFinished {
            run: RunId(3),
            partition: "2026-12-03".into(),
            state: RunState::Degraded,
            trace: keel_model::TraceId::from_stored("0af7651916cd43dd8448eb211c80319c"),
            started_at: 0,
            finished_at: 0,
        };
        assert!(book.observe(&degraded_again, HOUR).is_empty());
        assert!(book.run_accepted(RunId(3), HOUR + MINUTE).is_empty());
        assert!(book.tick(3 * HOUR).is_empty());

        // A breaker open past breaker_open_for alerts once; half open is still open.
        let breaker = |state: &'static str| Progress::BreakerChanged {
            resource: "feed_api".into(),
            state,
            detail: state.into(),
        };
        assert!(book.observe(&breaker("open"), 0).is_empty());
        assert!(book.observe(&breaker("half_open"), 5 * MINUTE).is_empty());
        let out = book.tick(10 * MINUTE);
        assert_eq!(
            kinds(&out),
            [(AlertKind::BreakerOpen, Status::Firing, "feed_api".into())]
        );
        assert!(book.tick(20 * MINUTE).is_empty());
        let out = book.observe(&breaker("closed"), 21 * MINUTE);
        assert_eq!(
            kinds(&out),
            [(AlertKind::BreakerOpen, Status::Resolved, "feed_api".into())]
        );
        // A breaker that closed in time never alerts.
        assert!(book.observe(&breaker("open"), HOUR).is_empty());
        assert!(book.observe(&breaker("closed"), HOUR + MINUTE).is_empty());
        assert!(book.tick(3 * HOUR).is_empty());

        // A schedule fire that could not run, healed by the next run the schedule starts.
        let skipped = Progress::ScheduleSkipped {
            fire_at: 0,
            reason: "no partition".into(),
        };
        let out = book.observe(&skipped, 0);
        assert_eq!(
            kinds(&out),
            [(AlertKind::ScheduleMissed, Status::Firing, String::new())]
        );
        let scheduled = Progress::RunScheduled {
            pass: None,
            run: RunId(9),
            partition: "2026-12-09".into(),
            fire_at: HOUR,
            joined: false,
            started_at: HOUR,
        };
        let out = book.observe(&scheduled, HOUR);
        assert_eq!(
            kinds(&out),
            [(AlertKind::ScheduleMissed, Status::Resolved, String::new())]
        );
    }

    #[test]
    fn a_gap_backfill_cannot_repair_alerts_once_per_partition() {
        let mut book = AlertBook::new("hoops", policy());
        let gap = |run: i64, partition: &str| Progress::GapUnrepaired {
            run: RunId(run),
            partition: partition.into(),
            kind: "failed",
            detail: format!("partition {partition} is still failed after 2 automatic repairs"),
        };
        let out = book.observe(&gap(4, "2026-11-11"), 0);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].signature.kind, AlertKind::GapUnrepaired);
        assert_eq!(out[0].signature.subject, "2026-11-11");
        assert_eq!(out[0].status, Status::Firing);
        assert!(
            out[0].text().contains("after 2 automatic repairs"),
            "{}",
            out[0].text()
        );
        // The same gap again is not told twice; another partition's is its own problem.
        assert!(book.observe(&gap(4, "2026-11-11"), MINUTE).is_empty());
        assert_eq!(book.observe(&gap(5, "2026-11-12"), 2 * MINUTE).len(), 1);
    }
}
