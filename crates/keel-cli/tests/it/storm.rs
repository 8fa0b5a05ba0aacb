//! A crash storm: `keel run`, its attempt host and the attempts' supervisors are killed with
//! SIGKILL, picked at random from a seeded generator at random instants, at least 100 times over
//! at least 200 tasks, and every task must still succeed exactly once, never beside itself.
//!
//! Each task appends `start` and `end` lines (task, partition, attempt, pid, nanoseconds) to one
//! ledger opened with `O_APPEND`. It also takes a `flock` on a file of its own (task and
//! partition) that every process of the execution inherits, so the lock stays held as long as
//! anything of the execution lives; an execution that finds it taken writes a `busy` line. That
//! catches an overlap even when the earlier execution was killed before it could write its end.
//!
//! Victims are found in `/proc`: the `keel run` this test started; its attempt host (a
//! `keel __attempt __host` process whose parent is that `keel run`, remembered after `keel`
//! dies); and supervisors, the `keel __attempt` processes that hold an attempt's `attempt.lock`
//! in this test's state directory. The lock's path names the run, the task and the attempt, so
//! the storm knows which attempt each supervisor kill hit.
//!
//! A killed supervisor makes its attempt `lost` and Keel retries it; after five losses in a row
//! Keel gives a task up on purpose, as attempts that cannot run. The storm therefore spares a
//! task whose supervisors it has already killed three times, so that this limit never decides
//! the outcome.
//!
//! `KEEL_STORM_SEED=N` replays a seed's choices (the instants still depend on the machine).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use keel_model::{Outcome, RunId};
use keel_store::{AttemptRecord, SqliteStore, Store};
use serde_json::Value;

use crate::support::{keel_path, write_pipeline};

const TASKS_PER_PARTITION: usize = 60;
const MIN_TASKS: usize = 200;
const MIN_KILLS: usize = 100;
/// The storm gives up, and fails, past this: Keel must never wedge.
const TIME_LIMIT: Duration = Duration::from_secs(150);
/// Supervisor kills per task after which the storm spares the task (see the module comment).
const SPARE_AFTER: usize = 3;

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// A small deterministic generator for victims and instants.
struct Xorshift(u64);

impl Xorshift {
    fn seeded() -> (Xorshift, u64) {
        let seed = std::env::var("KEEL_STORM_SEED")
            .ok()
            .and_then(|text| text.parse().ok())
            .unwrap_or_else(|| (now_ns() as u64) | 1);
        (Xorshift(seed | 1), seed)
    }

    fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % bound
    }

    fn millis(&mut self, low: u64, high: u64) -> Duration {
        Duration::from_millis(low + self.below(high - low + 1))
    }
}

/// Sixty tasks in three phases, the last five of each phase a chain. Each sleeps 50 to 300 ms;
/// every sixth task fails (exit 1) on its first attempt and another sixth answers not ready
/// (exit 75) on it, so retries and requeues run through the storm too.
fn storm_pipeline(root: &Path) -> String {
    let ledger = root.join("ledger");
    let locks = root.join("locks");
    let mut text = String::from(
        "[pipeline]\nname = \"storm\"\ntimezone = \"UTC\"\n\n[defaults]\nconcurrency = 8\ntimeout = \"60s\"\nretries = { attempts = 3, initial = \"10ms\", max = \"50ms\" }\n\n[phases.p0]\n[phases.p1]\nafter = [\"p0\"]\n[phases.p2]\nafter = [\"p1\"]\n\n",
    );
    for task in 0..TASKS_PER_PARTITION {
        let phase = task / 20;
        let sleep_ms = 50 + (task * 53) % 251;
        let after = if task % 20 >= 15 {
            format!("after = [\"t{:02}\"]\n", task - 1)
        } else {
            String::new()
        };
        let first_attempt = |result: &str, code: u8| {
            format!(
                "if [ \"$KEEL_ATTEMPT\" = 1 ]; then echo end $id $(date +%s%N) {result} >> {ledger}; exit {code}; fi\n",
                ledger = ledger.display()
            )
        };
        let first_attempt = match task % 6 {
            1 => first_attempt("fail", 1),
            4 => first_attempt("wait", 75),
            _ => String::new(),
        };
        // No braces: Keel expands `{…}` templates in commands.
        let script = format!(
            "id=\"$KEEL_TASK $KEEL_PARTITION $KEEL_ATTEMPT $$\"
exec 9>> {locks}/$KEEL_TASK.$KEEL_PARTITION
flock -n 9 || echo busy $id $(date +%s%N) >> {ledger}
echo start $id $(date +%s%N) >> {ledger}
sleep 0.{sleep_ms:03}
{first_attempt}echo end $id $(date +%s%N) ok >> {ledger}",
            locks = locks.display(),
            ledger = ledger.display()
        );
        // Rust's debug quoting of an ASCII script is a valid TOML basic string.
        text.push_str(&format!(
            "[tasks.t{task:02}]\nphase = \"p{phase}\"\n{after}command = [\"sh\", \"-c\", {script:?}]\n\n"
        ));
    }
    text
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    Keel,
    Host,
    Supervisor,
}

