//! Task versions and canary rollout (`version`, `code` and `rollout` on a task).
//!
//! A task's version is a hash of its own spec fields, combined with what tells its code apart:
//! the output of its `version` command, or the digests of its `code` files. Keel-model only
//! hashes; whoever runs the command or reads the files (the CLI) hands the result in.

use std::collections::BTreeMap;
use std::fmt;

/// What a task declares about its version and how a new one goes live. Its `command` and
/// `code` are part of the pipeline's version; `rollout` is not (it says how a version goes live,
/// not what runs).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TaskVersioning {
    /// `version = ["hoops", "--version"]`: a command, run without a shell in the task's working
    /// directory, whose standard output is part of the task's version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// `code = ["bin/load.py"]`: files (relative to the pipeline file's directory) whose
    /// digests are part of the task's version.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub code: Vec<String>,
    /// `rollout = { canary, promote_after, max_failure_rate, min_metrics }`.
    #[serde(skip)]
    pub rollout: Option<RolloutSpec>,
}

impl TaskVersioning {
    /// Whether nothing of it is part of the version: left out of the spec's JSON then, so a
    /// pipeline without `version` or `code` keeps its version.
    pub fn is_unversioned(&self) -> bool {
        self.command.is_none() && self.code.is_empty()
    }
}

/// How a new version of a task goes live (`rollout = { … }`).
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutSpec {
    /// The share of partitions (1–100 %) that run the new version while it is a canary; the
    /// others keep the promoted version. Chosen by a hash of the pipeline, task and partition.
    pub canary_percent: u8,
    /// The new version is promoted after this many clean canary attempts.
    pub promote_after: u32,
    /// The share of failed canary attempts (0–1) above which the new version is rolled back.
    pub max_failure_rate: f64,
    /// `min_metrics = { accuracy = 0.4 }`: a canary attempt whose result reports a metric below
    /// its floor (or does not report it) counts as a failure: a metric regression.
    pub min_metrics: BTreeMap<String, f64>,
}

impl RolloutSpec {
    /// Whether `partition` is one of the canary's partitions.
    pub fn is_canary_partition(&self, pipeline: &str, task: &str, partition: &str) -> bool {
        canary_bucket(pipeline, task, partition) < u64::from(self.canary_percent)
    }

    /// Why a canary attempt that succeeded still regressed: a metric below its floor, or one it
    /// did not report. `metrics` is the result file's `metrics` object as JSON text.
    pub fn metric_regression(&self, metrics: Option<&str>) -> Option<String> {
        if self.min_metrics.is_empty() {
            return None;
        }
        let reported: serde_json::Map<String, serde_json::Value> = metrics
            .and_then(|text| serde_json::from_str(text).ok())
            .unwrap_or_default();
        for (name, floor) in &self.min_metrics {
            match reported.get(name).and_then(serde_json::Value::as_f64) {
                Some(value) if value >= *floor => {}
                Some(value) => {
                    return Some(format!("metric {name} {value} is below its floor {floor}"));
                }
                None => return Some(format!("metric {name} was not reported (floor {floor})")),
            }
        }
        None
    }

    /// What to do after a canary attempt ended, given the canary's counts so far (this attempt
    /// included).
    pub fn decide(&self, clean: u32, failed: u32) -> RolloutDecision {
        let total = clean + failed;
        if failed > 0 && f64::from(failed) / f64::from(total.max(1)) > self.max_failure_rate {
            RolloutDecision::RollBack
        } else if clean >= self.promote_after {
            RolloutDecision::Promote
        } else {
            RolloutDecision::KeepGoing
        }
    }
}

/// What a canary's counts say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutDecision {
    KeepGoing,
    Promote,
    RollBack,
}

/// Where a version of a task stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VersionStatus {
    /// Running on its canary share of partitions; the promoted version runs on the rest.
    Canary,
    /// The version every partition runs.
    Promoted,
    /// Rolled back: the promoted version runs instead, everywhere.
    RolledBack,
    /// Promoted once, then replaced by a newer promoted version.
    Retired,
}

impl VersionStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            VersionStatus::Canary => "canary",
            VersionStatus::Promoted => "promoted",
            VersionStatus::RolledBack => "rolled_back",
            VersionStatus::Retired => "retired",
        }
    }
}

