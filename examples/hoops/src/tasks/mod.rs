//! The pipeline's tasks. Each is `hoops <task> <date>`, works on one warehouse file and ends
//! with a [`Report`] (exit 0) or a [`TaskError`] (exit 75, 65 or 1).

mod analytics;
mod model;
mod precompute;
mod raw;
mod scrape;

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::date::Date;
use crate::http::{Client, Response};
use crate::outcome::{Report, TaskError};
use crate::season::Source;

/// Every task in pipeline order, with its phase.
pub const PIPELINE: &[(&str, &str)] = &[
    ("scrape_schedule", "scrape"),
    ("scrape_boxscores", "scrape"),
    ("scrape_injuries", "scrape"),
    ("scrape_props", "scrape"),
    ("live_scores", "scrape"),
    ("load_schedule", "raw"),
    ("load_boxscores", "raw"),
    ("load_injuries", "raw"),
    ("load_props", "raw"),
    ("team_offense", "analytics"),
    ("team_defense", "analytics"),
    ("player_game_summary", "analytics"),
    ("upcoming_player_context", "analytics"),
    ("upcoming_team_context", "analytics"),
    ("rolling_averages", "precompute"),
    ("opponent_defense", "precompute"),
    ("rest_days", "precompute"),
    ("player_form", "precompute"),
    ("feature_store", "precompute"),
    ("predictions", "predictions"),
    ("export", "export"),
    ("grading", "grading"),
];

pub fn is_task(name: &str) -> bool {
    PIPELINE.iter().any(|(t, _)| *t == name)
}

/// Where a task finds its feed, warehouse and export directory. [`Ctx::from_env`] reads the
/// documented environment variables; tests build one by hand.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// `HOOPS_WAREHOUSE`, default `hoops.db`.
    pub warehouse: PathBuf,
    /// `HOOPS_FEED`, e.g. `http://127.0.0.1:43123`.
    pub feed: Option<String>,
    /// `HOOPS_EXPORT_DIR`, default `exports/` beside the warehouse.
    pub export_dir: Option<PathBuf>,
    /// `HOOPS_RETRY_AFTER_CAP` (seconds, default 2): a 429 whose `Retry-After` is at most this
    /// is waited out once in-process; otherwise the task exits 75.
    pub retry_after_cap: Duration,
    /// `HOOPS_HTTP_TIMEOUT` (seconds, default 10).
    pub http_timeout: Duration,
    /// `KEEL_HEARTBEAT`: touched while the task works.
    pub heartbeat: Option<PathBuf>,
}

impl Default for Ctx {
    fn default() -> Ctx {
        Ctx {
            warehouse: PathBuf::from("hoops.db"),
            feed: None,
            export_dir: None,
            retry_after_cap: Duration::from_secs(2),
            http_timeout: Duration::from_secs(10),
            heartbeat: None,
        }
    }
}

impl Ctx {
    pub fn from_env() -> Result<Ctx, TaskError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let secs = |name: &str, default: Duration| -> Result<Duration, TaskError> {
            match var(name) {
                None => Ok(default),
                Some(v) => v
                    .parse::<f64>()
                    .ok()
                    .filter(|s| s.is_finite() && *s >= 0.0)
                    .map(Duration::from_secs_f64)
                    .ok_or_else(|| {
                        TaskError::Permanent(format!("{name}={v:?}: expected a number of seconds"))
                    }),
            }
        };
        let defaults = Ctx::default();
        Ok(Ctx {
            warehouse: var("HOOPS_WAREHOUSE").map_or(defaults.warehouse, PathBuf::from),
            feed: var("HOOPS_FEED"),
            export_dir: var("HOOPS_EXPORT_DIR").map(PathBuf::from),
            retry_after_cap: secs("HOOPS_RETRY_AFTER_CAP", defaults.retry_after_cap)?,
            http_timeout: secs("HOOPS_HTTP_TIMEOUT", defaults.http_timeout)?,
            heartbeat: var("KEEL_HEARTBEAT").map(PathBuf::from),
        })
    }

    pub fn export_dir(&self) -> PathBuf {
        self.export_dir.clone().unwrap_or_else(|| {
            self.warehouse
                .parent()
                .map_or_else(|| PathBuf::from("exports"), |p| p.join("exports"))
        })
    }

    /// A sign of life for Keel's stall detection.
    pub fn beat(&self) {
        if let Some(path) = &self.heartbeat {
            let touched = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .and_then(|f| f.set_modified(SystemTime::now()));
            if let Err(e) = touched {
                eprintln!("hoops: cannot touch KEEL_HEARTBEAT {}: {e}", path.display());
            }
        }
    }

    fn feed_client(&self) -> Result<FeedClient<'_>, TaskError> {
        let url = self.feed.as_deref().ok_or_else(|| {
            TaskError::Permanent(
                "HOOPS_FEED is not set (e.g. HOOPS_FEED=http://127.0.0.1:8787)".into(),
            )
        })?;
        let client = Client::new(url, self.http_timeout).map_err(TaskError::Permanent)?;
        Ok(FeedClient {
            ctx: self,
            url: url.to_string(),
            client,
            waited: Duration::ZERO,
        })
    }
}

/// The feed behind one keep-alive connection, mapping HTTP answers onto task outcomes.
struct FeedClient<'a> {
    ctx: &'a Ctx,
    url: String,
    client: Client,
    waited: Duration,
}