/// An attempt as its directory names it: run id, task, attempt number.
type AttemptKey = (u64, String, u32);

struct Victim {
    pid: i32,
    kind: Kind,
    attempt: Option<AttemptKey>,
}

/// State letter, parent and start time (clock ticks since boot) from `/proc/PID/stat`.
fn stat(pid: i32) -> Option<(char, i32, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = text[text.rfind(')')? + 1..].split_whitespace().collect();
    Some((
        fields.first()?.chars().next()?,
        fields.get(1)?.parse().ok()?,
        fields.get(19)?.parse().ok()?,
    ))
}

fn cmdline(pid: i32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|byte| *byte == 0)
        .map(|argument| String::from_utf8_lossy(argument).into_owned())
        .collect()
}

/// The attempt whose `attempt.lock` under `attempts` the process holds open, if any.
fn held_attempt(pid: i32, attempts: &Path) -> Option<AttemptKey> {
    let entries = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    for entry in entries.flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        if !target.starts_with(attempts) || !target.ends_with("attempt.lock") {
            continue;
        }
        let dir = target.parent()?;
        let (task, number) = dir.file_name()?.to_str()?.rsplit_once('.')?;
        let run = dir.parent()?.file_name()?.to_str()?.parse().ok()?;
        return Some((run, task.to_string(), number.parse().ok()?));
    }
    None
}

/// Every attempt host and supervisor of this test's state that can still run. A host is a
/// `__host` process whose parent is the current `keel run`, or one seen so before (kept by pid
/// and start time, so a reused pid is not taken for it).
fn find_victims(
    keel: Option<i32>,
    hosts: &mut HashSet<(i32, u64)>,
    attempts: &Path,
) -> Vec<Victim> {
    let mut victims = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return victims;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse().ok())
        else {
            continue;
        };
        let Some((state, parent, started)) = stat(pid) else {
            continue;
        };
        if matches!(state, 'Z' | 'X') {
            continue;
        }
        let arguments = cmdline(pid);
        if !arguments.iter().any(|argument| argument == "__attempt") {
            continue;
        }
        let host_command = arguments.iter().any(|argument| argument == "__host");
        if host_command && (hosts.contains(&(pid, started)) || Some(parent) == keel) {
            hosts.insert((pid, started));
            victims.push(Victim {
                pid,
                kind: Kind::Host,
                attempt: None,
            });
        } else if let Some(attempt) = held_attempt(pid, attempts) {
            victims.push(Victim {
                pid,
                kind: Kind::Supervisor,
                attempt: Some(attempt),
            });
        }
    }
    victims
}

fn sigkill(pid: i32) {
    // SAFETY: kill(2) on a process of this test; ESRCH if it just ended is fine.
    unsafe { libc::kill(pid, libc::SIGKILL) };
}

/// Kills every host and supervisor of the test that still runs when dropped, so that a failing
/// storm leaves nothing behind.
struct Cleanup {
    attempts: PathBuf,
    hosts: HashSet<(i32, u64)>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for victim in find_victims(None, &mut self.hosts, &self.attempts) {
            sigkill(victim.pid);
        }
    }
}

/// One execution of a task's body as the ledger saw it.
#[derive(Debug, Clone)]
struct Execution {
    attempt: u32,
    pid: i32,
    start: u128,
    end: Option<(u128, String)>,
    busy: bool,
}

/// Each (task, partition)'s executions, sorted by start.
type Ledger = BTreeMap<(String, String), Vec<Execution>>;

