//! `keel check`: what `keel validate` cannot see from the file alone, checked on this machine
//! before a version goes live — every command resolves, every variable a credential is read
//! from is set, every resource a task uses is declared, and every task's smoke test passes.
//!
//! `keel serve` runs the same checks on a changed pipeline file before it switches to it, and
//! keeps the version in use when they fail (see `daemon.rs`).

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
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
#[derive(Clone)]
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

    /// The directory a task's commands run in, if it can be known before a run.
    pub(crate) fn working_dir_of(&self, task: Option<&TaskSpec>) -> Option<PathBuf> {
        self.working_dir(task)
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
    rows.extend(declared_secrets(spec, surroundings));
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

/// Every secret a task declares (`secrets = [...]`), read through the pipeline's provider as
/// an attempt would read it; the value is dropped at once and never shown.
fn declared_secrets(spec: &PipelineSpec, surroundings: &Surroundings) -> Vec<Row> {
    let names: Vec<(&str, &str)> = spec
        .tasks
        .iter()
        .flat_map(|task| {
            task.secrets
                .iter()
                .map(move |name| (task.name.as_str(), name.as_str()))
        })
        .collect();
    if names.is_empty() {
        return Vec::new();
    }
    let provider = spec
        .secrets
        .as_ref()
        .map_or(keel_model::SecretProvider::Env, |secrets| {
            secrets.provider.clone()
        });
    let resolver = keel_secrets::Resolver::with_system_clock(&provider, &surroundings.pipeline_dir);
    names
        .into_iter()
        .map(|(task, name)| {
            let (status, detail) = match resolver.resolve(name) {
                Ok(_) => (Status::Pass, "resolves (value not shown)".to_string()),
                Err(error) => (Status::Fail, error.to_string()),
            };
            Row {
                check: "secret",
                target: format!("task {task}: {name}"),
                status,
                detail,
            }
        })
        .collect()
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

/// Every task's version (`version`, `code`): a row per task that declares either, failing when
/// its version command fails or a code file cannot be read; and the code identities read, for
/// the engine. Blocking: it runs the version commands.
pub fn version_checks(
    spec: &PipelineSpec,
    surroundings: &Surroundings,
    timeout: std::time::Duration,
) -> (Vec<Row>, HashMap<String, String>) {
    let mut rows = Vec::new();
    let mut identities = HashMap::new();
    for task in &spec.tasks {
        let declared = task.versioning.command.is_some() || !task.versioning.code.is_empty();
        if !declared {
            continue;
        }
        let row = |status, detail| Row {
            check: "version",
            target: format!("task {}", task.name),
            status,
            detail,
        };
        match crate::versions::code_identity(spec, task, surroundings, &[], timeout) {
            Ok(identity) => {
                let identity = identity.unwrap_or_default();
                let json = serde_json::to_string(task).unwrap_or_default();
                let version = keel_model::task_version_of(&json, &identity);
                let from = if task.versioning.command.is_some() {
                    let output = identity.trim_start_matches("version:");
                    let first = output.lines().next().unwrap_or_default();
                    format!("version command says {}", crate::display::printable(first))
                } else {
                    format!(
                        "{} digested",
                        count(task.versioning.code.len() as u64, "code file", "code files")
                    )
                };
                rows.push(row(Status::Pass, format!("version {version} ({from})")));
                identities.insert(task.name.clone(), identity);
            }
            Err(problem) => rows.push(row(Status::Fail, problem)),
        }
    }
    (rows, identities)
}

/// Output of a smoke test kept for the report, per stream.
const SMOKE_OUTPUT_CAP: usize = 64 << 10;

/// Runs every task's smoke test (`smoke = [...]`), at most `jobs` at once, each in the task's
/// working directory with the task's environment, without a shell, its templates expanded for
/// today's partition. One that exits 0 within `timeout` passes; one that fails shows the end of
/// its output. A test still running at its timeout is killed with its process group.
pub async fn smoke_tests(
    spec: &PipelineSpec,
    surroundings: &Surroundings,
    timeout: std::time::Duration,
    jobs: usize,
) -> Vec<Row> {
    let today = crate::state::today(spec)
        .map(|date| date.format("%Y-%m-%d").to_string())
        .unwrap_or_default();
    let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(jobs.max(1)));
    let mut running = Vec::new();
    for smoke in &spec.smoke {
        let task = spec.task(&smoke.task);
        let params = std::collections::BTreeMap::new();
        let values = keel_model::template::TemplateValues {
            date: &today,
            partition: &today,
            run_id: "0",
            task: &smoke.task,
            attempt: "0",
            pass: "",
            params: &params,
        };
        let command: Vec<String> = smoke
            .command
            .iter()
            .map(|part| keel_model::template::Template::parse(part).expand(&values))
            .collect();
        let (env, clear) = task_environment(task, surroundings, &values);
        let cwd = surroundings.working_dir(task);
        let target = format!("task {}: {}", smoke.task, command.join(" "));
        let permits = permits.clone();
        running.push(tokio::spawn(async move {
            let _permit = permits.acquire_owned().await;
            let (status, detail) = run_smoke(&command, &env, clear, cwd.as_deref(), timeout).await;
            Row {
                check: "smoke",
                target,
                status,
                detail,
            }
        }));
    }
    let mut rows = Vec::new();
    for handle in running {
        if let Ok(row) = handle.await {
            rows.push(row);
        }
    }
    rows
}

/// The environment a task's process gets (without Keel's `KEEL_*` variables): what it inherits,
/// its env file, its `env` with templates expanded; and whether it starts from that alone.
pub(crate) fn task_environment(
    task: Option<&TaskSpec>,
    surroundings: &Surroundings,
    values: &keel_model::template::TemplateValues<'_>,
) -> (Vec<(String, String)>, bool) {
    let Some(task) = task else {
        return (Vec::new(), false);
    };
    let mut env = Vec::new();
    let clear = match &task.context.inherit_env {
        InheritEnv::All => false,
        InheritEnv::Nothing => true,
        InheritEnv::Only(names) => {
            env.extend(
                surroundings
                    .keel_env
                    .iter()
                    .filter(|(name, _)| names.contains(name))
                    .cloned(),
            );
            true
        }
    };
    if let Some(file) = &task.context.env_file {
        env.extend(
            surroundings
                .env_files
                .get(file)
                .into_iter()
                .flatten()
                .cloned(),
        );
    }
    env.extend(task.context.env.iter().map(|(name, value)| {
        (
            name.clone(),
            keel_model::template::Template::parse(value).expand(values),
        )
    }));
    (env, clear)
}

async fn run_smoke(
    command: &[String],
    env: &[(String, String)],
    clear: bool,
    cwd: Option<&Path>,
    timeout: std::time::Duration,
) -> (Status, String) {
    use tokio::io::AsyncReadExt;
    let mut process = tokio::process::Command::new(&command[0]);
    process
        .args(&command[1..])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if clear {
        process.env_clear();
    }
    process.envs(env.iter().map(|(name, value)| (name, value)));
    if let Some(cwd) = cwd {
        process.current_dir(cwd);
    }
    let started = std::time::Instant::now();
    let mut child = match process.spawn() {
        Ok(child) => child,
        Err(error) => return (Status::Fail, format!("cannot start it: {error}")),
    };
    let group = child.id();
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let read = async {
        let mut out = Vec::new();
        let mut err = Vec::new();
        if let Some(stream) = stdout.as_mut() {
            let _ = stream
                .take(SMOKE_OUTPUT_CAP as u64)
                .read_to_end(&mut out)
                .await;
        }
        if let Some(stream) = stderr.as_mut() {
            let _ = stream
                .take(SMOKE_OUTPUT_CAP as u64)
                .read_to_end(&mut err)
                .await;
        }
        let status = child.wait().await;
        (status, out, err)
    };
    match tokio::time::timeout(timeout, read).await {
        Err(_) => {
            if let Some(pid) = group.and_then(|id| rustix::process::Pid::from_raw(id as i32)) {
                let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            }
            (
                Status::Fail,
                format!(
                    "still running after {}; killed",
                    keel_model::format_duration(timeout)
                ),
            )
        }
        Ok((status, out, err)) => {
            let took = started.elapsed();
            match status {
                Ok(status) if status.success() => (
                    Status::Pass,
                    format!("exit 0 in {:.1} s", took.as_secs_f64()),
                ),
                Ok(status) => {
                    let tail = output_tail(&err, &out);
                    (Status::Fail, format!("{status}{tail}"))
                }
                Err(error) => (Status::Fail, format!("cannot wait for it: {error}")),
            }
        }
    }
}

/// The last lines of what a failed smoke test printed, stderr first.
pub(crate) fn output_tail(err: &[u8], out: &[u8]) -> String {
    let text = if err.iter().any(|byte| !byte.is_ascii_whitespace()) {
        err
    } else {
        out
    };
    let text = String::from_utf8_lossy(text);
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    if lines.is_empty() {
        return String::new();
    }
    let last: Vec<String> = lines[lines.len().saturating_sub(3)..]
        .iter()
        .map(|line| crate::display::printable(line.trim()))
        .collect();
    format!(": {}", last.join(" / "))
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
    let timeout = match keel_model::parse_duration(&args.timeout) {
        Ok(timeout) if !timeout.is_zero() && timeout <= keel_config::MAX_DURATION => timeout,
        Ok(_) => {
            return Err(crate::Exit::usage(format!(
                "--timeout {:?} must be more than 0 and at most 365d",
                args.timeout
            )));
        }
        Err(error) => {
            return Err(crate::Exit::usage(format!(
                "--timeout {:?}: {error}",
                args.timeout
            )));
        }
    };
    let mut rows = static_checks(&spec, &surroundings);
    let (version_rows, _) = {
        let (spec, surroundings) = (spec.clone(), surroundings.clone());
        tokio::task::spawn_blocking(move || version_checks(&spec, &surroundings, timeout))
            .await
            .context("the version checks failed to run")?
    };
    rows.extend(version_rows);
    let jobs = std::thread::available_parallelism().map_or(2, |n| n.get());
    rows.extend(smoke_tests(&spec, &surroundings, timeout, jobs).await);
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
