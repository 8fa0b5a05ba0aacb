//! Property: a Keel killed at any moment and started again on the same store ends every run
//! consistently.
//!
//! Each case builds a small random pipeline (2–4 phases, 3–8 tasks, quorum gates, sensors, a
//! resource with a circuit breaker) and plays a random sequence of operations against it:
//! finish a running attempt with any outcome, move the manual clock, cancel the run, and crash
//! Keel — abort the engine's task, which drops everything it held in memory, then start a new
//! engine on the same store, as `keel run` would after a `kill -9`. A crash happens either while
//! the engine is idle or right after its k-th store transaction (the store wrapper below freezes
//! the engine there), so it also lands between two commits of one decision.
//!
//! Attempts run in a simulated world that outlives the engine, as supervisors outlive Keel: each
//! stays running until an operation finishes it, and on restart the executor's `adopt` says
//! whether a live attempt is still running, finished meanwhile (with some outcome), or is gone.
//! The world keeps the ledger of what really ran, in order.
//!
//! After the operations the test drives the run to its end (every attempt succeeds, the clock
//! moves a minute at a time) and checks:
//! - the run ends in a finished state, nothing is left running, every task is done, none by
//!   the stuck-run fallback ("no path to start this task"), and the engine never spins or
//!   panics on the way;
//! - every outcome the store recorded for an attempt is the one the world produced (no success
//!   invented, none lost), and a task succeeds again only after the engine reset it to run
//!   again;
//! - no attempt of a task started while another attempt of the same task still ran;
//! - retries stay within the policy, in every generation of a task (a rerun starts a fresh
//!   budget);
//! - a task never starts before its upstream completed, unless an open gate had waived that
//!   phase-level edge (and the waived task had not landed since): checked in the world at each
//!   launch, and on the store's own record by replaying its event log at each claim;
//! - reconciliation: when a gate went on without a task X that later succeeded, every task
//!   downstream of X that succeeded has its success from an attempt that started after X's
//!   success ended; and generally, a task's success started after its upstream tasks'
//!   successes ended. (A rerun owed to a downstream task that was running when X landed was
//!   once kept only in memory, so a crash lost it. With the store wrapper below made to drop
//!   the stored rerun marks, as that engine did, this property failed after 127 and 314 cases
//!   in two runs.)
//!
//! The tests at the end of this file are minimal reproductions of the engine bugs this
//! property found; each fails until its bug is fixed, and so does the property.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use keel_engine::{EngineError, RunSummary, Shutdown};
use keel_model::{AttemptId, Millis, RunId};
use keel_store::{
    AttemptRecord, Change, ClaimAttempt, EventRecord, FinishAttempt, GateRecord, NewEvent, NewRun,
    ResourceStateRecord, RunRecord, SensorPoll, StoreResult, TaskChange, TaskRunRecord,
};
use proptest::prelude::*;

use super::*;

const PARTITION: &str = "2026-02-01";

/// Outcomes an operation may finish an attempt with; repeats weigh the draw.
const FINISH: [Outcome; 11] = [
    Outcome::Succeeded,
    Outcome::Succeeded,
    Outcome::Succeeded,
    Outcome::NoData,
    Outcome::Failed,
    Outcome::Failed,
    Outcome::FailedPermanent,
    Outcome::NotReady,
    Outcome::TimedOut,
    Outcome::Stalled,
    Outcome::Skipped,
];

/// Yields in a row with nothing happening after which the engine is taken to be idle.
const QUIET_YIELDS: usize = 16;
/// Store calls within one wait for the engine to go idle past which it is spinning: a case
/// makes a few dozen in all.
const BUSY_CALLS: u64 = 500;
/// Real time one wait for the engine to go idle may take; it takes milliseconds.
const SETTLE_LIMIT: Duration = Duration::from_secs(20);
/// Real time one case may take before the watchdog aborts the test binary, for an engine
/// stuck in a loop that never yields to the runtime (nothing else would stop it).
const CASE_LIMIT: Duration = Duration::from_secs(120);
/// Clock steps of one minute (and attempts finished) allowed for a run to end after the
/// operations.
const DRIVE_STEPS: usize = 200;

// ---------------------------------------------------------------------------------------------
// The store, watched: how many calls are in flight, and a freeze after the k-th one.
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct Probe {
    in_flight: AtomicUsize,
    calls: AtomicU64,
    /// Freeze the engine once this many more calls have completed.
    countdown: Mutex<Option<u32>>,
    frozen: AtomicBool,
    changed: tokio::sync::Notify,
    /// Every call started, in order, for the trace.
    log: Mutex<Vec<&'static str>>,
}

impl Probe {
    async fn around<T>(&self, call: &'static str, work: impl Future<Output = T>) -> T {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.log.lock().unwrap().push(call);
        let value = work.await;
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.calls.fetch_add(1, Ordering::SeqCst);
        let freeze = {
            let mut countdown = self.countdown.lock().unwrap();
            match *countdown {
                Some(1) => {
                    *countdown = None;
                    true
                }
                Some(left) => {
                    *countdown = Some(left - 1);
                    false
                }
                None => false,
            }
        };
        if freeze {
            self.frozen.store(true, Ordering::SeqCst);
        }
        self.changed.notify_waiters();
        if freeze {
            // The transaction committed; the engine never gets to act on it, as if killed here.
            std::future::pending::<()>().await;
        }
        value
    }

    /// The last `count` calls started. The lock is released at once: the engine, on the same
    /// thread, takes it on every call.
    fn recent(&self, count: usize) -> Vec<&'static str> {
        let log = self.log.lock().unwrap();
        log[log.len().saturating_sub(count)..].to_vec()
    }

    fn arm(&self, calls: u32) {
        *self.countdown.lock().unwrap() = Some(calls);
    }

    fn reset(&self) {
        *self.countdown.lock().unwrap() = None;
        self.frozen.store(false, Ordering::SeqCst);
    }
}

/// The SQLite store with every call passed through a [`Probe`].
#[derive(Clone)]
struct CrashStore {
    inner: SqliteStore,
    probe: Arc<Probe>,
}

