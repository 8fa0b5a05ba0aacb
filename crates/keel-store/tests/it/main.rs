mod postgres;

use keel_store::{LockError, SqliteStore, StateLock, Store, StoreError};

#[tokio::test]
async fn sqlite_passes_the_conformance_suite() {
    let dir = tempfile::tempdir().unwrap();
    let counter = std::sync::atomic::AtomicUsize::new(0);
    keel_store::conformance::run_all(
        || {
            let number = counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let path = dir.path().join(format!("state-{number}.db"));
            async move { SqliteStore::open(&path).unwrap() }
        },
        |store: &SqliteStore| {
            let path = store.path().to_path_buf();
            async move { SqliteStore::open(&path).unwrap() }
        },
    )
    .await;
}

/// Regression: run ids start at 1 in every new state file, so a state file deleted and created
/// again at the same path shared attempt directories with its predecessor. The identity comes
/// from the random source, not from the path.
#[test]
fn a_state_file_created_again_at_the_same_path_is_a_new_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let first = SqliteStore::open(&path).unwrap().store_id().to_string();
    assert_eq!(SqliteStore::open(&path).unwrap().store_id(), first);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let second = SqliteStore::open(&path).unwrap().store_id().to_string();
    assert_ne!(first, second);
    assert_eq!(second.len(), 32, "16 random bytes in hex: {second}");
}

/// A state file from before stores had an identity gets one when it is migrated, and keeps it.
#[test]
fn a_state_file_of_an_older_schema_gets_an_identity_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    drop(SqliteStore::open(&path).unwrap());
    {
        // Take the file back to schema 2, as an older Keel left it.
        let connection = rusqlite::Connection::open(&path).unwrap();
        connection
            .execute_batch(
                "DROP TABLE meta; ALTER TABLE attempts DROP COLUMN version; DROP TABLE gates;
                 ALTER TABLE attempts DROP COLUMN charged; DROP TABLE schedule_fires;
                 ALTER TABLE task_runs DROP COLUMN rerun_pending; ALTER TABLE task_runs DROP COLUMN sensor_polls;
                 ALTER TABLE task_runs DROP COLUMN sensor_errors;
                 ALTER TABLE resources DROP COLUMN open_since; ALTER TABLE resources DROP COLUMN open_until;
                 DROP INDEX runs_by_pass; ALTER TABLE runs DROP COLUMN pass; DROP INDEX events_by_kind;
                 DROP TABLE flags;
                 DROP TABLE expansions; DROP TABLE quota_use;
                 ALTER TABLE attempts DROP COLUMN task_version; DROP TABLE task_versions;
                 PRAGMA user_version = 2;",
            )
            .unwrap();
    }
    let id = SqliteStore::open(&path).unwrap().store_id().to_string();
    assert!(!id.is_empty());
    assert_eq!(SqliteStore::open(&path).unwrap().store_id(), id);
}

#[tokio::test]
async fn state_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let run = {
        let store = SqliteStore::open(&path).unwrap();
        store
            .create_run(keel_store::NewRun {
                pipeline: "p".into(),
                partition: "none".into(),
                version: "v".into(),
                trace_id: "t".into(),
                tasks: vec![("a".into(), "main".into(), None)],
                at: 1,
                pass: None,
            })
            .await
            .unwrap()
    };
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.run(run.id).await.unwrap(), run);
}

#[test]
fn a_file_that_is_not_sqlite_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let garbage =
        b"this is not a database at all, just some bytes that happen to be here....".repeat(100);
    std::fs::write(&path, &garbage).unwrap();
    let error = SqliteStore::open(&path).err().expect("garbage is refused");
    assert!(matches!(error, StoreError::Foreign { .. }), "{error:?}");
    assert!(
        error.to_string().contains("is not a Keel state database"),
        "{error}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        garbage,
        "the file is untouched"
    );
}

#[test]
fn a_foreign_sqlite_database_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.db");
    let other = rusqlite::Connection::open(&path).unwrap();
    other
        .execute_batch(
            "CREATE TABLE invoices (id INTEGER PRIMARY KEY); INSERT INTO invoices VALUES (1);",
        )
        .unwrap();
    drop(other);
    let error = SqliteStore::open(&path)
        .err()
        .expect("foreign database is refused");
    assert!(matches!(error, StoreError::Foreign { .. }), "{error:?}");
    assert!(error.to_string().contains("not Keel's"), "{error}");
    let other = rusqlite::Connection::open(&path).unwrap();
    let count: i64 = other
        .query_row("SELECT count(*) FROM invoices", [], |row| row.get(0))
        .unwrap();
    assert_eq!(count, 1, "the foreign database is untouched");
}

