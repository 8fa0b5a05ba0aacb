//! The daily report: a day's runs, what healed itself and how, what needs a human, anomalies,
//! the SLO budgets and the health score with its trend over a week. Built from the facts and a
//! `now`; rendered as text (the terminal and the alert sinks), JSON and HTML.

use chrono::NaiveDate;
use chrono_tz::Tz;
use keel_health::score::Score;
use keel_model::{Millis, PipelineSpec, RunState};
use serde_json::{Value, json};

use super::facts::{Facts, Healed};
use super::slo::SloStatus;

const WEEK: Millis = 7 * 24 * 3_600_000;

/// One run of the day.
pub struct RunLine {
    pub run: i64,
    pub partition: String,
    pub state: RunState,
    pub created_at: Millis,
    pub finished_at: Option<Millis>,
}

/// What needs a person, and why.
pub struct NeedsHuman {
    pub run: i64,
    pub partition: String,
    pub why: String,
}

/// The report of one day.
pub struct Report {
    pub pipeline: String,
    pub date: NaiveDate,
    pub zone: Tz,
    pub runs: Vec<RunLine>,
    pub healed: Vec<(i64, String, Healed)>,
    pub needs_human: Vec<NeedsHuman>,
    /// (partition, subject, severity, what failed).
    pub checks: Vec<(String, String, String, String)>,
    pub anomalies: Vec<crate::anomalies::Anomaly>,
    pub slos: Vec<SloStatus>,
    pub score: Score,
    /// The score a week before the end of the day, for the trend.
    pub score_week_before: Score,
}

/// The report of `date` (a local date in `zone`): the runs created that day, judged as they
/// stand at `now`, the SLOs and the score as of the end of the day.
pub fn build(spec: &PipelineSpec, facts: &Facts, zone: Tz, date: NaiveDate, now: Millis) -> Report {
    let start = super::start_of(date, zone);
    let end = super::end_of(date, zone).min(now);
    let day: Vec<_> = facts
        .runs
        .iter()
        .filter(|run| {
            run.view.record.created_at >= start && run.view.record.created_at < end.max(start + 1)
        })
        .collect();
    let runs = day
        .iter()
        .map(|run| RunLine {
            run: run.view.record.id.0,
            partition: run.partition().to_string(),
            state: run.state(),
            created_at: run.view.record.created_at,
            finished_at: run.view.record.finished_at,
        })
        .collect();
    let healed = day
        .iter()
        .flat_map(|run| {
            run.healed()
                .into_iter()
                .map(|healed| (run.view.record.id.0, run.partition().to_string(), healed))
        })
        .collect();
    let mut needs_human = Vec::new();
    for run in &day {
        // A partition a later run fixed needs nobody any more.
        let newest = facts
            .runs_of(run.partition())
            .last()
            .is_some_and(|newest| newest.view.record.id == run.view.record.id);
        if !newest {
            continue;
        }
        let record = &run.view.record;
        let why = match record.state {
            RunState::Failed => {
                let failed: Vec<(String, Option<keel_model::Outcome>)> = run
                    .not_complete()
                    .into_iter()
                    .filter(|(_, outcome)| {
                        !matches!(outcome, Some(keel_model::Outcome::UpstreamFailed))
                    })
                    .collect();
                let shown: Vec<String> = failed
                    .iter()
                    .map(|(task, outcome)| match outcome {
                        Some(outcome) => format!("{task} {outcome}"),
                        None => task.clone(),
                    })
                    .collect();
                let names: Vec<String> = failed
                    .iter()
                    .map(|(task, _)| crate::hints::shell_quote(task))
                    .collect();
                Some(if failed.is_empty() {
                    format!(
                        "failed: {}; fix and `keel retry --partition {} --failed`",
                        record.message.clone().unwrap_or_default(),
                        record.partition
                    )
                } else {
                    format!(
                        "failed: {}; fix and `keel retry --partition {} {}`",
                        shown.join(", "),
                        record.partition,
                        names.join(" ")
                    )
                })
            }
            RunState::Degraded if run.view.accepted.is_none() => Some(format!(
                "degraded: {}; retry the missing tasks or `keel accept --partition {}`",
                record.message.clone().unwrap_or_default(),
                record.partition
            )),
            RunState::Running | RunState::Queued if now - record.created_at > 24 * 3_600_000 => {
                Some("still unfinished a day after it was created".to_string())
            }
            _ => None,
        };
        if let Some(why) = why {
            needs_human.push(NeedsHuman {
                run: record.id.0,
                partition: record.partition.clone(),
                why,
            });
        }
    }
    let checks = day
        .iter()
        .flat_map(|run| {
            run.check_failures
                .iter()
                .map(|(subject, severity, describe)| {
                    (
                        run.partition().to_string(),
                        subject.clone(),
                        severity.clone(),
                        describe.clone(),
                    )
                })
        })
        .collect();
    // Anomalies of the day's partitions, judged against every earlier partition read.
    let partitions: Vec<&str> = day.iter().map(|run| run.partition()).collect();
    let views: Vec<keel_store::RunView> = facts
        .newest_per_partition()
        .into_iter()
        .map(|run| run.view.clone())
        .collect();
    let anomalies = crate::anomalies::in_view(&views, now)
        .into_iter()
        .filter(|anomaly| partitions.contains(&anomaly.partition.as_str()))
        .collect();
    let as_of = super::end_of(date, zone).min(now);
    let slos = super::slo::statuses(&spec.slos, facts, zone, spec.schedule.is_some(), as_of);
    let score = super::score::health_score(spec, &facts.as_of(as_of), zone, as_of);
    let score_week_before =
        super::score::health_score(spec, &facts.as_of(as_of - WEEK), zone, as_of - WEEK);
    Report {
        pipeline: spec.name.clone(),
        date,
        zone,
        runs,
        healed,
        needs_human,
        checks,
        anomalies,
        slos,
        score,
        score_week_before,
    }
}

