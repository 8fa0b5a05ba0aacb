//! `keel serve`: one long-lived engine that runs a pipeline unattended. It starts runs when the
//! pipeline's schedule fires (catching up on fires it missed, as `catchup` says), takes up runs
//! other processes queue in the store (`keel run --detach`, a `keel run` while serve holds the
//! state, a `keel retry`), and carries on everything a previous Keel left unfinished.
//!
//! Each pass (`[passes.NAME]`) with a schedule has a cursor of its own, recorded under the
//! trigger `pass:NAME`, with its own catch-up: its fires start runs of the pass, kept apart from
//! the pipeline's own runs of the same partition.
//!
//! A fire is recorded with the run it starts in one transaction (`Store::create_run_for_fire`),
//! so a Keel killed at any instant neither loses a fire nor starts one twice: on restart the
//! last recorded fire says which were missed.

use std::collections::{HashSet, VecDeque};

use keel_model::EventKind;
use keel_model::schedule::Schedule;
use keel_model::{Catchup, PartitionKind};
use keel_store::{FireOutcome, NewEvent, ScheduleFire};

use crate::gaps;

use super::*;

/// The trigger name under which the pipeline's own `schedule` records its fires.
pub(crate) const PIPELINE_TRIGGER: &str = "pipeline";

/// The trigger name under which a pass's schedule records its fires: `pass:NAME`.
pub(crate) fn pass_trigger(pass: &str) -> String {
    format!("pass:{pass}")
}

/// The most missed fires one start catches up on (`catchup = "all"`); older ones are skipped,
/// with a note in the log.
const MAX_CATCH_UP: usize = 1_000;

/// How often `keel serve` looks for gaps to repair (`backfill = { auto = true }`).
pub(crate) const GAP_CHECK_EVERY: Millis = 3_600_000;

/// Where a schedule stands: fires still owed from before (catch-up), then the next one.
pub(super) struct Cursor {
    /// What fires: the pipeline's own schedule (`None`) or a pass's.
    pass: Option<String>,
    schedule: Schedule,
    offset_days: i64,
    owed: VecDeque<Millis>,
    next: Option<Millis>,
}

impl Cursor {
    /// The fires owed at `now` given the last recorded one, per the catch-up policy.
    fn new(
        schedule: Schedule,
        spec: &keel_model::ScheduleSpec,
        last: Option<Millis>,
        now: Millis,
    ) -> Cursor {
        let missed = match last {
            // Never fired: a schedule starts from now; nothing is owed from before it existed.
            None => Vec::new(),
            Some(last) => schedule.fires_between(last, now, MAX_CATCH_UP),
        };
        let owed: VecDeque<Millis> = match spec.catchup {
            Catchup::All => missed.into(),
            Catchup::Latest => missed.last().copied().into_iter().collect(),
            Catchup::None => VecDeque::new(),
        };
        let next = schedule.next_after(now);
        Cursor {
            pass: None,
            schedule,
            offset_days: spec.partition_offset_days,
            owed,
            next,
        }
    }

    /// The next fire due at `now`, oldest first; the cursor moves past it.
    fn take_due(&mut self, now: Millis) -> Option<Millis> {
        if let Some(owed) = self.owed.pop_front() {
            return Some(owed);
        }
        let next = self.next.filter(|next| *next <= now)?;
        self.next = self.schedule.next_after(next);
        Some(next)
    }

    /// When the engine must wake for the next fire.
    pub(super) fn wake_at(&self) -> Option<Millis> {
        if self.owed.is_empty() {
            self.next
        } else {
            Some(0)
        }
    }
}

