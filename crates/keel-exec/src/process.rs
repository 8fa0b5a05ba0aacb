//! Runs commands as child processes through the attempt supervisor.

use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_model::Outcome;
use rustix::process::{Pid, Signal, kill_process};

use crate::group::end_process_trees;
use crate::host::HostClient;
use crate::supervisor::{AttemptRecordFile, LOCK_FILE, SupervisorArgs, read_record};
use crate::{Adopted, Executor, ExitRecord, GroupEnd, Launch, Report, Running, interpret};

/// Starts each attempt as `<supervisor_program> <supervisor_args…> __attempt …`.
#[derive(Clone)]
pub struct ProcessExecutor {
    supervisor_program: PathBuf,
    supervisor_prefix: Vec<String>,
    host: Arc<Mutex<HostState>>,
    /// Hosts that went away so far.
    host_losses: Arc<std::sync::atomic::AtomicU32>,
    /// HTTP tasks' clients: their requests are sent by Keel itself, not by a supervisor.
    http: crate::http::HttpClients,
    /// Watch each command attempt from a thread of this process instead of a supervisor
    /// process: see [`ProcessExecutor::in_threads`].
    in_threads: bool,
}

enum HostState {
    NotStarted,
    Running(Arc<HostClient>),
    /// The host could not be started, or went away too often: supervisors are started
    /// directly.
    Unavailable,
}

/// How many times a host that went away is started again before supervisors are started
/// directly for good: a long-lived `keel serve` outlives a host killed now and then.
const HOST_RESTARTS: u32 = 5;

/// Keeps Keel's own `KEEL_*` variables (a passphrase, a token) out of what attempts inherit.
/// Tasks get the `KEEL_*` variables of their contract explicitly, with each launch.
pub(crate) fn without_keel_variables(command: &mut std::process::Command) {
    for (name, _) in std::env::vars_os() {
        if is_keel_variable(&name) {
            command.env_remove(name);
        }
    }
}

/// Whether `name` is one of Keel's own variables, which attempts do not inherit.
pub(crate) fn is_keel_variable(name: &std::ffi::OsStr) -> bool {
    name.to_string_lossy().starts_with("KEEL_")
}

impl ProcessExecutor {
    /// `program` and `prefix` start the supervisor: for the `keel` binary that is
    /// `(current_exe, ["__attempt"])`.
    pub fn new(program: PathBuf, prefix: Vec<String>) -> ProcessExecutor {
        ProcessExecutor {
            supervisor_program: program,
            supervisor_prefix: prefix,
            host: Arc::new(Mutex::new(HostState::NotStarted)),
            host_losses: Arc::default(),
            http: crate::http::HttpClients::default(),
            in_threads: false,
        }
    }

    /// Runs each command attempt from a thread of this process
    /// ([`crate::supervisor::supervise_in_thread`]) instead of forking a supervisor for it: for
    /// a bound worker, whose attempts end with it (their leaders die with their threads) and are
    /// never adopted, so they need neither a supervisor that outlives Keel nor a record on disk.
    /// It saves a process, a lock file and an exit record per attempt.
    pub fn in_threads(mut self) -> ProcessExecutor {
        self.in_threads = true;
        self
    }

    /// Starts every supervisor as its own process instead of forking it from the attempt host.
    /// Slower; the fallback whenever the host is unavailable.
    pub fn without_host(self) -> ProcessExecutor {
        *self.host.lock().unwrap_or_else(|p| p.into_inner()) = HostState::Unavailable;
        self
    }

    fn host(&self) -> Option<Arc<HostClient>> {
        let mut state = self.host.lock().unwrap_or_else(|p| p.into_inner());
        if let HostState::NotStarted = *state {
            *state = match HostClient::start(&self.supervisor_program, &self.supervisor_prefix) {
                Ok(client) => HostState::Running(Arc::new(client)),
                Err(_) => HostState::Unavailable,
            };
        }
        match &*state {
            HostState::Running(client) => Some(client.clone()),
            _ => None,
        }
    }

    /// The attempt host's pid, once it has started.
    pub fn host_pid(&self) -> Option<u32> {
        match &*self.host.lock().unwrap_or_else(|p| p.into_inner()) {
            HostState::Running(client) => Some(client.pid()),
            _ => None,
        }
    }

