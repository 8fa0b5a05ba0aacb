//! `http = { … }`: HTTP tasks read into their spec, and every mistake named where it is,
//! without quoting a credential.

use std::time::Duration;

use insta::assert_snapshot;
use keel_model::{HttpAuth, HttpBody, Outcome, StatusMatch};

use crate::{HEADER, errors_of};

fn with_task(task: &str) -> String {
    format!("{HEADER}\n[tasks.call]\nphase = \"scrape\"\n{task}\n")
}

#[test]
fn an_http_task_is_read_with_its_defaults() {
    let source = with_task(
        r#"http = { url = "https://svc.internal/process/{task}", json = { date = "{date}", n = 2, on = true, list = ["{task}", 1.5] }, headers = { X-Team = "data" }, query = { day = "{date}" }, auth = { bearer_env = "SVC_TOKEN" }, on_status = { "404" = "no_data", "5xx" = "failed_permanent" } }"#,
    );
    let spec = keel_config::parse(&source, "keel.toml").unwrap();
    let task = &spec.tasks[0];
    assert!(task.command.is_empty());
    let http = task.http.as_ref().expect("an HTTP task");
    assert_eq!(http.url, "https://svc.internal/process/{task}");
    assert_eq!(http.method, "POST", "a body makes it a POST");
    assert_eq!(
        http.body,
        HttpBody::Json(serde_json::json!({
            "date": "{date}", "n": 2, "on": true, "list": ["{task}", 1.5]
        }))
    );
    assert_eq!(http.headers["X-Team"], "data");
    assert_eq!(http.query["day"], "{date}");
    assert_eq!(http.auth, Some(HttpAuth::BearerEnv("SVC_TOKEN".into())));
    assert_eq!(
        http.on_status,
        vec![
            (StatusMatch::Code(404), Outcome::NoData),
            (StatusMatch::Class(5), Outcome::FailedPermanent)
        ]
    );
    assert_eq!(http.connect_timeout, Duration::from_secs(10));

    let source = with_task(
        r#"http = { url = "http://127.0.0.1:8089/ready", auth = { token_command = ["print-token"], token_ttl = "50m" } }"#,
    );
    let spec = keel_config::parse(&source, "keel.toml").unwrap();
    let http = spec.tasks[0].http.as_ref().unwrap();
    assert_eq!(http.method, "GET", "no body: a GET");
    assert_eq!(
        http.auth,
        Some(HttpAuth::TokenCommand {
            command: vec!["print-token".into()],
            ttl: Duration::from_secs(50 * 60)
        })
    );
    // A command task's version does not change because HTTP tasks exist.
    let plain = keel_config::parse(&with_task(r#"command = ["true"]"#), "keel.toml").unwrap();
    assert!(
        !serde_json::to_string(&plain.tasks[0])
            .unwrap()
            .contains("http")
    );
}

#[test]
fn http_task_errors_name_the_field_and_what_to_write() {
    assert_snapshot!(errors_of(&with_task(
        r#"command = ["true"]
http = { url = "ftp://svc/x", method = "FETCH", headers = { Authorization = "Bearer abc", "bad name" = "x" }, on_status = { "6xx" = "no_data", "404" = "exploded" } }"#
    )), @r#"
    invalid http of task "call" (keel.toml:6:8): the task has both a command and http; an HTTP task sends its request instead of running a command, so keep one
    invalid http.url of task "call" (keel.toml:9:16): write an http:// or https:// URL such as "http://127.0.0.1:8080/process"
    invalid http.method of task "call" (keel.toml:9:40): "FETCH" is not a method Keel sends; use one of GET, POST, PUT, PATCH, DELETE, HEAD
    invalid http.headers of task "call" (keel.toml:9:59): Keel sets the "Authorization" header itself; remove it (credentials go in auth = { … })
    invalid http.headers of task "call" (keel.toml:9:104): "bad name" is not a header name; use letters, digits and dashes, as in "X-Request-Source"
    invalid http.on_status of task "call" (keel.toml:9:133): "6xx" is not a status; write a code such as "404" or a class such as "5xx"
    invalid http.on_status of task "call" (keel.toml:9:152): "exploded" is not an outcome a status may have; use one of succeeded, no_data, not_ready, failed, failed_permanent
    "#);
}

#[test]
fn http_credentials_are_named_never_written() {
    assert_snapshot!(errors_of(&with_task(
        r#"http = { url = "https://user:hunter2@svc/x", auth = { bearer_env = "A=B" } }"#
    )), @r#"
    invalid http.url of task "call" (keel.toml:8:16): credentials do not belong in the URL; use auth = { bearer_env = "NAME" } or basic_user / basic_password_env
    "tasks.call.http.url" looks like a plaintext password in a URL ("https://user:…@") (keel.toml:8:17); keep secrets out of keel.toml: commands run without a shell, so $VAR in a command is not expanded; give the secret to Keel's environment (or an env_file kept out of the repository), which tasks inherit, and have the task read it from its environment
    invalid http.auth.bearer_env of task "call" (keel.toml:8:68): a name cannot contain "=", which separates a name from its value; name the environment variable that holds the secret, such as "ANALYTICS_TOKEN"
    "#);
    assert_snapshot!(errors_of(&with_task(
        r#"http = { url = "http://svc/x", auth = { bearer_env = "A", basic_user = "u" } }"#
    )), @r#"
    invalid http.auth of task "call" (keel.toml:8:39): it mixes kinds of credential; keep one of bearer_env, basic_user with basic_password_env, or token_command
    "#);
    assert_snapshot!(errors_of(&with_task(
        r#"http = { url = "http://svc/{day}", method = "GET", json = { a = 1 } }"#
    )), @r#"
    invalid http.method of task "call" (keel.toml:8:8): a GET request carries no body; use method = "POST" or drop the body
    unknown template "{day}" in the http url of task "call" (keel.toml:8:28); valid templates are {date}, {partition}, {run_id}, {task}, {attempt}, {pass} and {param.NAME}; write "{{" or "}}" for a literal brace
    "#);
    assert_snapshot!(errors_of(&with_task(r#"http = { method = "GET" }"#)), @r#"
    missing field "url" in [tasks.call.http] (keel.toml:8:1); add url = ...
    "#);
}
