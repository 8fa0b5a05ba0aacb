use std::cmp::Reverse;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::policy::{Permit, ResourcePolicy, Verdict as ResourceVerdict};
use keel_exec::{Adopted, Executor, Launch, Report};
use keel_model::{
    AttemptId, Dag, Millis, Outcome, PipelineSpec, RunId, RunState, SpanId, TaskIndex, TaskState,
    TraceId,
};
use keel_store::{
    AttemptRecord, Change, ClaimAttempt, NewRun, RunRecord, Store, StoreError, Write,
};
use tokio::sync::mpsc;

use crate::gate::Topology;
use crate::{Clock, EngineError, Random};

mod core;
mod driver;
mod serve;

use self::core::{Book, Commands, Core, Effect, Followup, Live, Wake, lost_report};

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
    /// Where the pipeline file is, Keel's own environment and the env files: what tasks start
    /// from beyond the pipeline file.
    pub launch_context: LaunchContext,
}

/// Where the driver reads a task's secrets (`secrets = [...]`) when it launches an attempt: a
/// blocking call (a store to decrypt, a command to run), made off the runtime thread. Its error
/// says why without the value.
pub type SecretSource = std::sync::Arc<dyn Fn(&str) -> Result<String, String> + Send + Sync>;

/// What a task's working directory and environment are made from, beyond the pipeline file
/// (docs/pipeline.md, "Working directory and environment"). The driver's caller reads these;
/// the core only combines them.
#[derive(Clone, Default)]
pub struct LaunchContext {
    /// Where the driver reads secrets; `None` refuses to launch a task that declares one.
    pub secrets: Option<SecretSource>,
    /// The pipeline file's directory: tasks run there unless their `cwd` says otherwise, and a
    /// relative `cwd` is relative to it. `None` leaves tasks where Keel runs.
    pub pipeline_dir: Option<PathBuf>,
    /// Keel's own environment, which `inherit_env = ["NAME", …]` picks from.
    pub keel_env: Vec<(String, String)>,
    /// The variables of each `env_file`, by the path as the pipeline file writes it.
    pub env_files: HashMap<String, Vec<(String, String)>>,
    /// Per task name: what tells its code apart (its `version` command's output, or its `code`
    /// files' digests), read by the CLI before the engine starts; part of the task's version.
    pub code_identities: HashMap<String, String>,
}

impl std::fmt::Debug for LaunchContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaunchContext")
            .field("pipeline_dir", &self.pipeline_dir)
            .field("keel_env", &self.keel_env.len())
            .field("env_files", &self.env_files.keys().collect::<Vec<_>>())
            .field("secrets", &self.secrets.is_some())
            .finish()
    }
}

/// What `keel run` asks for.
#[derive(Debug, Clone, Default)]
pub struct RunRequest {
    pub partitions: Vec<String>,
    /// Run only these tasks; the rest of a new run is `skipped` and the run ends `partial`
    /// unless one of them fails; a plain run of a `partial` run runs what was left out.
    pub only: Vec<String>,
    /// Start a new run even if the partition already finished.
    pub rerun: bool,
    /// Run this pass (`[passes.NAME]`): its tasks and params, in runs kept apart from the
    /// pipeline's own. `only` may not be given with it.
    pub pass: Option<String>,
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
    /// Stop the loop now and leave running attempts alone, for another engine of this process
    /// to adopt (a reloaded pipeline file): nothing is stopped, nothing new starts.
    Release,
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

    /// Stop the engine's loop and leave its running attempts to another engine; ignored once a
    /// shutdown was asked for, which wins.
    pub fn release(&self) {
        self.0.send_if_modified(|level| {
            let changed = *level == ShutdownLevel::Running;
            if changed {
                *level = ShutdownLevel::Release;
            }
            changed
        });
    }
}

impl Shutdown {
    /// Where the shutdown stands now.
    pub fn level(&self) -> ShutdownLevel {
        *self.0.borrow()
    }