/// The ledger, and the lines that made no sense.
fn read_ledger(path: &Path) -> (Ledger, Vec<String>) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut executions: BTreeMap<(String, String, u32, i32), Execution> = BTreeMap::new();
    let mut busy: HashSet<(String, String, u32, i32)> = HashSet::new();
    let mut problems = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let parsed = match fields.as_slice() {
            [what, task, partition, attempt, pid, at, rest @ ..] => {
                match (attempt.parse(), pid.parse(), at.parse::<u128>()) {
                    (Ok(attempt), Ok(pid), Ok(at)) => Some((
                        *what,
                        (task.to_string(), partition.to_string(), attempt, pid),
                        at,
                        rest.first().copied(),
                    )),
                    _ => None,
                }
            }
            _ => None,
        };
        match parsed {
            Some(("busy", key, _, None)) => {
                busy.insert(key);
            }
            Some(("start", key, at, None)) => {
                if executions.contains_key(&key) {
                    problems.push(format!("{key:?} started twice"));
                }
                executions.insert(
                    key.clone(),
                    Execution {
                        attempt: key.2,
                        pid: key.3,
                        start: at,
                        end: None,
                        busy: false,
                    },
                );
            }
            Some(("end", key, at, Some(result))) => match executions.get_mut(&key) {
                Some(execution) if execution.end.is_none() => {
                    execution.end = Some((at, result.to_string()));
                }
                _ => problems.push(format!("{key:?} ended without a start, or twice")),
            },
            _ => problems.push(format!("torn or unknown ledger line {line:?}")),
        }
    }
    for key in &busy {
        match executions.get_mut(key) {
            Some(execution) => execution.busy = true,
            None => problems.push(format!("{key:?} found its task busy and never started")),
        }
    }
    let mut by_task: BTreeMap<(String, String), Vec<Execution>> = BTreeMap::new();
    for ((task, partition, _, _), execution) in executions {
        by_task
            .entry((task, partition))
            .or_default()
            .push(execution);
    }
    for list in by_task.values_mut() {
        list.sort_by_key(|execution| execution.start);
    }
    (by_task, problems)
}

fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(future)
}

fn status_json(pipeline: &Path, partition: &str) -> Value {
    let output = Command::new(keel_path())
        .args(["status", "--json", "--partition", partition])
        .arg(pipeline)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "keel status failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: Value = serde_json::from_slice(&output.stdout).unwrap();
    json["runs"][0].clone()
}

/// What the storm did, printed at the end (and on failure).
#[derive(Default)]
struct Figures {
    seed: u64,
    kills: BTreeMap<Kind, usize>,
    partitions: usize,
    elapsed: Duration,
    executions: usize,
    attempts: usize,
    lost: usize,
    keel_starts: usize,
}

impl Figures {
    fn total_kills(&self) -> usize {
        self.kills.values().sum()
    }

    fn line(&self) -> String {
        let kind = |kind| self.kills.get(&kind).copied().unwrap_or(0);
        format!(
            "storm: seed {} (replay with KEEL_STORM_SEED={}) · {} tasks in {} partitions · {} kills: {} keel, {} attempt host, {} supervisor · {} keel runs started · {} executions in the ledger · {} attempts recorded, {} lost · {:.1} s",
            self.seed,
            self.seed,
            self.partitions * TASKS_PER_PARTITION,
            self.partitions,
            self.total_kills(),
            kind(Kind::Keel),
            kind(Kind::Host),
            kind(Kind::Supervisor),
            self.keel_starts,
            self.executions,
            self.attempts,
            self.lost,
            self.elapsed.as_secs_f64()
        )
    }
}

/// The test's directory and the `keel run` it has going.
struct Storm {
    _dir: tempfile::TempDir,
    root: PathBuf,
    pipeline: PathBuf,
    log: PathBuf,
}