    /// The host went away: the next launch starts a new one, until that has happened
    /// [`HOST_RESTARTS`] times.
    fn host_failed(&self) {
        let losses = self
            .host_losses
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        *self.host.lock().unwrap_or_else(|p| p.into_inner()) = if losses > HOST_RESTARTS {
            HostState::Unavailable
        } else {
            HostState::NotStarted
        };
    }
}

/// Sends `signal` to a supervisor this Keel started or found recorded; one that is already
/// gone is fine.
fn signal(pid: u32, signal: Signal) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
        let _ = kill_process(pid, signal);
    }
}

fn read_exit_record(dir: &Path) -> Option<Result<ExitRecord, String>> {
    match read_record(dir)? {
        Ok(AttemptRecordFile::Ended(record)) => Some(Ok(record)),
        Ok(AttemptRecordFile::Running { .. }) => None,
        Err(problem) => Some(Err(problem)),
    }
}

/// Whether `pid` is a live attempt supervisor (a `keel __attempt` process that has not ended).
fn is_a_supervisor(pid: u32) -> bool {
    let Ok(command_line) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let is_attempt = command_line
        .split(|byte| *byte == 0)
        .any(|argument| argument == b"__attempt");
    let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state letter follows the command name's closing parenthesis.
    let zombie = state
        .rsplit_once(')')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
    is_attempt && !zombie
}

