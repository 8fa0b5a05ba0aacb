//! Distributed workers on a PostgreSQL state: `keel serve --role scheduler|worker|all`.
//!
//! The coordination lives in PostgreSQL. The active scheduler is a `keel serve` that holds the
//! state's executor lock (a standby waits for it, and takes over when its holder dies); its
//! engine is today's, with a [`QueueExecutor`] in place of the process executor: each attempt
//! becomes a row of the work queue (`keel_store::WorkQueue`). Workers (`worker.rs`) claim rows
//! with `FOR UPDATE SKIP LOCKED`, run them with the process executor, renew their leases by
//! heartbeat and record each result under the claim's epoch. The scheduler reaps leases that
//! were not renewed: the attempt ends `lost` and is retried, and the late worker's write is
//! refused. Since the one active engine admits every attempt, rate limits, concurrency caps and
//! breakers hold across all workers.

mod queue;
pub mod view;
pub mod worker;

use std::path::{Path, PathBuf};
use std::time::Duration;

use keel_exec::{Adopted, Executor, Launch, ProcessExecutor, Report, Running};
use keel_model::Outcome;
use serde::{Deserialize, Serialize};

pub use queue::QueueExecutor;

/// What a `keel serve` does in a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Schedule and run attempts in this process (a single machine).
    All,
    /// Schedule only: attempts go to workers through the state's work queue. One scheduler is
    /// active at a time; others wait as standbys and take over when it dies.
    Scheduler,
    /// Run attempts the active scheduler queued; needs no pipeline file.
    Worker,
}

/// The executor of an engine: attempts run here, or go to workers.
#[derive(Clone)]
pub enum AttemptExecutor {
    Local(ProcessExecutor),
    Queue(QueueExecutor),
}

impl Executor for AttemptExecutor {
    fn launch(&self, launch: Launch) -> std::io::Result<Running> {
        match self {
            AttemptExecutor::Local(executor) => executor.launch(launch),
            AttemptExecutor::Queue(executor) => executor.launch(launch),
        }
    }

    fn launch_many(&self, launches: Vec<Launch>) -> Vec<std::io::Result<Running>> {
        match self {
            AttemptExecutor::Local(executor) => executor.launch_many(launches),
            AttemptExecutor::Queue(executor) => executor.launch_many(launches),
        }
    }

    fn adopt(&self, dir: PathBuf, known_pid: Option<u32>) -> Adopted {
        match self {
            AttemptExecutor::Local(executor) => executor.adopt(dir, known_pid),
            AttemptExecutor::Queue(executor) => executor.adopt(dir, known_pid),
        }
    }

    fn probe(&self, call: keel_exec::HttpCall, timeout: Duration) -> keel_exec::Completion {
        match self {
            AttemptExecutor::Local(executor) => executor.probe(call, timeout),
            AttemptExecutor::Queue(executor) => executor.probe(call, timeout),
        }
    }
}

/// The milliseconds since the Unix epoch on this machine's wall clock. Leases are compared
/// across machines, so they use the real time even when `--clock-speed` speeds Keel's clock up.
pub fn wall_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or(0)
}

/// An attempt's key in the queue: the last three parts of its directory (store id, run, task
/// and attempt number), which are unique in the state and the same on every scheduler.
pub fn attempt_key(dir: &Path) -> String {
    let parts: Vec<String> = dir
        .components()
        .rev()
        .take(3)
        .map(|part| part.as_os_str().to_string_lossy().into_owned())
        .collect();
    parts.into_iter().rev().collect::<Vec<_>>().join("/")
}

/// What a worker needs to run an attempt: the [`Launch`] without its HTTP call (HTTP tasks are
/// sent by the scheduler itself), its directory only as the scheduler named it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// The attempt directory on the scheduler; paths under it in `env` are rewritten to the
    /// worker's own directory for the attempt.
    pub dir: String,
    pub command: Vec<String>,
    pub env: Vec<(String, String)>,
    pub clear_env: bool,
    pub cwd: Option<String>,
    pub timeout_ms: u64,
    pub heartbeat_ms: Option<u64>,
    pub kill_grace_ms: u64,
    pub log_cap: u64,
}

