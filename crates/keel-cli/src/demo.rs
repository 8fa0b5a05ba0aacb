//! `keel demo`: the reference pipeline (`examples/hoops`) over a week of dates, against a feed
//! with faults switched on, run by the real engine. It needs nothing but the `keel` binary: the
//! processors are this binary under the name `hoops`. With `--http` the tasks are HTTP tasks
//! (`examples/hoops/keel-http.toml`) calling the processors in a `hoops serve` the demo starts.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use keel_engine::{Prepared, RunRequest};
use keel_model::{Outcome, RunState};
use keel_store::Store;

use crate::args::DemoArgs;
use crate::display::{count, printable};
use crate::setup::build_engine_with_env;
use crate::state::StatePaths;

const PIPELINE: &str = include_str!("../../../examples/hoops/keel.toml");
const HTTP_PIPELINE: &str = include_str!("../../../examples/hoops/keel-http.toml");

/// A `hoops feed` or `hoops serve` process; killed when dropped, so the demo never leaves it
/// behind.
pub(crate) struct Helper {
    child: Child,
    pub(crate) address: String,
}

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `command` (a `hoops` that prints `listening on ADDR` first), its stderr into `log`.
/// `Ok(Err(first line))` when it did not start listening.
fn start_helper(
    mut command: Command,
    what: &str,
    log: &Path,
) -> Result<std::result::Result<Helper, String>> {
    let log =
        std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start the demo {what}"))?;
    let stdout = child
        .stdout
        .take()
        .with_context(|| format!("the {what} has no stdout"))?;
    let mut first_line = String::new();
    BufReader::new(stdout)
        .read_line(&mut first_line)
        .with_context(|| format!("cannot read the {what}'s address"))?;
    let Some(address) = first_line.trim().strip_prefix("listening on ") else {
        let _ = child.kill();
        let _ = child.wait();
        return Ok(Err(first_line));
    };
    Ok(Ok(Helper {
        address: address.to_string(),
        child,
    }))
}

pub(crate) fn start_feed(hoops: &Path, seed: u64, faults: &str, log: &Path) -> Result<Helper> {
    let mut command = Command::new(hoops);
    command.args([
        "feed",
        "--addr",
        "127.0.0.1:0",
        "--seed",
        &seed.to_string(),
        "--faults",
        faults,
        "--exit-on-eof",
    ]);
    match start_helper(command, "feed", log)? {
        Ok(feed) => Ok(feed),
        Err(first_line) => bail!(
            "the demo feed did not start: {first_line:?}; see {}",
            log.display()
        ),
    }
}

/// Where keel-http.toml calls the service, and `hoops serve`'s default address.
const SERVICE_ADDR: &str = hoops::cli::SERVICE_ADDR;

/// Starts `hoops serve` on [`SERVICE_ADDR`], where keel-http.toml calls it, with `env` (the
/// feed, the warehouse, the token). When that port is taken it listens on a free one instead,
/// and the second value is the pipeline text pointing there.
fn start_service(
    hoops: &Path,
    env: &[(String, String)],
    log: &Path,
) -> Result<(Helper, Option<String>)> {
    let command = |addr: &str| {
        let mut command = Command::new(hoops);
        command
            .args(["serve", "--addr", addr, "--exit-on-eof"])
            .envs(env.iter().cloned());
        command
    };
    if let Ok(service) = start_helper(command(SERVICE_ADDR), "service", log)? {
        return Ok((service, None));
    }
    match start_helper(command("127.0.0.1:0"), "service", log)? {
        Ok(service) => {
            let pipeline = HTTP_PIPELINE.replace(SERVICE_ADDR, &service.address);
            Ok((service, Some(pipeline)))
        }
        Err(first_line) => bail!(
            "the demo's hoops serve did not start: {first_line:?}; see {}",
            log.display()
        ),
    }
}

/// A fresh bearer token for the demo's service: 128 bits from the operating system.
fn random_token() -> Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .context("cannot read /dev/urandom for the demo service's token")?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// Puts a `hoops` that is this binary on a private PATH directory.
pub(crate) fn install_hoops(dir: &Path) -> Result<PathBuf> {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin)?;
    let hoops = bin.join("hoops");
    let _ = std::fs::remove_file(&hoops);
    let keel = std::env::current_exe().context("cannot find the keel executable")?;
    std::os::unix::fs::symlink(&keel, &hoops)
        .with_context(|| format!("cannot create {}", hoops.display()))?;
    Ok(hoops)
}

