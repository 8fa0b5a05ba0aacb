//! The secret store on real files: modes, atomic writes, keys, and errors with hints.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use keel_secrets::age::X25519Identity;
use keel_secrets::{Key, Secret, SecretError, SecretStore};
use zeroize::Zeroizing;

use crate::support::{age, succeeded};

/// A key file written as `age-keygen` writes it, mode 0600, outside `pipeline`.
fn key_file(dir: &Path) -> std::path::PathBuf {
    let identity = X25519Identity::generate().unwrap();
    let path = dir.join("secrets.key");
    std::fs::write(
        &path,
        format!(
            "# created: today\n# public key: {}\n{}\n",
            identity.recipient_string(),
            *identity.to_secret_string()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    path
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn set_get_list_rm_on_a_key_file_store_that_age_can_read() {
    let home = tempfile::tempdir().unwrap();
    let pipeline = tempfile::tempdir().unwrap();
    let key_path = key_file(home.path());
    let state = pipeline.path().join(".keel");
    let store = SecretStore::new(
        state.join("secrets.age"),
        Key::from_key_file(&key_path, pipeline.path()).unwrap(),
    );

    assert!(
        store.names().unwrap().is_empty(),
        "a store that does not exist is empty"
    );
    store
        .set("STATS_API_KEY", &Secret::new("sk-live-123\n".to_string()))
        .unwrap();
    store
        .set("DB_PASSWORD", &Secret::new("pa ss\r\n".to_string()))
        .unwrap();
    assert_eq!(store.get("STATS_API_KEY").unwrap().expose(), "sk-live-123");
    assert_eq!(store.get("DB_PASSWORD").unwrap().expose(), "pa ss");
    assert_eq!(store.names().unwrap(), ["DB_PASSWORD", "STATS_API_KEY"]);

    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("secrets.age")), 0o600);
    let bytes = std::fs::read(state.join("secrets.age")).unwrap();
    assert!(!String::from_utf8_lossy(&bytes).contains("sk-live-123"));
    let mut leftovers: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    leftovers.sort();
    assert_eq!(
        leftovers,
        ["secrets.age", "secrets.age.lock"],
        "no temporary file is left behind"
    );

    let output = age(&[
        "-d",
        "-i",
        key_path.to_str().unwrap(),
        state.join("secrets.age").to_str().unwrap(),
    ]);
    let json: serde_json::Value = serde_json::from_slice(&succeeded(&output).stdout).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"DB_PASSWORD": "pa ss", "STATS_API_KEY": "sk-live-123"})
    );

    store.remove("DB_PASSWORD").unwrap();
    assert_eq!(store.names().unwrap(), ["STATS_API_KEY"]);
    let error = store.remove("DB_PASSWORD").unwrap_err().to_string();
    assert!(
        error.starts_with("no secret \"DB_PASSWORD\" in the secret store"),
        "{error}"
    );
    let error = store.get("STATS_APIKEY").unwrap_err().to_string();
    assert!(
        error.ends_with("did you mean \"STATS_API_KEY\"?"),
        "{error}"
    );
}

#[test]
fn bad_names_and_empty_values_are_refused_before_anything_is_written() {
    let home = tempfile::tempdir().unwrap();
    let pipeline = tempfile::tempdir().unwrap();
    let store = SecretStore::new(
        pipeline.path().join(".keel/secrets.age"),
        Key::from_key_file(&key_file(home.path()), pipeline.path()).unwrap(),
    );
    let error = store
        .set("stats-key", &Secret::new("v".to_string()))
        .unwrap_err();
    assert!(matches!(error, SecretError::InvalidName { .. }), "{error}");
    let error = store
        .set("EMPTY", &Secret::new("\n".to_string()))
        .unwrap_err()
        .to_string();
    assert!(error.contains("is empty"), "{error}");
    assert!(!pipeline.path().join(".keel/secrets.age").exists());
}

