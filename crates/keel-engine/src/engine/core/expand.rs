//! Dynamic fan-out (`expand`): an upstream task's items become task runs of their own
//! (`box_scores[0021]`), each an attempt chain with the expanded task's command, retries, timeout
//! and resources, and the expanded task itself completes under its quorum
//! (`keel_model::expand::judge`).
//!
//! Items are kept beside the Dag, not in it: their indexes start past the Dag's nodes
//! (`Core::item_base`), and each run keeps their slots beside its tasks' (`PerTask`). They are
//! claimed, launched, retried and recovered through the same paths as a task; only their end
//! goes elsewhere: it counts towards the expanded task's quorum instead of releasing dependents.
//! The expanded task's Dag node stays the barrier downstream tasks wait for.

use super::*;
use keel_model::expand::{ExpandVerdict, judge};
use keel_model::{Item, ItemCounts};

/// How many missing items a message names before it says how many more there are.
const NAMED_IN_A_MESSAGE: usize = 20;
/// How many missing items `KEEL_MISSING` names: one variable of a process's environment must
/// stay under the kernel's limit for one string (128 KiB).
const NAMED_IN_KEEL_MISSING: usize = 1_000;

impl Core {
    /// The expanded tasks whose `from` is `task`, in pipeline order.
    fn expanded_from(&self, task: TaskIndex) -> Vec<TaskIndex> {
        let name = self.name(task);
        (0..self.dag.len())
            .filter(|index| {
                self.spec.tasks[*index]
                    .expand
                    .as_ref()
                    .is_some_and(|spec| spec.from == name)
            })
            .collect()
    }

    /// An attempt of `task` ended with `outcome`: when it completed and other tasks expand over
    /// its result, their items are recorded in this step's writes (the store keeps only the
    /// first record of a run, and adds the items' task runs with it) and join the run. A result
    /// without `"items"` (a `no_data` answer, say) lists none.
    pub(crate) fn record_items(
        &mut self,
        book: &mut Book,
        run_index: usize,
        task: TaskIndex,
        outcome: Outcome,
        items: Option<Vec<Item>>,
    ) {
        if self.is_item(task) || !outcome.is_complete() {
            return;
        }
        let items = items.unwrap_or_default();
        for parent in self.expanded_from(task) {
            if book.runs[run_index].expansions.contains_key(&parent) {
                continue;
            }
            let run = book.runs[run_index].record.id;
            book.writes.push(Write::Run {
                run,
                change: Change::Expand {
                    task: self.name(parent).to_string(),
                    items: items.clone(),
                },
            });
            self.add_items(book, run_index, parent, items.clone(), &[]);
        }
    }

    /// Makes `items` of `parent` known in a run, each with its slot as `stored` has it (a run
    /// read back) or pending (a new expansion).
    pub(crate) fn add_items(
        &mut self,
        book: &mut Book,
        run_index: usize,
        parent: TaskIndex,
        items: Vec<Item>,
        stored: &[keel_store::TaskRunRecord],
    ) {
        let run = book.runs[run_index].record.id;
        let stored: HashMap<&str, &keel_store::TaskRunRecord> = stored
            .iter()
            .map(|record| (record.task.as_str(), record))
            .collect();
        let mut indexes = Vec::with_capacity(items.len());
        let active = &mut book.runs[run_index];
        for item in items {
            let name = keel_model::expand::item_task_name(self.name(parent), &item.key);
            let index = self.item_base() + self.items.len();
            let slot = match stored.get(name.as_str()) {
                Some(record) => Slot {
                    state: record.state,
                    outcome: record.outcome,
                    attempts: record.attempts,
                    charged: record.charged,
                    first_started_at: record.first_started_at,
                    losses: 0,
                    not_before: record.not_before,
                    ready_since: None,
                },
                None => Slot {
                    state: TaskState::Pending,
                    outcome: None,
                    attempts: 0,
                    charged: 0,
                    first_started_at: None,
                    losses: 0,
                    not_before: None,
                    ready_since: None,
                },
            };
            active.slots.insert_item(index, slot);
            active.remaining.insert_item(index, 0);
            active.waived.insert_item(index, false);
            active.needs_rerun.insert_item(index, false);
            active.sensor_ready.insert_item(index, true);
            active.calendar_passed.insert_item(index, true);
            active.sensor_polls.insert_item(index, 0);
            active.sensor_errors.insert_item(index, 0);
            active.earlier_message.insert_item(index, None);
            active.repeat_succeeded.insert_item(index, false);
            active.sensor_stage.insert_item(index, 0);
            self.item_index.insert((run, name.clone()), index);
            self.items.push(ItemTask { parent, name, item });
            indexes.push(index);
        }
        active.expansions.insert(
            parent,
            Expansion {
                items: indexes,
                counts: ItemCounts::default(),
                last_progress: book.now,
                opened: false,
                wake_at: None,
            },
        );
    }

