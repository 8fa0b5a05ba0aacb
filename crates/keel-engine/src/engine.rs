use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use keel_exec::policy::{BreakerState, Permit, ResourcePolicy, Verdict as ResourceVerdict, Wait};
use keel_exec::{Adopted, Executor, Launch, Report};
use keel_model::{
    AttemptId, Dag, Millis, Outcome, PipelineSpec, RunId, RunState, TaskIndex, TaskState,
};
use keel_store::{
    AttemptRecord, Change, ClaimAttempt, FinishAttempt, GateRecord, GateState, NewEvent, NewRun,
    RunRecord, SensorPoll, Store, StoreError, TaskChange, TaskNext,
};
use tokio::sync::mpsc;

use crate::gate::{GateStatus, Topology, Verdict, judge};
use crate::template::{TemplateValues, expand};
use crate::{Clock, EngineError, Random};

/// Settings of one engine that do not come from the pipeline file.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Who holds the leases this engine takes, e.g. `host:pid:nonce`.
    pub owner: String,
    /// Attempt directories go under `<attempts_dir>/<store id>/<run>/<task>.<attempt>`.
    pub attempts_dir: PathBuf,
    /// Between SIGTERM and SIGKILL when an attempt is stopped or times out.
    pub kill_grace: Duration,
    /// Bytes of output kept per attempt.
    pub log_cap: u64,
    pub lease_ttl: Duration,
    /// How often the store is asked for cancel requests from other processes.
    pub poll_interval: Duration,
    /// How long running attempts may finish after a shutdown is asked for.
    pub shutdown_grace: Duration,
    /// Added to every task's environment (after the `KEEL_*` contract variables).
    pub extra_env: Vec<(String, String)>,
}

/// What `keel run` asks for.
#[derive(Debug, Clone, Default)]
pub struct RunRequest {
    pub partitions: Vec<String>,
    /// Run only these tasks; the rest of a new run is `skipped`.
    pub only: Vec<String>,
    /// Start a new run even if the partition already finished.
    pub rerun: bool,
}

/// What [`Engine::prepare`] decided for one partition.
#[derive(Debug, Clone, PartialEq)]
pub enum Prepared {
    Created(RunId),
    /// An unfinished run of the partition (for example after a crash) is carried on.
    Resumed(RunId),
    /// The partition has a finished run and `rerun` was not asked for: nothing to do.
    AlreadyFinished(RunRecord),
}

/// How one run ended, or where it stands if the engine stopped early.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    pub run: RunId,
    pub partition: String,
    pub state: RunState,
}

/// How far a shutdown has gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownLevel {
    Running,
    /// Start nothing new; let running attempts finish within the grace period.
    Drain,
    /// Stop running attempts now.
    Now,
}

/// The engine's side of a shutdown request; see [`Engine::execute`].
#[derive(Debug, Clone)]
pub struct Shutdown(tokio::sync::watch::Receiver<ShutdownLevel>);

/// Asks an engine to shut down.
#[derive(Debug)]
pub struct ShutdownTrigger(tokio::sync::watch::Sender<ShutdownLevel>);

impl Shutdown {
    /// A pair: the trigger to keep, the signal to pass to [`Engine::execute`].
    pub fn channel() -> (ShutdownTrigger, Shutdown) {
        let (sender, receiver) = tokio::sync::watch::channel(ShutdownLevel::Running);
        (ShutdownTrigger(sender), Shutdown(receiver))
    }

    /// A shutdown that never comes.
    pub fn never() -> Shutdown {
        Shutdown::channel().1
    }
}

impl ShutdownTrigger {
    /// Start nothing new and let running attempts finish within the grace period.
    pub fn drain(&self) {
        self.0.send_if_modified(|level| {
            let changed = *level == ShutdownLevel::Running;
            if changed {
                *level = ShutdownLevel::Drain;
            }
            changed
        });
    }

    /// Stop running attempts now.
    pub fn now(&self) {
        self.0.send_replace(ShutdownLevel::Now);
    }
}

/// Live progress for displays; the store's event log is the durable record.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    RunLoaded {
        run: RunId,
        partition: String,
        tasks: usize,
        done: usize,
    },
    AttemptStarted {
        run: RunId,
        partition: String,
        task: String,
        attempt: u32,
    },
    AttemptRecovered {
        run: RunId,
        partition: String,
        task: String,
        attempt: u32,
        how: &'static str,
    },
    AttemptFinished {
        run: RunId,
        partition: String,
        task: String,
        attempt: u32,
        outcome: Outcome,
        message: Option<String>,
        retry_at: Option<Millis>,
    },
    /// A resource's circuit breaker changed state (`closed`, `open`, `half_open`).
    BreakerChanged {
        resource: String,
        state: &'static str,
        detail: String,
    },
    /// A gate let downstream proceed without these tasks of its phase.
    GateOpened {
        run: RunId,
        partition: String,
        phase: String,
        missing: Vec<String>,
    },
    TasksSettled {
        run: RunId,
        partition: String,
        tasks: Vec<String>,
        outcome: Outcome,
    },
    RunFinished {
        run: RunId,
        partition: String,
        state: RunState,
    },
}

/// The Keel engine for one pipeline version.
pub struct Engine<S: Store, E: Executor, C: Clock> {
    store: S,
    executor: Arc<E>,
    clock: Arc<C>,
    random: Box<dyn Random>,
    spec: Arc<PipelineSpec>,
    /// `spec.version()`, computed once: every claim records it.
    version: String,
    dag: Dag,
    topology: Topology,
    /// Per task: indexes into `spec.resources` of the resources it uses.
    task_uses: Vec<Vec<usize>>,
    config: EngineConfig,
    observer: Box<dyn FnMut(Progress) + Send>,
}

#[derive(Debug, Clone)]
struct Slot {
    state: TaskState,
    outcome: Option<Outcome>,
    attempts: u32,
    charged: u32,
    first_started_at: Option<Millis>,
}

struct ActiveRun {
    record: RunRecord,
    slots: Vec<Slot>,
    /// Per task: dependencies not yet complete (and not waived by an open gate).
    remaining: Vec<u32>,
    /// Per gate of the topology.
    gates: Vec<GateStatus>,
    /// Per task: missing when its phase's gate opened; downstream went on without it.
    waived: Vec<bool>,
    /// Per task: an upstream task landed late while this one ran; run it again when it ends.
    needs_rerun: Vec<bool>,
    /// Per task: its sensor reported ready (a task that has had an attempt needs none).
    sensor_ready: Vec<bool>,
    /// Per task: sensor polls so far in this process, for the backoff.
    sensor_polls: Vec<u32>,
    done: usize,
    cancelling: bool,
    finished: bool,
}

struct Live {
    run: usize,
    task: TaskIndex,
    number: u32,
    epoch: i64,
    stop: Arc<dyn Fn() + Send + Sync>,
}

impl Live {
    /// A live attempt whose stop handle arrives once it has started (see [`watch`]).
    fn new(run: usize, task: TaskIndex, number: u32, epoch: i64) -> Live {
        Live {
            run,
            task,
            number,
            epoch,
            stop: Arc::new(|| {}),
        }
    }
}

/// What a timer wakes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Wake {
    Task(TaskIndex),
    Gate(usize),
    /// A resource's open breaker lets a probe through: its waiters take their turn.
    Resource(usize),
}

struct Book {
    runs: Vec<ActiveRun>,
    ready: VecDeque<(usize, TaskIndex)>,
    timers: BinaryHeap<Reverse<(Millis, usize, Wake)>>,
    live: HashMap<AttemptId, Live>,
    sender: mpsc::UnboundedSender<(AttemptId, Report)>,
    /// Sensor polls report here: (run, task, report).
    sensor_sender: mpsc::UnboundedSender<(usize, TaskIndex, Report)>,
    /// Sensor polls running now; they count against the concurrency cap.
    sensing: usize,
    /// Per resource of the spec: its rate limit, bulkhead, breaker and retry budget.
    resources: Vec<ResourcePolicy>,
    /// Per resource: tasks waiting for an attempt on it to end (bulkhead full, probe running).
    resource_waiters: Vec<Vec<(usize, TaskIndex)>>,
    /// Per resource: tasks waiting for its breaker, in turn order. A task whose probe failed
    /// goes to the back, so the probe goes to every waiting task in turn, across partitions.
    breaker_waiters: Vec<VecDeque<(usize, TaskIndex)>>,
    /// Per resource: when its breaker waiters are next woken, if a wake is scheduled.
    breaker_wake: Vec<Option<Millis>>,
    /// Tasks whose resource stayed down past its breaker's `max_open`: they end `failed`.
    given_up: Vec<(usize, TaskIndex, String)>,
    /// Permits taken for tasks picked to start, until their claim is known.
    picked_permits: HashMap<(usize, TaskIndex), Vec<(usize, Permit)>>,
    /// Permits held by running attempts.
    permits: HashMap<AttemptId, Vec<(usize, Permit)>>,
    shutting_down: bool,
}

