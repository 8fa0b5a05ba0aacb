//! The `hoops` command line: the season, the feed and every task of Keel's reference pipeline.
//! Run `hoops help` for the commands. The `hoops` binary and `keel demo` (which runs the keel
//! binary under the name `hoops`) both enter here.

use std::io::Write;
use std::path::PathBuf;

use crate::chaos::{self, Chaos};
use crate::date::Date;
use crate::faults::Faults;
use crate::feed::Feed;
use crate::outcome::{self, EXIT_PERMANENT, TaskError};
use crate::season::{Season, Source};
use crate::service::{Service, ServiceConfig};
use crate::tasks::{self, Ctx, PIPELINE};

const USAGE: &str = "\
hoops: the processors of Keel's reference pipeline

USAGE
  hoops <task> <date>                 run one task for one date (YYYY-MM-DD)
  hoops scrape|load <source> <date>   the same as scrape_<source> / load_<source>
  hoops ready <source> <date>         exit 0 if the feed has that data now, 75 if not
  hoops feed [--addr 127.0.0.1:PORT] [--seed S] [--faults SPEC] [--log] [--exit-on-eof]
                                      serve the season on loopback (port 0 picks one);
                                      the first line of stdout is `listening on ADDR`;
                                      --exit-on-eof: stop when stdin closes
  hoops serve [--addr 127.0.0.1:PORT] [--feed URL] [--warehouse FILE] [--export-dir DIR] [--log]
              [--exit-on-eof]
                                      the processors as an HTTP service on loopback (default
                                      port 8089; 0 picks one): POST /process/TASK {\"date\": D},
                                      GET /ready; the first line of stdout is `listening on ADDR`
  hoops season [--seed S] [--date D [--source SOURCE]]
                                      print the season's summary, or one date as JSON
  hoops tasks                         list the tasks in pipeline order with their phase
  hoops self-test                     smoke test: season, feed and every task, in a scratch dir

SOURCES  schedule (= scoreboard), boxscores, injuries, props

TASKS
  scrape       scrape_schedule scrape_boxscores scrape_injuries scrape_props
  raw          load_schedule load_boxscores load_injuries load_props
  analytics    team_offense team_defense player_game_summary upcoming_player_context
               upcoming_team_context
  precompute   rolling_averages opponent_defense rest_days player_form feature_store
  predictions  predictions
  export       export
  grading      grading

ENVIRONMENT
  HOOPS_FEED             the feed, e.g. http://127.0.0.1:8787 (loopback only)
  HOOPS_WAREHOUSE        the SQLite warehouse file (default ./hoops.db)
  HOOPS_EXPORT_DIR       where export writes picks-DATE.json (default exports/ beside the warehouse)
  HOOPS_RETRY_AFTER_CAP  seconds of Retry-After a scrape waits out once before exiting 75 (default 2)
  HOOPS_HTTP_TIMEOUT     seconds before a feed request gives up (default 10)
  HOOPS_SERVICE_TOKEN    hoops serve: the bearer token /process requires (none: no auth)
  HOOPS_CHAOS            chaos knobs a task plays on itself: crash|hang|corrupt|regress=TASK@DATE,...
  HOOPS_CHAOS_STATE      the directory where one-shot chaos knobs mark that they fired
  HOOPS_CHAOS_LEDGER     a file each task appends `DATE TASK EXIT` to as it ends (corrupt: `corrupt`)
  KEEL_RESULT            where a task writes its result JSON (rows, metrics, no_data)
  KEEL_HEARTBEAT         a file the task touches while it works

EXIT CODES  0 done (or no_data), 75 not ready, 65 permanent, 1 transient

FAULT SPEC (feed)  comma-separated, e.g.
  latency=20ms,429=0.1,500=0.05,retry_after=1,late_props=3,missing=injuries@2026-11-03,no_games=2026-11-05
";

/// Runs the `hoops` command with `arguments` (without the program name); returns the exit code.
pub fn main(arguments: &[String]) -> i32 {
    let args: Vec<&str> = arguments.iter().map(String::as_str).collect();
    run(&args)
}

fn run(args: &[&str]) -> i32 {
    match args {
        [] => {
            eprint!("{USAGE}");
            EXIT_PERMANENT
        }
        ["help" | "--help" | "-h"] => {
            print!("{USAGE}");
            0
        }
        ["--version" | "-V"] => {
            println!("hoops {}", env!("CARGO_PKG_VERSION"));
            0
        }
        ["feed", rest @ ..] => feed(rest),
        ["serve", rest @ ..] => serve(rest),
        ["season", rest @ ..] => season(rest),
        ["self-test"] => self_test(),
        ["tasks"] => {
            for (task, phase) in PIPELINE {
                println!("{phase:<12} {task}");
            }
            0
        }
        ["ready", source, date] => {
            let result = Ctx::from_env().and_then(|ctx| tasks::ready(source, date, &ctx));
            match result {
                Ok(message) => {
                    println!("hoops ready {source} {date}: {message}");
                    0
                }
                Err(e) => {
                    eprintln!("hoops ready {source} {date}: {e}");
                    e.exit_code()
                }
            }
        }
        [verb @ ("scrape" | "load"), source, date] => {
            let source = match Source::parse(source) {
                Some(Source::Scoreboard) => "schedule",
                Some(s) => s.as_str(),
                None => {
                    eprintln!(
                        "hoops {verb}: unknown source {source:?} (schedule, boxscores, injuries, props)"
                    );
                    return EXIT_PERMANENT;
                }
            };
            task(&format!("{verb}_{source}"), date)
        }
        [name, date] if tasks::is_task(name) => task(name, date),
        [name, date, item] if tasks::PER_ITEM.contains(name) => {
            let label = format!("{name} {date} {item}");
            finish(
                &label,
                Ctx::from_env().and_then(|ctx| tasks::run_item(name, date, item, &ctx)),
            )
        }
        [name] if tasks::is_task(name) => {
            eprintln!("hoops {name}: missing the date argument (YYYY-MM-DD)");
            EXIT_PERMANENT
        }
        [other, ..] => {
            eprintln!("hoops: unknown command {other:?}; see `hoops help`");
            EXIT_PERMANENT
        }
    }
}

fn task(name: &str, date: &str) -> i32 {
    let label = format!("{name} {date}");
    // The chaos knobs (`HOOPS_CHAOS`, for `keel chaos`): a crash or a hang before the work, a
    // regressed metric or a corrupt result file after it.
    let chaos = match Chaos::from_env() {
        Ok(chaos) => chaos,
        Err(e) => {
            eprintln!("hoops {label}: {e}");
            return EXIT_PERMANENT;
        }
    };
    let state = chaos::state_dir();
    let fires = |kind| match chaos.fires(kind, name, date, state.as_deref()) {
        Ok(fires) => fires,
        Err(e) => {
            eprintln!("hoops {label}: {e}");
            false
        }
    };
    if fires(chaos::Kind::Crash) {
        eprintln!("hoops {label}: crashed (HOOPS_CHAOS crash knob)");
        return 1;
    }
    if fires(chaos::Kind::Hang) {
        eprintln!("hoops {label}: hanging (HOOPS_CHAOS hang knob)");
        std::thread::sleep(std::time::Duration::from_secs(3_600));
    }
    let outcome = Ctx::from_env().and_then(|ctx| tasks::run(name, date, &ctx));
    let outcome = match outcome {
        Ok(mut report) if fires(chaos::Kind::Regress) => {
            if let Some(accuracy) = report.metrics.get("accuracy").and_then(|v| v.as_f64()) {
                let regressed = (accuracy * chaos::REGRESSED_SHARE * 10_000.0).round() / 10_000.0;
                report.metrics.insert("accuracy".into(), regressed.into());
            }
            Ok(report)
        }
        other => other,
    };
    let code = finish(&label, outcome);
    let mut ended = code.to_string();
    if code == 0
        && fires(chaos::Kind::Corrupt)
        && let Some(path) = std::env::var_os("KEEL_RESULT").filter(|v| !v.is_empty())
    {
        eprintln!("hoops {label}: corrupting KEEL_RESULT (HOOPS_CHAOS corrupt knob)");
        let _ = std::fs::write(path, b"{\"rows\": 12, \"metrics\": {\x00garbage");
        ended = "corrupt".to_string();
    }
    // The ledger: one line per task process that ran to its end, for a test to check that
    // every task completed exactly once per date, whatever happened to Keel meanwhile.
    if let Some(ledger) = std::env::var_os("HOOPS_CHAOS_LEDGER").filter(|v| !v.is_empty()) {
        let line = format!("{date} {name} {ended}\n");
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&ledger)
            .and_then(|mut file| file.write_all(line.as_bytes()));
        if let Err(e) = appended {
            eprintln!("hoops {label}: cannot append to HOOPS_CHAOS_LEDGER: {e}");
        }
    }
    code
}

