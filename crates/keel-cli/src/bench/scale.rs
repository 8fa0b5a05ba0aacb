//! `keel bench --scale`: how Keel's wall time and peak memory grow with the size of a pipeline.
//!
//! Each shape runs at a quarter, a half and all of its size. Every case runs in a fresh process
//! of its own (`keel bench --scale-case`), which does exactly what `keel run` does on a fresh
//! state and then reads its own peak resident memory (`VmHWM`), so that one case's memory never
//! counts towards the next. (The peak the kernel reports to a parent through `wait4` would not
//! do: it starts from the parent's own size at the moment it spawned the child.) The same figure
//! for a one-task run is the baseline: what Keel costs before it holds any task. Tasks are
//! `true`, so what grows is the engine, the store and the launch path.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;

/// The pipeline shapes of the scale benchmark.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// One phase; tasks in levels of [`DAG_WIDTH`], each after two tasks of the level before.
    Dag,
    /// [`PHASES`] phases of equal size, each after the previous one: every task waits for every
    /// task upstream.
    Phases,
    /// One phase; each task after the one before.
    Chain,
    /// A pipeline of [`BACKFILL_TASKS`] tasks in three phases, run for a range of dates.
    Backfill,
    /// One task that lists items and one expanded over them (`expand`): each item an attempt
    /// chain of its own.
    Fanout,
}

const DAG_WIDTH: usize = 50;
const PHASES: usize = 20;
const BACKFILL_TASKS: usize = 10;
const FIRST_DATE: &str = "2025-01-01";

impl Shape {
    const ALL: [Shape; 5] = [
        Shape::Dag,
        Shape::Phases,
        Shape::Chain,
        Shape::Backfill,
        Shape::Fanout,
    ];

    /// The shape's name on the `--scale-case` command line.
    fn key(self) -> &'static str {
        match self {
            Shape::Dag => "dag",
            Shape::Phases => "phases",
            Shape::Chain => "chain",
            Shape::Backfill => "backfill",
            Shape::Fanout => "fanout",
        }
    }

    fn parse(key: &str) -> Option<Shape> {
        Shape::ALL.into_iter().find(|shape| shape.key() == key)
    }

    fn title(self) -> String {
        match self {
            Shape::Dag => format!(
                "DAG: one phase, levels of {DAG_WIDTH} tasks, each after 2 tasks of the level before"
            ),
            Shape::Phases => format!("{PHASES} phases, each after the one before"),
            Shape::Chain => "chain: each task after the one before".into(),
            Shape::Backfill => format!(
                "backfill: a {BACKFILL_TASKS}-task pipeline in 3 phases over a range of partitions"
            ),
            Shape::Fanout => "fan-out: one task listing items, one expanded over them".into(),
        }
    }

    /// The full size: tasks, or partitions for a backfill.
    fn full_size(self, quick: bool) -> usize {
        match (self, quick) {
            (Shape::Dag | Shape::Phases | Shape::Fanout, false) => 10_000,
            (Shape::Chain, false) => 5_000,
            (Shape::Backfill, false) => 365,
            (Shape::Dag | Shape::Phases | Shape::Fanout, true) => 200,
            (Shape::Chain, true) => 100,
            (Shape::Backfill, true) => 12,
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Shape::Backfill => "partitions",
            Shape::Fanout => "items",
            _ => "tasks",
        }
    }

    /// The pipeline file, the `keel run` arguments after the file, and the number of tasks run.
    fn case(self, size: usize, concurrency: u32) -> (String, Vec<String>, usize) {
        let partitioned = matches!(self, Shape::Backfill);
        let mut text = format!(
            "[pipeline]\nname = \"scale\"\ntimezone = \"UTC\"\npartition = \"{}\"\n\n[defaults]\nconcurrency = {concurrency}\nretries = {{ attempts = 1 }}\n\n",
            if partitioned { "date" } else { "none" }
        );
        let task = |text: &mut String, name: &str, phase: &str, after: &[String]| {
            text.push_str(&format!(
                "[tasks.{name}]\nphase = \"{phase}\"\ncommand = [\"true\"]\n"
            ));
            if !after.is_empty() {
                let quoted: Vec<String> = after.iter().map(|name| format!("\"{name}\"")).collect();
                text.push_str(&format!("after = [{}]\n", quoted.join(", ")));
            }
            text.push('\n');
        };
        match self {
            Shape::Fanout => {
                text.push_str("[phases.all]\n\n");
                // One process writes the whole list: `{{` is a literal brace in a command.
                let list = r#"printf '{{"items": [' > "$KEEL_RESULT"; seq -f '"i%g"' 1 SIZE | paste -sd, - >> "$KEEL_RESULT"; printf ']}}' >> "$KEEL_RESULT""#
                    .replace("SIZE", &size.to_string());
                let quoted = serde_json::to_string(&list).expect("a string serializes");
                text.push_str(&format!(
                    "[tasks.list]\nphase = \"all\"\ncommand = [\"sh\", \"-c\", {quoted}]\n\n"
                ));
                text.push_str(
                    "[tasks.item]\nphase = \"all\"\nafter = [\"list\"]\ncommand = [\"true\"]\nexpand = { from = \"list\" }\n\n",
                );
            }
            Shape::Dag => {
                text.push_str("[phases.all]\n\n");
                for index in 0..size {
                    let (level, position) = (index / DAG_WIDTH, index % DAG_WIDTH);
                    let mut after = Vec::new();
                    if level > 0 {
                        let before = level - 1;
                        after.push(format!("t{before}_{position}"));
                        let other = (position * 7 + 3) % DAG_WIDTH;
                        if other != position {
                            after.push(format!("t{before}_{other}"));
                        }
                    }
                    task(&mut text, &format!("t{level}_{position}"), "all", &after);
                }
            }
            Shape::Phases => {
                for phase in 0..PHASES {
                    text.push_str(&format!("[phases.p{phase}]\n"));
                    if phase > 0 {
                        text.push_str(&format!("after = [\"p{}\"]\n", phase - 1));
                    }
                    text.push('\n');
                }
                for index in 0..size {
                    let phase = index * PHASES / size;
                    task(&mut text, &format!("t{index}"), &format!("p{phase}"), &[]);
                }
            }
            Shape::Chain => {
                text.push_str("[phases.all]\n\n");
                for index in 0..size {
                    let after = match index {
                        0 => Vec::new(),
                        _ => vec![format!("t{}", index - 1)],
                    };
                    task(&mut text, &format!("t{index}"), "all", &after);
                }
            }
            Shape::Backfill => {
                text.push_str(
                    "[phases.extract]\n\n[phases.transform]\nafter = [\"extract\"]\n\n[phases.report]\nafter = [\"transform\"]\n\n",
                );
                for index in 0..BACKFILL_TASKS {
                    let phase = match index {
                        0..3 => "extract",
                        3..7 => "transform",
                        _ => "report",
                    };
                    task(&mut text, &format!("t{index}"), phase, &[]);
                }
            }
        }
        let (arguments, tasks) = match self {
            Shape::Backfill => {
                let first = chrono::NaiveDate::parse_from_str(FIRST_DATE, "%Y-%m-%d")
                    .expect("a valid date");
                let last = first + chrono::Days::new(size as u64 - 1);
                (
                    vec![
                        "--from".into(),
                        FIRST_DATE.into(),
                        "--to".into(),
                        last.format("%Y-%m-%d").to_string(),
                    ],
                    size * BACKFILL_TASKS,
                )
            }
            _ => (vec!["--partition".into(), "none".into()], size),
        };
        (text, arguments, tasks)
    }
}

