//! The core: every decision of the engine, as synchronous functions over the [`Book`] (the
//! in-memory cache of the store) and the time of the step. It awaits nothing, reads no clock,
//! touches no store and starts no process: what it decides goes into `book.writes`, which the
//! driver commits in one transaction per step, and what must happen then goes into
//! `book.effects`, which the driver carries out after the commit.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;

use keel_exec::{Launch, Report};
use keel_model::{
    AttemptId, Dag, Millis, NodeIndex, Outcome, PipelineSpec, RunId, RunState, SpanId, TaskIndex,
    TaskState, TraceId,
};
use keel_store::{
    AttemptRecord, Change, FinishAttempt, GateRecord, GateState, RunRecord, SensorPoll, TaskChange,
    TaskNext, Write,
};

use super::{EngineConfig, Progress};
use crate::gate::{GateStatus, Topology, Verdict, judge};
use crate::policy::{BreakerState, Permit, ResourcePolicy, Verdict as ResourceVerdict, Wait};
use crate::template::{Template, TemplateValues};
use crate::{EngineError, Random};
pub(super) use earlier::EarlierFact;
pub(super) use rollout::VersionChoice;

mod calendar;
mod checks;
mod dispatch;
mod earlier;
mod edges;
mod expand;
mod flags;
mod freeze;
mod gates;
mod heal;
mod recovery;
mod repeat;
mod resources;
mod retry;
mod rollout;
mod sensors;
mod settle;
mod tiers;

/// Everything the engine knows that is not in the book: the pipeline, its graph and gates, the
/// engine's settings, the random source and the progress observer.
pub(super) struct Core {
    pub random: Box<dyn Random>,
    pub spec: Arc<PipelineSpec>,
    /// `spec.version()`, computed once: every claim records it.
    pub version: String,
    pub dag: Dag,
    /// The gates as the pipeline's own runs see them, then as each pass's runs do (in
    /// `spec.passes` order), since a pass may override the gates of phases.
    pub topologies: Vec<Topology>,
    /// Per task: indexes into `spec.resources` of the resources it uses.
    pub task_uses: Vec<Vec<usize>>,
    /// Per task: its command, its sensor's, its working directory and its variables, parsed
    /// once.
    pub commands: Vec<Commands>,
    pub config: EngineConfig,
    /// The store's identity: attempt directories live under it.
    pub store_id: Arc<str>,
    pub observer: Box<dyn FnMut(Progress) + Send>,
    /// The items of expanded tasks (`expand`) of every run this engine has loaded: item `k` is
    /// the task index `dag.nodes() + k`, past the Dag's tasks and phase barriers, so an item
    /// runs through the same slots, claims, launches and settling as a task.
    pub items: Vec<ItemTask>,
    /// An item's index by its run and task-run name (`box_scores[0021]`).
    pub item_index: HashMap<(RunId, String), TaskIndex>,
    /// Per task: its version (`rollout.rs`), computed once.
    pub task_versions: Vec<String>,
    /// Per task: where its version's rollout stands, as last read from the store.
    pub rollouts: Vec<rollout::TaskRollout>,
}

/// One item of an expanded task in one run.
pub(super) struct ItemTask {
    /// The expanded task: its spec, commands and resources are the item's.
    pub parent: TaskIndex,
    /// `parent[key]`, the item's task-run name.
    pub name: String,
    pub item: keel_model::Item,
}

impl Core {
    /// Where item indexes start: past the Dag's tasks and phase barriers.
    pub(crate) fn item_base(&self) -> TaskIndex {
        self.dag.nodes()
    }

    /// Whether `task` is an item of an expanded task rather than a task of the Dag.
    pub(crate) fn is_item(&self, task: TaskIndex) -> bool {
        task >= self.item_base()
    }

    /// The task-run name of a task or an item.
    pub(crate) fn name(&self, task: TaskIndex) -> &str {
        if self.is_item(task) {
            &self.items[task - self.item_base()].name
        } else {
            self.dag.name(task)
        }
    }

    /// The task whose spec, commands and resources `task` runs with: itself, or an item's
    /// expanded task.
    pub(crate) fn base_task(&self, task: TaskIndex) -> TaskIndex {
        if self.is_item(task) {
            self.items[task - self.item_base()].parent
        } else {
            task
        }
    }

