//! What a chaos campaign measured: each day's run as the store has it (its state, its first
//! failure, its recovery on Keel's clock), the alerts the command sink received, and the report
//! per fault class with the targets it is judged against. The report is pure over those.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use keel_model::{Millis, Outcome, RunState};
use keel_store::{RunRecord, Store};
use serde_json::{Value, json};

use super::plan::{DayPlan, FaultClass, REGRESSION_TARGET};

/// Share of the healable faults' partitions that must end green without a human.
pub const GREEN_TARGET: f64 = 0.999;
/// The longest mean and p95 time to recovery allowed for a healable fault (simulated time).
pub const RECOVERY_TARGET: Millis = 5 * 60_000;
/// The lowest alert precision allowed.
pub const PRECISION_TARGET: f64 = 0.95;

/// One day's run, as the store has it.
#[derive(Debug, Clone, PartialEq)]
pub struct DayResult {
    pub date: String,
    pub class: FaultClass,
    /// `None` when the run never finished within the campaign's limit.
    pub state: Option<RunState>,
    pub attempts: usize,
    /// Keel's time of the fault's first sign: the kill, the start of the first attempt that
    /// did not complete, or the first "not ready" of a sensor.
    pub fault_at: Option<Millis>,
    /// From `fault_at` to the run's end, when it ended green.
    pub recovery: Option<Millis>,
    pub keel_restarted: bool,
    /// The regressed metric as grading reported it, for a regression day.
    pub accuracy: Option<f64>,
}

impl DayResult {
    pub fn never_ran(day: &DayPlan) -> DayResult {
        DayResult {
            date: day.date.to_string(),
            class: day.class,
            state: None,
            attempts: 0,
            fault_at: None,
            recovery: None,
            keel_restarted: false,
            accuracy: None,
        }
    }

    /// Whether the fault showed: a failure, a wait or the kill, or a regressed metric reported.
    pub fn shown(&self) -> bool {
        self.fault_at.is_some()
            || (self.class == FaultClass::MetricRegression && self.accuracy.is_some())
    }

    /// Ended succeeded: green, and no human was asked for anything (the campaign never runs a
    /// manual command).
    pub fn green(&self) -> bool {
        self.state == Some(RunState::Succeeded)
    }
}

pub async fn measure_day(
    store: &impl Store,
    day: &DayPlan,
    run: &RunRecord,
    killed_at: Option<Millis>,
) -> Result<DayResult> {
    let attempts = store.attempts(run.id).await?;
    let events = store.events(run.id).await?;
    let first_failure = attempts
        .iter()
        .filter(|attempt| {
            attempt
                .outcome
                .is_some_and(|outcome| !outcome.is_complete())
        })
        // From when the failing attempt started: a hang's fault began then, not at its timeout.
        .filter_map(|attempt| attempt.started_at.or(attempt.finished_at));
    let first_wait = events
        .iter()
        .filter(|event| event.kind == "sensor_polled" && event.detail != "ready")
        .map(|event| event.at);
    let fault_at = match killed_at {
        Some(at) => Some(at),
        None => first_failure.chain(first_wait).min(),
    };
    let green = run.state == RunState::Succeeded;
    let recovery = match (fault_at, run.finished_at) {
        (Some(fault), Some(end)) if green => Some((end - fault).max(0)),
        _ => None,
    };
    let accuracy = attempts
        .iter()
        .filter(|attempt| {
            attempt.task == REGRESSION_TARGET && attempt.outcome == Some(Outcome::Succeeded)
        })
        .filter_map(|attempt| attempt.metrics.as_deref())
        .filter_map(|metrics| serde_json::from_str::<Value>(metrics).ok())
        .filter_map(|metrics| metrics.get("accuracy")?.as_f64())
        .next_back();
    Ok(DayResult {
        date: day.date.to_string(),
        class: day.class,
        state: Some(run.state),
        attempts: attempts.len(),
        fault_at,
        recovery,
        keel_restarted: killed_at.is_some(),
        accuracy,
    })
}

/// One message the campaign's command sink received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    pub status: String,
    pub kind: String,
    pub subject: String,
    pub partition: String,
}

impl Alert {
    /// Whether the alert is about `task`: its subject is the task, or the task and a metric
    /// (`grading accuracy`, as anomalies name theirs).
    pub fn about_task(&self, task: &str) -> bool {
        self.subject == task
            || self
                .subject
                .strip_prefix(task)
                .is_some_and(|rest| rest.starts_with(' '))
    }
}

