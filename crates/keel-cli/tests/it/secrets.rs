//! `keel secrets set|get|list|rm` end to end: a real key file written by `age-keygen`, a
//! passphrase, a store `age` reads, and errors with hints and exit codes.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::{keel, write_pipeline};

const PIPELINE: &str = "[pipeline]\nname = \"s\"\n\n[phases.one]\n\n[tasks.t]\nphase = \"one\"\ncommand = [\"true\"]\n";

/// A pipeline folder and a home folder, with `keel secrets` run against them.
struct Setup {
    pipeline_dir: tempfile::TempDir,
    home: tempfile::TempDir,
    pipeline: PathBuf,
}

impl Setup {
    fn new() -> Self {
        let pipeline_dir = tempfile::tempdir().unwrap();
        let home = tempfile::tempdir().unwrap();
        let pipeline = write_pipeline(pipeline_dir.path(), PIPELINE);
        Self {
            pipeline_dir,
            home,
            pipeline,
        }
    }

    fn key_file(&self) -> PathBuf {
        self.home.path().join(".config/keel/secrets.key")
    }

    /// Writes the key file with `age-keygen`, as a user would.
    fn keygen(&self) {
        std::fs::create_dir_all(self.key_file().parent().unwrap()).unwrap();
        let status = Command::new("age-keygen")
            .arg("-o")
            .arg(self.key_file())
            .output()
            .unwrap()
            .status;
        assert!(status.success());
    }

    fn keel(&self, arguments: &[&str], passphrase: Option<&str>) -> assert_cmd::Command {
        let mut command = keel();
        command
            .args(["secrets"])
            .args(arguments)
            .arg("--pipeline")
            .arg(&self.pipeline)
            .env("HOME", self.home.path())
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("KEEL_SECRETS_PASSPHRASE")
            .timeout(std::time::Duration::from_secs(60));
        if let Some(passphrase) = passphrase {
            command.env("KEEL_SECRETS_PASSPHRASE", passphrase);
        }
        command
    }

    fn store(&self) -> PathBuf {
        self.pipeline_dir.path().join(".keel/secrets.age")
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn a_key_file_store_sets_gets_lists_and_removes() {
    let setup = Setup::new();
    let output = setup
        .keel(&["list"], None)
        .assert()
        .code(2)
        .get_output()
        .clone();
    let stderr = text(&output.stderr);
    assert!(stderr.starts_with("error: no key for the secret store\nhint: set KEEL_SECRETS_PASSPHRASE, or create a key file with `age-keygen -o "), "{stderr}");

    setup.keygen();
    let output = setup
        .keel(&["set", "STATS_API_KEY"], None)
        .write_stdin("sk-live-0123456789\n")
        .assert()
        .success()
        .get_output()
        .clone();
    assert!(output.stdout.is_empty());
    assert!(
        !text(&output.stderr).contains("sk-live"),
        "set never echoes the value"
    );
    setup
        .keel(&["set", "DB_PASSWORD"], None)
        .write_stdin("pw with spaces")
        .assert()
        .success();

    setup
        .keel(&["get", "STATS_API_KEY"], None)
        .assert()
        .success()
        .stdout("sk-live-0123456789\n");
    setup
        .keel(&["list"], None)
        .assert()
        .success()
        .stdout("DB_PASSWORD\nSTATS_API_KEY\n");
    assert_eq!(mode(&setup.store()), 0o600);
    assert_eq!(mode(setup.store().parent().unwrap()), 0o700);

    let decrypted = Command::new("age")
        .arg("-d")
        .arg("-i")
        .arg(setup.key_file())
        .arg(setup.store())
        .output()
        .unwrap();
    assert!(decrypted.status.success());
    assert_eq!(
        text(&decrypted.stdout),
        r#"{"DB_PASSWORD":"pw with spaces","STATS_API_KEY":"sk-live-0123456789"}"#
    );

    let output = setup
        .keel(&["get", "STATS_APIKEY"], None)
        .assert()
        .code(1)
        .get_output()
        .clone();
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("error: no secret \"STATS_APIKEY\" in the secret store"),
        "{stderr}"
    );
    assert!(
        stderr.contains("hint: did you mean \"STATS_API_KEY\"?"),
        "{stderr}"
    );

    setup.keel(&["rm", "DB_PASSWORD"], None).assert().success();
    setup
        .keel(&["list"], None)
        .assert()
        .success()
        .stdout("STATS_API_KEY\n");
    setup.keel(&["rm", "DB_PASSWORD"], None).assert().code(1);
}

#[test]
fn bad_names_empty_values_and_open_key_files_are_usage_errors() {
    let setup = Setup::new();
    setup.keygen();
    let output = setup
        .keel(&["set", "stats-key"], None)
        .write_stdin("value")
        .assert()
        .code(2)
        .get_output()
        .clone();
    assert!(
        text(&output.stderr).starts_with("error: invalid secret name \"stats-key\""),
        "{}",
        text(&output.stderr)
    );
    let output = setup
        .keel(&["set", "EMPTY"], None)
        .write_stdin("\n")
        .assert()
        .code(2)
        .get_output()
        .clone();
    assert!(
        text(&output.stderr).contains("is empty"),
        "{}",
        text(&output.stderr)
    );
    assert!(!setup.store().exists());

    std::fs::set_permissions(setup.key_file(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let output = setup
        .keel(&["list"], None)
        .assert()
        .code(2)
        .get_output()
        .clone();
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("can be read by others (mode 644)\nhint: run `chmod 600 "),
        "{stderr}"
    );

    let mut command = keel();
    command
        .args(["secrets", "list", "--pipeline", "/nonexistent/keel.toml"])
        .env("KEEL_SECRETS_PASSPHRASE", "p");
    let output = command.assert().code(2).get_output().clone();
    assert!(
        text(&output.stderr).contains("no pipeline file /nonexistent/keel.toml"),
        "{}",
        text(&output.stderr)
    );
}

#[test]
fn a_passphrase_store_refuses_the_wrong_passphrase_and_the_key_file() {
    let setup = Setup::new();
    setup
        .keel(&["set", "API_TOKEN"], Some("correct horse"))
        .write_stdin("tok-ABCDEF\n")
        .assert()
        .success();
    setup
        .keel(&["get", "API_TOKEN"], Some("correct horse"))
        .assert()
        .success()
        .stdout("tok-ABCDEF\n");

    let output = setup
        .keel(&["get", "API_TOKEN"], Some("wrong horse"))
        .assert()
        .code(1)
        .get_output()
        .clone();
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains(
            "the passphrase does not decrypt this file\nhint: check KEEL_SECRETS_PASSPHRASE"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("tok-ABCDEF") && output.stdout.is_empty());

    setup.keygen();
    let output = setup
        .keel(&["list"], None)
        .assert()
        .code(1)
        .get_output()
        .clone();
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains(
            "encrypted for a passphrase, not for an X25519 key\nhint: set KEEL_SECRETS_PASSPHRASE"
        ),
        "{stderr}"
    );
}
