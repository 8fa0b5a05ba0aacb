//! PostgreSQL restarted mid-run, with real processes on loopback: a private server (this test's
//! own, never the shared one of `KEEL_TEST_POSTGRES`) is stopped at once (`-m immediate`, as a
//! crash or a failover would) while workers hold leases, stays away a few seconds and comes back
//! on the same port. Every Keel process must outlive it, reconnect by itself and carry on: every
//! run ends succeeded and every task committed its result exactly once, checked against a ledger
//! the tasks append to (the pipeline of `workers.rs`: each task sleeps 0.2 to 0.6 s, so the restart
//! lands mid-attempt). Skipped without the server's programs outside CI, a
//! failure under `CI=true` (the rule of `keel_store::testing`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use keel_store::Store;

use crate::support::{Served, keel_path, wait_for};
use crate::workers::{block_on, pipeline_toml, status};

/// How long the server stays away with workers: longer than a worker's lease in these tests
/// (2 s), so leases lapse while it is down.
const DOWNTIME: Duration = Duration::from_millis(2500);
/// How long it stays away under a plain `keel serve`: longer than a scheduler once waited for
/// its executor lock (5 s) before it stopped.
const LONG_DOWNTIME: Duration = Duration::from_secs(8);

/// A PostgreSQL server of one test, in a temporary directory, on a free loopback port, with
/// `trust` authentication: it holds nothing but this test's state. Dropped, it is stopped at
/// once, even when the test panics.
struct PrivatePostgres {
    bin: PathBuf,
    data: PathBuf,
    socket_dir: PathBuf,
    port: u16,
    as_root: bool,
    // Last: removed after the server is stopped.
    _dir: tempfile::TempDir,
}

