//! `[secrets]`: the provider a task's secrets are read from.

use std::time::Duration;

use insta::assert_snapshot;
use keel_model::SecretProvider;

use crate::{HEADER, errors_of};

fn with_secrets(secrets: &str) -> String {
    format!("{HEADER}\n[tasks.fetch]\nphase = \"scrape\"\ncommand = [\"true\"]\n\n{secrets}")
}

fn provider_of(secrets: &str) -> SecretProvider {
    keel_config::parse(&with_secrets(secrets), "keel.toml")
        .unwrap()
        .secrets
        .expect("[secrets]")
        .provider
}

#[test]
fn every_provider_is_read() {
    assert_eq!(
        provider_of("[secrets]\nprovider = \"store\"\n"),
        SecretProvider::Store
    );
    assert_eq!(
        provider_of("[secrets]\nprovider = \"env\"\n"),
        SecretProvider::Env
    );
    assert_eq!(
        provider_of("[secrets]\nprovider = \"dir:/run/secrets\"\n"),
        SecretProvider::Dir("/run/secrets".into())
    );
    assert_eq!(
        provider_of(
            "[secrets]\nprovider = { command = [\"vault\", \"read\", \"secret/{name}\"] }\n"
        ),
        SecretProvider::Command {
            argv: vec!["vault".into(), "read".into(), "secret/{name}".into()],
            ttl: Duration::from_secs(300),
            timeout: Duration::from_secs(30),
        }
    );
    assert_eq!(
        provider_of(
            "[secrets]\nprovider = { command = [\"get-secret\", \"{name}\"], ttl = \"0s\", timeout = \"5s\" }\n"
        ),
        SecretProvider::Command {
            argv: vec!["get-secret".into(), "{name}".into()],
            ttl: Duration::ZERO,
            timeout: Duration::from_secs(5),
        }
    );
    let none = keel_config::parse(&with_secrets(""), "keel.toml").unwrap();
    assert_eq!(none.secrets, None);
}

#[test]
fn the_provider_is_not_part_of_the_version() {
    let without = keel_config::parse(&with_secrets(""), "keel.toml").unwrap();
    let with = keel_config::parse(
        &with_secrets("[secrets]\nprovider = \"env\"\n"),
        "keel.toml",
    )
    .unwrap();
    assert_eq!(
        serde_json::to_string(&without).unwrap(),
        serde_json::to_string(&with).unwrap()
    );
}

#[test]
fn bad_providers_are_reported_at_once() {
    assert_snapshot!(errors_of(&with_secrets(
        "[secrets]\nprovider = \"vault\"\nprovder = \"env\"\n"
    )));
    assert_snapshot!(
        "no_provider",
        errors_of(&format!("{}\n[other]\n", with_secrets("[secrets]\n")))
    );
    assert_snapshot!(
        "bad_commands",
        errors_of(&with_secrets(
            "[secrets]\nprovider = { command = [\"vault\", \"read\"], ttl = \"soon\", timeout = \"0s\", ttll = \"1m\" }\n"
        ))
    );
    assert_snapshot!(
        "dir_without_folder",
        errors_of(&with_secrets("[secrets]\nprovider = \"dir:\"\n"))
    );
    assert_snapshot!(
        "table_without_command",
        errors_of(&with_secrets("[secrets]\nprovider = { ttl = \"1m\" }\n"))
    );
}