    /// Forgets every item, once the book holds no run (`Book::forget_finished_runs`), so a
    /// long-lived `keel serve` keeps in memory only the items of unfinished runs.
    pub(crate) fn forget_items(&mut self) {
        self.items.clear();
        self.item_index.clear();
    }

    /// The item an item index stands for; `None` for a task of the Dag.
    pub(crate) fn item_of(&self, task: TaskIndex) -> Option<&keel_model::Item> {
        self.is_item(task)
            .then(|| &self.items[task - self.item_base()].item)
    }

    /// A task or an item of `run` by its task-run name.
    pub(crate) fn index_of(&self, run: RunId, name: &str) -> Option<TaskIndex> {
        self.dag
            .index_of(name)
            .or_else(|| self.item_index.get(&(run, name.to_string())).copied())
    }

    /// The index in `topologies` of a run of `pass` (`None`: the pipeline's own run, or a run of
    /// a pass the file no longer has).
    pub(crate) fn topology_index(&self, pass: Option<&str>) -> usize {
        pass.and_then(|pass| self.spec.passes.iter().position(|each| each.name == pass))
            .map_or(0, |position| position + 1)
    }

    /// The gates of a run.
    pub(crate) fn topology_of(&self, active: &ActiveRun) -> &Topology {
        &self.topologies[active.topology]
    }
}

/// A step's follow-up work. Handlers push follow-ups instead of calling each other; the step's
/// entry point drains the queue, so no handler recurses into another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Followup {
    /// A task ended for good: move its dependents on.
    TaskDone {
        run_index: usize,
        task: TaskIndex,
        outcome: Outcome,
    },
    /// A task ended without completing: settle what can no longer run downstream.
    Propagate { run_index: usize, task: TaskIndex },
    /// Something a gate depends on changed, or its grace ended: judge it again.
    JudgeGate { run_index: usize, gate: usize },
    /// A waived task landed late: run again what ran without it.
    Reconcile { run_index: usize, task: TaskIndex },
    /// An item of an expanded task ended, or its stall is due: judge the task's quorum.
    JudgeExpansion { run_index: usize, task: TaskIndex },
    /// The run may have ended; judged once the rest of the queue is drained.
    FinishRun { run_index: usize },
}

/// Which edges out of a task [`Core::release_dependents`] counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Edges {
    All,
    /// Only edges an open gate may waive (phase-level edges out of a gated phase).
    Waivable,
    /// Only edges no gate waives (within the phase, or a task's own `after`).
    NotWaivable,
}

/// A task's templates, parsed once when the engine is built: its command, its sensor's, its
/// working directory and the values of its `env`.
pub(super) struct Commands {
    pub task: Vec<Template>,
    /// Each sensor's, in the order they are polled.
    pub sensors: Vec<Vec<Template>>,
    /// The `when` command's.
    pub calendar: Option<Vec<Template>>,
    pub cwd: Option<Template>,
    pub env: Vec<(String, Template)>,
}

impl Commands {
    pub fn of(task: &keel_model::TaskSpec) -> Commands {
        let parse = |parts: &[String]| parts.iter().map(|part| Template::parse(part)).collect();
        Commands {
            task: parse(&task.command),
            sensors: task
                .sensors()
                .map(|sensor| parse(&sensor.command))
                .collect(),
            calendar: task
                .when
                .as_ref()
                .and_then(|calendar| calendar.command.as_deref())
                .map(parse),
            cwd: task.context.cwd.as_deref().map(Template::parse),
            env: task
                .context
                .env
                .iter()
                .map(|(name, value)| (name.clone(), Template::parse(value)))
                .collect(),
        }
    }
}

/// What the driver does once a step's writes are committed.
pub(super) enum Effect {
    /// Stop a running attempt; it reports its end as usual.
    Stop(AttemptId),
    /// Probe a resource's health (`ready`): a request, no attempt.
    Probe { resource: usize },
    /// Poll a task's sensor, as a process without an attempt row.
    PollSensor {
        run_index: usize,
        task: TaskIndex,
        launch: Box<Launch>,
    },
}

