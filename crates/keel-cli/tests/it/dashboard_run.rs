//! The dashboard's run and attempt pages, end to end: a real `keel serve` runs a pipeline where
//! one task fails once then succeeds, one fails for good and is waived by its phase's gate, and
//! one waits for its sensor and then runs until the test lets it end; the pages are read over HTTP and checked for what they
//! say, not for how they look.

use serde_json::json;

use crate::api::{Reply, Served, TOKEN, open_stream, run_id_of, wait_for};
use crate::support::write_pipeline;

const PIPELINE: &str = r#"[pipeline]
name = "ops"
timezone = "UTC"
partition = "date"

[defaults]
timeout = "2m"
retries = { attempts = 3, initial = "10ms", max = "50ms" }

[phases.fetch]
gate = { required = ["steady"], min = "50%", grace = "0s" }

[phases.use]
after = ["fetch"]

[tasks.steady]
phase = "fetch"
command = ["sh", "-c", "echo steady-begins; seq 1 40000; echo steady-ends"]

[tasks.flaky]
phase = "fetch"
command = ["sh", "-c", "if [ -f flaked ]; then echo flaky-recovered; else touch flaked; echo flaky-failing; exit 1; fi"]

[tasks.broken]
phase = "fetch"
command = ["sh", "-c", "echo broken-for-good; exit 65"]

[tasks.report]
phase = "use"
wait_for = { command = ["sh", "-c", "if [ -f polled ]; then exit 0; fi; touch polled; exit 75"], every = "50ms" }
command = ["sh", "-c", "echo report-started; while [ -f slow ]; do sleep 0.05; done; echo report-done"]
"#;

/// An HTML page's status and body, checked to be HTML.
fn page(served: &Served, path: &str, status: u16) -> String {
    let reply: Reply = served.get(path);
    let body = reply.text();
    assert_eq!(reply.status, status, "{path}: {body}");
    assert_eq!(
        reply.header("content-type"),
        Some("text/html; charset=utf-8"),
        "{path}"
    );
    body
}

/// The value of the first `name="..."` attribute in `html`.
fn attribute<'a>(html: &'a str, name: &str) -> Option<&'a str> {
    let start = html.find(&format!("{name}=\""))? + name.len() + 2;
    let end = html[start..].find('"')?;
    Some(&html[start..start + end])
}

/// The href of the paging link `rel`.
fn paging_link(html: &str, rel: &str) -> Option<String> {
    let at = html.find(&format!("rel=\"{rel}\""))?;
    let start = html[..at].rfind("href=\"")? + "href=\"".len();
    let end = start + html[start..].find('"')?;
    Some(html[start..end].to_string())
}

/// The text of `<pre id="log" ...>...</pre>`, unescaped as far as the tests need.
fn log_text(html: &str) -> String {
    let open = html.find("<pre id=\"log\"").expect("a log");
    let start = open + html[open..].find('>').unwrap() + 1;
    let end = start + html[start..].find("</pre>").unwrap();
    html[start..end].replace("&#10;", "\n")
}

