use std::path::PathBuf;

use crate::age::AgeError;

/// Why a secret could not be stored or resolved. Messages name the secret, the file or the
/// command, never a value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "invalid secret name {name:?}: a name is upper-case letters, digits and underscores and does not start with a digit, such as \"STATS_API_KEY\""
    )]
    InvalidName { name: String },
    #[error(
        "no key for the secret store; set KEEL_SECRETS_PASSPHRASE, or create a key file with `age-keygen -o {key_file}` and `chmod 600 {key_file}`",
        key_file = key_file.display()
    )]
    NoKey { key_file: PathBuf },
    #[error(
        "the key file {path} can be read by others (mode {mode:o}); run `chmod 600 {path}`",
        path = path.display()
    )]
    KeyFileOpen { path: PathBuf, mode: u32 },
    #[error(
        "the key file {path} is inside the pipeline's folder {folder}, where it could be committed; move it to ~/.config/keel/secrets.key",
        path = path.display(),
        folder = folder.display()
    )]
    KeyFileInRepository { path: PathBuf, folder: PathBuf },
    #[error("the key file {path}: {source}", path = path.display())]
    BadKeyFile { path: PathBuf, source: AgeError },
    #[error("cannot decrypt the secret store {path}: {source}; {hint}", path = path.display())]
    Decrypt {
        path: PathBuf,
        source: AgeError,
        hint: String,
    },
    #[error("the secret store {path} decrypts, but does not hold names and values; restore it from a backup or remove it and set the secrets again", path = path.display())]
    CorruptStore { path: PathBuf },
    #[error("cannot {action} {path}: {source}", path = path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no secret {name:?} in {source_name}{}", suggestion.as_ref().map(|name| format!("; did you mean {name:?}?")).unwrap_or_default())]
    Unknown {
        name: String,
        source_name: String,
        suggestion: Option<String>,
    },
    #[error("the secret {name:?} from {source_name} is empty; {hint}")]
    Empty {
        name: String,
        source_name: String,
        hint: &'static str,
    },
    #[error("the secret {name:?} from {source_name} is not valid UTF-8")]
    NotUtf8 { name: String, source_name: String },
    #[error("the secrets command for {name:?} ({program}) {reason}")]
    Command {
        name: String,
        program: String,
        reason: String,
    },
}