impl Job {
    /// The job of `launch`, without the values of the task's secrets: they would be stored in
    /// the queue. Only their names travel (in `KEEL_REDACT`); the worker reads them from its
    /// own environment ([`Job::launch_in`]).
    pub fn of(launch: &Launch) -> Job {
        let secrets = secret_names(&launch.env);
        Job {
            dir: launch.dir.display().to_string(),
            command: launch.command.clone(),
            env: launch
                .env
                .iter()
                .filter(|(name, _)| !secrets.contains(name))
                .cloned()
                .collect(),
            clear_env: launch.clear_env,
            cwd: launch.cwd.as_ref().map(|cwd| cwd.display().to_string()),
            timeout_ms: launch.timeout.as_millis() as u64,
            heartbeat_ms: launch.heartbeat.map(|every| every.as_millis() as u64),
            kill_grace_ms: launch.kill_grace.as_millis() as u64,
            log_cap: launch.log_cap,
        }
    }

    /// The launch on a worker, in `dir`: every environment value that names a path under the
    /// scheduler's attempt directory names the same path under `dir`, and the task's secrets
    /// are read by name from `secret` (the worker's environment). An error names the secret
    /// that is not there, never a value.
    pub fn launch_in(
        &self,
        dir: &Path,
        secret: impl Fn(&str) -> Option<String>,
    ) -> Result<Launch, String> {
        let local = dir.display().to_string();
        let mut env: Vec<(String, String)> = self
            .env
            .iter()
            .map(|(name, value)| {
                let value = match value.strip_prefix(&self.dir) {
                    Some(rest) if rest.is_empty() || rest.starts_with('/') => {
                        format!("{local}{rest}")
                    }
                    _ => value.clone(),
                };
                (name.clone(), value)
            })
            .collect();
        for name in secret_names(&self.env) {
            let Some(value) = secret(&name) else {
                return Err(format!(
                    "the task's secret {name} is not set in this worker's environment; a worker reads the secrets its tasks declare from its own environment, under the same names"
                ));
            };
            env.push((name, value));
        }
        Ok(Launch {
            dir: dir.to_path_buf(),
            command: self.command.clone(),
            env,
            clear_env: self.clear_env,
            cwd: self.cwd.as_ref().map(PathBuf::from),
            timeout: Duration::from_millis(self.timeout_ms),
            heartbeat: self.heartbeat_ms.map(Duration::from_millis),
            kill_grace: Duration::from_millis(self.kill_grace_ms),
            log_cap: self.log_cap,
            http: None,
        })
    }
}

