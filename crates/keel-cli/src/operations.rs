//! Operations on runs that execute nothing: `keel accept`.

use anyhow::Result;
use keel_model::{EventKind, RunState};
use keel_store::{NewEvent, Store};

use crate::Exit;
use crate::args::AcceptArgs;
use crate::display::printable;
use crate::state;

/// Who runs this command: `$USER`, else the numeric user id.
fn who() -> String {
    std::env::var("USER")
        .ok()
        .filter(|user| !user.trim().is_empty())
        .unwrap_or_else(|| format!("uid {}", rustix::process::getuid().as_raw()))
}

/// `keel accept`: records in the event log that a degraded run is acceptable as it is, with who
/// and why. The run's state stays `degraded`; `keel status` shows it accepted.
pub async fn accept(state_url: Option<&str>, name: Option<&str>, args: AcceptArgs) -> Result<u8> {
    let state::ForReading { spec, paths, .. } =
        state::pipeline_for_reading(state_url, &args.pipeline.pipeline, name).await?;
    let partition = state::check_partition(&spec, &args.partition)?;
    let no_run = || {
        Exit::usage(format!(
            "no run of partition {partition} of pipeline {:?} to accept",
            spec.name
        ))
    };
    let store = paths.open_existing()?.ok_or_else(no_run)?;
    let run = store
        .latest_run(&spec.name, &partition)
        .await?
        .ok_or_else(no_run)?;
    if run.state != RunState::Degraded {
        return Err(Exit::usage(format!(
            "run {} of partition {partition} is {}; only a degraded run can be accepted",
            run.id, run.state
        )));
    }
    let reason = args
        .reason
        .as_deref()
        .map(str::trim)
        .filter(|reason| !reason.is_empty());
    let detail = match reason {
        Some(reason) => format!("by {}: {reason}", who()),
        None => format!("by {}", who()),
    };
    store
        .append_event(NewEvent {
            run: run.id,
            task: None,
            attempt: None,
            kind: EventKind::Accepted,
            detail: detail.clone(),
            at: state::now_millis(),
        })
        .await?;
    println!(
        "accepted run {} of partition {partition} as degraded, {}",
        run.id,
        printable(&detail)
    );
    Ok(0)
}