/// The alerts in the sink's file, one JSON document a line (none when it was never written).
pub fn read_alerts(path: &Path) -> Result<Vec<Alert>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => {
            return Err(error).with_context(|| format!("cannot read {}", path.display()));
        }
    };
    let mut alerts = Vec::new();
    for (number, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let document: Value = serde_json::from_str(line).with_context(|| {
            format!(
                "{}:{}: an alert that is not JSON",
                path.display(),
                number + 1
            )
        })?;
        let field = |name: &str| document["keel"][name].as_str().unwrap_or("").to_string();
        alerts.push(Alert {
            status: field("status"),
            kind: field("kind"),
            subject: field("subject"),
            partition: field("partition"),
        });
    }
    Ok(alerts)
}

/// One row of the report: a fault class, or the healable ones together.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub name: String,
    pub healable: bool,
    pub days: usize,
    /// Days whose fault showed in the run (a failed attempt, a wait, the kill).
    pub faults_seen: usize,
    pub green: usize,
    pub manual: usize,
    pub recovery_mean: Option<Millis>,
    pub recovery_p95: Option<Millis>,
    pub alerts_sent: usize,
    pub alerts_actionable: usize,
}

impl Row {
    fn green_share(&self) -> f64 {
        if self.days == 0 {
            1.0
        } else {
            self.green as f64 / self.days as f64
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "class": self.name,
            "healable": self.healable,
            "days": self.days,
            "faults_seen": self.faults_seen,
            "green_without_human": self.green,
            "green_share": self.green_share(),
            "manual_interventions": self.manual,
            "recovery_mean_ms": self.recovery_mean,
            "recovery_p95_ms": self.recovery_p95,
            "alerts_sent": self.alerts_sent,
            "alerts_actionable": self.alerts_actionable,
            "alert_precision": precision(self.alerts_actionable, self.alerts_sent),
        })
    }
}

fn precision(actionable: usize, sent: usize) -> Option<f64> {
    (sent > 0).then(|| actionable as f64 / sent as f64)
}

/// The campaign's report.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub rows: Vec<Row>,
    pub healable: Row,
    /// Alerts that named no partition of the campaign (a breaker, say): never actionable here.
    pub unattributed_alerts: usize,
    pub alerts_sent: usize,
    pub alerts_actionable: usize,
    /// Regression days that reported the regressed metric, and how many of them an alert
    /// named.
    pub regressions: (usize, usize),
    pub health_score: Option<f64>,
    pub clock_speed: u32,
}

