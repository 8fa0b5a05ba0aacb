//! Loading the pipeline and finding, locking and opening its state.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use chrono::TimeZone;
use keel_model::{PartitionKind, PipelineSpec};
use keel_store::{AnyStore, StateLocation, StateLock};

use crate::Exit;

/// Reads and validates the pipeline file; errors exit 2 with every problem listed.
pub fn load_pipeline(path: &Path) -> Result<PipelineSpec> {
    keel_config::load(path).map_err(|errors| {
        let count = errors.0.len();
        let noun = if count == 1 { "error" } else { "errors" };
        anyhow::Error::new(crate::Invalid {
            errors: errors.0.iter().map(ToString::to_string).collect(),
            summary: format!("{count} {noun} in {}", path.display()),
        })
    })
}

/// Reads the env files the pipeline at `path` names, relative to its directory; errors exit 2
/// with every problem listed, each naming the file and line.
pub fn load_env_files(spec: &PipelineSpec, path: &Path) -> Result<keel_config::EnvFiles> {
    let base = path.parent().unwrap_or(Path::new(""));
    keel_config::load_env_files(spec, base).map_err(|errors| {
        let count = errors.0.len();
        let noun = if count == 1 { "error" } else { "errors" };
        anyhow::Error::new(crate::Invalid {
            errors: errors.0.iter().map(ToString::to_string).collect(),
            summary: format!("{count} {noun} in the env files of {}", path.display()),
        })
    })
}

/// Where a pipeline's file and state live.
#[derive(Debug, Clone)]
pub struct StatePaths {
    /// The SQLite file, or the PostgreSQL database.
    pub location: StateLocation,
    /// The local state directory: the lock, attempt directories, the API token. The SQLite
    /// file's directory; for a state in PostgreSQL, `.keel` beside the pipeline file.
    pub dir: PathBuf,
    /// The pipeline file, as given.
    pub pipeline: PathBuf,
}