impl Storm {
    fn spawn(&self, partition: &str) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        Command::new(keel_path())
            .args(["run", "--partition", partition])
            .arg(&self.pipeline)
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

#[test]
fn a_storm_killing_keel_its_attempt_host_and_supervisors_runs_every_task_once_and_never_beside_itself()
 {
    // The storm loads the machine; the fault scenarios, which measure time, wait for it.
    let _serial = crate::faults::SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    std::fs::create_dir(root.join("locks")).unwrap();
    let pipeline = write_pipeline(&root, &storm_pipeline(&root));
    let storm = Storm {
        log: root.join("keel.log"),
        pipeline,
        root: root.clone(),
        _dir: dir,
    };
    let attempts_root = root.join(".keel").join("attempts");
    let mut cleanup = Cleanup {
        attempts: attempts_root.clone(),
        hosts: HashSet::new(),
    };
    let (mut random, seed) = Xorshift::seeded();
    let mut figures = Figures {
        seed,
        ..Figures::default()
    };
    eprintln!("storm: seed {seed}");
    let partitions: Vec<String> = (1..=28).map(|day| format!("2026-05-{day:02}")).collect();
    // Supervisor kills per (run, task), and every attempt whose supervisor was killed.
    let mut hits: HashMap<(u64, String), usize> = HashMap::new();
    let mut killed_attempts: HashSet<AttemptKey> = HashSet::new();
    let started = Instant::now();
    let mut current = 0;
    let mut keel: Option<Child> = None;
    let storming = |figures: &Figures, partitions: usize| {
        figures.total_kills() < MIN_KILLS || partitions * TASKS_PER_PARTITION < MIN_TASKS
    };
    loop {
        let child = keel.get_or_insert_with(|| {
            figures.keel_starts += 1;
            storm.spawn(&partitions[current])
        });
        let keel_pid = child.id() as i32;
        let instant = Instant::now() + random.millis(30, 250);
        let mut exited = None;
        while Instant::now() < instant {
            if let Some(status) = child.try_wait().unwrap() {
                exited = Some(status);
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if started.elapsed() > TIME_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            figures.elapsed = started.elapsed();
            panic!(
                "the storm did not end within {TIME_LIMIT:?}: Keel wedged\n{}\n{}",
                figures.line(),
                storm.log_tail()
            );
        }
        if let Some(status) = exited {
            keel = None;
            if !status.success() {
                figures.elapsed = started.elapsed();
                panic!(
                    "keel run of {} ended {status}\n{}\n{}",
                    partitions[current],
                    figures.line(),
                    storm.log_tail()
                );
            }
            current += 1;
            figures.partitions = current;
            if !storming(&figures, current) {
                break;
            }
            assert!(
                current < partitions.len(),
                "the storm ran out of partitions\n{}",
                figures.line()
            );
            continue;
        }
        if !storming(&figures, current + 1) {
            // Enough kills and tasks: the last partition runs to its end in peace.
            continue;
        }
        let mut candidates = find_victims(Some(keel_pid), &mut cleanup.hosts, &attempts_root);
        candidates.retain(|victim| match &victim.attempt {
            Some((run, task, _)) => {
                hits.get(&(*run, task.clone())).copied().unwrap_or(0) < SPARE_AFTER
            }
            None => true,
        });
        candidates.push(Victim {
            pid: keel_pid,
            kind: Kind::Keel,
            attempt: None,
        });
        // Kinds are weighted supervisor 2, host 1, keel 1 among those that have a candidate.
        let mut kinds: Vec<Kind> = Vec::new();
        for (kind, weight) in [(Kind::Supervisor, 2), (Kind::Host, 1), (Kind::Keel, 1)] {
            if candidates.iter().any(|victim| victim.kind == kind) {
                kinds.extend(std::iter::repeat_n(kind, weight));
            }
        }
        let kind = kinds[random.below(kinds.len() as u64) as usize];
        let of_kind: Vec<&Victim> = candidates
            .iter()
            .filter(|victim| victim.kind == kind)
            .collect();
        let victim = of_kind[random.below(of_kind.len() as u64) as usize];
        if kind == Kind::Keel {
            let mut child = keel.take().unwrap();
            child.kill().unwrap();
            child.wait().unwrap();
        } else {
            sigkill(victim.pid);
        }
        if let Some((run, task, number)) = victim.attempt.clone() {
            *hits.entry((run, task.clone())).or_default() += 1;
            killed_attempts.insert((run, task, number));
        }
        *figures.kills.entry(kind).or_default() += 1;
    }

    // Every attempt ended with its run; what of the storm is left (hosts whose Keel was killed)
    // leaves by itself once its supervisors are done.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = find_victims(None, &mut cleanup.hosts, &attempts_root);
        if left.is_empty() {
            break;
        }
        let supervisors: Vec<_> = left
            .iter()
            .filter_map(|victim| victim.attempt.clone())
            .collect();
        assert!(
            Instant::now() < deadline,
            "{} processes of the storm still run after every run ended; supervisors of {supervisors:?}",
            left.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    figures.elapsed = started.elapsed();

    let (ledger, mut problems) = read_ledger(&root.join("ledger"));
    figures.executions = ledger.values().map(Vec::len).sum();
    let store = SqliteStore::open_read_only(&root.join(".keel").join("state.db"))
        .unwrap()
        .expect("the state exists");
    for partition in &partitions[..figures.partitions] {
        let run = status_json(&storm.pipeline, partition);
        if run["state"] != "succeeded" {
            problems.push(format!("{partition}: the run ended {}", run["state"]));
        }
        let run_id = run["id"].as_u64().unwrap();
        let attempts: Vec<AttemptRecord> = block_on(store.attempts(RunId(run_id as _))).unwrap();
        figures.attempts += attempts.len();
        figures.lost += attempts
            .iter()
            .filter(|attempt| attempt.outcome == Some(Outcome::Lost))
            .count();
        for task in run["tasks"].as_array().unwrap() {
            let name = task["name"].as_str().unwrap();
            let what = format!("{name} of {partition}");
            let recorded: Vec<&AttemptRecord> = attempts
                .iter()
                .filter(|attempt| attempt.task == name)
                .collect();
            if task["outcome"] != "succeeded" {
                problems.push(format!("{what}: keel status says {}", task["outcome"]));
            }
            if task["attempts"].as_u64() != Some(recorded.len() as u64) {
                problems.push(format!(
                    "{what}: keel status counts {} attempts, the store holds {}",
                    task["attempts"],
                    recorded.len()
                ));
            }
            let successes: Vec<u32> = recorded
                .iter()
                .filter(|attempt| attempt.outcome == Some(Outcome::Succeeded))
                .map(|attempt| attempt.number)
                .collect();
            if successes.len() != 1 {
                problems.push(format!("{what}: the store records successes {successes:?}"));
                continue;
            }
            let success = successes[0];
            let outcome_of = |number: u32| {
                recorded
                    .iter()
                    .find(|attempt| attempt.number == number)
                    .and_then(|attempt| attempt.outcome)
            };
            let executions = ledger
                .get(&(name.to_string(), partition.clone()))
                .cloned()
                .unwrap_or_default();
            let supervisor_killed =
                |number: u32| killed_attempts.contains(&(run_id, name.to_string(), number));
            // No execution began while an earlier one of the task still ran: neither by the
            // times written, nor by the lock any of its processes still held.
            for pair in executions.windows(2) {
                if let Some((end, _)) = pair[0].end
                    && end > pair[1].start
                {
                    problems.push(format!(
                        "{what}: attempt {} (pid {}) started before attempt {} (pid {}) ended",
                        pair[1].attempt, pair[1].pid, pair[0].attempt, pair[0].pid
                    ));
                }
            }
            for execution in &executions {
                if execution.busy {
                    problems.push(format!(
                        "{what}: attempt {} (pid {}) started while a process of an earlier execution still held the task's lock",
                        execution.attempt, execution.pid
                    ));
                }
                let numbers = executions
                    .iter()
                    .filter(|other| other.attempt == execution.attempt)
                    .count();
                if numbers > 1 {
                    problems.push(format!(
                        "{what}: attempt {} ran {numbers} times",
                        execution.attempt
                    ));
                }
                let outcome = outcome_of(execution.attempt);
                let lost_to_a_killed_supervisor =
                    supervisor_killed(execution.attempt) && outcome == Some(Outcome::Lost);
                let ended = execution.end.as_ref().map(|(_, result)| result.as_str());
                // Only a killed supervisor takes the body down with it (its task's leader dies
                // with it, the rest of the group is killed by Keel): a killed Keel or host leaves
                // its attempts running to their end.
                if ended.is_none() && !lost_to_a_killed_supervisor {
                    problems.push(format!(
                        "{what}: attempt {} never finished its body, yet the storm did not kill its supervisor (recorded {outcome:?})",
                        execution.attempt
                    ));
                }
                // A body that did its work while its supervisor was killed before it could say
                // so is lost and run again, which tasks are assumed to bear; nothing else may
                // complete the work without being the recorded success.
                if ended == Some("ok")
                    && execution.attempt != success
                    && !lost_to_a_killed_supervisor
                {
                    problems.push(format!(
                        "{what}: attempt {} completed its body but is recorded {outcome:?}, not the success (attempt {success})",
                        execution.attempt
                    ));
                }
            }
            match executions.last() {
                Some(last) if last.attempt == success => {
                    if last.end.as_ref().map(|(_, result)| result.as_str()) != Some("ok") {
                        problems.push(format!(
                            "{what}: attempt {success} is recorded succeeded, but the ledger shows it ended {:?}",
                            last.end
                        ));
                    }
                }
                last => problems.push(format!(
                    "{what}: attempt {success} is recorded succeeded, but the ledger's last execution is {last:?}"
                )),
            }
        }
    }
    let report = figures.line();
    eprintln!("{report}");
    assert!(
        problems.is_empty(),
        "{} problems:\n{}\n{report}\n{}",
        problems.len(),
        problems.join("\n"),
        storm.log_tail()
    );
    assert!(figures.total_kills() >= MIN_KILLS, "{report}");
    assert!(
        figures.partitions * TASKS_PER_PARTITION >= MIN_TASKS,
        "{report}"
    );
    for kind in [Kind::Keel, Kind::Host, Kind::Supervisor] {
        assert!(
            figures.kills.get(&kind).copied().unwrap_or(0) > 0,
            "the storm killed no {kind:?}: {report}"
        );
    }
}