/// Nearest-rank percentile of `values` (sorted here).
pub fn percentile(values: &[Millis], share: f64) -> Option<Millis> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    let rank = ((share * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

fn mean(values: &[Millis]) -> Option<Millis> {
    (!values.is_empty()).then(|| values.iter().sum::<Millis>() / values.len() as Millis)
}

impl Report {
    pub fn build(
        plan: &[DayPlan],
        days: &[DayResult],
        alerts: &[Alert],
        health_score: Option<f64>,
        clock_speed: u32,
    ) -> Report {
        let by_date: BTreeMap<&str, &DayResult> =
            days.iter().map(|day| (day.date.as_str(), day)).collect();
        let firing: Vec<&Alert> = alerts
            .iter()
            .filter(|alert| alert.status == "firing")
            .collect();
        // An alert is actionable when it is about a fault Keel could not heal: a partition that
        // did not end green, or the data a regression made wrong.
        let actionable = |day: &DayResult| !day.green() || !day.class.healable();
        let row = |name: &str, healable: bool, members: &[&DayResult]| {
            let recoveries: Vec<Millis> = members.iter().filter_map(|day| day.recovery).collect();
            let dates: Vec<&str> = members.iter().map(|day| day.date.as_str()).collect();
            let sent: Vec<&&Alert> = firing
                .iter()
                .filter(|alert| dates.contains(&alert.partition.as_str()))
                .collect();
            let actionable_count = sent
                .iter()
                .filter(|alert| {
                    by_date
                        .get(alert.partition.as_str())
                        .is_some_and(|day| actionable(day))
                })
                .count();
            Row {
                name: name.to_string(),
                healable,
                days: members.len(),
                faults_seen: members.iter().filter(|day| day.shown()).count(),
                green: members.iter().filter(|day| day.green()).count(),
                manual: members.iter().filter(|day| !day.green()).count(),
                recovery_mean: mean(&recoveries),
                recovery_p95: percentile(&recoveries, 0.95),
                alerts_sent: sent.len(),
                alerts_actionable: actionable_count,
            }
        };
        let mut rows = Vec::new();
        for class in FaultClass::ALL {
            let members: Vec<&DayResult> = days.iter().filter(|day| day.class == class).collect();
            if !plan.iter().any(|day| day.class == class) {
                continue;
            }
            rows.push(row(class.as_str(), class.healable(), &members));
        }
        let healable_days: Vec<&DayResult> =
            days.iter().filter(|day| day.class.healable()).collect();
        let healable = row("healable faults", true, &healable_days);
        let attributed = |alert: &&Alert| by_date.contains_key(alert.partition.as_str());
        let alerts_actionable = firing
            .iter()
            .filter(|alert| {
                by_date
                    .get(alert.partition.as_str())
                    .is_some_and(|day| actionable(day))
            })
            .count();
        // A regression on a day without games has no accuracy to lower: only the days whose
        // regressed metric was reported count.
        let regression_days: Vec<&DayResult> = days
            .iter()
            .filter(|day| day.class == FaultClass::MetricRegression && day.shown())
            .collect();
        let regressions_alerted = regression_days
            .iter()
            .filter(|day| {
                firing
                    .iter()
                    .any(|alert| alert.partition == day.date && alert.about_task(REGRESSION_TARGET))
            })
            .count();
        Report {
            rows,
            healable,
            unattributed_alerts: firing.iter().filter(|alert| !attributed(alert)).count(),
            alerts_sent: firing.len(),
            alerts_actionable,
            regressions: (regression_days.len(), regressions_alerted),
            health_score,
            clock_speed,
        }
    }

    pub fn precision(&self) -> Option<f64> {
        precision(self.alerts_actionable, self.alerts_sent)
    }

    /// The targets: ≥ 99.9% of the healable faults' partitions green without a human, none
    /// needing one, mean and p95 recovery under 5 minutes, and alert precision ≥ 95% (met
    /// when no alert was sent).
    pub fn targets(&self) -> Vec<(&'static str, bool)> {
        let healable = &self.healable;
        vec![
            (
                "≥ 99.9% of healable partitions green without a human",
                healable.green_share() >= GREEN_TARGET,
            ),
            (
                "0 manual interventions for healable faults",
                healable.manual == 0,
            ),
            (
                "recovery under 5 minutes (mean and p95, simulated)",
                healable.recovery_mean.is_none_or(|m| m < RECOVERY_TARGET)
                    && healable.recovery_p95.is_none_or(|p| p < RECOVERY_TARGET),
            ),
            (
                "alert precision ≥ 95%",
                self.precision().is_none_or(|p| p >= PRECISION_TARGET),
            ),
        ]
    }

    pub fn targets_met(&self) -> bool {
        self.targets().iter().all(|(_, met)| *met)
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "{:<18} {:>4} {:>5} {:>14} {:>7} {:>10} {:>10} {:>6} {:>10}\n",
            "fault class",
            "days",
            "shown",
            "green w/o human",
            "manual",
            "TTR mean",
            "TTR p95",
            "alerts",
            "actionable"
        ));
        for row in self.rows.iter().chain(std::iter::once(&self.healable)) {
            if row.name == self.healable.name {
                out.push_str(&format!("{}\n", "-".repeat(92)));
            }
            out.push_str(&format!(
                "{:<18} {:>4} {:>5} {:>14} {:>7} {:>10} {:>10} {:>6} {:>10}\n",
                row.name,
                row.days,
                row.faults_seen,
                format!("{} ({})", row.green, percent(row.green_share())),
                row.manual,
                row.recovery_mean.map_or("-".to_string(), format_millis),
                row.recovery_p95.map_or("-".to_string(), format_millis),
                row.alerts_sent,
                row.alerts_actionable,
            ));
        }
        out.push('\n');
        out.push_str(&format!(
            "alerts: {} sent, {} actionable, precision {}{}\n",
            self.alerts_sent,
            self.alerts_actionable,
            self.precision()
                .map_or("n/a (none sent)".to_string(), percent),
            if self.unattributed_alerts > 0 {
                format!(
                    " ({} named no partition of the campaign)",
                    self.unattributed_alerts
                )
            } else {
                String::new()
            }
        ));
        if self.regressions.0 > 0 {
            out.push_str(&format!(
                "metric regressions alerted: {} of {}\n",
                self.regressions.1, self.regressions.0
            ));
        }
        out.push_str(&format!(
            "health score at the end: {}\n",
            self.health_score
                .map_or("n/a".to_string(), |score| format!("{score:.1}/10"))
        ));
        out.push_str(&format!(
            "times to recovery (TTR) are Keel's clock at {}× the wall clock\n",
            self.clock_speed
        ));
        out.push_str("targets:\n");
        for (target, met) in self.targets() {
            out.push_str(&format!(
                "  {} {target}\n",
                if met { "met    " } else { "MISSED " }
            ));
        }
        out
    }

    pub fn to_json(&self) -> Value {
        json!({
            "clock_speed": self.clock_speed,
            "classes": self.rows.iter().map(Row::to_json).collect::<Vec<_>>(),
            "healable": self.healable.to_json(),
            "alerts": {
                "sent": self.alerts_sent,
                "actionable": self.alerts_actionable,
                "precision": self.precision(),
                "unattributed": self.unattributed_alerts,
            },
            "regressions": { "days": self.regressions.0, "alerted": self.regressions.1 },
            "health_score": self.health_score,
            "targets": self.targets().iter().map(|(target, met)| json!({"target": target, "met": met})).collect::<Vec<_>>(),
            "targets_met": self.targets_met(),
        })
    }
}