/// Follows a supervisor whose attempt directory is gone: its end can only be seen as the
/// process going away, and how the attempt ended is unknown, so it is reported `lost`, but
/// only once nothing of it runs.
fn supervisor_without_directory(pid: u32) -> Running {
    let completion = Box::pin(async move {
        while is_a_supervisor(pid) {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        Report::new(
            Outcome::Lost,
            "its attempt directory was removed while it ran, so how it ended is unknown; it was retried once its supervisor had ended",
        )
    });
    Running {
        pid: Some(pid),
        pid_later: None,
        completion,
        stop: Arc::new(move || signal(pid, Signal::TERM)),
    }
}

fn read_supervisor_pid(dir: &Path) -> Option<u32> {
    match read_record(dir)? {
        Ok(AttemptRecordFile::Running { pid, .. }) => Some(pid),
        _ => None,
    }
}

/// How long Keel waits, after SIGKILL, for the processes of a task whose supervisor died to
/// exit. They never run code of their own again once the signal has landed, so the wait only
/// covers the kernel finishing what they were doing; past it the attempt is reported anyway.
const ORPHAN_PATIENCE: Duration = Duration::from_secs(5);

/// Ends what is left of the task of an attempt whose supervisor died without an exit record,
/// and says what was done. Whoever concludes that an attempt ended without a record calls this
/// before reporting it, so that its next attempt never runs beside it. Blocks for at most twice
/// [`ORPHAN_PATIENCE`].
///
/// What is left is the task's process group, as the supervisor recorded it before the task ran,
/// and the descendants it saw outside that group (daemons that called `setsid`), with whatever
/// these started since: they are all stopped, then killed together.
fn end_orphaned_task(dir: &Path) -> Option<String> {
    let (group, escaped) = match read_record(dir)? {
        Ok(AttemptRecordFile::Running {
            task: Some(group),
            escaped,
            ..
        }) => (group, escaped),
        _ => return None,
    };
    let mut roots = group.living_processes();
    let members = roots.len();
    roots.extend(escaped);
    let trees = end_process_trees(&roots, group.boot.as_deref(), ORPHAN_PATIENCE);
    // Whatever joined the group while the trees were gathered goes too.
    let group_end = group.end(ORPHAN_PATIENCE);
    let still_exiting = match group_end {
        GroupEnd::StillExiting { processes } => processes.max(trees.still_exiting),
        _ => trees.still_exiting,
    };
    if trees.killed == 0 && group_end == GroupEnd::AlreadyGone {
        return None;
    }
    let what = if roots.len() > members {
        format!(
            "its task (process group {} and the processes that left it) was still running and has been killed",
            group.id
        )
    } else {
        format!(
            "its task (process group {}) was still running and has been killed",
            group.id
        )
    };
    Some(if still_exiting > 0 {
        format!(
            "{what}; {still_exiting} of its processes were still exiting after {}",
            keel_model::format_duration(ORPHAN_PATIENCE)
        )
    } else {
        what
    })
}

/// What an ended supervisor left behind, as a report. Blocks while it ends an orphaned task.
/// `orphans_killed` is how many processes the attempt host killed as they were handed to it when
/// the supervisor died.
fn report_from_dir(
    dir: &Path,
    supervisor_status: Option<std::process::ExitStatus>,
    orphans_killed: u32,
) -> Report {
    match read_exit_record(dir) {
        Some(Ok(record)) => interpret(&record, dir),
        Some(Err(problem)) => Report::new(Outcome::Failed, problem),
        None => {
            let mut message = match supervisor_status {
                Some(status) => {
                    format!("the attempt supervisor ended ({status}) without an exit record")
                }
                None => "the attempt supervisor ended without an exit record".to_string(),
            };
            if orphans_killed > 0 {
                message = format!(
                    "{message}; what was left of its task ({orphans_killed} {}) has been killed by the attempt host",
                    if orphans_killed == 1 {
                        "process"
                    } else {
                        "processes"
                    }
                );
            }
            if let Some(ended) = end_orphaned_task(dir) {
                message = format!("{message}; {ended}");
            }
            Report::new(Outcome::Lost, message)
        }
    }
}

/// [`report_from_dir`] off the async runtime: it reads files the task wrote and may wait for an
/// orphaned task to die.
async fn report_when_ended(
    dir: PathBuf,
    supervisor_status: Option<std::process::ExitStatus>,
    orphans_killed: u32,
) -> Report {
    tokio::task::spawn_blocking(move || report_from_dir(&dir, supervisor_status, orphans_killed))
        .await
        .unwrap_or_else(|_| Report::new(Outcome::Lost, "reading the attempt's end failed"))
}

/// Waits until the supervisor holding the attempt's lock has exited. Returns false if the lock
/// could not be waited on.
async fn wait_for_lock(dir: PathBuf) -> bool {
    let waited = tokio::task::spawn_blocking(move || {
        let lock = OpenOptions::new().write(true).open(dir.join(LOCK_FILE))?;
        lock_attempt(&lock, true)
    })
    .await;
    matches!(waited, Ok(Ok(true)))
}

/// Takes the attempt's liveness lock, waiting if `block`. Returns whether it was taken.
///
/// The lock is an exclusive `flock` (what `File::lock` takes on Linux): the supervisor holds it
/// exactly as long as it lives, whichever of its processes holds the descriptor.
fn lock_attempt(file: &std::fs::File, block: bool) -> std::io::Result<bool> {
    if block {
        loop {
            match file.lock() {
                Ok(()) => return Ok(true),
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            }
        }
    }
    match file.try_lock() {
        Ok(()) => Ok(true),
        Err(std::fs::TryLockError::WouldBlock) => Ok(false),
        Err(std::fs::TryLockError::Error(error)) => Err(error),
    }
}

/// Creates an attempt directory that holds nothing yet. A directory that already has files in
/// it belongs to some other attempt (another state store, or a state file made again): reusing
/// it would mix the outputs and could read that attempt's result file or exit record as this
/// one's, so it is refused.
///
/// Directories are made 0700 and the record file 0600: an attempt's output, environment-derived
/// files and result belong to the user that runs Keel alone.
pub(crate) fn create_fresh_attempt_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(parent) = dir.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            if std::fs::read_dir(dir)?.next().is_none() {
                return Ok(());
            }
            Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                format!(
                    "attempt directory {:?} already holds another attempt's files; refusing to reuse it so that no stale output, result file or exit record is mixed into this attempt; move it away if it is left over",
                    dir.display().to_string()
                ),
            ))
        }
        Err(error) => Err(error),
    }
}