/// Prints how a task ended and writes its `KEEL_RESULT`; the exit code.
fn finish(label: &str, outcome: Result<outcome::Report, outcome::TaskError>) -> i32 {
    let result_path = std::env::var_os("KEEL_RESULT")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    let (code, doc) = match &outcome {
        Ok(report) => {
            let kind = if report.no_data {
                "no_data"
            } else {
                "succeeded"
            };
            println!(
                "hoops {label}: {kind}, {}: {}",
                crate::rows(report.rows),
                report.message
            );
            (0, report.to_json())
        }
        Err(e) => {
            eprintln!("hoops {label}: {e}");
            (e.exit_code(), serde_json::json!({"message": e.message()}))
        }
    };
    if let Some(path) = result_path
        && let Err(e) = outcome::write_result(&path, &doc)
    {
        eprintln!(
            "hoops {label}: cannot write KEEL_RESULT {}: {e}",
            path.display()
        );
    }
    code
}

/// `--flag value` or `--flag=value` pairs.
fn flags<'a>(
    args: &[&'a str],
    known: &[&str],
    switches: &[&str],
) -> Result<Vec<(String, &'a str)>, String> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = args[i];
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (arg, None),
        };
        if switches.contains(&name) {
            out.push((name.to_string(), ""));
        } else if known.contains(&name) {
            let value = match inline {
                Some(v) => v,
                None => {
                    i += 1;
                    *args.get(i).ok_or_else(|| format!("{name} needs a value"))?
                }
            };
            out.push((name.to_string(), value));
        } else {
            return Err(format!("unknown argument {arg:?}"));
        }
        i += 1;
    }
    Ok(out)
}

