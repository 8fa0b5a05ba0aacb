//! `keel check`: what `keel validate` cannot see from the file alone, checked on this machine
//! before a version goes live — every command resolves, every variable a credential is read
//! from is set, every resource a task uses is declared.
//!
//! `keel serve` runs the same checks on a changed pipeline file before it switches to it, and
//! keeps the version in use when they fail (see `daemon.rs`).

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Result;
use comfy_table::{Cell, Table};
use keel_model::{HttpAuth, InheritEnv, PipelineSpec, TaskSpec};

use crate::args::CheckArgs;
use crate::display::count;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pass,
    Fail,
    /// Could not be checked here (a program named by a template), which is not a failure.
    Skip,
}

/// One line of the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    pub check: &'static str,
    /// What was checked: `task fetch: hoops`, `STATS_API_KEY`, `resource feed`.
    pub target: String,
    pub status: Status,
    pub detail: String,
}

/// Where the pipeline's tasks would run: its directory, Keel's environment and its env files.
pub struct Surroundings {
    pub pipeline_dir: PathBuf,
    pub keel_env: Vec<(String, String)>,
    pub env_files: HashMap<String, Vec<(String, String)>>,
}

impl Surroundings {
    /// The value of `name` as a task with `task`'s context would see it.
    fn variable(&self, task: Option<&TaskSpec>, name: &str) -> Option<String> {
        if let Some(task) = task {
            if let Some(value) = task.context.env.get(name) {
                return Some(value.clone());
            }
            let from_file = task.context.env_file.as_ref().and_then(|file| {
                self.env_files
                    .get(file)
                    .and_then(|pairs| pairs.iter().rev().find(|(key, _)| key == name))
            });
            if let Some((_, value)) = from_file {
                return Some(value.clone());
            }
            let inherited = match &task.context.inherit_env {
                InheritEnv::All => true,
                InheritEnv::Nothing => false,
                InheritEnv::Only(names) => names.iter().any(|allowed| allowed == name),
            };
            if !inherited {
                return None;
            }
        }
        self.keel_env
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
    }

    /// The directory a task's relative program path is found from, if it can be known before a
    /// run (a `cwd` with templates cannot).
    fn working_dir(&self, task: Option<&TaskSpec>) -> Option<PathBuf> {
        match task.and_then(|task| task.context.cwd.as_deref()) {
            None => Some(self.pipeline_dir.clone()),
            Some(cwd) if cwd.contains('{') => None,
            Some(cwd) => Some(self.pipeline_dir.join(cwd)),
        }
    }
}

/// Every check that needs no process to run, in the order of the file.
pub fn static_checks(spec: &PipelineSpec, surroundings: &Surroundings) -> Vec<Row> {
    let mut rows = Vec::new();
    for task in &spec.tasks {
        let owner = format!("task {}", task.name);
        if !task.command.is_empty() {
            rows.push(resolve(&owner, &task.command, Some(task), surroundings));
        }
        let several = !task.also_wait_for.is_empty();
        for (index, sensor) in task.sensors().enumerate() {
            if sensor.command.is_empty() {
                continue;
            }
            let place = if several {
                format!("{owner} wait_for[{index}]")
            } else {
                format!("{owner} wait_for")
            };
            rows.push(resolve(&place, &sensor.command, Some(task), surroundings));
        }
        if let Some(command) = task.when.as_ref().and_then(|when| when.command.as_ref()) {
            rows.push(resolve(
                &format!("{owner} when"),
                command,
                Some(task),
                surroundings,
            ));
        }
        let auths = std::iter::once(task.http.as_ref().and_then(|http| http.auth.as_ref())).chain(
            task.sensors()
                .map(|sensor| sensor.http.as_ref().and_then(|http| http.auth.as_ref())),
        );
        for auth in auths.flatten() {
            rows.extend(credential(&owner, auth, Some(task), surroundings));
        }
        for used in &task.uses {
            let declared = spec.resources.iter().any(|resource| resource.name == *used);
            rows.push(Row {
                check: "resource",
                target: format!("{owner} uses {used}"),
                status: if declared { Status::Pass } else { Status::Fail },
                detail: if declared {
                    "declared".to_string()
                } else {
                    format!(
                        "no [resources.{used}] in the pipeline; declare it or remove it from uses"
                    )
                },
            });
        }
    }
    for resource in &spec.resources {
        if let Some(auth) = resource
            .ready
            .as_ref()
            .and_then(|probe| probe.auth.as_ref())
        {
            rows.extend(credential(
                &format!("resource {} ready", resource.name),
                auth,
                None,
                surroundings,
            ));
        }
    }
    if let Some(alerts) = &spec.alerts {
        if let Some(command) = &alerts.command {
            rows.push(resolve("alerts command", command, None, surroundings));
        }
        if let Some(keel_model::WebhookUrl::Env(name)) = &alerts.webhook {
            rows.push(variable_row("alerts webhook", name, None, surroundings));
        }
    }
    rows
}

