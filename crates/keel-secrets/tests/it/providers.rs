//! Each secrets provider with real files, environment and processes; the command provider's
//! cache on a manual clock.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use keel_model::SecretProvider;
use keel_secrets::{Clock, Key, Resolver, Secret, SecretStore};
use zeroize::Zeroizing;

/// A clock that moves only when told to.
fn manual_clock() -> (Clock, Arc<AtomicU64>) {
    let start = Instant::now();
    let elapsed_millis = Arc::new(AtomicU64::new(0));
    let reading = elapsed_millis.clone();
    (
        Arc::new(move || start + Duration::from_millis(reading.load(Ordering::SeqCst))),
        elapsed_millis,
    )
}

fn resolver(provider: SecretProvider, pipeline: &Path) -> Resolver {
    Resolver::new(&provider, pipeline, manual_clock().0)
}

#[test]
fn env_reads_keels_environment() {
    let dir = tempfile::tempdir().unwrap();
    let env = resolver(SecretProvider::Env, dir.path());
    assert_eq!(
        env.resolve("PATH").unwrap().expose(),
        std::env::var("PATH").unwrap()
    );
    let error = env
        .resolve("KEEL_TEST_NEVER_SET_7F3A")
        .unwrap_err()
        .to_string();
    assert_eq!(
        error,
        "no secret \"KEEL_TEST_NEVER_SET_7F3A\" in Keel's environment"
    );
    assert!(
        env.resolve("path").is_err(),
        "names are checked before anything is read"
    );
}

#[test]
fn dir_reads_one_file_per_secret_relative_to_the_pipeline() {
    let pipeline = tempfile::tempdir().unwrap();
    let secrets = pipeline.path().join("run-secrets");
    std::fs::create_dir(&secrets).unwrap();
    std::fs::write(secrets.join("STATS_API_KEY"), "from-a-file\n").unwrap();
    std::fs::write(secrets.join("EMPTY"), "\n").unwrap();
    let dir = resolver(
        SecretProvider::Dir("run-secrets".to_string()),
        pipeline.path(),
    );
    assert_eq!(
        dir.resolve("STATS_API_KEY").unwrap().expose(),
        "from-a-file"
    );
    let error = dir.resolve("STATS_API_KEYS").unwrap_err().to_string();
    assert!(
        error.ends_with("run-secrets; did you mean \"STATS_API_KEY\"?"),
        "{error}"
    );
    assert!(
        dir.resolve("EMPTY")
            .unwrap_err()
            .to_string()
            .contains("is empty")
    );
    let absolute = resolver(
        SecretProvider::Dir(secrets.display().to_string()),
        Path::new("/elsewhere"),
    );
    assert_eq!(
        absolute.resolve("STATS_API_KEY").unwrap().expose(),
        "from-a-file"
    );
}

/// A secrets command that counts its runs in `count` and prints `value-of-NAME`.
fn counting_script(dir: &Path) -> std::path::PathBuf {
    let script = dir.join("vault");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho run >> '{}'\ncase \"$2\" in\n  MISSING) echo \"no such secret: $2\" >&2; exit 3;;\n  SILENT) exit 0;;\nesac\necho \"value-of-$2\"\n",
            dir.join("count").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

fn runs(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("count"))
        .map(|text| text.lines().count())
        .unwrap_or(0)
}

#[test]
fn a_command_runs_without_a_shell_and_its_answer_is_kept_for_the_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let script = counting_script(dir.path());
    let provider = SecretProvider::Command {
        argv: vec![
            script.display().to_string(),
            "read".to_string(),
            "{name}".to_string(),
        ],
        ttl: Duration::from_secs(300),
        timeout: Duration::from_secs(30),
    };
    let (clock, elapsed) = manual_clock();
    let command = Resolver::new(&provider, dir.path(), clock);
    assert_eq!(
        command.resolve("STATS_API_KEY").unwrap().expose(),
        "value-of-STATS_API_KEY"
    );
    assert_eq!(runs(dir.path()), 1);
    elapsed.store(299_999, Ordering::SeqCst);
    assert_eq!(
        command.resolve("STATS_API_KEY").unwrap().expose(),
        "value-of-STATS_API_KEY"
    );
    assert_eq!(runs(dir.path()), 1, "kept within the ttl");
    assert_eq!(command.resolve("OTHER").unwrap().expose(), "value-of-OTHER");
    assert_eq!(runs(dir.path()), 2, "each name is fetched on its own");
    elapsed.store(300_000, Ordering::SeqCst);
    command.resolve("STATS_API_KEY").unwrap();
    assert_eq!(runs(dir.path()), 3, "fetched again once the ttl is over");

    let error = command.resolve("MISSING").unwrap_err().to_string();
    assert!(
        error.contains("failed with exit status: 3: no such secret: MISSING"),
        "{error}"
    );
    let error = command.resolve("SILENT").unwrap_err().to_string();
    assert!(error.contains("printed nothing"), "{error}");
}

#[test]
fn a_command_that_hangs_is_stopped_and_one_that_does_not_exist_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let provider = SecretProvider::Command {
        argv: vec!["sleep".to_string(), "30".to_string()],
        ttl: Duration::from_secs(300),
        timeout: Duration::from_millis(200),
    };
    let started = Instant::now();
    let error = resolver(provider, dir.path())
        .resolve("SLOW")
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("ran for more than 200ms; it was stopped"),
        "{error}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "the command was stopped, not waited for"
    );

    let provider = SecretProvider::Command {
        argv: vec!["keel-no-such-vault".to_string(), "{name}".to_string()],
        ttl: Duration::from_secs(1),
        timeout: Duration::from_secs(30),
    };
    let error = resolver(provider, dir.path())
        .resolve("ANY")
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("the secrets command for \"ANY\" (keel-no-such-vault) could not start"),
        "{error}"
    );
}

#[test]
fn the_store_provider_decrypts_once_and_again_when_the_file_changes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(".keel/secrets.age");
    let key = || Key::Passphrase(Zeroizing::new("pass phrase".to_string()));
    SecretStore::new(path.clone(), key())
        .set("API_TOKEN", &Secret::new("first".to_string()))
        .unwrap();
    let loads = Arc::new(AtomicU64::new(0));
    let counted = loads.clone();
    let store = Resolver::for_store(
        path.clone(),
        Box::new(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            Ok(key())
        }),
        manual_clock().0,
    );
    assert_eq!(store.resolve("API_TOKEN").unwrap().expose(), "first");
    assert_eq!(store.resolve("API_TOKEN").unwrap().expose(), "first");
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    let error = store.resolve("API_TOKN").unwrap_err().to_string();
    assert!(error.ends_with("did you mean \"API_TOKEN\"?"), "{error}");

    SecretStore::new(path.clone(), key())
        .set("API_TOKEN", &Secret::new("second".to_string()))
        .unwrap();
    assert_eq!(store.resolve("API_TOKEN").unwrap().expose(), "second");
    assert_eq!(loads.load(Ordering::SeqCst), 2);

    let empty = tempfile::tempdir().unwrap();
    let error = resolver(SecretProvider::Store, empty.path())
        .resolve("API_TOKEN")
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("does not exist yet; add it with `keel secrets set API_TOKEN`"),
        "{error}"
    );
}