/// One `keel run` as measured by the process that ran it.
struct Measured {
    wall: Duration,
    /// CPU time (user and system) of the process itself: its supervisors' and tasks' are not
    /// in it. Less disturbed than the wall time by other work on a busy machine.
    cpu: Duration,
    /// Peak resident memory of the process (`VmHWM`), in KiB.
    peak_kib: u64,
}

/// The CPU time, user and system, this process has used so far.
fn own_cpu() -> Duration {
    let spent = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(
        spent.tv_sec.max(0) as u64,
        spent.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// The peak resident memory of this process so far, in KiB.
fn own_peak_kib() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .context("/proc/self/status has no VmHWM")
}

const MEASURED_FILE: &str = "measured";

/// `keel bench --scale-case SHAPE:SIZE --dir DIR`, run by [`scale`] in a fresh process for each
/// case: writes the case's pipeline into `DIR`, runs it exactly as `keel run` does, in this
/// process, and writes the wall time and this process's peak memory to `DIR/measured`. The
/// process holds nothing else, so its peak is `keel run`'s.
pub async fn scale_case(case: &str, dir: &Path, concurrency: u32) -> Result<u8> {
    let (shape, size) = case
        .split_once(':')
        .and_then(|(shape, size)| Some((Shape::parse(shape)?, size.parse::<usize>().ok()?)))
        .with_context(|| format!("bad scale case {case:?}; expected SHAPE:SIZE"))?;
    std::fs::create_dir_all(dir)?;
    let (text, arguments, _) = shape.case(size, concurrency);
    let pipeline = dir.join("keel.toml");
    std::fs::write(&pipeline, text)?;
    let mut command_line: Vec<std::ffi::OsString> = vec!["keel".into(), "run".into()];
    command_line.push(pipeline.clone().into());
    command_line.extend(arguments.into_iter().map(Into::into));
    let cli = crate::args::Cli::try_parse_from(command_line)?;
    let crate::args::Command::Run(run) = cli.command else {
        unreachable!("the command line above is a keel run")
    };
    let begin = Instant::now();
    let code = crate::commands::run(None, run).await?;
    let wall = begin.elapsed();
    anyhow::ensure!(
        code == 0,
        "keel run of {} exited {code}",
        pipeline.display()
    );
    std::fs::write(
        dir.join(MEASURED_FILE),
        format!(
            "{} {} {}\n",
            wall.as_nanos(),
            own_cpu().as_nanos(),
            own_peak_kib()?
        ),
    )?;
    Ok(0)
}

/// Runs one case in a fresh `keel bench --scale-case` process and reads what it measured.
/// Blocks.
fn measure_case(
    program: &Path,
    dir: &Path,
    shape: Shape,
    size: usize,
    concurrency: u32,
    keep: bool,
) -> Result<Measured> {
    let case_dir = dir.join(format!("{shape:?}-{size}").to_lowercase());
    if case_dir.exists() {
        std::fs::remove_dir_all(&case_dir)
            .with_context(|| format!("cannot clear {}", case_dir.display()))?;
    }
    std::fs::create_dir_all(&case_dir)?;
    let log_path = case_dir.join("keel.log");
    let log = std::fs::File::create(&log_path)?;
    let status = Command::new(program)
        .arg("bench")
        .arg("--scale-case")
        .arg(format!("{}:{size}", shape.key()))
        .arg("--concurrency")
        .arg(concurrency.to_string())
        .arg("--dir")
        .arg(&case_dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .with_context(|| format!("cannot start {}", program.display()))?;
    let measured = std::fs::read_to_string(case_dir.join(MEASURED_FILE)).unwrap_or_default();
    let fields: Vec<u128> = measured
        .split_whitespace()
        .filter_map(|field| field.parse().ok())
        .collect();
    if !status.success() || fields.len() != 3 {
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        anyhow::bail!(
            "the {} case of {size} ended {status}:\n{}",
            shape.key(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    if !keep {
        let _ = std::fs::remove_dir_all(&case_dir);
    }
    Ok(Measured {
        wall: Duration::from_nanos(fields[0] as u64),
        cpu: Duration::from_nanos(fields[1] as u64),
        peak_kib: fields[2] as u64,
    })
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Runs every shape at a quarter, a half and all of its full size and prints the figures. With
/// `quick`, the sizes are small enough for CI on a debug build. Blocks.
pub fn scale(dir: &Path, concurrency: u32, quick: bool, keep: bool) -> Result<()> {
    let program: PathBuf = std::env::current_exe()?;
    let dir = dir.join("scale");
    let baseline = measure_case(&program, &dir, Shape::Chain, 1, concurrency, keep)?;
    println!(
        "scale{} · each case a `keel run` on a fresh state in a process of its own · peak = that process's peak RSS · baseline (a 1-task run) {} in {:.3} s",
        if quick {
            " (small sizes; `keel bench --scale` for the full ones)"
        } else {
            ""
        },
        mib(baseline.peak_kib),
        baseline.wall.as_secs_f64()
    );
    for shape in Shape::ALL {
        println!("{}", shape.title());
        let full = shape.full_size(quick);
        let mut rows: Vec<(usize, Measured)> = Vec::new();
        for size in [full / 4, full / 2, full] {
            let (_, _, tasks) = shape.case(size, concurrency);
            let measured = measure_case(&program, &dir, shape, size, concurrency, keep)?;
            let above = measured.peak_kib.saturating_sub(baseline.peak_kib);
            let size = if shape.unit() == "tasks" {
                format!("{size} tasks")
            } else {
                format!("{size} {} ({tasks} tasks)", shape.unit())
            };
            println!(
                "  {size:<26} {:>8.3} s {:>6.0} tasks/s {:>6.0} µs/task · keel's CPU {:>7.3} s, {:>5.0} µs/task · peak {:>10}, {:>6.1} KiB/task above the baseline",
                measured.wall.as_secs_f64(),
                tasks as f64 / measured.wall.as_secs_f64(),
                measured.wall.as_secs_f64() * 1e6 / tasks as f64,
                measured.cpu.as_secs_f64(),
                measured.cpu.as_secs_f64() * 1e6 / tasks as f64,
                mib(measured.peak_kib),
                above as f64 / tasks as f64,
            );
            rows.push((tasks, measured));
        }
        let (small_tasks, small) = &rows[0];
        let (large_tasks, large) = &rows[rows.len() - 1];
        let per_task =
            |large: f64, small: f64| (large / *large_tasks as f64) / (small / *small_tasks as f64);
        let small_above = small.peak_kib.saturating_sub(baseline.peak_kib);
        let large_above = large.peak_kib.saturating_sub(baseline.peak_kib);
        // Memory growth is only meaningful once the smaller case holds a measurable amount.
        let memory = if small_above >= 1024 {
            format!("×{:.2}", per_task(large_above as f64, small_above as f64))
        } else {
            "not compared (under 1 MiB above the baseline)".into()
        };
        println!(
            "  growth per task, {large_tasks} vs {small_tasks} tasks (×1 linear, ×{:.0} quadratic): wall ×{:.2} · keel's CPU ×{:.2} · memory above the baseline {memory}",
            *large_tasks as f64 / *small_tasks as f64,
            per_task(large.wall.as_secs_f64(), small.wall.as_secs_f64()),
            per_task(large.cpu.as_secs_f64(), small.cpu.as_secs_f64()),
        );
    }
    Ok(())
}
