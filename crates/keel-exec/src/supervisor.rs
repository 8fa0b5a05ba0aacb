//! The attempt supervisor: a small process that Keel starts for every attempt, and that starts
//! the task itself.
//!
//! Why a separate process: it makes the attempt outlive Keel. If Keel is killed, the supervisor
//! keeps enforcing the timeout and the stall limit, keeps capturing output, and writes the
//! task's exit status into its record file. The next Keel then either adopts the still-running attempt
//! or reads the exit record, so a task that finished while Keel was down is never run twice.
//!
//! Liveness is a `flock` on `attempt.lock`, taken by Keel before the supervisor is started and
//! inherited by it: the lock is held exactly while the supervisor lives, so there is no window
//! in which a new Keel could wrongly conclude that an attempt is gone.
//!
//! It must not talk to the state store, and it uses only std, rustix and signal-hook so that it
//! starts fast.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustix::event::{PollFd, PollFlags, Timespec, poll};
use rustix::fs::{OFlags, ftruncate};
use rustix::io::{Errno, FdFlags, fcntl_setfd, pwrite};
use rustix::process::{
    Pid, PidfdFlags, Signal, WaitId, WaitIdOptions, WaitOptions, getpid, getppid, kill_process,
    kill_process_group, pidfd_open, set_child_subreaper, set_parent_process_death_signal, wait,
    waitid,
};

use crate::group::{
    EscapedProcess, ProcessStat, TaskGroup, all_processes, descendants_of, end_process_trees,
};
use crate::{ExitKind, ExitRecord};

/// The file names inside an attempt directory.
pub const LOCK_FILE: &str = "attempt.lock";
pub const OUTPUT_FILE: &str = "output.log";
pub const RESULT_FILE: &str = "result.json";
pub const HEARTBEAT_FILE: &str = "heartbeat";

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
    /// The task's working directory, if not the supervisor's.
    pub cwd: Option<PathBuf>,
    /// Start the task with only the environment it is given, not the supervisor's.
    pub clear_env: bool,
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
        if let Some(cwd) = &self.cwd {
            args.extend(["--cwd".to_string(), cwd.display().to_string()]);
        }
        if self.clear_env {
            args.extend(["--clear-env".to_string(), "1".to_string()]);
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
            cwd: None,
            clear_env: false,
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
                "--cwd" => parsed.cwd = Some(PathBuf::from(value)),
                "--clear-env" => parsed.clear_env = value == "1",
                other => return Err(format!("unknown supervisor flag {other:?}")),
            }
        }
        if parsed.dir.as_os_str().is_empty() || parsed.command.is_empty() {
            return Err("usage: __attempt --dir DIR [...] -- PROGRAM [ARGS...]".into());
        }
        Ok(parsed)
    }
}

/// Set by SIGTERM or SIGINT: Keel asks the attempt to stop.
static TERMINATE_REQUESTED: AtomicBool = AtomicBool::new(false);

/// Set by SIGXFSZ, which only says that a write went past the file size limit; the write itself
/// fails with EFBIG, and that is what the supervisor acts on.
static FILE_SIZE_LIMIT_REACHED: AtomicBool = AtomicBool::new(false);

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
    run(&args, &[])
}

/// Supervises one attempt in this process: the body of [`main`], also entered directly by the
/// attempt host in a freshly forked child. `env` is added to the task's environment.
pub fn run(args: &SupervisorArgs, env: &[(String, String)]) -> i32 {
    // Descendants of the task that leave its process group (a daemon that calls `setsid`) are
    // handed to this process instead of the system's first process when their parent ends, so
    // the supervisor can still find them and end them with the attempt.
    let _ = set_child_subreaper(Some(getpid()));
    // Past a file size limit the kernel kills the writer with SIGXFSZ; caught, the write of
    // output.log fails with EFBIG instead, and the supervisor marks the cut and carries on.
    // The task gets the default actions back as it executes its program, which resets every
    // caught signal.
    let _ = signal_hook::flag::register(signal_hook::consts::SIGXFSZ, &FILE_SIZE_LIMIT_REACHED);
    let _ = signal_hook::flag::register(signal_hook::consts::SIGTERM, &TERMINATE_REQUESTED);
    let _ = signal_hook::flag::register(signal_hook::consts::SIGINT, &TERMINATE_REQUESTED);
    let record_file = match open_record_file(args) {
        Ok(file) => file,
        Err(error) => {
            eprintln!(
                "keel attempt supervisor: cannot open {}: {error}",
                args.dir.join(LOCK_FILE).display()
            );
            return 1;
        }
    };
    let _ = write_record(
        &record_file,
        &AttemptRecordFile::Running {
            pid: std::process::id(),
            task: None,
            escaped: Vec::new(),
        },
    );
    let record = supervise(args, env, &record_file);
    match write_record(&record_file, &AttemptRecordFile::Ended(record)) {
        Ok(()) => 0,
        Err(error) => {
            eprintln!(
                "keel attempt supervisor: cannot write {}: {error}",
                args.dir.join(LOCK_FILE).display()
            );
            1
        }
    }
}

