//! Gap detection and automatic backfill under `Engine::serve` on a manual clock: the partitions
//! the schedule should have made are repaired oldest first, within the per-day budget and each
//! partition's tries, and a gap left without tries is reported once.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_engine::{Progress, Shutdown};
use keel_model::{BackfillSpec, Catchup, Millis, Outcome, RunState, ScheduleSpec};
use keel_store::Store;

use crate::{Harness, NowForTest, pipeline, run_partition, task};

fn utc(text: &str) -> Millis {
    chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M")
        .unwrap()
        .and_utc()
        .timestamp_millis()
}

/// Moves the clock to `at` and waits until the serve loop has been all the way round once after
/// it: the loop stamps its heartbeat at the top of each turn, before it fires schedules and
/// repairs gaps, so a stamp at `at + 1` means the turn at `at` has finished.
async fn settle(harness: &Harness, heartbeat: &AtomicI64, at: Millis) {
    for now in [at, at + 1] {
        harness.clock.set(now);
        for _ in 0..2_000 {
            if heartbeat.load(Ordering::SeqCst) >= now {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            heartbeat.load(Ordering::SeqCst) >= now,
            "the serve loop did not turn at {now}"
        );
    }
}

async fn state_of(harness: &Harness, partition: &str) -> Option<RunState> {
    harness
        .store
        .latest_run("test", partition)
        .await
        .unwrap()
        .map(|run| run.state)
}

async fn wait_finished(harness: &Harness, heartbeat: &AtomicI64, partition: &str) -> RunState {
    let mut now = harness.clock.now_for_test();
    for _ in 0..200 {
        if let Some(state) = state_of(harness, partition).await
            && state.is_finished()
        {
            return state;
        }
        now += 1;
        settle(harness, heartbeat, now).await;
    }
    panic!("the run of {partition} did not finish");
}

#[tokio::test]
async fn gaps_are_repaired_oldest_first_within_the_budget_and_a_hopeless_one_is_told_once() {
    let harness = Harness::new();
    let mut spec = pipeline(vec![task("a", "p0", &[], 1)], 4);
    spec.schedule = Some(ScheduleSpec {
        cron: "0 6 * * *".into(),
        partition_offset_days: -1,
        catchup: Catchup::None,
        backfill: Some(BackfillSpec {
            auto: true,
            max_per_day: 2,
            lookback_days: 4,
            from: None,
            tries: 2,
        }),
    });
    // Thursday 12:00: the schedule should have made the 8th to the 11th.
    let start = utc("2026-11-12 12:00");
    harness.clock.set(start);
    // The 11th failed, the 10th succeeded; the 8th and the 9th never ran.
    harness.executor.script("a", &[Outcome::FailedPermanent]);
    let mut engine = harness.engine(spec.clone());
    assert_eq!(
        run_partition(&mut engine, "2026-11-11").await,
        RunState::Failed
    );
    assert_eq!(
        run_partition(&mut engine, "2026-11-10").await,
        RunState::Succeeded
    );

    let mut engine = harness.engine(spec);
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    engine.observe(move |event| seen.lock().unwrap().push(event));
    let heartbeat = Arc::new(AtomicI64::new(0));
    engine.set_heartbeat(heartbeat.clone());
    let (trigger, shutdown) = Shutdown::channel();
    let served = tokio::spawn(async move { engine.serve(shutdown).await });

    // At start: the two oldest gaps, the budget of the day, in order.
    settle(&harness, &heartbeat, start).await;
    assert_eq!(
        wait_finished(&harness, &heartbeat, "2026-11-08").await,
        RunState::Succeeded
    );
    assert_eq!(
        wait_finished(&harness, &heartbeat, "2026-11-09").await,
        RunState::Succeeded
    );
    let repairs = |events: &[Progress]| -> Vec<(String, &'static str, u32)> {
        events
            .iter()
            .filter_map(|event| match event {
                Progress::BackfillStarted {
                    partition,
                    kind,
                    repair,
                    ..
                } => Some((partition.clone(), *kind, *repair)),
                _ => None,
            })
            .collect()
    };
    assert_eq!(
        repairs(&events.lock().unwrap()),
        [
            ("2026-11-08".to_string(), "missing", 1),
            ("2026-11-09".to_string(), "missing", 1)
        ]
    );
    assert_eq!(
        harness
            .store
            .last_fire("test", "backfill:2026-11-08#1")
            .await
            .unwrap(),
        Some(start),
        "the repair is recorded as a fire, with its run"
    );

    // An hour later the day's budget is spent: the failed 11th waits for tomorrow.
    settle(&harness, &heartbeat, start + 3_600_000).await;
    settle(&harness, &heartbeat, start + 3_600_000 + 10).await;
    assert_eq!(repairs(&events.lock().unwrap()).len(), 2);
    assert_eq!(
        state_of(&harness, "2026-11-11").await,
        Some(RunState::Failed)
    );

    // The next local day: the 11th is repaired, fails again, is repaired once more an hour
    // later, fails again, and with its tries spent is told once, however often it is looked at.
    harness
        .executor
        .script("a", &[Outcome::FailedPermanent, Outcome::FailedPermanent]);
    let day_two = utc("2026-11-13 00:30");
    settle(&harness, &heartbeat, day_two).await;
    assert_eq!(
        wait_finished(&harness, &heartbeat, "2026-11-11").await,
        RunState::Failed
    );
    for hour in 1..=4 {
        settle(&harness, &heartbeat, day_two + hour * 3_600_000).await;
        wait_finished(&harness, &heartbeat, "2026-11-11").await;
    }
    let events = events.lock().unwrap().clone();
    assert_eq!(
        repairs(&events)[2..],
        [
            ("2026-11-11".to_string(), "failed", 1),
            ("2026-11-11".to_string(), "failed", 2)
        ]
    );
    let told: Vec<&String> = events
        .iter()
        .filter_map(|event| match event {
            Progress::GapUnrepaired {
                partition, detail, ..
            } => {
                assert_eq!(partition, "2026-11-11");
                Some(detail)
            }
            _ => None,
        })
        .collect();
    assert_eq!(told.len(), 1, "told once: {told:?}");
    assert!(
        told[0].contains("after 2 automatic repairs") && told[0].contains("keel retry"),
        "{}",
        told[0]
    );
    let run = harness
        .store
        .latest_run("test", "2026-11-11")
        .await
        .unwrap()
        .unwrap();
    let recorded = harness.store.events(run.id).await.unwrap();
    assert_eq!(
        recorded
            .iter()
            .filter(|event| event.kind == "gap_unrepaired")
            .count(),
        1,
        "the report is in the event log, so a restarted Keel does not tell it again"
    );
    trigger.drain();
    served.await.unwrap().unwrap();
}
