//! Operations on runs that execute nothing: `keel accept` and `keel gc`.

use anyhow::{Context, Result};
use keel_model::{EventKind, RunState};
use keel_store::{AnyStore, NewEvent, RunRecord, Store};

use crate::Exit;
use crate::args::{AcceptArgs, GcArgs};
use crate::display::printable;
use crate::state;

/// Who runs this command: `$USER`, else the numeric user id.
pub(crate) fn who() -> String {
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
    let detail = accept_run(&store, &run, &who(), args.reason.as_deref()).await?;
    println!(
        "accepted run {} of partition {partition} as degraded, {}",
        run.id,
        printable(&detail)
    );
    Ok(0)
}

/// Records that the degraded `run` is acceptable as it is, accepted by `by` for `reason`, and
/// returns the detail stored in the event log. A run in any other state is refused (exit 2).
/// `keel accept` and the HTTP API both accept runs through here.
pub async fn accept_run(
    store: &AnyStore,
    run: &RunRecord,
    by: &str,
    reason: Option<&str>,
) -> Result<String> {
    if run.state != RunState::Degraded {
        return Err(Exit::usage(format!(
            "run {} of partition {} is {}; only a degraded run can be accepted",
            run.id,
            printable(&run.partition),
            run.state
        )));
    }
    let reason = reason.map(str::trim).filter(|reason| !reason.is_empty());
    let detail = match reason {
        Some(reason) => format!("by {by}: {reason}"),
        None => format!("by {by}"),
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
    Ok(detail)
}

/// What `keel gc` found under one run's directory: attempt (and sensor poll) directories, and
/// the bytes of the files in them. Links are counted, never followed.
fn measure(dir: &std::path::Path) -> (u64, u64) {
    fn bytes_under(path: &std::path::Path) -> u64 {
        let Ok(metadata) = std::fs::symlink_metadata(path) else {
            return 0;
        };
        if !metadata.is_dir() {
            return metadata.len();
        }
        std::fs::read_dir(path)
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| bytes_under(&entry.path()))
            .sum()
    }
    let directories = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
        .count() as u64;
    (directories, bytes_under(dir))
}

/// `1.5 MiB`, `812 bytes`.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `keel gc`: removes the attempt directories (output, results, sensor polls) of runs that
/// finished more than `--older-than` ago. The runs' rows stay; each pruned run gets a `pruned`
/// event saying what was freed. It takes the state lock, so it never runs beside a Keel that
/// executes the state, and touches only finished runs, whose attempts have all ended.
pub async fn gc(state_url: Option<&str>, name: Option<&str>, args: GcArgs) -> Result<u8> {
    let older_than = match keel_model::parse_duration(&args.older_than) {
        Ok(duration) => duration,
        Err(error) => {
            return Err(Exit::usage(format!(
                "--older-than {:?}: {error}; write it like 30d or 12h",
                args.older_than
            )));
        }
    };
    let state::ForReading { spec, paths, .. } =
        state::pipeline_for_reading(state_url, &args.pipeline.pipeline, name).await?;
    if !paths.exists() {
        println!(
            "no state at {}; nothing to remove",
            printable(&paths.location.to_string())
        );
        return Ok(0);
    }
    let (_lock, store) = paths.lock_and_open()?;
    let cutoff = state::now_millis().saturating_sub(older_than.as_millis() as i64);
    let runs = store.runs_to_prune(&spec.name, cutoff).await?;
    let (mut directories, mut bytes) = (0, 0);
    for run in &runs {
        let run_dir = paths
            .attempts_dir()
            .join(store.store_id())
            .join(run.id.0.to_string());
        let (found, size) = measure(&run_dir);
        directories += found;
        bytes += size;
        if args.dry_run {
            continue;
        }
        if std::fs::symlink_metadata(&run_dir).is_ok() {
            std::fs::remove_dir_all(&run_dir).with_context(|| {
                format!(
                    "cannot remove {}; check its permissions, then run keel gc again",
                    printable(&run_dir.display().to_string())
                )
            })?;
        }
        store
            .append_event(NewEvent {
                run: run.id,
                task: None,
                attempt: None,
                kind: EventKind::Pruned,
                detail: format!("removed {found} attempt directories, {}", human_bytes(size)),
                at: state::now_millis(),
            })
            .await?;
    }
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    println!(
        "{verb} {directories} attempt directories ({}) of {} finished more than {} ago",
        human_bytes(bytes),
        crate::display::count(runs.len() as u64, "run", "runs"),
        printable(&args.older_than)
    );
    Ok(0)
}
