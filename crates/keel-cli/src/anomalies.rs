//! Anomalies in a task's history: each succeeded partition's `rows`, every numeric metric and
//! its time worked, judged against the earlier partitions of the same view (keel-health's
//! robust baseline). `no_data` partitions, failed ones and non-date partitions are left out of
//! baselines and are not judged.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use keel_health::anomaly::{Judgement, Tuning, judge};
use keel_model::{Millis, Outcome, RunId};
use keel_store::RunView;
use serde_json::{Value, json};

/// Time worked under this is never an anomaly.
const MIN_SLOW_SECONDS: f64 = 10.0;

/// One value found anomalous.
pub struct Anomaly {
    pub task: String,
    pub run: RunId,
    pub partition: String,
    /// `rows`, `duration_s` or a metric's name.
    pub metric: String,
    pub judgement: Judgement,
}

impl Anomaly {
    pub fn describe(&self) -> String {
        format!(
            "{} run {}: {}",
            self.partition,
            self.run.0,
            self.judgement.describe(&self.metric)
        )
    }

    pub fn to_json(&self) -> Value {
        let baseline = &self.judgement.baseline;
        json!({
            "task": self.task,
            "run": self.run.0,
            "partition": self.partition,
            "metric": self.metric,
            "value": self.judgement.value,
            "score": self.judgement.score,
            "median": baseline.median,
            "usual_low": baseline.low,
            "usual_high": baseline.high,
            "baseline_points": baseline.points,
            "baseline_from": baseline.from.to_string(),
            "baseline_to": baseline.to.to_string(),
            "same_weekday": baseline.weekday.is_some(),
            "describe": self.judgement.describe(&self.metric),
        })
    }
}

/// The anomalies of `task` in `runs` (any order), newest first.
pub fn in_history(runs: &[RunView], task: &str, now: Millis) -> Vec<Anomaly> {
    // (metric) → [(date, value, run, partition)]
    let mut series: BTreeMap<String, Vec<(NaiveDate, f64, RunId, String)>> = BTreeMap::new();
    for run in runs {
        let Ok(date) = NaiveDate::parse_from_str(&run.record.partition, "%Y-%m-%d") else {
            continue;
        };
        let Some(row) = run.tasks.iter().find(|row| row.task == task) else {
            continue;
        };
        if row.outcome != Some(Outcome::Succeeded) {
            continue;
        }
        let summary = run.task_summary(task, now);
        let mut push = |metric: &str, value: f64| {
            series.entry(metric.to_string()).or_default().push((
                date,
                value,
                run.record.id,
                run.record.partition.clone(),
            ));
        };
        if let Some(rows) = summary.rows {
            push("rows", rows as f64);
        }
        if summary.worked > 0 {
            push("duration_s", summary.worked as f64 / 1000.0);
        }
        let metrics = summary
            .metrics
            .as_deref()
            .and_then(|text| serde_json::from_str::<Value>(text).ok());
        if let Some(Value::Object(metrics)) = metrics {
            for (name, value) in metrics {
                if let Some(number) = value.as_f64() {
                    push(&name, number);
                }
            }
        }
    }
    let tuning = Tuning::default();
    let mut found = Vec::new();
    for (metric, points) in &series {
        let history: Vec<(NaiveDate, f64)> = points
            .iter()
            .map(|(date, value, ..)| (*date, *value))
            .collect();
        for (date, value, run, partition) in points {
            // Durations vary with load in both directions; only a slow one is worth a look.
            let tuning = if metric == "duration_s" {
                Tuning {
                    direction: keel_health::anomaly::Direction::High,
                    ..tuning
                }
            } else {
                tuning
            };
            // A task that took 20 ms instead of 10 is not worth anyone's look, however far
            // outside its baseline that is.
            if metric == "duration_s" && *value < MIN_SLOW_SECONDS {
                continue;
            }
            if let Some(judgement) = judge(*date, *value, &history, &tuning)
                && judgement.anomalous
            {
                found.push(Anomaly {
                    task: task.to_string(),
                    run: *run,
                    partition: partition.clone(),
                    metric: metric.clone(),
                    judgement,
                });
            }
        }
    }
    found.sort_by(|a, b| b.partition.cmp(&a.partition).then(a.metric.cmp(&b.metric)));
    found
}

/// The anomalies of every task in `runs` (the newest run of each partition, any order), each
/// judged against the earlier partitions among them; newest first, then by task.
pub fn in_view(runs: &[RunView], now: Millis) -> Vec<Anomaly> {
    let tasks: std::collections::BTreeSet<&str> = runs
        .iter()
        .flat_map(|run| run.tasks.iter().map(|row| row.task.as_str()))
        .collect();
    let mut found: Vec<Anomaly> = tasks
        .into_iter()
        .flat_map(|task| in_history(runs, task, now))
        .collect();
    found.sort_by(|a, b| {
        b.partition
            .cmp(&a.partition)
            .then(a.task.cmp(&b.task))
            .then(a.metric.cmp(&b.metric))
    });
    found
}