/// Follows a started attempt: keeps its stop handle and reports its end to the engine's loop.
fn watch(book: &mut Book, attempt: AttemptId, running: keel_exec::Running) {
    if let Some(live) = book.live.get_mut(&attempt) {
        live.stop = running.stop.clone();
    }
    let sender = book.sender.clone();
    tokio::spawn(async move {
        let report = running.completion.await;
        let _ = sender.send((attempt, report));
    });
}

fn is_complete(slot: &Slot) -> bool {
    slot.state == TaskState::Done && slot.outcome.is_some_and(Outcome::is_complete)
}

fn lost_report(message: &str) -> Report {
    Report::new(Outcome::Lost, message)
}

impl<S: Store, E: Executor, C: Clock> Engine<S, E, C> {
    pub fn new(
        store: S,
        executor: E,
        clock: C,
        random: Box<dyn Random>,
        spec: PipelineSpec,
        config: EngineConfig,
    ) -> Engine<S, E, C> {
        let dag = Dag::new(&spec);
        let topology = Topology::new(&spec, &dag);
        let task_uses = spec
            .tasks
            .iter()
            .map(|task| {
                task.uses
                    .iter()
                    .filter_map(|name| {
                        spec.resources
                            .iter()
                            .position(|resource| resource.name == *name)
                    })
                    .collect()
            })
            .collect();
        Engine {
            store,
            executor: Arc::new(executor),
            clock: Arc::new(clock),
            random,
            version: spec.version(),
            spec: Arc::new(spec),
            dag,
            topology,
            task_uses,
            config,
            observer: Box::new(|_| {}),
        }
    }

    /// Receives live progress events.
    pub fn observe(&mut self, observer: impl FnMut(Progress) + Send + 'static) {
        self.observer = Box::new(observer);
    }

    /// How long running attempts may finish after a drain is asked for.
    pub fn set_shutdown_grace(&mut self, grace: Duration) {
        self.config.shutdown_grace = grace;
    }

