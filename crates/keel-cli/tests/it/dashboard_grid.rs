//! The dashboard's grid, end to end: real runs recorded by `keel run`, then `keel serve`
//! answering `/` and `/ui/PIPELINE` over HTTP. The grid shows each partition's run with every
//! task's state, a missing date as a gap, a pass's run on the partition, paging, and an HTML
//! error page for bad input.

use std::path::Path;
use std::process::Command;

use crate::api::request;
use crate::support::{keel_path, serve_on_free_port, write_pipeline};

/// `second` fails permanently on 2026-03-03; the pass `again` runs `second` once more.
const PIPELINE: &str = r#"[pipeline]
name = "grid"
timezone = "UTC"
partition = "date"

[defaults]
timeout = "1m"
retries = { attempts = 1 }

[phases.one]

[phases.two]
after = ["one"]

[tasks.first]
phase = "one"
command = ["sh", "-c", "echo first"]

[tasks.second]
phase = "two"
command = ["sh", "-c", "if [ \"$KEEL_PARTITION\" = 2026-03-03 ]; then exit 65; fi; echo second"]

[passes.again]
tasks = ["second"]
"#;

fn keel_run(pipeline: &Path, args: &[&str]) {
    let output = Command::new(keel_path())
        .arg("run")
        .arg(pipeline)
        .args(args)
        .output()
        .unwrap();
    assert!(
        output.status.code().is_some_and(|code| code <= 1),
        "keel run {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The `<tr>` of `partition` in the grid's HTML.
fn row<'a>(page: &'a str, partition: &str) -> &'a str {
    let start = page
        .find(&format!(r#"<tr data-partition="{partition}">"#))
        .unwrap_or_else(|| panic!("no row of {partition} in:\n{page}"));
    let rest = &page[start..];
    &rest[..rest.find("</tr>").expect("the row ends")]
}

#[test]
fn the_grid_shows_every_partition_and_task_gaps_passes_and_paging() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = write_pipeline(dir.path(), PIPELINE);
    keel_run(&pipeline, &["--from", "2026-03-01", "--to", "2026-03-03"]);
    keel_run(&pipeline, &["--partition", "2026-03-05"]);
    keel_run(&pipeline, &["--partition", "2026-03-05", "--pass", "again"]);
    let (_served, addr) = serve_on_free_port(&[&pipeline], &dir.path().join("serve.log"), &[]);

    let root = request(&addr, "GET", "/", &[], None);
    assert_eq!(root.status, 303);
    assert_eq!(root.header("location"), Some("/ui/grid"));

    let grid = request(&addr, "GET", "/ui/grid", &[], None);
    assert_eq!(grid.status, 200);
    assert_eq!(
        grid.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let page = grid.text();
    // Newest first, from the newest partition back to the first that ran; the missing date
    // is a gap.
    let order: Vec<usize> = [
        "2026-03-05",
        "2026-03-04",
        "2026-03-03",
        "2026-03-02",
        "2026-03-01",
    ]
    .iter()
    .map(|date| page.find(&format!(r#"data-partition="{date}""#)).unwrap())
    .collect();
    assert!(order.windows(2).all(|pair| pair[0] < pair[1]), "{page}");
    assert!(!page.contains(r#"data-partition="2026-02-28""#), "{page}");
    assert!(
        row(&page, "2026-03-04").contains(r#"class="gap""#),
        "{page}"
    );
    // Phases head their tasks, in the file's order.
    let one = page.find(r#"class="phase">one<"#).expect("phase one");
    let two = page.find(r#"class="phase">two<"#).expect("phase two");
    assert!(one < two);
    assert!(page.contains(r#"href="/ui/grid/tasks/second""#));
    // Each cell says how the task stands and links to its last attempt.
    let healthy = row(&page, "2026-03-02");
    assert_eq!(healthy.matches(r#"class="cell succeeded""#).count(), 2);
    assert!(healthy.contains("/tasks/second/attempts/1"), "{healthy}");
    let broken = row(&page, "2026-03-03");
    assert!(broken.contains(r#"class="cell succeeded""#), "{broken}");
    assert!(broken.contains(r#"class="cell failed""#), "{broken}");
    assert!(
        broken.contains("second · 2026-03-03: failed_permanent"),
        "{broken}"
    );
    assert!(broken.contains(r#"class="run-link failed""#), "{broken}");
    // The pass ran `second` again on 2026-03-05: listed on the row, marked in the cell.
    let passed = row(&page, "2026-03-05");
    assert!(passed.contains("again #"), "{passed}");
    assert!(
        passed.contains(r#"<i class="mark succeeded" title="again: succeeded">"#),
        "{passed}"
    );
    assert!(
        page.contains(r#"<span class="pill failed">1 failed</span>"#),
        "{page}"
    );

    // A window of two dates ending on 2026-03-02 pages both ways.
    let window = request(&addr, "GET", "/ui/grid?to=2026-03-02&days=2", &[], None).text();
    assert!(window.contains(r#"data-partition="2026-03-02""#));
    assert!(window.contains(r#"data-partition="2026-03-01""#));
    assert!(!window.contains(r#"data-partition="2026-03-03""#));
    assert!(
        window.contains("/ui/grid?to=2026-02-28&#38;days=2"),
        "{window}"
    );
    assert!(
        window.contains("/ui/grid?to=2026-03-04&#38;days=2"),
        "{window}"
    );

    // Bad input gets an HTML page that says what is wrong and what to do.
    let bad = request(&addr, "GET", "/ui/grid?days=0", &[], None);
    assert_eq!(bad.status, 400);
    assert!(
        bad.text().contains("days 0 is out of range"),
        "{}",
        bad.text()
    );
    let bad = request(&addr, "GET", "/ui/grid?to=yesterdayish", &[], None);
    assert_eq!(bad.status, 400);
    assert!(bad.text().contains("yesterdayish"), "{}", bad.text());
    let bad = request(&addr, "GET", "/ui/grid?colour=red", &[], None);
    assert_eq!(bad.status, 400);
    let unknown = request(&addr, "GET", "/ui/gird", &[], None);
    assert_eq!(unknown.status, 404);
    assert!(
        unknown.text().contains(r#"did you mean &#34;grid&#34;?"#),
        "{}",
        unknown.text()
    );
    let nowhere = request(&addr, "GET", "/ui/grid/no/such/page", &[], None);
    assert_eq!(nowhere.status, 404);
    assert!(nowhere.text().contains("<!doctype html>"));

    // The stylesheet and the script are served from the binary.
    let css = request(&addr, "GET", "/ui/static/keel.css", &[], None);
    assert_eq!(css.status, 200);
    assert!(css.text().contains("prefers-color-scheme: dark"));
    let script = request(&addr, "GET", "/ui/static/keel.js", &[], None);
    assert_eq!(script.status, 200);
    assert!(script.text().contains("data-live"));
}

/// `games` lists three items and `scores` fans out over them, `0023` failing for good;
/// `published` fails once past its freeze, so Keel does not retry it.
const FANNED_OUT: &str = r#"[pipeline]
name = "fan"
timezone = "UTC"
partition = "date"

[defaults]
timeout = "1m"
retries = { attempts = 2, initial = "0s" }

[phases.scrape]

[tasks.games]
phase = "scrape"
command = ["sh", "-c", "echo '{{\"items\": [\"0021\", \"0022\", \"0023\"]}}' > \"$KEEL_RESULT\""]

[tasks.scores]
phase = "scrape"
after = ["games"]
command = ["sh", "-c", "if [ \"$KEEL_ITEM\" = 0023 ]; then exit 65; fi"]
expand = { from = "games", min = "50%" }

[tasks.published]
phase = "scrape"
command = ["sh", "-c", "exit 1"]
freeze_after = "00:00"
"#;

#[test]
fn a_fanned_out_task_shows_its_item_counts_and_a_frozen_task_its_mark() {
    let dir = tempfile::tempdir().unwrap();
    let pipeline = write_pipeline(dir.path(), FANNED_OUT);
    keel_run(&pipeline, &["--partition", "2026-03-01"]);
    let (_served, addr) = serve_on_free_port(&[&pipeline], &dir.path().join("serve.log"), &[]);

    let page = request(&addr, "GET", "/ui/fan", &[], None).text();
    let cells = row(&page, "2026-03-01");
    assert!(
        cells.contains(r#"<small class="items">2/3</small>"#),
        "the expanded task's cell counts its items: {cells}"
    );
    assert!(cells.contains("scores · 2026-03-01: "), "{cells}");
    assert!(cells.contains("items 2/3 · 1 failed"), "{cells}");
    assert_eq!(
        cells.matches(r#"class="frozen-mark""#).count(),
        1,
        "only the frozen task is marked: {cells}"
    );
    assert!(
        !cells.contains("scores[0021]"),
        "items are no columns: {cells}"
    );

    let run = page
        .split('"')
        .find(|part| part.starts_with("/ui/fan/runs/"))
        .expect("a link to the run")
        .split('#')
        .next()
        .unwrap()
        .to_string();
    let run_page = request(&addr, "GET", &run, &[], None).text();
    assert!(
        run_page.contains(r#"<span class="items-summary">items 2/3 · 1 failed</span>"#),
        "{run_page}"
    );
    // The items are folded under their task, each with its row and attempt links.
    let folded = &run_page[run_page
        .find(r#"<tr class="items" id="items-scores">"#)
        .expect("the items' fold")..];
    assert!(
        folded.contains("<summary>3 items of scores</summary>"),
        "{folded}"
    );
    for item in ["scores[0021]", "scores[0022]", "scores[0023]"] {
        assert!(
            folded.contains(&format!(r#"<tr id="task-{item}">"#)),
            "{folded}"
        );
    }
    assert!(
        run_page.contains(r#"<span class="pill frozen""#),
        "the frozen task says so: {run_page}"
    );
}