    /// Waits for the next change; `None` once the trigger is gone and none can come.
    pub async fn changed(&mut self) -> Option<ShutdownLevel> {
        self.0.changed().await.ok()?;
        Some(*self.0.borrow_and_update())
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
        trace: TraceId,
    },
    /// `span` is the attempt's span, the parent id of its `TRACEPARENT`; `at` when it started.
    AttemptStarted {
        run: RunId,
        partition: String,
        task: String,
        attempt: u32,
        trace: TraceId,
        span: SpanId,
        at: Millis,
        /// How long the task waited between the engine finding it ready (its inputs complete,
        /// its retry due) and this start: concurrency, resources and partition limits.
        ready_wait: Option<Millis>,
    },
    AttemptRecovered {
        run: RunId,
        partition: String,
        task: String,
        attempt: u32,
        how: &'static str,
        trace: TraceId,
        span: SpanId,
    },
    AttemptFinished {
        run: RunId,
        partition: String,
        task: String,
        attempt: u32,
        outcome: Outcome,
        message: Option<String>,
        retry_at: Option<Millis>,
        trace: TraceId,
        span: SpanId,
        started_at: Millis,
        finished_at: Millis,
    },
    /// A canary version of a task was promoted or rolled back (`rollout`); a rollback alerts.
    RolloutDecided {
        run: RunId,
        partition: String,
        task: String,
        version: String,
        status: keel_model::VersionStatus,
        detail: String,
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
        trace: TraceId,
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
    /// The run's trace ends: its root span ran from `started_at` (the run's creation) to
    /// `finished_at`.
    RunFinished {
        run: RunId,
        partition: String,
        state: RunState,
        trace: TraceId,
        started_at: Millis,
        finished_at: Millis,
    },
    /// An unfinished run this engine will not carry on, and why (the pipeline file lost tasks
    /// it has not finished).
    RunRefused {
        run: RunId,
        partition: String,
        reason: String,
    },
    /// The schedule fired at `fire_at` for `partition`: a new run, or `joined` an unfinished one.
    RunScheduled {
        run: RunId,
        partition: String,
        fire_at: Millis,
        joined: bool,
        /// The pass whose schedule fired; `None` for the pipeline's own `schedule`.
        pass: Option<String>,
        /// When the run was recorded: `started_at - fire_at` is the schedule's lag.
        started_at: Millis,
    },
    /// A fire of the schedule that could not start a run.
    ScheduleSkipped { fire_at: Millis, reason: String },
    /// `backfill = { auto = true }` started (or joined) a run to repair a gap: the `repair`th
    /// repair of `partition`, which was `kind` (`missing`, `failed`).
    BackfillStarted {
        run: RunId,
        partition: String,
        kind: &'static str,
        repair: u32,
        started_at: Millis,
    },
    /// A gap that automatic backfill will not repair (its tries are spent, or its run is stale):
    /// a person is needed. Sent once per gap, recorded on its latest run.
    GapUnrepaired {
        run: RunId,
        partition: String,
        kind: &'static str,
        detail: String,
    },
    /// A task waited for a resource's rate limit instead of starting.
    RateLimited { resource: String, task: String },
    /// A resource's health probe (`ready`) failed, or passed after failing: tasks using it
    /// wait, using up no attempt, while it fails.
    ResourceProbe {
        resource: String,
        healthy: bool,
        message: Option<String>,
    },
    /// A sensor poll ended: `verdict` is `ready`, `not_ready`, `error`, or the outcome that
    /// ended the task (`no_data`, `failed_permanent`, ...).
    SensorPolled {
        run: RunId,
        partition: String,
        task: String,
        verdict: &'static str,
    },
    /// Tasks in the ready queue, waiting for room to start; sent when the number changes.
    QueueDepth { ready: usize },
    /// A check of a task's result failed (`checks`): a `block` check made the attempt
    /// `failed_check`, a `warn` check is only told. `detail` says which bound and what value.
    /// A phase's completeness check, judged as the run ends, is told with `task` set to
    /// `phase NAME` and `attempt` 0; a `block` one failed the run.
    CheckFailed {
        run: RunId,
        partition: String,
        task: String,
        attempt: u32,
        severity: keel_model::Severity,
        detail: String,
    },
    /// A task asked its upstream tasks `heal` to run again (a failed check's `heal`, or its
    /// result's `"heal"`), and the run's budget allowed it: the `used`th of `budget` heals.
    HealRequested {
        run: RunId,
        partition: String,
        task: String,
        heal: Vec<String>,
        used: u32,
        budget: u32,
    },
    /// A task that asked to heal ended without completing with its run's heal budget spent;
    /// told once, in place of the task's own failure.
    HealExhausted {
        run: RunId,
        partition: String,
        task: String,
        detail: String,
    },
}

/// The Keel engine for one pipeline version: the core that decides, and what the driver needs to
/// carry its decisions out.
pub struct Engine<S: Store, E: Executor, C: Clock> {
    core: Core,
    store: S,
    executor: Arc<E>,
    clock: Arc<C>,
    /// Stamped with the clock's time on every turn of `serve`'s loop; see [`Engine::set_heartbeat`].
    heartbeat: Option<Arc<std::sync::atomic::AtomicI64>>,
}

/// Where the engine's loop hears from attempts, sensors, the shutdown trigger and its timers,
/// and how it reaches the attempts it started.
struct Inbox {
    /// Attempts report their end here.
    reporter: mpsc::UnboundedSender<(AttemptId, Report)>,
    /// Sensor polls report here: (run, task, report).
    sensor_reporter: mpsc::UnboundedSender<(usize, TaskIndex, Report)>,
    probe_reporter: mpsc::UnboundedSender<(usize, Report)>,
    probes: mpsc::UnboundedReceiver<(usize, Report)>,
    /// How to stop each attempt this engine follows.
    stops: HashMap<AttemptId, Arc<dyn Fn() + Send + Sync>>,
    reports: mpsc::UnboundedReceiver<(AttemptId, Report)>,
    sensors: mpsc::UnboundedReceiver<(usize, TaskIndex, Report)>,
    shutdown: Shutdown,
    /// False once the shutdown trigger was dropped: no shutdown can come any more.
    shutdown_open: bool,
    /// When to look in the store for cancel requests from other processes.
    poll: tokio::time::Interval,
    /// When a drain's grace period ends.
    drain_deadline: Option<Millis>,
}

/// What woke the engine's loop.
enum Wakeup {
    Sensor(usize, TaskIndex, Report),
    Probe(usize, Report),
    Reports(Vec<(AttemptId, Report)>),
    Timer,
    Poll,
    Shutdown(ShutdownLevel),
    DrainOver,
}

/// Sleeps until something needs the engine: an attempt or a sensor poll ended, a timer is due,
/// the store is due a poll for requests, or a shutdown was asked for or ran out. A free function,
/// so that the engine itself need not be shared across the await.
async fn wait<C: Clock>(clock: Arc<C>, next_timer: Option<Millis>, inbox: &mut Inbox) -> Wakeup {
    let sleep_until = |at: Option<Millis>| {
        let clock = clock.clone();
        async move {
            match at {
                Some(at) => clock.sleep_until(at).await,
                None => std::future::pending().await,
            }
        }
    };
    tokio::select! {
        Some((run_index, task, report)) = inbox.sensors.recv() => {
            Wakeup::Sensor(run_index, task, report)
        }
        Some((resource, report)) = inbox.probes.recv() => Wakeup::Probe(resource, report),
        Some(first) = inbox.reports.recv() => {
            let mut batch = vec![first];
            while let Ok(next) = inbox.reports.try_recv() {
                batch.push(next);
            }
            Wakeup::Reports(batch)
        }
        _ = sleep_until(next_timer) => Wakeup::Timer,
        _ = inbox.poll.tick() => Wakeup::Poll,
        changed = inbox.shutdown.0.changed(), if inbox.shutdown_open => match changed {
            Ok(()) => Wakeup::Shutdown(*inbox.shutdown.0.borrow_and_update()),
            Err(_) => {
                inbox.shutdown_open = false;
                Wakeup::Poll
            }
        },
        _ = sleep_until(inbox.drain_deadline) => Wakeup::DrainOver,
    }
}

/// Follows a started attempt: keeps its stop handle and reports its end to the engine's loop.
fn watch(inbox: &mut Inbox, attempt: AttemptId, running: keel_exec::Running) {
    inbox.stops.insert(attempt, running.stop.clone());
    let sender = inbox.reporter.clone();
    tokio::spawn(async move {
        let report = running.completion.await;
        let _ = sender.send((attempt, report));
    });
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
        // A pass runs the phases with its own gates where it overrides them.
        let topologies = std::iter::once(Topology::new(&spec, &dag))
            .chain(spec.passes.iter().map(|pass| {
                let mut gated = spec.clone();
                for phase in &mut gated.phases {
                    if let Some(gate) = pass.gates.get(&phase.name) {
                        phase.gate = Some(gate.clone());
                    }
                }
                Topology::new(&gated, &dag)
            }))
            .collect();
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
        let store_id: Arc<str> = store.store_id().into();
        let commands = spec.tasks.iter().map(Commands::of).collect();
        let task_versions = Core::compute_task_versions(&spec, &config);
        let rollouts = vec![Default::default(); spec.tasks.len()];
        Engine {
            core: Core {
                task_versions,
                rollouts,
                random,
                version: spec.version(),
                spec: Arc::new(spec),
                dag,
                topologies,
                task_uses,
                commands,
                config,
                store_id,
                observer: Box::new(|_| {}),
                items: Vec::new(),
                item_index: HashMap::new(),
            },
            store,
            executor: Arc::new(executor),
            clock: Arc::new(clock),
            heartbeat: None,
        }
    }