#[test]
fn dashboard_run_pages_show_the_run_its_timeline_gates_tasks_events_and_logs() {
    let project = tempfile::tempdir().unwrap();
    let dir = project.path();
    write_pipeline(dir, PIPELINE);
    std::fs::write(dir.join("slow"), "").unwrap();
    let served = Served::start(dir, Some(TOKEN));
    let id = run_id_of(&served.post(
        "/api/pipelines/ops/runs",
        json!({ "partition": "2026-01-18" }),
    ));
    let run_path = format!("/ui/ops/runs/{id}");

    // While report runs: the run page is live and offers cancel, not accept; the attempt page
    // follows the log from where the text it shows ends.
    wait_for("report to run", || {
        served.get(&format!("/api/pipelines/ops/runs/{id}")).json()["tasks"][3]["state"]
            == "running"
    });
    let report_api = format!("/api/pipelines/ops/runs/{id}/tasks/report/attempts/1/log");
    wait_for("report's first line", || {
        served.get(&report_api).text() == "report-started\n"
    });
    let running = page(&served, &run_path, 200);
    assert!(running.contains(r#"data-live-page="on""#));
    assert!(running.contains(r#"<span id="run-state" class="pill running">running</span>"#));
    assert!(running.contains(&format!(
        r#"<button data-action="/api/pipelines/ops/runs/{id}/cancel">Cancel</button>"#
    )));
    assert!(!running.contains(">Accept</button>"));
    assert!(running.contains(r#"<rect class="bar running" data-task="report" data-attempt="1""#));
    let report_page = page(&served, &format!("{run_path}/tasks/report/attempts/1"), 200);
    assert_eq!(
        attribute(&report_page, "data-follow"),
        Some(report_api.as_str())
    );
    assert_eq!(attribute(&report_page, "data-from"), Some("15"));
    assert!(report_page.contains(r#"<span id="follow-status"></span>"#));
    assert_eq!(log_text(&report_page), "report-started\n");
    // What keel.js asks for: the log past byte 15, followed until the attempt ends.
    let (mut followed, _) = open_stream(
        &served.addr,
        &format!("{report_api}?follow=true&from=15"),
        &[],
    );
    std::fs::remove_file(dir.join("slow")).unwrap();
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut followed, &mut rest).unwrap();
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.contains("report-done\n"), "{rest:?}");
    assert!(!rest.contains("report-started"), "{rest:?}");
    served.wait_for_state(id, "degraded");

    // The finished run.
    let run = page(&served, &run_path, 200);
    assert!(run.contains(r#"data-live-page="off""#));
    assert!(run.contains(&format!(
        "<h1>run {id} <span class=\"sub\">2026-01-18</span></h1>"
    )));
    assert!(run.contains(r#"<span id="run-state" class="pill degraded">degraded</span>"#));
    for part in ["run-header", "gantt", "gates", "tasks", "events"] {
        let marked = format!(r#"id="{part}" data-live"#);
        assert!(run.contains(&marked), "{part} is not live");
    }
    // One bar per attempt, each linking to its page, coloured by how it ended.
    assert_eq!(run.matches("<rect class=\"bar").count(), 5, "{run}");
    for (class, task, attempt) in [
        ("succeeded", "steady", 1),
        ("failed", "flaky", 1),
        ("succeeded", "flaky", 2),
        ("failed", "broken", 1),
        ("succeeded", "report", 1),
    ] {
        let bar = format!(
            r#"<a href="/ui/ops/runs/{id}/tasks/{task}/attempts/{attempt}"><rect class="bar {class}" data-task="{task}" data-attempt="{attempt}""#
        );
        assert!(run.contains(&bar), "no {bar} in {run}");
    }
    assert!(run.contains(r#"<text class="phase-label" x="4""#));
    assert!(run.contains(r#"class="gate-line gate-opened""#));
    assert!(run.contains(r#"<text class="tick-label""#));
    // report's sensor found its data not ready once before report's first attempt.
    let report_row = &run[run.find(">report<title>").unwrap()..];
    let report_row = &report_row[..report_row.find("<rect").unwrap()];
    assert!(
        report_row.contains(r#"<circle class="sensor-poll""#),
        "{report_row}"
    );
    assert!(
        report_row.contains(r#"<line class="sensor-wait""#),
        "{report_row}"
    );
    assert!(run.contains(r#"width="100%""#));
    // The gate opened without broken, which the tasks table marks waived.
    assert!(run.contains(r#"<tr data-phase="fetch">"#));
    assert!(run.contains(r##"<td class="waived"><a href="#task-broken">broken</a> </td>"##));
    assert!(run.contains("phase fetch: downstream proceeds without broken"));
    assert!(run.contains("<li>the gate of phase fetch opened without broken</li>"));
    let broken_row = &run[run.find(r#"<tr id="task-broken">"#).unwrap()..];
    let broken_row = &broken_row[..broken_row.find("</tr>").unwrap()];
    assert!(broken_row.contains(r#"<span class="pill degraded">waived</span>"#));
    let flaky_row = &run[run.find(r#"<tr id="task-flaky">"#).unwrap()..];
    let flaky_row = &flaky_row[..flaky_row.find("</tr>").unwrap()];
    assert!(flaky_row.contains(&format!(
        r##"<a class="attempt-link" href="/ui/ops/runs/{id}/tasks/flaky/attempts/1">#1</a> <a class="attempt-link" href="/ui/ops/runs/{id}/tasks/flaky/attempts/2">#2</a>"##
    )));
    for kind in [
        "run_created",
        "attempt_claimed",
        "attempt_finished",
        "retry_scheduled",
        "gate_opened",
        "sensor_polled",
        "run_state",
    ] {
        assert!(
            run.contains(&format!(r#"data-kind="{kind}""#)),
            "no {kind} event"
        );
    }
    // Finished without succeeding: accept, retry, no cancel.
    assert!(run.contains(&format!(
        r#"<button data-action="/api/pipelines/ops/runs/{id}/accept" data-body='{{"by":"dashboard"}}'>Accept</button>"#
    )));
    assert!(run.contains(&format!(
        r#"<button data-action="/api/pipelines/ops/runs/{id}/retry" data-body="{{}}">Retry failed tasks</button>"#
    )));
    assert!(run.contains(&format!(
        r#"<button data-action="/api/pipelines/ops/runs/{id}/retry" data-tasks-from="retry-tasks">Retry tasks</button>"#
    )));
    assert!(run.contains(r#"<input id="api-token" type="password" autocomplete="off">"#));
    assert!(!run.contains(">Cancel</button>"));

    // The failed attempt's page: what it was and what it wrote.
    let flaky = page(&served, &format!("{run_path}/tasks/flaky/attempts/1"), 200);
    assert!(flaky.contains(r#"<dl class="facts" id="attempt""#));
    assert!(flaky.contains(r#"<dt>exit code</dt><dd>1</dd>"#));
    assert!(flaky.contains(r#"<span class="pill failed">failed</span>"#));
    assert!(flaky.contains(&format!(
        r##"<a class="run-link-back" href="/ui/ops/runs/{id}#task-flaky">"##
    )));
    assert_eq!(log_text(&flaky), "flaky-failing\n");
    assert!(attribute(&flaky, "data-follow").is_none());
    let recovered = page(&served, &format!("{run_path}/tasks/flaky/attempts/2"), 200);
    assert_eq!(log_text(&recovered), "flaky-recovered\n");

    // A log larger than a page: the last page by default, then earlier ones by offset.
    let whole: String = std::iter::once("steady-begins\n".to_string())
        .chain((1..=40000).map(|n| format!("{n}\n")))
        .chain(std::iter::once("steady-ends\n".to_string()))
        .collect();
    let steady_path = format!("{run_path}/tasks/steady/attempts/1");
    let last = page(&served, &steady_path, 200);
    let last_text = log_text(&last);
    assert!(whole.ends_with(&last_text));
    assert_eq!(last_text.len(), 64 * 1024);
    assert!(!last.contains(r#"rel="next""#));
    let earlier = paging_link(&last, "prev").unwrap();
    let offset = whole.len() - 2 * 64 * 1024;
    assert_eq!(earlier, format!("{steady_path}?offset={offset}"));
    let middle = page(&served, &earlier, 200);
    assert_eq!(log_text(&middle), whole[offset..offset + 64 * 1024]);
    assert!(middle.contains(&format!(
        r#"<a href="{steady_path}?offset={}" rel="next">"#,
        offset + 64 * 1024
    )));
    let first = page(&served, &format!("{steady_path}?offset=0"), 200);
    assert!(log_text(&first).starts_with("steady-begins\n1\n2\n"));
    assert!(!first.contains(r#"rel="prev""#));

    // Bad input gets a page that says what is wrong, never a panic.
    let past = page(&served, &format!("{steady_path}?offset=99999999"), 400);
    assert!(
        past.contains("offset 99999999 is past the end of the log"),
        "{past}"
    );
    let cases = [
        (format!("/ui/ops/runs/{}", id + 100), 404, "no run"),
        ("/ui/nope/runs/1".to_string(), 404, "no pipeline"),
        ("/ui/ops/runs/abc".to_string(), 400, "bad path"),
        (
            format!("{run_path}/tasks/nosuch/attempts/1"),
            404,
            "unknown task",
        ),
        (
            format!("{run_path}/tasks/flaky/attempts/0"),
            404,
            "no attempt 0",
        ),
        (
            format!("{run_path}/tasks/flaky/attempts/9"),
            404,
            "has no attempt 9",
        ),
        (
            format!("{run_path}/tasks/flaky/attempts/1?offset=x"),
            400,
            "bad query",
        ),
    ];
    for (path, status, says) in cases {
        let body = page(&served, &path, status);
        assert!(body.contains(says), "{path}: {body}");
        assert!(body.contains(r#"<p class="hint">"#), "{path}: {body}");
    }
}