impl fmt::Display for VersionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for VersionStatus {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "canary" => Ok(VersionStatus::Canary),
            "promoted" => Ok(VersionStatus::Promoted),
            "rolled_back" => Ok(VersionStatus::RolledBack),
            "retired" => Ok(VersionStatus::Retired),
            other => Err(format!(
                "{other:?} is not a version status (canary, promoted, rolled_back, retired)"
            )),
        }
    }
}

/// The version of `task`: FNV-1a over its canonical JSON (the pipeline's own version hashes the
/// same way) and `code_identity`, the version command's output or the code files' digests.
///
/// ```
/// let a = keel_model::task_version_of(r#"{"command":["a"]}"#, "1.0");
/// assert_ne!(a, keel_model::task_version_of(r#"{"command":["a"]}"#, "1.1"));
/// assert_eq!(a.len(), 16);
/// ```
pub fn task_version_of(task_json: &str, code_identity: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in task_json.bytes().chain([0]).chain(code_identity.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// A stable number in 0..100 for (pipeline, task, partition), like a flag's share but salted
/// so that a task flagged at 10% and canaried at 10% does not pick the same partitions.
fn canary_bucket(pipeline: &str, task: &str, partition: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in b"canary"
        .iter()
        .copied()
        .chain([0])
        .chain(pipeline.bytes())
        .chain([0])
        .chain(task.bytes())
        .chain([0])
        .chain(partition.bytes())
    {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash ^ (hash >> 32)) % 100
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(percent: u8, promote_after: u32, rate: f64) -> RolloutSpec {
        RolloutSpec {
            canary_percent: percent,
            promote_after,
            max_failure_rate: rate,
            min_metrics: BTreeMap::new(),
        }
    }

    #[test]
    fn a_share_of_partitions_is_picked_the_same_way_every_time() {
        let rollout = spec(10, 3, 0.0);
        let picked: Vec<String> = (0..1000)
            .map(|day| format!("p{day}"))
            .filter(|partition| rollout.is_canary_partition("hoops", "load", partition))
            .collect();
        assert!((60..=140).contains(&picked.len()), "{}", picked.len());
        let again: Vec<String> = (0..1000)
            .map(|day| format!("p{day}"))
            .filter(|partition| rollout.is_canary_partition("hoops", "load", partition))
            .collect();
        assert_eq!(picked, again);
        let everything = spec(100, 3, 0.0);
        assert!(everything.is_canary_partition("hoops", "load", "p1"));
    }

    #[test]
    fn failures_above_the_rate_roll_back_and_clean_runs_promote() {
        let strict = spec(10, 3, 0.0);
        assert_eq!(strict.decide(1, 0), RolloutDecision::KeepGoing);
        assert_eq!(strict.decide(3, 0), RolloutDecision::Promote);
        assert_eq!(strict.decide(2, 1), RolloutDecision::RollBack);
        let lenient = spec(10, 3, 0.5);
        assert_eq!(lenient.decide(1, 1), RolloutDecision::KeepGoing);
        assert_eq!(lenient.decide(0, 1), RolloutDecision::RollBack);
        assert_eq!(lenient.decide(3, 1), RolloutDecision::Promote);
    }

    #[test]
    fn a_metric_below_its_floor_or_missing_is_a_regression() {
        let mut rollout = spec(10, 3, 0.0);
        assert_eq!(rollout.metric_regression(None), None);
        rollout.min_metrics.insert("accuracy".into(), 0.4);
        assert_eq!(
            rollout.metric_regression(Some(r#"{"accuracy": 0.5}"#)),
            None
        );
        assert_eq!(
            rollout
                .metric_regression(Some(r#"{"accuracy": 0.2}"#))
                .as_deref(),
            Some("metric accuracy 0.2 is below its floor 0.4")
        );
        assert_eq!(
            rollout.metric_regression(None).as_deref(),
            Some("metric accuracy was not reported (floor 0.4)")
        );
    }

    #[test]
    fn statuses_read_back() {
        for status in [
            VersionStatus::Canary,
            VersionStatus::Promoted,
            VersionStatus::RolledBack,
            VersionStatus::Retired,
        ] {
            assert_eq!(status.as_str().parse::<VersionStatus>(), Ok(status));
        }
        assert!("live".parse::<VersionStatus>().is_err());
    }
}