impl Store for CrashStore {
    fn store_id(&self) -> &str {
        self.inner.store_id()
    }
    async fn create_run(&self, new_run: NewRun) -> StoreResult<RunRecord> {
        self.probe
            .around("create_run", self.inner.create_run(new_run))
            .await
    }
    async fn create_run_for_fire(
        &self,
        new_run: NewRun,
        fire: keel_store::ScheduleFire,
        gates: Vec<Change>,
    ) -> StoreResult<keel_store::FireOutcome> {
        self.probe
            .around(
                "create_run_for_fire",
                self.inner.create_run_for_fire(new_run, fire, gates),
            )
            .await
    }
    async fn last_fire(&self, pipeline: &str, trigger: &str) -> StoreResult<Option<Millis>> {
        self.probe
            .around("last_fire", self.inner.last_fire(pipeline, trigger))
            .await
    }
    async fn run(&self, run: RunId) -> StoreResult<RunRecord> {
        self.probe.around("run", self.inner.run(run)).await
    }
    async fn set_flag(&self, flag: keel_store::FlagRecord) -> StoreResult<()> {
        self.probe
            .around("set_flag", self.inner.set_flag(flag))
            .await
    }
    async fn clear_flag(&self, pipeline: &str, task: &str) -> StoreResult<bool> {
        self.probe
            .around("clear_flag", self.inner.clear_flag(pipeline, task))
            .await
    }
    async fn flags(&self, pipeline: &str) -> StoreResult<Vec<keel_store::FlagRecord>> {
        self.probe.around("flags", self.inner.flags(pipeline)).await
    }
    async fn latest_run_of(
        &self,
        pipeline: &str,
        partition: &str,
        pass: Option<&str>,
    ) -> StoreResult<Option<RunRecord>> {
        self.probe
            .around(
                "latest_run",
                self.inner.latest_run_of(pipeline, partition, pass),
            )
            .await
    }
    async fn list_runs(
        &self,
        pipeline: &str,
        partition: Option<&str>,
        limit: u32,
    ) -> StoreResult<Vec<RunRecord>> {
        self.probe
            .around(
                "list_runs",
                self.inner.list_runs(pipeline, partition, limit),
            )
            .await
    }
    async fn status_view(
        &self,
        query: &keel_store::StatusQuery,
    ) -> StoreResult<keel_store::StatusView> {
        self.probe
            .around("status_view", self.inner.status_view(query))
            .await
    }
    async fn unfinished_runs(&self, pipeline: &str) -> StoreResult<Vec<RunRecord>> {
        self.probe
            .around("unfinished_runs", self.inner.unfinished_runs(pipeline))
            .await
    }
    async fn task_runs(&self, run: RunId) -> StoreResult<Vec<TaskRunRecord>> {
        self.probe
            .around("task_runs", self.inner.task_runs(run))
            .await
    }
    async fn attempts(&self, run: RunId) -> StoreResult<Vec<AttemptRecord>> {
        self.probe
            .around("attempts", self.inner.attempts(run))
            .await
    }
    async fn live_attempts(&self, pipeline: &str) -> StoreResult<Vec<AttemptRecord>> {
        self.probe
            .around("live_attempts", self.inner.live_attempts(pipeline))
            .await
    }
    async fn events(&self, run: RunId) -> StoreResult<Vec<EventRecord>> {
        self.probe.around("events", self.inner.events(run)).await
    }
    async fn claim_attempts(
        &self,
        claims: Vec<ClaimAttempt>,
    ) -> StoreResult<Vec<StoreResult<AttemptRecord>>> {
        self.probe
            .around("claim_attempts", self.inner.claim_attempts(claims))
            .await
    }
    async fn mark_attempts_started(
        &self,
        started: Vec<(AttemptId, i64, Option<u32>)>,
        at: Millis,
    ) -> StoreResult<Vec<StoreResult<()>>> {
        self.probe
            .around(
                "mark_attempts_started",
                self.inner.mark_attempts_started(started, at),
            )
            .await
    }
    async fn take_over_attempt(
        &self,
        attempt: AttemptId,
        new_owner: &str,
        at: Millis,
    ) -> StoreResult<i64> {
        self.probe
            .around(
                "take_over_attempt",
                self.inner.take_over_attempt(attempt, new_owner, at),
            )
            .await
    }
    async fn finish_attempts(
        &self,
        finishes: Vec<FinishAttempt>,
    ) -> StoreResult<Vec<StoreResult<()>>> {
        self.probe
            .around("finish_attempts", self.inner.finish_attempts(finishes))
            .await
    }
    async fn add_tasks(
        &self,
        run: RunId,
        tasks: Vec<(String, String)>,
        at: Millis,
    ) -> StoreResult<usize> {
        self.probe
            .around("add_tasks", self.inner.add_tasks(run, tasks, at))
            .await
    }
    async fn update_tasks(
        &self,
        run: RunId,
        changes: Vec<TaskChange>,
        at: Millis,
    ) -> StoreResult<usize> {
        self.probe
            .around("update_tasks", self.inner.update_tasks(run, changes, at))
            .await
    }
    async fn set_run_state(
        &self,
        run: RunId,
        state: RunState,
        message: Option<String>,
        at: Millis,
    ) -> StoreResult<()> {
        self.probe
            .around(
                "set_run_state",
                self.inner.set_run_state(run, state, message, at),
            )
            .await
    }
    async fn request_cancel(&self, run: RunId, at: Millis) -> StoreResult<()> {
        self.probe
            .around("request_cancel", self.inner.request_cancel(run, at))
            .await
    }
    async fn record_sensor_poll(&self, poll: SensorPoll) -> StoreResult<()> {
        self.probe
            .around("record_sensor_poll", self.inner.record_sensor_poll(poll))
            .await
    }
    async fn attempt_starts_since(
        &self,
        pipeline: &str,
        since: Millis,
    ) -> StoreResult<Vec<(String, Millis)>> {
        self.probe
            .around(
                "attempt_starts_since",
                self.inner.attempt_starts_since(pipeline, since),
            )
            .await
    }
    async fn set_resource_state(&self, resource: ResourceStateRecord) -> StoreResult<()> {
        self.probe
            .around(
                "set_resource_state",
                self.inner.set_resource_state(resource),
            )
            .await
    }
    async fn resource_states(&self, pipeline: &str) -> StoreResult<Vec<ResourceStateRecord>> {
        self.probe
            .around("resource_states", self.inner.resource_states(pipeline))
            .await
    }
    async fn apply(&self, run: RunId, changes: Vec<Change>, at: Millis) -> StoreResult<()> {
        self.probe
            .around("apply", self.inner.apply(run, changes, at))
            .await
    }
    async fn expansions(&self, run: RunId) -> StoreResult<Vec<keel_store::ExpansionRecord>> {
        self.probe
            .around("expansions", self.inner.expansions(run))
            .await
    }
    async fn gates(&self, run: RunId) -> StoreResult<Vec<GateRecord>> {
        self.probe.around("gates", self.inner.gates(run)).await
    }
    async fn commit(&self, writes: Vec<keel_store::Write>, at: Millis) -> StoreResult<()> {
        self.probe
            .around("commit", self.inner.commit(writes, at))
            .await
    }
    async fn events_after(&self, after: i64, limit: u32) -> StoreResult<Vec<EventRecord>> {
        self.probe
            .around("events_after", self.inner.events_after(after, limit))
            .await
    }
    async fn recent_events(
        &self,
        pipeline: &str,
        kinds: Vec<keel_model::EventKind>,
        limit: u32,
    ) -> StoreResult<Vec<EventRecord>> {
        self.probe
            .around(
                "recent_events",
                self.inner.recent_events(pipeline, kinds, limit),
            )
            .await
    }
    async fn renew_leases(
        &self,
        renewals: Vec<(AttemptId, i64)>,
        expires_at: Millis,
    ) -> StoreResult<Vec<StoreResult<()>>> {
        self.probe
            .around(
                "renew_leases",
                self.inner.renew_leases(renewals, expires_at),
            )
            .await
    }
    async fn expired_leases(&self, pipeline: &str, now: Millis) -> StoreResult<Vec<AttemptRecord>> {
        self.probe
            .around("expired_leases", self.inner.expired_leases(pipeline, now))
            .await
    }
    async fn append_event(&self, event: NewEvent) -> StoreResult<()> {
        self.probe
            .around("append_event", self.inner.append_event(event))
            .await
    }
    async fn register_task_versions(
        &self,
        pipeline: &str,
        versions: Vec<keel_store::NewTaskVersion>,
        at: Millis,
    ) -> StoreResult<Vec<keel_store::TaskVersionRecord>> {
        self.probe
            .around(
                "register_task_versions",
                self.inner.register_task_versions(pipeline, versions, at),
            )
            .await
    }
    async fn task_versions(
        &self,
        pipeline: &str,
    ) -> StoreResult<Vec<keel_store::TaskVersionRecord>> {
        self.probe
            .around("task_versions", self.inner.task_versions(pipeline))
            .await
    }
    async fn set_task_version_status(
        &self,
        pipeline: &str,
        task: &str,
        version: &str,
        status: keel_model::VersionStatus,
        reason: &str,
        at: Millis,
    ) -> StoreResult<()> {
        self.probe
            .around(
                "set_task_version_status",
                self.inner
                    .set_task_version_status(pipeline, task, version, status, reason, at),
            )
            .await
    }
}

// ---------------------------------------------------------------------------------------------
// The world the attempts run in: it outlives every engine.
// ---------------------------------------------------------------------------------------------

/// What `adopt` answers for an attempt that still runs in the world when a new engine starts.
#[derive(Debug, Clone, Copy)]
enum AdoptChoice {
    Running,
    /// It ended while no Keel watched, this way.
    Finished(Outcome),
    /// Its supervisor died without a record.
    Gone,
}

/// One attempt as it really ran.
struct Proc {
    task: String,
    number: u32,
    dir: String,
    /// World sequence numbers order every start and end.
    started: u64,
    /// (sequence, outcome); no outcome means it died without leaving a record.
    ended: Option<(u64, Option<Outcome>)>,
    signal: tokio::sync::watch::Sender<Option<Outcome>>,
}

impl Proc {
    fn ended_complete(&self) -> bool {
        matches!(self.ended, Some((_, Some(outcome))) if outcome.is_complete())
    }
}

#[derive(Default)]
struct World {
    procs: Vec<Proc>,
    by_dir: HashMap<String, usize>,
    seq: u64,
    /// Bumped by everything that happens, so the test can tell when the engine is idle.
    version: u64,
    /// Broken rules seen as they happened.
    violations: Vec<String>,
    /// Attempts that started while a dependency across a gated phase edge was not complete:
    /// (task, attempt number, dependency). Fine only if a gate had waived the dependency.
    unwaived: Vec<(String, u32, String)>,
    adopt_plan: VecDeque<AdoptChoice>,
    sensors: HashMap<String, VecDeque<Outcome>>,
    log: Vec<String>,
}

impl World {
    fn end(&mut self, index: usize, how: Option<Outcome>, why: &str) {
        if self.procs[index].ended.is_some() {
            return;
        }
        self.seq += 1;
        self.version += 1;
        let seq = self.seq;
        let proc = &mut self.procs[index];
        proc.ended = Some((seq, how));
        if let Some(outcome) = how {
            proc.signal.send_replace(Some(outcome));
        }
        let line = format!(
            "#{seq} end {}#{} {} ({why})",
            proc.task,
            proc.number,
            how.map_or("without a record", Outcome::as_str)
        );
        self.log.push(line);
    }

    fn running(&self) -> Vec<usize> {
        (0..self.procs.len())
            .filter(|index| self.procs[*index].ended.is_none())
            .collect()
    }
}

/// The pipeline's dependencies as the checks need them.
struct Shape {
    names: Vec<String>,
    index: HashMap<String, usize>,
    /// Per task: (dependency, whether a gate may waive that edge).
    deps: Vec<Vec<(usize, bool)>>,
}

impl Shape {
    fn new(spec: &PipelineSpec) -> Shape {
        let dag = keel_model::Dag::new(spec);
        let gated = |phase: &str| {
            spec.phases
                .iter()
                .any(|candidate| candidate.name == phase && candidate.gate.is_some())
        };
        let deps = (0..spec.tasks.len())
            .map(|task| {
                dag.inputs(task)
                    .iter()
                    .map(|dep| {
                        let (upstream, me) = (&spec.tasks[*dep], &spec.tasks[task]);
                        let waivable = gated(&upstream.phase)
                            && upstream.phase != me.phase
                            && !me.after.contains(&upstream.name);
                        (*dep, waivable)
                    })
                    .collect()
            })
            .collect();
        Shape {
            names: spec.tasks.iter().map(|task| task.name.clone()).collect(),
            index: spec
                .tasks
                .iter()
                .enumerate()
                .map(|(index, task)| (task.name.clone(), index))
                .collect(),
            deps,
        }
    }
}

#[derive(Clone)]
struct WorldExecutor {
    world: Arc<Mutex<World>>,
    shape: Arc<Shape>,
    /// False once the Keel this handle belongs to was killed. The engine launches and adopts off
    /// its runtime thread, and aborting its task does not stop that work the way killing the
    /// process would: a dead Keel's handle refuses it, as a dead process could not do it.
    alive: Arc<std::sync::atomic::AtomicBool>,
}

impl WorldExecutor {
    /// A handle on a running attempt: resolves when the world ends it, however that happens.
    fn running(&self, world: &World, index: usize) -> Running {
        let mut receiver = world.procs[index].signal.subscribe();
        let completion = Box::pin(async move {
            let outcome = loop {
                if let Some(outcome) = *receiver.borrow_and_update() {
                    break outcome;
                }
                if receiver.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            };
            Report {
                outcome,
                exit_code: Some(0),
                rows: Some(1),
                metrics: None,
                message: None,
                retry_after: None,
                items: None,
                heal: Vec::new(),
            }
        });
        let shared = self.world.clone();
        Running {
            pid_later: None,
            pid: None,
            completion,
            stop: Arc::new(move || {
                shared
                    .lock()
                    .unwrap()
                    .end(index, Some(Outcome::Cancelled), "stopped")
            }),
        }
    }
}