/// The attempt's lock file doubles as its record, to keep file creations per attempt low: while
/// the supervisor runs it holds `{"pid": N}`, with the task's process group once the task has
/// started and the task's descendants seen outside that group, and once the task is over, the
/// [`ExitRecord`]. Readers only trust the exit record after taking the lock, which the
/// supervisor holds until it has finished writing.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum AttemptRecordFile {
    Ended(ExitRecord),
    Running {
        pid: u32,
        /// The task's process group, recorded as soon as the task has started: if the
        /// supervisor dies without an exit record, whoever finds it dead ends the group first.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        task: Option<TaskGroup>,
        /// The task's descendants that the supervisor saw outside its process group (daemons
        /// that called `setsid`), still alive when last looked at: if the supervisor dies,
        /// whoever finds it dead ends them too.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        escaped: Vec<EscapedProcess>,
    },
}

fn open_record_file(args: &SupervisorArgs) -> std::io::Result<File> {
    match args.lock_fd {
        Some(fd) => {
            // SAFETY: Keel passed us this descriptor, and nothing else in this process uses it.
            let file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
            // The task must not inherit the liveness lock, or the lock would outlive the
            // supervisor.
            fcntl_setfd(&file, FdFlags::CLOEXEC)?;
            Ok(file)
        }
        None => OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(args.dir.join(LOCK_FILE)),
    }
}

/// Replaces the record's content in place: the record file is also the liveness lock, so it is
/// never swapped for a new file. A shorter record is first written padded with spaces over the
/// whole old length, so a supervisor killed before the file is cut to size leaves valid JSON
/// behind, which is what its task's process group and escaped descendants are read from.
fn write_record(file: &File, record: &AttemptRecordFile) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let old_length = file.metadata().map(|metadata| metadata.len()).unwrap_or(0);
    let (bytes, length) = padded_record(record, old_length)?;
    file.write_all_at(&bytes, 0)?;
    file.set_len(length)
}

/// The record's JSON, padded with spaces to `old_length`, and the JSON's own length.
fn padded_record(record: &AttemptRecordFile, old_length: u64) -> std::io::Result<(Vec<u8>, u64)> {
    let mut bytes = serde_json::to_vec(record).map_err(std::io::Error::other)?;
    let length = bytes.len() as u64;
    if old_length > length {
        bytes.resize(old_length as usize, b' ');
    }
    Ok((bytes, length))
}

/// The most a record file may hold: an exit record is a few hundred bytes.
const RECORD_CAP: u64 = 64 << 10;

/// Reads an attempt's record file; `None` when it is missing or empty.
pub fn read_record(dir: &Path) -> Option<Result<AttemptRecordFile, String>> {
    let path = dir.join(LOCK_FILE);
    // The attempt directory is the task's to write in, so the record is read the careful way: a
    // task that swapped it for a pipe or a link to an endless device must not wedge Keel.
    let bytes = match crate::files::read_regular_file(&path, RECORD_CAP) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return None,
        Err(problem) => {
            return Some(Err(format!(
                "unreadable attempt record {:?}: {problem}; the attempt directory may have been changed by its task",
                path.display().to_string()
            )));
        }
    };
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return None;
    }
    Some(serde_json::from_slice(&bytes).map_err(|error| {
        format!(
            "unreadable attempt record {:?}: {error}; the attempt directory may have been changed by its task",
            path.display().to_string()
        )
    }))
}

/// The task's captured output, `output.log`, kept to `cap` bytes. However the log is cut, at
/// the cap or by a failed write such as on a full disk, it ends with a marker line that says
/// so, and nothing is written after the marker: a log never stops mid-line, or has a hole in
/// it, without saying so.
struct Output {
    path: PathBuf,
    file: Option<File>,
    /// Bytes of the task's output kept so far, counted against the cap.
    written: u64,
    /// The file's length: where the next byte lands.
    length: u64,
    cap: u64,
    /// Whether the last byte in the file ended a line.
    at_line_start: bool,
    /// Set once the log has been cut: nothing more is written.
    cut: bool,
    /// What went wrong with the log, for the exit record; `None` when all is well or the log
    /// only reached its cap.
    problem: Option<String>,
    /// Hides the task's secrets (the variables `KEEL_REDACT` names) before anything is written.
    redactor: crate::redact::Redactor,
}

