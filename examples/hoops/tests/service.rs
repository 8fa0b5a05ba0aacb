//! `hoops serve` as a process: the processors behind HTTP, over one keep-alive connection.
//! The whole pipeline through the service must leave the warehouse exactly as the commands do;
//! not-ready, transient and bad requests get the statuses Keel's HTTP tasks map; the token is
//! required when set.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::time::Duration;

use hoops::faults::Faults;
use hoops::http::{Client, Response};
use serde_json::{Value, json};

const TOKEN: &str = "svc-0a1b2c3d4e5f";

/// A `hoops serve` child on a free port, killed when dropped.
struct Served {
    child: Child,
    url: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(env: &common::Env, token: Option<&str>) -> Served {
    let mut command = env.command(&["serve", "--addr", "127.0.0.1:0", "--exit-on-eof"]);
    command.stdin(Stdio::piped()).stderr(Stdio::inherit());
    match token {
        Some(token) => command.env("HOOPS_SERVICE_TOKEN", token),
        None => command.env_remove("HOOPS_SERVICE_TOKEN"),
    };
    let mut child = command.spawn().expect("hoops serve starts");
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    let addr = first
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("hoops serve said {first:?}"))
        .to_string();
    Served {
        child,
        url: format!("http://{addr}"),
    }
}

fn client(served: &Served) -> Client {
    Client::new(&served.url, Duration::from_secs(30)).unwrap()
}

