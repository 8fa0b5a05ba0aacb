//! `keel rollout`: the versions of each task (`version`, `code`, `rollout` in the pipeline
//! file), where each stands, and promoting or rolling one back by hand. The versions live in the
//! state store; a running engine reads them again on every poll, so a decision applies without
//! a restart.

use anyhow::Result;
use keel_model::VersionStatus;
use keel_store::{Store, TaskVersionRecord};

use crate::args::{RolloutArgs, RolloutCommand};
use crate::display::printable;
use crate::state::{self, StatePaths};

pub async fn rollout(state_url: Option<&str>, args: RolloutArgs) -> Result<u8> {
    let spec = state::load_pipeline(&args.pipeline)?;
    let paths = StatePaths::resolve(state_url, &spec, &args.pipeline)?;
    match args.command {
        RolloutCommand::List { json } => {
            let versions = match paths.open_existing()? {
                Some(store) => store.task_versions(&spec.name).await?,
                None => Vec::new(),
            };
            if json {
                let rows: Vec<serde_json::Value> = versions.iter().map(version_json).collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else if versions.is_empty() {
                println!(
                    "no task versions recorded for pipeline {:?}: they are recorded when a run starts",
                    spec.name
                );
            } else {
                print_table(&versions);
            }
            Ok(0)
        }
        RolloutCommand::Promote { task, task_version } => {
            decide(&spec, &paths, &task, task_version, VersionStatus::Promoted).await
        }
        RolloutCommand::Rollback { task, task_version } => {
            decide(
                &spec,
                &paths,
                &task,
                task_version,
                VersionStatus::RolledBack,
            )
            .await
        }
    }
}

/// A version as `keel rollout list --json` and `keel status --json` show it.
pub fn version_json(record: &TaskVersionRecord) -> serde_json::Value {
    serde_json::json!({
        "task": record.task,
        "version": record.version,
        "status": record.status.as_str(),
        "clean": record.clean,
        "failed": record.failed,
        "reason": record.reason,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
    })
}

fn print_table(versions: &[TaskVersionRecord]) {
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::NOTHING);
    table.set_header(vec!["TASK", "VERSION", "STATUS", "CANARY", "WHY"]);
    for record in versions {
        table.add_row(vec![
            record.task.clone(),
            record.version.clone(),
            record.status.to_string(),
            format!("{} clean, {} failed", record.clean, record.failed),
            printable(record.reason.as_deref().unwrap_or_default()),
        ]);
    }
    println!("{table}");
}

async fn decide(
    spec: &keel_model::PipelineSpec,
    paths: &StatePaths,
    task: &str,
    version: Option<String>,
    status: VersionStatus,
) -> Result<u8> {
    if spec.task(task).is_none() {
        return Err(crate::inspect::unknown_task(spec, task));
    }
    let Some(store) = paths.open_existing()? else {
        return Err(anyhow::anyhow!(
            "no state for pipeline {:?} yet; task versions are recorded when a run starts",
            spec.name
        ));
    };
    let versions: Vec<TaskVersionRecord> = store
        .task_versions(&spec.name)
        .await?
        .into_iter()
        .filter(|record| record.task == task)
        .collect();
    let chosen = match &version {
        Some(wanted) => versions.iter().find(|record| record.version == *wanted),
        // Newest first: the canary or rolled-back version to promote, or the canary (else the
        // promoted version) to roll back.
        None if status == VersionStatus::Promoted => versions.iter().find(|record| {
            matches!(
                record.status,
                VersionStatus::Canary | VersionStatus::RolledBack
            )
        }),
        None => versions
            .iter()
            .find(|record| record.status == VersionStatus::Canary)
            .or_else(|| {
                versions
                    .iter()
                    .find(|record| record.status == VersionStatus::Promoted)
            }),
    };
    let Some(chosen) = chosen else {
        let known: Vec<String> = versions
            .iter()
            .map(|record| format!("{} ({})", record.version, record.status))
            .collect();
        return Err(anyhow::anyhow!(
            "{}",
            match version {
                Some(wanted) => format!(
                    "task {task} has no version {wanted:?}; its versions: {}",
                    if known.is_empty() {
                        "none yet".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
                None => format!(
                    "task {task} has no version to {}; keel rollout list shows its versions",
                    if status == VersionStatus::Promoted {
                        "promote"
                    } else {
                        "roll back"
                    }
                ),
            }
        ));
    };
    if chosen.status == status {
        println!(
            "task {task}: version {} is already {status}",
            chosen.version
        );
        return Ok(0);
    }
    if status == VersionStatus::RolledBack
        && chosen.status == VersionStatus::Promoted
        && !versions
            .iter()
            .any(|record| record.status == VersionStatus::Retired)
    {
        return Err(anyhow::anyhow!(
            "task {task}: version {} is the only version ever promoted; there is nothing to roll back to",
            chosen.version
        ));
    }
    let reason = format!("by {}", crate::operations::who());
    store
        .set_task_version_status(
            &spec.name,
            task,
            &chosen.version,
            status,
            &reason,
            state::now_millis(),
        )
        .await?;
    let effect = match status {
        VersionStatus::Promoted => "every partition runs it from now on",
        _ => "the version promoted before it runs instead, in every partition",
    };
    println!(
        "task {task}: version {} {status} (was {}); {effect}",
        chosen.version, chosen.status
    );
    Ok(0)
}
