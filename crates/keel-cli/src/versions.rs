//! What tells a task's code apart, for its version: the output of its `version` command, or
//! the SHA-256 digests of its `code` files. Read before an engine starts (`setup.rs`), by
//! `keel check`, and by `keel serve` before a reloaded file goes live (off the engine's loop).
//! The engine combines it with the task's spec (`keel_engine`'s `rollout.rs`).

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use keel_model::{PipelineSpec, TaskSpec};
use sha2::{Digest, Sha256};

use crate::check::Surroundings;

/// How long a `version` command may run before it is killed, when not said otherwise.
pub const VERSION_TIMEOUT: Duration = Duration::from_secs(30);
/// Output of a `version` command kept: a version string, not a log.
const OUTPUT_CAP: u64 = 64 << 10;

/// Why a task's version cannot be known here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionProblem {
    pub task: String,
    pub problem: String,
}

/// The code identity of every task with `version` or `code`, by task name; or every task whose
/// identity cannot be read, and why. Blocking: it runs commands and reads files.
pub fn code_identities(
    spec: &PipelineSpec,
    surroundings: &Surroundings,
    extra_env: &[(String, String)],
    timeout: Duration,
) -> Result<HashMap<String, String>, Vec<VersionProblem>> {
    let mut identities = HashMap::new();
    let mut problems = Vec::new();
    for task in &spec.tasks {
        match code_identity(spec, task, surroundings, extra_env, timeout) {
            Ok(Some(identity)) => {
                identities.insert(task.name.clone(), identity);
            }
            Ok(None) => {}
            Err(problem) => problems.push(VersionProblem {
                task: task.name.clone(),
                problem,
            }),
        }
    }
    if problems.is_empty() {
        Ok(identities)
    } else {
        Err(problems)
    }
}

/// One task's code identity; `None` when it declares neither `version` nor `code`.
/// `extra_env` is what the engine adds to every task's environment.
pub fn code_identity(
    spec: &PipelineSpec,
    task: &TaskSpec,
    surroundings: &Surroundings,
    extra_env: &[(String, String)],
    timeout: Duration,
) -> Result<Option<String>, String> {
    if let Some(command) = &task.versioning.command {
        let output = run_version_command(spec, task, command, surroundings, extra_env, timeout)?;
        return Ok(Some(format!("version:{output}")));
    }
    if task.versioning.code.is_empty() {
        return Ok(None);
    }
    let mut identity = String::new();
    for file in &task.versioning.code {
        let path = surroundings.pipeline_dir.join(file);
        let digest = digest_of(&path).map_err(|error| {
            format!(
                "code file {} cannot be read ({error}), and code paths are relative to the pipeline file's folder",
                crate::display::printable(&path.display().to_string())
            )
        })?;
        identity.push_str(&format!("{file}:{digest}\n"));
    }
    Ok(Some(identity))
}

fn digest_of(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("it is not a regular file"));
    }
    let mut hasher = Sha256::new();
    let mut buffer = [0u8; 64 << 10];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect())
}

/// Runs a task's `version` command without a shell, in the task's working directory with its
/// environment, its templates expanded for today's partition; its trimmed standard output, or
/// why it failed. A command still running at `timeout` is killed with its process group.
fn run_version_command(
    spec: &PipelineSpec,
    task: &TaskSpec,
    command: &[String],
    surroundings: &Surroundings,
    extra_env: &[(String, String)],
    timeout: Duration,
) -> Result<String, String> {
    let today = crate::state::today(spec)
        .map(|date| date.format("%Y-%m-%d").to_string())
        .unwrap_or_default();
    let params = std::collections::BTreeMap::new();
    let values = keel_model::template::TemplateValues {
        date: &today,
        partition: &today,
        run_id: "0",
        task: &task.name,
        attempt: "0",
        pass: "",
        params: &params,
    };
    let argv: Vec<String> = command
        .iter()
        .map(|part| keel_model::template::Template::parse(part).expand(&values))
        .collect();
    let (mut env, clear) = crate::check::task_environment(Some(task), surroundings, &values);
    env.extend(extra_env.iter().cloned());
    // The program is looked up on the PATH the task gets, as the task's own would be.
    let program = env
        .iter()
        .rev()
        .find(|(name, _)| name == "PATH")
        .and_then(|(_, path)| {
            std::env::split_paths(path)
                .map(|dir| dir.join(&argv[0]))
                .find(|candidate| !argv[0].contains('/') && candidate.is_file())
        })
        .unwrap_or_else(|| std::path::PathBuf::from(&argv[0]));
    let cwd = surroundings.working_dir_of(Some(task));
    // A relative path names a program from the task's working directory.
    let program = match &cwd {
        Some(dir) if argv[0].contains('/') && program.is_relative() => dir.join(program),
        _ => program,
    };
    let mut process = std::process::Command::new(program);
    process
        .args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    std::os::unix::process::CommandExt::process_group(&mut process, 0);
    if clear {
        process.env_clear();
    }
    process.envs(env.iter().map(|(name, value)| (name, value)));
    if let Some(cwd) = cwd {
        process.current_dir(cwd);
    }
    let shown = argv.join(" ");
    let mut child = process
        .spawn()
        .map_err(|error| format!("version command {shown:?} cannot start: {error}"))?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out_reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = (&mut stdout).take(OUTPUT_CAP).read_to_end(&mut out);
        // Whatever is past the cap is drained, so the command never blocks on a full pipe.
        let _ = std::io::copy(&mut stdout, &mut std::io::sink());
        out
    });
    let err_reader = std::thread::spawn(move || {
        let mut err = Vec::new();
        let _ = (&mut stderr).take(OUTPUT_CAP).read_to_end(&mut err);
        let _ = std::io::copy(&mut stderr, &mut std::io::sink());
        err
    });
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() >= timeout => {
                if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
                    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
                }
                let _ = child.wait();
                return Err(format!(
                    "version command {shown:?} still running after {}; killed",
                    keel_model::format_duration(timeout)
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(error) => return Err(format!("version command {shown:?}: {error}")),
        }
    };
    let out = out_reader.join().unwrap_or_default();
    let err = err_reader.join().unwrap_or_default();
    if !status.success() {
        return Err(format!(
            "version command {shown:?} failed ({status}){}",
            crate::check::output_tail(&err, &out)
        ));
    }
    let text = String::from_utf8_lossy(&out).trim().to_string();
    if text.is_empty() {
        return Err(format!(
            "version command {shown:?} printed nothing; it must print what names the task's code"
        ));
    }
    Ok(text)
}
