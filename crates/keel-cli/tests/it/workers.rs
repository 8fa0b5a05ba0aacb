//! Distributed workers on PostgreSQL with real processes on loopback: two schedulers (one
//! active, one standby) and three workers run a pipeline while workers and the active scheduler
//! are killed with SIGKILL at random points and restarted. Checked against a ledger the tasks
//! append to: every task of every partition committed its result exactly once, no run was lost,
//! and every attempt a dead worker held was retried. Skipped without a PostgreSQL server outside
//! CI, a failure under `CI=true` (see `keel_store::testing`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use keel_store::testing::TestDatabase;
use serde_json::Value;

use crate::support::{Served, keel_path, wait_for};

/// Tasks × partitions: the full size, 200 × 5 (1,000 attempts), unless `KEEL_WORKERS_SCALE`
/// asks for another (`12x3` for a quick run by hand).
fn scale() -> (usize, usize) {
    std::env::var("KEEL_WORKERS_SCALE")
        .ok()
        .and_then(|text| {
            let (tasks, partitions) = text.split_once('x')?;
            Some((tasks.parse().ok()?, partitions.parse().ok()?))
        })
        .filter(|(tasks, partitions)| *tasks >= 2 && (1..=28).contains(partitions))
        .unwrap_or((200, 5))
}

/// Each task sleeps a little (so kills land mid-attempt), then commits its result once per
/// partition, keyed by Keel's idempotency key: its line is written to a file of the attempt's
/// own, then hard-linked as the commit (`ln` makes it whole or not at all, and fails when the
/// commit exists), and only the attempt that made the link appends to the ledger. An attempt
/// that finds its commit made (its earlier attempt committed, then its worker died before
/// reporting) succeeds without writing. A kill between the link and the ledger line leaves the
/// commit without its line, never a line twice.
pub(crate) fn pipeline_toml(root: &Path, tasks: usize) -> String {
    let mut text = String::from(
        "[pipeline]\nname = \"fleet\"\npartition = \"date\"\n\n[defaults]\nconcurrency = 16\nretries = { attempts = 2, initial = \"10ms\", max = \"50ms\" }\n\n[phases.work]\n[phases.sum]\nafter = [\"work\"]\n\n",
    );
    let ledger = root.join("ledger");
    let commits = root.join("commits");
    for index in 0..tasks {
        let phase = if index == tasks - 1 { "sum" } else { "work" };
        text.push_str(&format!(
            "[tasks.t{index:03}]\nphase = \"{phase}\"\ncommand = [\"sh\", \"-c\", \"sleep 0.{delay}; k=\\\"$KEEL_IDEMPOTENCY_KEY\\\"; own='{commits}'/.\\\"$k.$KEEL_ATTEMPT.$$\\\"; echo \\\"$k $KEEL_ATTEMPT\\\" > \\\"$own\\\"; if ln \\\"$own\\\" '{commits}'/\\\"$k\\\" 2>/dev/null; then echo \\\"$k $KEEL_ATTEMPT\\\" >> '{ledger}'; fi; rm -f \\\"$own\\\"\"]\n\n",
            delay = 2 + index % 5,
            commits = commits.display(),
            ledger = ledger.display(),
        ));
    }
    text
}

struct Cluster {
    root: PathBuf,
    url: String,
    pipeline: PathBuf,
    logs: usize,
    /// The `--lease` of the workers it starts: they renew it every third of it.
    worker_lease: &'static str,
}

impl Cluster {
    fn new(root: &Path, url: &str, pipeline: &Path) -> Cluster {
        Cluster {
            root: root.to_path_buf(),
            url: url.to_string(),
            pipeline: pipeline.to_path_buf(),
            logs: 0,
            worker_lease: "1500ms",
        }
    }

    /// Starts a scheduler and waits until it is the active one (it serves its API).
    fn active_scheduler(&mut self) -> (Served, PathBuf) {
        let (scheduler, log) = self.spawn("scheduler");
        wait_for("the active scheduler", Duration::from_secs(20), || {
            std::fs::read_to_string(&log).is_ok_and(|text| text.contains("API on"))
        });
        (scheduler, log)
    }

