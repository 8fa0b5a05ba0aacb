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