impl Executor for WorldExecutor {
    fn launch(&self, launch: Launch) -> std::io::Result<Running> {
        let value = |key: &str| {
            launch
                .env
                .iter()
                .find(|(name, _)| name == key)
                .map(|(_, value)| value.clone())
                .unwrap()
        };
        let task = value("KEEL_TASK");
        let number: u32 = value("KEEL_ATTEMPT").parse().unwrap();
        let mut world = self.world.lock().unwrap();
        if !self.alive.load(Ordering::SeqCst) {
            return Err(std::io::Error::other("this keel was killed"));
        }
        world.version += 1;
        if number == 0 {
            // A sensor poll: answered at once.
            let outcome = world
                .sensors
                .get_mut(&task)
                .and_then(VecDeque::pop_front)
                .unwrap_or(Outcome::Succeeded);
            world.log.push(format!("sensor {task}: {outcome}"));
            return Ok(Running {
                pid_later: None,
                pid: None,
                completion: Box::pin(async move { Report::new(outcome, "sensor") }),
                stop: Arc::new(|| {}),
            });
        }
        let mut violations = Vec::new();
        for other in world
            .procs
            .iter()
            .filter(|other| other.task == task && other.ended.is_none())
        {
            violations.push(format!(
                "{task} attempt {number} started while its attempt {} still ran",
                other.number
            ));
        }
        let me = self.shape.index[&task];
        let mut unwaived = Vec::new();
        for (dep, waivable) in &self.shape.deps[me] {
            let name = &self.shape.names[*dep];
            let complete = world
                .procs
                .iter()
                .rev()
                .find(|proc| &proc.task == name)
                .is_some_and(Proc::ended_complete);
            if complete {
                continue;
            }
            if *waivable {
                unwaived.push((task.clone(), number, name.clone()));
            } else {
                violations.push(format!(
                    "{task} attempt {number} started before its upstream {name} completed"
                ));
            }
        }
        world.violations.extend(violations);
        world.unwaived.extend(unwaived);
        world.seq += 1;
        let started = world.seq;
        let index = world.procs.len();
        let dir = launch.dir.display().to_string();
        world.procs.push(Proc {
            task: task.clone(),
            number,
            dir: dir.clone(),
            started,
            ended: None,
            signal: tokio::sync::watch::channel(None).0,
        });
        world.by_dir.insert(dir, index);
        world.log.push(format!("#{started} start {task}#{number}"));
        Ok(self.running(&world, index))
    }

    fn adopt(&self, dir: PathBuf, _known_pid: Option<u32>) -> Adopted {
        let mut world = self.world.lock().unwrap();
        if !self.alive.load(Ordering::SeqCst) {
            return Adopted::Gone("this keel was killed".into());
        }
        world.version += 1;
        let Some(&index) = world.by_dir.get(&dir.display().to_string()) else {
            // Claimed, but Keel died before starting it.
            world
                .log
                .push(format!("adopt {}: never started", dir.display()));
            return Adopted::Gone("gone".into());
        };
        let name = format!("{}#{}", world.procs[index].task, world.procs[index].number);
        match world.procs[index].ended {
            Some((_, Some(outcome))) => {
                world.log.push(format!("adopt {name}: had ended {outcome}"));
                return Adopted::Finished(Report::new(outcome, "ended while keel was down"));
            }
            Some((_, None)) => {
                world.log.push(format!("adopt {name}: had died"));
                return Adopted::Gone("gone".into());
            }
            None => {}
        }
        let choice = world.adopt_plan.pop_front().unwrap_or(AdoptChoice::Running);
        match choice {
            AdoptChoice::Running => {
                world.log.push(format!("adopt {name}: still running"));
                Adopted::Running(self.running(&world, index))
            }
            AdoptChoice::Finished(outcome) => {
                world.end(index, Some(outcome), "while keel was down");
                Adopted::Finished(Report::new(outcome, "ended while keel was down"))
            }
            AdoptChoice::Gone => {
                world.end(index, None, "its supervisor died");
                Adopted::Gone("gone".into())
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Cases.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    /// Finish the `pick`-th running attempt (in start order) with `FINISH[outcome]`; with none
    /// running, move the clock by a second.
    Finish {
        pick: u16,
        outcome: usize,
    },
    Advance {
        ms: u64,
    },
    Cancel,
    /// Kill Keel: at once if `after_calls` is 0, or else finish an attempt (or move the clock)
    /// and kill it right after its `after_calls`-th store call from then on. On restart,
    /// `adopt` answers from `adopt` in turn for attempts still running, then "still running".
    Crash {
        after_calls: u8,
        pick: u16,
        outcome: usize,
        adopt: Vec<(u8, usize)>,
    },
}

#[derive(Debug, Clone)]
struct GatePlan {
    required_first: bool,
    min_share: f64,
    grace_ms: u64,
}

#[derive(Debug, Clone)]
struct FeedPlan {
    failures: u32,
    cooldown_ms: u64,
    max_open_ms: u64,
    concurrency: Option<u32>,
}

#[derive(Debug, Clone)]
struct Case {
    /// Tasks per phase, and the phase's gate.
    phases: Vec<(usize, Option<GatePlan>)>,
    /// Per task: an explicit `after` on an earlier task.
    after: Vec<Option<u16>>,
    /// Per task: a sensor and its answers before it says ready.
    sensors: Vec<Option<Vec<u8>>>,
    feed: Option<FeedPlan>,
    uses_feed: Vec<bool>,
    attempts: Vec<u32>,
    concurrency: u32,
    ops: Vec<Op>,
    seed: u64,
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        50 => (any::<u16>(), 0..FINISH.len())
            .prop_map(|(pick, outcome)| Op::Finish { pick, outcome }),
        25 => prop::sample::select(vec![200u64, 1_000, 3_000, 10_000, 60_000])
            .prop_map(|ms| Op::Advance { ms }),
        20 => (
            0u8..8,
            any::<u16>(),
            0..FINISH.len(),
            prop::collection::vec((0u8..5, 0..FINISH.len()), 0..4),
        )
            .prop_map(|(when, pick, outcome, adopt)| Op::Crash {
                after_calls: when.saturating_sub(2),
                pick,
                outcome,
                adopt,
            }),
        1 => Just(Op::Cancel),
    ]
}

fn case_strategy() -> impl Strategy<Value = Case> {
    let gate = (
        any::<bool>(),
        prop::sample::select(vec![0.0, 0.5, 0.6, 1.0]),
        prop::sample::select(vec![0u64, 500, 2_000, 5_000]),
    )
        .prop_map(|(required_first, min_share, grace_ms)| GatePlan {
            required_first,
            min_share,
            grace_ms,
        });
    let feed = (
        1u32..=3,
        prop::sample::select(vec![1_000u64, 5_000, 10_000]),
        prop::sample::select(vec![30_000u64, 120_000]),
        prop::sample::select(vec![None, Some(1u32), Some(2)]),
    )
        .prop_map(
            |(failures, cooldown_ms, max_open_ms, concurrency)| FeedPlan {
                failures,
                cooldown_ms,
                max_open_ms,
                concurrency,
            },
        );
    (
        prop::collection::vec((1usize..=3, prop::option::weighted(0.6, gate)), 2..=4),
        prop::collection::vec(prop::option::weighted(0.3, any::<u16>()), 8),
        prop::collection::vec(
            prop::option::weighted(0.25, prop::collection::vec(0u8..8, 0..4)),
            8,
        ),
        prop::option::weighted(0.4, feed),
        prop::collection::vec(prop::bool::weighted(0.5), 8),
        prop::collection::vec(1u32..=3, 8),
        1u32..=4,
        prop::collection::vec(op_strategy(), 5..=30),
        any::<u64>(),
    )
        .prop_map(
            |(phases, after, sensors, feed, uses_feed, attempts, concurrency, ops, seed)| Case {
                phases,
                after,
                sensors,
                feed,
                uses_feed,
                attempts,
                concurrency,
                ops,
                seed,
            },
        )
}

impl Case {
    /// The pipeline: phase i runs after phase i-1; 3 to 8 tasks named t0, t1, … in phase order.
    fn spec(&self) -> PipelineSpec {
        let mut counts: Vec<usize> = self.phases.iter().map(|(count, _)| *count).collect();
        while counts.iter().sum::<usize>() > 8 {
            let largest = (0..counts.len()).max_by_key(|i| counts[*i]).unwrap();
            counts[largest] -= 1;
        }
        while counts.iter().sum::<usize>() < 3 {
            counts[0] += 1;
        }
        let mut tasks = Vec::new();
        let mut first_of_phase = Vec::new();
        for (phase, count) in counts.iter().enumerate() {
            first_of_phase.push(tasks.len());
            for _ in 0..*count {
                let index = tasks.len();
                let mut spec = task(&format!("t{index}"), &format!("p{phase}"), &[], 1);
                spec.retries.attempts = self.attempts[index];
                spec.retries.max = Duration::from_secs(10);
                if let Some(pick) = self.after[index]
                    && index > 0
                {
                    spec.after = vec![format!("t{}", pick as usize % index)];
                }
                if self.sensors[index].is_some() {
                    spec = sensed(spec, 1_000, 4_000, 20_000);
                }
                if self.feed.is_some() && self.uses_feed[index] {
                    spec.uses = vec!["feed".into()];
                }
                tasks.push(spec);
            }
        }
        let mut spec = pipeline(tasks, self.concurrency);
        let last = spec.phases.len() - 1;
        for (phase, (_, gate)) in self.phases.iter().enumerate().take(last) {
            if let Some(gate) = gate {
                spec.phases[phase].gate = Some(keel_model::GateSpec {
                    required: if gate.required_first {
                        vec![format!("t{}", first_of_phase[phase])]
                    } else {
                        vec![]
                    },
                    min_share: gate.min_share,
                    grace: Duration::from_millis(gate.grace_ms),
                    tiers: Vec::new(),
                });
            }
        }
        if let Some(feed) = &self.feed {
            let mut resource = resource("feed");
            resource.concurrency = feed.concurrency;
            resource.breaker = Some(keel_model::BreakerSpec {
                failures: feed.failures,
                ratio: None,
                window: 20,
                cooldown: Duration::from_millis(feed.cooldown_ms),
                max_open: Duration::from_millis(feed.max_open_ms),
            });
            spec.resources = vec![resource];
        }
        spec
    }

    fn sensor_answers(&self, spec: &PipelineSpec) -> HashMap<String, VecDeque<Outcome>> {
        spec.tasks
            .iter()
            .enumerate()
            .filter_map(|(index, task)| {
                let answers = self.sensors[index].as_ref()?;
                let outcomes = answers
                    .iter()
                    .map(|answer| match answer {
                        0..=5 => Outcome::NotReady,
                        6 => Outcome::Failed,
                        _ => Outcome::FailedPermanent,
                    })
                    .collect();
                Some((task.name.clone(), outcomes))
            })
            .collect()
    }
}

fn describe(spec: &PipelineSpec) -> String {
    let mut text = String::new();
    for phase in &spec.phases {
        text.push_str(&format!("phase {} after {:?}", phase.name, phase.after));
        if let Some(gate) = &phase.gate {
            text.push_str(&format!(
                " gate required {:?} min {} grace {:?}",
                gate.required, gate.min_share, gate.grace
            ));
        }
        text.push('\n');
    }
    for task in &spec.tasks {
        text.push_str(&format!(
            "  {} in {} after {:?} attempts {}{}{}\n",
            task.name,
            task.phase,
            task.after,
            task.retries.attempts,
            if task.wait_for.is_some() {
                " sensor"
            } else {
                ""
            },
            if task.uses.is_empty() {
                ""
            } else {
                " uses feed"
            },
        ));
    }
    for resource in &spec.resources {
        text.push_str(&format!(
            "resource {} concurrency {:?} breaker {:?}\n",
            resource.name, resource.concurrency, resource.breaker
        ));
    }
    text
}

// ---------------------------------------------------------------------------------------------
// One case, played.
// ---------------------------------------------------------------------------------------------

type EngineTask = tokio::task::JoinHandle<Result<Vec<RunSummary>, EngineError>>;

struct Trial {
    case: Case,
    spec: PipelineSpec,
    dir: tempfile::TempDir,
    inner: SqliteStore,
    store: CrashStore,
    probe: Arc<Probe>,
    world: Arc<Mutex<World>>,
    executor: WorldExecutor,
    clock: ManualClock,
    handle: Option<EngineTask>,
    engines: u64,
    run: Option<RunId>,
}

impl Trial {
    fn new(case: Case) -> Trial {
        let spec = case.spec();
        // A thousand stores are created: on tmpfs, where there is one, creating one costs no
        // disk flush.
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm).or_else(|_| tempfile::tempdir())
        } else {
            tempfile::tempdir()
        }
        .unwrap();
        let inner = SqliteStore::open(&dir.path().join("state.db")).unwrap();
        let probe = Arc::new(Probe::default());
        let world = Arc::new(Mutex::new(World {
            sensors: case.sensor_answers(&spec),
            ..World::default()
        }));
        Trial {
            executor: WorldExecutor {
                world: world.clone(),
                shape: Arc::new(Shape::new(&spec)),
                alive: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            },
            store: CrashStore {
                inner: inner.clone(),
                probe: probe.clone(),
            },
            case,
            spec,
            dir,
            inner,
            probe,
            world,
            clock: ManualClock::new(1_000_000),
            handle: None,
            engines: 0,
            run: None,
        }
    }

