//! The `keel` binary: argument parsing, output and exit codes around the library crates.
//!
//! It holds no scheduling logic of its own. It must not speak SQL or start task processes
//! directly; those belong to keel-store and keel-exec.

// Shadows the standard printing macros for the whole crate (see `output`): a closed pipe or
// terminal drops the text instead of panicking.
macro_rules! println {
    () => { $crate::output::stdout(format_args!(""), true) };
    ($($arg:tt)*) => { $crate::output::stdout(format_args!($($arg)*), true) };
}
macro_rules! eprintln {
    () => { $crate::output::stderr(format_args!(""), true) };
    ($($arg:tt)*) => { $crate::output::stderr(format_args!($($arg)*), true) };
}
macro_rules! eprint {
    ($($arg:tt)*) => { $crate::output::stderr(format_args!($($arg)*), false) };
}

mod alerts;
mod anomalies;
mod api;
mod args;
mod audit;
mod bench;
mod chaos;
mod check;
mod cluster;
mod commands;
mod daemon;
mod dashboard;
mod demo;
mod display;
mod flags;
mod gaps;
mod health;
mod hints;
mod http_post;
mod inspect;
mod metrics;
mod operations;
#[cfg(feature = "otlp")]
mod otlp;
mod output;
mod report;
mod rollout;
mod secrets;
mod serve;
mod serve_log;
mod setup;
mod state;
mod tokens;
mod versions;

use std::process::ExitCode;

use clap::Parser;

/// An error that ends the command with a specific exit code. Its message is written
/// `what is wrong; what to do`: it is shown as an `error:` line and a `hint:` line (see
/// [`report`]). An empty message ends the command without printing anything.
#[derive(Debug)]
pub struct Exit {
    pub code: u8,
    pub message: String,
}

impl Exit {
    /// A usage or configuration error: exit 2.
    pub fn usage(message: impl Into<String>) -> anyhow::Error {
        anyhow::Error::new(Exit {
            code: 2,
            message: message.into(),
        })
    }
}

/// A pipeline file (or its env files) with errors: each error on its own, then a line that counts
/// them. Exit 2, like every configuration error.
#[derive(Debug)]
pub struct Invalid {
    pub errors: Vec<String>,
    pub summary: String,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}\n{}", self.errors.join("\n"), self.summary)
    }
}

impl std::error::Error for Invalid {}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Exit {}

fn main() -> ExitCode {
    let raw: Vec<String> = std::env::args().collect();
    // `keel demo` runs the reference pipeline's processors as this same binary, under the name
    // `hoops`, so the demo needs nothing but `keel`.
    let invoked_as = raw.first().map(|program| {
        std::path::Path::new(program)
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned()
    });
    if invoked_as.as_deref() == Some("hoops") {
        return ExitCode::from(hoops::cli::main(&raw[1..]) as u8);
    }
    // The attempt supervisor starts for every attempt: dispatch before any other set-up.
    // The attempt supervisor and the attempt host (`__attempt __host`) start for every attempt
    // and once per run: dispatch before any other set-up.
    if raw.get(1).map(String::as_str) == Some("__attempt") {
        return ExitCode::from(keel_exec::attempt_main(&raw[2..]) as u8);
    }
    let cli = args::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(commands::dispatch(cli));
    tokens::remove_sockets();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            // The reader went away (`keel events | head`): what it wanted, it has.
            if output::is_closed_pipe(&error) {
                return ExitCode::SUCCESS;
            }
            let (text, code) = report::render(&error);
            eprint!("{text}");
            ExitCode::from(code)
        }
    }
}
