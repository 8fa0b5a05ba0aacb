//! `keel flags`: switch a task off, or on for a share of partitions, without editing the
//! pipeline file or restarting `keel serve`. Flags live in the state store; the engine reads them
//! when a run is created and whenever a task becomes ready.

use anyhow::Result;
use chrono::TimeZone;
use keel_model::FlagState;
use keel_store::{FlagRecord, Store};

use crate::Exit;
use crate::args::{FlagsArgs, FlagsCommand};
use crate::display::printable;
use crate::state::{self, StatePaths};

pub async fn flags(state_url: Option<&str>, args: FlagsArgs) -> Result<u8> {
    let spec = state::load_pipeline(&args.pipeline)?;
    let paths = StatePaths::resolve(state_url, &spec, &args.pipeline)?;
    match args.command {
        FlagsCommand::Set { task, value } => {
            if spec.task(&task).is_none() {
                return Err(crate::inspect::unknown_task(&spec, &task));
            }
            let wanted: FlagState = value.parse().map_err(Exit::usage)?;
            std::fs::create_dir_all(&paths.dir)?;
            let store = paths.open()?;
            let before = store
                .flags(&spec.name)
                .await?
                .into_iter()
                .find(|flag| flag.task == task)
                .map_or("on".to_string(), |flag| flag.state);
            match wanted {
                FlagState::On => {
                    store.clear_flag(&spec.name, &task).await?;
                }
                FlagState::Off | FlagState::Percent(_) => {
                    store
                        .set_flag(FlagRecord {
                            pipeline: spec.name.clone(),
                            task: task.clone(),
                            state: wanted.to_string(),
                            set_at: state::now_millis(),
                            set_by: crate::operations::who(),
                        })
                        .await?;
                }
            }
            let effect = match wanted {
                FlagState::On => "runs in every partition".to_string(),
                FlagState::Off => {
                    "is skipped in every partition (skipped counts as complete)".to_string()
                }
                FlagState::Percent(share) => {
                    format!("runs in {share}% of partitions and is skipped in the others")
                }
            };
            println!(
                "task {task}: {wanted} (was {before}); from now on it {effect}, including tasks not yet started in unfinished runs"
            );
            Ok(0)
        }
        FlagsCommand::List { json } => {
            let flags = match paths.open_existing()? {
                Some(store) => store.flags(&spec.name).await?,
                None => Vec::new(),
            };
            if json {
                let rows: Vec<serde_json::Value> = flags
                    .iter()
                    .map(|flag| {
                        serde_json::json!({
                            "task": flag.task,
                            "state": flag.state,
                            "set_at": flag.set_at,
                            "set_by": flag.set_by,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else if flags.is_empty() {
                println!("no flags: every task of pipeline {:?} runs", spec.name);
            } else {
                for flag in &flags {
                    println!(
                        "{:<24} {:<4} set {} by {}",
                        flag.task,
                        flag.state,
                        when(flag.set_at),
                        printable(&flag.set_by)
                    );
                }
            }
            Ok(0)
        }
    }
}

fn when(millis: i64) -> String {
    chrono::Utc
        .timestamp_millis_opt(millis)
        .single()
        .map_or_else(
            || millis.to_string(),
            |time| time.format("%Y-%m-%d %H:%M UTC").to_string(),
        )
}