impl Output {
    fn new(path: PathBuf, cap: u64, redactor: crate::redact::Redactor) -> Output {
        Output {
            path,
            file: None,
            written: 0,
            length: 0,
            cap,
            at_line_start: true,
            cut: false,
            problem: None,
            redactor,
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        if self.redactor.is_empty() {
            self.write_plain(bytes);
        } else {
            let redacted = self.redactor.feed(bytes);
            self.write_plain(&redacted);
        }
    }

    /// Writes what the redactor held back at the end of the stream.
    fn finish(&mut self) {
        let rest = self.redactor.finish();
        self.write_plain(&rest);
    }

    fn write_plain(&mut self, bytes: &[u8]) {
        if self.cut || bytes.is_empty() {
            return;
        }
        // Created on the first output, so a silent task costs no file.
        if self.file.is_none() {
            match open_output(&self.path) {
                Ok((file, length)) => {
                    self.file = Some(file);
                    self.length = length;
                }
                Err(error) => {
                    self.cut = true;
                    self.problem = Some(format!(
                        "cannot open {:?}: {error}; the task's output was dropped",
                        self.path.display().to_string()
                    ));
                    return;
                }
            }
        }
        let room = self.cap.saturating_sub(self.written) as usize;
        let take = bytes.len().min(room);
        if let Err(error) = self.append(&bytes[..take]) {
            self.cut_after_error(error);
            return;
        }
        self.written += take as u64;
        if take < bytes.len() {
            self.cut = true;
            let marker = format!("[keel: output truncated at {} bytes]\n", self.cap);
            let line = if self.at_line_start {
                marker
            } else {
                format!("\n{marker}")
            };
            if let Err(error) = self.append(line.as_bytes()) {
                self.cut_after_error(error);
            }
        }
    }

    /// Appends all of `bytes`, keeping `length` exact even when a write stops part way.
    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let Some(file) = self.file.as_mut() else {
            return Ok(());
        };
        let mut done = 0;
        while done < bytes.len() {
            match file.write(&bytes[done..]) {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(wrote) => {
                    done += wrote;
                    self.length += wrote as u64;
                    self.at_line_start = bytes[done - 1] == b'\n';
                }
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }

    /// Ends the log after a failed write with a marker line naming the error. On a full disk
    /// there is no room for the marker, so the log is first cut back to the end of an earlier
    /// line far enough from its end: rewriting blocks the file already has needs no new space.
    fn cut_after_error(&mut self, error: std::io::Error) {
        self.cut = true;
        let problem = format!(
            "cannot write {:?}: {error}",
            self.path.display().to_string()
        );
        let marker = |kept: u64| {
            format!("[keel: output cut after {kept} bytes: {problem}; later output was dropped]\n")
        };
        let Some(file) = self.file.as_ref() else {
            self.problem = Some(problem);
            return;
        };
        // The marker for the current length is at least as long as the one written below.
        let room_needed = marker(self.length).len() as u64 + 1;
        let keep = line_end_before(file, self.length.saturating_sub(room_needed));
        if file.set_len(keep).is_ok() {
            self.length = keep;
            self.at_line_start = keep == 0 || ends_with_newline(file, keep);
        }
        let kept = self.length;
        let line = if self.at_line_start {
            marker(kept)
        } else {
            format!("\n{}", marker(kept))
        };
        let _ = self.append(line.as_bytes());
        self.problem = Some(format!("{problem}; output.log was cut after {kept} bytes"));
    }
}

/// Opens `output.log` for appending, refusing anything but a regular file (a task could have
/// put a pipe there, which would block the open), and returns it with its length.
fn open_output(path: &Path) -> std::io::Result<(File, u64)> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .mode(0o600)
        .custom_flags((OFlags::NOFOLLOW | OFlags::NONBLOCK).bits() as i32)
        .open(path)?;
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        return Err(std::io::Error::other("it is not a regular file"));
    }
    Ok((file, metadata.len()))
}

/// Where the last complete line at or before `limit` ends in `file`: just after its newline.
/// Looks back at most 64 KiB; a longer line is cut at `limit` itself.
fn line_end_before(file: &File, limit: u64) -> u64 {
    use std::os::unix::fs::FileExt;
    let from = limit.saturating_sub(64 << 10);
    let mut window = vec![0u8; (limit - from) as usize];
    match file.read_exact_at(&mut window, from) {
        Ok(()) => match window.iter().rposition(|byte| *byte == b'\n') {
            Some(index) => from + index as u64 + 1,
            None => limit,
        },
        Err(_) => limit,
    }
}

fn ends_with_newline(file: &File, length: u64) -> bool {
    use std::os::unix::fs::FileExt;
    let mut last = [0u8; 1];
    file.read_exact_at(&mut last, length - 1).is_ok() && last[0] == b'\n'
}

/// Whether the child `pid` has ended, without collecting its exit status: the task's leader
/// stays a zombie until it is reaped, which keeps its pid, and so its group id, from being taken
/// by another process before the group is killed.
fn has_exited(pid: Pid) -> bool {
    matches!(
        waitid(
            WaitId::Pid(pid),
            WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT,
        ),
        Ok(Some(_))
    )
}

/// How long the end of an attempt waits for the task's leftover descendants to die once they
/// have been sent SIGKILL. They never run code of their own again after it; the wait only lets
/// them be collected.
const DESCENDANTS_PATIENCE: Duration = Duration::from_secs(2);