    /// Starts a Keel on the store, as `keel run --partition` does: prepare, then execute.
    fn start_engine(&mut self) {
        self.engines += 1;
        self.executor.alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let mut engine = Engine::new(
            self.store.clone(),
            self.executor.clone(),
            self.clock.clone(),
            Box::new(SplitMix64::new(self.case.seed ^ self.engines)),
            self.spec.clone(),
            EngineConfig {
                owner: format!("keel-{}", self.engines),
                attempts_dir: self.dir.path().join("attempts"),
                kill_grace: Duration::from_millis(10),
                log_cap: 1024,
                lease_ttl: Duration::from_secs(60),
                poll_interval: Duration::from_millis(5),
                extra_env: vec![],
                launch_context: Default::default(),
                shutdown_grace: Duration::from_secs(30),
            },
        );
        self.handle = Some(tokio::spawn(async move {
            let prepared = engine
                .prepare(&RunRequest {
                    partitions: vec![PARTITION.into()],
                    ..RunRequest::default()
                })
                .await?;
            match &prepared[0] {
                Prepared::Created(run) | Prepared::Resumed(run) => {
                    let run = *run;
                    engine.execute(&[run], Shutdown::never()).await
                }
                Prepared::AlreadyFinished(_) => Ok(Vec::new()),
            }
        }));
    }

    fn engine_finished(&self) -> bool {
        self.handle
            .as_ref()
            .is_none_or(|handle| handle.is_finished())
    }

    /// Waits until the engine is idle: no store call in flight and nothing happening for a
    /// while, or frozen by the probe.
    async fn settle(&self) {
        let mut quiet = 0;
        let mut verified = false;
        let mut last = (u64::MAX, u64::MAX);
        let start = self.probe.calls.load(Ordering::SeqCst);
        let since = std::time::Instant::now();
        loop {
            if since.elapsed() > SETTLE_LIMIT {
                panic!(
                    "the engine did not go idle within {SETTLE_LIMIT:?} ({} store calls in flight)\n{}",
                    self.probe.in_flight.load(Ordering::SeqCst),
                    self.trace().await
                );
            }
            if self.probe.frozen.load(Ordering::SeqCst) {
                return;
            }
            let calls = self.probe.calls.load(Ordering::SeqCst) - start;
            if calls > BUSY_CALLS {
                let recent = self.probe.recent(8);
                panic!(
                    "the engine never goes idle: {calls} store calls without the clock moving or an attempt ending, lately {recent:?}\n{}",
                    self.trace().await
                );
            }
            if self.probe.in_flight.load(Ordering::SeqCst) > 0 {
                let changed = self.probe.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if self.probe.in_flight.load(Ordering::SeqCst) > 0 {
                    let _ = tokio::time::timeout(Duration::from_millis(50), changed).await;
                }
                quiet = 0;
                verified = false;
                continue;
            }
            tokio::task::yield_now().await;
            let now = (
                self.probe.calls.load(Ordering::SeqCst),
                self.world.lock().unwrap().version,
            );
            if now == last && self.probe.in_flight.load(Ordering::SeqCst) == 0 {
                quiet += 1;
                if quiet >= QUIET_YIELDS {
                    // The engine launches off its runtime thread: it is idle only once every
                    // attempt it claimed has reached the world (or its Keel is gone), and
                    // nothing moved while that was checked.
                    if verified {
                        return;
                    }
                    if self.launches_pending().await {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    } else {
                        verified = true;
                    }
                    quiet = 0;
                }
            } else {
                verified = false;
                quiet = 0;
                last = now;
            }
        }
    }

    /// Whether an attempt the live engine claimed has not reached the world yet.
    async fn launches_pending(&self) -> bool {
        if self.engine_finished() || !self.executor.alive.load(Ordering::SeqCst) {
            return false;
        }
        let Ok(live) = self.inner.live_attempts("test").await else {
            return false;
        };
        let world = self.world.lock().unwrap();
        live.iter()
            .any(|attempt| !world.by_dir.contains_key(&attempt.dir))
    }

    /// Finishes one running attempt, or moves the clock a second if none runs.
    fn finish_one(&self, pick: u16, outcome: Outcome) {
        let mut world = self.world.lock().unwrap();
        let running = world.running();
        if running.is_empty() {
            drop(world);
            self.clock.advance(1_000);
            return;
        }
        let index = running[pick as usize % running.len()];
        world.end(index, Some(outcome), "finished by the test");
    }

    /// Kills the engine: its task is aborted, so nothing of its memory survives, and a new one
    /// starts on the same store.
    async fn crash(&mut self) {
        {
            // Under the world's lock: a launch either happened before the kill or not at all.
            let _world = self.world.lock().unwrap();
            self.executor.alive.store(false, Ordering::SeqCst);
        }
        if let Some(handle) = self.handle.take() {
            handle.abort();
            match handle.await {
                Ok(Err(error)) => panic!("the engine failed: {error}\n{}", self.trace().await),
                Err(error) if error.is_panic() => {
                    panic!("the engine panicked: {error}\n{}", self.trace().await)
                }
                _ => {}
            }
        }
        if self.probe.in_flight.load(Ordering::SeqCst) != 0 {
            let recent = self.probe.recent(8);
            panic!(
                "killed with a store call in flight: {recent:?}\n{}",
                self.trace().await
            );
        }
        self.probe.reset();
        let line = format!("--- crash; keel {} starts ---", self.engines + 1);
        self.world.lock().unwrap().log.push(line);
        self.start_engine();
    }

    async fn apply(&mut self, op: &Op) {
        match op {
            Op::Finish { pick, outcome } => self.finish_one(*pick, FINISH[*outcome]),
            Op::Advance { ms } => self.clock.advance(*ms as Millis),
            Op::Cancel => {
                if let Some(run) = self.run
                    && !self.engine_finished()
                {
                    self.world.lock().unwrap().log.push("--- cancel ---".into());
                    self.inner
                        .request_cancel(run, keel_engine::Clock::now(&self.clock))
                        .await
                        .unwrap();
                    // The engine polls for requests every 5 ms.
                    tokio::time::sleep(Duration::from_millis(12)).await;
                }
            }
            Op::Crash {
                after_calls,
                pick,
                outcome,
                adopt,
            } => {
                if *after_calls > 0 && !self.engine_finished() {
                    self.probe.arm(u32::from(*after_calls));
                    self.finish_one(*pick, FINISH[*outcome]);
                    self.settle().await;
                }
                let plan = adopt
                    .iter()
                    .map(|(kind, outcome)| match kind {
                        0 | 1 => AdoptChoice::Running,
                        2 => AdoptChoice::Finished(Outcome::Succeeded),
                        3 => AdoptChoice::Finished(FINISH[*outcome]),
                        _ => AdoptChoice::Gone,
                    })
                    .collect();
                self.world.lock().unwrap().adopt_plan = plan;
                self.crash().await;
            }
        }
        self.settle().await;
    }

    async fn play(&mut self) {
        self.start_engine();
        self.settle().await;
        self.run = self
            .inner
            .latest_run("test", PARTITION)
            .await
            .unwrap()
            .map(|run| run.id);
        assert!(self.run.is_some(), "the first engine created no run");
        // The engine may have moved while the lookup above waited.
        self.settle().await;
        for op in self.case.ops.clone() {
            self.apply(&op).await;
        }
    }