impl StatePaths {
    /// `--state` wins over the pipeline's `state` field, which wins over `.keel/state.db`
    /// beside the pipeline file. Relative paths in the file are relative to the file.
    pub fn resolve(
        cli_state: Option<&str>,
        spec: &PipelineSpec,
        pipeline_path: &Path,
    ) -> Result<StatePaths> {
        let base = pipeline_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let (url, relative_to) = match (cli_state, spec.state.as_deref()) {
            (Some(url), _) => (url.to_string(), PathBuf::new()),
            (None, Some(url)) => (url.to_string(), base.clone()),
            (None, None) => {
                let dir = absolute(&base.join(".keel"))?;
                return Ok(StatePaths {
                    location: StateLocation::Sqlite(dir.join("state.db")),
                    dir,
                    pipeline: pipeline_path.to_path_buf(),
                });
            }
        };
        if let StateLocation::Postgres(postgres) = StateLocation::of(&url) {
            if cli_state.is_some() && postgres.has_password() {
                eprintln!(
                    "warning: --state {postgres} holds a password, which other users of this machine can read in the process list; leave it out of the URL and set PGPASSWORD instead"
                );
            }
            // Attempt directories, the lock and the API token stay on this machine.
            return Ok(StatePaths {
                location: StateLocation::Postgres(postgres),
                dir: absolute(&base.join(".keel"))?,
                pipeline: pipeline_path.to_path_buf(),
            });
        }
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .unwrap_or(&url);
        if path.is_empty() || path.contains("://") {
            return Err(Exit::usage(format!(
                "state {:?} is not a state location; use a path to an SQLite file or sqlite:PATH",
                redact_url(&url)
            )));
        }
        let database = absolute(&relative_to.join(path))?;
        let dir = database
            .parent()
            .map(Path::to_path_buf)
            .filter(|dir| !dir.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        Ok(StatePaths {
            location: StateLocation::Sqlite(database),
            dir,
            pipeline: pipeline_path.to_path_buf(),
        })
    }

    /// The pipeline file's directory, absolute: where tasks run unless their `cwd` says
    /// otherwise, so that a run started from another directory (cron's, say) behaves the same.
    pub fn pipeline_dir(&self) -> Result<PathBuf> {
        absolute(self.pipeline.parent().unwrap_or(Path::new("")))
    }

    pub fn attempts_dir(&self) -> PathBuf {
        self.dir.join("attempts")
    }

    /// Creates the state directory if needed, then takes the one-executor lock.
    pub fn lock(&self) -> Result<StateLock> {
        self.lock_as(false)
    }

    /// [`StatePaths::lock`], for a `keel serve` when `serving`.
    pub fn lock_as(&self, serving: bool) -> Result<StateLock> {
        use std::os::unix::fs::DirBuilderExt;
        self.refuse_shared_dir()?;
        // The state holds every task's output, results and messages: a directory Keel makes is
        // private to its user (0700; the umask can only take bits away). One that exists is
        // left as it is, since it may be the pipeline's own directory.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|error| {
                anyhow::anyhow!(
                    "cannot create the state directory {:?}: {error}; check its permissions or pass --state",
                    self.dir
                )
            })?;
        let lock = StateLock::acquire_as(&self.dir, serving)?;
        Ok(match &self.location {
            StateLocation::Postgres(url) => lock.and_in_postgres(url, serving)?,
            StateLocation::Sqlite(_) => lock,
        })
    }

    /// Takes the one-executor lock and opens the store, for a command that executes.
    ///
    /// A state file that exists is opened first, before anything is made beside it, so that a
    /// file that is not a Keel state (`state = "/etc/passwd"`, say) is refused with its
    /// directory left exactly as it was: no `keel.lock`, no state directory. Opening it before
    /// taking the lock is safe, since a migration holds SQLite's own write lock. A state in
    /// PostgreSQL is opened first too, so an unreachable server leaves nothing behind.
    pub fn lock_and_open(&self) -> Result<(StateLock, AnyStore)> {
        self.lock_and_open_as(false)
    }

    /// [`StatePaths::lock_and_open`], for a `keel serve` when `serving`.
    pub fn lock_and_open_as(&self, serving: bool) -> Result<(StateLock, AnyStore)> {
        let existing = if self.exists() {
            Some(self.open()?)
        } else {
            None
        };
        let lock = self.lock_as(serving)?;
        let store = match existing {
            Some(store) => store,
            None => self.open()?,
        };
        Ok((lock, store))
    }

    /// Whether the state may exist already: the SQLite file is there, or the state is in
    /// PostgreSQL (whose database only opening can tell about).
    pub fn exists(&self) -> bool {
        match &self.location {
            StateLocation::Sqlite(path) => path.exists(),
            StateLocation::Postgres(_) => true,
        }
    }

    pub fn open(&self) -> Result<AnyStore> {
        if !self.location.is_postgres() {
            self.refuse_shared_dir()?;
        }
        Ok(AnyStore::open(&self.location)?)
    }

    /// Opens the store for a command that only reads it (`status`, `logs`), changing nothing and
    /// leaving no file behind, in a directory this user may not write to as well; `None` if no
    /// state exists yet.
    pub fn open_for_reading(&self) -> Result<Option<AnyStore>> {
        if let StateLocation::Postgres(_) = &self.location {
            return Ok(AnyStore::open_read_only(&self.location)?);
        }
        if !self.exists() {
            return Ok(None);
        }
        match AnyStore::open_read_only(&self.location)? {
            Some(store) => Ok(Some(store)),
            // Being created by a Keel right now, or made by an older one: it becomes readable
            // only by migrating it, which writes.
            None => Ok(Some(self.open()?)),
        }
    }

    /// Opens the store to change it, if it exists; `None` if no state exists yet.
    pub fn open_existing(&self) -> Result<Option<AnyStore>> {
        if let StateLocation::Postgres(_) = &self.location {
            return Ok(AnyStore::open_read_only(&self.location)?);
        }
        if !self.exists() {
            return Ok(None);
        }
        Ok(Some(self.open()?))
    }

    /// Refuses to write in a state directory that every user may write to, sticky or not
    /// (`/tmp`, say): another user could put a link or a file of their own where Keel is about
    /// to make one (the lock, the database's journal, an attempt directory), and Keel would then
    /// write through it or read from it.
    fn refuse_shared_dir(&self) -> Result<()> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        // A directory that is missing is made by `lock`, private to this user; one that cannot
        // be looked at cannot be used either, and making or opening it says why.
        let Ok(metadata) = std::fs::metadata(&self.dir) else {
            return Ok(());
        };
        let mode = metadata.permissions().mode() & 0o7777;
        if mode & 0o002 == 0 {
            return Ok(());
        }
        let ours = metadata.uid() == rustix::process::geteuid().as_raw();
        let hint = if ours && mode & 0o1000 == 0 {
            format!(
                "make it private with `chmod 700 {}`, or keep the state elsewhere with --state",
                self.dir.display()
            )
        } else {
            "keep the state in a directory of your own, with --state or the pipeline's state field"
                .to_string()
        };
        anyhow::bail!(
            "state directory {:?} is writable by every user (mode {mode:o}), who could replace keel's files in it; {hint}",
            self.dir
        )
    }
}

