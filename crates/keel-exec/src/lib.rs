//! Executors: what turns a claimed attempt into a finished one.
//!
//! [`Executor`] is the seam the engine is generic over. [`ProcessExecutor`] runs commands through
//! the attempt [`supervisor`], which enforces the wall-clock timeout and the stall limit on the
//! whole process group and leaves a durable exit record. [`interpret`] turns an exit record and
//! the task's result file into a typed [`Report`].
//!
//! This crate never touches the state store and never decides about retries.

mod files;
mod group;
pub mod host;
pub mod http;
pub mod process;
pub mod redact;
mod report;
mod spawn;
pub mod supervisor;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub use files::{FileProblem, open_regular_file};
pub use group::{EscapedProcess, GroupEnd, TaskGroup, TreesEnd};
pub use http::{Credential, HttpCall, HttpClients, Secret};
pub use process::ProcessExecutor;
pub use report::{ExitKind, ExitRecord, Report, interpret};

/// Everything needed to start one attempt. Templates are already expanded.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The attempt directory; the executor creates it.
    pub dir: PathBuf,
    pub command: Vec<String>,
    /// Environment for the task (the `KEEL_*` contract, the task's `env`); later entries win.
    pub env: Vec<(String, String)>,
    /// Start the task with `env` alone instead of Keel's environment with `env` over it.
    pub clear_env: bool,
    /// Where the task runs; where Keel runs when `None`. A missing directory ends the attempt
    /// `failed_permanent`.
    pub cwd: Option<PathBuf>,
    pub timeout: Duration,
    pub heartbeat: Option<Duration>,
    /// Between SIGTERM and SIGKILL when an attempt is stopped.
    pub kill_grace: Duration,
    /// Bytes of output kept per attempt.
    pub log_cap: u64,
    /// The request of an HTTP task, sent by Keel itself instead of running `command`.
    pub http: Option<HttpCall>,
}

pub type Completion = Pin<Box<dyn Future<Output = Report> + Send>>;

/// A started attempt.
pub struct Running {
    /// The supervising process, when there is one and it is known.
    pub pid: Option<u32>,
    /// Learns the pid when it was not known at launch; see [`Running::resolve_pid`].
    pub pid_later: Option<host::PendingPid>,
    /// Resolves once the attempt has ended, however it ended.
    pub completion: Completion,
    /// Asks the attempt to stop; it then ends as `cancelled`.
    pub stop: Arc<dyn Fn() + Send + Sync>,
}

/// The entry point of `keel __attempt …`: the attempt host when the first argument is
/// `__host`, an attempt supervisor otherwise. Returns the process exit code. Kept here, above
/// both, so that the host (which forks supervisors) and the supervisor do not import each other.
///
/// A first argument `__bound` (a distributed worker's prefix) ties the process to its parent:
/// it is killed when its parent dies, and so is every supervisor a bound host forks. A worker
/// that is killed then takes its attempts with it, so the attempt the scheduler retries
/// elsewhere never runs beside them; a single Keel leaves them running, to adopt them.
pub fn attempt_main(arguments: &[String]) -> i32 {
    let arguments = match arguments.split_first() {
        Some((first, rest)) if first == BOUND_ARGUMENT => {
            BOUND.store(true, std::sync::atomic::Ordering::Relaxed);
            let _ = rustix::process::set_parent_process_death_signal(Some(
                rustix::process::Signal::KILL,
            ));
            rest
        }
        _ => arguments,
    };
    if arguments.first().map(String::as_str) == Some("__host") {
        return host::host_main(&arguments[1..]);
    }
    supervisor::main(arguments)
}

impl Running {
    /// Waits (boundedly) for a pid the launch did not know yet. Launching several attempts and
    /// then resolving their pids lets their forks overlap.
    pub fn resolve_pid(&mut self) {
        if self.pid.is_none()
            && let Some(later) = self.pid_later.take()
        {
            self.pid = later();
        }
    }
}

/// The argument that binds attempt hosts and supervisors to the process that started them.
pub const BOUND_ARGUMENT: &str = "__bound";

/// Whether this attempt host or supervisor was started `__bound`.
pub(crate) static BOUND: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// What a new Keel finds for an attempt that a previous Keel left live.
pub enum Adopted {
    /// Still running: wait on it like any other.
    Running(Running),
    /// It ended while no Keel was watching; this is how.
    Finished(Report),
    /// It never started, or died without a record: the attempt is lost, for this reason.
    Gone(String),
}

/// Starts attempts. Implementations must not block the async runtime.
pub trait Executor: Send + Sync + 'static {
    /// Starts an attempt. An error here means nothing was started.
    fn launch(&self, launch: Launch) -> std::io::Result<Running>;
    /// Starts several attempts, one result each in the order of `launches`. The engine hands
    /// over all the attempts it admitted in one turn here, so an executor whose every launch
    /// costs a round trip (a work queue in a database) can send them together; by default
    /// each is launched in turn.
    fn launch_many(&self, launches: Vec<Launch>) -> Vec<std::io::Result<Running>> {
        launches
            .into_iter()
            .map(|launch| self.launch(launch))
            .collect()
    }
    /// Reconnects to an attempt that a previous process started in `dir`; `known_pid` is the
    /// supervisor's pid if the store recorded it.
    fn adopt(&self, dir: PathBuf, known_pid: Option<u32>) -> Adopted;
    /// Sends a resource's health probe: a request with no attempt, directory or log. An
    /// executor that sends no requests reports every probe failed.
    fn probe(&self, call: HttpCall, timeout: Duration) -> Completion {
        let _ = (call, timeout);
        Box::pin(async {
            Report::new(
                keel_model::Outcome::Failed,
                "this executor sends no HTTP requests",
            )
        })
    }
}