fn post(client: &mut Client, task: &str, body: &str, token: Option<&str>) -> Response {
    let bearer = token.map(|token| format!("Bearer {token}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(bearer) = &bearer {
        headers.push(("Authorization", bearer));
    }
    client
        .send(
            "POST",
            &format!("/process/{task}"),
            &headers,
            body.as_bytes(),
        )
        .unwrap()
}

fn process(client: &mut Client, task: &str, date: &str) -> Response {
    post(
        client,
        task,
        &json!({"date": date, "attempt": 1}).to_string(),
        Some(TOKEN),
    )
}

fn body(response: &Response) -> Value {
    response.json_body().unwrap()
}

#[test]
fn the_pipeline_through_the_service_matches_the_commands_on_one_connection() {
    let date = "2026-10-21";
    let by_command = common::Env::new("");
    by_command.pipeline_ok(date);
    let by_service = common::Env::new("");
    let served = serve(&by_service, Some(TOKEN));
    let mut client = client(&served);
    for level in common::LEVELS {
        for task in *level {
            let response = process(&mut client, task, date);
            let result = body(&response);
            assert_eq!(response.status, 200, "{task}: {result}");
            assert!(result["rows"].is_u64(), "{task}: {result}");
            assert!(result["message"].is_string(), "{task}: {result}");
            assert!(result.get("outcome").is_none(), "{task}: {result}");
        }
    }
    // Grading reports what it graded as metrics, as in its KEEL_RESULT file.
    let grading = body(&process(&mut client, "grading", date));
    assert!(grading["metrics"]["graded"].is_u64(), "{grading}");
    assert_eq!(by_service.row_counts(), by_command.row_counts());
    assert!(
        by_service
            .export_dir()
            .join(format!("picks-{date}.json"))
            .exists()
    );

    let stats = body(&client.get("/stats").unwrap());
    assert_eq!(
        stats["requests"]["200"],
        json!(common::LEVELS.iter().map(|l| l.len()).sum::<usize>() + 1),
        "{stats}"
    );
    // Keep-alive: every request went over the one connection the client opened.
    assert_eq!(stats["connections"], 1, "{stats}");
    assert_eq!(client.connects, 1);
}

#[test]
fn a_day_without_games_is_no_data_and_late_or_failing_data_is_not_a_success() {
    let env = common::Env::new("no_games=2026-10-22,late_props=100");
    let served = serve(&env, Some(TOKEN));
    let mut client = client(&served);

    let response = process(&mut client, "scrape_schedule", "2026-10-22");
    assert_eq!(response.status, 200);
    assert_eq!(
        body(&response)["outcome"],
        "no_data",
        "{:?}",
        body(&response)
    );

    // Props not posted yet: not ready, with a Retry-After for the caller.
    let response = process(&mut client, "scrape_props", "2026-10-21");
    assert_eq!(response.status, 503, "{:?}", body(&response));
    assert_eq!(response.header("retry-after"), Some("1"));
    assert_eq!(body(&response)["error"], "not_ready");

    // The feed failing is transient: 500, which Keel retries.
    env.feed.set_faults(Faults::parse("500=1").unwrap());
    let response = process(&mut client, "scrape_schedule", "2026-10-21");
    assert_eq!(response.status, 500, "{:?}", body(&response));
    assert_eq!(body(&response)["error"], "transient");
    assert!(
        body(&response)["message"].as_str().unwrap().contains("500"),
        "{:?}",
        body(&response)
    );
    env.feed.set_faults(Faults::none());
    let response = process(&mut client, "scrape_schedule", "2026-10-21");
    assert_eq!(response.status, 200, "{:?}", body(&response));
}

#[test]
fn bad_requests_get_a_json_error_that_says_what_to_send() {
    let env = common::Env::new("");
    let served = serve(&env, Some(TOKEN));
    let mut client = client(&served);
    let cases = [
        ("load_props", "{not json", 400, "bad_json"),
        ("load_props", r#"{"day": "2026-10-21"}"#, 422, "bad_date"),
        ("load_props", r#"{"date": 20261021}"#, 422, "bad_date"),
        ("load_props", r#"{"date": "2026-02-30"}"#, 422, "bad_date"),
        (
            "load_prop",
            r#"{"date": "2026-10-21"}"#,
            422,
            "unknown_task",
        ),
    ];
    for (task, request, status, error) in cases {
        let response = post(&mut client, task, request, Some(TOKEN));
        let answer = body(&response);
        assert_eq!(response.status, status, "{task} {request}: {answer}");
        assert_eq!(answer["error"], error, "{task} {request}: {answer}");
        assert!(
            !answer["message"].as_str().unwrap_or_default().is_empty(),
            "{answer}"
        );
    }
    let response = client.get("/process/load_props").unwrap();
    assert_eq!(response.status, 405);
    assert_eq!(response.header("allow"), Some("POST"));
    assert_eq!(client.get("/nowhere").unwrap().status, 404);
    // None of them closed the connection.
    assert_eq!(client.connects, 1);
}

#[test]
fn the_token_is_required_when_set_and_the_health_probe_is_open() {
    let env = common::Env::new("");
    let served = serve(&env, Some(TOKEN));
    let mut client = client(&served);
    let request = json!({"date": "2026-10-21"}).to_string();
    for token in [None, Some("svc-wrong"), Some("svc-0a1b2c3d4e5f0")] {
        let response = post(&mut client, "scrape_schedule", &request, token);
        assert_eq!(response.status, 401, "token {token:?}");
        assert_eq!(response.header("www-authenticate"), Some("Bearer"));
        let answer = body(&response);
        assert!(
            answer["message"]
                .as_str()
                .unwrap()
                .contains("HOOPS_SERVICE_TOKEN"),
            "{answer}"
        );
        assert!(!answer.to_string().contains(TOKEN), "{answer}");
    }
    let ready = client.get("/ready").unwrap();
    assert_eq!(ready.status, 200);
    assert_eq!(body(&ready), json!({"ready": true}));
    assert_eq!(
        post(&mut client, "scrape_schedule", &request, Some(TOKEN)).status,
        200
    );

    // Without HOOPS_SERVICE_TOKEN the service asks for none.
    let open = serve(&env, None);
    let mut client = Client::new(&open.url, Duration::from_secs(30)).unwrap();
    assert_eq!(
        post(&mut client, "scrape_schedule", &request, None).status,
        200
    );
}
