//! `keel slo`, `keel health` and `keel report`: the pipeline's SLO budgets, its health score and
//! the daily report, all judged from the runs in the state (`facts`), never from a second
//! record. The judging is pure (`slo`, `score`, `report`), over the facts and a `now`.

pub mod facts;
pub mod report;
pub mod score;
pub mod slo;

use anyhow::Result;
use chrono::TimeZone;
use keel_model::{Millis, PipelineSpec};

use crate::args::{HealthArgs, ReportArgs, SloArgs};
use crate::state;
use facts::Facts;

/// How far back the commands read: the longest SLO period, and at least the score's window
/// and a week of its trend.
fn since(spec: &PipelineSpec, now: Millis) -> Millis {
    let longest = spec
        .slos
        .iter()
        .map(|slo| slo.period.as_millis() as Millis)
        .max()
        .unwrap_or(0)
        .max(score::WINDOW + 7 * 24 * 3_600_000);
    now - longest - 24 * 3_600_000
}

pub fn zone(spec: &PipelineSpec) -> chrono_tz::Tz {
    spec.timezone.parse().unwrap_or(chrono_tz::UTC)
}

async fn read(
    state_url: Option<&str>,
    name: Option<&str>,
    pipeline: &std::path::Path,
    now: Millis,
) -> Result<(PipelineSpec, Facts)> {
    let state::ForReading { spec, paths, .. } =
        state::pipeline_for_reading(state_url, pipeline, name).await?;
    let facts = match paths.open_for_reading()? {
        None => Facts::default(),
        Some(store) => facts::gather(&store, &spec.name, since(&spec, now)).await?,
    };
    Ok((spec, facts))
}

/// `keel slo`: each SLO's budget and what burns it.
pub async fn slo_command(state_url: Option<&str>, name: Option<&str>, args: SloArgs) -> Result<u8> {
    let now = state::now_millis();
    let (spec, facts) = read(state_url, name, &args.pipeline.pipeline, now).await?;
    let statuses = slo::statuses(
        &spec.slos,
        &facts,
        zone(&spec),
        spec.schedule.is_some(),
        now,
    );
    if args.json {
        let document = serde_json::json!({
            "pipeline": spec.name,
            "slos": statuses.iter().map(slo::SloStatus::to_json).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&document)?);
        return Ok(0);
    }
    if statuses.is_empty() {
        println!(
            "pipeline {:?} declares no SLO; add one such as [slo.fresh_by_ten] kind = \"freshness\", by = \"10:00\", objective = \"99%\" (docs/health.md)",
            spec.name
        );
        return Ok(0);
    }
    for status in &statuses {
        println!("{}", crate::display::printable(&status.line()));
        for bad in status.bad.iter().take(5) {
            println!(
                "  bad: {} {}",
                bad.partition,
                crate::display::printable(&bad.why)
            );
        }
    }
    Ok(0)
}

/// `keel health`: the score, its dimensions, weights and evidence.
pub async fn health_command(
    state_url: Option<&str>,
    name: Option<&str>,
    args: HealthArgs,
) -> Result<u8> {
    let now = state::now_millis();
    let (spec, facts) = read(state_url, name, &args.pipeline.pipeline, now).await?;
    let score = score::health_score(&spec, &facts, zone(&spec), now);
    // The trend: the score as the runs stood a week ago.
    let week_ago = now - 7 * 24 * 3_600_000;
    let before = score::health_score(&spec, &facts.as_of(week_ago), zone(&spec), week_ago);
    let trend = score
        .score
        .zip(before.score)
        .map(|(now, before)| ((now - before) * 10.0).round() / 10.0);
    if args.json {
        let mut document = score::to_json(&score);
        document["pipeline"] = spec.name.clone().into();
        document["score_week_before"] = before.score.into();
        document["trend"] = trend.into();
        println!("{}", serde_json::to_string_pretty(&document)?);
    } else {
        for (index, line) in score::render(&score).lines().enumerate() {
            match trend {
                Some(trend) if index == 0 => println!("{line} ({trend:+.1} over 7 days)"),
                _ => println!("{line}"),
            }
        }
    }
    Ok(0)
}

/// `keel report`: a day's report, as text, JSON or HTML.
pub async fn report_command(
    state_url: Option<&str>,
    name: Option<&str>,
    args: ReportArgs,
) -> Result<u8> {
    let now = state::now_millis();
    let (spec, facts) = read(state_url, name, &args.pipeline.pipeline, now).await?;
    let zone = zone(&spec);
    let date = match &args.date {
        Some(text) => state::parse_date("--date", text)?,
        None => state::today(&spec)?.pred_opt().unwrap_or_default(),
    };
    let report = report::build(&spec, &facts, zone, date, now);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report.to_json())?);
    } else if args.html {
        println!("{}", report.to_html());
    } else {
        for line in report.to_text().lines() {
            println!("{}", crate::display::printable(line));
        }
    }
    Ok(0)
}

/// The end of `date` in `zone` (the start of the next day), in milliseconds.
pub fn end_of(date: chrono::NaiveDate, zone: chrono_tz::Tz) -> Millis {
    let next = date
        .succ_opt()
        .unwrap_or(date)
        .and_hms_opt(0, 0, 0)
        .unwrap_or_default();
    zone.from_local_datetime(&next)
        .earliest()
        .map_or(0, |at| at.timestamp_millis())
}

/// The start of `date` in `zone`.
pub fn start_of(date: chrono::NaiveDate, zone: chrono_tz::Tz) -> Millis {
    let start = date.and_hms_opt(0, 0, 0).unwrap_or_default();
    zone.from_local_datetime(&start)
        .earliest()
        .map_or(0, |at| at.timestamp_millis())
}