    /// Receives live progress events.
    pub fn observe(&mut self, observer: impl FnMut(Progress) + Send + 'static) {
        self.core.observer = Box::new(observer);
    }

    /// At most this many partitions run at once (`--sequential` is 1), whatever the pipeline's
    /// `max_active_partitions` says.
    pub fn set_max_active_partitions(&mut self, limit: u32) {
        Arc::make_mut(&mut self.core.spec).max_active_partitions = Some(limit.max(1));
    }

    /// Has [`Engine::serve`] stamp `heartbeat` with the clock's time (ms since the epoch) on
    /// every turn of its loop, which wakes at least once per poll interval: a reader that sees
    /// the stamp grow old knows the loop is stuck (`/ready` of `keel serve`).
    pub fn set_heartbeat(&mut self, heartbeat: Arc<std::sync::atomic::AtomicI64>) {
        self.heartbeat = Some(heartbeat);
    }

    /// How long running attempts may finish after a drain is asked for.
    pub fn set_shutdown_grace(&mut self, grace: Duration) {
        self.core.config.shutdown_grace = grace;
    }

    pub fn spec(&self) -> &PipelineSpec {
        &self.core.spec
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    fn check_task_names(&self, names: &[String]) -> Result<Vec<TaskIndex>, EngineError> {
        names
            .iter()
            .map(|name| {
                self.core
                    .dag
                    .index_of(name)
                    .ok_or_else(|| EngineError::unknown_task(&self.core.spec, name))
            })
            .collect()
    }

    /// Decides, per partition, whether to create a run, carry on an unfinished one, or do
    /// nothing because the partition already finished.
    pub async fn prepare(&mut self, request: &RunRequest) -> Result<Vec<Prepared>, EngineError> {
        let only = self.check_task_names(&request.only)?;
        let pass = match &request.pass {
            Some(name) => Some(
                self.core
                    .spec
                    .pass(name)
                    .cloned()
                    .ok_or_else(|| EngineError::unknown_pass(&self.core.spec, name))?,
            ),
            None => None,
        };
        if let Some(pass) = &pass
            && !only.is_empty()
        {
            return Err(EngineError::OnlyWithPass {
                pass: pass.name.clone(),
            });
        }
        let pass_name = pass.as_ref().map(|pass| pass.name.as_str());
        let mut prepared = Vec::new();
        for partition in &request.partitions {
            let latest = self
                .store
                .latest_run_of(&self.core.spec.name, partition, pass_name)
                .await?;
            match latest {
                Some(run) if !run.state.is_finished() => {
                    self.take_up_pipeline_changes(&run).await?;
                    prepared.push(Prepared::Resumed(run.id))
                }
                Some(run) if run.state == RunState::Partial && !request.rerun => {
                    if self.reopen_left_out(&run, &only).await? {
                        prepared.push(Prepared::Resumed(run.id))
                    } else {
                        prepared.push(Prepared::AlreadyFinished(run))
                    }
                }
                Some(run) if !request.rerun => prepared.push(Prepared::AlreadyFinished(run)),
                _ => {
                    let (new_run, calendar) = match &pass {
                        Some(pass) => self.new_pass_run(partition, pass),
                        None => self.new_run(partition, &only),
                    };
                    let run = self.store.create_run(new_run).await?;
                    // Every gate is stored from the start, so a restarted Keel never has to
                    // guess whether one had opened. The tasks a calendar skips were created
                    // settled; their reason follows (a run read back without it still skips
                    // them, as `Core::calendar_skip` decides from the spec alone).
                    let topology = self.core.topology_index(pass_name);
                    let mut changes = self
                        .core
                        .waiting_gates(topology, 0..self.core.topologies[topology].gates.len());
                    changes.extend(calendar);
                    if !changes.is_empty() {
                        self.store.apply(run.id, changes, self.clock.now()).await?;
                    }
                    prepared.push(Prepared::Created(run.id));
                }
            }
        }
        Ok(prepared)
    }

    /// A new run of `partition` as the store creates it, and what to store with it: with
    /// `only`, the other tasks are settled `skipped` from the start, and so are the tasks whose
    /// calendar (`when`) leaves out the partition's date, with the reason as their message.
    fn new_run(&mut self, partition: &str, only: &[TaskIndex]) -> (NewRun, Vec<Change>) {
        let in_run: Vec<TaskIndex> = (0..self.core.spec.tasks.len())
            .filter(|index| only.is_empty() || only.contains(index))
            .collect();
        let tasks = self
            .core
            .spec
            .tasks
            .iter()
            .enumerate()
            .map(|(index, task)| {
                let skipped =
                    !in_run.contains(&index) || self.core.calendar_skip(partition, index).is_some();
                (
                    task.name.clone(),
                    task.phase.clone(),
                    skipped.then_some(Outcome::Skipped),
                )
            })
            .collect();
        let new_run = NewRun {
            pipeline: self.core.spec.name.clone(),
            partition: partition.to_string(),
            version: self.core.spec.version(),
            trace_id: self.core.random.hex(32),
            tasks,
            at: self.clock.now(),
            pass: None,
        };
        (new_run, self.core.calendar_changes(partition, &in_run))
    }

    /// A new run of `partition` for `pass`: the tasks outside the pass are settled `skipped`
    /// from the start (taken as done, not run), and the run ends `succeeded` once the pass's
    /// own tasks have.
    fn new_pass_run(
        &mut self,
        partition: &str,
        pass: &keel_model::PassSpec,
    ) -> (NewRun, Vec<Change>) {
        let in_pass: Vec<TaskIndex> = pass
            .tasks
            .iter()
            .filter_map(|task| self.core.dag.index_of(task))
            .collect();
        let (new_run, changes) = self.new_run(partition, &in_pass);
        let new_run = NewRun {
            pass: Some(pass.name.clone()),
            ..new_run
        };
        (new_run, changes)
    }

    /// Takes up the tasks `--only` left out of a `partial` run: those asked for now (every one
    /// for a plain `keel run`) and what is downstream of them are reset to run, in one
    /// transaction, as a retry resets them; those still left out stay so. Whether any was.
    async fn reopen_left_out(
        &mut self,
        run: &RunRecord,
        only: &[TaskIndex],
    ) -> Result<bool, EngineError> {
        let stored = self.store.task_runs(run.id).await?;
        let in_run: Vec<TaskIndex> = stored
            .iter()
            .filter_map(|task| self.core.dag.index_of(&task.task))
            .collect();
        // A task its calendar skips was not left out: it stays skipped.
        let left_out: Vec<TaskIndex> = stored
            .iter()
            .filter(|task| task.outcome == Some(Outcome::Skipped) && task.attempts == 0)
            .filter_map(|task| self.core.dag.index_of(&task.task))
            .filter(|task| self.core.calendar_skip(&run.partition, *task).is_none())
            .collect();
        let (roots, still_left_out): (Vec<TaskIndex>, Vec<TaskIndex>) = left_out
            .into_iter()
            .partition(|task| only.is_empty() || only.contains(task));
        if roots.is_empty() {
            return Ok(false);
        }
        let downstream: Vec<TaskIndex> = self
            .core
            .dag
            .downstream_of(&roots)
            .into_iter()
            .filter(|task| in_run.contains(task) && !still_left_out.contains(task))
            .collect();
        let writes = self
            .core
            .retry_writes(run, &roots, &downstream, "left out by --only");
        self.store.commit(writes, self.clock.now()).await?;
        Ok(true)
    }

    /// Before an unfinished run is resumed with a pipeline file that changed since it started:
    /// tasks the file gained join the run (they run like any other), and tasks it lost that the
    /// run has not finished refuse the resume, with what to do, rather than let the run end
    /// while they are left undone. A run asked to cancel may always be resumed, to settle.
    async fn take_up_pipeline_changes(&mut self, run: &RunRecord) -> Result<(), EngineError> {
        let stored = self.store.task_runs(run.id).await?;
        let removed: Vec<&str> = stored
            .iter()
            .filter(|task| {
                // An item's task run (`box_scores[0021]`) belongs to its expanded task.
                let named = keel_model::expand::split_item_name(&task.task)
                    .map_or(task.task.as_str(), |(parent, _)| parent);
                task.state != TaskState::Done && self.core.dag.index_of(named).is_none()
            })
            .map(|task| task.task.as_str())
            .collect();
        if !removed.is_empty() && !run.cancel_requested {
            return Err(EngineError::RemovedTasks {
                run: run.id,
                partition: run.partition.clone(),
                tasks: removed.join(", "),
            });
        }
        // A pass's run takes up only the tasks the pass gained; a task outside it, without a row,
        // is read back as skipped, as the pass wants it.
        let pass = run.pass.as_deref().map(|name| self.core.spec.pass(name));
        let added: Vec<(String, String)> = self
            .core
            .spec
            .tasks
            .iter()
            .filter(|task| !stored.iter().any(|stored| stored.task == task.name))
            .filter(|task| match pass {
                None => true,
                Some(None) => false,
                Some(Some(pass)) => pass.tasks.contains(&task.name),
            })
            .map(|task| (task.name.clone(), task.phase.clone()))
            .collect();
        if added.is_empty() {
            return Ok(());
        }
        let now = self.clock.now();
        let names: Vec<String> = added.iter().map(|(name, _)| name.clone()).collect();
        // A task the file gained that its calendar skips on this date joins the run skipped.
        let added_indices: Vec<TaskIndex> = names
            .iter()
            .filter_map(|name| self.core.dag.index_of(name))
            .collect();
        let mut changes = self.core.calendar_changes(&run.partition, &added_indices);
        self.store.add_tasks(run.id, added, now).await?;
        let event = Change::Event {
            task: None,
            kind: keel_model::EventKind::PipelineChanged,
            detail: format!(
                "resumed with pipeline version {} (was {}): added {}",
                self.core.version,
                run.version,
                names.join(", ")
            ),
        };
        changes.push(event);
        self.store.apply(run.id, changes, now).await?;
        Ok(())
    }

    /// Resets `tasks` of the partition's newest run, and everything downstream of them, so that
    /// the next [`Engine::execute`] runs them again with fresh retry budgets. Those the pipeline
    /// file gained after the run was created are added to the run; if the file changed at all
    /// since, the run's event log says which version the retry runs.
    ///
    /// An item of an expanded task (`box_scores[0021]`) may be named: it runs again, and its
    /// expanded task is judged again with it. Retrying an expanded task runs again its items that
    /// did not complete; those that did are kept.
    pub async fn retry(&mut self, partition: &str, tasks: &[String]) -> Result<RunId, EngineError> {
        // An item names its expanded task as the root: it and what is downstream run again.
        let (items, plain): (Vec<String>, Vec<String>) = tasks.iter().cloned().partition(|name| {
            self.core.dag.index_of(name).is_none()
                && keel_model::expand::split_item_name(name).is_some_and(|(parent, _)| {
                    self.core
                        .spec
                        .task(parent)
                        .is_some_and(|task| task.expand.is_some())
                })
        });
        let mut names = plain;
        for item in &items {
            if let Some((parent, _)) = keel_model::expand::split_item_name(item)
                && !names.iter().any(|name| name == parent)
            {
                names.push(parent.to_string());
            }
        }
        let roots = self.check_task_names(&names)?;
        let run = self
            .store
            .latest_run(&self.core.spec.name, partition)
            .await?
            .ok_or_else(|| EngineError::NoRun {
                partition: partition.to_string(),
            })?;
        let stored = self.store.task_runs(run.id).await?;
        let in_run: std::collections::HashSet<String> =
            stored.iter().map(|task| task.task.clone()).collect();
        if let Some(unknown) = items.iter().find(|item| !in_run.contains(*item)) {
            return Err(EngineError::unknown_task(&self.core.spec, unknown));
        }
        // The items that run again: those named, and those of a retried expanded task that did
        // not complete.
        let retried_items: Vec<String> = stored
            .iter()
            .filter(|task| {
                let Some((parent, _)) = keel_model::expand::split_item_name(&task.task) else {
                    return false;
                };
                let incomplete = task.state == TaskState::Done
                    && !task.outcome.is_some_and(Outcome::is_complete);
                items.contains(&task.task)
                    || (incomplete && tasks.iter().any(|name| name == parent))
            })
            .map(|task| task.task.clone())
            .collect();
        let downstream = self.core.dag.downstream_of(&roots);
        // Without a row of its own a task would be read back as skipped and never run.
        let added: Vec<(String, String)> = roots
            .iter()
            .chain(&downstream)
            .filter(|task| !in_run.contains(self.core.name(**task)))
            .map(|task| {
                let task_spec = &self.core.spec.tasks[*task];
                (task_spec.name.clone(), task_spec.phase.clone())
            })
            .collect();
        let now = self.clock.now();
        if !added.is_empty() {
            self.store.add_tasks(run.id, added, now).await?;
        }
        let mut writes = self
            .core
            .retry_writes(&run, &roots, &downstream, "manual retry");
        writes.extend(retried_items.into_iter().map(|item| Write::Run {
            run: run.id,
            change: Change::Task(keel_store::TaskChange::reset(&item, "manual retry")),
        }));
        self.store.commit(writes, now).await?;
        Ok(run.id)
    }

    /// Commits what the steps since the last flush decided, in one transaction, before anything
    /// acts on it: no claim, launch or new step starts from a decision that is not stored. A
    /// finish under a lease another Keel took over fails the whole commit; this engine's view is
    /// then out of date, so it stops with the error rather than act on it.
    async fn flush(&mut self, book: &mut Book) -> Result<(), EngineError> {
        if book.writes.is_empty() {
            return Ok(());
        }
        let writes = std::mem::take(&mut book.writes);
        self.store.commit(writes, self.clock.now()).await?;
        Ok(())
    }

    /// Carries out what the core asked for once its writes are committed: stops, sensor polls.
    fn run_effects(&mut self, book: &mut Book, inbox: &mut Inbox) {
        for effect in std::mem::take(&mut book.effects) {
            match effect {
                Effect::Stop(attempt) => {
                    if let Some(stop) = inbox.stops.get(&attempt) {
                        stop();
                    }
                }
                Effect::Probe { resource } => {
                    let sender = inbox.probe_reporter.clone();
                    let (call, timeout) = self.core.probe_call(resource);
                    let probe = self.executor.probe(call, timeout);
                    tokio::spawn(async move {
                        let _ = sender.send((resource, probe.await));
                    });
                }
                Effect::PollSensor {
                    run_index,
                    task,
                    launch,
                } => {
                    let sender = inbox.sensor_reporter.clone();
                    // Launching may block (directories, locks, a fork): off the runtime thread.
                    let executor = self.executor.clone();
                    tokio::spawn(async move {
                        let launched =
                            tokio::task::spawn_blocking(move || executor.launch(*launch)).await;
                        let report = match launched {
                            Ok(Ok(running)) => running.completion.await,
                            Ok(Err(error)) => Report::new(
                                Outcome::Failed,
                                format!("cannot start the sensor: {error}"),
                            ),
                            Err(error) => Report::new(
                                Outcome::Failed,
                                format!("cannot start the sensor: the launcher failed: {error}"),
                            ),
                        };
                        let _ = sender.send((run_index, task, report));
                    });
                }
            }
        }
    }

    /// An empty book, and the inbox its attempts and sensors report to.
    async fn new_book(&mut self, shutdown: Shutdown) -> Result<(Book, Inbox), EngineError> {
        let (reporter, reports) = mpsc::unbounded_channel();
        let (sensor_reporter, sensors) = mpsc::unbounded_channel();
        let (probe_reporter, probes) = mpsc::unbounded_channel();
        let mut book = Book::new(self.resource_policies().await?, self.clock.now());
        self.refresh_flags(&mut book).await?;
        self.register_task_versions().await?;
        let mut poll = tokio::time::interval(self.core.config.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let inbox = Inbox {
            reporter,
            sensor_reporter,
            probe_reporter,
            probes,
            stops: HashMap::new(),
            reports,
            sensors,
            shutdown,
            shutdown_open: true,
            poll,
            drain_deadline: None,
        };
        Ok((book, inbox))
    }

    async fn on_wakeup(
        &mut self,
        book: &mut Book,
        inbox: &mut Inbox,
        wakeup: Wakeup,
    ) -> Result<(), EngineError> {
        match wakeup {
            Wakeup::Sensor(run_index, task, report) => {
                book.sensing = book.sensing.saturating_sub(1);
                self.core.on_sensor(book, run_index, task, report)?;
            }
            Wakeup::Probe(resource, report) => self.core.on_probe(book, resource, report),
            Wakeup::Reports(batch) => self.core.on_reports(book, batch)?,
            Wakeup::Timer => {
                for (run_index, gate) in self.core.fire_timers(book) {
                    book.followups
                        .push_back(Followup::JudgeGate { run_index, gate });
                    book.followups.push_back(Followup::FinishRun { run_index });
                }
                self.core.drain(book)?;
            }
            Wakeup::Poll => self.poll_requests(book).await?,
            Wakeup::Shutdown(ShutdownLevel::Drain) if !book.shutting_down => {
                book.shutting_down = true;
                let grace = self.core.config.shutdown_grace.as_millis() as Millis;
                inbox.drain_deadline = Some(self.clock.now() + grace);
            }
            Wakeup::Shutdown(ShutdownLevel::Now) => {
                book.shutting_down = true;
                inbox.drain_deadline = None;
                book.stop_all();
            }
            Wakeup::Shutdown(ShutdownLevel::Release) => {
                book.shutting_down = true;
                book.released = true;
            }
            Wakeup::Shutdown(_) => {}
            Wakeup::DrainOver => {
                // The grace period is over: stop what still runs; it resumes next time.
                inbox.drain_deadline = None;
                book.stop_all();
            }
        }
        Ok(())
    }

    /// One turn of the loop before it waits: commit what was decided, act on it, start what is
    /// ready. False when tasks given up on were settled and the turn must be taken again.
    async fn turn(&mut self, book: &mut Book, inbox: &mut Inbox) -> Result<bool, EngineError> {
        book.now = self.clock.now();
        self.flush(book).await?;
        self.run_effects(book, inbox);
        self.start_ready(book, inbox).await?;
        self.run_effects(book, inbox);
        if !book.given_up.is_empty() || !book.flag_skips.is_empty() {
            self.core.settle_given_up(book)?;
            self.core.settle_flag_skips(book)?;
            return Ok(false);
        }
        Ok(true)
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
        shutdown: Shutdown,
    ) -> Result<Vec<RunSummary>, EngineError> {
        let (mut book, mut inbox) = self.new_book(shutdown).await?;
        let live = self.store.live_attempts(&self.core.spec.name).await?;
        let mut to_load: Vec<RunId> = runs.to_vec();
        for attempt in &live {
            if !to_load.contains(&attempt.run) {
                to_load.push(attempt.run);
            }
        }
        for run in to_load {
            self.load_run(&mut book, &mut inbox, run, &live).await?;
        }
        loop {
            if !self.turn(&mut book, &mut inbox).await? {
                continue;
            }
            if book.live.is_empty()
                && (book.shutting_down || book.runs.iter().all(|run| run.finished))
            {
                break;
            }
            if book.live.is_empty()
                && book.sensing == 0
                && book.probing == 0
                && book.ready.is_empty()
                && book.timers.is_empty()
            {
                self.core.settle_stuck_runs(&mut book)?;
                continue;
            }
            let next_timer = book.timers.peek().map(|Reverse((at, _, _))| *at);
            let wakeup = wait(self.clock.clone(), next_timer, &mut inbox).await;
            book.now = self.clock.now();
            self.on_wakeup(&mut book, &mut inbox, wakeup).await?;
            if book.released {
                break;
            }
        }
        self.flush(&mut book).await?;
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
}