#[derive(Debug, Clone)]
pub(super) struct Slot {
    pub state: TaskState,
    pub outcome: Option<Outcome>,
    pub attempts: u32,
    pub charged: u32,
    pub first_started_at: Option<Millis>,
    /// Attempts lost in a row (none started, or none reported); a restart starts counting
    /// again.
    pub losses: u32,
    /// For a waiting task: not before this time (its retry's or its next sensor poll's).
    pub not_before: Option<Millis>,
    /// When the engine found the task ready to start (for the ready-wait it reports).
    pub ready_since: Option<Millis>,
}

pub(super) struct ActiveRun {
    pub record: RunRecord,
    /// The run's trace id, read once from `record.trace_id`.
    pub trace: TraceId,
    pub slots: PerTask<Slot>,
    /// Per node (tasks, then phase barriers): dependencies not yet complete (and not waived by
    /// an open gate), or barriers not yet passed.
    pub remaining: PerTask<u32>,
    /// Which of `Core::topologies` the run's gates are: 0 for the pipeline's own runs.
    pub topology: usize,
    /// Per gate of the run's topology.
    pub gates: Vec<GateStatus>,
    /// Per task: missing when its phase's gate opened; downstream went on without it.
    pub waived: PerTask<bool>,
    /// Per task: an upstream task landed late while this one ran; run it again when it ends.
    pub needs_rerun: PerTask<bool>,
    /// Per task: its sensor reported ready (a task that has had an attempt needs none).
    pub sensor_ready: PerTask<bool>,
    /// Per task: its `when` command said to run (a task that has had an attempt needs none).
    /// Not stored: a restarted Keel asks the command again, as it polls a sensor again.
    pub calendar_passed: PerTask<bool>,
    /// Per task: a repetition of its `repeat` window succeeded (read back from the stored
    /// attempts by `restore_repeats`).
    pub repeat_succeeded: PerTask<bool>,
    /// Per task: which of its sensors is polled (the ones before it passed). Not stored: a
    /// restarted Keel polls them again from the first, as it polls a sensor again.
    pub sensor_stage: PerTask<usize>,
    /// Per task: sensor polls so far, for the backoff.
    pub sensor_polls: PerTask<u32>,
    /// Per task: sensor polls that ended in a sensor error; they use up retry attempts.
    pub sensor_errors: PerTask<u32>,
    pub done: usize,
    pub cancelling: bool,
    pub finished: bool,
    /// Per task: the "waiting for TASK on DATE" message last stored for its inputs on earlier
    /// partitions, so that it is stored again only when it changes.
    pub earlier_message: PerTask<Option<String>>,
    /// Per expanded task (by its index) whose items are known: its items and their counts.
    pub expansions: HashMap<TaskIndex, Expansion>,
    /// Tasks `keel run --only` left out of the run: stored `skipped` without an attempt, so
    /// that the run ends `partial` and a plain `keel run` runs them.
    pub left_out: Vec<TaskIndex>,
    /// Per task: when it last ended, for the tasks that freeze after its end (read back from
    /// the stored attempts by `restore_task_ends`).
    pub ended_at: PerTask<Option<Millis>>,
    /// Heals this run made (`heal_requested` events), against `[pipeline] heal`'s budget;
    /// counted from the event log when the run is loaded.
    pub heals_used: u32,
}

/// The items of one expanded task in one run, and where they stand.
pub(super) struct Expansion {
    /// Their indexes, in the order the upstream task listed them.
    pub items: Vec<TaskIndex>,
    /// Counted when the task starts running its items, then kept up as each ends.
    pub counts: keel_model::ItemCounts,
    /// When an item last started or ended an attempt (the quorum's stall runs from it).
    pub last_progress: Millis,
    /// The task runs its items (its inputs completed); until then nothing is counted.
    pub opened: bool,
    /// When a timer is set to judge the quorum again, so that each stall sets one.
    pub wake_at: Option<Millis>,
}

