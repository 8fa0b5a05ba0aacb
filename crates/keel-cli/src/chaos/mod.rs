//! `keel chaos`: a seeded fault campaign over the hoops pipeline. A plan ([`plan`]) gives each
//! simulated day a fault class; the campaign runs the days one after another under a real
//! `keel serve` on an accelerated clock (feed faults switched through the feed's control
//! endpoint, task faults through the processors' `HOOPS_CHAOS` knobs, and `kill -9` of serve
//! itself, which is then started again), and measures from the store and the alerts it was sent
//! what Keel healed without a human ([`measure`]).

pub mod measure;
pub mod plan;

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use chrono::TimeZone;
use keel_model::{Millis, RunState};
use keel_store::Store;

use crate::args::ChaosArgs;
use crate::state::StatePaths;
use measure::{DayResult, Report};
use plan::{DayPlan, FaultClass};

const PIPELINE: &str = include_str!("../../../../examples/hoops/keel.toml");

/// How long one simulated day may take in real time before the campaign gives up on it (the
/// partition then counts as needing a human).
const DAY_LIMIT: Duration = Duration::from_secs(180);
/// How often the campaign looks at the store while a day runs.
const POLL: Duration = Duration::from_millis(25);

pub async fn chaos(args: ChaosArgs) -> Result<u8> {
    let first = crate::state::parse_date("--start", &args.start)?;
    let plan = plan::plan(args.seed, first, args.days);
    let progress_to_stderr = args.json;
    let say = |line: String| {
        if progress_to_stderr {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    };
    if args.plan_only {
        if args.json {
            let document = serde_json::json!({
                "seed": args.seed,
                "days": args.days,
                "plan": plan.iter().map(DayPlan::to_json).collect::<Vec<_>>(),
            });
            println!("{}", serde_json::to_string_pretty(&document)?);
        } else {
            print_plan(&plan, &say);
        }
        return Ok(0);
    }
    let started = Instant::now();
    let mut campaign = Campaign::set_up(&args, &plan)?;
    say(format!(
        "keel chaos · {} simulated days of the hoops pipeline from {first}, seed {}, Keel's clock at {}×",
        args.days, args.seed, args.clock_speed
    ));
    say(format!("state in {}", campaign.dir.display()));
    print_plan(&plan, &say);
    say(String::new());
    let outcome = campaign.run(&plan, &say).await;
    let campaign_dir = campaign.dir.clone();
    let keep = args.keep.is_some();
    let (days, alerts, health) = match outcome {
        Ok(done) => done,
        Err(error) => {
            drop(campaign);
            return Err(error.context(format!(
                "the chaos campaign stopped; its files are in {}",
                campaign_dir.display()
            )));
        }
    };
    drop(campaign);
    let report = Report::build(&plan, &days, &alerts, health, args.clock_speed);
    let elapsed = started.elapsed();
    if args.json {
        let mut document = report.to_json();
        document["seed"] = args.seed.into();
        document["days"] = args.days.into();
        document["elapsed_seconds"] = ((elapsed.as_secs_f64() * 10.0).round() / 10.0).into();
        document["plan"] = plan.iter().map(DayPlan::to_json).collect::<Vec<_>>().into();
        println!("{}", serde_json::to_string_pretty(&document)?);
    } else {
        println!();
        for line in report.render().lines() {
            println!("{line}");
        }
        println!(
            "{} simulated days in {:.0}s of wall time",
            args.days,
            elapsed.as_secs_f64()
        );
    }
    if keep {
        say(format!("kept in {}", campaign_dir.display()));
    } else {
        let _ = std::fs::remove_dir_all(&campaign_dir);
    }
    Ok(if report.targets_met() { 0 } else { 1 })
}

fn print_plan(plan: &[DayPlan], say: &impl Fn(String)) {
    say("fault plan:".to_string());
    for (index, day) in plan.iter().enumerate() {
        say(format!(
            "  day {:>3}  {}  {:<17} {}",
            index + 1,
            day.date,
            day.class.as_str(),
            day.describe()
        ));
    }
}

/// A `keel serve` of the campaign; killed (SIGKILL) when dropped.
struct Serve {
    child: Child,
    /// Where its API listens.
    address: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Keel's clock across serve's restarts: the pipeline time at a real instant, and the speed.
#[derive(Clone, Copy)]
struct SimulatedClock {
    anchor: Instant,
    at_anchor: Millis,
    speed: u32,
}

impl SimulatedClock {
    fn now(&self) -> Millis {
        self.at_anchor + self.anchor.elapsed().as_millis() as Millis * Millis::from(self.speed)
    }
}

/// The campaign's directory, feed, pipeline copy and serve.
struct Campaign {
    dir: PathBuf,
    pipeline: PathBuf,
    paths: StatePaths,
    spec: keel_model::PipelineSpec,
    feed: crate::demo::Helper,
    env: Vec<(String, String)>,
    alerts: PathBuf,
    clock: SimulatedClock,
    serve: Option<Serve>,
    serve_starts: u32,
}

impl Campaign {
    fn set_up(args: &ChaosArgs, plan: &[DayPlan]) -> Result<Campaign> {
        let dir = match &args.keep {
            Some(dir) => dir.clone(),
            None => std::env::temp_dir().join(format!("keel-chaos-{}", std::process::id())),
        };
        if dir.join(".keel").exists() {
            bail!(
                "{} already holds a campaign's state; give --keep a new or empty directory",
                dir.display()
            );
        }
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let dir = std::path::absolute(&dir)?;
        let source = match &args.pipeline {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the pipeline {}", path.display()))?,
            None => PIPELINE.to_string(),
        };
        let alerts = dir.join("alerts.jsonl");
        let text = campaign_pipeline(&source, &alerts)?;
        let pipeline = dir.join("keel.toml");
        std::fs::write(&pipeline, text)?;
        let spec = crate::state::load_pipeline(&pipeline)?;
        let paths = StatePaths::resolve(None, &spec, &pipeline)?;
        let hoops = crate::demo::install_hoops(&dir)?;
        let feed = crate::demo::start_feed(&hoops, args.seed, "none", &dir.join("feed.log"))?;
        let env = vec![
            (
                "PATH".to_string(),
                format!(
                    "{}:{}",
                    hoops.parent().expect("bin dir").display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            ),
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
            ("HOOPS_CHAOS".to_string(), plan::knobs(plan)),
            (
                "HOOPS_CHAOS_STATE".to_string(),
                dir.join("chaos-marks").display().to_string(),
            ),
            (
                "HOOPS_CHAOS_LEDGER".to_string(),
                dir.join("ledger").display().to_string(),
            ),
        ];
        // Keel's clock starts on the morning after the last day's evening, so every day's
        // live window is over (one poll) and each run is a run of a day that has happened.
        let zone: chrono_tz::Tz = spec.timezone.parse().unwrap_or(chrono_tz::UTC);
        let last = plan.last().map_or(first_of(plan), |day| day.date);
        let morning = (last + chrono::Duration::days(1))
            .and_hms_opt(5, 0, 0)
            .expect("05:00 is a time");
        let start = zone
            .from_local_datetime(&morning)
            .earliest()
            .context("05:00 does not exist in the pipeline's time zone that day")?
            .timestamp_millis();
        Ok(Campaign {
            dir,
            pipeline,
            paths,
            spec,
            feed,
            env,
            alerts,
            clock: SimulatedClock {
                anchor: Instant::now(),
                at_anchor: start,
                speed: args.clock_speed,
            },
            serve: None,
            serve_starts: 0,
        })
    }

    /// Starts `keel serve` with its clock where the campaign's clock is now, and waits for its
    /// API.
    fn start_serve(&mut self) -> Result<()> {
        self.serve_starts += 1;
        let log_path = self.dir.join(format!("serve-{}.log", self.serve_starts));
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        let now = self.clock.now();
        self.clock = SimulatedClock {
            anchor: Instant::now(),
            at_anchor: now,
            speed: self.clock.speed,
        };
        let start = chrono::DateTime::from_timestamp_millis(now).context("clock out of range")?;
        let keel = std::env::current_exe().context("cannot find the keel executable")?;
        let child = Command::new(keel)
            .arg("serve")
            .arg(&self.pipeline)
            .args(["--addr", "127.0.0.1:0", "--grace", "1s"])
            .args(["--clock-speed", &self.clock.speed.to_string()])
            .arg("--clock-start")
            .arg(start.to_rfc3339())
            .envs(self.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .context("cannot start keel serve")?;
        let mut serve = Serve {
            child,
            address: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            if let Some(address) = text
                .split("API on http://")
                .nth(1)
                .and_then(|rest| rest.split(';').next())
            {
                serve.address = address.trim().to_string();
                break;
            }
            if let Some(status) = serve.child.try_wait()? {
                bail!(
                    "keel serve exited ({status}) before its API listened; see {}",
                    log_path.display()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "keel serve did not start its API within 30s; see {}",
                    log_path.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.serve = Some(serve);
        Ok(())
    }

    /// `kill -9` of serve; returns Keel's time at the kill.
    fn kill_serve(&mut self) -> Result<Millis> {
        let mut serve = self.serve.take().context("no keel serve to kill")?;
        let at = self.clock.now();
        serve.child.kill().context("cannot kill keel serve")?;
        serve.child.wait()?;
        Ok(at)
    }

    /// Stops serve the polite way (SIGTERM), so alerts queued are delivered.
    fn stop_serve(&mut self) {
        if let Some(serve) = self.serve.take() {
            if let Some(pid) = rustix::process::Pid::from_raw(serve.child.id() as i32) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut serve = serve;
            // Past the deadline, dropping it kills it.
            while Instant::now() < deadline {
                if let Ok(Some(_)) = serve.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    fn set_feed_faults(&self, spec: &str) -> Result<()> {
        let mut client = hoops::http::Client::new(&self.feed.address, Duration::from_secs(5))
            .map_err(anyhow::Error::msg)?;
        let response = client
            .request("PUT", "/control/faults", spec.as_bytes())
            .context("cannot set the feed's faults")?;
        if response.status != 200 {
            bail!("the feed refused the faults {spec:?}: {}", response.status);
        }
        Ok(())
    }

    /// Queues the run of `date` through serve's API.
    fn trigger(&self, date: &str) -> Result<()> {
        let serve = self.serve.as_ref().context("keel serve is not running")?;
        let token = std::fs::read_to_string(self.paths.dir.join("api-token"))
            .context("cannot read serve's API token")?;
        let mut client = hoops::http::Client::new(&serve.address, Duration::from_secs(10))
            .map_err(anyhow::Error::msg)?;
        let authorization = format!("Bearer {}", token.trim());
        let body = serde_json::json!({ "partition": date }).to_string();
        let response = client
            .send(
                "POST",
                &format!("/api/pipelines/{}/runs", self.spec.name),
                &[
                    ("Authorization", &authorization),
                    ("Content-Type", "application/json"),
                ],
                body.as_bytes(),
            )
            .context("cannot trigger a run through serve's API")?;
        if !(200..300).contains(&response.status) {
            bail!(
                "serve's API refused to trigger {date}: {} {}",
                response.status,
                String::from_utf8_lossy(&response.body)
            );
        }
        Ok(())
    }

    async fn run(
        &mut self,
        plan: &[DayPlan],
        say: &impl Fn(String),
    ) -> Result<(Vec<DayResult>, Vec<measure::Alert>, Option<f64>)> {
        self.start_serve()?;
        let store = self
            .paths
            .open_for_reading()?
            .context("serve did not create the state")?;
        let mut days = Vec::new();
        for (index, day) in plan.iter().enumerate() {
            let date = day.date.to_string();
            let day_started = Instant::now();
            self.set_feed_faults(&day.feed_faults())?;
            self.trigger(&date)?;
            let mut killed_at = None;
            let run = loop {
                let runs = store.list_runs(&self.spec.name, None, 1_000).await?;
                let run = runs
                    .into_iter()
                    .find(|run| run.partition == date && run.pass.is_none());
                if let Some(run) = &run {
                    if run.state.is_finished() {
                        break Some(run.clone());
                    }
                    if day.class == FaultClass::KillKeel && killed_at.is_none() {
                        let started = store
                            .attempts(run.id)
                            .await?
                            .iter()
                            .filter(|attempt| attempt.started_at.is_some())
                            .count() as u64;
                        if started >= day.amount {
                            let at = self.kill_serve()?;
                            killed_at = Some(at);
                            // Down for a moment, as a crashed process would be before its
                            // supervisor restarts it.
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            self.start_serve()?;
                        }
                    }
                }
                if day_started.elapsed() > DAY_LIMIT {
                    break run;
                }
                tokio::time::sleep(POLL).await;
            };
            let result = match run {
                Some(run) => measure::measure_day(&store, day, &run, killed_at).await?,
                None => DayResult::never_ran(day),
            };
            say(progress_line(index, plan.len(), day, &result, day_started));
            days.push(result);
        }
        self.set_feed_faults("none")?;
        // The anomaly watcher and deliveries run off the engine's loop: a moment for the last
        // day's alerts, then a polite stop, which delivers what is queued.
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        let end = self.clock.now();
        self.stop_serve();
        let alerts = measure::read_alerts(&self.alerts)?;
        let since = end - keel_health_window();
        let facts = crate::health::facts::gather(&store, &self.spec.name, since).await?;
        let score = crate::health::score::health_score(
            &self.spec,
            &facts,
            crate::health::zone(&self.spec),
            end,
        );
        Ok((days, alerts, score.score))
    }
}

fn keel_health_window() -> Millis {
    crate::health::score::WINDOW + 24 * 3_600_000
}

fn first_of(plan: &[DayPlan]) -> chrono::NaiveDate {
    plan.first().map_or_else(
        || chrono::NaiveDate::from_ymd_opt(2026, 11, 1).expect("a date"),
        |day| day.date,
    )
}

fn progress_line(
    index: usize,
    total: usize,
    day: &DayPlan,
    result: &DayResult,
    started: Instant,
) -> String {
    let mut line = format!(
        "day {:>3}/{total}  {}  {:<17} {:<10} {:>3} attempts",
        index + 1,
        day.date,
        day.class.as_str(),
        result.state.map_or("stuck", RunState::as_str),
        result.attempts,
    );
    if let Some(recovery) = result.recovery {
        line.push_str(&format!(
            " · recovered in {} simulated",
            measure::format_millis(recovery)
        ));
    }
    if result.keel_restarted {
        line.push_str(" · keel serve killed and restarted");
    }
    line.push_str(&format!(" · {:.1}s", started.elapsed().as_secs_f64()));
    line
}

/// The campaign's copy of a hoops pipeline: no schedule or passes (the campaign triggers each
/// day), fan-outs run whole-date (a hundred processes a day would not fit the accelerated
/// clock), a gate grace longer than any task takes (the grace is Keel time, tasks real time),
/// a short timeout for the tasks a hang strikes, and a command alert sink that appends every
/// alert to `alerts`.
fn campaign_pipeline(source: &str, alerts: &Path) -> Result<String> {
    let mut text = source
        .replace("schedule = \"0 6 * * *\"\n", "")
        .replace("schedule_partition = \"-1d\"\n", "")
        .replace(", \"{item.key}\"]", "]")
        .replace(", \"{item}\"]", "]");
    // Drop `expand = …` lines, `[passes.*]` tables and any `[alerts]` of the source.
    let mut kept = Vec::new();
    let mut skipping = false;
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('[') {
            skipping = trimmed.starts_with("[passes.") || trimmed.starts_with("[alerts]");
        }
        if skipping || trimmed.starts_with("expand = ") {
            continue;
        }
        kept.push(line.to_string());
    }
    text = kept.join("\n");
    text = lengthen_gate_grace(&text);
    for task in plan::HANG_TARGETS {
        let header = format!("[tasks.{task}]\n");
        if !text.contains(&header) {
            bail!(
                "the pipeline has no task {task:?}, which the campaign's hangs strike; keel chaos runs hoops-style pipelines"
            );
        }
        text = text.replace(
            &header,
            &format!("{header}timeout = \"{}\"\n", plan::HANG_TIMEOUT),
        );
    }
    // The sink is a command: each alert's JSON and a newline on its stdin, appended.
    let alerts = alerts.display().to_string();
    if alerts.contains('\'') {
        bail!("the campaign directory's path holds a quote: {alerts:?}; use another --keep");
    }
    text.push_str(&format!(
        "\n\n[alerts]\ncommand = [\"sh\", \"-c\", \"cat >> '{alerts}'\"]\nmax_per_hour = 5\n"
    ));
    Ok(text)
}

/// Every gate's grace made 12 hours: under the accelerated clock a grace of minutes is
/// milliseconds of real time, and a task slowed by a loaded machine would be waived.
fn lengthen_gate_grace(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("grace = \"") {
        let (before, after) = rest.split_at(at + "grace = \"".len());
        out.push_str(before);
        let end = after.find('"').unwrap_or(0);
        out.push_str("12h");
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}