    pub fn spec(&self) -> &PipelineSpec {
        &self.spec
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    fn check_task_names(&self, names: &[String]) -> Result<Vec<TaskIndex>, EngineError> {
        names
            .iter()
            .map(|name| {
                self.dag
                    .index_of(name)
                    .ok_or_else(|| EngineError::unknown_task(&self.spec, name))
            })
            .collect()
    }

    /// Decides, per partition, whether to create a run, carry on an unfinished one, or do
    /// nothing because the partition already finished.
    pub async fn prepare(&mut self, request: &RunRequest) -> Result<Vec<Prepared>, EngineError> {
        let only = self.check_task_names(&request.only)?;
        let mut prepared = Vec::new();
        for partition in &request.partitions {
            let latest = self.store.latest_run(&self.spec.name, partition).await?;
            match latest {
                Some(run) if !run.state.is_finished() => prepared.push(Prepared::Resumed(run.id)),
                Some(run) if !request.rerun => prepared.push(Prepared::AlreadyFinished(run)),
                _ => {
                    let tasks = self
                        .spec
                        .tasks
                        .iter()
                        .enumerate()
                        .map(|(index, task)| {
                            let settled = (!only.is_empty() && !only.contains(&index))
                                .then_some(Outcome::Skipped);
                            (task.name.clone(), task.phase.clone(), settled)
                        })
                        .collect();
                    let trace_id = self.random.hex(32);
                    let run = self
                        .store
                        .create_run(NewRun {
                            pipeline: self.spec.name.clone(),
                            partition: partition.clone(),
                            version: self.spec.version(),
                            trace_id,
                            tasks,
                            at: self.clock.now(),
                        })
                        .await?;
                    prepared.push(Prepared::Created(run.id));
                }
            }
        }
        Ok(prepared)
    }

    /// Resets `tasks` of the partition's newest run, and everything downstream of them, so that
    /// the next [`Engine::execute`] runs them again with fresh retry budgets. Those the pipeline
    /// file gained after the run was created are added to the run; if the file changed at all
    /// since, the run's event log says which version the retry runs.
    pub async fn retry(&mut self, partition: &str, tasks: &[String]) -> Result<RunId, EngineError> {
        let roots = self.check_task_names(tasks)?;
        let run = self
            .store
            .latest_run(&self.spec.name, partition)
            .await?
            .ok_or_else(|| EngineError::NoRun {
                partition: partition.to_string(),
            })?;
        let in_run: std::collections::HashSet<String> = self
            .store
            .task_runs(run.id)
            .await?
            .into_iter()
            .map(|task| task.task)
            .collect();
        // Without a row of its own a task would be read back as skipped and never run.
        let added: Vec<(String, String)> = roots
            .iter()
            .copied()
            .chain(self.dag.downstream_of(&roots))
            .filter(|task| !in_run.contains(self.dag.name(*task)))
            .map(|task| {
                let task_spec = &self.spec.tasks[task];
                (task_spec.name.clone(), task_spec.phase.clone())
            })
            .collect();
        let mut changes = Vec::new();
        for root in &roots {
            changes.push(TaskChange {
                task: self.dag.name(*root).to_string(),
                state: TaskState::Pending,
                outcome: None,
                not_before: None,
                message: None,
                reset_retry_budget: true,
                reason: "manual retry".into(),
            });
        }
        for downstream in self.dag.downstream_of(&roots) {
            let because = roots
                .iter()
                .map(|root| self.dag.name(*root))
                .collect::<Vec<_>>()
                .join(", ");
            changes.push(TaskChange {
                task: self.dag.name(downstream).to_string(),
                state: TaskState::Pending,
                outcome: None,
                not_before: None,
                message: None,
                reset_retry_budget: true,
                reason: format!("downstream of retried {because}"),
            });
        }
        let now = self.clock.now();
        if !added.is_empty() {
            self.store.add_tasks(run.id, added, now).await?;
        }
        self.store.update_tasks(run.id, changes, now).await?;
        self.reopen_gates(run.id, &roots, now).await?;
        if self.version != run.version {
            self.store
                .append_event(NewEvent {
                    run: run.id,
                    task: None,
                    attempt: None,
                    kind: "pipeline_changed".into(),
                    detail: format!(
                        "the retry uses pipeline version {} (was {})",
                        self.version, run.version
                    ),
                    at: now,
                })
                .await?;
        }
        if run.state != RunState::Running {
            self.store
                .set_run_state(run.id, RunState::Running, Some("retry".into()), now)
                .await?;
        }
        Ok(run.id)
    }

    /// A retried task is expected to land, so the gates of the phases it and its downstream
    /// tasks sit in are judged again from the start: downstream waits for the retried tasks (or
    /// for a new grace period) instead of going on without them at once.
    async fn reopen_gates(
        &self,
        run: RunId,
        roots: &[TaskIndex],
        now: Millis,
    ) -> Result<(), EngineError> {
        let mut gates: Vec<usize> = roots
            .iter()
            .copied()
            .chain(self.dag.downstream_of(roots))
            .filter_map(|task| self.topology.gate_of_task(task))
            .collect();
        gates.sort_unstable();
        gates.dedup();
        let changes = gates
            .into_iter()
            .map(|gate| {
                Change::Gate(GateRecord {
                    phase: self.topology.gates[gate].phase.clone(),
                    status: GateState::Waiting,
                    waived: Vec::new(),
                })
            })
            .collect();
        Ok(self.store.apply(run, changes, now).await?)
    }

    /// Executes `runs` until every one has finished, or until a shutdown: on [`Shutdown`]'s
    /// drain no attempt starts any more and running ones may finish for up to
    /// `EngineConfig::shutdown_grace`, after which they are stopped and left to be resumed; on
    /// its "now" they are stopped at once. Attempts that a previous Keel left live are recovered
    /// first: adopted if still running, recorded if they ended meanwhile, and otherwise marked
    /// `lost` and retried.
    pub async fn execute(
        &mut self,
        runs: &[RunId],
        mut shutdown: Shutdown,
    ) -> Result<Vec<RunSummary>, EngineError> {
        let (sender, mut receiver) = mpsc::unbounded_channel();
        let (sensor_sender, mut sensor_receiver) = mpsc::unbounded_channel();
        let mut book = Book {
            runs: Vec::new(),
            ready: VecDeque::new(),
            timers: BinaryHeap::new(),
            live: HashMap::new(),
            sender,
            sensor_sender,
            sensing: 0,
            resources: self.resource_policies().await?,
            resource_waiters: vec![Vec::new(); self.spec.resources.len()],
            breaker_waiters: vec![VecDeque::new(); self.spec.resources.len()],
            breaker_wake: vec![None; self.spec.resources.len()],
            given_up: Vec::new(),
            picked_permits: HashMap::new(),
            permits: HashMap::new(),
            shutting_down: false,
        };
        let live = self.store.live_attempts(&self.spec.name).await?;
        let mut to_load: Vec<RunId> = runs.to_vec();
        for attempt in &live {
            if !to_load.contains(&attempt.run) {
                to_load.push(attempt.run);
            }
        }
        for run in to_load {
            self.load_run(&mut book, run, &live).await?;
        }
        let mut shutdown_open = true;
        let mut drain_deadline: Option<Millis> = None;
        let mut poll = tokio::time::interval(self.config.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.start_ready(&mut book).await?;
            if !book.given_up.is_empty() {
                self.settle_given_up(&mut book).await?;
                continue;
            }
            if book.live.is_empty()
                && (book.shutting_down || book.runs.iter().all(|run| run.finished))
            {
                break;
            }
            if book.live.is_empty()
                && book.sensing == 0
                && book.ready.is_empty()
                && book.timers.is_empty()
            {
                self.settle_stuck_runs(&mut book).await?;
                continue;
            }
            let next_timer = book.timers.peek().map(|Reverse((at, _, _))| *at);
            let clock = self.clock.clone();
            tokio::select! {
                Some((run_index, task, report)) = sensor_receiver.recv() => {
                    book.sensing = book.sensing.saturating_sub(1);
                    self.on_sensor(&mut book, run_index, task, report).await?;
                }
                message = receiver.recv() => {
                    if let Some(first) = message {
                        let mut batch = vec![first];
                        while let Ok(next) = receiver.try_recv() {
                            batch.push(next);
                        }
                        self.on_reports(&mut book, batch).await?;
                    }
                }
                _ = async move {
                    match next_timer {
                        Some(at) => clock.sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {
                    for (run_index, gate) in self.fire_timers(&mut book) {
                        self.evaluate_gate(&mut book, run_index, gate).await?;
                        self.finish_run_if_done(&mut book, run_index).await?;
                    }
                }
                _ = poll.tick() => self.poll_requests(&mut book).await?,
                changed = shutdown.0.changed(), if shutdown_open => {
                    let level = if changed.is_ok() { *shutdown.0.borrow_and_update() } else { ShutdownLevel::Running };
                    if changed.is_err() {
                        shutdown_open = false;
                    }
                    match level {
                        ShutdownLevel::Drain if !book.shutting_down => {
                            book.shutting_down = true;
                            drain_deadline = Some(self.clock.now() + self.config.shutdown_grace.as_millis() as Millis);
                        }
                        ShutdownLevel::Now => {
                            book.shutting_down = true;
                            drain_deadline = None;
                            for live in book.live.values() {
                                (live.stop)();
                            }
                        }
                        _ => {}
                    }
                }
                _ = {
                    let clock = self.clock.clone();
                    async move {
                        match drain_deadline {
                            Some(at) => clock.sleep_until(at).await,
                            None => std::future::pending().await,
                        }
                    }
                } => {
                    // The grace period is over: stop what still runs; it resumes next time.
                    drain_deadline = None;
                    for live in book.live.values() {
                        (live.stop)();
                    }
                }
            }
        }
        let mut summaries = Vec::new();
        for run in &book.runs {
            if runs.contains(&run.record.id) {
                summaries.push(RunSummary {
                    run: run.record.id,
                    partition: run.record.partition.clone(),
                    state: run.record.state,
                });
            }
        }
        Ok(summaries)
    }

    async fn load_run(
        &mut self,
        book: &mut Book,
        run: RunId,
        live: &[AttemptRecord],
    ) -> Result<(), EngineError> {
        let record = self.store.run(run).await?;
        let stored = self.store.task_runs(run).await?;
        let by_name: HashMap<&str, &keel_store::TaskRunRecord> = stored
            .iter()
            .map(|task| (task.task.as_str(), task))
            .collect();
        let slots: Vec<Slot> = (0..self.dag.len())
            .map(|index| match by_name.get(self.dag.name(index)) {
                Some(task) => Slot {
                    state: task.state,
                    outcome: task.outcome,
                    attempts: task.attempts,
                    charged: task.charged,
                    first_started_at: task.first_started_at,
                },
                // A task added to the pipeline after this run was created is not part of it.
                None => Slot {
                    state: TaskState::Done,
                    outcome: Some(Outcome::Skipped),
                    attempts: 0,
                    charged: 0,
                    first_started_at: None,
                },
            })
            .collect();
        let run_index = book.runs.len();
        book.runs.push(ActiveRun {
            record: record.clone(),
            remaining: vec![0; slots.len()],
            gates: vec![GateStatus::Waiting; self.topology.gates.len()],
            waived: vec![false; slots.len()],
            needs_rerun: vec![false; slots.len()],
            sensor_ready: vec![false; slots.len()],
            sensor_polls: vec![0; slots.len()],
            done: 0,
            slots,
            cancelling: false,
            finished: record.state.is_finished(),
        });
        if record.state.is_finished() {
            return Ok(());
        }
        // Count what is done, restore what the store remembers of each task, settle the gates as
        // stored (or, for a gate never recorded, as the task states imply), and find what can
        // start.
        let stored_gates = self.store.gates(run).await?;
        let active = &mut book.runs[run_index];
        let mut owed_reruns = Vec::new();
        for task in 0..self.dag.len() {
            let Some(stored) = by_name.get(self.dag.name(task)) else {
                continue;
            };
            active.sensor_polls[task] = stored.sensor_polls;
            if stored.rerun_pending {
                match stored.state {
                    TaskState::Running => active.needs_rerun[task] = true,
                    // It ended, but Keel died before running it again.
                    TaskState::Done if stored.outcome.is_some_and(Outcome::is_complete) => {
                        owed_reruns.push(task)
                    }
                    _ => {}
                }
            }
        }
        if !owed_reruns.is_empty() {
            let changes = owed_reruns
                .iter()
                .map(|task| TaskChange {
                    task: self.dag.name(*task).to_string(),
                    state: TaskState::Pending,
                    outcome: None,
                    not_before: None,
                    message: None,
                    reset_retry_budget: true,
                    reason: "an upstream task landed late while it ran; running again with it"
                        .into(),
                })
                .collect();
            self.store
                .update_tasks(run, changes, self.clock.now())
                .await?;
            for task in owed_reruns {
                active.slots[task].state = TaskState::Pending;
                active.slots[task].outcome = None;
            }
        }
        let mut landed_late = Vec::new();
        let mut failed_roots = Vec::new();
        for task in 0..self.dag.len() {
            let slot = &active.slots[task];
            if slot.state == TaskState::Done {
                active.done += 1;
                if !slot.outcome.is_some_and(Outcome::is_complete) {
                    failed_roots.push(task);
                }
            }
        }
        let now = self.clock.now();
        for (gate, definition) in self.topology.gates.iter().enumerate() {
            let stored = stored_gates
                .iter()
                .find(|stored| stored.phase == definition.phase);
            active.gates[gate] = match stored.map(|stored| stored.status) {
                Some(GateState::Open) => GateStatus::Open,
                Some(GateState::Failed) => GateStatus::Failed,
                Some(GateState::Sufficient { open_at }) => GateStatus::Sufficient { open_at },
                Some(GateState::Waiting) => GateStatus::Waiting,
                // A run from before gates were recorded: downstream work that already started
                // means the gate had opened.
                None if self.gate_had_opened(active, gate) => GateStatus::Open,
                None => GateStatus::Waiting,
            };
            match active.gates[gate] {
                GateStatus::Sufficient { open_at } => {
                    book.timers
                        .push(Reverse((open_at, run_index, Wake::Gate(gate))));
                }
                GateStatus::Open => {
                    for task in &definition.tasks {
                        let listed = stored.is_none_or(|stored| {
                            stored
                                .waived
                                .iter()
                                .any(|name| name == self.dag.name(*task))
                        });
                        active.waived[*task] = listed && !is_complete(&active.slots[*task]);
                        // Waived, then completed, but Keel died before reconciling.
                        if listed && is_complete(&active.slots[*task]) && stored.is_some() {
                            landed_late.push(*task);
                        }
                    }
                }
                _ => {}
            }
        }
        self.recompute_remaining(active);
        for task in 0..self.dag.len() {
            let slot = &active.slots[task];
            match slot.state {
                TaskState::Pending if active.remaining[task] == 0 => {
                    book.ready.push_back((run_index, task))
                }
                TaskState::Waiting => {
                    let stored = by_name
                        .get(self.dag.name(task))
                        .and_then(|task| task.not_before)
                        .unwrap_or(now);
                    book.timers
                        .push(Reverse((stored, run_index, Wake::Task(task))));
                }
                _ => {}
            }
        }
        // Recover the attempts a previous Keel left live.
        for attempt in live.iter().filter(|attempt| attempt.run == run) {
            let Some(task) = self.dag.index_of(&attempt.task) else {
                continue;
            };
            let epoch = match self
                .store
                .take_over_attempt(attempt.id, &self.config.owner, self.clock.now())
                .await
            {
                Ok(epoch) => epoch,
                Err(StoreError::StaleLease { .. }) => continue,
                Err(error) => return Err(error.into()),
            };
            book.runs[run_index].slots[task].state = TaskState::Running;
            let adopted = self
                .executor
                .adopt(PathBuf::from(&attempt.dir), attempt.pid);
            let how = match &adopted {
                Adopted::Running(_) => "adopted while still running",
                Adopted::Finished(_) => "finished while keel was down",
                Adopted::Gone => "lost",
            };
            (self.observer)(Progress::AttemptRecovered {
                run,
                partition: record.partition.clone(),
                task: attempt.task.clone(),
                attempt: attempt.number,
                how,
            });
            book.live.insert(
                attempt.id,
                Live::new(run_index, task, attempt.number, epoch),
            );
            match adopted {
                Adopted::Running(running) => {
                    // It still holds its place in the bulkheads of the resources it uses.
                    let permits: Vec<(usize, Permit)> = self.task_uses[task]
                        .iter()
                        .map(|resource| (*resource, book.resources[*resource].adopt()))
                        .collect();
                    if !permits.is_empty() {
                        book.permits.insert(attempt.id, permits);
                    }
                    watch(book, attempt.id, running);
                }
                Adopted::Finished(report) => {
                    self.on_reports(book, vec![(attempt.id, report)]).await?
                }
                Adopted::Gone => {
                    let report = lost_report("keel stopped before the attempt could finish");
                    self.on_reports(book, vec![(attempt.id, report)]).await?;
                }
            }
        }
        (self.observer)(Progress::RunLoaded {
            run,
            partition: record.partition.clone(),
            tasks: self.dag.len(),
            done: book.runs[run_index].done,
        });
        if record.cancel_requested {
            self.begin_cancel(book, run_index).await?;
        }
        for root in failed_roots {
            self.propagate_failure(book, run_index, root).await?;
        }
        // Tasks may have finished after a gate was last judged: judge again (a stored grace
        // period keeps its end).
        for gate in 0..self.topology.gates.len() {
            self.evaluate_gate(book, run_index, gate).await?;
        }
        for task in landed_late {
            self.reconcile(book, run_index, task).await?;
        }
        self.finish_run_if_done(book, run_index).await
    }

    /// Claims as many ready tasks as the concurrency cap allows, in one transaction, and starts
    /// them.
    async fn start_ready(&mut self, book: &mut Book) -> Result<(), EngineError> {
        let cap = self.spec.concurrency.max(1) as usize;
        loop {
            let room = cap.saturating_sub(book.live.len() + book.sensing);
            if room == 0 || book.shutting_down {
                return Ok(());
            }
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
            if picked.is_empty() {
                return Ok(());
            }
            let now = self.clock.now();
            let claims = picked
                .iter()
                .map(|(run_index, task)| {
                    let record = &book.runs[*run_index].record;
                    let number = book.runs[*run_index].slots[*task].attempts + 1;
                    ClaimAttempt {
                        run: record.id,
                        task: self.dag.name(*task).to_string(),
                        owner: self.config.owner.clone(),
                        dir: self
                            .attempt_dir(record.id, *task, number)
                            .display()
                            .to_string(),
                        // A retry may run a newer pipeline file than its run was created with.
                        version: self.version.clone(),
                        lease_expires_at: now + self.config.lease_ttl.as_millis() as Millis,
                        at: now,
                    }
                })
                .collect();
            let results = self.store.claim_attempts(claims).await?;
            let mut started = Vec::new();
            for ((run_index, task), result) in picked.into_iter().zip(results) {
                let mut permits = book.picked_permits.remove(&(run_index, task));
                if result.is_err()
                    && let Some(unused) = permits.take()
                {
                    self.release_permits(book, unused, ResourceVerdict::Neutral)
                        .await?;
                }
                match result {
                    Ok(attempt) => {
                        if let Some(permits) = permits {
                            book.permits.insert(attempt.id, permits);
                        }
                        // Every attempt that started gets its start time, even when the
                        // executor cannot say which process supervises it.
                        if let Some(pid) =
                            self.start_attempt(book, run_index, task, &attempt).await?
                        {
                            started.push((attempt.id, attempt.lease_epoch, pid));
                        }
                    }
                    Err(StoreError::AlreadyLive { .. }) => {
                        // Another run of this partition is running the task; try again shortly.
                        book.timers
                            .push(Reverse((now + 1_000, run_index, Wake::Task(task))));
                    }
                    Err(StoreError::NotClaimable { .. }) => {}
                    Err(error) => return Err(error.into()),
                }
            }
            if !started.is_empty() {
                // A stale result only means the attempt already ended; nothing to undo.
                self.store
                    .mark_attempts_started(started, self.clock.now())
                    .await?;
            }
        }
    }

    fn attempt_dir(&self, run: RunId, task: TaskIndex, number: u32) -> PathBuf {
        // One directory per attempt, flat under the run: every inode created costs, and an
        // attempt already creates its directory and its record file. Runs are numbered per
        // store, from 1, so the store's identity keeps two stores' attempts apart.
        self.config
            .attempts_dir
            .join(self.store.store_id())
            .join(run.0.to_string())
            .join(format!("{}.{number}", self.dag.name(task)))
    }

    /// A command of a task with its templates expanded, and the task environment of DESIGN §4.
    fn task_command_and_env(
        &mut self,
        record: &RunRecord,
        task: TaskIndex,
        template: &[String],
        attempt: u32,
        dir: &std::path::Path,
    ) -> (Vec<String>, Vec<(String, String)>) {
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
        let command: Vec<String> = template.iter().map(|part| expand(part, &values)).collect();
        let span_id = self.random.hex(16);
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

    /// Polls a task's sensor once, as a process like any attempt, but without an attempt row:
    /// a poll is not an attempt and uses up none.
    fn start_sensor(&mut self, book: &mut Book, run_index: usize, task: TaskIndex) {
        let now = self.clock.now();
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
            .join(self.store.store_id())
            .join(record.id.0.to_string())
            .join(format!("{}.sensor.{now}", self.dag.name(task)));
        let (command, env) = self.task_command_and_env(&record, task, &sensor.command, 0, &dir);
        let launch = Launch {
            dir,
            command,
            env,
            timeout: sensor
                .every
                .max(std::time::Duration::from_secs(1))
                .min(self.spec.tasks[task].timeout),
            heartbeat: None,
            kill_grace: self.config.kill_grace,
            log_cap: self.config.log_cap,
        };
        let sender = book.sensor_sender.clone();
        book.sensing += 1;
        match self.executor.launch(launch) {
            Ok(running) => {
                tokio::spawn(async move {
                    let report = running.completion.await;
                    let _ = sender.send((run_index, task, report));
                });
            }
            Err(error) => {
                let _ = sender.send((
                    run_index,
                    task,
                    Report::new(Outcome::Failed, format!("cannot start the sensor: {error}")),
                ));
            }
        }
    }

    /// A sensor poll ended: start the task, poll again later, or give up at the deadline.
    async fn on_sensor(
        &mut self,
        book: &mut Book,
        run_index: usize,
        task: TaskIndex,
        report: Report,
    ) -> Result<(), EngineError> {
        let now = self.clock.now();
        let sensor = self.spec.tasks[task]
            .wait_for
            .clone()
            .expect("a sensor report for a task with a sensor");
        let active = &mut book.runs[run_index];
        if active.cancelling
            || active.finished
            || !matches!(
                active.slots[task].state,
                TaskState::Waiting | TaskState::Pending
            )
        {
            return Ok(());
        }
        let run = active.record.id;
        let name = self.dag.name(task).to_string();
        let started = active.slots[task].first_started_at.unwrap_or(now);
        let (ready, final_outcome, message) = match report.outcome {
            Outcome::Succeeded | Outcome::NoData | Outcome::Skipped => (true, None, None),
            Outcome::FailedPermanent => (
                false,
                Some(Outcome::FailedPermanent),
                Some(format!(
                    "sensor failed permanently: {}",
                    report.message.unwrap_or_default()
                )),
            ),
            _ if now - started >= sensor.deadline.as_millis() as Millis => (
                false,
                Some(Outcome::NotReady),
                Some(format!(
                    "still not ready after {}: the sensor {:?} never reported ready",
                    keel_model::format_duration(sensor.deadline),
                    sensor.command.join(" ")
                )),
            ),
            _ => (false, None, report.message),
        };
        if let Some(outcome) = final_outcome {
            let change = TaskChange {
                task: name.clone(),
                state: TaskState::Done,
                outcome: Some(outcome),
                not_before: None,
                message: message.clone(),
                reset_retry_budget: false,
                reason: message.clone().unwrap_or_default(),
            };
            self.store.update_tasks(run, vec![change], now).await?;
            let slot = &mut active.slots[task];
            slot.state = TaskState::Done;
            slot.outcome = Some(outcome);
            (self.observer)(Progress::TasksSettled {
                run,
                partition: active.record.partition.clone(),
                tasks: vec![name],
                outcome,
            });
            return self.on_task_done(book, run_index, task, outcome).await;
        }
        let not_before = if ready {
            None
        } else {
            // Jittered backoff from `every` up to `max`: the upper half of the ceiling, so polls
            // spread out but never come in a burst.
            let polls = active.sensor_polls[task].max(1);
            let policy = keel_model::RetryPolicy {
                attempts: u32::MAX,
                initial: sensor.every,
                max: sensor.max,
                jitter: keel_model::Jitter::Equal,
            };
            let next = now + policy.delay(polls, self.random.unit()).as_millis() as Millis;
            Some(
                next.min(started + sensor.deadline.as_millis() as Millis)
                    .max(now),
            )
        };
        self.store
            .record_sensor_poll(SensorPoll {
                run,
                task: name,
                ready,
                not_before,
                message,
                at: now,
            })
            .await?;
        let active = &mut book.runs[run_index];
        match not_before {
            None => {
                active.sensor_ready[task] = true;
                active.slots[task].state = TaskState::Pending;
                book.ready.push_back((run_index, task));
            }
            Some(at) => {
                active.slots[task].state = TaskState::Waiting;
                book.timers.push(Reverse((at, run_index, Wake::Task(task))));
            }
        }
        Ok(())
    }

    /// Launches a claimed attempt. Returns `None` if it could not be started (it is then
    /// already recorded as failed), and otherwise the supervisor's pid if the executor knows it.
    async fn start_attempt(
        &mut self,
        book: &mut Book,
        run_index: usize,
        task: TaskIndex,
        attempt: &AttemptRecord,
    ) -> Result<Option<Option<u32>>, EngineError> {
        let now = self.clock.now();
        let record = book.runs[run_index].record.clone();
        let task_spec = self.spec.tasks[task].clone();
        let dir = PathBuf::from(&attempt.dir);
        // A new attempt runs with whatever landed upstream: no rerun is owed any more (the claim
        // cleared the stored mark too).
        book.runs[run_index].needs_rerun[task] = false;
        let slot = &mut book.runs[run_index].slots[task];
        slot.state = TaskState::Running;
        slot.attempts = attempt.number;
        slot.first_started_at.get_or_insert(now);
        let (command, env) =
            self.task_command_and_env(&record, task, &task_spec.command, attempt.number, &dir);
        let launch = Launch {
            dir,
            command,
            env,
            timeout: task_spec.timeout,
            heartbeat: task_spec.heartbeat,
            kill_grace: self.config.kill_grace,
            log_cap: self.config.log_cap,
        };
        book.live.insert(
            attempt.id,
            Live::new(run_index, task, attempt.number, attempt.lease_epoch),
        );
        (self.observer)(Progress::AttemptStarted {
            run: record.id,
            partition: record.partition.clone(),
            task: task_spec.name.clone(),
            attempt: attempt.number,
        });
        match self.executor.launch(launch) {
            Ok(running) => {
                let pid = running.pid;
                watch(book, attempt.id, running);
                Ok(Some(pid))
            }
            Err(error) => {
                let report = Report::new(
                    Outcome::Failed,
                    format!("cannot start the attempt: {error}"),
                );
                self.on_reports(book, vec![(attempt.id, report)]).await?;
                Ok(None)
            }
        }
    }

    /// Where a task goes after an attempt ended with `outcome`: done, retried at a time (charged
    /// to the retry policy or not), or left to resume. This is the one retry decision; the
    /// deadline, the breaker probe and the resources' retry budgets are all consulted here, in
    /// this order, and a retry it grants is recorded in those budgets.
    fn next_step(
        &mut self,
        book: &mut Book,
        live: &Live,
        outcome: Outcome,
        probe: bool,
    ) -> (TaskNext, Option<String>) {
        let now = self.clock.now();
        let active = &book.runs[live.run];
        let task_spec = &self.spec.tasks[live.task];
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
            let not_before = now + delay.as_millis() as Millis;
            let charge = false;
            return (TaskNext::Retry { not_before, charge }, None);
        }
        if !outcome.is_retryable() {
            return (TaskNext::Done(outcome), None);
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
        let charged = slot.charged + 1;
        if charged >= task_spec.retries.attempts {
            return (TaskNext::Done(outcome), None);
        }
        let uses = &self.task_uses[live.task];
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

    /// Records a batch of ended attempts in one transaction, then moves their tasks on.
    async fn on_reports(
        &mut self,
        book: &mut Book,
        reports: Vec<(AttemptId, Report)>,
    ) -> Result<(), EngineError> {
        let now = self.clock.now();
        let mut pending = Vec::with_capacity(reports.len());
        let mut finishes = Vec::with_capacity(reports.len());
        for (attempt, report) in reports {
            let Some(live) = book.live.remove(&attempt) else {
                continue;
            };
            let mut probe = false;
            if let Some(permits) = book.permits.remove(&attempt) {
                probe = permits.iter().any(|(_, permit)| permit.probe);
                self.release_permits(book, permits, ResourceVerdict::of(report.outcome))
                    .await?;
            }
            let (next, note) = self.next_step(book, &live, report.outcome, probe);
            let message = match (report.message.clone(), note) {
                (Some(message), Some(note)) => Some(format!("{message}; {note}")),
                (message, note) => message.or(note),
            };
            finishes.push(FinishAttempt {
                attempt,
                epoch: live.epoch,
                outcome: report.outcome,
                exit_code: report.exit_code,
                rows: report.rows,
                metrics: report.metrics.clone(),
                message: message.clone(),
                next: next.clone(),
                at: now,
            });
            pending.push((live, report.outcome, next, message));
        }
        if finishes.is_empty() {
            return Ok(());
        }
        let results = self.store.finish_attempts(finishes).await?;
        let mut done = Vec::new();
        for ((live, outcome, next, message), result) in pending.into_iter().zip(results) {
            match result {
                Ok(()) => {}
                Err(StoreError::StaleLease { .. }) => continue,
                Err(error) => return Err(error.into()),
            }
            let active = &mut book.runs[live.run];
            let slot = &mut active.slots[live.task];
            slot.outcome = Some(outcome);
            let retry_at = match &next {
                TaskNext::Done(final_outcome) => {
                    slot.state = TaskState::Done;
                    slot.outcome = Some(*final_outcome);
                    done.push((live.run, live.task, *final_outcome));
                    None
                }
                TaskNext::Retry { not_before, charge } => {
                    slot.state = TaskState::Waiting;
                    slot.charged += u32::from(*charge);
                    book.timers
                        .push(Reverse((*not_before, live.run, Wake::Task(live.task))));
                    Some(*not_before)
                }
                TaskNext::Resume => {
                    slot.state = TaskState::Pending;
                    None
                }
            };
            (self.observer)(Progress::AttemptFinished {
                run: active.record.id,
                partition: active.record.partition.clone(),
                task: self.dag.name(live.task).to_string(),
                attempt: live.number,
                outcome,
                message,
                retry_at,
            });
        }
        for (run_index, task, outcome) in done {
            self.on_task_done(book, run_index, task, outcome).await?;
        }
        Ok(())
    }

    async fn on_task_done(
        &mut self,
        book: &mut Book,
        run_index: usize,
        task: TaskIndex,
        outcome: Outcome,
    ) -> Result<(), EngineError> {
        let active = &mut book.runs[run_index];
        if std::mem::take(&mut active.needs_rerun[task])
            && outcome.is_complete()
            && !active.cancelling
        {
            // It ran without an upstream task that landed late: once more, with it.
            let slot = &mut active.slots[task];
            slot.state = TaskState::Pending;
            slot.outcome = None;
            let change = TaskChange {
                task: self.dag.name(task).to_string(),
                state: TaskState::Pending,
                outcome: None,
                not_before: None,
                message: None,
                reset_retry_budget: true,
                reason: "an upstream task landed late while it ran; running again with it".into(),
            };
            self.store
                .update_tasks(active.record.id, vec![change], self.clock.now())
                .await?;
            self.recompute_remaining(active);
            if active.remaining[task] == 0 {
                book.ready.push_back((run_index, task));
            }
            return Ok(());
        }
        active.done += 1;
        if outcome.is_complete() {
            let landed_late = std::mem::take(&mut active.waived[task]);
            for dependent in self.dag.dependents(task) {
                // An open gate already let this task's dependents outside its phase go on,
                // except those that name it in their own `after`: they waited for it.
                if landed_late && self.waivable(task, *dependent).is_some() {
                    continue;
                }
                let remaining = &mut active.remaining[*dependent];
                *remaining = remaining.saturating_sub(1);
                if *remaining == 0
                    && active.slots[*dependent].state == TaskState::Pending
                    && !active.cancelling
                {
                    book.ready.push_back((run_index, *dependent));
                }
            }
            if landed_late {
                self.reconcile(book, run_index, task).await?;
            }
        } else {
            self.propagate_failure(book, run_index, task).await?;
        }
        if let Some(gate) = self.topology.gate_of_task(task) {
            self.evaluate_gate(book, run_index, gate).await?;
        }
        self.finish_run_if_done(book, run_index).await
    }

    /// Marks everything downstream of a task that ended without completing as `upstream_failed`.
    async fn propagate_failure(
        &mut self,
        book: &mut Book,
        run_index: usize,
        task: TaskIndex,
    ) -> Result<(), EngineError> {
        let active = &mut book.runs[run_index];
        // Walk downstream, but not out of a gated phase whose gate may still open (or has
        // opened without this task): there the gate decides, not this failure.
        let mut seen = vec![false; self.dag.len()];
        let mut stack = vec![task];
        let mut blocked: Vec<TaskIndex> = Vec::new();
        while let Some(current) = stack.pop() {
            for dependent in self.dag.dependents(current) {
                if seen[*dependent] {
                    continue;
                }
                if let Some(gate) = self.waivable(current, *dependent)
                    && active.gates[gate] != GateStatus::Failed
                {
                    continue;
                }
                seen[*dependent] = true;
                stack.push(*dependent);
                if matches!(
                    active.slots[*dependent].state,
                    TaskState::Pending | TaskState::Waiting
                ) {
                    blocked.push(*dependent);
                }
            }
        }
        blocked.sort_unstable();
        if blocked.is_empty() {
            return Ok(());
        }
        let upstream = self.dag.name(task);
        let reason = format!(
            "upstream task {upstream:?} ended {}",
            active.slots[task]
                .outcome
                .map(Outcome::as_str)
                .unwrap_or("unfinished")
        );
        let changes = blocked
            .iter()
            .map(|downstream| TaskChange {
                task: self.dag.name(*downstream).to_string(),
                state: TaskState::Done,
                outcome: Some(Outcome::UpstreamFailed),
                not_before: None,
                message: Some(reason.clone()),
                reset_retry_budget: false,
                reason: reason.clone(),
            })
            .collect();
        self.store
            .update_tasks(active.record.id, changes, self.clock.now())
            .await?;
        for downstream in &blocked {
            let slot = &mut active.slots[*downstream];
            slot.state = TaskState::Done;
            slot.outcome = Some(Outcome::UpstreamFailed);
            active.done += 1;
        }
        (self.observer)(Progress::TasksSettled {
            run: active.record.id,
            partition: active.record.partition.clone(),
            tasks: blocked
                .iter()
                .map(|task| self.dag.name(*task).to_string())
                .collect(),
            outcome: Outcome::UpstreamFailed,
        });
        // A gated phase whose tasks were just settled may now be decided: a gate that can no
        // longer be met passes the failure on downstream.
        let mut gates: Vec<usize> = blocked
            .iter()
            .filter_map(|task| self.topology.gate_of_task(*task))
            .collect();
        gates.sort_unstable();
        gates.dedup();
        for gate in gates {
            Box::pin(self.evaluate_gate(book, run_index, gate)).await?;
        }
        Ok(())
    }

    async fn finish_run_if_done(
        &mut self,
        book: &mut Book,
        run_index: usize,
    ) -> Result<(), EngineError> {
        let active = &mut book.runs[run_index];
        if active.finished || active.done < active.slots.len() {
            return Ok(());
        }
        let not_complete: Vec<&str> = (0..active.slots.len())
            .filter(|task| {
                !active.slots[*task]
                    .outcome
                    .is_some_and(Outcome::is_complete)
            })
            .map(|task| self.dag.name(task))
            .collect();
        // Tasks an open gate let the run go on without: missing, not failed.
        let missing: Vec<&str> = (0..active.slots.len())
            .filter(|task| {
                !is_complete(&active.slots[*task])
                    && self
                        .topology
                        .gate_of_task(*task)
                        .is_some_and(|gate| active.gates[gate] == GateStatus::Open)
            })
            .map(|task| self.dag.name(task))
            .collect();
        let (state, message) = if active.cancelling {
            (
                RunState::Cancelled,
                Some("cancelled on request".to_string()),
            )
        } else if not_complete.is_empty() {
            (RunState::Succeeded, None)
        } else if missing.len() == not_complete.len() {
            (
                RunState::Degraded,
                Some(format!(
                    "{} missing: {}; retry them to complete the run",
                    missing.len(),
                    missing.join(", ")
                )),
            )
        } else {
            let shown: Vec<&str> = not_complete.iter().take(5).copied().collect();
            let more = not_complete.len().saturating_sub(shown.len());
            let mut message = format!(
                "{} of {} tasks did not complete: {}",
                not_complete.len(),
                active.slots.len(),
                shown.join(", ")
            );
            if more > 0 {
                message.push_str(&format!(" and {more} more"));
            }
            (RunState::Failed, Some(message))
        };
        self.store
            .set_run_state(active.record.id, state, message, self.clock.now())
            .await?;
        active.finished = true;
        active.record.state = state;
        (self.observer)(Progress::RunFinished {
            run: active.record.id,
            partition: active.record.partition.clone(),
            state,
        });
        Ok(())
    }

    /// Fresh resource policies, with the rate limits remembering the attempt starts of the last
    /// window from the store, so a restarted Keel does not grant itself a second burst.
    async fn resource_policies(&mut self) -> Result<Vec<ResourcePolicy>, EngineError> {
        let now = self.clock.now();
        let longest = self
            .spec
            .resources
            .iter()
            .filter_map(|resource| resource.rate.map(|rate| rate.per.as_millis() as Millis))
            .max();
        let starts = match longest {
            Some(window) => {
                self.store
                    .attempt_starts_since(&self.spec.name, now - window)
                    .await?
            }
            None => Vec::new(),
        };
        let stored = self.store.resource_states(&self.spec.name).await?;
        Ok(self
            .spec
            .resources
            .iter()
            .enumerate()
            .map(|(index, resource)| {
                let mine: Vec<Millis> = starts
                    .iter()
                    .filter(|(task, _)| {
                        self.dag
                            .index_of(task)
                            .is_some_and(|task| self.task_uses[task].contains(&index))
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

    /// Asks every resource a task uses whether an attempt may start now. If so, takes the
    /// permits (kept until the claim is known); if not, parks the task until a time or until
    /// an attempt on the resource ends. Waiting uses up no attempt.
    fn admit(&mut self, book: &mut Book, run_index: usize, task: TaskIndex) -> bool {
        let now = self.clock.now();
        let mut until: Option<Millis> = None;
        let mut release_of: Option<usize> = None;
        for resource in &self.task_uses[task] {
            match book.resources[*resource].check(now) {
                Ok(_) => {}
                Err(Wait::Until(at)) => until = Some(until.map_or(at, |current| current.max(at))),
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
        let permits = self.task_uses[task]
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
    fn wait_for_breaker(
        &self,
        book: &mut Book,
        resource: usize,
        run_index: usize,
        task: TaskIndex,
        probe_at: Option<Millis>,
    ) {
        let now = self.clock.now();
        let policy = &book.resources[resource];
        if policy.breaker_open_too_long(now) {
            let since = policy.breaker_open_since().unwrap_or(now);
            let down_for = std::time::Duration::from_millis((now - since).max(0) as u64);
            book.given_up.push((
                run_index,
                task,
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
    async fn settle_given_up(&mut self, book: &mut Book) -> Result<(), EngineError> {
        for (run_index, task, message) in std::mem::take(&mut book.given_up) {
            let active = &mut book.runs[run_index];
            if active.finished
                || !matches!(
                    active.slots[task].state,
                    TaskState::Pending | TaskState::Waiting
                )
            {
                continue;
            }
            let change = TaskChange {
                task: self.dag.name(task).to_string(),
                state: TaskState::Done,
                outcome: Some(Outcome::Failed),
                not_before: None,
                message: Some(message.clone()),
                reset_retry_budget: false,
                reason: message,
            };
            self.store
                .update_tasks(active.record.id, vec![change], self.clock.now())
                .await?;
            active.slots[task].state = TaskState::Done;
            active.slots[task].outcome = Some(Outcome::Failed);
            (self.observer)(Progress::TasksSettled {
                run: active.record.id,
                partition: active.record.partition.clone(),
                tasks: vec![self.dag.name(task).to_string()],
                outcome: Outcome::Failed,
            });
            self.on_task_done(book, run_index, task, Outcome::Failed)
                .await?;
        }
        Ok(())
    }

    /// Returns permits to their resources, records breaker transitions, and wakes the tasks
    /// that waited for an attempt on those resources to end.
    async fn release_permits(
        &mut self,
        book: &mut Book,
        permits: Vec<(usize, Permit)>,
        verdict: ResourceVerdict,
    ) -> Result<(), EngineError> {
        let now = self.clock.now();
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
                self.store
                    .set_resource_state(keel_store::ResourceStateRecord {
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
                    })
                    .await?;
                for run in book.runs.iter().filter(|run| !run.finished) {
                    self.store
                        .append_event(NewEvent {
                            run: run.record.id,
                            task: None,
                            attempt: None,
                            kind: "breaker".into(),
                            detail: format!("resource {name}: {detail}"),
                            at: now,
                        })
                        .await?;
                }
                (self.observer)(Progress::BreakerChanged {
                    resource: name,
                    state: label,
                    detail,
                });
            }
        }
        Ok(())
    }

    /// The gate that may waive the edge `dependency → task`: the gate of the dependency's phase
    /// when the edge leaves that phase, unless `task` names the dependency in its own `after`,
    /// which makes it a hard input that no gate waives.
    fn waivable(&self, dependency: TaskIndex, task: TaskIndex) -> Option<usize> {
        self.topology
            .crosses_gate(dependency, task)
            .filter(|_| !self.dag.is_explicit(task, dependency))
    }

    /// Whether downstream work outside a gated phase already started, which means its gate had
    /// opened; for runs whose gates were never recorded.
    fn gate_had_opened(&self, active: &ActiveRun, gate: usize) -> bool {
        self.topology.gates[gate].tasks.iter().any(|task| {
            self.dag.dependents(*task).iter().any(|dependent| {
                self.waivable(*task, *dependent).is_some()
                    && active.slots[*dependent].state != TaskState::Pending
            })
        })
    }

    /// The gate's state as the store keeps it, waived tasks by name.
    fn gate_record(&self, active: &ActiveRun, gate: usize) -> GateRecord {
        let definition = &self.topology.gates[gate];
        GateRecord {
            phase: definition.phase.clone(),
            status: match active.gates[gate] {
                GateStatus::Waiting => GateState::Waiting,
                GateStatus::Sufficient { open_at } => GateState::Sufficient { open_at },
                GateStatus::Open => GateState::Open,
                GateStatus::Failed => GateState::Failed,
            },
            waived: definition
                .tasks
                .iter()
                .filter(|task| active.waived[**task])
                .map(|task| self.dag.name(*task).to_string())
                .collect(),
        }
    }

    /// Counts, for every task of a run, the dependencies it still waits for: those not complete,
    /// except those an open gate waived.
    fn recompute_remaining(&self, active: &mut ActiveRun) {
        for task in 0..self.dag.len() {
            active.remaining[task] = self
                .dag
                .dependencies(task)
                .iter()
                .filter(|dependency| {
                    let waived =
                        active.waived[**dependency] && self.waivable(**dependency, task).is_some();
                    !is_complete(&active.slots[**dependency]) && !waived
                })
                .count() as u32;
        }
    }

    fn fire_timers(&mut self, book: &mut Book) -> Vec<(usize, usize)> {
        let now = self.clock.now();
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

    /// Re-judges a gate after one of its tasks finished, or when its grace period ran out.
    async fn evaluate_gate(
        &mut self,
        book: &mut Book,
        run_index: usize,
        gate: usize,
    ) -> Result<(), EngineError> {
        let now = self.clock.now();
        let active = &mut book.runs[run_index];
        let status = active.gates[gate];
        if matches!(status, GateStatus::Open | GateStatus::Failed) || active.cancelling {
            return Ok(());
        }
        let definition = &self.topology.gates[gate];
        let verdict = judge(
            definition,
            |task| is_complete(&active.slots[task]),
            |task| active.slots[task].state == TaskState::Done,
        );
        match (verdict, status) {
            (Verdict::Sufficient { all_done: true }, _) => {
                self.open_gate(book, run_index, gate).await?
            }
            (Verdict::Sufficient { .. }, GateStatus::Sufficient { open_at }) if now >= open_at => {
                self.open_gate(book, run_index, gate).await?
            }
            (Verdict::Sufficient { .. }, GateStatus::Waiting) => {
                let open_at = now + definition.grace;
                active.gates[gate] = GateStatus::Sufficient { open_at };
                book.timers
                    .push(Reverse((open_at, run_index, Wake::Gate(gate))));
                // The grace period's end is stored, so a restart does not start it again.
                let record = self.gate_record(active, gate);
                self.store
                    .apply(
                        active.record.id,
                        vec![
                            Change::Gate(record),
                            Change::Event {
                                task: None,
                                kind: "gate_sufficient".into(),
                                detail: format!(
                                    "phase {}: waiting up to {} ms for the rest",
                                    definition.phase, definition.grace
                                ),
                            },
                        ],
                        now,
                    )
                    .await?;
            }
            (Verdict::Insufficient, _) => {
                active.gates[gate] = GateStatus::Failed;
                let failed: Vec<TaskIndex> = definition
                    .tasks
                    .iter()
                    .copied()
                    .filter(|task| !is_complete(&active.slots[*task]))
                    .collect();
                let record = self.gate_record(active, gate);
                self.store
                    .apply(
                        active.record.id,
                        vec![
                            Change::Gate(record),
                            Change::Event {
                                task: None,
                                kind: "gate_failed".into(),
                                detail: format!(
                                    "phase {}: the gate can no longer be met",
                                    definition.phase
                                ),
                            },
                        ],
                        now,
                    )
                    .await?;
                for task in failed {
                    self.propagate_failure(book, run_index, task).await?;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Opens a sufficient gate: downstream proceeds without the tasks still missing.
    async fn open_gate(
        &mut self,
        book: &mut Book,
        run_index: usize,
        gate: usize,
    ) -> Result<(), EngineError> {
        let definition = self.topology.gates[gate].clone();
        let active = &mut book.runs[run_index];
        active.gates[gate] = GateStatus::Open;
        let missing: Vec<TaskIndex> = definition
            .tasks
            .iter()
            .copied()
            .filter(|task| !is_complete(&active.slots[*task]))
            .collect();
        for task in &missing {
            active.waived[*task] = true;
            for dependent in self.dag.dependents(*task) {
                if self.waivable(*task, *dependent).is_some() {
                    let remaining = &mut active.remaining[*dependent];
                    *remaining = remaining.saturating_sub(1);
                    if *remaining == 0 && active.slots[*dependent].state == TaskState::Pending {
                        book.ready.push_back((run_index, *dependent));
                    }
                }
            }
        }
        let names: Vec<String> = missing
            .iter()
            .map(|task| self.dag.name(*task).to_string())
            .collect();
        let detail = if names.is_empty() {
            format!("phase {}: complete", definition.phase)
        } else {
            format!(
                "phase {}: downstream proceeds without {}",
                definition.phase,
                names.join(", ")
            )
        };
        let record = self.gate_record(active, gate);
        self.store
            .apply(
                active.record.id,
                vec![
                    Change::Gate(record),
                    Change::Event {
                        task: None,
                        kind: "gate_opened".into(),
                        detail,
                    },
                ],
                self.clock.now(),
            )
            .await?;
        if !names.is_empty() {
            (self.observer)(Progress::GateOpened {
                run: active.record.id,
                partition: active.record.partition.clone(),
                phase: definition.phase.clone(),
                missing: names,
            });
        }
        Ok(())
    }

    /// A waived task completed after all: everything downstream of it that ran without it runs
    /// again, so the run can end `succeeded`. What finished is reset, what is running owes a
    /// rerun, and the task leaves the gate's waived list, all in one transaction: a Keel killed
    /// at any point either reconciles again on restart (the task is still listed as waived) or
    /// finds every rerun recorded.
    async fn reconcile(
        &mut self,
        book: &mut Book,
        run_index: usize,
        landed: TaskIndex,
    ) -> Result<(), EngineError> {
        let active = &mut book.runs[run_index];
        active.waived[landed] = false;
        let name = self.dag.name(landed).to_string();
        let reason = format!("upstream task {name:?} landed late; running again with it");
        let downstream: Vec<TaskIndex> = self
            .dag
            .downstream_of(&[landed])
            .into_iter()
            .filter(|task| !self.topology.same_phase(landed, *task))
            .collect();
        let mut changes = Vec::new();
        for task in downstream {
            match active.slots[task].state {
                TaskState::Done => {
                    let slot = &mut active.slots[task];
                    slot.state = TaskState::Pending;
                    slot.outcome = None;
                    active.done -= 1;
                    changes.push(Change::Task(TaskChange {
                        task: self.dag.name(task).to_string(),
                        state: TaskState::Pending,
                        outcome: None,
                        not_before: None,
                        message: None,
                        reset_retry_budget: true,
                        reason: reason.clone(),
                    }));
                }
                TaskState::Running => {
                    active.needs_rerun[task] = true;
                    changes.push(Change::MarkRerun {
                        task: self.dag.name(task).to_string(),
                        reason: reason.clone(),
                    });
                }
                TaskState::Pending | TaskState::Waiting => {}
            }
        }
        if let Some(gate) = self.topology.gate_of_task(landed) {
            changes.push(Change::Gate(self.gate_record(active, gate)));
        }
        self.store
            .apply(active.record.id, changes, self.clock.now())
            .await?;
        self.recompute_remaining(active);
        for task in 0..self.dag.len() {
            if active.slots[task].state == TaskState::Pending && active.remaining[task] == 0 {
                book.ready.push_back((run_index, task));
            }
        }
        Ok(())
    }

    async fn poll_requests(&mut self, book: &mut Book) -> Result<(), EngineError> {
        for run_index in 0..book.runs.len() {
            let active = &book.runs[run_index];
            if active.finished || active.cancelling {
                continue;
            }
            let record = self.store.run(active.record.id).await?;
            if record.cancel_requested {
                self.begin_cancel(book, run_index).await?;
            }
        }
        Ok(())
    }

    async fn begin_cancel(&mut self, book: &mut Book, run_index: usize) -> Result<(), EngineError> {
        let active = &mut book.runs[run_index];
        if active.cancelling || active.finished {
            return Ok(());
        }
        active.cancelling = true;
        for live in book.live.values().filter(|live| live.run == run_index) {
            (live.stop)();
        }
        let waiting: Vec<TaskIndex> = (0..active.slots.len())
            .filter(|task| {
                matches!(
                    active.slots[*task].state,
                    TaskState::Pending | TaskState::Waiting
                )
            })
            .collect();
        if !waiting.is_empty() {
            let changes = waiting
                .iter()
                .map(|task| TaskChange {
                    task: self.dag.name(*task).to_string(),
                    state: TaskState::Done,
                    outcome: Some(Outcome::Cancelled),
                    not_before: None,
                    message: Some("the run was cancelled".into()),
                    reset_retry_budget: false,
                    reason: "the run was cancelled".into(),
                })
                .collect();
            self.store
                .update_tasks(active.record.id, changes, self.clock.now())
                .await?;
            for task in &waiting {
                active.slots[*task].state = TaskState::Done;
                active.slots[*task].outcome = Some(Outcome::Cancelled);
                active.done += 1;
            }
        }
        self.store
            .append_event(NewEvent {
                run: active.record.id,
                task: None,
                attempt: None,
                kind: "cancelling".into(),
                detail: format!(
                    "{} waiting tasks cancelled, running attempts stopped",
                    waiting.len()
                ),
                at: self.clock.now(),
            })
            .await?;
        self.finish_run_if_done(book, run_index).await
    }

    /// Nothing is running, ready or scheduled, yet a run has unfinished tasks. With a valid DAG
    /// this cannot happen; if it does, the run fails loudly rather than hanging.
    async fn settle_stuck_runs(&mut self, book: &mut Book) -> Result<(), EngineError> {
        for run_index in 0..book.runs.len() {
            if book.runs[run_index].finished {
                continue;
            }
            let active = &mut book.runs[run_index];
            let stuck: Vec<TaskIndex> = (0..active.slots.len())
                .filter(|task| active.slots[*task].state != TaskState::Done)
                .collect();
            let changes = stuck
                .iter()
                .map(|task| TaskChange {
                    task: self.dag.name(*task).to_string(),
                    state: TaskState::Done,
                    outcome: Some(Outcome::UpstreamFailed),
                    not_before: None,
                    message: Some(
                        "no path to start this task; its dependencies can never complete".into(),
                    ),
                    reset_retry_budget: false,
                    reason: "stuck".into(),
                })
                .collect();
            self.store
                .update_tasks(active.record.id, changes, self.clock.now())
                .await?;
            for task in stuck {
                active.slots[task].state = TaskState::Done;
                active.slots[task].outcome = Some(Outcome::UpstreamFailed);
                active.done += 1;
            }
            self.finish_run_if_done(book, run_index).await?;
        }
        Ok(())
    }
}

/// Edit distance for "did you mean" on task names given on the command line.
pub(crate) fn strsim_like(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            current.push(
                (previous[j] + cost)
                    .min(previous[j + 1] + 1)
                    .min(current[j] + 1),
            );
        }
        previous = current;
    }
    previous[b.len()]
}