/// What both modes of the demo start from: its directory with the pipeline file, `hoops` on a
/// private PATH, the feed, and the environment the tasks need.
struct Setup {
    dir: PathBuf,
    pipeline: PathBuf,
    feed: Helper,
    /// With `--http`: the `hoops serve` the tasks call, and whether it had to move off
    /// [`SERVICE_ADDR`].
    service: Option<(Helper, bool)>,
    env: Vec<(String, String)>,
}

fn set_up(args: &DemoArgs) -> Result<Setup> {
    let dir = match &args.dir {
        Some(dir) => dir.clone(),
        None => std::env::temp_dir().join(format!("keel-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = std::path::absolute(&dir)?;
    let hoops = install_hoops(&dir)?;
    let feed = start_feed(&hoops, args.seed, &args.faults, &dir.join("feed.log"))?;
    let path_variable = format!(
        "{}:{}",
        hoops.parent().expect("bin dir").display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut env = vec![
        ("PATH".to_string(), path_variable),
        ("HOOPS_FEED".to_string(), format!("http://{}", feed.address)),
        (
            "HOOPS_WAREHOUSE".to_string(),
            dir.join("warehouse.db").display().to_string(),
        ),
        (
            "HOOPS_EXPORT_DIR".to_string(),
            dir.join("exports").display().to_string(),
        ),
        // A 429 becomes "not ready" at once, so Keel's backoff handles it.
        ("HOOPS_RETRY_AFTER_CAP".to_string(), "0".to_string()),
    ];
    let (pipeline, text, service) = if args.http {
        // One token for both sides: the service requires it, Keel sends it (auth.bearer_env).
        env.push(("HOOPS_SERVICE_TOKEN".to_string(), random_token()?));
        let (service, moved) = start_service(&hoops, &env, &dir.join("service.log"))?;
        let text = moved.clone().unwrap_or_else(|| HTTP_PIPELINE.to_string());
        (
            dir.join("keel-http.toml"),
            text,
            Some((service, moved.is_some())),
        )
    } else {
        (dir.join("keel.toml"), PIPELINE.to_string(), None)
    };
    std::fs::write(&pipeline, text)?;
    Ok(Setup {
        dir,
        pipeline,
        feed,
        service,
        env,
    })
}

pub async fn demo(args: DemoArgs) -> Result<u8> {
    let started = Instant::now();
    let first = crate::state::parse_date("--start", &args.start)?;
    if args.days == 0 || args.days > 60 {
        return Err(crate::Exit::usage(format!(
            "--days {} is out of range; use 1 to 60",
            args.days
        )));
    }
    if args.serve {
        return serve_demo(&args, first).await;
    }
    let setup = set_up(&args)?;
    println!(
        "keel demo · the hoops reference pipeline{} · {} from {first}",
        if args.http { " as HTTP tasks" } else { "" },
        count(args.days.into(), "date", "dates")
    );
    println!(
        "feed on {} with faults: {}",
        setup.feed.address, args.faults
    );
    if let Some((service, moved)) = &setup.service {
        println!(
            "hoops serve on {}, called with a bearer token generated for this demo{}",
            service.address,
            if *moved {
                format!(" ({SERVICE_ADDR} was taken; the demo's keel-http.toml calls this one)")
            } else {
                String::new()
            }
        );
    }
    println!("state in {}", setup.dir.display());
    println!();

    let Days {
        all_good,
        accuracy_trend,
        store,
    } = run_days(&args, first, &setup).await?;
    let Setup {
        dir: _,
        pipeline,
        feed,
        service,
        env: _,
    } = setup;
    if let Some((service, _)) = service {
        let address = service.address.clone();
        let stats = tokio::task::spawn_blocking(move || service_stats(&address)).await?;
        match stats {
            Ok(line) => println!("{line}"),
            Err(error) => println!("hoops serve did not say what it served: {error}"),
        }
        drop(service);
    }
    drop(feed);
    println!();
    if !accuracy_trend.is_empty() {
        let trend: Vec<String> = accuracy_trend
            .iter()
            .map(|(date, accuracy)| format!("{} {:.0}%", &date[5..], accuracy * 100.0))
            .collect();
        println!("grading accuracy trend: {}", trend.join(" · "));
    }
    let events: usize = {
        let mut count = 0;
        for run in store.list_runs(pipeline_name(&args), None, 1000).await? {
            count += store.events(run.id).await?.len();
        }
        count
    };
    println!(
        "{} in {:.1}s, {} in the log",
        count(args.days.into(), "date", "dates"),
        started.elapsed().as_secs_f64(),
        count(events as u64, "event", "events")
    );
    println!();
    println!("inspect it with:");
    let keel = crate::hints::keel_program();
    for command in crate::hints::after_demo(&keel, &pipeline, &first.to_string()) {
        println!("  {command}");
    }
    if all_good {
        Ok(0)
    } else {
        println!("some dates did not succeed; see above");
        Ok(1)
    }
}

/// The name of the pipeline the demo runs.
fn pipeline_name(args: &DemoArgs) -> &'static str {
    if args.http { "hoops_http" } else { "hoops" }
}

/// What the service answered over how many connections, from its `GET /stats`.
fn service_stats(address: &str) -> Result<String> {
    let mut client = hoops::http::Client::new(address, std::time::Duration::from_secs(5))
        .map_err(anyhow::Error::msg)?;
    let stats = client
        .get("/stats")
        .context("GET /stats")?
        .json_body()
        .map_err(anyhow::Error::msg)?;
    let by_status = stats["requests"]
        .as_object()
        .map(|requests| {
            requests
                .iter()
                .map(|(status, count)| format!("{status} ×{}", count.as_u64().unwrap_or(0)))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    let requests: u64 = stats["requests"]
        .as_object()
        .map(|requests| requests.values().filter_map(|count| count.as_u64()).sum())
        .unwrap_or(0);
    Ok(format!(
        "hoops serve answered {} ({by_status}) over {}",
        count(requests, "request", "requests"),
        count(
            stats["connections"].as_u64().unwrap_or(0),
            "connection",
            "connections"
        )
    ))
}

/// What running the dates left: whether every one succeeded, grading's accuracy per date, and
/// the store (its lock released).
struct Days {
    all_good: bool,
    accuracy_trend: Vec<(String, f64)>,
    store: keel_store::AnyStore,
}

/// Runs `--days` dates from `first` one after the other with the real engine, printing a line
/// per date with what healed, what was waited for and what did not succeed.
async fn run_days(args: &DemoArgs, first: chrono::NaiveDate, setup: &Setup) -> Result<Days> {
    let spec = crate::state::load_pipeline(&setup.pipeline)?;
    let tasks = spec.tasks.len();
    let expanded: Vec<String> = spec
        .tasks
        .iter()
        .filter(|task| task.expand.is_some())
        .map(|task| task.name.clone())
        .collect();
    let paths = StatePaths::resolve(None, &spec, &setup.pipeline)?;
    let (_lock, store) = paths.lock_and_open()?;
    let mut engine = build_engine_with_env(spec, &paths, store.clone(), setup.env.clone())?;

    let mut all_good = true;
    let mut accuracy_trend = Vec::new();
    for offset in 0..args.days {
        let date = (first + chrono::Duration::days(i64::from(offset)))
            .format("%Y-%m-%d")
            .to_string();
        let date_started = Instant::now();
        let prepared = engine
            .prepare(&RunRequest {
                partitions: vec![date.clone()],
                only: vec![],
                rerun: false,
                pass: None,
            })
            .await?;
        let run = match &prepared[0] {
            Prepared::Created(run) | Prepared::Resumed(run) => {
                engine
                    .execute(&[*run], keel_engine::Shutdown::never())
                    .await?;
                *run
            }
            Prepared::AlreadyFinished(record) => record.id,
        };
        let record = store.run(run).await?;
        let attempts = store.attempts(run).await?;
        let task_runs = store.task_runs(run).await?;
        // An expanded task over an empty list has nothing to run: on a day without games it
        // counts with the tasks that reported no_data.
        let no_data = task_runs
            .iter()
            .filter(|task| {
                task.outcome == Some(Outcome::NoData)
                    || (task.attempts == 0 && expanded.contains(&task.task))
            })
            .count();
        // Failures that healed: tasks whose earlier attempts failed but which completed.
        let mut healed: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for task in task_runs
            .iter()
            .filter(|task| task.outcome.is_some_and(Outcome::is_complete))
        {
            for attempt in attempts.iter().filter(|attempt| attempt.task == task.task) {
                if let Some(outcome) = attempt.outcome.filter(|outcome| !outcome.is_complete()) {
                    healed
                        .entry(task.task.clone())
                        .or_default()
                        .push(outcome.to_string());
                }
            }
        }
        // Sensor polls before a task could start: late data that was waited for, not failed on.
        let mut waited: BTreeMap<String, usize> = BTreeMap::new();
        for event in store.events(run).await? {
            if event.kind == "sensor_polled"
                && event.detail != "ready"
                && let Some(task) = event.task
            {
                *waited.entry(task).or_default() += 1;
            }
        }
        let accuracy = attempts
            .iter()
            .filter(|attempt| {
                attempt.task == "grading" && attempt.outcome == Some(Outcome::Succeeded)
            })
            .filter_map(|attempt| attempt.metrics.as_deref())
            .filter_map(|metrics| serde_json::from_str::<serde_json::Value>(metrics).ok())
            .filter_map(|metrics| {
                Some((
                    metrics.get("accuracy")?.as_f64()?,
                    metrics.get("graded")?.as_f64()?,
                ))
            })
            .next_back();
        let mut line = format!(
            "{date}  {:<9} {}, {} in {:.1}s",
            record.state.as_str(),
            count(tasks as u64, "task", "tasks"),
            count(attempts.len() as u64, "attempt", "attempts"),
            date_started.elapsed().as_secs_f64()
        );
        if no_data == tasks {
            line.push_str(" · no games: every task reported no_data");
        }
        if let Some((accuracy, graded)) = accuracy {
            line.push_str(&format!(
                " · grading accuracy {:.1}% of {}",
                accuracy * 100.0,
                count(graded.round() as u64, "pick", "picks")
            ));
            accuracy_trend.push((date.clone(), accuracy));
        }
        println!("{line}");
        for (task, polls) in &waited {
            println!(
                "            waited for {}: its sensor said not ready {}, then ready",
                printable(task),
                count(*polls as u64, "time", "times")
            );
        }
        for (task, failures) in &healed {
            println!(
                "            healed {}: {} → succeeded",
                printable(task),
                failures.join(" → ")
            );
        }
        // Fan-out: the items of each expanded task (`name[key]`), and how many succeeded.
        let mut fanned: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        for task in &task_runs {
            if let Some((base, _)) = task.task.split_once('[') {
                let (succeeded, all) = fanned.entry(base).or_default();
                *all += 1;
                if task.outcome == Some(Outcome::Succeeded) {
                    *succeeded += 1;
                }
            }
        }
        if !fanned.is_empty() {
            let parts: Vec<String> = fanned
                .iter()
                .map(|(base, (succeeded, all))| format!("{} {succeeded}/{all}", printable(base)))
                .collect();
            println!("            fanned out: {}", parts.join(" · "));
        }
        // Freezes: what Keel did not rerun or retry, and why.
        for task in &task_runs {
            if let Some(message) = task.message.as_deref().filter(|m| m.contains("frozen at")) {
                println!(
                    "            frozen {}: {}",
                    printable(&task.task),
                    printable(message)
                );
            }
        }
        if !matches!(record.state, RunState::Succeeded) {
            all_good = false;
            for task in task_runs
                .iter()
                .filter(|task| !task.outcome.is_some_and(Outcome::is_complete))
            {
                println!(
                    "            {} {}: {}",
                    printable(&task.task),
                    task.outcome.map(Outcome::as_str).unwrap_or("unfinished"),
                    printable(task.message.as_deref().unwrap_or(""))
                );
            }
        }
    }
    Ok(Days {
        all_good,
        accuracy_trend,
        store,
    })
}

/// `keel demo --serve`: the `--days` dates from `--start` run first (so the dashboard opens on
/// them), then the hoops pipeline under `keel serve`, on a clock running `--speed` times as fast
/// (a day in two minutes by default) from 05:00 on the morning whose 06:00 fire processes the
/// date after them. It runs until interrupted and prints where to look.
async fn serve_demo(args: &DemoArgs, first: chrono::NaiveDate) -> Result<u8> {
    use tokio::io::AsyncBufReadExt;
    let setup = set_up(args)?;
    println!(
        "keel demo --serve · first {} of the hoops pipeline, then keel serve",
        count(args.days.into(), "date", "dates")
    );
    println!();
    run_days(args, first, &setup).await?;
    println!();
    let spec = crate::state::load_pipeline(&setup.pipeline)?;
    let zone: chrono_tz::Tz = spec.timezone.parse().unwrap_or(chrono_tz::UTC);
    // The schedule fires at 06:00 for the day before: the first fire after the dates ran is
    // the morning after the day that follows them.
    let next = first + chrono::Duration::days(i64::from(args.days));
    let morning = (next + chrono::Duration::days(1))
        .and_hms_opt(5, 0, 0)
        .expect("05:00 is a time");
    let start = morning
        .and_local_timezone(zone)
        .earliest()
        .context("05:00 does not exist in the pipeline's time zone that day")?;
    let day = std::time::Duration::from_secs(86_400 / u64::from(args.speed.max(1)));
    println!("keel demo --serve · the hoops pipeline under keel serve, unattended");
    println!(
        "the clock starts at {} and runs {}x as fast: a day every {}",
        start.format("%Y-%m-%d %H:%M %Z"),
        args.speed,
        keel_model::format_duration(day)
    );
    println!(
        "feed on {} with faults: {}",
        setup.feed.address, args.faults
    );
    println!("state in {}", setup.dir.display());
    let keel = std::env::current_exe().context("cannot find the keel executable")?;
    let mut serve = tokio::process::Command::new(keel)
        .arg("serve")
        .arg(&setup.pipeline)
        .arg("--addr")
        .arg(&args.addr)
        .arg("--clock-speed")
        .arg(args.speed.to_string())
        .arg("--clock-start")
        .arg(start.to_rfc3339())
        .envs(setup.env.iter().cloned())
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        // Its own process group: a Ctrl-C at the terminal reaches the demo alone, which passes
        // each one on, so serve sees one signal per Ctrl-C (the first drains, a second stops).
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .context("cannot start keel serve")?;
    let serve_pid = serve.id();
    let stderr = serve.stderr.take().context("keel serve has no stderr")?;
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let signal = tokio::select! {
            line = lines.next_line() => match line? {
                Some(line) => {
                    eprintln!("{line}");
                    if let Some(url) = line.split_whitespace().find(|word| word.starts_with("http://")) {
                        print_urls(url, &setup.dir);
                    }
                    continue;
                }
                None => break,
            },
            _ = interrupt.recv() => rustix::process::Signal::INT,
            _ = terminate.recv() => rustix::process::Signal::TERM,
        };
        if let Some(pid) = serve_pid.and_then(|pid| rustix::process::Pid::from_raw(pid as i32)) {
            let _ = rustix::process::kill_process(pid, signal);
        }
    }
    let status = serve.wait().await?;
    drop(setup);
    Ok(status.code().map_or(1, |code| code as u8))
}

fn print_urls(base: &str, dir: &Path) {
    let base = base.trim_end_matches([';', ',', '.', '/']);
    println!();
    println!("open:");
    println!("  {base}/                                 the dashboard: the grid of dates × tasks");
    println!("  {base}/api/pipelines/hoops/runs     the runs, newest first");
    println!("  {base}/api/pipelines/hoops/events   the event stream (server-sent events)");
    println!("  {base}/metrics                      Prometheus metrics");
    println!("  {base}/ready                        readiness, with its checks");
    println!("  {base}/api/openapi.json             the API's OpenAPI document");
    println!(
        "actions (POST) need the token in {}",
        dir.join(".keel").join("api-token").display()
    );
    println!("stop with Ctrl-C");
    println!();
}