/// Something kept per task of a run, indexed by [`TaskIndex`]: the Dag's tasks (or nodes) in a
/// vector, and the run's items, whose indexes start at `Core::item_base`, beside it. `len`,
/// `iter` and the rest of `Vec`'s methods see the Dag's part only, so a walk over the Dag's
/// tasks never meets an item.
#[derive(Debug, Clone)]
pub(super) struct PerTask<T> {
    tasks: Vec<T>,
    items: HashMap<TaskIndex, T>,
}

impl<T: Clone> PerTask<T> {
    pub fn new(value: T, count: usize) -> PerTask<T> {
        PerTask {
            tasks: vec![value; count],
            items: HashMap::new(),
        }
    }

    /// Adds an item's entry.
    pub fn insert_item(&mut self, index: TaskIndex, value: T) {
        self.items.insert(index, value);
    }
}

impl<T> std::ops::Deref for PerTask<T> {
    type Target = Vec<T>;
    fn deref(&self) -> &Vec<T> {
        &self.tasks
    }
}

impl<T> std::ops::DerefMut for PerTask<T> {
    fn deref_mut(&mut self) -> &mut Vec<T> {
        &mut self.tasks
    }
}

impl<T> std::ops::Index<TaskIndex> for PerTask<T> {
    type Output = T;
    fn index(&self, index: TaskIndex) -> &T {
        match self.tasks.get(index) {
            Some(value) => value,
            None => &self.items[&index],
        }
    }
}

impl<T> std::ops::IndexMut<TaskIndex> for PerTask<T> {
    fn index_mut(&mut self, index: TaskIndex) -> &mut T {
        match self.tasks.get_mut(index) {
            Some(value) => value,
            None => self
                .items
                .get_mut(&index)
                .expect("an item index belongs to its run"),
        }
    }
}

/// An attempt that is running (or being launched): where it belongs and its lease epoch.
pub(super) struct Live {
    pub run: usize,
    pub task: TaskIndex,
    pub number: u32,
    pub epoch: i64,
    /// When it started (claimed, for one this engine launched), for its trace span.
    pub started_at: Millis,
    /// The version of its task it runs, when known: a canary's end counts for its rollout.
    pub task_version: Option<String>,
}

impl Live {
    pub fn new(run: usize, task: TaskIndex, number: u32, epoch: i64, started_at: Millis) -> Live {
        Live {
            run,
            task,
            number,
            epoch,
            started_at,
            task_version: None,
        }
    }
}

/// What a timer wakes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Wake {
    Task(TaskIndex),
    Gate(usize),
    /// A resource's open breaker lets a probe through: its waiters take their turn.
    Resource(usize),
    /// A resource's failed health probe is old enough to be asked again.
    Probe(usize),
}

/// Where a resource's health probe (`ready`) stands.
#[derive(Debug, Clone, Default)]
pub(super) struct ProbeState {
    /// The last answer, while it holds (`checked_at` + `every`).
    pub healthy: bool,
    pub checked_at: Option<Millis>,
    pub in_flight: bool,
    /// Why the last probe failed.
    pub message: Option<String>,
    /// Tasks waiting for the probe to answer, or to pass again.
    pub waiters: Vec<(usize, TaskIndex)>,
    /// When the waiters are next woken, if a wake is scheduled.
    pub wake_at: Option<Millis>,
}