#[test]
fn a_truncated_state_file_is_reported_not_panicked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    drop(SqliteStore::open(&path).unwrap());
    let bytes = std::fs::read(&path).unwrap();
    // Keep the header, damage the pages behind it.
    let mut damaged = bytes[..100].to_vec();
    damaged.extend(std::iter::repeat_n(0xA5u8, bytes.len().max(8192) - 100));
    std::fs::write(&path, &damaged).unwrap();
    let _ = std::fs::remove_file(path.with_extension("db-wal"));
    match SqliteStore::open(&path) {
        Err(error) => {
            let text = error.to_string();
            assert!(
                text.contains("state.db"),
                "the error names the file: {text}"
            );
        }
        Ok(_) => panic!("a damaged state file was opened as if healthy"),
    }
}

#[test]
fn an_unwritable_state_directory_is_a_clear_error() {
    let error = SqliteStore::open(std::path::Path::new("/proc/keel-cannot-exist/state.db"))
        .err()
        .unwrap();
    assert!(matches!(error, StoreError::Open { .. }), "{error:?}");
    assert!(error.to_string().contains("writable"), "{error}");
}

#[test]
fn the_state_lock_is_exclusive_and_names_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let held = StateLock::acquire(dir.path()).unwrap();
    // flock locks belong to the open file, so a second open in the same process conflicts too.
    match StateLock::acquire(dir.path()) {
        Err(LockError::Held { pid, .. }) => assert_eq!(pid, std::process::id().to_string()),
        other => panic!("expected the lock to be held, got {other:?}"),
    }
    drop(held);
    StateLock::acquire(dir.path()).unwrap();
}

#[test]
fn many_processes_opening_a_new_state_file_at_once_all_succeed() {
    // Regression (found in hoops' warehouse, same SQLite behaviour): opening a new file
    // together failed with "database is locked" from the switch to WAL mode.
    for round in 0..10 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(format!("state-{round}.db"));
        let handles: Vec<_> = (0..12)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || SqliteStore::open(&path).map(|_| ()))
            })
            .collect();
        for handle in handles {
            handle.join().unwrap().unwrap();
        }
    }
}

/// Regression: the lock file was opened following links, and then truncated for the pid, so a
/// `keel.lock` linked to another file overwrote that file.
#[test]
fn a_lock_file_that_is_a_symbolic_link_is_refused_and_its_target_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("precious.txt");
    std::fs::write(&target, "precious contents\n").unwrap();
    std::os::unix::fs::symlink(&target, dir.path().join("keel.lock")).unwrap();
    match StateLock::acquire(dir.path()) {
        Err(error @ LockError::SymbolicLink { .. }) => {
            assert!(error.to_string().contains("is a symbolic link"), "{error}");
            assert!(error.to_string().contains("keel.lock"), "{error}");
        }
        other => panic!("expected the link to be refused, got {other:?}"),
    }
    assert_eq!(
        std::fs::read_to_string(&target).unwrap(),
        "precious contents\n"
    );

    // A dangling link would have been created as its target.
    let other = tempfile::tempdir().unwrap();
    let missing = other.path().join("created-through-the-link");
    std::fs::remove_file(dir.path().join("keel.lock")).unwrap();
    std::os::unix::fs::symlink(&missing, dir.path().join("keel.lock")).unwrap();
    assert!(matches!(
        StateLock::acquire(dir.path()),
        Err(LockError::SymbolicLink { .. })
    ));
    assert!(!missing.exists());
}

#[test]
fn a_lock_file_that_is_not_a_regular_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = std::ffi::CString::new(dir.path().join("keel.lock").to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
    assert!(matches!(
        StateLock::acquire(dir.path()),
        Err(LockError::NotAFile { .. })
    ));
}

#[test]
fn a_new_lock_file_is_readable_by_its_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let lock = StateLock::acquire(dir.path()).unwrap();
    let mode = std::fs::metadata(lock.path()).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "mode {mode:o}");
}