fn local(zone: Tz, at: Millis) -> String {
    chrono::DateTime::from_timestamp_millis(at)
        .map(|at| at.with_timezone(&zone).format("%H:%M").to_string())
        .unwrap_or_default()
}

fn minutes(millis: Millis) -> String {
    keel_model::format_duration(std::time::Duration::from_millis(millis.max(0) as u64))
}

impl Report {
    /// The change of the score over the week, when both ends could be judged.
    pub fn trend(&self) -> Option<f64> {
        Some(((self.score.score? - self.score_week_before.score?) * 10.0).round() / 10.0)
    }

    fn score_line(&self) -> String {
        let trend = match self.trend() {
            Some(trend) if trend > 0.0 => format!(" (up {trend:.1} over 7 days)"),
            Some(trend) if trend < 0.0 => format!(" (down {:.1} over 7 days)", -trend),
            Some(_) => " (unchanged over 7 days)".to_string(),
            None => String::new(),
        };
        match self.score.score {
            Some(score) => format!("{score:.1}/10{trend}"),
            None => "nothing to judge yet".to_string(),
        }
    }

    fn healed_line(&self, run: i64, partition: &str, healed: &Healed) -> String {
        let failures: Vec<&str> = healed
            .failures
            .iter()
            .map(|outcome| outcome.as_str())
            .collect();
        let upstream = if healed.upstream.is_empty() {
            String::new()
        } else {
            format!(", {} run again upstream", healed.upstream.join(", "))
        };
        format!(
            "{partition} run {run}: {} healed after {} ({}) in {}{upstream}",
            healed.task,
            if failures.len() == 1 {
                "1 retry".to_string()
            } else {
                format!("{} retries", failures.len())
            },
            failures.join(", "),
            minutes(healed.recovery)
        )
    }

    /// The terminal's (and the alert sinks') form.
    pub fn to_text(&self) -> String {
        let mut out = format!("keel report: {} on {}\n", self.pipeline, self.date);
        out.push_str(&format!("health score {}\n", self.score_line()));
        out.push_str(&format!("\nruns ({}):\n", self.runs.len()));
        if self.runs.is_empty() {
            out.push_str("  none\n");
        }
        for run in &self.runs {
            let took = run
                .finished_at
                .map(|end| format!(", took {}", minutes(end - run.created_at)))
                .unwrap_or_default();
            out.push_str(&format!(
                "  {} run {}: {} (started {}{took})\n",
                run.partition,
                run.run,
                run.state,
                local(self.zone, run.created_at)
            ));
        }
        out.push_str(&format!("\nhealed by Keel ({}):\n", self.healed.len()));
        if self.healed.is_empty() {
            out.push_str("  nothing needed healing\n");
        }
        for (run, partition, healed) in &self.healed {
            out.push_str(&format!(
                "  {}\n",
                self.healed_line(*run, partition, healed)
            ));
        }
        out.push_str(&format!("\nneeds a human ({}):\n", self.needs_human.len()));
        if self.needs_human.is_empty() {
            out.push_str("  nothing\n");
        }
        for need in &self.needs_human {
            out.push_str(&format!(
                "  {} run {}: {}\n",
                need.partition, need.run, need.why
            ));
        }
        if !self.checks.is_empty() {
            out.push_str(&format!("\nfailed checks ({}):\n", self.checks.len()));
            for (partition, subject, severity, describe) in &self.checks {
                out.push_str(&format!(
                    "  {partition} {subject} ({severity}): {describe}\n"
                ));
            }
        }
        out.push_str(&format!("\nanomalies ({}):\n", self.anomalies.len()));
        if self.anomalies.is_empty() {
            out.push_str("  none\n");
        }
        for anomaly in &self.anomalies {
            out.push_str(&format!(
                "  {} {}: {}\n",
                anomaly.partition,
                anomaly.task,
                anomaly.judgement.describe(&anomaly.metric)
            ));
        }
        out.push_str("\nSLO budgets:\n");
        if self.slos.is_empty() {
            out.push_str("  no SLO declared\n");
        }
        for slo in &self.slos {
            out.push_str(&format!("  {}\n", slo.line()));
        }
        out.push_str("\nscore dimensions:\n");
        for line in super::score::render(&self.score).lines().skip(1) {
            out.push_str(line);
            out.push('\n');
        }
        out
    }

