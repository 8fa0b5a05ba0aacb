//! The PostgreSQL backend, against the server of `KEEL_TEST_POSTGRES`: each test gets fresh
//! databases (see `keel_store::testing`), skipped without a server outside CI.

use std::sync::Mutex;

use keel_store::testing::TestDatabase;
use keel_store::{
    AnyStore, ClaimAttempt, NewRun, PostgresStore, PostgresUrl, StateLocation, Store, StoreError,
};

#[tokio::test]
async fn postgres_passes_the_conformance_suite() {
    // Every check gets a database of its own, kept until the suite ends.
    let databases: Mutex<Vec<TestDatabase>> = Mutex::new(Vec::new());
    if TestDatabase::create("postgres_passes_the_conformance_suite").is_none() {
        return;
    }
    keel_store::conformance::run_all(
        || {
            let database = TestDatabase::create("conformance").expect("the server is set");
            let url = database.postgres_url();
            databases.lock().unwrap().push(database);
            async move { PostgresStore::open(&url).unwrap() }
        },
        |store: &PostgresStore| {
            let url = store.url().clone();
            async move { PostgresStore::open(&url).unwrap() }
        },
    )
    .await;
}

fn new_run(partition: &str) -> NewRun {
    NewRun {
        pipeline: "hoops".into(),
        partition: partition.into(),
        version: "v1".into(),
        trace_id: "0af7651916cd43dd8448eb211c80319c".into(),
        tasks: vec![("scrape".into(), "main".into(), None)],
        at: 1_000,
        pass: None,
    }
}

/// Regression guard: the URL's password must never reach an error, whichever way it fails.
#[test]
fn the_password_of_an_unreachable_server_appears_in_no_error() {
    // A fresh, unused port on loopback: nothing listens there once the listener is dropped.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let password = format!("pw-{}", std::process::id());
    let text = format!("postgres://keel:{password}@127.0.0.1:{port}/keel?password={password}x");
    let url = PostgresUrl::parse(&text).unwrap();
    let error = PostgresStore::open(&url).unwrap_err();
    let message = error.to_string();
    assert!(matches!(error, StoreError::Unreachable { .. }), "{message}");
    assert!(!message.contains(&password), "{message}");
    assert!(
        message.contains(&format!("postgres://keel:***@127.0.0.1:{port}/keel")),
        "{message}"
    );
    assert!(message.contains("PGPASSWORD"), "{message}");
    let error = AnyStore::open(&StateLocation::of(&text)).err().unwrap();
    assert!(!error.to_string().contains(&password), "{error}");
}

#[tokio::test]
async fn a_database_with_tables_of_keels_names_is_refused_and_left_alone() {
    let Some(database) = TestDatabase::create("a_database_with_foreign_tables") else {
        return;
    };
    let mut connection = <sqlx::PgConnection as sqlx::Connection>::connect(database.url())
        .await
        .unwrap();
    sqlx::raw_sql("CREATE TABLE runs (mine INTEGER); INSERT INTO runs VALUES (7);")
        .execute(&mut connection)
        .await
        .unwrap();
    let error = PostgresStore::open(&database.postgres_url()).unwrap_err();
    assert!(matches!(error, StoreError::Foreign { .. }), "{error}");
    assert!(error.to_string().contains("runs"), "{error}");
    let mine: i32 = sqlx::query_scalar("SELECT mine FROM runs")
        .fetch_one(&mut connection)
        .await
        .unwrap();
    assert_eq!(mine, 7, "the foreign table is untouched");
    let has_schema: bool = sqlx::query_scalar("SELECT to_regclass('keel_schema') IS NOT NULL")
        .fetch_one(&mut connection)
        .await
        .unwrap();
    assert!(!has_schema, "nothing of Keel's was created");
}

