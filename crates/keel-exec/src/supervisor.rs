//! The attempt supervisor: a small process that Keel starts for every attempt, and that starts
//! the task itself.
//!
//! Why a separate process: it makes the attempt outlive Keel. If Keel is killed, the supervisor
//! keeps enforcing the timeout and the stall limit, keeps capturing output, and writes the
//! task's exit status to `exit.json`. The next Keel then either adopts the still-running attempt
//! or reads the exit record, so a task that finished while Keel was down is never run twice.
//!
//! Liveness is a `flock` on `attempt.lock`, taken by Keel before the supervisor is started and
//! inherited by it: the lock is held exactly while the supervisor lives, so there is no window
//! in which a new Keel could wrongly conclude that an attempt is gone.
//!
//! It must not talk to the state store, and it uses only std and libc so that it starts fast.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::{ExitKind, ExitRecord};

/// The file names inside an attempt directory.
pub const EXIT_FILE: &str = "exit.json";
pub const LOCK_FILE: &str = "attempt.lock";
pub const OUTPUT_FILE: &str = "output.log";
pub const RESULT_FILE: &str = "result.json";
pub const HEARTBEAT_FILE: &str = "heartbeat";
pub const PID_FILE: &str = "supervisor.pid";

/// How the supervisor is told what to do, as command-line arguments after `__attempt`.
#[derive(Debug, Clone, PartialEq)]
pub struct SupervisorArgs {
    pub dir: PathBuf,
    pub lock_fd: Option<i32>,
    pub timeout: Duration,
    pub heartbeat: Option<Duration>,
    pub kill_grace: Duration,
    pub log_cap: u64,
    pub command: Vec<String>,
}

impl SupervisorArgs {
    pub fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            "--dir".to_string(),
            self.dir.display().to_string(),
            "--timeout-ms".into(),
            self.timeout.as_millis().to_string(),
            "--grace-ms".into(),
            self.kill_grace.as_millis().to_string(),
            "--log-cap".into(),
            self.log_cap.to_string(),
        ];
        if let Some(fd) = self.lock_fd {
            args.extend(["--lock-fd".to_string(), fd.to_string()]);
        }
        if let Some(heartbeat) = self.heartbeat {
            args.extend([
                "--heartbeat-ms".to_string(),
                heartbeat.as_millis().to_string(),
            ]);
        }
        args.push("--".into());
        args.extend(self.command.iter().cloned());
        args
    }

    pub fn parse(arguments: &[String]) -> Result<SupervisorArgs, String> {
        let mut parsed = SupervisorArgs {
            dir: PathBuf::new(),
            lock_fd: None,
            timeout: Duration::from_secs(600),
            heartbeat: None,
            kill_grace: Duration::from_secs(5),
            log_cap: 10 << 20,
            command: Vec::new(),
        };
        let mut iterator = arguments.iter();
        while let Some(flag) = iterator.next() {
            if flag == "--" {
                parsed.command = iterator.cloned().collect();
                break;
            }
            let value = iterator
                .next()
                .ok_or_else(|| format!("{flag} needs a value"))?;
            let number = || {
                value
                    .parse::<u64>()
                    .map_err(|_| format!("{flag} takes a number, got {value:?}"))
            };
            match flag.as_str() {
                "--dir" => parsed.dir = PathBuf::from(value),
                "--lock-fd" => parsed.lock_fd = Some(number()? as i32),
                "--timeout-ms" => parsed.timeout = Duration::from_millis(number()?),
                "--heartbeat-ms" => parsed.heartbeat = Some(Duration::from_millis(number()?)),
                "--grace-ms" => parsed.kill_grace = Duration::from_millis(number()?),
                "--log-cap" => parsed.log_cap = number()?,
                other => return Err(format!("unknown supervisor flag {other:?}")),
            }
        }
        if parsed.dir.as_os_str().is_empty() || parsed.command.is_empty() {
            return Err("usage: __attempt --dir DIR [...] -- PROGRAM [ARGS...]".into());
        }
        Ok(parsed)
    }
}

static TERMINATE_REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_terminate(_signal: libc::c_int) {
    TERMINATE_REQUESTED.store(true, Ordering::SeqCst);
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or(0)
}