fn seed(value: &str) -> Result<u64, String> {
    value
        .parse()
        .map_err(|_| format!("--seed {value:?}: expected a non-negative integer"))
}

fn feed(args: &[&str]) -> i32 {
    let parsed = (|| -> Result<(String, u64, Faults, bool, bool), String> {
        let (mut addr, mut s, mut faults, mut log, mut exit_on_eof) = (
            "127.0.0.1:8787".to_string(),
            7,
            Faults::none(),
            false,
            false,
        );
        let switches = ["--log", "--exit-on-eof"];
        for (name, value) in flags(args, &["--addr", "--seed", "--faults"], &switches)? {
            match name.as_str() {
                "--addr" => addr = value.to_string(),
                "--seed" => s = seed(value)?,
                "--faults" => faults = Faults::parse(value)?,
                "--log" => log = true,
                _ => exit_on_eof = true,
            }
        }
        Ok((addr, s, faults, log, exit_on_eof))
    })();
    let (addr, s, faults, log, exit_on_eof) = match parsed {
        Ok(p) => p,
        Err(e) => {
            eprintln!("hoops feed: {e}");
            return 2;
        }
    };
    let spec = faults.to_string();
    match Feed::start(&addr, s, faults, log) {
        Ok(feed) => {
            println!("listening on {}", feed.addr());
            let _ = std::io::stdout().flush();
            eprintln!(
                "hoops feed: seed {s}, faults {spec}; serving {}",
                feed.url()
            );
            if exit_on_eof {
                // The parent holds our stdin: when it goes away, so do we.
                std::thread::spawn(|| {
                    let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
                    std::process::exit(0);
                });
            }
            feed.wait();
            0
        }
        Err(e) => {
            eprintln!("hoops feed: cannot listen on {addr}: {e}");
            1
        }
    }
}

/// The address `hoops serve` listens on by default, and the one `keel-http.toml` calls.
pub const SERVICE_ADDR: &str = "127.0.0.1:8089";

