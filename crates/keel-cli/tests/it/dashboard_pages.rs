//! The dashboard's task history, resources and health pages, end to end: `keel run` over three
//! partitions of a pipeline whose `load` task writes rows and metrics to its result file and
//! fails on the last partition, where `call` also fails and opens the breaker of the `api`
//! resource; then `keel serve` on a free loopback port renders the pages from that state.

use std::path::Path;

use crate::api::Served;
use crate::support::{keel, write_pipeline};

const PIPELINE: &str = r#"[pipeline]
name = "dash"
timezone = "UTC"
partition = "date"

[defaults]
timeout = "1m"
retries = { attempts = 1 }

[resources.api]
rate = "50/1h"
concurrency = 3
breaker = { failures = 1, cooldown = "1s", max_open = "5s" }
retry_budget = { ratio = "20%", window = "1m", min = 3 }

[phases.main]

[tasks.load]
phase = "main"
command = ["sh", "-c", '''case {date} in
  2026-03-01) rows=120; accuracy=0.5 ;;
  2026-03-02) rows=250; accuracy=0.73 ;;
  *) printf '{{"outcome": "failed", "message": "feed missing for {date}"}}' > "$KEEL_RESULT"; exit 0 ;;
esac
printf '{{"rows": %s, "metrics": {{"accuracy": %s, "lag_s": 4}}}}' $rows $accuracy > "$KEEL_RESULT"''']

[tasks.call]
phase = "main"
uses = ["api"]
command = ["sh", "-c", "if [ {date} = 2026-03-03 ]; then echo 'api down' >&2; exit 1; fi"]
"#;

/// Runs the pipeline over 2026-03-01..03 in `dir`, then serves it.
fn ran_and_served(dir: &Path) -> Served {
    let file = write_pipeline(dir, PIPELINE);
    let output = keel()
        .current_dir(dir)
        .arg("run")
        .arg(&file)
        .args(["--from", "2026-03-01", "--to", "2026-03-03"])
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(1),
        "one partition fails: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Served::start(dir, Some("dashboard-token-0123456789"))
}

/// The page at `path`, which must be a 200 HTML page.
fn page(served: &Served, path: &str) -> String {
    let reply = served.get(path);
    assert_eq!(reply.status, 200, "{path}: {}", reply.text());
    reply.text()
}

/// The element that starts with `start` (`<svg ... id="chart-rows"`), up to its `end` tag.
fn element<'a>(html: &'a str, start: &str, end: &str) -> &'a str {
    let from = html
        .find(start)
        .unwrap_or_else(|| panic!("no {start} in {html}"));
    let to = html[from..]
        .find(end)
        .unwrap_or_else(|| panic!("{start} never ends"));
    &html[from..from + to + end.len()]
}