impl PrivatePostgres {
    /// Starts a fresh server; `None` (after saying that `test` is skipped) when the server's
    /// programs are missing outside CI. Panics when they are missing under `CI=true`, or when
    /// the server cannot be made or started.
    fn start(test: &str) -> Option<PrivatePostgres> {
        let in_ci = std::env::var("CI").is_ok_and(|value| value == "true");
        // SAFETY: geteuid has no preconditions and cannot fail.
        let as_root = unsafe { libc::geteuid() } == 0;
        let problem = match newest_server_programs() {
            None => Some("no PostgreSQL server programs under /usr/lib/postgresql/*/bin".to_string()),
            Some(_) if as_root && !user_exists("postgres") => Some(
                "running as root, and there is no `postgres` user to run the server as (it refuses to run as root)"
                    .to_string(),
            ),
            Some(_) => None,
        };
        if let Some(problem) = problem {
            if in_ci {
                panic!(
                    "{test}: CI=true but {problem}; this test restarts a PostgreSQL server of its own: install the server (.ci/start-postgres does)"
                );
            }
            eprintln!("{test}: skipped: {problem} (this test restarts a server of its own)");
            return None;
        }
        let bin = newest_server_programs().expect("checked above");
        let dir = tempfile::tempdir().unwrap();
        if as_root {
            let chown = Command::new("chown")
                .arg("postgres:postgres")
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(chown.success(), "{test}: cannot chown {:?}", dir.path());
        }
        let server = PrivatePostgres {
            bin,
            data: dir.path().join("data"),
            socket_dir: dir.path().to_path_buf(),
            port: free_port(),
            as_root,
            _dir: dir,
        };
        let initdb = server
            .as_owner("initdb")
            .arg("-D")
            .arg(&server.data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-sync",
                "--no-instructions",
            ])
            .output()
            .unwrap();
        assert!(
            initdb.status.success(),
            "{test}: initdb failed: {}",
            String::from_utf8_lossy(&initdb.stderr)
        );
        let mut server = server;
        server.start_again();
        Some(server)
    }

    /// A server program run as the cluster's owner: `postgres` when this runs as root.
    fn as_owner(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        let mut command = if self.as_root {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        };
        command.stdin(Stdio::null());
        command
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server on its port and waits until it takes connections.
    fn start_again(&mut self) {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c max_connections=100 -c fsync=off -c full_page_writes=off",
            self.port,
            self.socket_dir.display()
        );
        let started = self
            .as_owner("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(self.socket_dir.join("server.log"))
            .args(["-w", "-t", "20", "-o", &options, "start"])
            .output()
            .unwrap();
        let log = std::fs::read_to_string(self.socket_dir.join("server.log")).unwrap_or_default();
        assert!(
            started.status.success(),
            "pg_ctl start failed: {}\n{log}",
            String::from_utf8_lossy(&started.stderr)
        );
    }

    /// Stops the server at once, as a crash would: its sessions end without a word.
    fn stop_immediately(&mut self) {
        let _ = self
            .as_owner("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-w", "-t", "20", "-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for PrivatePostgres {
    /// Stops the server whatever state the test left it in (pg_ctl finds a stopped one stopped).
    fn drop(&mut self) {
        self.stop_immediately();
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin` that holds `initdb` and `pg_ctl`.
fn newest_server_programs() -> Option<PathBuf> {
    let mut found: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let version: Vec<u32> = entry
                .file_name()
                .to_str()?
                .split('.')
                .map(|part| part.parse().ok())
                .collect::<Option<_>>()?;
            let bin = entry.path().join("bin");
            (bin.join("initdb").is_file() && bin.join("pg_ctl").is_file()).then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

fn user_exists(name: &str) -> bool {
    Command::new("id")
        .arg("-u")
        .arg(name)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// A loopback port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

const TASKS: usize = 30;
const PARTITIONS: usize = 3;

/// The Keel processes of a test, each with its log.
struct Fleet {
    root: PathBuf,
    url: String,
    pipeline: PathBuf,
    processes: Vec<(String, Served, PathBuf)>,
}

impl Fleet {
    /// Starts `keel serve` with `role` (`None`: everything in one process) and waits until it
    /// is ready: an active scheduler or a plain serve logs its API, a worker its slots.
    fn spawn(&mut self, role: Option<&str>, limit: Duration) {
        let name = format!("{}-{}", role.unwrap_or("serve"), self.processes.len() + 1);
        let log = self.root.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let mut command = Command::new(keel_path());
        command
            .current_dir(&self.root)
            .args(["serve", "--state", &self.url, "--grace", "1s"])
            .env_remove("KEEL_API_TOKEN")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        if let Some(role) = role {
            command.args(["--role", role]);
        }
        if role == Some("worker") {
            command.args(["--lease", "2000ms", "--slots", "4"]);
        } else {
            command.arg(&self.pipeline).args(["--addr", "127.0.0.1:0"]);
        }
        let served = Served(command.spawn().unwrap());
        let ready = if role == Some("worker") {
            "slots, lease"
        } else {
            "API on"
        };
        wait_for(&name, limit, || {
            std::fs::read_to_string(&log).is_ok_and(|text| text.contains(ready))
        });
        self.processes.push((name, served, log));
    }

    /// Panics naming every Keel process that exited, with the end of its log.
    fn assert_all_alive(&mut self, when: &str) {
        let mut dead = Vec::new();
        for (name, served, log) in &mut self.processes {
            if let Ok(Some(exit)) = served.0.try_wait() {
                let text = std::fs::read_to_string(&*log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                dead.push(format!("{name} exited ({exit}):\n{}", tail.join("\n")));
            }
        }
        assert!(dead.is_empty(), "{when}: {}", dead.join("\n\n"));
    }

    fn log_of(&self, prefix: &str) -> String {
        self.processes
            .iter()
            .filter(|(name, _, _)| name.starts_with(prefix))
            .map(|(_, _, log)| std::fs::read_to_string(log).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Runs the pipeline over three partitions on the fleet `roles` make, restarts the server
/// mid-run and checks that everything carried on, then that the fleet's logs pass `logs`.
fn restart_mid_run(test: &str, roles: &[Option<&str>], downtime: Duration, logs: impl Fn(&Fleet)) {
    let started = Instant::now();
    // Every wait below ends by then, so a Keel that does not carry on fails the test in time.
    let deadline = started + Duration::from_secs(80);
    let left = || deadline.saturating_duration_since(Instant::now());
    let Some(mut server) = PrivatePostgres::start(test) else {
        return;
    };
    eprintln!(
        "{test}: private PostgreSQL ({}) up in {} ms",
        server.bin.display(),
        started.elapsed().as_millis()
    );
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    std::fs::create_dir(root.join("commits")).unwrap();
    let pipeline = root.join("keel.toml");
    std::fs::write(&pipeline, pipeline_toml(&root, TASKS)).unwrap();
    let mut fleet = Fleet {
        root: root.clone(),
        url: server.url(),
        pipeline: pipeline.clone(),
        processes: Vec::new(),
    };
    for role in roles {
        fleet.spawn(*role, left());
    }
    let last = format!("2026-02-{PARTITIONS:02}");
    let queued = Command::new(keel_path())
        .current_dir(&root)
        .args(["run", "--detach", "--state", &fleet.url])
        .args(["--from", "2026-02-01", "--to", &last])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert!(
        queued.status.success(),
        "{}",
        String::from_utf8_lossy(&queued.stderr)
    );
    // Mid-run: some results committed, and attempts running (on workers, held under leases).
    let ledger = root.join("ledger");
    let committed = || {
        std::fs::read_to_string(&ledger)
            .map(|text| text.lines().count())
            .unwrap_or(0)
    };
    wait_for("the first results", left(), || committed() >= 6);
    if roles.contains(&Some("worker")) {
        let url = keel_store::PostgresUrl::parse(&fleet.url).unwrap();
        let queue = keel_store::PostgresStore::open(&url).unwrap().work_queue(1);
        wait_for("workers holding leases", left(), || {
            block_on(queue.cluster())
                .is_ok_and(|view| view.workers.iter().any(|worker| !worker.leases.is_empty()))
        });
    }
    let before = committed();
    server.stop_immediately();
    let stopped_at = Instant::now();
    std::thread::sleep(downtime);
    server.start_again();
    let back_at = wall_millis();
    eprintln!(
        "{test}: PostgreSQL stopped (-m immediate) with {before} of {} results committed, back up {} ms later on the same port",
        TASKS * PARTITIONS,
        stopped_at.elapsed().as_millis()
    );
    // Every process is checked on each look: one that gave up on the database (a scheduler
    // stops when it cannot take its lock back within 5 s) fails the test at once.
    wait_for("every run to finish after the restart", left(), || {
        fleet.assert_all_alive("after the restart");
        // A look starts a `keel status`: a few a second are enough.
        std::thread::sleep(Duration::from_millis(200));
        let status = status(&root, &fleet.url, &pipeline);
        status["runs"].as_array().is_some_and(|runs| {
            runs.len() == PARTITIONS
                && runs
                    .iter()
                    .all(|run| run["state"] != "running" && run["state"] != "queued")
        })
    });
    let finished_in = Instant::now().duration_since(stopped_at);
    fleet.assert_all_alive("once every run finished");
    let status = status(&root, &fleet.url, &pipeline);
    let mut runs = Vec::new();
    for run in status["runs"].as_array().unwrap() {
        assert_eq!(run["state"], "succeeded", "{run}");
        for task in run["tasks"].as_array().unwrap() {
            assert_eq!(task["outcome"], "succeeded", "{task}");
        }
        runs.push(keel_model::RunId(run["id"].as_i64().unwrap()));
    }
    // Exactly once: one ledger line per task and partition.
    let text = std::fs::read_to_string(&ledger).unwrap();
    let mut by_key: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for line in text.lines() {
        let (key, attempt) = line.rsplit_once(' ').unwrap();
        by_key.entry(key).or_default().push(attempt);
    }
    assert_eq!(by_key.len(), TASKS * PARTITIONS, "{text}");
    for (key, attempts) in &by_key {
        assert_eq!(
            attempts.len(),
            1,
            "{key} committed by attempts {attempts:?}"
        );
    }
    // The first attempt Keel recorded finished after the server came back, and how many
    // attempts the outage cost (ended lost and retried).
    let url = keel_store::PostgresUrl::parse(&fleet.url).unwrap();
    let store = keel_store::PostgresStore::open(&url).unwrap();
    let mut attempts = Vec::new();
    for run in runs {
        attempts.extend(block_on(store.attempts(run)).unwrap());
    }
    let first_after = attempts
        .iter()
        .filter_map(|attempt| attempt.finished_at)
        .filter(|finished| *finished >= back_at)
        .min()
        .expect("attempts finished after the server came back");
    let lost = attempts
        .iter()
        .filter(|attempt| attempt.outcome == Some(keel_model::Outcome::Lost))
        .count();
    eprintln!(
        "{test}: first attempt recorded as finished {} ms after the server was back up; every run done {} ms after the stop; {} attempts in all, {lost} ended lost and were retried",
        first_after - back_at,
        finished_in.as_millis(),
        attempts.len()
    );
    for (name, _, log) in &fleet.processes {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        for line in text.lines().filter(|line| {
            line.contains("PostgreSQL")
                || line.contains("database")
                || line.contains("cannot claim")
                || line.contains("heartbeat failed")
        }) {
            eprintln!("{test}: {name}: {line}");
        }
    }
    // The outage cost no attempt: leases that lapsed while the server was away were renewed
    // once it was back, before anything reaped them.
    assert_eq!(lost, 0, "attempts lost to the restart");
    eprintln!(
        "{test}: done in {} ms in all",
        started.elapsed().as_millis()
    );
    logs(&fleet);
    // The fleet goes first, then its files, then the server.
    drop(fleet);
    drop(dir);
    drop(server);
}

fn wall_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[test]
fn a_scheduler_and_two_workers_outlive_a_postgres_restart_and_commit_every_result_once() {
    restart_mid_run(
        "pg_restart_cluster",
        &[Some("scheduler"), Some("worker"), Some("worker")],
        DOWNTIME,
        check_cluster_logs,
    );
}

/// The scheduler noticed the outage and took its lock back by itself. The workers need not say
/// anything: their calls wait in their connection pool while the server refuses connections,
/// and carry on once it is back (every run finished, and only workers run attempts).
fn check_cluster_logs(fleet: &Fleet) {
    let scheduler = fleet.log_of("scheduler");
    assert!(
        scheduler.contains("lost the connection holding the executor lock")
            && scheduler.contains("executor lock in PostgreSQL is held again"),
        "the scheduler did not lose and take back its lock:\n{scheduler}"
    );
}

#[test]
fn a_plain_serve_outlives_a_postgres_restart_and_commits_every_result_once() {
    restart_mid_run("pg_restart_serve", &[None], LONG_DOWNTIME, check_serve_logs);
}

fn check_serve_logs(fleet: &Fleet) {
    let serve = fleet.log_of("serve");
    assert!(
        serve.contains("lost the connection holding the executor lock")
            && serve.contains("executor lock in PostgreSQL is held again"),
        "keel serve did not lose and take back its lock:\n{serve}"
    );
}