pub(super) struct Book {
    pub runs: Vec<ActiveRun>,
    pub ready: VecDeque<(usize, TaskIndex)>,
    pub timers: BinaryHeap<Reverse<(Millis, usize, Wake)>>,
    pub live: HashMap<AttemptId, Live>,
    /// Sensor polls running now; they count against the concurrency cap.
    pub sensing: usize,
    /// Health probes of resources running now.
    pub probing: usize,
    /// Per resource: its health probe, for those that have one.
    pub probes: Vec<ProbeState>,
    /// Per resource of the spec: its rate limit, bulkhead, breaker and retry budget.
    pub resources: Vec<ResourcePolicy>,
    /// Per resource: tasks waiting for an attempt on it to end (bulkhead full, probe running).
    pub resource_waiters: Vec<Vec<(usize, TaskIndex)>>,
    /// Per resource: tasks waiting for its breaker, in turn order. A task whose probe failed
    /// goes to the back, so the probe goes to every waiting task in turn, across partitions.
    pub breaker_waiters: Vec<VecDeque<(usize, TaskIndex)>>,
    /// Per resource: when its breaker waiters are next woken, if a wake is scheduled.
    pub breaker_wake: Vec<Option<Millis>>,
    /// Ready tasks of runs beyond `max_active_partitions`: queued again when a run ends.
    pub held_for_partitions: Vec<(usize, TaskIndex)>,
    /// Tasks that can no longer start, with how they end and why: a resource that stayed down
    /// past its breaker's `max_open` (`failed`), an input on an earlier partition that failed
    /// (`upstream_failed`).
    pub given_up: Vec<(usize, TaskIndex, Outcome, String)>,
    /// Where tasks of earlier partitions stand, by (partition, task), as the driver last read
    /// them from the store, for the runs no loaded run answers (see `earlier.rs`).
    pub earlier: HashMap<(String, String), EarlierFact>,
    /// Tasks waiting for a task of an earlier partition: queued again when a task of a loaded
    /// run of that partition ends, or when the driver has read the store again.
    pub earlier_waiters: Vec<(usize, TaskIndex)>,
    /// Tasks a feature flag leaves out of their partition, found ready: settled `skipped`.
    pub flag_skips: Vec<(usize, TaskIndex, String)>,
    /// The feature flags read from the store (`keel flags`): by task, what it says and who set it.
    pub flags: HashMap<String, (keel_model::FlagState, String)>,
    /// Permits taken for tasks picked to start, until their claim is known.
    pub picked_permits: HashMap<(usize, TaskIndex), Vec<(usize, Permit)>>,
    /// Permits held by running attempts.
    pub permits: HashMap<AttemptId, Vec<(usize, Permit)>>,
    pub shutting_down: bool,
    /// Asked to leave its running attempts to another engine (`ShutdownLevel::Release`).
    pub released: bool,
    /// When the leases of running attempts were last renewed.
    pub leases_renewed_at: Millis,
    /// What this step decided, committed in one transaction (the driver's `flush`) before
    /// anything acts on it.
    pub writes: Vec<Write>,
    /// What the driver must do once the writes are committed.
    pub effects: Vec<Effect>,
    /// Follow-up work of the current step; see [`Followup`].
    pub followups: VecDeque<Followup>,
    /// The time of the current step, set by the driver; the core reads no clock.
    pub now: Millis,
    /// How many entries at the front of `ready` had their ready time noted.
    pub ready_stamped: usize,
    /// The queue depth last told to the observer.
    pub queue_depth_reported: Option<usize>,
}

/// Adds task changes of one run to a step's writes.
pub(super) fn write_tasks(
    writes: &mut Vec<Write>,
    run: RunId,
    changes: impl IntoIterator<Item = TaskChange>,
) {
    writes.extend(changes.into_iter().map(|change| Write::Run {
        run,
        change: Change::Task(change),
    }));
}

/// Adds changes of one run to a step's writes.
pub(super) fn write_changes(
    writes: &mut Vec<Write>,
    run: RunId,
    changes: impl IntoIterator<Item = Change>,
) {
    writes.extend(changes.into_iter().map(|change| Write::Run { run, change }));
}

pub(super) fn is_complete(slot: &Slot) -> bool {
    slot.state == TaskState::Done && slot.outcome.is_some_and(Outcome::is_complete)
}

pub(super) fn lost_report(message: &str) -> Report {
    Report::new(Outcome::Lost, message)
}

impl Book {
    /// An empty book at `now`, with the resources' policies.
    pub fn new(resources: Vec<ResourcePolicy>, now: Millis) -> Book {
        let count = resources.len();
        Book {
            runs: Vec::new(),
            ready: VecDeque::new(),
            timers: BinaryHeap::new(),
            live: HashMap::new(),
            sensing: 0,
            probing: 0,
            probes: vec![ProbeState::default(); count],
            resources,
            resource_waiters: vec![Vec::new(); count],
            breaker_waiters: vec![VecDeque::new(); count],
            breaker_wake: vec![None; count],
            held_for_partitions: Vec::new(),
            given_up: Vec::new(),
            flag_skips: Vec::new(),
            flags: HashMap::new(),
            earlier: HashMap::new(),
            earlier_waiters: Vec::new(),
            picked_permits: HashMap::new(),
            permits: HashMap::new(),
            shutting_down: false,
            released: false,
            leases_renewed_at: now,
            writes: Vec::new(),
            effects: Vec::new(),
            followups: VecDeque::new(),
            now,
            ready_stamped: 0,
            queue_depth_reported: None,
        }
    }