impl<S: Store, E: Executor, C: Clock> Engine<S, E, C> {
    /// Runs the pipeline until a shutdown: scheduled runs, runs others queue, and every
    /// unfinished run, recovered first as `execute` does. On [`Shutdown`]'s drain no attempt
    /// starts any more and running ones may finish within the grace period; a restart carries
    /// on from the store.
    pub async fn serve(&mut self, shutdown: Shutdown) -> Result<(), EngineError> {
        let (mut book, mut inbox) = self.new_book(shutdown).await?;
        let live = self.store.live_attempts(&self.core.spec.name).await?;
        let mut to_load: Vec<RunId> = self
            .store
            .unfinished_runs(&self.core.spec.name)
            .await?
            .into_iter()
            .map(|run| run.id)
            .collect();
        for attempt in &live {
            if !to_load.contains(&attempt.run) {
                to_load.push(attempt.run);
            }
        }
        let mut refused = HashSet::new();
        for run in to_load {
            self.take_up(&mut book, &mut inbox, run, &live, &mut refused)
                .await?;
        }
        let mut cursors = self.schedule_cursors().await?;
        // Gaps are looked for at start, then hourly, when `backfill = { auto = true }`.
        let mut gap_check_at = self.auto_backfill().map(|_| self.clock.now());
        loop {
            if let Some(heartbeat) = &self.heartbeat {
                heartbeat.store(self.clock.now(), std::sync::atomic::Ordering::Relaxed);
            }
            for cursor in &mut cursors {
                self.fire_due(&mut book, &mut inbox, cursor, &mut refused)
                    .await?;
            }
            if let Some(at) = gap_check_at
                && at <= self.clock.now()
                && !book.shutting_down
            {
                self.repair_gaps(&mut book, &mut inbox, &mut refused)
                    .await?;
                gap_check_at = Some(self.clock.now() + GAP_CHECK_EVERY);
            }
            if !self.turn(&mut book, &mut inbox).await? {
                continue;
            }
            if book.shutting_down && book.live.is_empty() {
                break;
            }
            if book.live.is_empty()
                && book.sensing == 0
                && book.probing == 0
                && book.ready.is_empty()
                && book.timers.is_empty()
                && book.runs.iter().any(|run| !run.finished)
            {
                self.core.settle_stuck_runs(&mut book)?;
                continue;
            }
            if book.forget_finished_runs() {
                // No run refers to an item any more: their names and indexes go too.
                self.core.forget_items();
            }
            let next_timer = book.timers.peek().map(|Reverse((at, _, _))| *at);
            let wake_at = next_timer
                .into_iter()
                .chain(cursors.iter().filter_map(Cursor::wake_at))
                .chain(gap_check_at.filter(|_| !book.shutting_down))
                .min();
            let wakeup = wait(self.clock.clone(), wake_at, &mut inbox).await;
            book.now = self.clock.now();
            let poll = matches!(wakeup, Wakeup::Poll);
            self.on_wakeup(&mut book, &mut inbox, wakeup).await?;
            if book.released {
                break;
            }
            if poll && !book.shutting_down {
                self.pick_up_runs(&mut book, &mut inbox, &mut refused)
                    .await?;
            }
        }
        self.flush(&mut book).await
    }

    /// The pipeline's schedule and each pass's as of now, each with the fires missed since its
    /// last recorded one.
    async fn schedule_cursors(&mut self) -> Result<Vec<Cursor>, EngineError> {
        let mut schedules: Vec<(Option<String>, keel_model::ScheduleSpec)> = Vec::new();
        if let Some(spec) = &self.core.spec.schedule {
            schedules.push((None, spec.clone()));
        }
        for pass in &self.core.spec.passes {
            if let Some(spec) = &pass.schedule {
                schedules.push((Some(pass.name.clone()), spec.clone()));
            }
        }
        let mut cursors = Vec::with_capacity(schedules.len());
        for (pass, spec) in schedules {
            let schedule = Schedule::parse(&spec.cron, &self.core.spec.timezone)
                .map_err(|error| EngineError::Schedule(error.to_string()))?;
            let trigger = match &pass {
                None => PIPELINE_TRIGGER.to_string(),
                Some(pass) => pass_trigger(pass),
            };
            let last = self.store.last_fire(&self.core.spec.name, &trigger).await?;
            let mut cursor = Cursor::new(schedule, &spec, last, self.clock.now());
            cursor.pass = pass;
            cursors.push(cursor);
        }
        Ok(cursors)
    }

    /// Starts a run for every fire due now, each recorded with its run in one transaction.
    async fn fire_due(
        &mut self,
        book: &mut Book,
        inbox: &mut Inbox,
        cursor: &mut Cursor,
        refused: &mut HashSet<RunId>,
    ) -> Result<(), EngineError> {
        while let Some(fire_at) = cursor.take_due(self.clock.now()) {
            if book.shutting_down {
                // Not recorded: the next start finds it missed and catches up as configured.
                return Ok(());
            }
            let partition = match self.core.spec.partition {
                PartitionKind::None => "none".to_string(),
                PartitionKind::Date => {
                    match cursor.schedule.partition_of(fire_at, cursor.offset_days) {
                        Some(date) => date.to_string(),
                        None => {
                            (self.core.observer)(Progress::ScheduleSkipped {
                                fire_at,
                                reason: format!(
                                    "no partition date {:+} days from the fire",
                                    cursor.offset_days
                                ),
                            });
                            continue;
                        }
                    }
                }
            };
            let ((new_run, calendar), trigger) = match &cursor.pass {
                None => (self.new_run(&partition, &[]), PIPELINE_TRIGGER.to_string()),
                Some(name) => {
                    let Some(pass) = self.core.spec.pass(name).cloned() else {
                        continue;
                    };
                    (self.new_pass_run(&partition, &pass), pass_trigger(name))
                }
            };
            let topology = self.core.topology_index(cursor.pass.as_deref());
            // The gates, and why calendars skip tasks, stored with the run.
            let mut changes = self
                .core
                .waiting_gates(topology, 0..self.core.topologies[topology].gates.len());
            changes.extend(calendar);
            let fire = ScheduleFire { trigger, fire_at };
            let outcome = self
                .store
                .create_run_for_fire(new_run, fire, changes)
                .await?;
            let run = match outcome {
                FireOutcome::Created(run) | FireOutcome::Joined(run) => run,
                FireOutcome::AlreadyFired(_) => continue,
            };
            (self.core.observer)(Progress::RunScheduled {
                run,
                partition,
                fire_at,
                joined: matches!(outcome, FireOutcome::Joined(_)),
                pass: cursor.pass.clone(),
                started_at: self.clock.now(),
            });
            if !is_loaded(book, run) {
                self.take_up(book, inbox, run, &[], refused).await?;
            }
        }
        Ok(())
    }