/// Tasks get paths under the state directory (`KEEL_RESULT`, `KEEL_HEARTBEAT`), and a task may
/// change directory, so every state path is made absolute.
pub fn absolute(path: &Path) -> Result<PathBuf> {
    let path = if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    };
    std::path::absolute(path)
        .with_context(|| format!("cannot resolve the state path {}", path.display()))
}

/// Hides a password in a URL so it never reaches a message.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://…@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

/// Checks a partition named on the command line against the pipeline's partition kind.
pub fn check_partition(spec: &PipelineSpec, partition: &str) -> Result<String> {
    match spec.partition {
        PartitionKind::None if partition == "none" => Ok(partition.to_string()),
        PartitionKind::None => Err(Exit::usage(format!(
            "partition {partition:?} does not fit pipeline {:?}, which is not partitioned; use --partition none or leave it out",
            spec.name
        ))),
        PartitionKind::Date => resolve_date(spec, "partition", partition)
            .map(|date| date.format("%Y-%m-%d").to_string()),
    }
}

/// How a date may be written on the command line, for errors.
const DATE_FORMS: &str = "write it as YYYY-MM-DD, e.g. 2026-01-18, or as today, yesterday or a number of days from today such as -2d or +1d";

/// Reads a date given on the command line: exactly `YYYY-MM-DD` (see [`parse_date`]), or
/// `today`, `yesterday` or an offset in days from today (`-2d`, `+1d`), today being the date in
/// the pipeline's time zone now. `what` names the argument in errors.
pub fn resolve_date(spec: &PipelineSpec, what: &str, text: &str) -> Result<chrono::NaiveDate> {
    let Some(offset) = days_from_today(text) else {
        return parse_date_or_say(what, text, DATE_FORMS);
    };
    let today = today(spec)?;
    today
        .checked_add_signed(chrono::Duration::days(offset))
        .filter(|date| (1000..=9999).contains(&chrono::Datelike::year(date)))
        .ok_or_else(|| {
            Exit::usage(format!(
                "{what} {text:?} is out of range: it falls outside the years 1000 to 9999"
            ))
        })
}

/// `today` is 0, `yesterday` -1, `-2d` -2 and `+1d` 1; anything else is not an offset.
fn days_from_today(text: &str) -> Option<i64> {
    match text {
        "today" => return Some(0),
        "yesterday" => return Some(-1),
        _ => {}
    }
    let sign = match text.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let digits = text[1..].strip_suffix('d')?;
    // Seven digits reach past any year a partition may have; more cannot be a real offset.
    if digits.is_empty() || digits.len() > 7 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    Some(sign * digits.parse::<i64>().ok()?)
}

/// Today's date in the pipeline's time zone.
pub fn today(spec: &PipelineSpec) -> Result<chrono::NaiveDate> {
    let zone: chrono_tz::Tz = spec
        .timezone
        .parse()
        .map_err(|_| Exit::usage(format!("unknown time zone {:?}", spec.timezone)))?;
    Ok(zone
        .from_utc_datetime(&chrono::Utc::now().naive_utc())
        .date_naive())
}