fn percent(share: f64) -> String {
    let value = share * 100.0;
    if value >= 99.95 || value == value.round() {
        format!("{value:.0}%")
    } else {
        format!("{value:.1}%")
    }
}

/// `850ms`, `12.3s`, `4m 05s`.
pub fn format_millis(millis: Millis) -> String {
    if millis < 1_000 {
        format!("{millis}ms")
    } else if millis < 60_000 {
        format!("{:.1}s", millis as f64 / 1_000.0)
    } else {
        format!("{}m {:02}s", millis / 60_000, (millis % 60_000) / 1_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn day(date: &str, class: FaultClass, state: RunState, recovery: Option<Millis>) -> DayResult {
        DayResult {
            date: date.to_string(),
            class,
            state: Some(state),
            attempts: 20,
            fault_at: recovery.map(|_| 0),
            recovery,
            keel_restarted: false,
            accuracy: (class == FaultClass::MetricRegression).then_some(0.18),
        }
    }

    fn plan_of(days: &[DayResult]) -> Vec<DayPlan> {
        days.iter()
            .map(|day| DayPlan {
                date: day.date.parse::<NaiveDate>().unwrap(),
                class: day.class,
                target: None,
                amount: 1,
            })
            .collect()
    }

    fn alert(partition: &str, subject: &str) -> Alert {
        Alert {
            status: "firing".to_string(),
            kind: "anomaly".to_string(),
            subject: subject.to_string(),
            partition: partition.to_string(),
        }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<Millis> = (1..=20).collect();
        assert_eq!(percentile(&values, 0.95), Some(19));
        assert_eq!(percentile(&[5], 0.95), Some(5));
        assert_eq!(percentile(&[], 0.95), None);
    }

    #[test]
    fn alerts_about_healed_faults_are_noise_and_about_regressions_actionable() {
        let days = vec![
            day(
                "2026-11-01",
                FaultClass::Crash,
                RunState::Succeeded,
                Some(30_000),
            ),
            day(
                "2026-11-02",
                FaultClass::Hang,
                RunState::Succeeded,
                Some(90_000),
            ),
            day(
                "2026-11-03",
                FaultClass::MetricRegression,
                RunState::Succeeded,
                None,
            ),
        ];
        let alerts = vec![
            alert("2026-11-03", "grading accuracy"),
            alert("2026-11-01", "team_defense"),
            Alert {
                status: "resolved".to_string(),
                ..alert("2026-11-01", "team_defense")
            },
            alert("", "feed"),
        ];
        let report = Report::build(&plan_of(&days), &days, &alerts, Some(9.1), 10);
        assert_eq!((report.alerts_sent, report.alerts_actionable), (3, 1));
        assert_eq!(report.unattributed_alerts, 1);
        assert_eq!(report.regressions, (1, 1));
        assert_eq!(report.healable.days, 2);
        assert_eq!(report.healable.recovery_mean, Some(60_000));
        assert_eq!(report.healable.recovery_p95, Some(90_000));
        assert!(!report.targets_met(), "precision 1/3 misses its target");
        let quiet = Report::build(&plan_of(&days), &days, &alerts[..1], None, 10);
        assert!(quiet.targets_met());
        assert!(quiet.render().contains("precision 100%"));
    }

    #[test]
    fn a_healable_partition_that_failed_misses_the_targets_and_its_alert_is_actionable() {
        let days = vec![
            day("2026-11-01", FaultClass::Crash, RunState::Failed, None),
            day(
                "2026-11-02",
                FaultClass::Crash,
                RunState::Succeeded,
                Some(400_000),
            ),
        ];
        let report = Report::build(
            &plan_of(&days),
            &days,
            &[alert("2026-11-01", "load_props")],
            None,
            10,
        );
        assert_eq!(report.healable.manual, 1);
        assert_eq!(report.alerts_actionable, 1);
        let missed: Vec<&str> = report
            .targets()
            .into_iter()
            .filter(|(_, met)| !met)
            .map(|(target, _)| target)
            .collect();
        assert_eq!(missed.len(), 3, "{missed:?}");
        assert_eq!(report.to_json()["targets_met"], false);
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(format_millis(850), "850ms");
        assert_eq!(format_millis(12_340), "12.3s");
        assert_eq!(format_millis(245_000), "4m 05s");
    }
}