/// The supervisor's entry point. Returns the process exit code: 0 when the exit record was
/// written (whatever the task did), 2 on bad arguments, 1 when the record could not be written.
pub fn main(arguments: &[String]) -> i32 {
    let args = match SupervisorArgs::parse(arguments) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("keel attempt supervisor: {message}");
            return 2;
        }
    };
    if let Some(fd) = args.lock_fd {
        // The task must not inherit the liveness lock, or the lock would outlive the supervisor.
        // SAFETY: fcntl on an inherited descriptor; it touches no memory.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGTERM,
            on_terminate as *const () as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGINT,
            on_terminate as *const () as libc::sighandler_t,
        );
    }
    let _ = std::fs::write(args.dir.join(PID_FILE), std::process::id().to_string());
    let record = supervise(&args);
    match write_exit_record(&args.dir, &record) {
        Ok(()) => 0,
        Err(error) => {
            eprintln!(
                "keel attempt supervisor: cannot write {}: {error}",
                args.dir.join(EXIT_FILE).display()
            );
            1
        }
    }
}

/// Writes the record under a temporary name and renames it, so a reader sees all of it or none.
pub fn write_exit_record(dir: &Path, record: &ExitRecord) -> std::io::Result<()> {
    let temporary = dir.join("exit.json.tmp");
    std::fs::write(
        &temporary,
        serde_json::to_vec(record).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(temporary, dir.join(EXIT_FILE))
}

struct Output {
    file: Option<File>,
    written: u64,
    cap: u64,
    truncated: bool,
}

impl Output {
    fn write(&mut self, bytes: &[u8]) {
        let Some(file) = self.file.as_mut() else {
            return;
        };
        let room = self.cap.saturating_sub(self.written) as usize;
        let take = bytes.len().min(room);
        if take > 0 && file.write_all(&bytes[..take]).is_ok() {
            self.written += take as u64;
        }
        if take < bytes.len() && !self.truncated {
            self.truncated = true;
            let _ = writeln!(file, "\n[keel: output truncated at {} bytes]", self.cap);
        }
    }
}

fn supervise(args: &SupervisorArgs) -> ExitRecord {
    let started_at = now_millis();
    let record = |kind: ExitKind,
                  code: Option<i32>,
                  signal: Option<i32>,
                  message: Option<String>| ExitRecord {
        kind,
        code,
        signal,
        message,
        started_at,
        finished_at: now_millis(),
    };
    let output_file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(args.dir.join(OUTPUT_FILE))
        .ok();
    let output = Arc::new(Mutex::new(Output {
        file: output_file,
        written: 0,
        cap: args.log_cap,
        truncated: false,
    }));
    let heartbeat_path = args.dir.join(HEARTBEAT_FILE);
    if args.heartbeat.is_some() {
        let _ = File::create(&heartbeat_path);
    }

    let mut command = Command::new(&args.command[0]);
    command
        .args(&args.command[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            let kind = match error.kind() {
                std::io::ErrorKind::NotFound => ExitKind::NotFound,
                std::io::ErrorKind::PermissionDenied => ExitKind::NotExecutable,
                _ => ExitKind::SpawnFailed,
            };
            return record(
                kind,
                None,
                None,
                Some(format!("{}: {error}", args.command[0])),
            );
        }
    };
    let task_group = child.id() as i32;
    let clock = Instant::now();
    let last_sign_of_life = Arc::new(AtomicI64::new(0));
    let mut readers = Vec::new();
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let output = output.clone();
        let last_sign_of_life = last_sign_of_life.clone();
        readers.push(std::thread::spawn(move || {
            let mut stream = stream;
            let mut buffer = [0u8; 8192];
            loop {
                match stream.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(read) => {
                        last_sign_of_life
                            .store(clock.elapsed().as_millis() as i64, Ordering::Relaxed);
                        output
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .write(&buffer[..read]);
                    }
                }
            }
        }));
    }
    let (exited_sender, exited) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let status = child.wait();
        let _ = exited_sender.send(status);
    });

    let tick = match args.heartbeat {
        Some(heartbeat) => {
            (heartbeat / 4).clamp(Duration::from_millis(10), Duration::from_millis(500))
        }
        None => Duration::from_millis(500),
    };
    let heartbeat_base = SystemTime::now();
    let mut stop_reason: Option<(ExitKind, String)> = None;
    let mut kill_sent_at: Option<Instant> = None;
    let status = loop {
        let wait = match (stop_reason.is_some(), kill_sent_at) {
            (true, Some(sent)) => args.kill_grace.saturating_sub(sent.elapsed()).min(tick),
            _ => args.timeout.saturating_sub(clock.elapsed()).min(tick),
        };
        match exited.recv_timeout(wait.max(Duration::from_millis(1))) {
            Ok(status) => break status,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                break Err(std::io::Error::other(
                    "the waiter thread ended without a status",
                ));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if let Some(sent) = kill_sent_at {
            if sent.elapsed() >= args.kill_grace {
                // SAFETY: signalling the task's own process group.
                unsafe { libc::killpg(task_group, libc::SIGKILL) };
            }
            continue;
        }
        if TERMINATE_REQUESTED.load(Ordering::SeqCst) {
            stop_reason = Some((ExitKind::Terminated, "stopped by keel".into()));
        } else if clock.elapsed() >= args.timeout {
            stop_reason = Some((
                ExitKind::TimedOut,
                format!(
                    "timed out after {}",
                    keel_model::format_duration(args.timeout)
                ),
            ));
        } else if let Some(heartbeat) = args.heartbeat {
            let output_quiet = clock.elapsed().saturating_sub(Duration::from_millis(
                last_sign_of_life.load(Ordering::Relaxed) as u64,
            ));
            let touched_quiet = std::fs::metadata(&heartbeat_path)
                .and_then(|metadata| metadata.modified())
                .ok()
                .and_then(|modified| {
                    SystemTime::now()
                        .duration_since(modified.max(heartbeat_base))
                        .ok()
                })
                .unwrap_or(output_quiet);
            if output_quiet.min(touched_quiet) >= heartbeat {
                stop_reason = Some((
                    ExitKind::Stalled,
                    format!(
                        "no sign of life for {}",
                        keel_model::format_duration(heartbeat)
                    ),
                ));
            }
        }
        if stop_reason.is_some() {
            // SAFETY: signalling the task's own process group.
            unsafe { libc::killpg(task_group, libc::SIGTERM) };
            kill_sent_at = Some(Instant::now());
        }
    };
    let _ = waiter.join();
    // Anything the task left running in its group would outlive the attempt and could overlap
    // with the next one, so it goes too.
    // SAFETY: signalling the task's own process group; ESRCH when it is empty is fine.
    unsafe { libc::killpg(task_group, libc::SIGKILL) };
    for reader in readers {
        let _ = reader.join();
    }
    use std::os::unix::process::ExitStatusExt;
    match (stop_reason, status) {
        (Some((kind, message)), status) => {
            let status = status.ok();
            record(
                kind,
                status.and_then(|s| s.code()),
                status.and_then(|s| s.signal()),
                Some(message),
            )
        }
        (None, Ok(status)) => record(ExitKind::Exited, status.code(), status.signal(), None),
        (None, Err(error)) => record(
            ExitKind::SpawnFailed,
            None,
            None,
            Some(format!("waiting for the task failed: {error}")),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_round_trip() {
        let args = SupervisorArgs {
            dir: "/tmp/a b".into(),
            lock_fd: Some(7),
            timeout: Duration::from_millis(1500),
            heartbeat: Some(Duration::from_secs(3)),
            kill_grace: Duration::from_millis(200),
            log_cap: 1024,
            command: vec!["sh".into(), "-c".into(), "echo --dir".into()],
        };
        assert_eq!(SupervisorArgs::parse(&args.to_args()).unwrap(), args);
        assert!(SupervisorArgs::parse(&["--dir".into()]).is_err());
        assert!(
            SupervisorArgs::parse(&[
                "--timeout-ms".into(),
                "soon".into(),
                "--".into(),
                "x".into()
            ])
            .is_err()
        );
    }
}
