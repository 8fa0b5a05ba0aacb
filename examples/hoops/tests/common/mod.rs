//! Shared by the integration tests: a scratch warehouse, a feed on a loopback port, and the
//! `hoops` binary run as Keel would run it (environment in, exit code and KEEL_RESULT out).

#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use hoops::faults::Faults;
use hoops::feed::Feed;
use serde_json::Value;

pub const SEED: u64 = 7;
/// How long any one `hoops` process may run before a test gives up on it.
pub const PROCESS_LIMIT: Duration = Duration::from_secs(30);

/// The pipeline as groups that may run at once: each group after the one before, the way
/// keel.toml orders phases and `after`.
pub const LEVELS: &[&[&str]] = &[
    &[
        "scrape_schedule",
        "scrape_boxscores",
        "scrape_injuries",
        "scrape_props",
        "live_scores",
    ],
    &[
        "load_schedule",
        "load_boxscores",
        "load_injuries",
        "load_props",
    ],
    &[
        "team_offense",
        "team_defense",
        "upcoming_player_context",
        "upcoming_team_context",
    ],
    &["player_game_summary"],
    &["rolling_averages", "opponent_defense", "rest_days"],
    &["player_form"],
    &["feature_store"],
    &["predictions"],
    &["export"],
    &["grading"],
];

pub struct Env {
    pub dir: tempfile::TempDir,
    pub feed: Feed,
    pub extra: Vec<(String, String)>,
    counter: AtomicU32,
}

#[derive(Debug)]
pub struct Outcome {
    pub code: i32,
    /// The KEEL_RESULT document, if the task wrote one.
    pub result: Option<Value>,
    pub stdout: String,
    pub stderr: String,
}

impl Env {
    pub fn new(faults: &str) -> Env {
        let feed = Feed::start("127.0.0.1:0", SEED, Faults::parse(faults).unwrap(), false)
            .expect("the feed starts on loopback");
        Env {
            dir: tempfile::tempdir().unwrap(),
            feed,
            extra: Vec::new(),
            counter: AtomicU32::new(0),
        }
    }

    pub fn warehouse(&self) -> PathBuf {
        self.dir.path().join("hoops.db")
    }

    pub fn export_dir(&self) -> PathBuf {
        self.dir.path().join("exports")
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hoops"));
        cmd.args(args)
            .env("HOOPS_FEED", self.feed.url())
            .env("HOOPS_WAREHOUSE", self.warehouse())
            .env("HOOPS_EXPORT_DIR", self.export_dir())
            .env("HOOPS_RETRY_AFTER_CAP", "0")
            .env_remove("KEEL_RESULT")
            .env_remove("KEEL_HEARTBEAT")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &self.extra {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs `hoops ARGS…` with KEEL_RESULT set, bounded by [`PROCESS_LIMIT`].
    pub fn run(&self, args: &[&str]) -> Outcome {
        let n = self.counter.fetch_add(1, Ordering::SeqCst);
        let result = self.dir.path().join(format!("result-{n}.json"));
        let mut cmd = self.command(args);
        cmd.env("KEEL_RESULT", &result);
        run_bounded(cmd, &result)
    }

    /// Runs one task for one date.
    pub fn task(&self, task: &str, date: &str) -> Outcome {
        self.run(&[task, date])
    }

    /// Runs the whole pipeline for a date, each level's tasks at once (as separate processes on
    /// one warehouse file), and returns every task's outcome.
    pub fn pipeline(&self, date: &str) -> Vec<(String, Outcome)> {
        let mut all = Vec::new();
        for level in LEVELS {
            let outcomes: Vec<(String, Outcome)> = std::thread::scope(|s| {
                let handles: Vec<_> = level
                    .iter()
                    .map(|task| s.spawn(move || (task.to_string(), self.task(task, date))))
                    .collect();
                handles.into_iter().map(|h| h.join().unwrap()).collect()
            });
            all.extend(outcomes);
        }
        all
    }

    /// Like [`Env::pipeline`], asserting that every task exits 0.
    pub fn pipeline_ok(&self, date: &str) -> Vec<(String, Outcome)> {
        let all = self.pipeline(date);
        for (task, outcome) in &all {
            assert_eq!(outcome.code, 0, "{task} {date}: {outcome:#?}");
        }
        all
    }

    /// Row counts of every table in the warehouse.
    pub fn row_counts(&self) -> Vec<(String, i64)> {
        let conn = rusqlite::Connection::open(self.warehouse()).unwrap();
        let tables: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        tables
            .into_iter()
            .map(|t| {
                let n = conn
                    .query_row(&format!("SELECT COUNT(*) FROM {t}"), [], |r| r.get(0))
                    .unwrap();
                (t, n)
            })
            .collect()
    }
}

pub fn run_bounded(mut cmd: Command, result: &Path) -> Outcome {
    let mut child = cmd.spawn().expect("hoops starts");
    // Drain both pipes on their own threads so a chatty child can never block on a full pipe.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > PROCESS_LIMIT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} ran longer than {PROCESS_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let result = std::fs::read_to_string(result)
        .ok()
        .map(|text| serde_json::from_str(&text).expect("KEEL_RESULT is JSON"));
    Outcome {
        code: status.code().unwrap_or(-1),
        result,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}