    /// The pipeline's schedule and its backfill, when gaps are to be repaired automatically.
    fn auto_backfill(&self) -> Option<(keel_model::ScheduleSpec, keel_model::BackfillSpec)> {
        let schedule = self.core.spec.schedule.clone()?;
        let backfill = schedule.backfill.clone().filter(|backfill| backfill.auto)?;
        (self.core.spec.partition == PartitionKind::Date).then_some((schedule, backfill))
    }

    /// Repairs the gaps of the last `lookback` days, oldest first: a run per missing or failed
    /// partition with tries left, at most `max_per_day` a local day, each recorded with its run
    /// in one transaction. A gap left without tries, or stale, is reported once.
    async fn repair_gaps(
        &mut self,
        book: &mut Book,
        inbox: &mut Inbox,
        refused: &mut HashSet<RunId>,
    ) -> Result<(), EngineError> {
        let Some((spec, backfill)) = self.auto_backfill() else {
            return Ok(());
        };
        let schedule = Schedule::parse(&spec.cron, &self.core.spec.timezone)
            .map_err(|error| EngineError::Schedule(error.to_string()))?;
        let now = self.clock.now();
        let pipeline = self.core.spec.name.clone();
        let expected = gaps::expected_partitions(&schedule, &spec, &backfill, now);
        let found = gaps::find_gaps(&self.store, &pipeline, &expected, &backfill, now).await?;
        if found.is_empty() {
            return Ok(());
        }
        let today = gaps::local_day_start(&schedule, now);
        let made_today =
            gaps::repairs_since(&self.store, &pipeline, &expected, backfill.tries, today).await?;
        let mut budget = backfill.max_per_day.saturating_sub(made_today);
        for gap in found {
            if gap.repairable {
                if budget == 0 {
                    // Tomorrow's budget takes the rest, oldest first.
                    continue;
                }
                let repair = gap.repairs + 1;
                let (new_run, calendar) = self.new_run(&gap.partition, &[]);
                let topology = self.core.topology_index(None);
                let mut changes = self
                    .core
                    .waiting_gates(topology, 0..self.core.topologies[topology].gates.len());
                changes.extend(calendar);
                let fire = ScheduleFire {
                    trigger: gaps::repair_trigger(&gap.partition, repair),
                    fire_at: now,
                };
                let run = match self
                    .store
                    .create_run_for_fire(new_run, fire, changes)
                    .await?
                {
                    FireOutcome::Created(run) | FireOutcome::Joined(run) => run,
                    FireOutcome::AlreadyFired(_) => continue,
                };
                budget -= 1;
                (self.core.observer)(Progress::BackfillStarted {
                    run,
                    partition: gap.partition.clone(),
                    kind: gap.kind.as_str(),
                    repair,
                    started_at: now,
                });
                if !is_loaded(book, run) {
                    self.take_up(book, inbox, run, &[], refused).await?;
                }
            } else if let Some(run) = gap.run {
                // Told once: the report is recorded on the gap's latest run.
                let told = self
                    .store
                    .events(run)
                    .await?
                    .iter()
                    .any(|event| event.kind == EventKind::GapUnrepaired);
                if told {
                    continue;
                }
                let detail = match gap.kind {
                    gaps::GapKind::Stale => format!(
                        "partition {} is stale ({}); automatic backfill leaves it to a person: cancel it with `keel cancel --partition {}` or let it finish",
                        gap.partition, gap.detail, gap.partition
                    ),
                    _ => format!(
                        "partition {} is still {} after {} automatic repairs ({}); fix the cause, then `keel retry --partition {} --failed`",
                        gap.partition,
                        gap.kind.as_str(),
                        gap.repairs,
                        gap.detail,
                        gap.partition
                    ),
                };
                self.store
                    .append_event(NewEvent {
                        run,
                        task: None,
                        attempt: None,
                        kind: EventKind::GapUnrepaired,
                        detail: detail.clone(),
                        at: now,
                    })
                    .await?;
                (self.core.observer)(Progress::GapUnrepaired {
                    run,
                    partition: gap.partition,
                    kind: gap.kind.as_str(),
                    detail,
                });
            }
        }
        Ok(())
    }

