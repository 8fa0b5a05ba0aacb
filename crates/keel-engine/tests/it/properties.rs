//! Property: for any small DAG and any scripted outcomes, a run ends, every task is settled
//! consistently with its dependencies, and no task gets more charged attempts than its policy.

use super::*;
use proptest::prelude::*;

const OUTCOMES: [Outcome; 6] = [
    Outcome::Succeeded,
    Outcome::Failed,
    Outcome::FailedPermanent,
    Outcome::NoData,
    Outcome::TimedOut,
    Outcome::Skipped,
];

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn runs_always_settle_consistently(
        phases in 1usize..4,
        tasks_per_phase in 1usize..4,
        scripts in proptest::collection::vec(proptest::collection::vec(0usize..OUTCOMES.len(), 0..4), 12),
        attempts in 1u32..4,
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let harness = Harness::new();
            let mut tasks = Vec::new();
            for phase in 0..phases {
                for index in 0..tasks_per_phase {
                    let after: Vec<String> = if index > 0 { vec![format!("p{phase}t{}", index - 1)] } else { vec![] };
                    let after: Vec<&str> = after.iter().map(String::as_str).collect();
                    tasks.push(task(&format!("p{phase}t{index}"), &format!("p{phase}"), &after, attempts));
                }
            }
            for (task, script) in tasks.iter().zip(&scripts) {
                let outcomes: Vec<Outcome> = script.iter().map(|index| OUTCOMES[*index]).collect();
                harness.executor.script(&task.name, &outcomes);
            }
            let spec = pipeline(tasks, 2);
            let dag = keel_model::Dag::new(&spec);
            let mut engine = harness.engine(spec.clone());
            let run = match engine.prepare(&RunRequest { partitions: vec!["2026-01-01".into()], ..Default::default() }).await.unwrap()[0] {
                Prepared::Created(run) => run,
                ref other => panic!("{other:?}"),
            };
            let clock = harness.clock.clone();
            let handle = tokio::spawn(async move { engine.execute(&[run], keel_engine::Shutdown::never()).await.unwrap() });
            while !handle.is_finished() {
                clock.advance(120_000);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let state = handle.await.unwrap()[0].state;
            let records = harness.store.task_runs(run).await.unwrap();
            let all_complete = records.iter().all(|record| record.outcome.is_some_and(Outcome::is_complete));
            assert_eq!(state == RunState::Succeeded, all_complete);
            assert!(matches!(state, RunState::Succeeded | RunState::Failed));
            for (index, record) in records.iter().enumerate() {
                assert_eq!(record.state, TaskState::Done, "{record:?}");
                assert!(record.charged <= attempts, "{record:?}");
                let deps_complete = dag.inputs(index).iter().all(|dep| records[*dep].outcome.is_some_and(Outcome::is_complete));
                if record.outcome == Some(Outcome::UpstreamFailed) {
                    assert!(!deps_complete, "{} is upstream_failed with complete dependencies", record.task);
                    assert_eq!(record.attempts, 0);
                } else {
                    assert!(deps_complete, "{} ran before its dependencies completed", record.task);
                }
            }
            // Every retry waited within its backoff bounds: not before the failure, and no later
            // than the policy's ceiling for the attempts charged so far.
            let attempts = harness.store.attempts(run).await.unwrap();
            for task in &spec.tasks {
                let mine: Vec<_> = attempts.iter().filter(|attempt| attempt.task == task.name).collect();
                let mut charged = 0u32;
                for pair in mine.windows(2) {
                    let (previous, next) = (pair[0], pair[1]);
                    if previous.outcome.is_some_and(Outcome::uses_retry_attempt) {
                        charged += 1;
                    }
                    let failed_at = previous.finished_at.unwrap();
                    let not_before = next.not_before.expect("a retry records its not_before");
                    let ceiling = task.retries.ceiling(charged).as_millis() as i64;
                    assert!(not_before >= failed_at && not_before - failed_at <= ceiling,
                        "{}: retry {} waited {} ms, ceiling {ceiling} ms", task.name, next.number, not_before - failed_at);
                    assert!(next.claimed_at >= not_before, "{} started before its not_before", task.name);
                }
            }
            // No live attempt is left behind.
            assert!(harness.store.live_attempts("test").await.unwrap().is_empty());
        });
    }
}