/// Starts `launch` on a thread of its own that watches it to its end (see
/// [`ProcessExecutor::in_threads`]).
fn launch_in_thread(launch: Launch) -> std::io::Result<Running> {
    create_fresh_attempt_dir(&launch.dir)?;
    let arguments = SupervisorArgs {
        dir: launch.dir,
        lock_fd: None,
        timeout: launch.timeout,
        heartbeat: launch.heartbeat,
        kill_grace: launch.kill_grace,
        log_cap: launch.log_cap,
        command: launch.command,
        cwd: launch.cwd,
        clear_env: launch.clear_env,
    };
    let env = launch.env;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let thread_stop = stop.clone();
    std::thread::Builder::new()
        .name("keel-attempt".into())
        .stack_size(ATTEMPT_THREAD_STACK)
        .spawn(move || {
            let record = crate::supervisor::supervise_in_thread(&arguments, &env, &thread_stop);
            let _ = sender.send(interpret(&record, &arguments.dir));
        })?;
    let completion = Box::pin(async move {
        receiver.await.unwrap_or_else(|_| {
            Report::new(
                Outcome::Lost,
                "the thread watching the attempt ended without saying how the attempt ended",
            )
        })
    });
    let stop: Arc<dyn Fn() + Send + Sync> =
        Arc::new(move || stop.store(true, std::sync::atomic::Ordering::SeqCst));
    Ok(Running {
        pid: None,
        pid_later: None,
        completion,
        stop,
    })
}

/// The stack of a thread watching an attempt: its buffers are on the heap.
const ATTEMPT_THREAD_STACK: usize = 512 << 10;