    fn spawn(&mut self, role: &str) -> (Served, PathBuf) {
        self.logs += 1;
        let log = self.root.join(format!("{role}-{}.log", self.logs));
        let file = std::fs::File::create(&log).unwrap();
        let mut command = Command::new(keel_path());
        command
            .current_dir(&self.root)
            .args([
                "serve", "--role", role, "--state", &self.url, "--grace", "1s",
            ])
            .env_remove("KEEL_API_TOKEN")
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        if role == "worker" {
            command.args(["--lease", self.worker_lease, "--slots", "4"]);
        } else {
            command.arg(&self.pipeline).args(["--addr", "127.0.0.1:0"]);
        }
        (Served(command.spawn().unwrap()), log)
    }
}

fn sigkill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

pub(crate) fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

pub(crate) fn status(root: &Path, url: &str, pipeline: &Path) -> Value {
    let output = Command::new(keel_path())
        .current_dir(root)
        .args(["status", "--json", "--state", url])
        .arg(pipeline)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// A tiny deterministic generator: the seed is printed, so a failure can be replayed.
struct Xorshift(u64);

impl Xorshift {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }
}

#[test]
fn workers_and_the_scheduler_killed_at_random_lose_no_run_and_commit_every_result_once() {
    let Some(database) = TestDatabase::create("workers_and_the_scheduler_killed_at_random") else {
        return;
    };
    let seed = std::env::var("KEEL_WORKERS_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("workers test: seed {seed} (KEEL_WORKERS_SEED to replay)");
    let mut random = Xorshift(seed);
    let (tasks, partitions) = scale();
    let last = format!("2026-02-{partitions:02}");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    std::fs::create_dir(root.join("commits")).unwrap();
    let pipeline = root.join("keel.toml");
    std::fs::write(&pipeline, pipeline_toml(&root, tasks)).unwrap();
    let mut cluster = Cluster::new(&root, database.url(), &pipeline);
    let (mut active, _) = cluster.active_scheduler();
    let (mut standby, standby_log) = cluster.spawn("scheduler");
    wait_for("the standby", Duration::from_secs(20), || {
        std::fs::read_to_string(&standby_log).is_ok_and(|log| log.contains("standby scheduler"))
    });
    let mut workers: Vec<Served> = (0..3).map(|_| cluster.spawn("worker").0).collect();
    let queued = Command::new(keel_path())
        .current_dir(&root)
        .args(["run", "--detach", "--state", database.url()])
        .args(["--from", "2026-02-01", "--to", &last])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert!(
        queued.status.success(),
        "{}",
        String::from_utf8_lossy(&queued.stderr)
    );
    let queue = keel_store::PostgresStore::open(&database.postgres_url())
        .unwrap()
        .work_queue(1);
    // Kill a worker that holds attempts, three times, each at a random moment; a new worker
    // takes its place.
    let mut worker_kills = 0;
    let patience = Duration::from_secs(40 + (tasks * partitions / 10) as u64);
    let deadline = Instant::now() + patience;
    let mut failover = None;
    while worker_kills < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100 + random.below(400)));
        let view = block_on(queue.cluster()).unwrap();
        let Some(busy) = view
            .workers
            .iter()
            .find(|worker| !worker.leases.is_empty() && worker.stopped_at.is_none())
        else {
            continue;
        };
        let Some(index) = workers
            .iter()
            .position(|served| i64::from(served.0.id()) == busy.pid)
        else {
            continue;
        };
        sigkill(&mut workers[index].0);
        worker_kills += 1;
        workers[index] = cluster.spawn("worker").0;
        // Once, between two worker kills, the active scheduler goes too.
        if worker_kills == 1 {
            std::thread::sleep(Duration::from_millis(random.below(300)));
            let killed_at = Instant::now();
            sigkill(&mut active.0);
            wait_for("the standby to take over", Duration::from_secs(20), || {
                std::fs::read_to_string(&standby_log)
                    .is_ok_and(|log| log.contains("active scheduler now"))
            });
            failover = Some(killed_at.elapsed());
            std::mem::swap(&mut active, &mut standby);
            // The killed scheduler comes back, as a standby now.
            standby = cluster.spawn("scheduler").0;
        }
    }
    assert_eq!(worker_kills, 3, "the workers never held attempts to kill");
    let failover = failover.expect("the active scheduler was killed");
    eprintln!(
        "workers test: the standby took over {} ms after the active scheduler was killed",
        failover.as_millis()
    );
    wait_for("every run to finish", patience, || {
        let status = status(&root, database.url(), &pipeline);
        status["runs"].as_array().is_some_and(|runs| {
            runs.len() == partitions
                && runs
                    .iter()
                    .all(|run| run["state"] != "running" && run["state"] != "queued")
        })
    });
    let status = status(&root, database.url(), &pipeline);
    for run in status["runs"].as_array().unwrap() {
        assert_eq!(run["state"], "succeeded", "{run}");
        for task in run["tasks"].as_array().unwrap() {
            assert_eq!(task["outcome"], "succeeded", "{task}");
        }
    }
    // Exactly once: one whole commit per task and partition, and never a ledger line twice.
    let mut commits = Vec::new();
    for entry in std::fs::read_dir(root.join("commits")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let line = std::fs::read_to_string(root.join("commits").join(&name)).unwrap();
        assert!(
            line.starts_with(&format!("{name} ")),
            "commit {name}: {line:?}"
        );
        commits.push(name);
    }
    assert_eq!(commits.len(), tasks * partitions, "{commits:?}");
    let ledger = std::fs::read_to_string(root.join("ledger")).unwrap();
    let mut committed: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in ledger.lines() {
        let (key, attempt) = line.rsplit_once(' ').unwrap();
        committed
            .entry(key.to_string())
            .or_default()
            .push(attempt.to_string());
    }
    for (key, attempts) in &committed {
        assert_eq!(
            attempts.len(),
            1,
            "{key} committed by attempts {attempts:?}"
        );
    }
    // The attempts the killed workers held lapsed and were retried.
    let view = block_on(queue.cluster()).unwrap();
    assert!(view.reaped >= 3, "reaped {} leases", view.reaped);
    // The API and the dashboard of the scheduler now active show the whole cluster: the three
    // live workers (and the three killed ones, their heartbeats stopped).
    let log = std::fs::read_to_string(&standby_log).unwrap();
    let addr = log
        .split("API on http://")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .expect("the new active scheduler logs its API")
        .to_string();
    let cluster = crate::api::request(&addr, "GET", "/api/cluster", &[], None);
    assert_eq!(cluster.status, 200);
    let cluster = cluster.json();
    let listed = cluster["workers"].as_array().unwrap();
    assert_eq!(listed.len(), 6, "{cluster}");
    let pids: Vec<i64> = listed
        .iter()
        .map(|worker| worker["pid"].as_i64().unwrap())
        .collect();
    for served in &workers {
        let pid = i64::from(served.0.id());
        assert!(pids.contains(&pid), "worker {pid} is missing: {cluster}");
    }
    assert!(
        cluster["queue"]["reaped"].as_i64().unwrap() >= 3,
        "{cluster}"
    );
    let page = crate::api::request(&addr, "GET", "/ui/fleet/cluster", &[], None);
    assert_eq!(page.status, 200);
    assert!(page.text().contains("Workers"), "{}", page.text());
    drop(standby);
    drop(active);
    drop(workers);
}