    /// An expanded task's inputs completed: it runs its items. They are counted, those that can
    /// start are queued (those waiting for a retry get their timer), and the quorum is judged at
    /// once (a task with no items, or whose items all ended before a restart, is decided now).
    pub(crate) fn open_expansion(&mut self, book: &mut Book, run_index: usize, parent: TaskIndex) {
        let now = book.now;
        let active = &mut book.runs[run_index];
        active.slots[parent].state = TaskState::Running;
        active.slots[parent].first_started_at.get_or_insert(now);
        let Some(expansion) = active.expansions.get_mut(&parent) else {
            // The upstream task never listed items (it was skipped, say): nothing to run.
            active.expansions.insert(
                parent,
                Expansion {
                    items: Vec::new(),
                    counts: ItemCounts::default(),
                    last_progress: now,
                    opened: true,
                    wake_at: None,
                },
            );
            book.followups.push_back(Followup::JudgeExpansion {
                run_index,
                task: parent,
            });
            return;
        };
        let mut counts = ItemCounts {
            total: expansion.items.len(),
            ..ItemCounts::default()
        };
        for item in &expansion.items {
            let slot = &active.slots[*item];
            match slot.state {
                TaskState::Done if slot.outcome.is_some_and(Outcome::is_complete) => {
                    counts.succeeded += 1
                }
                TaskState::Done => counts.failed += 1,
                TaskState::Pending => book.ready.push_back((run_index, *item)),
                TaskState::Waiting => {
                    let at = slot.not_before.unwrap_or(now);
                    book.timers
                        .push(Reverse((at, run_index, Wake::Task(*item))));
                }
                TaskState::Running => {}
            }
        }
        expansion.counts = counts;
        expansion.last_progress = now;
        expansion.opened = true;
        book.followups.push_back(Followup::JudgeExpansion {
            run_index,
            task: parent,
        });
    }

    /// `KEEL_MISSING` of a task: its soft inputs that did not complete, then the items its
    /// expanded inputs (through its `after` or its phase) completed without, by task-run name
    /// (`box_scores[0022]`), at most [`NAMED_IN_KEEL_MISSING`] of them and then `…`. `None` for a
    /// task with neither soft nor expanded inputs, which does not get the variable.
    pub(crate) fn missing_inputs(&self, active: &ActiveRun, task: TaskIndex) -> Option<String> {
        let soft = self.missing_soft_inputs(active, task);
        let mut expanded: Vec<TaskIndex> = self
            .dag
            .explicit(task)
            .iter()
            .copied()
            .chain(self.dag.phase_inputs(task))
            .filter(|input| self.spec.tasks[*input].expand.is_some())
            .collect();
        if soft.is_none() && expanded.is_empty() {
            return None;
        }
        expanded.sort_unstable();
        expanded.dedup();
        let mut names: Vec<&str> = soft
            .as_deref()
            .filter(|soft| !soft.is_empty())
            .into_iter()
            .collect();
        let mut items = 0;
        for parent in expanded {
            let Some(expansion) = active.expansions.get(&parent) else {
                continue;
            };
            for item in &expansion.items {
                if is_complete(&active.slots[*item]) {
                    continue;
                }
                if items == NAMED_IN_KEEL_MISSING {
                    names.push("…");
                    return Some(names.join(","));
                }
                items += 1;
                names.push(self.name(*item));
            }
        }
        Some(names.join(","))
    }