#[tokio::test]
async fn an_empty_database_is_not_opened_for_reading_and_not_changed() {
    let Some(database) = TestDatabase::create("an_empty_database_for_reading") else {
        return;
    };
    let location = StateLocation::of(database.url());
    assert!(AnyStore::open_read_only(&location).unwrap().is_none());
    let mut connection = <sqlx::PgConnection as sqlx::Connection>::connect(database.url())
        .await
        .unwrap();
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
    )
    .fetch_one(&mut connection)
    .await
    .unwrap();
    assert_eq!(tables, 0);
    // Once created, it opens for reading, as the same store.
    let store = AnyStore::open(&location).unwrap();
    let run = store.create_run(new_run("2026-01-01")).await.unwrap();
    let reader = AnyStore::open_read_only(&location).unwrap().unwrap();
    assert_eq!(reader.store_id(), store.store_id());
    assert_eq!(reader.run(run.id).await.unwrap(), run);
    assert_eq!(reader.pipelines().await.unwrap(), vec!["hoops".to_string()]);
}

#[tokio::test]
async fn quota_use_adds_up_per_period_and_survives_reopening_in_postgres() {
    let Some(database) = TestDatabase::create("quota_use_in_postgres") else {
        return;
    };
    let location = StateLocation::of(database.url());
    let store = AnyStore::open(&location).unwrap();
    for (resource, period, count, total) in [
        ("odds", "2026-11", 3, 3),
        ("odds", "2026-12", 2, 2),
        ("odds", "2026-12", 1, 3),
        ("feed", "2026-12-02", 7, 7),
    ] {
        let used = store
            .add_quota_use("hoops", resource, period, count, 1)
            .await
            .unwrap();
        assert_eq!(used, total, "{resource} {period}");
    }
    drop(store);
    let store = AnyStore::open(&location).unwrap();
    assert_eq!(
        store.quota_uses("hoops").await.unwrap(),
        vec![
            ("feed".to_string(), "2026-12-02".to_string(), 7),
            ("odds".to_string(), "2026-12".to_string(), 3),
        ]
    );
}

/// Two Keels on one database (two pools) claiming the same task at the same moment: exactly one
/// attempt is live, and the other claim is refused, never a second attempt.
#[tokio::test]
async fn concurrent_claims_from_two_stores_give_one_live_attempt() {
    let Some(database) = TestDatabase::create("concurrent_claims") else {
        return;
    };
    let first = PostgresStore::open(&database.postgres_url()).unwrap();
    let second = PostgresStore::open(&database.postgres_url()).unwrap();
    for round in 0..20 {
        let run = first
            .create_run(new_run(&format!("2026-01-{:02}", round + 1)))
            .await
            .unwrap();
        let claim = |owner: &str| ClaimAttempt {
            run: run.id,
            task: "scrape".into(),
            owner: owner.into(),
            dir: "/tmp/scrape".into(),
            version: "v1".into(),
            task_version: None,
            lease_expires_at: 60_000,
            at: 2_000,
        };
        let (a, b) = tokio::join!(
            first.claim_attempt(claim("a")),
            second.claim_attempt(claim("b"))
        );
        let won = [&a, &b].iter().filter(|result| result.is_ok()).count();
        assert_eq!(won, 1, "round {round}: {a:?} {b:?}");
        let lost = if a.is_ok() { b } else { a };
        assert!(
            matches!(
                lost,
                Err(StoreError::AlreadyLive { .. } | StoreError::NotClaimable { .. })
            ),
            "{lost:?}"
        );
        assert_eq!(first.attempts(run.id).await.unwrap().len(), 1);
    }
}

#[tokio::test]
async fn a_postgres_state_of_a_newer_schema_is_refused() {
    let Some(database) = TestDatabase::create("a_postgres_state_of_a_newer_schema") else {
        return;
    };
    drop(PostgresStore::open(&database.postgres_url()).unwrap());
    let mut connection = <sqlx::PgConnection as sqlx::Connection>::connect(database.url())
        .await
        .unwrap();
    sqlx::raw_sql("UPDATE keel_schema SET version = 99")
        .execute(&mut connection)
        .await
        .unwrap();
    let error = PostgresStore::open(&database.postgres_url()).unwrap_err();
    assert!(
        matches!(error, StoreError::TooNew { found: 99, .. }),
        "{error}"
    );
    assert!(error.to_string().contains("upgrade keel"), "{error}");
    let error = AnyStore::open_read_only(&StateLocation::of(database.url()))
        .err()
        .unwrap();
    assert!(matches!(error, StoreError::TooNew { .. }), "{error}");
}