    /// Lets every attempt succeed and moves the clock a minute at a time until the run ends.
    async fn drive(&mut self) {
        for _ in 0..DRIVE_STEPS {
            self.settle().await;
            if self.engine_finished() {
                return;
            }
            {
                let mut world = self.world.lock().unwrap();
                for index in world.running() {
                    world.end(index, Some(Outcome::Succeeded), "driven to the end");
                }
            }
            self.settle().await;
            if self.engine_finished() {
                return;
            }
            self.clock.advance(60_000);
        }
        panic!(
            "the run did not settle in {DRIVE_STEPS} steps\n{}",
            self.trace().await
        );
    }

    async fn trace(&self) -> String {
        let mut text = format!("case: {:?}\n{}", self.case.ops, describe(&self.spec));
        {
            let world = self.world.lock().unwrap();
            text.push_str("--- world ---\n");
            for line in &world.log {
                text.push_str(line);
                text.push('\n');
            }
        }
        if let Some(run) = self.run
            && let Ok(events) = self.inner.events(run).await
        {
            text.push_str("--- events ---\n");
            for event in events {
                text.push_str(&format!(
                    "{:>4} {:>8} {:<18} {:<4} {}\n",
                    event.seq,
                    event.at,
                    event.kind,
                    event.task.unwrap_or_default(),
                    event.detail
                ));
            }
        }
        text
    }

    async fn check(&mut self) {
        let handle = self.handle.take().expect("an engine");
        let summaries = match handle.await {
            Ok(Ok(summaries)) => summaries,
            Ok(Err(error)) => panic!("the engine failed: {error}\n{}", self.trace().await),
            Err(error) => panic!("the engine panicked: {error}\n{}", self.trace().await),
        };
        let run_id = self.run.unwrap();
        let run = self.inner.run(run_id).await.unwrap();
        let tasks = self.inner.task_runs(run_id).await.unwrap();
        let attempts = self.inner.attempts(run_id).await.unwrap();
        let events = self.inner.events(run_id).await.unwrap();
        let live = self.inner.live_attempts("test").await.unwrap();
        let problems = {
            let world = self.world.lock().unwrap();
            let facts = Facts {
                spec: &self.spec,
                run: &run,
                summaries: &summaries,
                tasks: &tasks,
                attempts: &attempts,
                events: &events,
                live: &live,
                world: &world,
            };
            facts.problems()
        };
        if !problems.is_empty() {
            panic!(
                "{} problem(s):\n  {}\n{}",
                problems.len(),
                problems.join("\n  "),
                self.trace().await
            );
        }
    }
}

/// Everything known once the run ended.
struct Facts<'a> {
    spec: &'a PipelineSpec,
    run: &'a RunRecord,
    summaries: &'a [RunSummary],
    tasks: &'a [TaskRunRecord],
    attempts: &'a [AttemptRecord],
    events: &'a [EventRecord],
    live: &'a [AttemptRecord],
    world: &'a World,
}

impl Facts<'_> {
    fn proc(&self, attempt: &AttemptRecord) -> Option<&Proc> {
        self.world
            .by_dir
            .get(&attempt.dir)
            .map(|index| &self.world.procs[*index])
    }

    fn event_seq(&self, kind: &str, attempt: AttemptId) -> Option<i64> {
        self.events
            .iter()
            .find(|event| event.kind == kind && event.attempt == Some(attempt))
            .map(|event| event.seq)
    }

    fn of_task(&self, name: &str) -> Vec<&AttemptRecord> {
        let mut mine: Vec<&AttemptRecord> = self
            .attempts
            .iter()
            .filter(|attempt| attempt.task == name)
            .collect();
        mine.sort_by_key(|attempt| attempt.number);
        mine
    }

    /// The attempt a complete task owes its outcome to: its last one.
    fn final_success(&self, name: &str) -> Option<&AttemptRecord> {
        let record = self.tasks.iter().find(|task| task.task == name)?;
        if !record.outcome.is_some_and(Outcome::is_complete) {
            return None;
        }
        self.of_task(name).last().copied()
    }

    /// Every task a gate went on without, by the `gate_opened` events, with the event's seq.
    fn waivers(&self) -> Vec<(String, i64)> {
        let mut waived = Vec::new();
        for event in self
            .events
            .iter()
            .filter(|event| event.kind == "gate_opened")
        {
            if let Some((_, names)) = event.detail.split_once("without ") {
                for name in names.split(", ") {
                    waived.push((name.trim().to_string(), event.seq));
                }
            }
        }
        waived
    }

    /// Whether an open gate had waived `name` just before event `seq`: a `gate_opened` event
    /// listed it, and it has not completed since (landing ends a waiver: if the task is reset
    /// to run again later, downstream waits for it).
    fn waived_at(&self, name: &str, seq: i64) -> bool {
        self.waivers()
            .iter()
            .filter(|(waived, opened)| waived == name && *opened < seq)
            .any(|(_, opened)| {
                !self.events.iter().any(|event| {
                    event.seq > *opened
                        && event.seq < seq
                        && event.task.as_deref() == Some(name)
                        && self.completes(event)
                })
            })
    }

    /// Whether the event settles its task with a complete outcome.
    fn completes(&self, event: &EventRecord) -> bool {
        let outcome = match event.kind.as_str() {
            // "succeeded"
            "task_done" => event.detail.parse::<Outcome>().ok(),
            // "done (succeeded): why"
            "task_changed" => event
                .detail
                .strip_prefix("done (")
                .and_then(|rest| rest.split_once(')'))
                .and_then(|(outcome, _)| outcome.parse::<Outcome>().ok()),
            _ => None,
        };
        outcome.is_some_and(Outcome::is_complete)
    }

    fn problems(&self) -> Vec<String> {
        let mut problems: Vec<String> = self.world.violations.clone();
        if !self.run.state.is_finished() {
            problems.push(format!("the run ended {}", self.run.state));
        }
        if let Some(summary) = self.summaries.first()
            && summary.state != self.run.state
        {
            problems.push(format!(
                "the engine reported {} but stored {}",
                summary.state, self.run.state
            ));
        }
        for proc in &self.world.procs {
            if proc.ended.is_none() {
                problems.push(format!("{}#{} was left running", proc.task, proc.number));
            }
        }
        if !self.live.is_empty() {
            problems.push(format!("live attempts left in the store: {:?}", self.live));
        }
        for task in self.tasks {
            if task.state != TaskState::Done {
                problems.push(format!("{} ended {}", task.task, task.state));
            }
            if task
                .message
                .as_deref()
                .is_some_and(|message| message.contains("no path to start"))
            {
                problems.push(format!(
                    "{} was settled by the stuck-run fallback: {:?}{}",
                    task.task,
                    task.message,
                    self.reset_after_settling(&task.task)
                        .map(|(settled, reset)| format!(
                            " (it had been reset to pending at event {} after it ended {settled})",
                            reset
                        ))
                        .unwrap_or_default()
                ));
            }
        }
        self.check_outcomes(&mut problems);
        self.check_retries(&mut problems);
        self.check_reruns(&mut problems);
        self.check_waivers(&mut problems);
        self.check_upstream_at_claims(&mut problems);
        // A cancel drops the reruns still owed (a task that ends while the run is cancelled is
        // not run again), so a cancelled run may keep a success built on stale input.
        if self.run.state != RunState::Cancelled {
            self.check_freshness(&mut problems);
        }
        problems
    }

    /// The store recorded for each attempt what the world produced, and nothing the world did
    /// not produce.
    fn check_outcomes(&self, problems: &mut Vec<String>) {
        for attempt in self.attempts {
            let name = format!("{}#{}", attempt.task, attempt.number);
            let Some(recorded) = attempt.outcome else {
                problems.push(format!("{name} has no outcome"));
                continue;
            };
            let real = self.proc(attempt).and_then(|proc| proc.ended);
            match real {
                Some((_, Some(outcome))) if outcome == recorded => {}
                Some((_, None)) | None if recorded == Outcome::Lost => {}
                other => problems.push(format!(
                    "{name} is recorded {recorded}, but in the world it {}",
                    match other {
                        Some((_, Some(outcome))) => format!("ended {outcome}"),
                        Some((_, None)) => "died without a record".to_string(),
                        None => "never started".to_string(),
                    }
                )),
            }
        }
        // Every success that really happened is recorded.
        for proc in &self.world.procs {
            if proc.ended_complete()
                && !self
                    .attempts
                    .iter()
                    .any(|attempt| attempt.dir == proc.dir && attempt.outcome.is_some())
            {
                problems.push(format!(
                    "{}#{} succeeded in the world but is not recorded",
                    proc.task, proc.number
                ));
            }
        }
        for task in self.tasks {
            if task.outcome.is_some_and(Outcome::is_complete) {
                let last = self.of_task(&task.task).last().and_then(|a| a.outcome);
                if last != task.outcome {
                    problems.push(format!(
                        "{} ended {:?} but its last attempt {:?}",
                        task.task, task.outcome, last
                    ));
                }
            }
        }
    }

    /// Generations of a task: its attempts between two resets to pending (a rerun with a fresh
    /// retry budget). Returns the seqs of those resets.
    fn resets(&self, name: &str) -> Vec<i64> {
        self.events
            .iter()
            .filter(|event| {
                event.kind == "task_changed"
                    && event.task.as_deref() == Some(name)
                    && event.detail.starts_with("pending")
            })
            .map(|event| event.seq)
            .collect()
    }

    /// The first time the task was reset to pending after it had been settled without
    /// completing (upstream failed, cancelled, …): (that outcome, the reset's event seq).
    fn reset_after_settling(&self, name: &str) -> Option<(String, i64)> {
        let mut settled: Option<String> = None;
        for event in self
            .events
            .iter()
            .filter(|event| event.kind == "task_changed" && event.task.as_deref() == Some(name))
        {
            if let Some(rest) = event.detail.strip_prefix("done (") {
                settled = rest.split_once(')').map(|(outcome, _)| outcome.to_string());
            } else if event.detail.starts_with("pending")
                && let Some(outcome) = settled.take()
            {
                return Some((outcome, event.seq));
            }
        }
        None
    }

    /// Charged retries stay within the policy, in every generation.
    fn check_retries(&self, problems: &mut Vec<String>) {
        for task in self.tasks {
            let policy = self.spec.task(&task.task).unwrap().retries.attempts;
            if task.charged > policy {
                problems.push(format!(
                    "{} was charged {} attempts, policy {policy}",
                    task.task, task.charged
                ));
            }
            let resets = self.resets(&task.task);
            let mut per_generation: BTreeMap<usize, u32> = BTreeMap::new();
            for event in self.events.iter().filter(|event| {
                event.kind == "retry_scheduled"
                    && event.task.as_deref() == Some(task.task.as_str())
                    && !event.detail.contains("uncharged")
            }) {
                let generation = resets.iter().filter(|seq| **seq < event.seq).count();
                *per_generation.entry(generation).or_default() += 1;
            }
            for (generation, retries) in per_generation {
                if retries + 1 > policy {
                    problems.push(format!(
                        "{}: {retries} charged retries in generation {generation}, policy {policy} attempts",
                        task.task
                    ));
                }
            }
        }
    }

    /// A task that succeeded runs again only after the engine reset it to run again.
    fn check_reruns(&self, problems: &mut Vec<String>) {
        for task in self.tasks {
            let resets = self.resets(&task.task);
            let successes: Vec<&AttemptRecord> = self
                .of_task(&task.task)
                .into_iter()
                .filter(|attempt| attempt.outcome.is_some_and(Outcome::is_complete))
                .collect();
            for pair in successes.windows(2) {
                let ended = self.event_seq("attempt_finished", pair[0].id);
                let claimed = self.event_seq("attempt_claimed", pair[1].id);
                let (Some(ended), Some(claimed)) = (ended, claimed) else {
                    problems.push(format!("{}: attempt events missing", task.task));
                    continue;
                };
                if !resets.iter().any(|seq| *seq > ended && *seq < claimed) {
                    problems.push(format!(
                        "{} succeeded in attempt {} and ran again in attempt {} without being reset",
                        task.task, pair[0].number, pair[1].number
                    ));
                }
            }
        }
    }

    /// Whether `task` was done with a complete outcome just before event `seq`, replaying the
    /// events that move a task run from state to state.
    fn complete_before(&self, task: &str, seq: i64) -> bool {
        self.last_move(task, seq)
            .is_some_and(|last| self.completes(last))
    }

    /// The last event before `seq` that moved `task` from one state to another.
    fn last_move(&self, task: &str, seq: i64) -> Option<&EventRecord> {
        const MOVES: [&str; 5] = [
            "attempt_claimed",
            "task_done",
            "retry_scheduled",
            "task_interrupted",
            "task_changed",
        ];
        self.events.iter().rev().find(|event| {
            event.seq < seq
                && event.task.as_deref() == Some(task)
                && MOVES.contains(&event.kind.as_str())
        })
    }

    /// By the store's own record, every attempt was claimed when each upstream task of its task
    /// was complete, or, across a gated phase edge, waived by a gate that had opened without it.
    fn check_upstream_at_claims(&self, problems: &mut Vec<String>) {
        let shape = Shape::new(self.spec);
        for claim in self
            .events
            .iter()
            .filter(|event| event.kind == "attempt_claimed")
        {
            let Some(task) = claim.task.as_deref() else {
                continue;
            };
            let Some(&me) = shape.index.get(task) else {
                continue;
            };
            for (dep, waivable) in &shape.deps[me] {
                let name = &shape.names[*dep];
                if self.complete_before(name, claim.seq) {
                    continue;
                }
                let waived = *waivable && self.waived_at(name, claim.seq);
                if !waived {
                    let last = self.last_move(name, claim.seq).map_or_else(
                        || "none".to_string(),
                        |event| format!("event {} {} {}", event.seq, event.kind, event.detail),
                    );
                    let reset = self
                        .resets(name)
                        .into_iter()
                        .rev()
                        .find(|seq| *seq < claim.seq)
                        .map(|seq| format!("; {name} had been reset to run again at event {seq}"))
                        .unwrap_or_default();
                    problems.push(format!(
                        "{task} was claimed (event {}: {}) while its upstream {name} was not complete (its last change: {last}{reset})",
                        claim.seq, claim.detail
                    ));
                }
            }
        }
    }

    /// A task that started (in the world) before an upstream task across a gated phase edge
    /// completed did so because the gate had opened without that task.
    fn check_waivers(&self, problems: &mut Vec<String>) {
        for (task, number, dependency) in &self.world.unwaived {
            let claimed = self
                .attempts
                .iter()
                .find(|attempt| &attempt.task == task && attempt.number == *number)
                .and_then(|attempt| self.event_seq("attempt_claimed", attempt.id));
            let Some(claimed) = claimed else {
                problems.push(format!("{task}#{number}: no claim recorded"));
                continue;
            };
            if !self.waived_at(dependency, claimed) {
                let phase = &self.spec.task(dependency).unwrap().phase;
                let opened = self.events.iter().any(|event| {
                    event.kind == "gate_opened"
                        && event.detail.starts_with(&format!("phase {phase}:"))
                });
                problems.push(format!(
                    "{task} attempt {number} started before {dependency} completed, and no gate had waived {dependency}{}",
                    if opened { "" } else { " (the gate of its phase never opened)" }
                ));
            }
        }
    }

    /// The reconciliation invariant, and its general form: a task's success comes from an
    /// attempt that started after each of its upstream tasks' successes ended.
    fn check_freshness(&self, problems: &mut Vec<String>) {
        let dag = keel_model::Dag::new(self.spec);
        let span = |name: &str| -> Option<(u64, u64)> {
            let attempt = self.final_success(name)?;
            let proc = self.proc(attempt)?;
            Some((proc.started, proc.ended?.0))
        };
        let waived: BTreeSet<String> = self.waivers().into_iter().map(|(name, _)| name).collect();
        for landed in &waived {
            let Some(index) = dag.index_of(landed) else {
                continue;
            };
            let Some((_, landed_end)) = span(landed) else {
                continue;
            };
            for downstream in dag.downstream_of(&[index]) {
                let name = dag.name(downstream);
                if let Some((start, _)) = span(name)
                    && start < landed_end
                {
                    problems.push(format!(
                        "reconciliation: the gate went on without {landed}, which then succeeded (world #{landed_end}), but {name}'s success comes from an attempt started before that (world #{start})"
                    ));
                }
            }
        }
        for task in 0..dag.len() {
            let Some((start, _)) = span(dag.name(task)) else {
                continue;
            };
            for dependency in &dag.inputs(task) {
                if let Some((_, end)) = span(dag.name(*dependency))
                    && start < end
                {
                    problems.push(format!(
                        "{}'s success comes from an attempt started (world #{start}) before {}'s success ended (world #{end})",
                        dag.name(task),
                        dag.name(*dependency)
                    ));
                }
            }
        }
    }
}