/// Reads a date given on the command line as exactly `YYYY-MM-DD`, a real calendar date in the
/// years 1000 to 9999; `what` names the argument in the error (`partition`, `--from`).
///
/// chrono's `%Y-%m-%d` alone also takes `2026-2-3`, `+2026-01-01` and `0000-01-01` and rewrites
/// them. A partition names a run and, through it, the attempt directories and the tasks'
/// `{date}`, so a value is either the canonical form or refused, never silently changed.
pub fn parse_date(what: &str, text: &str) -> Result<chrono::NaiveDate> {
    parse_date_or_say(what, text, "write it as YYYY-MM-DD, e.g. 2026-01-18")
}

/// [`parse_date`], with `expected` saying how to write the date instead.
fn parse_date_or_say(what: &str, text: &str, expected: &str) -> Result<chrono::NaiveDate> {
    let bytes = text.as_bytes();
    let shaped = bytes.len() == 10
        && bytes
            .iter()
            .enumerate()
            .all(|(position, byte)| match position {
                4 | 7 => *byte == b'-',
                _ => byte.is_ascii_digit(),
            });
    if !shaped {
        return Err(Exit::usage(format!(
            "{what} {text:?} is not a date; {expected}"
        )));
    }
    // Only ASCII digits are left in these places, so the numbers parse.
    let number = |range: std::ops::Range<usize>| text[range].parse::<u32>().unwrap_or(0);
    let (year, month, day) = (number(0..4), number(5..7), number(8..10));
    if year < 1000 {
        return Err(Exit::usage(format!(
            "{what} {text:?} is out of range; write it as YYYY-MM-DD with a year from 1000 to 9999, e.g. 2026-01-18"
        )));
    }
    chrono::NaiveDate::from_ymd_opt(year as i32, month, day).ok_or_else(|| {
        // Well written, but no such day: say why, not how to write it.
        Exit::usage(format!(
            "{what} {text:?} is not a date: {}",
            why_not_a_date(year as i32, month, day)
        ))
    })
}

/// Why a well-written `YYYY-MM-DD` names no day: `February 2026 has 28 days`.
fn why_not_a_date(year: i32, month: u32, day: u32) -> String {
    let Some(first) = chrono::NaiveDate::from_ymd_opt(year, month, 1) else {
        return format!("there is no month {month}; months go from 01 to 12");
    };
    if day == 0 {
        return "there is no day 00; days start at 01".to_string();
    }
    let next = first
        .checked_add_months(chrono::Months::new(1))
        .unwrap_or(first);
    let days = (next - first).num_days();
    format!("{} has {days} days", first.format("%B %Y"))
}

/// Today's partition in the pipeline's time zone.
pub fn default_partition(spec: &PipelineSpec) -> Result<String> {
    match spec.partition {
        PartitionKind::None => Ok("none".into()),
        PartitionKind::Date => Ok(today(spec)?.format("%Y-%m-%d").to_string()),
    }
}

/// The partitions of `--partition`, `--from/--to`, or the default.
pub fn partitions(spec: &PipelineSpec, args: &crate::args::PartitionArgs) -> Result<Vec<String>> {
    match (&args.partition, &args.from, &args.to) {
        (Some(partition), _, _) => Ok(vec![check_partition(spec, partition)?]),
        (None, Some(from), Some(to)) => date_range(spec, from, to),
        _ => Ok(vec![default_partition(spec)?]),
    }
}

/// Every date of `--from D --to D`, inclusive, for a date-partitioned pipeline.
pub fn date_range(spec: &PipelineSpec, from: &str, to: &str) -> Result<Vec<String>> {
    if spec.partition == PartitionKind::None {
        return Err(Exit::usage(format!(
            "--from/--to need a date-partitioned pipeline; {:?} is not partitioned",
            spec.name
        )));
    }
    let (first, last) = (
        resolve_date(spec, "--from", from)?,
        resolve_date(spec, "--to", to)?,
    );
    if last < first {
        return Err(Exit::usage(format!(
            "--to {to} is before --from {from}; swap them"
        )));
    }
    let days = (last - first).num_days() + 1;
    if days > 3660 {
        return Err(Exit::usage(format!(
            "--from {from} --to {to} spans {days} partitions; the limit is 3660"
        )));
    }
    Ok(first
        .iter_days()
        .take(days as usize)
        .map(|date| date.format("%Y-%m-%d").to_string())
        .collect())
}