/// The work queue's rules on explicit times (no clock is read): two workers never claim the
/// same row; a renewed lease is not reaped; a lapsed one is reaped as the caller's report with
/// its epoch bumped, and the late worker's result and renewal are refused; a cancel ends a
/// queued row at once and flags a claimed one for its worker.
#[tokio::test]
async fn the_work_queue_fences_a_lapsed_lease_and_never_hands_a_row_out_twice() {
    let Some(database) = TestDatabase::create("the_work_queue_fences_a_lapsed_lease") else {
        return;
    };
    let url = database.postgres_url();
    let store = tokio::task::spawn_blocking(move || PostgresStore::open(&url).unwrap())
        .await
        .unwrap();
    let queue = store.work_queue(4);
    for number in 0..5 {
        queue
            .enqueue(&format!("s/1/t{number}.1"), &format!("job {number}"), 1_000)
            .await
            .unwrap();
    }
    // The same key queued again (a launch sent twice) stays one row.
    queue.enqueue("s/1/t0.1", "again", 1_001).await.unwrap();
    queue
        .register_worker("a", "host-a", 10, 2, 1_000)
        .await
        .unwrap();
    queue
        .register_worker("b", "host-b", 11, 8, 1_000)
        .await
        .unwrap();
    // a claims two; then two claims of b race for the other three.
    let first = queue.claim("a", 2, 2_000, 1_500).await.unwrap();
    assert_eq!(first.len(), 2);
    let (one, other) = tokio::join!(
        queue.claim("b", 2, 2_000, 1_500),
        queue.claim("b", 2, 2_000, 1_500)
    );
    let mut second = one.unwrap();
    second.extend(other.unwrap());
    second.sort_by_key(|item| item.id);
    assert_eq!(first.len() + second.len(), 5, "{first:?} {second:?}");
    let mut keys: Vec<&str> = first
        .iter()
        .chain(&second)
        .map(|item| item.key.as_str())
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(
        keys.len(),
        5,
        "a row was handed out twice: {first:?} {second:?}"
    );
    let payload = first
        .iter()
        .chain(&second)
        .find(|item| item.key == "s/1/t0.1")
        .unwrap();
    assert_eq!(payload.payload, "job 0");
    assert!(queue.claim("b", 8, 2_000, 1_500).await.unwrap().is_empty());

    // b renews at 3 000 (until 4 500); a does not. At 3 600 only a's leases have lapsed.
    let held_b: Vec<(i64, i64)> = second
        .iter()
        .map(|item| (item.id, item.claim_epoch))
        .collect();
    let renewal = queue.renew("b", &held_b, 3_000, 1_500).await.unwrap();
    assert!(
        renewal.lost.is_empty() && renewal.cancelled.is_empty(),
        "{renewal:?}"
    );
    assert!(
        queue.reap(3_499, "lost").await.unwrap().is_empty(),
        "a's lease runs to 3 500"
    );
    let mut reaped = queue.reap(3_600, "lost").await.unwrap();
    reaped.sort();
    let mut expected: Vec<String> = first.iter().map(|item| item.key.clone()).collect();
    expected.sort();
    assert_eq!(reaped, expected);
    let row = queue.row(&first[0].key).await.unwrap().unwrap();
    assert_eq!(row.state, keel_store::WorkState::Done);
    assert_eq!(row.report.as_deref(), Some("lost"));
    assert_eq!(row.claim_epoch, first[0].claim_epoch + 1);

    // a comes back late: its result is refused and its renewal says the rows are gone.
    assert!(
        !queue
            .finish(first[0].id, first[0].claim_epoch, "succeeded", "log", 3_700)
            .await
            .unwrap()
    );
    let held_a: Vec<(i64, i64)> = first
        .iter()
        .map(|item| (item.id, item.claim_epoch))
        .collect();
    let renewal = queue.renew("a", &held_a, 3_700, 1_500).await.unwrap();
    let mut lost = renewal.lost.clone();
    lost.sort();
    let mut ids: Vec<i64> = first.iter().map(|item| item.id).collect();
    ids.sort();
    assert_eq!(lost, ids);
    assert_eq!(
        queue
            .row(&first[0].key)
            .await
            .unwrap()
            .unwrap()
            .report
            .as_deref(),
        Some("lost")
    );

    // b's results are recorded under their epoch, once.
    assert!(
        queue
            .finish(
                second[0].id,
                second[0].claim_epoch,
                "succeeded",
                "the log",
                3_800
            )
            .await
            .unwrap()
    );
    assert!(
        !queue
            .finish(second[0].id, second[0].claim_epoch, "failed", "", 3_900)
            .await
            .unwrap()
    );
    let done = queue.done_among(&[second[0].key.clone()]).await.unwrap();
    assert_eq!(done[0].report.as_deref(), Some("succeeded"));
    assert_eq!(done[0].log.as_deref(), Some("the log"));

    // A cancel: a queued row ends at once; a claimed one is flagged for its worker.
    queue.enqueue("s/2/q.1", "job", 4_000).await.unwrap();
    queue.cancel("s/2/q.1", "cancelled", 4_001).await.unwrap();
    let row = queue.row("s/2/q.1").await.unwrap().unwrap();
    assert_eq!(
        (row.state, row.report.as_deref()),
        (keel_store::WorkState::Done, Some("cancelled"))
    );
    queue
        .cancel(&second[1].key, "cancelled", 4_002)
        .await
        .unwrap();
    let renewal = queue
        .renew("b", &[(second[1].id, second[1].claim_epoch)], 4_003, 1_500)
        .await
        .unwrap();
    assert_eq!(renewal.cancelled, vec![second[1].id]);

    let view = queue.cluster().await.unwrap();
    assert_eq!(view.workers.len(), 2);
    let b = view.workers.iter().find(|worker| worker.id == "b").unwrap();
    assert_eq!(b.heartbeat_at, 4_003);
    assert_eq!(b.leases.len(), second.len() - 1);
    assert_eq!(view.reaped, first.len() as i64);
    assert_eq!(view.claimed, second.len() as i64 - 1);

    // A day later: done rows and silent workers are forgotten; claimed rows are kept.
    queue.forget_done(4_000).await.unwrap();
    let view = queue.cluster().await.unwrap();
    assert_eq!(view.done, 1, "the row cancelled at 4 001 stays");
    assert_eq!(view.claimed, second.len() as i64 - 1);
    assert_eq!(
        view.workers.len(),
        1,
        "a's last heartbeat was at 1 000: {view:?}"
    );
}