    /// An item started an attempt: the quorum's stall starts again.
    pub(crate) fn item_progressed(&self, active: &mut ActiveRun, item: TaskIndex, now: Millis) {
        let parent = self.base_task(item);
        if let Some(expansion) = active.expansions.get_mut(&parent) {
            expansion.last_progress = now;
        }
    }

    /// An item ended for good: it counts towards its expanded task's quorum, which is judged
    /// again. Nothing downstream waits on an item itself.
    pub(crate) fn on_item_done(
        &mut self,
        book: &mut Book,
        run_index: usize,
        item: TaskIndex,
        outcome: Outcome,
    ) {
        let parent = self.base_task(item);
        let now = book.now;
        let active = &mut book.runs[run_index];
        let slot = &mut active.slots[item];
        slot.state = TaskState::Done;
        slot.outcome = Some(outcome);
        let Some(expansion) = active.expansions.get_mut(&parent) else {
            return;
        };
        if !expansion.opened {
            // Recorded while the run was read back: counted when the task opens.
            return;
        }
        if outcome.is_complete() {
            expansion.counts.succeeded += 1;
        } else {
            expansion.counts.failed += 1;
        }
        expansion.last_progress = now;
        book.followups.push_back(Followup::JudgeExpansion {
            run_index,
            task: parent,
        });
    }

    /// Judges an expanded task's quorum: complete (every item, or enough once nothing moved for
    /// `stall`), failed (every item ended and too few succeeded), or a wait, with a timer when
    /// the stall would be reached. Once decided, what of its items has not ended is stopped or
    /// cancelled, and the task settles like any other, naming the items that are missing.
    pub(crate) fn judge_expansion(&mut self, book: &mut Book, run_index: usize, parent: TaskIndex) {
        let now = book.now;
        let active = &book.runs[run_index];
        if active.slots[parent].state != TaskState::Running {
            return;
        }
        let Some(expansion) = active.expansions.get(&parent) else {
            return;
        };
        let Some(spec) = self.spec.tasks[parent].expand.as_ref() else {
            return;
        };
        let verdict = judge(spec, expansion.counts, expansion.last_progress, now);
        // No items because the task that lists them had no data: nothing to do, not done.
        let source_had_no_data = expansion.items.is_empty()
            && self
                .dag
                .index_of(&spec.from)
                .is_some_and(|source| active.slots[source].outcome == Some(Outcome::NoData));
        let outcome = match verdict {
            ExpandVerdict::Complete if source_had_no_data => Outcome::NoData,
            ExpandVerdict::Complete | ExpandVerdict::Quorum => Outcome::Succeeded,
            ExpandVerdict::Failed => Outcome::Failed,
            ExpandVerdict::Wait { until } => {
                // One timer per stall: every item's end moves it, and judges again.
                if let Some(at) = until
                    && expansion.wake_at != Some(at)
                {
                    book.timers
                        .push(Reverse((at, run_index, Wake::Task(parent))));
                    if let Some(expansion) = book.runs[run_index].expansions.get_mut(&parent) {
                        expansion.wake_at = Some(at);
                    }
                }
                return;
            }
        };
        let message = if source_had_no_data {
            format!("no items to run: {:?} had no data", spec.from)
        } else {
            self.expansion_message(active, expansion, verdict)
        };
        self.end_open_items(book, run_index, parent);
        let active = &mut book.runs[run_index];
        // Decided: a second judgement queued in this step (an item stopped, a timer) must not
        // settle it twice.
        active.slots[parent].state = TaskState::Done;
        let change = TaskChange {
            task: self.name(parent).to_string(),
            state: TaskState::Done,
            outcome: Some(outcome),
            not_before: None,
            message: Some(message.clone()),
            reset_retry_budget: false,
            reason: message,
        };
        write_tasks(&mut book.writes, active.record.id, [change]);
        (self.observer)(Progress::TasksSettled {
            run: active.record.id,
            partition: active.record.partition.clone(),
            tasks: vec![self.dag.name(parent).to_string()],
            outcome,
        });
        book.followups.push_back(Followup::TaskDone {
            run_index,
            task: parent,
            outcome,
        });
    }

