//! Running outside programs, bounded in time.

use std::io::Write as _;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Runs `command` with `input` on its standard input and kills it if it runs past `limit`.
pub fn run_bounded(command: &mut Command, input: &[u8], limit: Duration) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start {command:?}: {error}"));
    child.stdin.take().unwrap().write_all(input).unwrap();
    // The pipes are drained while waiting, so a child that writes more than a pipe holds
    // does not block forever.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let stdout = std::thread::spawn(move || drain(&mut stdout));
    let stderr = std::thread::spawn(move || drain(&mut stderr));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            child.kill().unwrap();
            panic!("{command:?} ran for more than {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

fn drain(pipe: &mut impl std::io::Read) -> Vec<u8> {
    let mut bytes = Vec::new();
    pipe.read_to_end(&mut bytes).unwrap();
    bytes
}

/// Runs `age` with `arguments`; `age` reads a passphrase from its terminal only, so it runs
/// under `script`, which gives it a pseudo-terminal fed from `typed`.
pub fn age_on_a_terminal(arguments: &str, typed: &str) -> Output {
    run_bounded(
        Command::new("script").args(["-qec", &format!("age {arguments}"), "/dev/null"]),
        typed.as_bytes(),
        Duration::from_secs(60),
    )
}

pub fn age(arguments: &[&str]) -> Output {
    run_bounded(
        Command::new("age").args(arguments),
        b"",
        Duration::from_secs(60),
    )
}

pub fn succeeded(output: &Output) -> &Output {
    assert!(
        output.status.success(),
        "failed with {}: {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}
