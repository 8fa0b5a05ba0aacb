//! The 18.75% accuracy day, replayed in hoops: four weeks of ordinary dates of the reference
//! pipeline make the baseline (an anomaly alerts once it has three weeks of them), then `keel serve` runs a date whose model `HOOPS_DEGRADE` breaks (3 right
//! picks in 16). Its grading's accuracy is flagged as an anomaly with its baseline, alerted once,
//! and shown by `keel report` and `keel status`.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::{Served, keel_path, wait_for};

/// The ordinary dates from the season's first (its first two have nothing to grade yet, and a
/// few have no games) and the degraded one.
const FROM: &str = "2026-10-20";
const TO: &str = "2026-11-15";
const DEGRADED: &str = "2026-11-16";

/// The feed the hoops tasks read; killed when dropped.
struct Feed(Child);

impl Drop for Feed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The reference pipeline as its tasks run here: whole-date instead of fanned out (a run of
/// ~20 processes instead of hundreds, so the test stays quick), without the schedule and the
/// passes (serve runs only the date the test queues), alerts to a command sink.
fn pipeline() -> String {
    let full = include_str!("../../../../examples/hoops/keel.toml");
    let without_passes = &full[..full.find("# ---- passes").unwrap()];
    let pipeline = without_passes
        .replace(
            "schedule = \"0 6 * * *\"\nschedule_partition = \"-1d\"\n",
            "",
        )
        .replace(", \"{item.key}\"]", "]")
        .replace(", \"{item}\"]", "]")
        .replace(
            "expand = { from = \"scrape_schedule\", min = \"90%\", stall = \"10m\" }\n",
            "",
        )
        .replace(
            "expand = { from = \"feature_store\", min = \"95%\", stall = \"10m\" }\n",
            "",
        );
    assert!(
        !pipeline.contains("expand") && !pipeline.contains("schedule = "),
        "the fan-outs and the schedule were not taken out"
    );
    format!("{pipeline}\n[alerts]\ncommand = [\"sh\", \"-c\", \"cat >> alerts.jsonl\"]\n")
}

fn keel_json(root: &Path, env: &[(String, String)], args: &[&str]) -> Value {
    let output = Command::new(keel_path())
        .args(args)
        .current_dir(root)
        .envs(env.iter().cloned())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "keel {args:?}: {output:?}");
    serde_json::from_slice(&output.stdout).unwrap()
}

fn accuracy_on(anomalies: &Value, partition: &str) -> Vec<Value> {
    anomalies
        .as_array()
        .map(|list| {
            list.iter()
                .filter(|anomaly| {
                    anomaly["partition"] == partition
                        && anomaly["task"] == "grading"
                        && anomaly["metric"] == "accuracy"
                })
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_degraded_day_is_flagged_with_its_baseline_alerted_once_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let bin = root.join("bin");
    std::fs::create_dir(&bin).unwrap();
    let hoops = bin.join("hoops");
    std::os::unix::fs::symlink(keel_path(), &hoops).unwrap();
    let mut feed = Command::new(&hoops)
        .args([
            "feed",
            "--addr",
            "127.0.0.1:0",
            "--seed",
            "7",
            "--faults",
            "none",
        ])
        .arg("--exit-on-eof")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(feed.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _feed = Feed(feed);
    let address = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap()
        .to_string();
    std::fs::write(root.join("keel.toml"), pipeline()).unwrap();
    let env: Vec<(String, String)> = vec![
        (
            "PATH".into(),
            format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
        ),
        ("HOOPS_FEED".into(), format!("http://{address}")),
        (
            "HOOPS_WAREHOUSE".into(),
            root.join("warehouse.db").display().to_string(),
        ),
        (
            "HOOPS_EXPORT_DIR".into(),
            root.join("exports").display().to_string(),
        ),
        ("HOOPS_DEGRADE".into(), DEGRADED.into()),
    ];

    // The baseline: ordinary dates, run before serve starts.
    let baseline = Command::new(keel_path())
        .args(["run", "--from", FROM, "--to", TO])
        .current_dir(root)
        .envs(env.iter().cloned())
        .output()
        .unwrap();
    assert_eq!(baseline.status.code(), Some(0), "{baseline:?}");

    let log = std::fs::File::create(root.join("serve.log")).unwrap();
    let _serve = Command::new(keel_path())
        .args(["serve", "--addr", "127.0.0.1:0"])
        .arg(root.join("keel.toml"))
        .current_dir(root)
        .envs(env.iter().cloned())
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .map(Served)
        .unwrap();
    let serve_log = || std::fs::read_to_string(root.join("serve.log")).unwrap_or_default();
    wait_for("keel serve to start", Duration::from_secs(30), || {
        serve_log().contains("keel serve: pipeline")
    });
    let queued = Command::new(keel_path())
        .args(["run", "--partition", DEGRADED, "--detach"])
        .arg(root.join("keel.toml"))
        .envs(env.iter().cloned())
        .output()
        .unwrap();
    assert_eq!(queued.status.code(), Some(0), "{queued:?}");
    let accuracy_alerts = || -> Vec<Value> {
        std::fs::read_to_string(root.join("alerts.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str::<Value>(line).unwrap())
            .filter(|alert| {
                alert["keel"]["kind"] == "anomaly" && alert["keel"]["subject"] == "grading accuracy"
            })
            .collect()
    };
    wait_for(
        "the accuracy anomaly's alert",
        Duration::from_secs(90),
        || !accuracy_alerts().is_empty(),
    );
    let alert = &accuracy_alerts()[0]["keel"];
    assert_eq!(alert["partition"], DEGRADED);
    let detail = alert["detail"].as_str().unwrap();
    // 15 right of 81 graded: 3 in 16, to the nearest pick.
    assert!(
        detail.starts_with("grading: accuracy 0.19, usual 0.") && detail.ends_with(" days"),
        "{detail}"
    );
    // Told once: the next ticks of the alerts find nothing new.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(accuracy_alerts().len(), 1, "{}", serve_log());

    // The daily report of today (in the pipeline's zone), when the runs were made, lists it
    // with its baseline.
    let today = chrono::Utc::now()
        .with_timezone(&chrono_tz::America::New_York)
        .date_naive()
        .to_string();
    let report = keel_json(root, &env, &["report", "--json", "--date", &today]);
    let reported = accuracy_on(&report["anomalies"], DEGRADED);
    assert_eq!(reported.len(), 1, "{:#}", report["anomalies"]);
    assert_eq!(reported[0]["value"], 0.1852);
    assert!(reported[0]["usual_low"].as_f64().unwrap() > 0.45);
    // The graded dates before it, at least the three weeks an alert needs.
    let points = reported[0]["baseline_points"].as_u64().unwrap();
    assert!((21..=26).contains(&points), "{points}");
    // No ordinary date's accuracy is flagged.
    let flagged_ordinary = report["anomalies"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|anomaly| anomaly["metric"] == "accuracy" && anomaly["partition"] != DEGRADED)
        .count();
    assert_eq!(flagged_ordinary, 0, "{:#}", report["anomalies"]);

    // And `keel status` over the dates shows it, judged against the earlier ones shown.
    let status = keel_json(
        root,
        &env,
        &["status", "--from", FROM, "--to", DEGRADED, "--json"],
    );
    let shown = accuracy_on(&status["anomalies"], DEGRADED);
    assert_eq!(shown.len(), 1, "{:#}", status["anomalies"]);
    assert_eq!(
        shown[0]["describe"].as_str().unwrap(),
        detail.strip_prefix("grading: ").unwrap()
    );
}