/// Tells the watchdog that the case ended, however it ended.
struct Finished(Arc<AtomicBool>);

impl Drop for Finished {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn play(case: Case) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut trial = Trial::new(case);
    let done = Arc::new(AtomicBool::new(false));
    let _finished = Finished(done.clone());
    {
        let (done, world, probe) = (done.clone(), trial.world.clone(), trial.probe.clone());
        let case = format!("{:?}\n{}", trial.case, describe(&trial.spec));
        std::thread::spawn(move || {
            let since = std::time::Instant::now();
            while !done.load(Ordering::SeqCst) {
                if since.elapsed() > CASE_LIMIT {
                    // The runtime's thread is stuck: print what is known without it, and stop.
                    let calls = probe.calls.load(Ordering::SeqCst);
                    let recent = probe.recent(12);
                    let log = world
                        .lock()
                        .map(|world| world.log.join("\n"))
                        .unwrap_or_default();
                    eprintln!(
                        "crash property: a case ran for {CASE_LIMIT:?}; the engine is stuck ({calls} store calls, lately {recent:?})\ncase: {case}\n--- world ---\n{log}"
                    );
                    std::process::abort();
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
    }
    runtime.block_on(async move {
        trial.play().await;
        trial.drive().await;
        trial.check().await;
    });
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 1000,
        max_shrink_iters: 400,
        max_shrink_time: 120_000,
        ..ProptestConfig::default()
    })]
    #[test]
    fn a_keel_killed_at_any_moment_and_restarted_ends_every_run_consistently(case in case_strategy()) {
        play(case);
    }
}

// ---------------------------------------------------------------------------------------------
// Minimal reproductions of the engine bugs the property found. Each fails until its bug is
// fixed.
// ---------------------------------------------------------------------------------------------

/// Found by the property above, and needs no crash: a task queued to start keeps its place in
/// the ready queue when a late upstream task resets its input for a rerun, and starts on stale
/// input.
///
/// `a2` misses the gate of `p0` (not ready, retried a second later); `b` runs without it and,
/// while it runs, `a2`'s retry is queued behind it (concurrency 1). `b` succeeds, which queues
/// `c` behind `a2`. `a2` succeeds: the reconcile resets `b` to run again, but `c`, already
/// queued, starts before `b`'s rerun and is never run again, so the run ends `succeeded` with
/// `c` built from the `b` that ran without `a2`.
#[tokio::test]
async fn a_task_queued_when_its_upstream_is_reset_for_a_rerun_waits_for_that_rerun() {
    let harness = Harness::new();
    harness.executor.script("a2", &[Outcome::NotReady]);
    *harness.executor.hold.lock().unwrap() = vec!["b".into()];
    let mut spec = pipeline(
        vec![
            task("a1", "p0", &[], 1),
            task("a2", "p0", &[], 1),
            task("b", "p1", &[], 1),
            task("c", "p2", &[], 1),
        ],
        1,
    );
    spec.phases[0].gate = Some(keel_model::GateSpec {
        required: vec![],
        min_share: 0.5,
        grace: Duration::ZERO,
        tiers: Vec::new(),
    });
    let (_run, _trigger, handle) = start_in_background(&harness, spec).await;
    let executor = harness.executor.clone();
    eventually("b to start without a2", || {
        executor.launches().iter().any(|(task, _)| task == "b")
    })
    .await;
    // a2's retry comes due while b holds the only slot.
    harness.clock.advance(1_000);
    tokio::time::sleep(Duration::from_millis(30)).await;
    harness.executor.hold.lock().unwrap().clear();
    harness.executor.release.notify_waiters();
    assert_eq!(handle.await.unwrap()[0].state, RunState::Succeeded);
    let launched: Vec<String> = harness
        .executor
        .launches()
        .into_iter()
        .map(|(task, _)| task)
        .collect();
    let last_b = launched.iter().rposition(|task| task == "b").unwrap();
    let last_c = launched.iter().rposition(|task| task == "c").unwrap();
    assert!(
        last_c > last_b,
        "c ran only before b's rerun with a2, so its output never saw a2: {launched:?}"
    );
}

/// Found by the property above, and needs no crash: a task waiting for its retry keeps its
/// retry timer when a late upstream task resets its input, and its retry starts while that
/// input is being rebuilt, even when it names the reset task in its own `after`.
///
/// `a2` misses the gate of `p0`; `b` runs without it and succeeds; `c` (`after = ["b"]`) fails
/// once and waits for its retry. `a2` lands: the reconcile reruns `b`, but `c`'s retry timer
/// fires while `b`'s rerun is still running, and `c` starts.
#[tokio::test]
async fn a_task_waiting_for_its_retry_does_not_start_while_its_upstream_reruns() {
    let harness = Harness::new();
    harness.executor.script("c", &[Outcome::Failed]);
    *harness.executor.hold.lock().unwrap() = vec!["a2".into()];
    let mut spec = pipeline(
        vec![
            task("a1", "p0", &[], 1),
            task("a2", "p0", &[], 1),
            task("b", "p1", &[], 1),
            task("c", "p2", &["b"], 2),
        ],
        8,
    );
    spec.phases[0].gate = Some(keel_model::GateSpec {
        required: vec![],
        min_share: 0.5,
        grace: Duration::ZERO,
        tiers: Vec::new(),
    });
    let (run, _trigger, handle) = start_in_background(&harness, spec).await;
    let store = harness.store.clone();
    let mut waiting = false;
    for _ in 0..500 {
        let tasks = store.task_runs(run).await.unwrap();
        if tasks[3].state == TaskState::Waiting && tasks[3].attempts == 1 {
            waiting = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(waiting, "c failed once and waits for its retry");
    // a2 lands; b's rerun holds until released.
    *harness.executor.hold.lock().unwrap() = vec!["b".into()];
    harness.executor.release.notify_waiters();
    let executor = harness.executor.clone();
    eventually("b to run again with a2", || {
        executor
            .launches()
            .iter()
            .filter(|(task, _)| task == "b")
            .count()
            == 2
    })
    .await;
    // c's retry comes due while b reruns.
    harness.clock.advance(2_000);
    tokio::time::sleep(Duration::from_millis(30)).await;
    let c_runs = executor
        .launches()
        .iter()
        .filter(|(task, _)| task == "c")
        .count();
    harness.executor.hold.lock().unwrap().clear();
    harness.executor.release.notify_waiters();
    let state = handle.await.unwrap()[0].state;
    assert_eq!(
        c_runs,
        1,
        "c's retry started while b, named in its after, was running again: {:?}",
        executor.launches()
    );
    assert_eq!(state, RunState::Succeeded);
}

/// Found by the property above, and needs no crash: when a waived task lands late, the
/// reconcile resets every finished task downstream of it to pending, also one that ended
/// `upstream_failed` because a task it names in its `after` failed for good. That task can
/// never start; the run is settled by the stuck-run fallback ("no path to start this task"),
/// which the engine documents as impossible with a valid DAG, and the task loses the message
/// saying which upstream task failed.
#[tokio::test]
async fn a_late_task_does_not_reopen_a_task_whose_own_after_failed_for_good() {
    let harness = Harness::new();
    harness.executor.script("y", &[Outcome::FailedPermanent]);
    *harness.executor.hold.lock().unwrap() = vec!["x".into()];
    let mut spec = pipeline(
        vec![
            task("x", "p0", &[], 1),
            task("y", "p0", &[], 1),
            task("z", "p0", &[], 1),
            task("c", "p1", &["y"], 1),
        ],
        8,
    );
    spec.phases[0].gate = Some(keel_model::GateSpec {
        required: vec![],
        min_share: 0.3,
        grace: Duration::ZERO,
        tiers: Vec::new(),
    });
    let (run, _trigger, handle) = start_in_background(&harness, spec).await;
    let store = harness.store.clone();
    let mut opened = false;
    for _ in 0..500 {
        let events = store.events(run).await.unwrap();
        if events.iter().any(|event| event.kind == "gate_opened") {
            opened = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(opened, "the gate opened without x and y");
    // x lands late.
    harness.executor.hold.lock().unwrap().clear();
    harness.executor.release.notify_waiters();
    assert_eq!(handle.await.unwrap()[0].state, RunState::Failed);
    let tasks = store.task_runs(run).await.unwrap();
    let c = tasks.iter().find(|task| task.task == "c").unwrap();
    assert_eq!(c.outcome, Some(Outcome::UpstreamFailed));
    let message = c.message.as_deref().unwrap_or_default();
    assert!(
        message.contains("\"y\""),
        "c should still say that y failed, not {message:?}"
    );
}

/// Found by the property above; needs a crash. A gate that is still waiting is not stored, so
/// a restarted Keel falls back to the guess meant for runs from before gates were stored: "a
/// task downstream of the gate that is not pending means the gate had opened". A downstream
/// task settled `upstream_failed` because a task it names in its `after` failed is not
/// pending, so the new Keel opens the gate, which was never sufficient, and starts downstream
/// work without the gate's required task.
#[tokio::test]
async fn a_restarted_keel_does_not_open_a_gate_that_never_opened() {
    let harness = Harness::new();
    harness.executor.script("y", &[Outcome::FailedPermanent]);
    *harness.executor.hold.lock().unwrap() = vec!["x".into()];
    let mut spec = pipeline(
        vec![
            task("x", "p0", &[], 1),
            task("y", "p0", &[], 1),
            task("a", "p1", &[], 1),
            task("b", "p1", &["y"], 1),
        ],
        8,
    );
    spec.phases[0].gate = Some(keel_model::GateSpec {
        required: vec!["x".into()],
        min_share: 0.5,
        grace: Duration::ZERO,
        tiers: Vec::new(),
    });
    let (run, _trigger, handle) = start_in_background(&harness, spec.clone()).await;
    let store = harness.store.clone();
    let mut settled = false;
    for _ in 0..500 {
        let tasks = store.task_runs(run).await.unwrap();
        if tasks[3].outcome == Some(Outcome::UpstreamFailed) {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(settled, "b is upstream_failed once y failed");
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(
        !harness
            .executor
            .launches()
            .iter()
            .any(|(task, _)| task == "a"),
        "before the crash, a waits for x"
    );
    // Keel is killed while x, the gate's required task, still runs.
    handle.abort();
    let _ = handle.await;
    let mut engine = harness.engine(spec);
    let handle = tokio::spawn(async move {
        engine
            .execute(&[run], keel_engine::Shutdown::never())
            .await
            .unwrap()
    });
    let executor = harness.executor.clone();
    eventually("x to run again", || {
        executor
            .launches()
            .iter()
            .filter(|(task, _)| task == "x")
            .count()
            == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let early: Vec<(String, u32)> = executor
        .launches()
        .into_iter()
        .filter(|(task, _)| task == "a")
        .collect();
    harness.executor.hold.lock().unwrap().clear();
    harness.executor.release.notify_waiters();
    handle.await.unwrap();
    assert!(
        early.is_empty(),
        "a started while x, required by the gate, still ran: {:?}",
        executor.launches()
    );
}

/// Found by the property above, and needs no crash: a task that was complete when its phase's
/// gate opened is not waived; when a late upstream task makes it run again and it then fails,
/// its failure is not passed downstream across that open gate (the gate is taken to have
/// waived it), and the downstream task is neither failed nor started: only the stuck-run
/// fallback ends it, with "no path to start this task".
#[tokio::test]
async fn a_rerun_that_fails_behind_an_open_gate_fails_its_downstream() {
    let harness = Harness::new();
    harness
        .executor
        .script("a", &[Outcome::Succeeded, Outcome::FailedPermanent]);
    *harness.executor.hold.lock().unwrap() = vec!["x".into()];
    let mut spec = pipeline(
        vec![
            task("x", "p0", &[], 1),
            task("y", "p0", &[], 1),
            task("a", "p1", &[], 1),
            task("c", "p2", &[], 1),
        ],
        8,
    );
    spec.phases[0].gate = Some(keel_model::GateSpec {
        required: vec![],
        min_share: 0.5,
        grace: Duration::ZERO,
        tiers: Vec::new(),
    });
    spec.phases[1].gate = Some(keel_model::GateSpec {
        required: vec![],
        min_share: 1.0,
        grace: Duration::ZERO,
        tiers: Vec::new(),
    });
    let (run, _trigger, handle) = start_in_background(&harness, spec).await;
    let store = harness.store.clone();
    let mut ran = false;
    for _ in 0..500 {
        let tasks = store.task_runs(run).await.unwrap();
        if tasks[3].outcome == Some(Outcome::Succeeded) {
            ran = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(ran, "c ran without x");
    // x lands late: a and c run again, and a's rerun fails for good.
    harness.executor.hold.lock().unwrap().clear();
    harness.executor.release.notify_waiters();
    assert_eq!(handle.await.unwrap()[0].state, RunState::Failed);
    let tasks = store.task_runs(run).await.unwrap();
    assert_eq!(tasks[2].outcome, Some(Outcome::FailedPermanent));
    assert_eq!(tasks[3].outcome, Some(Outcome::UpstreamFailed));
    let message = tasks[3].message.as_deref().unwrap_or_default();
    assert!(
        message.contains("\"a\""),
        "c should say that a failed, not {message:?}"
    );
}

/// Found by the property above, and needs no crash: attempts that end together are recorded
/// as one batch, every task of the batch marked done first, and only then moved on one by one.
/// When the first is a waived task landing late, its reconcile resets the others (already
/// marked done, not yet counted) and uncounts them: the run's count of done tasks goes below
/// zero. In a debug build the engine panics ("attempt to subtract with overflow"); in a release
/// build the count wraps, the run is finished at once with tasks still pending, and later the
/// count is off by the tasks reset this way.
#[tokio::test]
async fn a_late_task_ending_in_the_same_batch_as_its_downstream_tasks_is_reconciled() {
    let harness = Harness::new();
    *harness.executor.hold.lock().unwrap() =
        vec!["x".into(), "d1".into(), "d2".into(), "d3".into()];
    let mut spec = pipeline(
        vec![
            task("x", "p0", &[], 1),
            task("y", "p0", &[], 1),
            task("d1", "p1", &[], 1),
            task("d2", "p1", &[], 1),
            task("d3", "p1", &[], 1),
        ],
        8,
    );
    spec.phases[0].gate = Some(keel_model::GateSpec {
        required: vec![],
        min_share: 0.5,
        grace: Duration::ZERO,
        tiers: Vec::new(),
    });
    let (run, _trigger, handle) = start_in_background(&harness, spec).await;
    let executor = harness.executor.clone();
    eventually("d1, d2 and d3 to run without x", || {
        executor.launches().len() == 5
    })
    .await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    // x and the three tasks downstream of it end at the same moment; their reruns succeed.
    harness.executor.hold.lock().unwrap().clear();
    harness.executor.release.notify_waiters();
    let state = match handle.await {
        Ok(summaries) => summaries[0].state,
        Err(error) => panic!("the engine failed: {error}"),
    };
    let tasks = harness.store.task_runs(run).await.unwrap();
    assert_eq!(state, RunState::Succeeded, "{tasks:?}");
    for name in ["d1", "d2", "d3"] {
        assert_eq!(
            executor
                .launches()
                .iter()
                .filter(|(task, _)| task == name)
                .count(),
            2,
            "{name} runs again with x: {:?}",
            executor.launches()
        );
    }
}

/// Found by the property above; needs a crash. A waived task's success and the reconcile it
/// triggers are two commits. If Keel dies between them, the restarted Keel reconciles, but only
/// after it has recovered the live attempts; when one of them finished while Keel was down and
/// was the last task not done, recording it ends the run `succeeded` first, and the reconcile
/// then resets tasks of a finished run to pending: they never run again.
#[tokio::test]
async fn a_reconcile_left_unrecorded_by_a_crash_happens_before_the_run_can_end() {
    let harness = Harness::new();
    *harness.executor.hold.lock().unwrap() = vec!["x".into(), "d".into()];
    let mut spec = pipeline(
        vec![
            task("x", "p0", &[], 1),
            task("y", "p0", &[], 1),
            task("d", "p1", &[], 1),
        ],
        8,
    );
    spec.phases[0].gate = Some(keel_model::GateSpec {
        required: vec![],
        min_share: 0.5,
        grace: Duration::ZERO,
        tiers: Vec::new(),
    });
    let (run, _trigger, handle) = start_in_background(&harness, spec.clone()).await;
    let executor = harness.executor.clone();
    eventually("d to run without x", || {
        executor.launches().iter().any(|(task, _)| task == "d")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    handle.abort();
    let _ = handle.await;
    // The dead Keel had recorded that x succeeded, and died before the reconcile that follows.
    let live = harness.store.live_attempts("test").await.unwrap();
    let x = live.iter().find(|attempt| attempt.task == "x").unwrap();
    harness
        .store
        .finish_attempt(keel_store::FinishAttempt {
            attempt: x.id,
            epoch: x.lease_epoch,
            outcome: Outcome::Succeeded,
            exit_code: Some(0),
            rows: None,
            metrics: None,
            message: None,
            next: keel_store::TaskNext::Done(Outcome::Succeeded),
            at: harness.clock.now_for_test(),
        })
        .await
        .unwrap();
    // d, which ran without x, finished while Keel was down.
    *harness.executor.adoption.lock().unwrap() = Some(Outcome::Succeeded);
    harness.executor.hold.lock().unwrap().clear();
    let mut engine = harness.engine(spec);
    let state = run_partition(&mut engine, "2026-01-18").await;
    let tasks = harness.store.task_runs(run).await.unwrap();
    assert_eq!(state, RunState::Succeeded);
    assert!(
        tasks.iter().all(|task| task.state == TaskState::Done),
        "a finished run with tasks left pending: {tasks:?}"
    );
    assert_eq!(
        executor
            .launches()
            .iter()
            .filter(|(task, _)| task == "d")
            .count(),
        2,
        "d ran without x and must run again with it: {:?}",
        executor.launches()
    );
}

/// Found by the property above (a case that never ended), and needs no crash: the same batch
/// as above, when the downstream task already owed a rerun. `x1` lands while `d` runs, so `d`
/// owes a rerun; then `x2` and `d` end together. `x2`'s reconcile resets `d` (marked done, not
/// yet counted) and uncounts it; `d`'s own turn then takes the rerun path, which does not count
/// it. The run's count of done tasks stays one short: once every task is done, the engine finds
/// nothing to run and nothing stuck, and loops through the stuck-run fallback for ever, one
/// store transaction per turn, at full speed.
#[tokio::test]
async fn a_run_whose_late_tasks_land_with_a_downstream_rerun_owed_ends() {
    let harness = Harness::new();
    *harness.executor.hold.lock().unwrap() = vec!["x1".into(), "x2".into(), "d".into()];
    *harness.executor.pinned.lock().unwrap() = vec!["x2".into(), "d".into()];
    let mut spec = pipeline(
        vec![
            task("x1", "p0", &[], 1),
            task("x2", "p0", &[], 1),
            task("y", "p0", &[], 1),
            task("d", "p1", &[], 1),
        ],
        8,
    );
    spec.phases[0].gate = Some(keel_model::GateSpec {
        required: vec![],
        min_share: 0.3,
        grace: Duration::ZERO,
        tiers: Vec::new(),
    });
    let (run, _trigger, handle) = start_in_background(&harness, spec).await;
    let executor = harness.executor.clone();
    eventually("d to run without x1 and x2", || {
        executor.launches().iter().any(|(task, _)| task == "d")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    // x1 lands while d runs: d owes a rerun.
    harness.executor.release.notify_waiters();
    let store = harness.store.clone();
    let mut owed = false;
    for _ in 0..500 {
        let tasks = store.task_runs(run).await.unwrap();
        if tasks[3].rerun_pending {
            owed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(owed, "d owes a rerun once x1 landed");
    // x2 and d end together.
    harness.executor.hold.lock().unwrap().clear();
    harness.executor.pinned.lock().unwrap().clear();
    harness.executor.release.notify_waiters();
    let ended = tokio::time::timeout(Duration::from_secs(5), handle).await;
    let tasks = store.task_runs(run).await.unwrap();
    let state = match ended {
        Ok(Ok(summaries)) => summaries[0].state,
        Ok(Err(error)) => panic!("the engine failed: {error}"),
        Err(_) => panic!(
            "the run never ended, with every task done and nothing running: {:?}",
            tasks
                .iter()
                .map(|task| (task.task.as_str(), task.state, task.outcome))
                .collect::<Vec<_>>()
        ),
    };
    assert_eq!(state, RunState::Succeeded);
    assert_eq!(
        executor
            .launches()
            .iter()
            .filter(|(task, _)| task == "d")
            .count(),
        2,
        "d ran without x1 and x2, and once more with both: {:?}",
        executor.launches()
    );
}

/// Found by the property above (CI, seed 15993565758576921007), and needs no crash: a task that
/// runs while a late upstream task resets its input owes a rerun; if that input then fails for
/// good while the task still runs, the failure does not reach it (only waiting tasks are
/// settled `upstream_failed`). When the task then ends with a retry (`not_ready`), it waits for
/// an input that can never complete, and the run is settled by the stuck-run fallback ("no
/// path to start this task") instead of saying which upstream task failed.
///
/// `x2` misses the gate of `p0`; `u` runs and succeeds without it, and `d` starts. `x2` lands:
/// `u` is reset to run again and `d` owes a rerun. `u`'s rerun fails for good while `d` runs;
/// then `d` ends `not_ready`.
#[tokio::test]
async fn a_task_whose_input_failed_for_good_while_it_ran_does_not_wait_for_its_retry() {
    let harness = Harness::new();
    harness
        .executor
        .script("u", &[Outcome::Succeeded, Outcome::FailedPermanent]);
    harness.executor.script("d", &[Outcome::NotReady]);
    *harness.executor.hold.lock().unwrap() = vec!["x2".into(), "d".into()];
    *harness.executor.pinned.lock().unwrap() = vec!["d".into()];
    let mut spec = pipeline(
        vec![
            task("x1", "p0", &[], 1),
            task("x2", "p0", &[], 1),
            task("u", "p1", &[], 1),
            task("d", "p2", &[], 3),
        ],
        8,
    );
    spec.phases[0].gate = Some(keel_model::GateSpec {
        required: vec![],
        min_share: 0.3,
        grace: Duration::ZERO,
        tiers: Vec::new(),
    });
    let (run, _trigger, handle) = start_in_background(&harness, spec).await;
    let executor = harness.executor.clone();
    eventually("d to run after u, without x2", || {
        executor.launches().iter().any(|(task, _)| task == "d")
    })
    .await;
    // x2 lands while d runs: u runs again and fails for good.
    harness.executor.release.notify_waiters();
    eventually("u to run again", || {
        executor
            .launches()
            .iter()
            .filter(|(task, _)| task == "u")
            .count()
            == 2
    })
    .await;
    let store = harness.store.clone();
    let mut failed = false;
    for _ in 0..500 {
        let tasks = store.task_runs(run).await.unwrap();
        if tasks[2].outcome == Some(Outcome::FailedPermanent) {
            failed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(failed, "u's rerun failed for good");
    // d ends not ready, and the clock moves past any retry it could have.
    harness.executor.hold.lock().unwrap().clear();
    harness.executor.pinned.lock().unwrap().clear();
    harness.executor.release.notify_waiters();
    let clock = harness.clock.clone();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if handle.is_finished() {
                break handle.await;
            }
            clock.advance(1_000);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the run ends");
    assert_eq!(ended.unwrap()[0].state, RunState::Failed);
    let tasks = store.task_runs(run).await.unwrap();
    let d = tasks.iter().find(|task| task.task == "d").unwrap();
    assert_eq!(d.outcome, Some(Outcome::UpstreamFailed));
    let message = d.message.as_deref().unwrap_or_default();
    assert!(
        message.contains("\"u\""),
        "d should say that u failed, not {message:?}"
    );
    assert_eq!(
        executor
            .launches()
            .iter()
            .filter(|(task, _)| task == "d")
            .count(),
        1,
        "d never ran again: {:?}",
        executor.launches()
    );
}