    /// Loads the unfinished runs the store has that this engine does not follow yet: queued by
    /// another process, or finished here and reopened by `keel retry`.
    async fn pick_up_runs(
        &mut self,
        book: &mut Book,
        inbox: &mut Inbox,
        refused: &mut HashSet<RunId>,
    ) -> Result<(), EngineError> {
        // What this engine decided is in the store first, so a run it just finished is not
        // mistaken for one reopened.
        self.flush(book).await?;
        let unfinished = self.store.unfinished_runs(&self.core.spec.name).await?;
        for run in unfinished {
            if !is_loaded(book, run.id) && !refused.contains(&run.id) {
                self.take_up(book, inbox, run.id, &[], refused).await?;
            }
        }
        Ok(())
    }

    /// Loads an unfinished run, first taking up what the pipeline file changed since it
    /// started, as `keel run` does when it resumes one: tasks the file gained join it. A run
    /// the file took unfinished tasks from is left alone and reported once, with what to do.
    async fn take_up(
        &mut self,
        book: &mut Book,
        inbox: &mut Inbox,
        run: RunId,
        live: &[AttemptRecord],
        refused: &mut HashSet<RunId>,
    ) -> Result<(), EngineError> {
        let record = self.store.run(run).await?;
        if record.version != self.core.version {
            match self.take_up_pipeline_changes(&record).await {
                Ok(()) => {}
                Err(error @ EngineError::RemovedTasks { .. }) => {
                    if refused.insert(run) {
                        (self.core.observer)(Progress::RunRefused {
                            run,
                            partition: record.partition,
                            reason: error.to_string(),
                        });
                    }
                    return Ok(());
                }
                Err(error) => return Err(error),
            }
        }
        self.load_run(book, inbox, run, live).await
    }
}

/// Whether the book follows `run` and has not seen it finish.
fn is_loaded(book: &Book, run: RunId) -> bool {
    book.runs
        .iter()
        .any(|active| active.record.id == run && !active.finished)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> Millis {
        chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M")
            .unwrap()
            .and_utc()
            .timestamp_millis()
    }

    fn cursor(catchup: Catchup, last: Option<&str>, now: &str) -> Cursor {
        let spec = keel_model::ScheduleSpec {
            cron: "0 6 * * *".into(),
            partition_offset_days: -1,
            catchup,
            backfill: None,
        };
        let schedule = Schedule::parse(&spec.cron, "UTC").unwrap();
        Cursor::new(schedule, &spec, last.map(utc), utc(now))
    }

    fn due(cursor: &mut Cursor, now: &str) -> Vec<Millis> {
        std::iter::from_fn(|| cursor.take_due(utc(now))).collect()
    }

    #[test]
    fn catch_up_owes_every_missed_fire_the_latest_or_none() {
        let last = Some("2026-12-01 06:00");
        let now = "2026-12-04 07:00";
        let missed = vec![
            utc("2026-12-02 06:00"),
            utc("2026-12-03 06:00"),
            utc("2026-12-04 06:00"),
        ];
        assert_eq!(due(&mut cursor(Catchup::All, last, now), now), missed);
        assert_eq!(
            due(&mut cursor(Catchup::Latest, last, now), now),
            vec![utc("2026-12-04 06:00")]
        );
        assert_eq!(
            due(&mut cursor(Catchup::None, last, now), now),
            Vec::<Millis>::new()
        );
        // A schedule that never fired owes nothing from before it existed.
        assert_eq!(
            due(&mut cursor(Catchup::All, None, now), now),
            Vec::<Millis>::new()
        );
    }

    #[test]
    fn each_fire_is_due_once_when_its_time_comes() {
        let mut cursor = cursor(Catchup::All, Some("2026-12-01 06:00"), "2026-12-01 07:00");
        assert_eq!(cursor.wake_at(), Some(utc("2026-12-02 06:00")));
        assert_eq!(due(&mut cursor, "2026-12-02 05:59"), Vec::<Millis>::new());
        assert_eq!(
            due(&mut cursor, "2026-12-02 06:00"),
            vec![utc("2026-12-02 06:00")]
        );
        assert_eq!(due(&mut cursor, "2026-12-02 06:30"), Vec::<Millis>::new());
        assert_eq!(cursor.wake_at(), Some(utc("2026-12-03 06:00")));
        // Woken late (the machine slept): the fire is still owed once, at its own time.
        assert_eq!(
            due(&mut cursor, "2026-12-03 09:00"),
            vec![utc("2026-12-03 06:00")]
        );
        let partition = cursor
            .schedule
            .partition_of(utc("2026-12-03 06:00"), -1)
            .unwrap();
        assert_eq!(partition.to_string(), "2026-12-02");
    }
}