    pub fn to_json(&self) -> Value {
        json!({
            "pipeline": self.pipeline,
            "date": self.date.to_string(),
            "runs": self.runs.iter().map(|run| json!({
                "run": run.run,
                "partition": run.partition,
                "state": run.state.as_str(),
                "created_at": run.created_at,
                "finished_at": run.finished_at,
            })).collect::<Vec<_>>(),
            "healed": self.healed.iter().map(|(run, partition, healed)| json!({
                "run": run,
                "partition": partition,
                "task": healed.task,
                "failures": healed.failures.iter().map(|outcome| outcome.as_str()).collect::<Vec<_>>(),
                "recovery_ms": healed.recovery,
                "upstream": healed.upstream,
                "describe": self.healed_line(*run, partition, healed),
            })).collect::<Vec<_>>(),
            "needs_human": self.needs_human.iter().map(|need| json!({
                "run": need.run,
                "partition": need.partition,
                "why": need.why,
            })).collect::<Vec<_>>(),
            "checks": self.checks.iter().map(|(partition, subject, severity, describe)| json!({
                "partition": partition,
                "subject": subject,
                "severity": severity,
                "describe": describe,
            })).collect::<Vec<_>>(),
            "anomalies": self.anomalies.iter().map(crate::anomalies::Anomaly::to_json).collect::<Vec<_>>(),
            "slos": self.slos.iter().map(SloStatus::to_json).collect::<Vec<_>>(),
            "score": super::score::to_json(&self.score),
            "score_week_before": self.score_week_before.score,
            "trend": self.trend(),
        })
    }

    /// A self-contained HTML page (no scripts, every value escaped).
    pub fn to_html(&self) -> String {
        let escape = crate::dashboard::view::escape_xml;
        let list = |items: Vec<String>, empty: &str| {
            if items.is_empty() {
                format!("<p>{}</p>", escape(empty))
            } else {
                let items: String = items
                    .iter()
                    .map(|item| format!("<li>{}</li>", escape(item)))
                    .collect();
                format!("<ul>{items}</ul>")
            }
        };
        let runs = self
            .runs
            .iter()
            .map(|run| format!("{} run {}: {}", run.partition, run.run, run.state))
            .collect();
        let healed = self
            .healed
            .iter()
            .map(|(run, partition, healed)| self.healed_line(*run, partition, healed))
            .collect();
        let needs = self
            .needs_human
            .iter()
            .map(|need| format!("{} run {}: {}", need.partition, need.run, need.why))
            .collect();
        let anomalies = self
            .anomalies
            .iter()
            .map(|anomaly| {
                format!(
                    "{} {}: {}",
                    anomaly.partition,
                    anomaly.task,
                    anomaly.judgement.describe(&anomaly.metric)
                )
            })
            .collect();
        let slos = self.slos.iter().map(SloStatus::line).collect();
        let dimensions = self
            .score
            .dimensions
            .iter()
            .map(|dimension| {
                format!(
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                    escape(dimension.name),
                    dimension.weight,
                    dimension
                        .value
                        .map_or("-".to_string(), |value| format!("{value:.2}")),
                    escape(&dimension.evidence)
                )
            })
            .collect::<String>();
        format!(
            "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>keel report: {pipeline} {date}</title></head><body>\n<h1>keel report: {pipeline} on {date}</h1>\n<p>health score {score}</p>\n<h2>runs</h2>{runs}\n<h2>healed by Keel</h2>{healed}\n<h2>needs a human</h2>{needs}\n<h2>anomalies</h2>{anomalies}\n<h2>SLO budgets</h2>{slos}\n<h2>score dimensions</h2><table><tr><th>dimension</th><th>weight</th><th>value</th><th>evidence</th></tr>{dimensions}</table>\n</body></html>",
            pipeline = escape(&self.pipeline),
            date = self.date,
            score = escape(&self.score_line()),
            runs = list(runs, "none"),
            healed = list(healed, "nothing needed healing"),
            needs = list(needs, "nothing"),
            anomalies = list(anomalies, "none"),
            slos = list(slos, "no SLO declared"),
        )
    }
}