/// Whether a command's program can be started: found on PATH, or at its path.
fn resolve(
    owner: &str,
    command: &[String],
    task: Option<&TaskSpec>,
    surroundings: &Surroundings,
) -> Row {
    let program = &command[0];
    let target = format!("{owner}: {program}");
    let row = |status, detail: String| Row {
        check: "command",
        target: target.clone(),
        status,
        detail,
    };
    if program.contains('{') {
        return row(
            Status::Skip,
            "the program is named by a template; it is known only when a run starts".to_string(),
        );
    }
    if program.contains('/') {
        let Some(dir) = surroundings.working_dir(task) else {
            return row(
                Status::Skip,
                "the task's cwd has templates; the path is known only when a run starts"
                    .to_string(),
            );
        };
        let path = dir.join(program);
        return match executable(&path) {
            Ok(()) => row(Status::Pass, format!("{}", path.display())),
            Err(problem) => row(Status::Fail, format!("{} {problem}", path.display())),
        };
    }
    let search = surroundings
        .variable(task, "PATH")
        .unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".to_string());
    let found = search
        .split(':')
        .filter(|dir| !dir.is_empty())
        .map(|dir| Path::new(dir).join(program))
        .find(|candidate| executable(candidate).is_ok());
    match found {
        Some(path) => row(Status::Pass, format!("{}", path.display())),
        None => row(
            Status::Fail,
            format!(
                "not found on the PATH the task gets ({}); install it, or name it by its path",
                count(
                    search.split(':').filter(|dir| !dir.is_empty()).count() as u64,
                    "directory",
                    "directories"
                )
            ),
        ),
    }
}

fn executable(path: &Path) -> Result<(), &'static str> {
    let metadata = std::fs::metadata(path).map_err(|_| "does not exist")?;
    if !metadata.is_file() {
        return Err("is not a file");
    }
    if metadata.permissions().mode() & 0o111 == 0 {
        return Err("is not executable (chmod +x)");
    }
    Ok(())
}

/// The variables a credential is read from, and the program of a token command.
fn credential(
    owner: &str,
    auth: &HttpAuth,
    task: Option<&TaskSpec>,
    surroundings: &Surroundings,
) -> Vec<Row> {
    match auth {
        HttpAuth::BearerEnv(name) => vec![variable_row(owner, name, task, surroundings)],
        HttpAuth::Basic { password_env, .. } => {
            vec![variable_row(owner, password_env, task, surroundings)]
        }
        HttpAuth::TokenCommand { command, .. } => {
            vec![resolve(
                &format!("{owner} token_command"),
                command,
                task,
                surroundings,
            )]
        }
    }
}

/// Whether a variable a secret is read from is set, never saying its value.
fn variable_row(
    owner: &str,
    name: &str,
    task: Option<&TaskSpec>,
    surroundings: &Surroundings,
) -> Row {
    let set = surroundings
        .variable(task, name)
        .is_some_and(|value| !value.is_empty());
    Row {
        check: "secret",
        target: format!("{owner}: {name}"),
        status: if set { Status::Pass } else { Status::Fail },
        detail: if set {
            "set (value not shown)".to_string()
        } else {
            format!(
                "{name} is not set where the task would look for it; set it in Keel's environment or the task's env_file"
            )
        },
    }
}

/// What the rows say when something failed: one line per failure, for `/ready` and the log.
pub fn failures(rows: &[Row]) -> Option<String> {
    let failed: Vec<String> = rows
        .iter()
        .filter(|row| row.status == Status::Fail)
        .map(|row| format!("{} {}: {}", row.check, row.target, row.detail))
        .collect();
    (!failed.is_empty()).then(|| failed.join("; "))
}

pub async fn check(args: CheckArgs) -> Result<u8> {
    let spec = crate::state::load_pipeline(&args.pipeline)?;
    let surroundings = crate::setup::surroundings(&spec, &args.pipeline)?;
    let rows = static_checks(&spec, &surroundings);
    if args.json {
        let failed = rows.iter().any(|row| row.status == Status::Fail);
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "pipeline": spec.name,
                "version": spec.version(),
                "ok": !failed,
                "checks": rows,
            }))?
        );
    } else {
        print_table(&rows);
    }
    let failed = rows.iter().filter(|row| row.status == Status::Fail).count();
    let skipped = rows.iter().filter(|row| row.status == Status::Skip).count();
    let summary = format!(
        "pipeline {:?} version {}: {} passed, {failed} failed, {skipped} not checkable here",
        spec.name,
        spec.version(),
        count(
            rows.iter().filter(|row| row.status == Status::Pass).count() as u64,
            "check",
            "checks"
        ),
    );
    if failed > 0 {
        eprintln!("{summary}");
        eprintln!(
            "hint: fix what the table marks FAIL; keel serve keeps running the version in use until this version passes"
        );
        Ok(1)
    } else {
        eprintln!("{summary}");
        Ok(0)
    }
}

fn print_table(rows: &[Row]) {
    let mut table = Table::new();
    table.load_preset(comfy_table::presets::NOTHING);
    table.set_header(vec!["CHECK", "WHAT", "RESULT", "DETAIL"]);
    for row in rows {
        let status = match row.status {
            Status::Pass => "ok",
            Status::Fail => "FAIL",
            Status::Skip => "skip",
        };
        table.add_row(vec![
            Cell::new(row.check),
            Cell::new(&row.target),
            Cell::new(status),
            Cell::new(&row.detail),
        ]);
    }
    println!("{table}");
}
