//! The bearer token that mutating requests need: `KEEL_API_TOKEN`, or one made at the first
//! start from the kernel's random source and kept, readable by its owner only, beside the state.

use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use axum::http::HeaderMap;

use crate::display::printable;

/// The token file's name in the state directory.
pub const TOKEN_FILE: &str = "api-token";

/// Where the token came from, for the log (which never shows the token itself).
#[derive(Debug)]
pub enum TokenSource {
    Environment,
    File(PathBuf),
}

/// The token `from_environment` (`KEEL_API_TOKEN`) when given, else the one in
/// `<state dir>/api-token`, made (0600) if missing.
pub fn load_or_create(
    state_dir: &Path,
    from_environment: Option<String>,
) -> Result<(String, TokenSource)> {
    if let Some(token) = from_environment {
        let token = token.trim().to_string();
        if token.is_empty() {
            return Err(crate::Exit::usage(
                "KEEL_API_TOKEN is set but empty; set it to a secret of at least 16 characters, or unset it to have keel serve make one",
            ));
        }
        return Ok((token, TokenSource::Environment));
    }
    let path = state_dir.join(TOKEN_FILE);
    let shown = || printable(&path.display().to_string());
    match std::fs::symlink_metadata(&path) {
        Ok(metadata) => {
            if !metadata.is_file() {
                anyhow::bail!(
                    "{} is not a plain file; remove it so that keel serve makes a new token",
                    shown()
                );
            }
            if metadata.permissions().mode() & 0o077 != 0 {
                anyhow::bail!(
                    "{} may be read by other users; run `chmod 600 {}`, or remove it to have a new token made",
                    shown(),
                    shown()
                );
            }
            let token = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read the API token from {}", shown()))?;
            let token = token.trim().to_string();
            if token.is_empty() {
                anyhow::bail!(
                    "{} is empty; remove it so that keel serve makes a new token",
                    shown()
                );
            }
            Ok((token, TokenSource::File(path)))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let token = random_token()?;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| {
                    format!(
                        "cannot create the API token file {}; check the state directory's permissions or set KEEL_API_TOKEN",
                        shown()
                    )
                })?;
            file.write_all(format!("{token}\n").as_bytes())
                .with_context(|| format!("cannot write the API token file {}", shown()))?;
            Ok((token, TokenSource::File(path)))
        }
        Err(error) => Err(anyhow::anyhow!(
            "cannot look at the API token file {}: {error}; check the state directory's permissions",
            shown()
        )),
    }
}

/// 32 bytes from the kernel's random source, as 64 hex digits.
fn random_token() -> Result<String> {
    let mut bytes = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut source| source.read_exact(&mut bytes))
        .context("cannot read /dev/urandom to make an API token; set KEEL_API_TOKEN instead")?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// Whether the request carries `Authorization: Bearer <expected>`, compared in constant time
/// over the token's bytes.
pub fn authorized(headers: &HeaderMap, expected: &str) -> bool {
    let Some(given) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
        })
    else {
        return false;
    };
    constant_time_eq(given.trim().as_bytes(), expected.as_bytes())
}

/// Equal slices, in a time that depends only on their lengths.
fn constant_time_eq(given: &[u8], expected: &[u8]) -> bool {
    if given.len() != expected.len() {
        return false;
    }
    let difference = given
        .iter()
        .zip(expected)
        .fold(0u8, |difference, (a, b)| difference | (a ^ b));
    // Keeps the compiler from turning the fold into an early exit.
    std::hint::black_box(difference) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_tokens_exactly() {
        assert!(constant_time_eq(b"secret-token", b"secret-token"));
        assert!(!constant_time_eq(b"secret-tokem", b"secret-token"));
        assert!(!constant_time_eq(b"secret", b"secret-token"));
        assert!(!constant_time_eq(b"", b"secret-token"));
    }

    #[test]
    fn reads_the_bearer_header() {
        let mut headers = HeaderMap::new();
        assert!(!authorized(&headers, "abc"));
        headers.insert("authorization", "Bearer abc".parse().unwrap());
        assert!(authorized(&headers, "abc"));
        headers.insert("authorization", "Basic abc".parse().unwrap());
        assert!(!authorized(&headers, "abc"));
        headers.insert("authorization", "Bearer abd".parse().unwrap());
        assert!(!authorized(&headers, "abc"));
    }

    #[test]
    fn the_environment_wins_and_an_empty_token_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (token, source) = load_or_create(dir.path(), Some(" secret \n".into())).unwrap();
        assert_eq!(token, "secret");
        assert!(matches!(source, TokenSource::Environment));
        assert!(!dir.path().join(TOKEN_FILE).exists());
        let error = load_or_create(dir.path(), Some("  ".into())).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("KEEL_API_TOKEN is set but empty")
        );
    }

    #[test]
    fn makes_a_private_token_once_and_reads_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let (token, source) = load_or_create(dir.path(), None).unwrap();
        assert_eq!(token.len(), 64);
        let TokenSource::File(path) = source else {
            panic!("expected a token file")
        };
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (again, _) = load_or_create(dir.path(), None).unwrap();
        assert_eq!(again, token);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = load_or_create(dir.path(), None).unwrap_err().to_string();
        assert!(error.contains("chmod 600"), "{error}");
    }
}