    /// A run ended, so a place among the partitions that may run at once is free: the tasks
    /// that waited for one are judged again.
    pub fn release_partition_waiters(&mut self) {
        let held = std::mem::take(&mut self.held_for_partitions);
        self.ready.extend(held);
    }

    /// Lets go of the runs that finished once nothing refers to them any more (no attempt or
    /// sensor poll runs, nothing waits or is due): a long-lived `keel serve` keeps in memory only
    /// what is unfinished. The store keeps the rest. Whether it let go of any.
    pub fn forget_finished_runs(&mut self) -> bool {
        let idle = self.live.is_empty()
            && self.sensing == 0
            && self.probing == 0
            && self.probes.iter().all(|probe| probe.waiters.is_empty())
            && self.ready.is_empty()
            && self.timers.is_empty()
            && self.held_for_partitions.is_empty()
            && self.given_up.is_empty()
            && self.flag_skips.is_empty()
            && self.picked_permits.is_empty()
            && self.followups.is_empty()
            && self.resource_waiters.iter().all(Vec::is_empty)
            && self.breaker_waiters.iter().all(VecDeque::is_empty);
        if !idle || self.runs.is_empty() || !self.runs.iter().all(|run| run.finished) {
            return false;
        }
        self.runs.clear();
        // What finished runs waited for, and what was read for them, goes with them.
        self.earlier_waiters.clear();
        self.earlier.clear();
        true
    }

    /// Stops every running attempt; each reports its end as usual.
    pub fn stop_all(&mut self) {
        let attempts: Vec<AttemptId> = self.live.keys().copied().collect();
        self.effects.extend(attempts.into_iter().map(Effect::Stop));
    }
}

impl Core {
    /// Queues `followup` and drains the queue: the entry point of a step's follow-up work.
    pub(crate) fn follow_up(
        &mut self,
        book: &mut Book,
        followup: Followup,
    ) -> Result<(), EngineError> {
        book.followups.push_back(followup);
        self.drain(book)
    }

    /// Works through the step's follow-ups in order. Whether a run ended is judged last, once
    /// nothing else can change its tasks.
    pub(crate) fn drain(&mut self, book: &mut Book) -> Result<(), EngineError> {
        let mut may_have_ended = Vec::new();
        while let Some(followup) = book.followups.pop_front() {
            match followup {
                Followup::TaskDone {
                    run_index,
                    task,
                    outcome,
                } => {
                    self.on_task_done(book, run_index, task, outcome)?;
                    self.wake_waiters_of(book, run_index);
                }
                Followup::Propagate { run_index, task } => {
                    self.propagate_failure(book, run_index, task)?;
                    self.wake_waiters_of(book, run_index);
                }
                Followup::JudgeGate { run_index, gate } => {
                    self.evaluate_gate(book, run_index, gate)?
                }
                Followup::Reconcile { run_index, task } => self.reconcile(book, run_index, task)?,
                Followup::JudgeExpansion { run_index, task } => {
                    self.judge_expansion(book, run_index, task)
                }
                Followup::FinishRun { run_index } => {
                    if !may_have_ended.contains(&run_index) {
                        may_have_ended.push(run_index);
                    }
                }
            }
        }
        for run_index in may_have_ended {
            self.finish_run_if_done(book, run_index)?;
        }
        Ok(())
    }
}

impl Core {
    /// A task of the run at `run_index` ended: the tasks of later partitions waiting on its
    /// partition look again.
    fn wake_waiters_of(&self, book: &mut Book, run_index: usize) {
        if book.earlier_waiters.is_empty() || book.runs[run_index].record.pass.is_some() {
            return;
        }
        let partition = book.runs[run_index].record.partition.clone();
        self.wake_earlier_waiters(book, Some(&partition));
    }
}

#[cfg(test)]
mod tests;