/// A notice `wait` took is never lost to a caller that drops it for another event, as a
/// worker's `select!` does when one of its attempts ends: once it holds a notice, `wait`
/// returns on the same poll. Polled once at a time, it either took nothing yet or says a
/// notice came; a `wait` that took the notices and then waited again would be dropped holding
/// them, and the rows would wait for the next poll.
#[tokio::test]
async fn a_wait_that_took_a_notice_returns_on_the_same_poll() {
    let Some(database) = TestDatabase::create("a_wait_that_took_a_notice_returns") else {
        return;
    };
    let url = database.postgres_url();
    let store = tokio::task::spawn_blocking(move || PostgresStore::open(&url).unwrap())
        .await
        .unwrap();
    let queue = store.work_queue(2);
    let mut notices = queue.notices(true).await.unwrap();
    // Two notices, from two statements.
    queue
        .enqueue_many(&[("s/1/a.1", "a")], 1_000)
        .await
        .unwrap();
    queue
        .enqueue_many(&[("s/1/b.1", "b")], 1_001)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let waited = notices.wait(std::time::Duration::from_secs(3600));
        match futures_util::FutureExt::now_or_never(waited) {
            Some(came) => {
                assert!(came, "a notice came");
                break;
            }
            None => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no poll of wait said the notices came: one took them and was dropped waiting"
                );
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
    }
}