impl Executor for ProcessExecutor {
    fn launch(&self, mut launch: Launch) -> std::io::Result<Running> {
        if let Some(call) = launch.http.take() {
            return self
                .http
                .launch(&launch.dir, call, launch.timeout, launch.log_cap);
        }
        if self.in_threads {
            return launch_in_thread(launch);
        }
        create_fresh_attempt_dir(&launch.dir)?;
        let lock = {
            use std::os::unix::fs::OpenOptionsExt;
            OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(launch.dir.join(LOCK_FILE))?
        };
        lock_attempt(&lock, false)?;
        if let Some(host) = self.host() {
            let arguments = SupervisorArgs {
                dir: launch.dir.clone(),
                lock_fd: None,
                timeout: launch.timeout,
                heartbeat: launch.heartbeat,
                kill_grace: launch.kill_grace,
                log_cap: launch.log_cap,
                command: launch.command.clone(),
                cwd: launch.cwd.clone(),
                clear_env: launch.clear_env,
            };
            match host.launch(&lock, &arguments, &launch.env) {
                Ok(crate::host::HostedAttempt { id, pid, exited }) => {
                    // The lock now travels to the forked supervisor.
                    drop(lock);
                    let dir = launch.dir.clone();
                    let completion = Box::pin(async move {
                        let orphans_killed = match exited.await {
                            Ok(killed) => killed,
                            Err(_) => {
                                // The host went away; the supervisor lives on, and its lock
                                // says when it ends.
                                wait_for_lock(dir.clone()).await;
                                0
                            }
                        };
                        report_when_ended(dir, None, orphans_killed).await
                    });
                    let stop_dir = launch.dir.clone();
                    let stop: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
                        if !host.stop(id)
                            && let Some(pid) = read_supervisor_pid(&stop_dir)
                        {
                            signal(pid, Signal::TERM);
                        }
                    });
                    return Ok(Running {
                        pid: None,
                        pid_later: Some(pid),
                        completion,
                        stop,
                    });
                }
                Err(_) => self.host_failed(),
            }
        }
        let lock_fd = lock.as_raw_fd();
        let arguments = SupervisorArgs {
            dir: launch.dir.clone(),
            lock_fd: Some(lock_fd),
            timeout: launch.timeout,
            heartbeat: launch.heartbeat,
            kill_grace: launch.kill_grace,
            log_cap: launch.log_cap,
            command: launch.command.clone(),
            cwd: launch.cwd.clone(),
            // The supervisor's own environment is made the task's below.
            clear_env: false,
        };
        let mut command = tokio::process::Command::new(&self.supervisor_program);
        if launch.clear_env {
            command.env_clear();
        } else {
            without_keel_variables(command.as_std_mut());
        }
        command
            .args(&self.supervisor_prefix)
            .args(arguments.to_args())
            .envs(launch.env.iter().map(|(key, value)| (key, value)))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .process_group(0)
            .kill_on_drop(false);
        // The supervisor inherits the liveness lock, and no other child may: close-on-exec is
        // cleared only in the forked child, between fork and exec. (This path is the fallback;
        // the attempt host receives the descriptor over its socket instead.)
        // SAFETY: between fork and exec the closure makes one raw system call (fcntl), which is
        // async-signal-safe, on the lock's descriptor: `lock` stays open in this process until
        // the spawn has returned, so the child's copy of it is open too.
        unsafe {
            command.pre_exec(move || {
                let inherited = std::os::fd::BorrowedFd::borrow_raw(lock_fd);
                rustix::io::fcntl_setfd(inherited, rustix::io::FdFlags::empty())?;
                Ok(())
            });
        }
        let mut child = command.spawn()?;
        // The supervisor now holds the lock through its inherited descriptor.
        drop(lock);
        let pid = child.id();
        let dir = launch.dir.clone();
        let completion = Box::pin(async move {
            let status = child.wait().await.ok();
            report_when_ended(dir, status, 0).await
        });
        let stop: Arc<dyn Fn() + Send + Sync> = match pid {
            Some(pid) => Arc::new(move || signal(pid, Signal::TERM)),
            None => Arc::new(|| {}),
        };
        Ok(Running {
            pid,
            pid_later: None,
            completion,
            stop,
        })
    }

    fn probe(&self, call: crate::HttpCall, timeout: Duration) -> crate::Completion {
        self.http.probe(call, timeout)
    }

    fn adopt(&self, dir: PathBuf, known_pid: Option<u32>) -> Adopted {
        let lock = match OpenOptions::new().write(true).open(dir.join(LOCK_FILE)) {
            Ok(lock) => lock,
            // No lock file: the supervisor was never started, or its directory was removed
            // (a cleanup job) while the store says it started. Then its supervisor may still
            // run, and the next attempt must not start beside it: wait for it to end.
            Err(_) => {
                if let Some(pid) = known_pid.filter(|pid| is_a_supervisor(*pid)) {
                    return Adopted::Running(supervisor_without_directory(pid));
                }
                if crate::http::was_in_flight(&dir) {
                    return Adopted::Gone(
                        "its HTTP request was in flight when keel stopped, so its answer is unknown; it is sent again with the same Idempotency-Key"
                            .into(),
                    );
                }
                return Adopted::Gone("keel stopped before the attempt could start".into());
            }
        };
        match lock_attempt(&lock, false) {
            Ok(true) => match read_exit_record(&dir) {
                Some(_) => Adopted::Finished(report_from_dir(&dir, None, 0)),
                None => {
                    // No supervisor, and no record of the end: the supervisor died, or never
                    // started. Whatever may be left of its task is ended before the attempt is
                    // given up, so its next attempt cannot run beside it.
                    end_orphaned_task(&dir);
                    Adopted::Gone(
                        "its supervisor ended without recording how the attempt ended (killed, or keel stopped as it started); whatever was left of its task was ended"
                            .into(),
                    )
                }
            },
            Ok(false) => {
                let record_dir = dir.clone();
                let read_pid = move || read_supervisor_pid(&record_dir);
                let pid = known_pid.or_else(&read_pid);
                let wait_dir = dir.clone();
                let completion = Box::pin(async move {
                    // The lock is released exactly when the supervisor exits.
                    let waited =
                        tokio::task::spawn_blocking(move || lock_attempt(&lock, true)).await;
                    match waited {
                        Ok(Ok(_)) => report_when_ended(wait_dir, None, 0).await,
                        _ => Report::new(Outcome::Lost, "lost track of an adopted attempt"),
                    }
                });
                // The supervisor writes its pid file as it starts, so a stop that comes later can
                // still find it when the store never learned the pid.
                let stop: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
                    if let Some(pid) = pid.or_else(&read_pid) {
                        signal(pid, Signal::TERM);
                    }
                });
                Adopted::Running(Running {
                    pid,
                    pid_later: None,
                    completion,
                    stop,
                })
            }
            Err(error) => Adopted::Gone(format!("cannot check whether it still runs: {error}")),
        }
    }
}