#[test]
fn a_task_history_charts_rows_metrics_and_durations_with_gaps_and_lists_every_partition() {
    let dir = tempfile::tempdir().unwrap();
    let served = ran_and_served(dir.path());
    let html = page(&served, "/ui/dash/tasks/load");

    let rows = element(&html, r#"<svg class="chart" id="chart-rows""#, "</svg>");
    assert!(
        rows.contains("<title>2026-03-01: 120 rows (succeeded)</title>"),
        "{rows}"
    );
    assert!(
        rows.contains("<title>2026-03-02: 250 rows (succeeded)</title>"),
        "{rows}"
    );
    assert!(
        !rows.contains("<title>2026-03-03"),
        "the failed partition has no rows: a gap, not a zero: {rows}"
    );
    assert!(
        rows.contains(r#"text-anchor="start">2026-03-01</text>"#)
            && rows.contains(r#"text-anchor="end">2026-03-03</text>"#),
        "the axis runs from the oldest partition to the newest: {rows}"
    );
    assert_eq!(rows.matches("<circle").count(), 2, "{rows}");
    for tick in [">0</text>", ">100</text>", ">200</text>", ">300</text>"] {
        assert!(rows.contains(tick), "tick {tick} in {rows}");
    }
    assert!(
        rows.contains(r#"class="point succeeded""#) && rows.contains("/tasks/load/attempts/1\""),
        "points are coloured by outcome and link to their attempt: {rows}"
    );

    let accuracy = element(
        &html,
        r#"<svg class="chart" id="chart-metric-accuracy""#,
        "</svg>",
    );
    assert!(
        accuracy.contains("<title>2026-03-01: 0.5 (succeeded)</title>"),
        "{accuracy}"
    );
    assert!(
        accuracy.contains("<title>2026-03-02: 0.73 (succeeded)</title>"),
        "{accuracy}"
    );
    assert!(
        accuracy.contains(">0.5</text>") && accuracy.contains(">0.8</text>"),
        "{accuracy}"
    );
    assert!(html.contains(r#"id="chart-metric-lag_s""#));

    let duration = element(&html, r#"<svg class="chart" id="chart-duration""#, "</svg>");
    assert_eq!(duration.matches("<circle").count(), 3, "{duration}");
    assert!(duration.contains(r#"class="point failed""#), "{duration}");
    assert!(duration.contains("<title>2026-03-03: "), "{duration}");
    assert!(
        duration.contains(" ms (failed)</title>") || duration.contains(" s (failed)</title>"),
        "{duration}"
    );
    // Oldest left: the first point drawn is the oldest partition.
    let first = duration.find("<title>2026-03-01").unwrap();
    let last = duration.find("<title>2026-03-03").unwrap();
    assert!(first < last, "{duration}");

    let history = element(&html, r#"<div class="table-wrap" id="history""#, "</table>");
    let newest = element(history, r#"<tr data-partition="2026-03-03">"#, "</tr>");
    assert!(newest.contains("failed"), "{newest}");
    assert!(newest.contains("feed missing for 2026-03-03"), "{newest}");
    assert!(newest.contains(r#"href="/ui/dash/runs/"#), "{newest}");
    let oldest = element(history, r#"<tr data-partition="2026-03-01">"#, "</tr>");
    assert!(oldest.contains(">120<"), "{oldest}");
    assert!(oldest.contains("accuracy 0.5, lag_s 4"), "{oldest}");
    assert!(oldest.contains("succeeded"), "{oldest}");
    assert!(
        history.find("2026-03-03").unwrap() < history.find("2026-03-01").unwrap(),
        "the table is newest first"
    );
}

#[test]
fn a_task_history_refuses_an_unknown_task_and_a_bad_days_as_html_pages() {
    let dir = tempfile::tempdir().unwrap();
    let served = ran_and_served(dir.path());
    let reply = served.get("/ui/dash/tasks/lod");
    assert_eq!(reply.status, 404, "{}", reply.text());
    let text = reply.text();
    assert!(text.starts_with("<!doctype html>"), "{text}");
    assert!(text.contains("unknown task"), "{text}");
    assert!(text.contains("did you mean"), "{text}");
    let reply = served.get("/ui/dash/tasks/load?days=0");
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert!(
        reply.text().contains("days 0 is out of range"),
        "{}",
        reply.text()
    );
    let reply = served.get("/ui/dash/tasks/load?days=367");
    assert_eq!(reply.status, 400, "{}", reply.text());
    assert_eq!(
        page(&served, "/ui/dash/tasks/load?days=1")
            .matches("<circle")
            .count(),
        1
    );
}

#[test]
fn the_resources_page_counts_starts_and_shows_the_breaker_that_failures_opened() {
    let dir = tempfile::tempdir().unwrap();
    let served = ran_and_served(dir.path());
    let html = page(&served, "/ui/dash/resources");
    let section = element(
        &html,
        r#"<section class="resource panel" id="resource-api" data-live>"#,
        "</section>",
    );
    assert!(section.contains("at most 50 starts per 1h00m"), "{section}");
    assert!(
        section.contains("3 of 50 in the last 1h00m"),
        "one start of call per partition: {section}"
    );
    assert!(section.contains("0 of 3 in use"), "{section}");
    assert!(
        section.contains("opens after 1 failure in a row"),
        "{section}"
    );
    assert!(
        section.contains(">half open<") || section.contains(">open<"),
        "the breaker is not closed: {section}"
    );
    assert!(
        section.contains("retries at most 20% of the attempts over 1m00s, plus 3 always allowed"),
        "{section}"
    );
    assert!(
        section.contains(r#"<a href="/ui/dash/tasks/call">call</a>"#),
        "{section}"
    );
    assert!(
        !section.contains(">load<"),
        "load does not use api: {section}"
    );
    let transitions = element(section, r#"<table class="list transitions">"#, "</table>");
    assert!(
        transitions.contains("open: tasks using it wait"),
        "the failure's transition: {transitions}"
    );
    assert_eq!(
        transitions.matches("open: tasks using it wait").count(),
        1,
        "one failure opened it once, recorded in one run, shown once: {transitions}"
    );
}

#[test]
fn the_health_page_lists_the_failed_partition_its_task_and_the_open_breaker() {
    let dir = tempfile::tempdir().unwrap();
    let served = ran_and_served(dir.path());
    let html = page(&served, "/ui/dash/health");
    let readiness = element(
        &html,
        r#"<section class="panel" id="readiness" data-live>"#,
        "</section>",
    );
    assert!(
        readiness.contains("the pipeline file is valid"),
        "{readiness}"
    );
    assert!(readiness.contains("scheduler"), "{readiness}");

    let failures = element(
        &html,
        r#"<section class="panel" id="recent-failures" data-live>"#,
        "</section>",
    );
    let failed = element(
        failures,
        r#"<tr class="problem" data-partition="2026-03-03">"#,
        "</tr>",
    );
    assert!(failed.contains(">failed<"), "{failed}");
    assert!(failed.contains(r#"href="/ui/dash/runs/"#), "{failed}");
    assert!(
        failed.contains("task load ended failed: feed missing for 2026-03-03"),
        "why, as the API says it: {failed}"
    );
    assert!(
        failed.contains("/tasks/load/attempts/1\">load</a>"),
        "{failed}"
    );
    assert!(
        failed.contains("/tasks/call/attempts/1\">call</a>"),
        "{failed}"
    );
    assert!(
        !failures.contains("2026-03-01") && !failures.contains("2026-03-02"),
        "{failures}"
    );

    // The score and its dimensions, as `keel health` has them: one of three partitions failed.
    let score = element(
        &html,
        r#"<section class="panel" id="health-score" data-live>"#,
        "</section>",
    );
    assert!(
        score.contains("2 of 3 finished partitions succeeded without a human"),
        "{score}"
    );
    assert!(score.contains("/10"), "{score}");

    let breakers = element(
        &html,
        r#"<section class="panel" id="open-breakers" data-live>"#,
        "</section>",
    );
    assert!(
        breakers.contains(r#"/ui/dash/resources#resource-api">api</a>"#),
        "{breakers}"
    );
}
