//! Keel's age format against the real `age` and `age-keygen` (Debian package `age`): each
//! side decrypts what the other encrypted, for passphrases and X25519 keys.

use std::process::Command;
use std::time::Duration;

use keel_secrets::age::{self, AgeError, Identity, Recipient, X25519Identity};
use zeroize::Zeroizing;

use crate::support::{age, age_on_a_terminal, run_bounded, succeeded};

/// Three chunks of payload, the last one short, so chunk boundaries are crossed.
fn plaintext() -> Vec<u8> {
    (0..150_000u32)
        .map(|index| (index * 7 % 256) as u8)
        .collect()
}

fn keygen(dir: &std::path::Path) -> (std::path::PathBuf, X25519Identity) {
    let key_file = dir.join("key.txt");
    succeeded(&run_bounded(
        Command::new("age-keygen").arg("-o").arg(&key_file),
        b"",
        Duration::from_secs(30),
    ));
    let identity =
        X25519Identity::from_key_file(&std::fs::read_to_string(&key_file).unwrap()).unwrap();
    (key_file, identity)
}

#[test]
fn age_decrypts_what_keel_encrypts_for_an_x25519_key() {
    let dir = tempfile::tempdir().unwrap();
    let (key_file, identity) = keygen(dir.path());
    let public = succeeded(&age_keygen_public(&key_file)).stdout.clone();
    assert_eq!(
        String::from_utf8(public).unwrap().trim(),
        identity.recipient_string()
    );
    let encrypted = dir.path().join("by-keel.age");
    std::fs::write(
        &encrypted,
        age::encrypt(&identity.recipient(), &plaintext()).unwrap(),
    )
    .unwrap();
    let output = succeeded(&age(&[
        "-d",
        "-i",
        key_file.to_str().unwrap(),
        encrypted.to_str().unwrap(),
    ]))
    .clone();
    assert_eq!(output.stdout, plaintext());
}

fn age_keygen_public(key_file: &std::path::Path) -> std::process::Output {
    run_bounded(
        Command::new("age-keygen").arg("-y").arg(key_file),
        b"",
        Duration::from_secs(30),
    )
}

#[test]
fn keel_decrypts_what_age_encrypts_for_an_x25519_key() {
    let dir = tempfile::tempdir().unwrap();
    let (_key_file, identity) = keygen(dir.path());
    let plain = dir.path().join("plain");
    std::fs::write(&plain, plaintext()).unwrap();
    let encrypted = dir.path().join("by-age.age");
    succeeded(&age(&[
        "-e",
        "-r",
        &identity.recipient_string(),
        "-o",
        encrypted.to_str().unwrap(),
        plain.to_str().unwrap(),
    ]));
    let file = std::fs::read(&encrypted).unwrap();
    let opened = age::decrypt(&Identity::X25519(identity), &file).unwrap();
    assert_eq!(*opened, plaintext());

    let stranger = X25519Identity::generate().unwrap();
    let error = age::decrypt(&Identity::X25519(stranger), &file).unwrap_err();
    assert!(matches!(error, AgeError::WrongKey), "{error}");
}

#[test]
fn age_decrypts_what_keel_encrypts_for_a_passphrase() {
    let dir = tempfile::tempdir().unwrap();
    let recipient = Recipient::Passphrase {
        passphrase: Zeroizing::new("correct horse battery".to_string()),
        work_factor: age::DEFAULT_WORK_FACTOR,
    };
    let encrypted = dir.path().join("by-keel.age");
    let decrypted = dir.path().join("out");
    std::fs::write(&encrypted, age::encrypt(&recipient, &plaintext()).unwrap()).unwrap();
    succeeded(&age_on_a_terminal(
        &format!("-d -o '{}' '{}'", decrypted.display(), encrypted.display()),
        "correct horse battery\n",
    ));
    assert_eq!(std::fs::read(&decrypted).unwrap(), plaintext());

    let wrong = age_on_a_terminal(
        &format!(
            "-d -o '{}' '{}'",
            dir.path().join("never").display(),
            encrypted.display()
        ),
        "wrong horse\n",
    );
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stdout).contains("incorrect passphrase"));
}

#[test]
fn keel_decrypts_what_age_encrypts_for_a_passphrase_and_refuses_damage() {
    let dir = tempfile::tempdir().unwrap();
    let plain = dir.path().join("plain");
    std::fs::write(&plain, plaintext()).unwrap();
    let encrypted = dir.path().join("by-age.age");
    succeeded(&age_on_a_terminal(
        &format!("-p -o '{}' '{}'", encrypted.display(), plain.display()),
        "s3cret phrase\ns3cret phrase\n",
    ));
    let file = std::fs::read(&encrypted).unwrap();
    let right = Identity::Passphrase(Zeroizing::new("s3cret phrase".to_string()));
    assert_eq!(*age::decrypt(&right, &file).unwrap(), plaintext());

    let wrong = Identity::Passphrase(Zeroizing::new("s3cret phrasE".to_string()));
    assert!(matches!(
        age::decrypt(&wrong, &file),
        Err(AgeError::WrongPassphrase)
    ));

    let truncated = &file[..file.len() - 100];
    let error = age::decrypt(&right, truncated).unwrap_err();
    assert!(matches!(error, AgeError::Payload(_)), "{error}");
    assert!(error.to_string().contains("truncated"), "{error}");

    let mut tampered = file.clone();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0x80;
    assert!(matches!(
        age::decrypt(&right, &tampered),
        Err(AgeError::Payload(_))
    ));

    let mut header_changed = file.clone();
    let stanza = String::from_utf8_lossy(&file[..120])
        .find("scrypt ")
        .unwrap()
        + "scrypt ".len();
    header_changed[stanza] = if header_changed[stanza] == b'A' {
        b'B'
    } else {
        b'A'
    };
    assert!(age::decrypt(&right, &header_changed).is_err());

    let error = age::decrypt(&right, b"hello, not age").unwrap_err();
    assert!(matches!(error, AgeError::NotAgeFile), "{error}");
}