impl FeedClient<'_> {
    fn get_json(&mut self, path: &str) -> Result<serde_json::Value, TaskError> {
        let mut waited_here = false;
        loop {
            let resp = self.client.get(path).map_err(|e| {
                TaskError::Transient(format!("cannot reach the feed at {}: {e}", self.url))
            })?;
            self.ctx.beat();
            match resp.status {
                200 => return resp.json_body().map_err(TaskError::Transient),
                429 => {
                    let retry_after = resp
                        .header("retry-after")
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .unwrap_or(1);
                    let wait = Duration::from_secs(retry_after);
                    if waited_here || wait > self.ctx.retry_after_cap {
                        return Err(TaskError::NotReady(format!(
                            "the feed rate-limited GET {path} (429, Retry-After: {retry_after}s)"
                        )));
                    }
                    // Honour Retry-After once, in-process, when it is short.
                    eprintln!("hoops: 429 on GET {path}; waiting {retry_after}s as asked");
                    std::thread::sleep(wait);
                    self.waited += wait;
                    waited_here = true;
                }
                404 => {
                    let (code, message) = error_of(&resp);
                    return Err(if code == "not_yet_available" {
                        TaskError::NotReady(format!("GET {path}: {message}"))
                    } else {
                        TaskError::Permanent(format!("GET {path}: 404 {code}: {message}"))
                    });
                }
                400..=499 => {
                    let (code, message) = error_of(&resp);
                    return Err(TaskError::Permanent(format!(
                        "GET {path}: {} {code}: {message}",
                        resp.status
                    )));
                }
                status => {
                    let (code, message) = error_of(&resp);
                    return Err(TaskError::Transient(format!(
                        "GET {path}: the feed answered {status} {code}: {message}"
                    )));
                }
            }
        }
    }
}

fn error_of(resp: &Response) -> (String, String) {
    match resp.json_body() {
        Ok(v) => (
            v["error"].as_str().unwrap_or("error").to_string(),
            v["message"].as_str().unwrap_or("").to_string(),
        ),
        Err(_) => (
            "error".into(),
            String::from_utf8_lossy(&resp.body)
                .chars()
                .take(200)
                .collect(),
        ),
    }
}

/// Parses the date argument: a bad date is a permanent failure (exit 65).
pub fn parse_date(s: &str) -> Result<Date, TaskError> {
    s.parse::<Date>()
        .map_err(|e| TaskError::Permanent(e.to_string()))
}

/// Runs one task for one date.
pub fn run(task: &str, date: &str, ctx: &Ctx) -> Result<Report, TaskError> {
    if !is_task(task) {
        return Err(TaskError::Permanent(format!("unknown task {task:?}")));
    }
    let date = parse_date(date)?;
    ctx.beat();
    match task {
        "scrape_schedule" => scrape::scrape(ctx, Source::Scoreboard, task, date),
        "scrape_boxscores" => scrape::scrape(ctx, Source::Boxscores, task, date),
        "scrape_injuries" => scrape::scrape(ctx, Source::Injuries, task, date),
        "scrape_props" => scrape::scrape(ctx, Source::Props, task, date),
        "live_scores" => scrape::live_scores(ctx, date),
        "load_schedule" => raw::load_schedule(ctx, date),
        "load_boxscores" => raw::load_boxscores(ctx, date),
        "load_injuries" => raw::load_injuries(ctx, date),
        "load_props" => raw::load_props(ctx, date),
        "team_offense" => analytics::team_offense(ctx, date),
        "team_defense" => analytics::team_defense(ctx, date),
        "player_game_summary" => analytics::player_game_summary(ctx, date),
        "upcoming_player_context" => analytics::upcoming_player_context(ctx, date),
        "upcoming_team_context" => analytics::upcoming_team_context(ctx, date),
        "rolling_averages" => precompute::rolling_averages(ctx, date),
        "opponent_defense" => precompute::opponent_defense(ctx, date),
        "rest_days" => precompute::rest_days(ctx, date),
        "player_form" => precompute::player_form(ctx, date),
        "feature_store" => precompute::feature_store(ctx, date),
        "predictions" => model::predictions(ctx, date),
        "export" => model::export(ctx, date),
        "grading" => model::grading(ctx, date),
        _ => unreachable!("checked by is_task"),
    }
}

/// The tasks that also run once per item, `hoops TASK DATE ITEM`: the per-game box scores and
/// the per-player predictions keel.toml fans out.
pub const PER_ITEM: &[&str] = &["scrape_boxscores", "predictions"];

/// Runs one item of a per-item task for one date.
pub fn run_item(task: &str, date: &str, item: &str, ctx: &Ctx) -> Result<Report, TaskError> {
    let date = parse_date(date)?;
    ctx.beat();
    match task {
        "scrape_boxscores" => scrape::scrape_boxscore_game(ctx, date, item),
        "predictions" => model::predict_player(ctx, date, item),
        _ => Err(TaskError::Permanent(format!(
            "task {task:?} does not run per item (only {})",
            PER_ITEM.join(", ")
        ))),
    }
}

/// `hoops ready SOURCE DATE`: Ok when the feed serves that data now, NotReady otherwise.
pub fn ready(source: &str, date: &str, ctx: &Ctx) -> Result<String, TaskError> {
    let source = Source::parse(source).ok_or_else(|| {
        TaskError::Permanent(format!(
            "unknown source {source:?} (schedule, scoreboard, boxscores, injuries, props)"
        ))
    })?;
    let date = parse_date(date)?;
    let mut feed = ctx.feed_client()?;
    let path = format!("/{}/{date}", source.as_str());
    match feed.client.get(&path) {
        Ok(resp) if resp.status == 200 => Ok(format!("{} for {date}: available", source.as_str())),
        Ok(resp) => {
            let (code, message) = error_of(&resp);
            Err(TaskError::NotReady(format!(
                "{} for {date}: not available yet ({} {code}: {message})",
                source.as_str(),
                resp.status
            )))
        }
        Err(e) => Err(TaskError::NotReady(format!(
            "cannot reach the feed at {}: {e}",
            feed.url
        ))),
    }
}