#[test]
fn a_passphrase_store_refuses_the_wrong_passphrase_and_the_key_file_with_a_hint() {
    let home = tempfile::tempdir().unwrap();
    let pipeline = tempfile::tempdir().unwrap();
    let path = pipeline.path().join(".keel/secrets.age");
    let passphrase = |text: &str| Key::Passphrase(Zeroizing::new(text.to_string()));
    SecretStore::new(path.clone(), passphrase("right one"))
        .set("TOKEN", &Secret::new("t0k3n-value".to_string()))
        .unwrap();
    assert_eq!(
        SecretStore::new(path.clone(), passphrase("right one"))
            .get("TOKEN")
            .unwrap()
            .expose(),
        "t0k3n-value"
    );

    let error = SecretStore::new(path.clone(), passphrase("wrong"))
        .get("TOKEN")
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("the passphrase does not decrypt this file; check KEEL_SECRETS_PASSPHRASE"),
        "{error}"
    );
    assert!(!error.contains("t0k3n"));

    let key = Key::from_key_file(&key_file(home.path()), pipeline.path()).unwrap();
    let error = SecretStore::new(path.clone(), key)
        .get("TOKEN")
        .unwrap_err()
        .to_string();
    assert!(
        error.contains(
            "encrypted for a passphrase, not for an X25519 key; set KEEL_SECRETS_PASSPHRASE"
        ),
        "{error}"
    );

    std::fs::write(&path, b"age-encryption.org/v1\n-> scrypt short 18\n").unwrap();
    let error = SecretStore::new(path.clone(), passphrase("right one"))
        .get("TOKEN")
        .unwrap_err()
        .to_string();
    assert!(error.contains("malformed age header"), "{error}");
    assert!(error.contains("restore it from a backup"), "{error}");
}

#[test]
fn key_files_that_others_can_read_or_that_live_in_the_pipeline_folder_are_refused() {
    let home = tempfile::tempdir().unwrap();
    let pipeline = tempfile::tempdir().unwrap();
    let path = key_file(home.path());
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
    let error = Key::from_key_file(&path, pipeline.path())
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("can be read by others (mode 640); run `chmod 600"),
        "{error}"
    );

    let inside = key_file(pipeline.path());
    let error = Key::from_key_file(&inside, pipeline.path())
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("is inside the pipeline's folder"), "{error}");

    let missing = home.path().join("nope.key");
    let error = Key::from_key_file(&missing, pipeline.path())
        .err()
        .unwrap()
        .to_string();
    assert!(
        error.contains("set KEEL_SECRETS_PASSPHRASE, or create a key file with `age-keygen -o"),
        "{error}"
    );

    let garbage = home.path().join("garbage.key");
    std::fs::write(&garbage, "AGE-SECRET-KEY-1NOTAKEY\n").unwrap();
    std::fs::set_permissions(&garbage, std::fs::Permissions::from_mode(0o600)).unwrap();
    let error = Key::from_key_file(&garbage, pipeline.path())
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("malformed age identity"), "{error}");
}

#[test]
fn writers_at_the_same_time_lose_no_secret() {
    let home = tempfile::tempdir().unwrap();
    let pipeline = tempfile::tempdir().unwrap();
    let key_path = key_file(home.path());
    let path = pipeline.path().join(".keel/secrets.age");
    std::thread::scope(|scope| {
        for writer in 0..4 {
            let (key_path, path, folder) = (&key_path, &path, pipeline.path());
            scope.spawn(move || {
                let store =
                    SecretStore::new(path.clone(), Key::from_key_file(key_path, folder).unwrap());
                for round in 0..5 {
                    store
                        .set(
                            &format!("W{writer}_{round}"),
                            &Secret::new(format!("value {writer} {round}")),
                        )
                        .unwrap();
                }
            });
        }
    });
    let store = SecretStore::new(
        path,
        Key::from_key_file(&key_path, pipeline.path()).unwrap(),
    );
    assert_eq!(store.names().unwrap().len(), 20);
}