/// Kills every process still descending from this supervisor and collects them. The task's
/// process group is already gone by now; what is left escaped it, such as a daemon that called
/// `setsid`. As a child subreaper the supervisor inherits every descendant whose parent has
/// ended, so killing its remaining children, round after round, reaches them all. Only direct
/// children are signalled: a child that has not been collected keeps its pid, so no unrelated
/// process can be hit.
fn end_descendants(patience: Duration) {
    let own = getpid();
    let deadline = Instant::now() + patience;
    let mut pause = Duration::from_millis(1);
    loop {
        reap_children();
        let children = living_children(own);
        if children.is_empty() || Instant::now() >= deadline {
            return;
        }
        for child in children {
            // Our own child, not collected yet, so its pid is still its own.
            let _ = kill_process(child, Signal::KILL);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Collects every child of this process that has ended.
fn reap_children() {
    while let Ok(Some(_)) = wait(WaitOptions::NOHANG) {}
}

/// This process's children that can still run. The supervisor is single-threaded, so the
/// kernel's list of its main thread's children is all of them; without that list (a kernel
/// built without it) the process table is searched instead.
fn living_children(own: Pid) -> Vec<Pid> {
    let own = own.as_raw_nonzero().get();
    let candidates: Vec<i32> =
        match std::fs::read_to_string(format!("/proc/{own}/task/{own}/children")) {
            Ok(text) => text
                .split_whitespace()
                .filter_map(|pid| pid.parse().ok())
                .collect(),
            Err(_) => all_processes()
                .into_iter()
                .filter(|process| process.parent == own)
                .map(|process| process.pid)
                .collect(),
        };
    candidates
        .into_iter()
        .filter(|pid| ProcessStat::read(*pid).is_some_and(|stat| stat.is_alive()))
        .filter_map(Pid::from_raw)
        .collect()
}

/// The redactor for the values of the variables `KEEL_REDACT` names (comma-separated): the
/// secrets Keel gave this task.
pub fn redactor_for(env: &[(String, String)]) -> crate::redact::Redactor {
    let Some((_, names)) = env.iter().rev().find(|(name, _)| name == REDACT_VARIABLE) else {
        return crate::redact::Redactor::default();
    };
    let names: Vec<&str> = names.split(',').filter(|name| !name.is_empty()).collect();
    crate::redact::Redactor::new(
        env.iter()
            .filter(|(name, _)| names.contains(&name.as_str()))
            .map(|(_, value)| value.as_str()),
    )
}

/// Hides the task's secrets in the result file it wrote, before Keel reads it: its message is
/// stored and shown. A result that is not a regular file, or too large, is left for the
/// reader to refuse.
fn redact_result_file(dir: &Path, redactor: &crate::redact::Redactor) {
    if redactor.is_empty() {
        return;
    }
    let path = dir.join(RESULT_FILE);
    let Ok(Some(bytes)) = crate::files::read_regular_file(&path, crate::report::RESULT_CAP) else {
        return;
    };
    let redacted = redactor.redact_bytes(&bytes);
    if redacted == bytes {
        return;
    }
    let temporary = dir.join(format!("{RESULT_FILE}.redacted"));
    if std::fs::write(&temporary, &redacted).is_ok() && std::fs::rename(&temporary, &path).is_err()
    {
        let _ = std::fs::remove_file(&temporary);
    }
}

/// The variable that names, comma-separated, the variables of a task's environment that hold
/// its secrets: their values never reach its captured output.
pub const REDACT_VARIABLE: &str = "KEEL_REDACT";

/// Runs the task to its end and says how it ended. The task's process group goes into
/// `record_file` before the task runs.
fn supervise(args: &SupervisorArgs, env: &[(String, String)], record_file: &File) -> ExitRecord {
    watch_to_the_end(args, env, &Watch::Supervisor { record_file })
}

/// Runs the task to its end from a thread of this process, and says how it ended: what a bound
/// worker does instead of forking a supervisor for each attempt. Nothing is kept on record
/// (a worker that dies takes its attempts with it, and they are retried elsewhere): the task's
/// leader dies with this thread, and the task's group and the descendants seen leaving it are
/// killed when it ends. `stop` asks the task to stop (SIGTERM, then SIGKILL after the grace).
pub fn supervise_in_thread(
    args: &SupervisorArgs,
    env: &[(String, String)],
    stop: &AtomicBool,
) -> ExitRecord {
    // A write past the file size limit must fail with EFBIG, not kill the worker.
    static SIGXFSZ_CAUGHT: std::sync::Once = std::sync::Once::new();
    SIGXFSZ_CAUGHT.call_once(|| {
        let _ = signal_hook::flag::register(signal_hook::consts::SIGXFSZ, &FILE_SIZE_LIMIT_REACHED);
    });
    watch_to_the_end(args, env, &Watch::Thread { stop })
}

fn watch_to_the_end(
    args: &SupervisorArgs,
    env: &[(String, String)],
    watch: &Watch<'_>,
) -> ExitRecord {
    let started_at = now_millis();
    let redactor = redactor_for(env);
    let mut output = Output::new(args.dir.join(OUTPUT_FILE), args.log_cap, redactor.clone());
    let mut escaped = Vec::new();
    let mut ended = run_task(args, env, watch, &mut output, &mut escaped);
    output.finish();
    redact_result_file(&args.dir, &redactor);
    // Whatever escaped the task's process group goes with the attempt, so nothing of it runs on
    // past its end or its timeout.
    match watch {
        Watch::Supervisor { .. } => end_descendants(DESCENDANTS_PATIENCE),
        // The group's members and the processes seen leaving it, with what they started; the
        // process table is read only when there is any.
        Watch::Thread { .. } => {
            if !escaped.is_empty() {
                end_process_trees(&escaped, None, DESCENDANTS_PATIENCE);
            }
        }
    }
    ended.started_at = started_at;
    ended.finished_at = now_millis();
    ended.output_problem = output.problem.take();
    ended
}

/// The record file's content naming the task's group, `{"pid":N,"task":{"id":`, the task's
/// pid, and `}}`: the parts the task's child process puts together between fork and exec, where
/// it must not allocate. It matches [`AttemptRecordFile::Running`].
fn group_record_parts() -> (Vec<u8>, &'static [u8]) {
    (
        format!("{{\"pid\":{},\"task\":{{\"id\":", std::process::id()).into_bytes(),
        b"}}",
    )
}

/// Writes `{"pid":N,"task":{"id":PID}}` into the record file from the task's child process,
/// before it runs the task's program: the group is then on record before the task can do
/// anything, so a supervisor killed at any moment leaves no unrecorded group behind. Only
/// async-signal-safe calls, on a buffer on the stack.
fn record_own_group(record: BorrowedFd<'_>, prefix: &[u8], suffix: &[u8]) -> std::io::Result<()> {
    let mut buffer = [0u8; 128];
    let own = getpid().as_raw_nonzero().get() as u64;
    let mut digits = [0u8; 20];
    let mut count = 0;
    let mut rest = own;
    loop {
        digits[count] = b'0' + (rest % 10) as u8;
        count += 1;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    let length = prefix.len() + count + suffix.len();
    if length > buffer.len() {
        return Err(Errno::NAMETOOLONG.into());
    }
    buffer[..prefix.len()].copy_from_slice(prefix);
    for index in 0..count {
        buffer[prefix.len() + index] = digits[count - 1 - index];
    }
    buffer[prefix.len() + count..length].copy_from_slice(suffix);
    if pwrite(record, &buffer[..length], 0)? != length {
        return Err(std::io::ErrorKind::WriteZero.into());
    }
    ftruncate(record, length as u64)?;
    Ok(())
}

/// How often the supervisor looks for the task's descendants that left its process group.
/// A daemon that leaves the group and, before the next look, loses its supervisor (SIGKILL)
/// while the attempt host is gone too, is the one that can outlive its attempt.
const ESCAPE_LOOK_INTERVAL: Duration = Duration::from_millis(100);

/// The most escaped processes kept on record; past it, newer ones are left off (the attempt
/// host still ends them if the supervisor dies while it runs, and the supervisor at the end).
const ESCAPED_CAP: usize = 1024;

/// The task's descendants outside its process group, as the record file names them.
struct EscapeWatch {
    group: TaskGroup,
    /// Whose descendants are looked at.
    root: i32,
    escaped: Vec<EscapedProcess>,
    next_look: Instant,
}

impl EscapeWatch {
    /// The first look comes one interval after the task started, so a short task costs none.
    fn new(group: TaskGroup, root: i32, started: Instant) -> EscapeWatch {
        EscapeWatch {
            group,
            root,
            escaped: Vec::new(),
            next_look: started + ESCAPE_LOOK_INTERVAL,
        }
    }

    fn until_next_look(&self, now: Instant) -> Duration {
        self.next_look.saturating_duration_since(now)
    }

    /// Looks at this process's descendants if it is time to, and says whether the escaped ones
    /// changed. Those on record stay there for as long as they live, even if a look misses
    /// them (one whose parent ends while the tree is read).
    fn look_if_due(&mut self, now: Instant) -> bool {
        if now < self.next_look {
            return false;
        }
        self.next_look = now + ESCAPE_LOOK_INTERVAL;
        let mut escaped: Vec<EscapedProcess> = self
            .escaped
            .iter()
            .filter(|process| process.is_alive())
            .copied()
            .collect();
        for process in descendants_of(self.root) {
            if escaped.len() >= ESCAPED_CAP {
                break;
            }
            let found = EscapedProcess {
                pid: process.pid,
                started: process.started,
            };
            if process.is_alive() && process.group != self.group.id && !escaped.contains(&found) {
                escaped.push(found);
            }
        }
        let changed = escaped != self.escaped;
        self.escaped = escaped;
        changed
    }

    fn write(&self, record_file: &File) {
        let _ = write_record(
            record_file,
            &AttemptRecordFile::Running {
                pid: std::process::id(),
                task: Some(self.group.clone()),
                escaped: self.escaped.clone(),
            },
        );
    }
}

/// The task's stdout or stderr: read, and polled through its descriptor.
trait OutputStream: Read + AsFd {}

impl<T: Read + AsFd> OutputStream for T {}

/// Where an attempt is watched from.
enum Watch<'a> {
    /// Its own supervisor process (`keel __attempt`): the subreaper of the task's descendants,
    /// which keeps the attempt's record file and is stopped by SIGTERM.
    Supervisor { record_file: &'a File },
    /// A thread of a bound worker's process ([`supervise_in_thread`]): the attempt ends with the
    /// worker, so nothing is kept on record; `stop` asks it to stop.
    Thread { stop: &'a AtomicBool },
}

impl Watch<'_> {
    fn stop_requested(&self) -> bool {
        match self {
            Watch::Supervisor { .. } => TERMINATE_REQUESTED.load(Ordering::SeqCst),
            Watch::Thread { stop } => stop.load(Ordering::SeqCst),
        }
    }
}

/// The task's leader, waited for by its pid (whichever way it was started).
struct Leader(Pid);

impl Leader {
    fn status(raw: rustix::process::WaitStatus) -> std::process::ExitStatus {
        use std::os::unix::process::ExitStatusExt;
        std::process::ExitStatus::from_raw(raw.as_raw())
    }

    fn try_wait(&self) -> std::io::Result<Option<std::process::ExitStatus>> {
        Ok(rustix::process::waitpid(Some(self.0), WaitOptions::NOHANG)?
            .map(|(_, status)| Leader::status(status)))
    }

    fn wait(&self) -> std::io::Result<std::process::ExitStatus> {
        loop {
            match rustix::process::waitpid(Some(self.0), WaitOptions::empty()) {
                Ok(Some((_, status))) => return Ok(Leader::status(status)),
                Ok(None) | Err(Errno::INTR) => continue,
                Err(error) => return Err(error.into()),
            }
        }
    }
}

/// Starts the task from its supervisor process: `fork` of this small single-threaded process,
/// the task's group put on record before it runs, and the task killed if the supervisor dies.
fn spawn_from_supervisor(
    args: &SupervisorArgs,
    env: &[(String, String)],
    record_file: &File,
) -> std::io::Result<(Pid, Vec<Box<dyn OutputStream>>)> {
    use std::os::unix::process::CommandExt;

    let mut command = Command::new(&args.command[0]);
    if args.clear_env {
        command.env_clear();
    }
    if let Some(cwd) = &args.cwd {
        command.current_dir(cwd);
    }
    command
        .args(&args.command[1..])
        .envs(env.iter().map(|(key, value)| (key, value)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let supervisor = getpid();
    let record_fd = record_file.as_raw_fd();
    let (prefix, suffix) = group_record_parts();
    // SAFETY: between fork and exec the child only makes raw system calls through rustix
    // (getpid, pwrite, ftruncate, prctl, getppid), which are async-signal-safe, reads memory
    // made before the fork, and builds errors from plain numbers, which does not allocate. The
    // record file's descriptor is open in the child: `record_file` outlives the spawn.
    unsafe {
        command.pre_exec(move || {
            record_own_group(BorrowedFd::borrow_raw(record_fd), &prefix, suffix)?;
            // If the supervisor dies, by SIGKILL or the OOM killer, the task's leader dies with
            // it instead of running on unwatched. Its descendants are ended by whoever finds the
            // supervisor dead, through the process group recorded just above.
            set_parent_process_death_signal(Some(Signal::KILL))?;
            // The supervisor may have died before the line above, when nothing would be sent.
            if getppid() != Some(supervisor) {
                return Err(Errno::SRCH.into());
            }
            Ok(())
        });
    }
    let mut child = command.spawn()?;
    let mut streams: Vec<Box<dyn OutputStream>> = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        streams.push(Box::new(stdout));
    }
    if let Some(stderr) = child.stderr.take() {
        streams.push(Box::new(stderr));
    }
    // From here the leader is waited for by its pid; dropping `Child` neither waits nor kills.
    Ok((Pid::from_child(&child), streams))
}

/// Starts the task from a thread of a bound worker: no fork of the worker (see `spawn.rs`), the
/// task killed when this thread ends, which is only once the task has ended.
fn spawn_from_thread(
    args: &SupervisorArgs,
    env: &[(String, String)],
) -> std::io::Result<(Pid, Vec<Box<dyn OutputStream>>)> {
    let spawned = crate::spawn::spawn_bound(&crate::spawn::TaskSpawn {
        command: &args.command,
        env: crate::spawn::task_environment(env, args.clear_env),
        cwd: args.cwd.as_deref(),
    })?;
    let streams: Vec<Box<dyn OutputStream>> =
        vec![Box::new(spawned.stdout), Box::new(spawned.stderr)];
    Ok((spawned.pid, streams))
}

fn run_task(
    args: &SupervisorArgs,
    env: &[(String, String)],
    watch: &Watch<'_>,
    output: &mut Output,
    escaped: &mut Vec<EscapedProcess>,
) -> ExitRecord {
    use std::os::unix::process::ExitStatusExt;

    let record = |kind: ExitKind,
                  code: Option<i32>,
                  signal: Option<i32>,
                  message: Option<String>| ExitRecord {
        kind,
        code,
        signal,
        message,
        started_at: 0,
        finished_at: 0,
        output_problem: None,
    };
    let heartbeat_path = args.dir.join(HEARTBEAT_FILE);
    if args.heartbeat.is_some() {
        let _ = File::create(&heartbeat_path);
    }

    let spawned = match watch {
        Watch::Supervisor { record_file } => spawn_from_supervisor(args, env, record_file),
        Watch::Thread { .. } => spawn_from_thread(args, env),
    };
    let (task_group, mut streams) = match spawned {
        Ok(spawned) => spawned,
        Err(error) => {
            if let Some(cwd) = args.cwd.as_ref().filter(|cwd| !cwd.is_dir()) {
                let message = Some(cwd.display().to_string());
                return record(ExitKind::NoWorkingDirectory, None, None, message);
            }
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
    let child = Leader(task_group);
    // A supervisor is the subreaper of everything the task leaves, so it looks among its own
    // descendants; a worker's thread looks among the leader's while it lives.
    let root = match watch {
        Watch::Supervisor { .. } => std::process::id() as i32,
        Watch::Thread { .. } => task_group.as_raw_nonzero().get(),
    };
    let mut escapes = EscapeWatch::new(
        TaskGroup::of_leader(task_group.as_raw_nonzero().get()),
        root,
        Instant::now(),
    );
    // The group is on record already (see `record_own_group`); this adds what tells it from a
    // later group with the same id.
    if let Watch::Supervisor { record_file } = watch {
        escapes.write(record_file);
    }
    let clock = Instant::now();
    let mut last_sign_of_life = Duration::ZERO;
    let mut open_streams = vec![true; streams.len()];
    // A pidfd becomes readable when the task's leader exits, so one `poll` waits for the exit,
    // the output and the next deadline at once, without threads.
    let pidfd = pidfd_open(task_group, PidfdFlags::empty()).ok();

    let tick = match args.heartbeat {
        Some(heartbeat) => {
            (heartbeat / 4).clamp(Duration::from_millis(10), Duration::from_millis(500))
        }
        None => Duration::from_millis(500),
    };
    let heartbeat_base = SystemTime::now();
    let mut stop_reason: Option<(ExitKind, String)> = None;
    let mut kill_sent_at: Option<Instant> = None;
    let mut exited: Option<std::process::ExitStatus> = None;
    let mut buffer = vec![0u8; 16 * 1024];
    // Wait for the exit while draining output; then drain what is left, briefly.
    let mut drain_deadline: Option<Instant> = None;
    let mut pidfd_ready = false;
    loop {
        if exited.is_none() && (pidfd.is_none() || pidfd_ready) {
            // Anything the task left running in its group would outlive the attempt and could
            // overlap with the next one, so it goes too. The leader is a zombie until reaped,
            // which keeps its pid, and so the group id, from being reused before this kill.
            // A group already gone (ESRCH) is fine.
            if pidfd_ready {
                let _ = kill_process_group(task_group, Signal::KILL);
            }
            match child.try_wait() {
                Ok(Some(status)) => {
                    if !pidfd_ready {
                        // As above, on kernels without pidfds.
                        let _ = kill_process_group(task_group, Signal::KILL);
                    }
                    exited = Some(status);
                    drain_deadline = Some(Instant::now() + Duration::from_millis(200));
                }
                Ok(None) => {}
                Err(_) => break,
            }
        }
        if exited.is_some()
            && (!open_streams.contains(&true)
                || drain_deadline.is_some_and(|deadline| Instant::now() >= deadline))
        {
            break;
        }
        let wait = if exited.is_some() {
            Duration::from_millis(20)
        } else {
            match kill_sent_at {
                Some(sent) => args.kill_grace.saturating_sub(sent.elapsed()).min(tick),
                None => args.timeout.saturating_sub(clock.elapsed()).min(tick),
            }
            .min(escapes.until_next_look(Instant::now()))
        };
        // Without pidfds (old kernels) the exit is found by short polling instead.
        let timeout = if pidfd.is_none() && exited.is_none() {
            Duration::from_millis(5)
        } else {
            wait.max(Duration::from_millis(1))
        };
        let watch_exit = exited.is_none();
        // Which open streams have output (or reached their end), and whether the task exited.
        let (streams_ready, exit_ready) = {
            let mut poll_fds: Vec<PollFd<'_>> = Vec::with_capacity(3);
            let mut polled_streams = Vec::with_capacity(streams.len());
            for (index, stream) in streams.iter().enumerate() {
                if open_streams[index] {
                    poll_fds.push(PollFd::from_borrowed_fd(stream.as_fd(), PollFlags::IN));
                    polled_streams.push(index);
                }
            }
            if watch_exit && let Some(pidfd) = &pidfd {
                poll_fds.push(PollFd::new(pidfd, PollFlags::IN));
            }
            let timeout = Timespec::try_from(timeout).ok();
            // An interrupted poll (a signal arrived) is simply a shorter wait.
            let _ = poll(&mut poll_fds, timeout.as_ref());
            let mut streams_ready = vec![false; streams.len()];
            for (slot, index) in polled_streams.iter().enumerate() {
                streams_ready[*index] = !poll_fds[slot].revents().is_empty();
            }
            let exit_ready = watch_exit
                && pidfd.is_some()
                && poll_fds
                    .last()
                    .is_some_and(|poll_fd| !poll_fd.revents().is_empty());
            (streams_ready, exit_ready)
        };
        pidfd_ready = exit_ready;
        for (index, stream) in streams.iter_mut().enumerate() {
            if !open_streams[index] || !streams_ready[index] {
                continue;
            }
            match stream.read(&mut buffer) {
                Ok(0) | Err(_) => open_streams[index] = false,
                Ok(read) => {
                    last_sign_of_life = clock.elapsed();
                    output.write(&buffer[..read]);
                }
            }
        }
        if exited.is_some() {
            continue;
        }
        if escapes.look_if_due(Instant::now())
            && let Watch::Supervisor { record_file } = watch
        {
            escapes.write(record_file);
        }
        if let Some(sent) = kill_sent_at {
            if sent.elapsed() >= args.kill_grace {
                let _ = kill_process_group(task_group, Signal::KILL);
            }
            continue;
        }
        if watch.stop_requested() {
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
            let output_quiet = clock.elapsed().saturating_sub(last_sign_of_life);
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
            // A task that ended by itself just as a limit passed (while this process was
            // reading output, or was not scheduled) is judged by how it really ended: only a
            // task still running when the stop is sent is stopped by it.
            if has_exited(task_group) {
                stop_reason = None;
                pidfd_ready = true;
                continue;
            }
            let _ = kill_process_group(task_group, Signal::TERM);
            kill_sent_at = Some(Instant::now());
        }
    }
    let status = match exited {
        Some(status) => Ok(status),
        None => child.wait(),
    };
    *escaped = escapes.escaped;
    // A supervisor ends what is left of the group among its descendants (it is their
    // subreaper); a thread ends the members it can still find.
    if let Watch::Thread { .. } = watch {
        escaped.extend(escapes.group.living_processes());
    }
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
            cwd: Some("/srv/a pipeline".into()),
            clear_env: true,
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

    /// A supervisor killed between writing a shorter record over a longer one and cutting the
    /// file to size leaves the padded record behind, which still reads as the new one.
    #[test]
    fn a_shorter_record_written_over_a_longer_one_reads_back_even_before_the_cut() {
        let group = TaskGroup {
            id: 4242,
            started: Some(7),
            session: Some(4242),
            boot: None,
        };
        let long = AttemptRecordFile::Running {
            pid: 4200,
            task: Some(group.clone()),
            escaped: (0..3)
                .map(|index| EscapedProcess {
                    pid: 5000 + index,
                    started: 9,
                })
                .collect(),
        };
        let short = AttemptRecordFile::Running {
            pid: 4200,
            task: Some(group),
            escaped: Vec::new(),
        };
        let (long_bytes, long_length) = padded_record(&long, 0).unwrap();
        assert_eq!(long_bytes.len() as u64, long_length);
        let (bytes, length) = padded_record(&short, long_length).unwrap();
        assert_eq!(
            bytes.len() as u64,
            long_length,
            "padded over the old record"
        );
        assert!(length < long_length);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LOCK_FILE), &bytes).unwrap();
        assert_eq!(read_record(dir.path()).unwrap().unwrap(), short);
    }

    /// The record the task's child process writes between fork and exec, overwriting a longer
    /// one, reads back as a running attempt naming the group.
    #[test]
    fn the_group_record_written_before_exec_reads_as_a_running_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOCK_FILE);
        std::fs::write(&path, "x".repeat(300)).unwrap();
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        let (prefix, suffix) = group_record_parts();
        record_own_group(file.as_fd(), &prefix, suffix).unwrap();
        match read_record(dir.path()) {
            Some(Ok(AttemptRecordFile::Running {
                pid,
                task: Some(group),
                ..
            })) => {
                assert_eq!(pid, std::process::id());
                assert_eq!(group.id, std::process::id() as i32);
                assert_eq!(group.started, None);
            }
            other => panic!("{other:?}"),
        }
    }
}