/// The queue's batch calls keep its guarantees. A batch enqueue queues its rows in order and
/// keeps the first payload of a key named twice (queued before, or twice in the batch). A
/// batch finish records each result only under the epoch its row was claimed with: in one
/// batch, a reaped row's result and a result under the wrong epoch are refused while the
/// others are recorded, and a result sent again is refused (exactly once).
#[tokio::test]
async fn the_work_queue_batches_keep_the_first_payload_and_fence_each_result_by_its_epoch() {
    let Some(database) = TestDatabase::create("the_work_queue_batches") else {
        return;
    };
    let url = database.postgres_url();
    let store = tokio::task::spawn_blocking(move || PostgresStore::open(&url).unwrap())
        .await
        .unwrap();
    let queue = store.work_queue(4);
    let mut notices = queue.notices(true).await.unwrap();
    queue.enqueue("s/1/a.1", "first a", 1_000).await.unwrap();
    queue
        .enqueue_many(
            &[
                ("s/1/b.1", "first b"),
                ("s/1/a.1", "second a"),
                ("s/1/c.1", "c"),
                ("s/1/b.1", "second b"),
                ("s/1/d.1", "d"),
            ],
            1_001,
        )
        .await
        .unwrap();
    assert!(
        notices.wait(std::time::Duration::from_secs(10)).await,
        "a batch that queued rows is announced"
    );
    queue.enqueue_many(&[], 1_002).await.unwrap();

    let items = queue.claim("w", 10, 2_000, 1_500).await.unwrap();
    let claimed: Vec<(&str, &str)> = items
        .iter()
        .map(|item| (item.key.as_str(), item.payload.as_str()))
        .collect();
    assert_eq!(
        claimed,
        [
            ("s/1/a.1", "first a"),
            ("s/1/b.1", "first b"),
            ("s/1/c.1", "c"),
            ("s/1/d.1", "d")
        ],
        "one row per key, first payload kept, in the order queued"
    );
    let [a, b, c, d] = &items[..] else {
        panic!("{items:?}")
    };

    // a, b and d renew; c's lease lapses and is reaped (its epoch bumped).
    let renewed = [a, b, d].map(|item| (item.id, item.claim_epoch));
    queue.renew("w", &renewed, 3_000, 1_500).await.unwrap();
    assert_eq!(
        queue.reap(3_600, "lost").await.unwrap(),
        vec![c.key.clone()]
    );

    // One batch: a and b under their epochs, c under the epoch the reap fenced off, d under an
    // epoch it was never claimed with.
    let batch = [
        (a.id, a.claim_epoch, "a succeeded", "a's log"),
        (b.id, b.claim_epoch, "b failed", "b's log"),
        (c.id, c.claim_epoch, "c late", "c's log"),
        (d.id, d.claim_epoch + 7, "d forged", ""),
    ];
    let mut recorded = queue.finish_many(&batch, 3_700).await.unwrap();
    recorded.sort();
    let mut expected = vec![a.id, b.id];
    expected.sort();
    assert_eq!(recorded, expected);
    // Sent again (a retry after a lost answer): nothing is recorded twice.
    assert!(queue.finish_many(&batch, 3_800).await.unwrap().is_empty());
    assert!(queue.finish_many(&[], 3_800).await.unwrap().is_empty());

    let mut rows = Vec::new();
    for key in [&a.key, &b.key, &c.key, &d.key] {
        let row = queue.row(key).await.unwrap().unwrap();
        rows.push((row.key, row.state, row.report, row.log));
    }
    assert_eq!(
        rows,
        vec![
            (
                a.key.clone(),
                keel_store::WorkState::Done,
                Some("a succeeded".into()),
                Some("a's log".into())
            ),
            (
                b.key.clone(),
                keel_store::WorkState::Done,
                Some("b failed".into()),
                Some("b's log".into())
            ),
            (
                c.key.clone(),
                keel_store::WorkState::Done,
                Some("lost".into()),
                None
            ),
            (d.key.clone(), keel_store::WorkState::Claimed, None, None),
        ]
    );
    // d's worker, under its own epoch, still records its result.
    assert!(
        queue
            .finish(d.id, d.claim_epoch, "d succeeded", "", 3_900)
            .await
            .unwrap()
    );
}