/// The wall clock in milliseconds since the Unix epoch, as the engine's system clock reads it.
pub fn now_millis() -> keel_model::Millis {
    use keel_engine::Clock;
    keel_engine::SystemClock.now()
}

/// What a command that reads the state (or cancels a run) knows of the pipeline.
pub struct ForReading {
    pub spec: PipelineSpec,
    pub paths: StatePaths,
    /// The pipeline file is missing or does not validate: `spec` is a stand-in with the name
    /// from the state and no tasks, so nothing may be checked against its tasks.
    pub without_file: bool,
}

/// Loads the pipeline for `status`, `logs`, `events`, `history` and `cancel`. During an incident
/// a broken or missing `keel.toml` must not lock anyone out of the state: such a file gives a
/// warning (its first error) and a stand-in spec instead of a refusal. The stand-in takes
/// `name`, `timezone`, `partition` and `state` from the file where its TOML still reads, and
/// the pipeline's name from `--pipeline-name`, else from the state if it holds exactly one.
pub async fn pipeline_for_reading(
    state_url: Option<&str>,
    path: &Path,
    pipeline_name: Option<&str>,
) -> Result<ForReading> {
    let error = match load_pipeline(path) {
        Ok(spec) => {
            let paths = StatePaths::resolve(state_url, &spec, path)?;
            return Ok(ForReading {
                spec,
                paths,
                without_file: false,
            });
        }
        Err(error) => error,
    };
    let message = error.to_string();
    let first = message.lines().next().unwrap_or_default();
    eprintln!(
        "warning: {} does not validate ({first}); reading the state without it",
        path.display()
    );
    let raw: Option<toml::Table> = std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.parse().ok());
    let field = |name: &str| {
        raw.as_ref()
            .and_then(|table| table.get("pipeline")?.get(name)?.as_str())
            .map(str::to_string)
    };
    let timezone = field("timezone")
        .filter(|zone| zone.parse::<chrono_tz::Tz>().is_ok())
        .unwrap_or_else(|| "UTC".into());
    let mut spec = PipelineSpec {
        name: String::new(),
        timezone,
        partition: match field("partition").as_deref() {
            Some("none") => PartitionKind::None,
            _ => PartitionKind::Date,
        },
        state: field("state"),
        concurrency: 1,
        phases: Vec::new(),
        tasks: Vec::new(),
        resources: Vec::new(),
        schedule: None,
        max_active_partitions: None,
        passes: Vec::new(),
        alerts: None,
        secrets: None,
        smoke: Vec::new(),
        slos: Vec::new(),
        heal_budget: keel_model::DEFAULT_HEAL_BUDGET,
    };
    let paths = StatePaths::resolve(state_url, &spec, path)?;
    spec.name = match pipeline_name {
        Some(name) => name.to_string(),
        None => name_from_state(&paths, field("name")).await?,
    };
    Ok(ForReading {
        spec,
        paths,
        without_file: true,
    })
}

/// The pipeline the state holds, when the file cannot say: the only one, or the one the file's
/// TOML still names among several.
async fn name_from_state(paths: &StatePaths, named_in_file: Option<String>) -> Result<String> {
    let names = match paths.open_for_reading()? {
        Some(store) => store.pipelines().await?,
        None => Vec::new(),
    };
    match (names.as_slice(), named_in_file) {
        ([only], _) => Ok(only.clone()),
        (_, Some(name)) if names.contains(&name) || names.is_empty() => Ok(name),
        ([], None) => Err(Exit::usage(format!(
            "the state {} holds no runs, and the pipeline file cannot name its pipeline; fix the file or pass --pipeline-name NAME",
            paths.location
        ))),
        (_, _) => Err(Exit::usage(format!(
            "the state {} holds several pipelines ({}); say which with --pipeline-name NAME",
            paths.location,
            names.join(", ")
        ))),
    }
}