/// Regression: SQLite made a new state file 0644, and its -wal and -shm files after it, so other
/// users could read every task's messages and results.
#[test]
fn a_new_state_file_and_its_journal_are_readable_by_their_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let store = SqliteStore::open(&path).unwrap();
    for suffix in ["", "-wal", "-shm"] {
        let file = format!("{}{suffix}", path.display());
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{file}: {mode:o}");
    }
    drop(store);
}

/// The names in `dir`, sorted.
fn listing(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn new_run(partition: &str) -> keel_store::NewRun {
    keel_store::NewRun {
        pipeline: "p".into(),
        partition: partition.into(),
        version: "v".into(),
        trace_id: "t".into(),
        tasks: vec![("a".into(), "main".into(), None)],
        at: 1,
        pass: None,
    }
}

/// `keel status` and `keel logs` read the state through `open_read_only`: it sees what a
/// writable store wrote, changes nothing in the file, leaves no -wal or -shm behind, and
/// refuses to write.
#[tokio::test]
async fn a_state_opened_read_only_is_read_as_it_is_and_left_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let run = {
        let store = SqliteStore::open(&path).unwrap();
        store.create_run(new_run("2026-01-18")).await.unwrap()
    };
    let before = (listing(dir.path()), std::fs::read(&path).unwrap());
    assert_eq!(before.0, ["state.db"]);
    {
        let store = SqliteStore::open_read_only(&path)
            .unwrap()
            .expect("a whole state");
        assert_eq!(store.run(run.id).await.unwrap(), run);
        assert_eq!(
            store.list_runs("p", None, 10).await.unwrap(),
            vec![run.clone()]
        );
        let refused = store.create_run(new_run("2026-01-19")).await;
        assert!(refused.is_err(), "a read-only store wrote: {refused:?}");
    }
    assert_eq!((listing(dir.path()), std::fs::read(&path).unwrap()), before);
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.list_runs("p", None, 10).await.unwrap(), vec![run]);
}

/// A state being created, or made by an older Keel, needs a migration to be read: the read-only
/// open leaves it to `open` and changes nothing. Files that are not Keel states are refused.
#[test]
fn a_state_that_needs_a_migration_is_not_opened_read_only() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.db");
    std::fs::write(&empty, b"").unwrap();
    assert!(SqliteStore::open_read_only(&empty).unwrap().is_none());
    assert_eq!(std::fs::read(&empty).unwrap(), b"");

    let older = dir.path().join("older.db");
    drop(SqliteStore::open(&older).unwrap());
    rusqlite::Connection::open(&older)
        .unwrap()
        .execute_batch("PRAGMA user_version = 2;")
        .unwrap();
    let bytes = std::fs::read(&older).unwrap();
    assert!(SqliteStore::open_read_only(&older).unwrap().is_none());
    assert_eq!(std::fs::read(&older).unwrap(), bytes);

    let garbage = dir.path().join("garbage.db");
    std::fs::write(
        &garbage,
        b"not a database at all, not even close ".repeat(200),
    )
    .unwrap();
    assert!(matches!(
        SqliteStore::open_read_only(&garbage),
        Err(StoreError::Foreign { .. })
    ));
    let names = listing(dir.path());
    assert_eq!(names, ["empty.db", "garbage.db", "older.db"]);
}

#[tokio::test]
async fn quota_use_adds_up_per_period_and_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(
        store
            .add_quota_use("hoops", "odds", "2026-11", 3, 1)
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        store
            .add_quota_use("hoops", "odds", "2026-12", 2, 2)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        store
            .add_quota_use("hoops", "odds", "2026-12", 1, 3)
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        store
            .add_quota_use("hoops", "feed", "2026-12-02", 7, 4)
            .await
            .unwrap(),
        7
    );
    assert_eq!(
        store
            .add_quota_use("other", "odds", "2026-12", 9, 5)
            .await
            .unwrap(),
        9
    );
    drop(store);
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(
        store.quota_uses("hoops").await.unwrap(),
        vec![
            ("feed".to_string(), "2026-12-02".to_string(), 7),
            ("odds".to_string(), "2026-12".to_string(), 3),
        ]
    );
}
