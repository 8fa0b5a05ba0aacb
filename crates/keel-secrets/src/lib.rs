//! Keel's secrets: the age v1 file format, the encrypted secret store beside a pipeline
//! (`.keel/secrets.age`), and the providers a task's secrets are resolved from.
//!
//! It does not know about tasks, runs or the engine, and it never logs: no value it handles
//! leaves it except through [`Secret::expose`], and no error it returns holds a value.

pub mod age;
mod error;
pub mod provider;
pub mod store;

pub use error::SecretError;
pub use provider::{Clock, KeyLoader, Resolver};
pub use store::{Key, SecretStore};

use zeroize::Zeroizing;

/// A secret's value. Its `Debug` and `Display` print `[redacted]`; only [`Secret::expose`]
/// gives the value, for the one place that needs it (a task's environment, `keel secrets get`).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(Zeroizing::new(value))
    }

    /// The value itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Secret([redacted])")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("[redacted]")
    }
}

/// Checks a secret's name: `[A-Z_][A-Z0-9_]*`, so that it is a portable environment variable
/// name and a safe file name for the `dir:` provider.
pub fn check_name(name: &str) -> Result<(), SecretError> {
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|byte| byte.is_ascii_uppercase() || byte == b'_');
    if first_ok
        && bytes.all(|byte| byte.is_ascii_uppercase() || byte.is_ascii_digit() || byte == b'_')
    {
        Ok(())
    } else {
        Err(SecretError::InvalidName {
            name: name.to_string(),
        })
    }
}

/// Drops the line ending a value was written or printed with (`\n` or `\r\n`, repeated).
fn trim_line_ending(value: &str) -> &str {
    value.trim_end_matches(['\n', '\r'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_never_shows_its_value_when_formatted() {
        let secret = Secret::new("hunter2-value".to_string());
        assert_eq!(format!("{secret}"), "[redacted]");
        assert!(!format!("{secret:?} {:?}", Some(&secret)).contains("hunter2"));
        assert_eq!(secret.expose(), "hunter2-value");
    }

    #[test]
    fn names_are_upper_case_words() {
        for good in ["A", "STATS_API_KEY", "_X1", "DB_2"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "1A", "lower", "A-B", "../ETC", "A B", "É"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }
}