fn serve(args: &[&str]) -> i32 {
    let parsed = (|| -> Result<(String, ServiceConfig, bool), String> {
        let mut ctx = Ctx::from_env().map_err(|e| e.message().to_string())?;
        // The service is not an attempt: a heartbeat file in its environment is not its own.
        ctx.heartbeat = None;
        let (mut addr, mut log, mut exit_on_eof) = (SERVICE_ADDR.to_string(), false, false);
        let known = ["--addr", "--feed", "--warehouse", "--export-dir"];
        for (name, value) in flags(args, &known, &["--log", "--exit-on-eof"])? {
            match name.as_str() {
                "--addr" => addr = value.to_string(),
                "--feed" => ctx.feed = Some(value.to_string()),
                "--warehouse" => ctx.warehouse = PathBuf::from(value),
                "--export-dir" => ctx.export_dir = Some(PathBuf::from(value)),
                "--log" => log = true,
                _ => exit_on_eof = true,
            }
        }
        let token = std::env::var("HOOPS_SERVICE_TOKEN")
            .ok()
            .filter(|token| !token.is_empty());
        Ok((addr, ServiceConfig { ctx, token, log }, exit_on_eof))
    })();
    let (addr, config, exit_on_eof) = match parsed {
        Ok(p) => p,
        Err(e) => {
            eprintln!("hoops serve: {e}; see `hoops help`");
            return 2;
        }
    };
    let summary = format!(
        "warehouse {}, feed {}, exports in {}, {}",
        config.ctx.warehouse.display(),
        config.ctx.feed.as_deref().unwrap_or("not set (HOOPS_FEED)"),
        config.ctx.export_dir().display(),
        if config.token.is_some() {
            "bearer token required"
        } else {
            "no token required (HOOPS_SERVICE_TOKEN is not set)"
        }
    );
    match Service::start(&addr, config) {
        Ok(service) => {
            println!("listening on {}", service.addr());
            let _ = std::io::stdout().flush();
            eprintln!("hoops serve: {summary}");
            if exit_on_eof {
                // The parent holds our stdin: when it goes away, so do we.
                std::thread::spawn(|| {
                    let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
                    std::process::exit(0);
                });
            }
            service.wait();
            0
        }
        Err(e) => {
            eprintln!(
                "hoops serve: cannot listen on {addr}: {e}; pick another with --addr 127.0.0.1:PORT"
            );
            1
        }
    }
}

fn season(args: &[&str]) -> i32 {
    let parsed = (|| -> Result<(u64, Option<Date>, Option<Source>), String> {
        let (mut s, mut date, mut source) = (7, None, None);
        for (name, value) in flags(args, &["--seed", "--date", "--source"], &[])? {
            match name.as_str() {
                "--seed" => s = seed(value)?,
                "--date" => date = Some(value.parse::<Date>().map_err(|e| e.to_string())?),
                _ => {
                    source = Some(Source::parse(value).ok_or_else(|| {
                        format!("unknown source {value:?} (schedule, boxscores, injuries, props)")
                    })?)
                }
            }
        }
        if source.is_some() && date.is_none() {
            return Err("--source needs --date".into());
        }
        Ok((s, date, source))
    })();
    let (s, date, source) = match parsed {
        Ok(p) => p,
        Err(e) => {
            eprintln!("hoops season: {e}");
            return EXIT_PERMANENT;
        }
    };
    let season = Season::generate(s);
    let doc = match date {
        None => season.summary(),
        Some(date) => match source {
            Some(source) => season.view(source, date, false),
            None => serde_json::json!({
                "date": date.to_string(),
                "scoreboard": season.view(Source::Scoreboard, date, false)["games"],
                "injuries": season.view(Source::Injuries, date, false)["injuries"],
                "props": season.view(Source::Props, date, false)["props"],
            }),
        },
    };
    println!(
        "{}",
        serde_json::to_string_pretty(&doc).expect("JSON serialises")
    );
    0
}

fn self_test() -> i32 {
    match crate::selftest::run() {
        Ok(lines) => {
            for line in lines {
                println!("self-test: {line}");
            }
            println!("self-test: ok");
            0
        }
        Err(e) => {
            eprintln!("self-test failed: {e}");
            TaskError::Transient(e).exit_code()
        }
    }
}