/// The names of the secrets a launch's task declares: `KEEL_REDACT`'s list.
fn secret_names(env: &[(String, String)]) -> Vec<String> {
    env.iter()
        .rev()
        .find(|(name, _)| name == keel_exec::supervisor::REDACT_VARIABLE)
        .map(|(_, names)| {
            names
                .split(',')
                .filter(|name| !name.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// A [`Report`] as stored in the queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireReport {
    pub outcome: String,
    pub exit_code: Option<i32>,
    pub rows: Option<i64>,
    pub metrics: Option<String>,
    pub message: Option<String>,
    pub retry_after_ms: Option<u64>,
    pub items: Option<Vec<keel_model::Item>>,
    /// The result's `"heal"`: upstream tasks the task asks to run again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub heal: Vec<String>,
}

impl WireReport {
    pub fn of(report: &Report) -> WireReport {
        WireReport {
            outcome: report.outcome.as_str().to_string(),
            exit_code: report.exit_code,
            rows: report.rows,
            metrics: report.metrics.clone(),
            message: report.message.clone(),
            retry_after_ms: report.retry_after.map(|after| after.as_millis() as u64),
            items: report.items.clone(),
            heal: report.heal.clone(),
        }
    }

    pub fn encode(report: &Report) -> String {
        serde_json::to_string(&WireReport::of(report)).unwrap_or_else(|_| {
            r#"{"outcome":"lost","message":"the worker's report could not be written"}"#.into()
        })
    }

    /// The report a row holds; a row without a readable one is an attempt lost.
    pub fn decode(text: Option<&str>) -> Report {
        let Some(wire) = text.and_then(|text| serde_json::from_str::<WireReport>(text).ok()) else {
            return Report::new(Outcome::Lost, "the worker's report could not be read");
        };
        let Ok(outcome) = wire.outcome.parse::<Outcome>() else {
            return Report::new(
                Outcome::Lost,
                format!("the worker reported an unknown outcome {:?}", wire.outcome),
            );
        };
        Report {
            outcome,
            exit_code: wire.exit_code,
            rows: wire.rows,
            metrics: wire.metrics,
            message: wire.message,
            retry_after: wire.retry_after_ms.map(Duration::from_millis),
            items: wire.items,
            heal: wire.heal,
        }
    }
}

/// Why a roled `keel serve` cannot use this state.
pub fn needs_postgres(role: Role) -> anyhow::Error {
    crate::Exit::usage(format!(
        "--role {} needs a PostgreSQL state: roles coordinate through the database; pass --state postgres://USER@HOST/DATABASE (or set state in keel.toml), or leave out --role to run everything in this process",
        match role {
            Role::All => "all",
            Role::Scheduler => "scheduler",
            Role::Worker => "worker",
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_runs_in_the_workers_directory_with_its_paths_rewritten() {
        let launch = Launch {
            dir: PathBuf::from("/srv/state/attempts/abc/7/load.2"),
            command: vec!["sh".into(), "-c".into(), "true".into()],
            env: vec![
                (
                    "KEEL_RESULT".into(),
                    "/srv/state/attempts/abc/7/load.2/result.json".into(),
                ),
                ("OTHER".into(), "/srv/state/attempts/abc/7/load.20".into()),
                ("PLAIN".into(), "x".into()),
            ],
            clear_env: false,
            cwd: Some(PathBuf::from("/srv/pipeline")),
            timeout: Duration::from_secs(60),
            heartbeat: None,
            kill_grace: Duration::from_secs(5),
            log_cap: 1024,
            http: None,
        };
        let job: Job =
            serde_json::from_str(&serde_json::to_string(&Job::of(&launch)).unwrap()).unwrap();
        let local = job
            .launch_in(Path::new("/w/abc/7/load.2"), |_| None)
            .unwrap();
        assert_eq!(local.env[0].1, "/w/abc/7/load.2/result.json");
        // A sibling whose name only starts like the directory is not under it.
        assert_eq!(local.env[1].1, "/srv/state/attempts/abc/7/load.20");
        assert_eq!(local.env[2].1, "x");
        assert_eq!(local.cwd, launch.cwd);
        assert_eq!(local.timeout, launch.timeout);
        assert_eq!(attempt_key(&launch.dir), "abc/7/load.2");
    }

    /// A task's secrets travel by name only: the queue never holds a value, and the worker
    /// reads each from its own environment, or fails the attempt naming the one it lacks.
    #[test]
    fn a_jobs_secrets_travel_by_name_and_the_worker_reads_them_itself() {
        let value = format!("sk-{}", std::process::id() * 7919);
        let launch = Launch {
            dir: PathBuf::from("/srv/state/attempts/abc/7/load.2"),
            command: vec!["true".into()],
            env: vec![
                ("PLAIN".into(), "x".into()),
                (
                    keel_exec::supervisor::REDACT_VARIABLE.into(),
                    "ODDS_KEY".into(),
                ),
                ("ODDS_KEY".into(), value.clone()),
            ],
            clear_env: true,
            cwd: None,
            timeout: Duration::from_secs(60),
            heartbeat: None,
            kill_grace: Duration::from_secs(5),
            log_cap: 1024,
            http: None,
        };
        let stored = serde_json::to_string(&Job::of(&launch)).unwrap();
        assert!(
            !stored.contains(&value),
            "a secret's value in the queue: {stored}"
        );
        assert!(stored.contains("ODDS_KEY"), "{stored}");
        let job: Job = serde_json::from_str(&stored).unwrap();
        let on_worker = job
            .launch_in(Path::new("/w/abc/7/load.2"), |name| {
                (name == "ODDS_KEY").then(|| "from-the-worker".to_string())
            })
            .unwrap();
        assert!(
            on_worker
                .env
                .contains(&("ODDS_KEY".to_string(), "from-the-worker".to_string()))
        );
        let missing = job
            .launch_in(Path::new("/w/abc/7/load.2"), |_| None)
            .unwrap_err();
        assert!(missing.contains("secret ODDS_KEY is not set in this worker's environment"));
    }

    #[test]
    fn a_report_survives_the_queue_and_an_unreadable_one_is_lost() {
        let mut report = Report::new(Outcome::NotReady, "later");
        report.exit_code = Some(75);
        report.rows = Some(12);
        report.retry_after = Some(Duration::from_millis(1500));
        report.heal = vec!["scrape_boxscores".into()];
        let back = WireReport::decode(Some(&WireReport::encode(&report)));
        assert_eq!(back, report);
        assert_eq!(WireReport::decode(Some("{")).outcome, Outcome::Lost);
        assert_eq!(WireReport::decode(None).outcome, Outcome::Lost);
    }
}
