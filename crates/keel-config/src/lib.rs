//! Reads `keel.toml` (docs/pipeline.md) and turns it into a validated [`keel_model::PipelineSpec`].
//!
//! Every error in a file is reported at once, each with `file:line:column`, the offending value
//! and a hint. This crate reads the pipeline file it is given, and the env files the pipeline
//! names when asked to ([`load_env_files`]), and does nothing else: it runs no commands, opens no
//! state store, resolves no secrets and prints nothing.
//!
//! ```
//! let spec = keel_config::parse(
//!     r#"
//! [pipeline]
//! name = "hello"
//!
//! [phases.main]
//!
//! [tasks.greet]
//! phase = "main"
//! command = ["sh", "-c", "echo hello for {date}"]
//! "#,
//!     "keel.toml",
//! )
//! .unwrap();
//! assert_eq!(spec.tasks[0].retries.attempts, 3);
//!
//! let errors = keel_config::parse("[pipeline]\nnmae = \"x\"\n", "keel.toml").unwrap_err();
//! assert!(errors.to_string().contains(r#"unknown field "nmae" in [pipeline] (keel.toml:2:1); did you mean "name"?"#));
//! ```

mod env_file;
mod error;
mod graph;
mod quantity;
mod secrets;
mod suggest;
mod validate;

use std::path::Path;

pub use env_file::{EnvFiles, load_env_files, parse_env_file};
pub use error::{ConfigError, ConfigErrors, Location, NameKind};
use keel_model::PipelineSpec;

/// The longest name a pipeline, phase, task or resource may have, in characters. A task's name
/// becomes part of the name of each of its attempt directories (`<task>.<attempt>`), and file
/// systems refuse names past 255 bytes; 100 leaves room and still reads as a name.
pub const MAX_NAME_LENGTH: usize = 100;

/// The longest duration any field accepts: 365 days. Longer ones are typos or "forever", and
/// timers and retry times computed from them (a start time plus a delay, in milliseconds) would
/// overflow.
pub const MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(365 * 24 * 60 * 60);

/// A commented starter pipeline, written by `keel init`. It validates as it is.
pub const STARTER_PIPELINE: &str = include_str!("starter.toml");

/// Reads and validates the pipeline file at `path`.
///
/// Locations in errors name the file as `path` is written. A missing or unreadable file is a
/// single error that says what to do.
pub fn load(path: &Path) -> Result<PipelineSpec, ConfigErrors> {
    let shown = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|error| {
        if error.kind() == std::io::ErrorKind::NotFound {
            ConfigError::FileNotFound {
                path: shown.clone(),
            }
        } else {
            ConfigError::FileUnreadable {
                path: shown.clone(),
                reason: error.kind().to_string(),
            }
        }
    })?;
    let source = String::from_utf8(bytes).map_err(|_| ConfigError::FileUnreadable {
        path: shown.clone(),
        reason: "it is not valid UTF-8".to_string(),
    })?;
    parse(&source, &shown)
}

/// Validates the text of a pipeline file. `file_label` names the file in error locations, for
/// example `keel.toml` in `keel.toml:12:5`.
pub fn parse(source: &str, file_label: &str) -> Result<PipelineSpec, ConfigErrors> {
    validate::parse_spec(source, file_label)
}
