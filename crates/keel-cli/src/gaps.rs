//! `keel gaps`: the partitions the pipeline's schedule should have made that are missing,
//! failed or stale, and the repairs automatic backfill made for them (docs/cli.md).

use anyhow::Result;
use keel_engine::gaps::{self, Gap};
use keel_model::schedule::Schedule;

use crate::Exit;
use crate::args::GapsArgs;
use crate::display::printable;
use crate::state::{self, StatePaths};

pub async fn gaps(state_url: Option<&str>, args: GapsArgs) -> Result<u8> {
    let spec = state::load_pipeline(&args.pipeline.pipeline)?;
    let schedule_spec = spec.schedule.clone().ok_or_else(|| {
        Exit::usage(format!(
            "pipeline {:?} has no schedule, so no partition is expected; add `schedule` and `backfill` to [pipeline] in {}",
            spec.name,
            args.pipeline.pipeline.display()
        ))
    })?;
    let backfill = schedule_spec.backfill.clone().unwrap_or_default();
    let schedule = Schedule::parse(&schedule_spec.cron, &spec.timezone)?;
    let now = state::now_millis();
    let expected = gaps::expected_partitions(&schedule, &schedule_spec, &backfill, now);
    let paths = StatePaths::resolve(state_url, &spec, &args.pipeline.pipeline)?;
    let found: Vec<Gap> = match paths.open_existing()? {
        Some(store) => gaps::find_gaps(&store, &spec.name, &expected, &backfill, now).await?,
        // Nothing has run: every expected partition is missing.
        None => expected
            .iter()
            .map(|partition| Gap {
                partition: partition.clone(),
                kind: gaps::GapKind::Missing,
                run: None,
                detail: "no run".to_string(),
                repairs: 0,
                repairable: true,
            })
            .collect(),
    };
    if args.json {
        let document = serde_json::json!({
            "pipeline": spec.name,
            "checked_at": now,
            "lookback_days": backfill.lookback_days,
            "auto": backfill.auto,
            "tries": backfill.tries,
            "expected": expected.len(),
            "gaps": found,
        });
        println!("{}", serde_json::to_string_pretty(&document)?);
    } else if found.is_empty() {
        println!(
            "no gaps: the {} partitions the schedule made in the last {} days all have a run that did not fail",
            expected.len(),
            backfill.lookback_days
        );
    } else {
        println!(
            "{} of {} expected partitions (last {} days) are gaps:",
            found.len(),
            expected.len(),
            backfill.lookback_days
        );
        println!(
            "{:<12} {:<8} {:>7} {:<10} detail",
            "partition", "kind", "repairs", "next"
        );
        for gap in &found {
            let next = if !backfill.auto {
                "by hand"
            } else if gap.repairable {
                "repair"
            } else {
                "a person"
            };
            println!(
                "{:<12} {:<8} {:>7} {:<10} {}",
                gap.partition,
                gap.kind.as_str(),
                format!("{}/{}", gap.repairs, backfill.tries),
                next,
                printable(&gap.detail)
            );
        }
        if !backfill.auto {
            println!(
                "backfill is not automatic: repair one with `keel run {} --partition D --detach`, or set backfill = {{ auto = true }} in [pipeline]",
                args.pipeline.pipeline.display()
            );
        }
    }
    Ok(if found.is_empty() { 0 } else { 1 })
}