/// Gives a stand-in spec the run's own tasks, as the state recorded them, so that settling a
/// cancel without the pipeline file stops their live attempts and cancels the rest. The tasks
/// never launch: a cancelling run starts nothing.
pub fn stand_in_tasks(spec: &mut PipelineSpec, tasks: &[keel_store::TaskRunRecord]) {
    for task in tasks {
        if spec.tasks.iter().any(|known| known.name == task.task) {
            continue;
        }
        if !spec.phases.iter().any(|phase| phase.name == task.phase) {
            spec.phases.push(keel_model::PhaseSpec {
                name: task.phase.clone(),
                after: Vec::new(),
                gate: None,
                checks: Vec::new(),
            });
        }
        spec.tasks.push(keel_model::TaskSpec {
            name: task.task.clone(),
            phase: task.phase.clone(),
            command: vec!["false".into()],
            http: None,
            after: Vec::new(),
            timeout: std::time::Duration::from_secs(60),
            retries: keel_model::RetryPolicy::default(),
            heartbeat: None,
            deadline: std::time::Duration::from_secs(60),
            uses: Vec::new(),
            wait_for: None,
            also_wait_for: Vec::new(),
            when: None,
            edges: Default::default(),
            expand: None,
            context: keel_model::TaskContext::default(),
            not_ready: None,
            secrets: Vec::new(),
            repeat: None,
            freeze_after: None,
            versioning: Default::default(),
            checks: Vec::new(),
        });
    }
}

/// A partition that has no run yet, asked for by a command that needs one (exit 2, as for any
/// name that does not exist).
pub fn no_run_of_partition(partition: &str) -> anyhow::Error {
    Exit::usage(format!(
        "no run of partition {partition} yet; start one with `keel run --partition {partition}`"
    ))
}

/// A pipeline whose state has no run yet, asked for by a command that needs one (exit 2).
pub fn no_runs_yet(spec: &PipelineSpec) -> anyhow::Error {
    Exit::usage(format!(
        "no runs yet for pipeline {:?}; start one with `keel run`",
        spec.name
    ))
}

/// Keeps the state directory out of git beside a new pipeline: writes `DIR/.gitignore` with
/// `.keel/`, or appends that line to one that does not ignore `.keel` yet, leaving everything
/// else in it as it was. Says what it did, or `None` if there was nothing to do.
pub fn ignore_state_in_git(dir: &Path) -> Result<Option<String>> {
    let path = dir.join(".gitignore");
    let existing = match std::fs::read_to_string(&path) {
        Ok(text) => Some(text),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => {
            return Err(anyhow::anyhow!("cannot read {}: {error}", path.display()));
        }
    };
    let Some(text) = existing else {
        std::fs::write(&path, ".keel/\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
        return Ok(Some(format!("wrote {} (ignores .keel/)", path.display())));
    };
    let ignored = text.lines().map(str::trim).any(|line| {
        matches!(
            line,
            ".keel" | ".keel/" | "/.keel" | "/.keel/" | ".keel/*" | "/.keel/*"
        )
    });
    if ignored {
        return Ok(None);
    }
    let separator = if text.is_empty() || text.ends_with('\n') {
        ""
    } else {
        "\n"
    };
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    std::io::Write::write_all(&mut file, format!("{separator}.keel/\n").as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(Some(format!("added .keel/ to {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(text: &str) -> String {
        parse_date("partition", text).unwrap_err().to_string()
    }

    #[test]
    fn a_day_that_does_not_exist_says_why() {
        assert_eq!(
            message("2026-02-30"),
            r#"partition "2026-02-30" is not a date: February 2026 has 28 days"#
        );
        assert_eq!(
            message("2024-02-30"),
            r#"partition "2024-02-30" is not a date: February 2024 has 29 days"#
        );
        assert_eq!(
            message("2026-04-31"),
            r#"partition "2026-04-31" is not a date: April 2026 has 30 days"#
        );
        assert_eq!(
            message("2026-13-01"),
            r#"partition "2026-13-01" is not a date: there is no month 13; months go from 01 to 12"#
        );
        assert_eq!(
            message("2026-01-00"),
            r#"partition "2026-01-00" is not a date: there is no day 00; days start at 01"#
        );
        assert_eq!(
            message("9999-12-32"),
            r#"partition "9999-12-32" is not a date: December 9999 has 31 days"#
        );
    }

    #[test]
    fn a_badly_written_date_says_how_to_write_it() {
        assert_eq!(
            message("2026-2-3"),
            r#"partition "2026-2-3" is not a date; write it as YYYY-MM-DD, e.g. 2026-01-18"#
        );
    }
}
