//! `keel secrets set|get|list|rm`: the encrypted secret store beside a pipeline,
//! `.keel/secrets.age`. `set` reads the value from standard input, never from the arguments
//! (which other users see in `ps` and the shell keeps in its history); `get` is the only
//! command that prints a value.

use std::io::{BufRead as _, IsTerminal as _, Read as _};
use std::path::Path;

use anyhow::Result;
use keel_secrets::{Key, Secret, SecretError, SecretStore};

use crate::Exit;
use crate::args::{SecretsAction, SecretsArgs};

pub fn secrets(args: SecretsArgs) -> Result<u8> {
    let (name, pipeline) = match &args.action {
        SecretsAction::Set { name, pipeline }
        | SecretsAction::Get { name, pipeline }
        | SecretsAction::Rm { name, pipeline } => (Some(name.as_str()), pipeline),
        SecretsAction::List { pipeline } => (None, pipeline),
    };
    if let Some(name) = name {
        keel_secrets::check_name(name).map_err(|error| Exit::usage(error.to_string()))?;
    }
    if !pipeline.is_file() {
        return Err(Exit::usage(format!(
            "no pipeline file {}; the store lives beside it, so name it with --pipeline PATH",
            pipeline.display()
        )));
    }
    let folder = crate::state::absolute(pipeline.parent().unwrap_or(Path::new("")))?;
    let key = Key::from_environment(&folder).map_err(exit)?;
    let store = SecretStore::new(keel_secrets::store::store_path(&folder), key);
    match args.action {
        SecretsAction::Set { name, .. } => {
            let value = read_value(&name)?;
            store.set(&name, &value).map_err(exit)?;
            eprintln!("set {name} in {}", store.path().display());
        }
        SecretsAction::Get { name, .. } => {
            let value = store.get(&name).map_err(exit)?;
            println!("{}", value.expose());
        }
        SecretsAction::List { .. } => {
            for name in store.names().map_err(exit)? {
                println!("{name}");
            }
        }
        SecretsAction::Rm { name, .. } => {
            store.remove(&name).map_err(exit)?;
            eprintln!("removed {name} from {}", store.path().display());
        }
    }
    Ok(0)
}

/// The value on standard input: all of it from a pipe or a file, one line from a terminal.
fn read_value(name: &str) -> Result<Secret> {
    let stdin = std::io::stdin();
    let mut value = String::new();
    let read = if stdin.is_terminal() {
        eprint!("value of {name}: ");
        stdin.lock().read_line(&mut value)
    } else {
        stdin.lock().read_to_string(&mut value)
    };
    read.map_err(|error| {
        Exit::usage(format!(
            "cannot read the value of {name} from standard input: {error}; pipe it in as UTF-8 text"
        ))
    })?;
    Ok(Secret::new(value))
}

/// A usage error (exit 2) when the user must fix how Keel is called or configured; any other
/// error (an unknown name, a wrong key, a damaged store) fails the command (exit 1).
fn exit(error: SecretError) -> anyhow::Error {
    match error {
        SecretError::InvalidName { .. }
        | SecretError::NoKey { .. }
        | SecretError::KeyFileOpen { .. }
        | SecretError::KeyFileInRepository { .. }
        | SecretError::BadKeyFile { .. }
        | SecretError::Empty { .. }
        | SecretError::NotUtf8 { .. } => Exit::usage(error.to_string()),
        _ => anyhow::Error::new(Exit {
            code: 1,
            message: error.to_string(),
        }),
    }
}