/// The address a serve logged for its cluster view or its API, once it has.
fn logged_addr(log: &Path, marker: &str) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    let rest = text.split(marker).nth(1)?;
    Some(
        rest.split(|c: char| c.is_whitespace() || c == ';' || c == ')')
            .next()?
            .to_string(),
    )
}

/// Any serve of the cluster shows the whole of it: a worker and a standby scheduler, which run
/// no pipeline's API, answer `/api/cluster` and the cluster page with every worker, its leases
/// and load, read from the work queue, as the active scheduler does.
#[test]
fn a_worker_and_a_standby_scheduler_show_the_whole_cluster() {
    let Some(database) = TestDatabase::create("a_worker_and_a_standby_show_the_cluster") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let pipeline = root.join("keel.toml");
    let mut text =
        String::from("[pipeline]\nname = \"view\"\npartition = \"date\"\n\n[phases.work]\n\n");
    for index in 0..4 {
        text.push_str(&format!(
            "[tasks.t{index}]\nphase = \"work\"\ncommand = [\"sleep\", \"3\"]\n\n"
        ));
    }
    std::fs::write(&pipeline, text).unwrap();
    let mut cluster = Cluster::new(&root, database.url(), &pipeline);
    let (active, _) = cluster.active_scheduler();
    let (standby, standby_log) = cluster.spawn("scheduler");
    let view_marker = "cluster view on http://";
    wait_for(
        "the standby's cluster view",
        Duration::from_secs(20),
        || logged_addr(&standby_log, view_marker).is_some(),
    );
    let standby_addr = logged_addr(&standby_log, view_marker).unwrap();
    let worker_log = root.join("worker-view.log");
    let file = std::fs::File::create(&worker_log).unwrap();
    let worker = Served(
        Command::new(keel_path())
            .current_dir(&root)
            .args(["serve", "--role", "worker", "--state", database.url()])
            .args(["--slots", "2", "--addr", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap(),
    );
    wait_for("the worker's cluster view", Duration::from_secs(20), || {
        logged_addr(&worker_log, view_marker).is_some()
    });
    let worker_addr = logged_addr(&worker_log, view_marker).unwrap();
    let queued = Command::new(keel_path())
        .current_dir(&root)
        .args([
            "run",
            "--detach",
            "--state",
            database.url(),
            "--partition",
            "2026-02-01",
        ])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert!(
        queued.status.success(),
        "{}",
        String::from_utf8_lossy(&queued.stderr)
    );
    let pid = i64::from(worker.0.id());
    let holds = |addr: &str| {
        let reply = crate::api::request(addr, "GET", "/api/cluster", &[], None);
        assert_eq!(reply.status, 200, "{}", reply.text());
        let view = reply.json();
        view["workers"].as_array().unwrap().iter().any(|listed| {
            listed["pid"].as_i64() == Some(pid)
                && listed["leases"]
                    .as_array()
                    .is_some_and(|leases| leases.len() == 2)
        })
    };
    // The worker runs two attempts (its two slots) for three seconds: both views show it so.
    wait_for(
        "the worker's view to show its two leases",
        Duration::from_secs(30),
        || holds(&worker_addr),
    );
    assert!(holds(&standby_addr), "the standby shows the same cluster");
    for (addr, role) in [
        (&worker_addr, "worker"),
        (&standby_addr, "standby scheduler"),
    ] {
        let page = crate::api::request(addr, "GET", "/ui/cluster", &[], None);
        assert_eq!(page.status, 200, "{role}: {}", page.text());
        let html = page.text();
        assert!(
            html.contains("Workers") && html.contains(&format!("<td>{pid}</td>")),
            "{role}: {html}"
        );
        assert!(
            html.contains(&format!("seen from a {role}")),
            "{role}: {html}"
        );
        let health = crate::api::request(addr, "GET", "/health", &[], None).json();
        assert_eq!(health["role"], role);
        let ready = crate::api::request(addr, "GET", "/ready", &[], None);
        assert_eq!(ready.status, 200, "{role}: {}", ready.text());
        let missing = crate::api::request(addr, "GET", "/api/pipelines", &[], None);
        assert_eq!(missing.status, 404);
        assert!(
            missing
                .text()
                .contains("the active scheduler serves the whole API"),
            "{role}: {}",
            missing.text()
        );
        let css = crate::api::request(addr, "GET", "/ui/static/keel.css", &[], None);
        assert_eq!(css.status, 200);
    }
    drop(worker);
    drop(standby);
    drop(active);
}

/// Two active schedulers must never run one state: when the session holding the active
/// scheduler's executor lock ends under it while the database stays up (here its backend is
/// terminated), the standby takes the lock, and the scheduler that lost it stops at once when
/// it finds the lock taken, rather than waiting as it does while the server is away.
#[test]
fn a_scheduler_whose_lock_a_standby_took_stops_at_once() {
    let Some(database) = TestDatabase::create("a_scheduler_whose_lock_a_standby_took") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let pipeline = root.join("keel.toml");
    std::fs::write(
        &pipeline,
        "[pipeline]\nname = \"fence\"\npartition = \"date\"\n\n[phases.work]\n\n[tasks.t]\nphase = \"work\"\ncommand = [\"true\"]\n",
    )
    .unwrap();
    let mut cluster = Cluster::new(&root, database.url(), &pipeline);
    let (mut active, active_log) = cluster.active_scheduler();
    // The standby as on another machine: a state directory of its own, so that only the lock
    // in PostgreSQL stands between them (on one machine the state directory's lock file does).
    let other = root.join("other-machine");
    std::fs::create_dir(&other).unwrap();
    std::fs::copy(&pipeline, other.join("keel.toml")).unwrap();
    let mut elsewhere = Cluster::new(&other, database.url(), &other.join("keel.toml"));
    let (standby, standby_log) = elsewhere.spawn("scheduler");
    wait_for("the standby", Duration::from_secs(20), || {
        std::fs::read_to_string(&standby_log).is_ok_and(|log| log.contains("standby scheduler"))
    });
    // The executor lock ("KEEL" and 3) shows in pg_locks as its two halves. Its session is
    // ended; the standby tries the lock five times a second and the scheduler that lost it once
    // a second, so the standby wins the race nearly always; when it does not, it is run again.
    let mut lost_at = None;
    for _ in 0..5 {
        let terminated = Command::new("psql")
            .arg(database.url())
            .args(["-tAc", "SELECT count(pg_terminate_backend(pid)) FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = 1262830924 AND objid = 3 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"])
            .output()
            .expect("psql runs");
        assert!(
            terminated.status.success(),
            "{}",
            String::from_utf8_lossy(&terminated.stderr)
        );
        let ended = Instant::now();
        let deadline = ended + Duration::from_secs(5);
        while Instant::now() < deadline {
            if std::fs::read_to_string(&standby_log)
                .is_ok_and(|log| log.contains("active scheduler now"))
            {
                lost_at = Some(ended);
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if lost_at.is_some() {
            break;
        }
    }
    let lost_at = lost_at.expect("the standby took the lock over");
    wait_for("the old scheduler to stop", Duration::from_secs(20), || {
        matches!(active.0.try_wait(), Ok(Some(_)))
    });
    let stopped_after = lost_at.elapsed();
    let code = active.0.wait().unwrap().code();
    let log = std::fs::read_to_string(&active_log).unwrap();
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains("another Keel holds the executor lock in PostgreSQL now"),
        "{log}"
    );
    eprintln!(
        "fence test: the scheduler whose lock was taken stopped {} ms after its session ended",
        stopped_after.as_millis()
    );
    drop(standby);
}

/// Roles coordinate through PostgreSQL: on an SQLite state they are refused with what to do,
/// before anything runs or is locked.
#[test]
fn a_role_on_an_sqlite_state_is_refused_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    crate::support::write_pipeline(
        dir.path(),
        "[pipeline]\nname = \"solo\"\npartition = \"date\"\n\n[phases.a]\n\n[tasks.t]\nphase = \"a\"\ncommand = [\"true\"]\n",
    );
    for role in ["worker", "scheduler"] {
        let output = Command::new(keel_path())
            .current_dir(dir.path())
            .args(["serve", "--role", role, "--addr", "127.0.0.1:0"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{role}: {stderr}");
        assert!(
            stderr.contains(&format!("--role {role} needs a PostgreSQL state"))
                && stderr.contains("--state postgres://"),
            "{role}: {stderr}"
        );
    }
    // The worker's refusal comes before anything is made.
    assert!(!dir.path().join(".keel-worker").exists());
}

/// A worker watches its attempts from threads of its own, with no supervisor process per
/// attempt: what a task prints and its result still reach the scheduler, a cancel stops a task
/// that runs on a worker, and a worker killed with SIGKILL takes its running tasks with it
/// (their leaders die with the threads watching them) instead of leaving them to run unwatched.
/// The worker's lease is ten minutes, so its heartbeats are 200 s apart: the cancel reaches it
/// by the queue's notice, well before the tasks' own 60 s are up.
#[test]
fn a_task_on_a_worker_is_logged_cancelled_and_ends_with_its_killed_worker() {
    let Some(database) = TestDatabase::create("a_task_on_a_worker_ends_with_its_worker") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let pipeline = root.join("keel.toml");
    let pids = root.join("pids");
    std::fs::create_dir(&pids).unwrap();
    let mut text = String::from(
        "[pipeline]\nname = \"bound\"\npartition = \"date\"\n\n[phases.work]\n\n[tasks.talk]\nphase = \"work\"\ncommand = [\"sh\", \"-c\", \"echo hello from the worker; printf '{{\\\"rows\\\": 7}}' > \\\"$KEEL_RESULT\\\"\"]\n\n",
    );
    // A log longer than what a worker uploads (256 KiB).
    text.push_str("[tasks.loud]\nphase = \"work\"\ncommand = [\"sh\", \"-c\", \"head -c 300000 /dev/zero | tr '\\\\0' x\"]\n\n");
    for name in ["a", "b"] {
        text.push_str(&format!(
            "[tasks.{name}]\nphase = \"work\"\ncommand = [\"sh\", \"-c\", \"echo $$ > '{pids}'/{name}-$KEEL_PARTITION; exec sleep 60\"]\n\n",
            pids = pids.display()
        ));
    }
    std::fs::write(&pipeline, text).unwrap();
    let mut cluster = Cluster::new(&root, database.url(), &pipeline);
    cluster.worker_lease = "10m";
    let (scheduler, _) = cluster.active_scheduler();
    let (mut worker, _) = cluster.spawn("worker");
    // `keel COMMAND PIPELINE ARGS… --state URL`
    let keel = |command: &str, args: &[&str]| {
        let output = Command::new(keel_path())
            .current_dir(&root)
            .arg(command)
            .arg(&pipeline)
            .args(args)
            .args(["--state", database.url()])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "keel {command} {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let running = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| stat.rsplit(')').next().map(str::to_string))
            .is_some_and(|rest| !rest.trim_start().starts_with(['Z', 'X']))
    };
    let started = |partition: &str| -> Vec<i32> {
        let mut found = Vec::new();
        wait_for(
            "both sleeping tasks to start",
            Duration::from_secs(30),
            || {
                found = ["a", "b"]
                    .iter()
                    .filter_map(|name| {
                        std::fs::read_to_string(pids.join(format!("{name}-{partition}")))
                            .ok()?
                            .trim()
                            .parse()
                            .ok()
                    })
                    .collect();
                found.len() == 2
            },
        );
        found
    };
    let gone = |pids: &[i32], why: &str| {
        wait_for(why, Duration::from_secs(10), || {
            !pids.iter().any(|pid| running(*pid))
        });
    };

    keel("run", &["--detach", "--partition", "2026-02-01"]);
    let first = started("2026-02-01");
    wait_for("talk and loud to succeed", Duration::from_secs(30), || {
        let view = status(&root, database.url(), &pipeline);
        ["talk", "loud"]
            .iter()
            .all(|task| has_task_ended(&view, task, "succeeded"))
    });
    let logged = keel("logs", &["talk", "--partition", "2026-02-01"]);
    assert!(logged.contains("hello from the worker"), "{logged}");
    let cancelled_at = std::time::Instant::now();
    keel("cancel", &["--partition", "2026-02-01"]);
    gone(&first, "the cancelled tasks on the worker to end");
    // The tasks sleep 60 s and the worker's next heartbeat is 200 s away.
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(30),
        "the cancel took {:?} to stop the tasks: it did not reach the worker by notice",
        cancelled_at.elapsed()
    );
    let view = status(&root, database.url(), &pipeline).to_string();
    assert!(view.contains("\"cancelled\""), "{view}");
    assert!(
        view.contains("\"rows\":7"),
        "talk's rows reached the state: {view}"
    );
    // The worker keeps only what the scheduler does not have: the directory of the attempt
    // whose log was longer than the upload. The others were emptied for later attempts.
    let mut logs = Vec::new();
    let mut pending = vec![root.join(".keel-worker")];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                pending.push(entry.path());
            } else {
                logs.push((entry.path(), entry.metadata().unwrap().len()));
            }
        }
    }
    assert_eq!(logs.len(), 1, "{logs:?}");
    assert!(
        logs[0].0.ends_with("output.log") && logs[0].1 == 300_000,
        "{logs:?}"
    );

    keel("run", &["--detach", "--partition", "2026-02-02"]);
    let second = started("2026-02-02");
    sigkill(&mut worker.0);
    gone(&second, "the tasks of the killed worker to end with it");
    drop(scheduler);
}

/// Whether some run in `view` (`keel status --json`) has `task` ended with `outcome`.
fn has_task_ended(view: &Value, task: &str, outcome: &str) -> bool {
    view["runs"].as_array().into_iter().flatten().any(|run| {
        run["tasks"].as_array().into_iter().flatten().any(|entry| {
            entry["name"].as_str() == Some(task) && entry["outcome"].as_str() == Some(outcome)
        })
    })
}