    /// `438/450 · 12 failed`, and the keys of the items that did not succeed.
    fn expansion_message(
        &self,
        active: &ActiveRun,
        expansion: &Expansion,
        verdict: ExpandVerdict,
    ) -> String {
        if expansion.items.is_empty() {
            return "no items to run".to_string();
        }
        let mut message = expansion.counts.summary();
        let missing: Vec<&str> = expansion
            .items
            .iter()
            .filter(|item| !is_complete(&active.slots[**item]))
            .map(|item| self.items[*item - self.item_base()].item.key.as_str())
            .collect();
        if !missing.is_empty() {
            let named: Vec<&str> = missing.iter().take(NAMED_IN_A_MESSAGE).copied().collect();
            message.push_str(&format!("; missing: {}", named.join(", ")));
            if missing.len() > named.len() {
                message.push_str(&format!(", … ({} more)", missing.len() - named.len()));
            }
        }
        if verdict == ExpandVerdict::Quorum && expansion.counts.open() > 0 {
            message.push_str("; the quorum was met and no item progressed for the stall limit");
        }
        message
    }

    /// The expanded task was decided: its items that have not started are cancelled and those
    /// running are stopped (they report their end as usual, and count no more).
    fn end_open_items(&mut self, book: &mut Book, run_index: usize, parent: TaskIndex) {
        let active = &mut book.runs[run_index];
        let Some(expansion) = active.expansions.get(&parent) else {
            return;
        };
        let open: Vec<TaskIndex> = expansion
            .items
            .iter()
            .copied()
            .filter(|item| active.slots[*item].state != TaskState::Done)
            .collect();
        if open.is_empty() {
            return;
        }
        let running: Vec<TaskIndex> = open
            .iter()
            .copied()
            .filter(|item| active.slots[*item].state == TaskState::Running)
            .collect();
        book.effects.extend(
            book.live
                .iter()
                .filter(|(_, live)| live.run == run_index && running.contains(&live.task))
                .map(|(attempt, _)| Effect::Stop(*attempt)),
        );
        let reason = "its expanded task was decided without it";
        let changes: Vec<TaskChange> = open
            .iter()
            .filter(|item| active.slots[**item].state != TaskState::Running)
            .map(|item| TaskChange {
                task: self.name(*item).to_string(),
                state: TaskState::Done,
                outcome: Some(Outcome::Cancelled),
                not_before: None,
                message: Some(reason.to_string()),
                reset_retry_budget: false,
                reason: reason.to_string(),
            })
            .collect();
        write_tasks(&mut book.writes, active.record.id, changes);
        for item in open {
            if active.slots[item].state != TaskState::Running {
                active.slots[item].state = TaskState::Done;
                active.slots[item].outcome = Some(Outcome::Cancelled);
            }
        }
    }

    /// A run is cancelled: its expanded tasks that are running their items end `cancelled`, with
    /// the items that have not started (those running are stopped with the run's attempts).
    pub(crate) fn cancel_expansions(&mut self, book: &mut Book, run_index: usize) {
        let running: Vec<TaskIndex> = book.runs[run_index]
            .expansions
            .keys()
            .copied()
            .filter(|parent| book.runs[run_index].slots[*parent].state == TaskState::Running)
            .collect();
        for parent in running {
            self.end_open_items(book, run_index, parent);
            let active = &mut book.runs[run_index];
            let reason = "the run was cancelled";
            let change = TaskChange {
                task: self.name(parent).to_string(),
                state: TaskState::Done,
                outcome: Some(Outcome::Cancelled),
                not_before: None,
                message: Some(reason.to_string()),
                reset_retry_budget: false,
                reason: reason.to_string(),
            };
            write_tasks(&mut book.writes, active.record.id, [change]);
            active.slots[parent].state = TaskState::Done;
            active.slots[parent].outcome = Some(Outcome::Cancelled);
            active.done += 1;
        }
    }
}
