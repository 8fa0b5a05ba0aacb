//! `env_file`: files of `NAME=value` lines that tasks take variables from. They are read when a
//! run starts (and by `keel validate`), not when the pipeline file is: a command that only reads
//! the state, such as `keel status`, must not depend on them.
//!
//! The format is the common one: one `NAME=value` a line, an optional `export ` in front, blank
//! lines and lines starting with `#` ignored, and one pair of matching quotes around a value
//! taken off. Nothing else is interpreted: no escapes, no `$VARIABLE` expansion, no templates,
//! and a `#` after a value is part of the value.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use keel_model::PipelineSpec;

use crate::error::{ConfigError, ConfigErrors, Location};
use crate::validate::{RESERVED_PREFIX, variable_name_problem};

/// Each env file's variables in file order, by the path as the pipeline file writes it.
pub type EnvFiles = HashMap<String, Vec<(String, String)>>;

/// The most an env file may hold. It holds a few variables; anything larger is not one.
const ENV_FILE_CAP: u64 = 1 << 20;

/// Reads every env file the tasks of `spec` name. `base` is the pipeline file's directory, which
/// relative paths are relative to; errors name files as `base` joined with the path.
pub fn load_env_files(spec: &PipelineSpec, base: &Path) -> Result<EnvFiles, ConfigErrors> {
    let mut files = EnvFiles::new();
    let mut errors = Vec::new();
    let mut seen: Vec<&str> = Vec::new();
    for task in &spec.tasks {
        let Some(written) = task.context.env_file.as_deref() else {
            continue;
        };
        if seen.contains(&written) {
            continue;
        }
        seen.push(written);
        let path = base.join(written);
        let shown = path.display().to_string();
        let parsed = read_env_file(&path)
            .map_err(|reason| {
                ConfigErrors::from(ConfigError::EnvFileUnreadable {
                    path: shown.clone(),
                    task: task.name.clone(),
                    reason,
                })
            })
            .and_then(|text| parse_env_file(&text, &shown));
        match parsed {
            Ok(variables) => {
                files.insert(written.to_string(), variables);
            }
            Err(found) => errors.extend(found.0),
        }
    }
    if errors.is_empty() {
        Ok(files)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// The text of the env file at `path`, or why it cannot be read.
fn read_env_file(path: &Path) -> Result<String, String> {
    let file = std::fs::File::open(path).map_err(|error| match error.kind() {
        std::io::ErrorKind::NotFound => "it does not exist".to_string(),
        _ => error.to_string(),
    })?;
    let metadata = file.metadata().map_err(|error| error.to_string())?;
    if !metadata.is_file() {
        return Err(if metadata.is_dir() {
            "it is a directory".to_string()
        } else {
            "it is not a plain file".to_string()
        });
    }
    let mut bytes = Vec::new();
    file.take(ENV_FILE_CAP + 1)
        .read_to_end(&mut bytes)
        .map_err(|error| error.to_string())?;
    if bytes.len() as u64 > ENV_FILE_CAP {
        return Err("it is larger than 1 MiB, too large for an env file".to_string());
    }
    String::from_utf8(bytes).map_err(|_| "it is not valid UTF-8 text".to_string())
}

/// Reads the variables of an env file's text; `label` names the file in error locations. Every
/// bad line is reported, each with its line and column, never with its value, which may be a
/// secret.
///
/// ```
/// let variables = keel_config::parse_env_file("# feed\nexport FEED=\"http://feed\"\nRETRIES=3\n", ".env").unwrap();
/// assert_eq!(variables, [("FEED".to_string(), "http://feed".to_string()), ("RETRIES".to_string(), "3".to_string())]);
/// ```
pub fn parse_env_file(text: &str, label: &str) -> Result<Vec<(String, String)>, ConfigErrors> {
    let mut variables = Vec::new();
    let mut errors = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let body = line.trim_start();
        if body.is_empty() || body.starts_with('#') {
            continue;
        }
        let body = body.strip_prefix("export ").map_or(body, str::trim_start);
        let offset = line.len() - body.len();
        let problem = match body.split_once('=') {
            None => Err("the line has no \"=\"".to_string()),
            Some((name, value)) => variable(name.trim_end(), value.trim()),
        };
        match problem {
            Ok(variable) => variables.push(variable),
            Err(problem) => errors.push(ConfigError::EnvFileLine {
                problem,
                location: Location {
                    file: label.to_string(),
                    line: index + 1,
                    column: line[..offset].chars().count() + 1,
                },
            }),
        }
    }
    if errors.is_empty() {
        Ok(variables)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// One `NAME=value` pair, or what is wrong with it.
fn variable(name: &str, value: &str) -> Result<(String, String), String> {
    let problem = variable_name_problem(name).or_else(|| {
        name.contains(char::is_whitespace)
            .then_some("a name cannot contain spaces")
    });
    if let Some(problem) = problem {
        return Err(format!("invalid variable name {name:?}: {problem}"));
    }
    if name.starts_with(RESERVED_PREFIX) {
        return Err(format!(
            "{name:?} is a name Keel keeps for itself: Keel sets the KEEL_ variables of every task"
        ));
    }
    if value.contains('\0') {
        return Err(format!(
            "the value of {name:?} holds a NUL byte, which cannot be passed to a process"
        ));
    }
    let unquoted = [b'"', b'\'']
        .iter()
        .find(|quote| {
            value.len() >= 2
                && value.as_bytes()[0] == **quote
                && value.as_bytes()[value.len() - 1] == **quote
        })
        .map_or(value, |_| &value[1..value.len() - 1]);
    Ok((name.to_string(), unquoted.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_names_values_comments_and_quotes() {
        let text = "# comment\n\n  A=1\nexport B = two words \nC=\"quoted # not a comment\"\nD='x'\nE=\nF=a=b\r\n";
        let variables = parse_env_file(text, ".env").unwrap();
        let expected = [
            ("A", "1"),
            ("B", "two words"),
            ("C", "quoted # not a comment"),
            ("D", "x"),
            ("E", ""),
            ("F", "a=b"),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        assert_eq!(variables, expected);
    }

    #[test]
    fn reports_every_bad_line_with_its_place_and_without_its_value() {
        let text = "OK=1\nhunter2hunter2\n=x\nKEEL_TASK=y\n  MY VAR=z\nN=\"a\u{0}b\"\n";
        let errors = parse_env_file(text, "p/.env").unwrap_err().to_string();
        assert_eq!(
            errors,
            [
                "invalid line in env file (p/.env:2:1): the line has no \"=\"; write one NAME=value a line, and start comment lines with #",
                "invalid line in env file (p/.env:3:1): invalid variable name \"\": a name cannot be empty; write one NAME=value a line, and start comment lines with #",
                "invalid line in env file (p/.env:4:1): \"KEEL_TASK\" is a name Keel keeps for itself: Keel sets the KEEL_ variables of every task; write one NAME=value a line, and start comment lines with #",
                "invalid line in env file (p/.env:5:3): invalid variable name \"MY VAR\": a name cannot contain spaces; write one NAME=value a line, and start comment lines with #",
                "invalid line in env file (p/.env:6:1): the value of \"N\" holds a NUL byte, which cannot be passed to a process; write one NAME=value a line, and start comment lines with #",
            ]
            .join("\n")
        );
        assert!(!errors.contains("hunter2"));
    }
}
