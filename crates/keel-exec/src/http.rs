//! HTTP tasks: the attempt is one request, sent by Keel itself on a pooled client.
//!
//! There is one client per pool (a task's first resource, or the pipeline's own), kept for
//! the life of the executor, so connections are reused across attempts (keep-alive, HTTP/2
//! where the server offers it over TLS). The request runs on Keel's runtime; nothing outlives
//! Keel, so an attempt whose Keel died is found without an exit record and recorded `lost`, then
//! sent again with the same `Idempotency-Key`.
//!
//! The attempt directory holds `output.log`, made before the request is sent (so a new Keel
//! knows what kind of attempt it finds: one with a log and no lock file, see [`was_in_flight`]):
//! the request and the response, capped, with every credential replaced by `***`. Keels before
//! this one wrote `request.http` for that; it is still recognised.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_model::{Outcome, StatusMatch, status_outcome};

use crate::report::{RESULT_CAP, parse_result};
use crate::{Report, Running};

/// What earlier Keels wrote into the attempt directory before the request went out.
const REQUEST_FILE: &str = "request.http";

/// Whether the attempt directory `dir` is that of an HTTP request this process's kind of
/// executor sent: its log made before the request went out, and no supervisor's lock file
/// (a command's attempt gets its lock file before anything else). A Keel that finds one after
/// a crash cannot know whether the service answered.
pub fn was_in_flight(dir: &Path) -> bool {
    dir.join(REQUEST_FILE).exists()
        || (dir.join(crate::supervisor::OUTPUT_FILE).exists()
            && !dir.join(crate::supervisor::LOCK_FILE).exists())
}
/// Bytes of a request body and of a response body written to the attempt's log.
const LOGGED_BODY: usize = 16 * 1024;
/// The longest a token command may take.
const TOKEN_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections kept idle per host and pool when the resource sets no concurrency.
const DEFAULT_POOL: usize = 16;

/// A value that must never be shown: its `Debug` is `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// How the request authenticates, with the values already read (or why they could not be).
#[derive(Debug, Clone, PartialEq)]
pub enum Credential {
    Bearer(Secret),
    Basic {
        user: String,
        password: Secret,
    },
    /// A command that prints a bearer token, cached for `ttl`.
    TokenCommand {
        command: Vec<String>,
        ttl: Duration,
        env: Vec<(String, String)>,
    },
    /// The environment variable the pipeline names is not set: the attempt fails permanently
    /// with this message, which names the variable and never a value.
    Missing(String),
}

/// One request, its templates expanded.
#[derive(Debug, Clone)]
pub struct HttpCall {
    /// Which client (and so which connection pool) sends it: a resource's name, or empty.
    pub pool: String,
    /// Connections kept per host in that pool.
    pub pool_size: Option<usize>,
    pub method: String,
    /// The URL with the query parameters added.
    pub url: String,
    /// Headers, `Idempotency-Key` and `traceparent` included.
    pub headers: Vec<(String, String)>,
    /// The body and its content type.
    pub body: Option<(Vec<u8>, String)>,
    pub credential: Option<Credential>,
    pub on_status: Vec<(StatusMatch, Outcome)>,
    pub connect_timeout: Duration,
}

/// Tokens printed by token commands, by command, with when each was printed.
type TokenCache = HashMap<Vec<String>, (Secret, Instant)>;

/// The clients and the cached tokens, shared by every attempt of an executor.
#[derive(Clone, Default)]
pub struct HttpClients {
    clients: Arc<Mutex<HashMap<String, reqwest::Client>>>,
    tokens: Arc<tokio::sync::Mutex<TokenCache>>,
}

impl HttpClients {
    fn client(&self, call: &HttpCall) -> Result<reqwest::Client, String> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = clients.get(&call.pool) {
            return Ok(client.clone());
        }
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .user_agent(concat!("keel/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(call.connect_timeout)
            .pool_max_idle_per_host(call.pool_size.unwrap_or(DEFAULT_POOL))
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_keepalive(Duration::from_secs(60))
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::limited(5))
            .build()
            .map_err(|error| format!("cannot set up the HTTP client: {error}"))?;
        clients.insert(call.pool.clone(), client.clone());
        Ok(client)
    }

    /// Starts the request of `call` for the attempt in `dir` on the current runtime.
    pub fn launch(
        &self,
        dir: &Path,
        call: HttpCall,
        timeout: Duration,
        log_cap: u64,
    ) -> std::io::Result<Running> {
        crate::process::create_fresh_attempt_dir(dir)?;
        // Two inodes per attempt, the directory and its log: made before the request goes out,
        // the log says what kind of attempt a new Keel finds here after a crash.
        let mut log = AttemptLog::create(dir, log_cap)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            std::io::Error::other("an HTTP task needs Keel's runtime, and none is running")
        })?;
        let stop = Arc::new(tokio::sync::Notify::new());
        let clients = self.clone();
        let stopped = stop.clone();
        let task =
            runtime.spawn(async move { send(&clients, call, timeout, &mut log, &stopped).await });
        let completion = Box::pin(async move {
            task.await.unwrap_or_else(|error| {
                Report::new(
                    Outcome::Failed,
                    format!("the HTTP request's task ended without an answer: {error}"),
                )
            })
        });
        Ok(Running {
            pid: None,
            pid_later: None,
            completion,
            stop: Arc::new(move || stop.notify_one()),
        })
    }

    /// Sends a resource's health probe on the current runtime: no directory, no log.
    pub fn probe(&self, call: HttpCall, timeout: Duration) -> crate::Completion {
        let clients = self.clone();
        Box::pin(async move {
            let mut log = AttemptLog {
                file: None,
                written: 0,
                cap: 0,
            };
            let never = tokio::sync::Notify::new();
            send(&clients, call, timeout, &mut log, &never).await
        })
    }

    /// A bearer token from `command`, from the cache while it is younger than `ttl`.
    async fn token(
        &self,
        command: &[String],
        ttl: Duration,
        env: &[(String, String)],
    ) -> Result<Secret, String> {
        let mut tokens = self.tokens.lock().await;
        if let Some((token, fetched)) = tokens.get(command)
            && fetched.elapsed() < ttl
        {
            return Ok(token.clone());
        }
        let program = command.first().cloned().unwrap_or_default();
        let mut process = tokio::process::Command::new(&program);
        process
            .args(&command[1..])
            .envs(env.iter().cloned())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let output = match tokio::time::timeout(TOKEN_COMMAND_TIMEOUT, process.output()).await {
            Err(_) => {
                return Err(format!(
                    "the token command {program:?} printed no token within {}",
                    keel_model::format_duration(TOKEN_COMMAND_TIMEOUT)
                ));
            }
            Ok(Err(error)) => {
                return Err(format!("cannot run the token command {program:?}: {error}"));
            }
            Ok(Ok(output)) => output,
        };
        let token = String::from_utf8_lossy(&output.stdout).trim().to_string();
        if !output.status.success() {
            // Its error output may hold the token it half printed: only its first line, redacted.
            let first = String::from_utf8_lossy(&output.stderr)
                .lines()
                .next()
                .unwrap_or_default()
                .chars()
                .take(200)
                .collect::<String>();
            let first = redact(&first, &[token.as_str()]);
            return Err(format!(
                "the token command {program:?} failed ({}){}",
                output.status,
                if first.is_empty() {
                    String::new()
                } else {
                    format!(": {first}")
                }
            ));
        }
        if token.is_empty() || token.contains(['\n', '\r', '\0']) {
            return Err(format!(
                "the token command {program:?} printed no single-line token; it must print the token alone on stdout"
            ));
        }
        let token = Secret(token);
        tokens.insert(command.to_vec(), (token.clone(), Instant::now()));
        Ok(token)
    }
}

/// Sends `call` and judges the response.
async fn send(
    clients: &HttpClients,
    call: HttpCall,
    timeout: Duration,
    log: &mut AttemptLog,
    stop: &tokio::sync::Notify,
) -> Report {
    let shown_url = without_query(&call.url);
    let what = format!("{} {shown_url}", call.method);
    let client = match clients.client(&call) {
        Ok(client) => client,
        Err(message) => return Report::new(Outcome::Failed, message),
    };
    let (authorization, secrets) = match &call.credential {
        None => (None, Vec::new()),
        Some(Credential::Missing(message)) => {
            return Report::new(Outcome::FailedPermanent, message.clone());
        }
        Some(Credential::Bearer(token)) => {
            (Some(format!("Bearer {}", token.0)), vec![token.0.clone()])
        }
        Some(Credential::Basic { user, password }) => {
            // The header's base64 is of `user:password`, which the password's own base64 does
            // not match (a different offset): a service that echoes the header must not show it.
            let encoded = base64(format!("{user}:{}", password.0).as_bytes());
            (
                Some(format!("Basic {encoded}")),
                vec![password.0.clone(), encoded],
            )
        }
        Some(Credential::TokenCommand { command, ttl, env }) => {
            match clients.token(command, *ttl, env).await {
                Ok(token) => (Some(format!("Bearer {}", token.0)), vec![token.0]),
                Err(message) => return Report::new(Outcome::Failed, message),
            }
        }
    };
    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    let Ok(method) = reqwest::Method::from_bytes(call.method.as_bytes()) else {
        return Report::new(
            Outcome::FailedPermanent,
            format!("{:?} is not an HTTP method", call.method),
        );
    };
    log.line(&redact(
        &format!("> {} {}", call.method, call.url),
        &secrets,
    ));
    let mut request = client.request(method, &call.url).timeout(timeout);
    for (name, value) in &call.headers {
        log.line(&redact(&format!("> {name}: {value}"), &secrets));
        request = request.header(name, value);
    }
    if let Some(authorization) = authorization {
        log.line("> authorization: ***");
        request = request.header(reqwest::header::AUTHORIZATION, authorization);
    }
    if let Some((body, content_type)) = call.body {
        log.line(&format!("> content-type: {content_type}"));
        log.body(">", &body, &secrets);
        request = request
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
    }
    let started = Instant::now();
    let response = tokio::select! {
        response = request.send() => response,
        _ = stop.notified() => {
            log.line("! cancelled before the response came");
            return Report::new(Outcome::Cancelled, format!("{what}: cancelled before the response came"));
        }
    };
    let response = match response {
        Ok(response) => response,
        Err(error) => return request_failed(&what, error, timeout, log, &secrets),
    };
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(parse_retry_after);
    let json = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|kind| kind.contains("json"));
    log.line(&format!(
        "< {} {} in {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        keel_model::format_duration(started.elapsed())
    ));
    let body = tokio::select! {
        body = read_capped(response, RESULT_CAP as usize) => body,
        _ = stop.notified() => {
            log.line("! cancelled while the response was read");
            return Report::new(Outcome::Cancelled, format!("{what}: cancelled while the response was read"));
        }
    };
    let body = match body {
        Ok(body) => body,
        Err(error) => return request_failed(&what, error, timeout, log, &secrets),
    };
    log.body("<", &body, &secrets);
    let code = status.as_u16();
    let mut outcome = status_outcome(&call.on_status, code);
    let mut report = Report {
        outcome,
        exit_code: None,
        rows: None,
        metrics: None,
        message: None,
        retry_after: None,
        items: None,
        heal: Vec::new(),
    };
    if status.is_success() && json && outcome == Outcome::Succeeded {
        match parse_result(&body, &format!("response body of {what}")) {
            Ok(Some(result)) => {
                outcome = result.outcome.unwrap_or(outcome);
                report.outcome = outcome;
                report.rows = result.rows;
                report.metrics = result.metrics;
                report.items = result.items;
                report.heal = result.heal;
                report.message = result.message.map(|message| redact(&message, &secrets));
            }
            Ok(None) => {}
            // A body that is JSON but not an object (a list of rows, say) says nothing to Keel.
            Err(_) if !body.trim_ascii_start().starts_with(b"{") => {}
            Err(problem) => {
                report.outcome = Outcome::Failed;
                report.message = Some(redact(&problem, &secrets));
            }
        }
    }
    if !status.is_success() || report.outcome != Outcome::Succeeded && report.message.is_none() {
        let excerpt: String = String::from_utf8_lossy(&body)
            .split(['\n', '\r'])
            .map(str::trim)
            .find(|line| !line.is_empty())
            .unwrap_or_default()
            .chars()
            .take(200)
            .collect();
        let excerpt = redact(&excerpt, &secrets);
        report.message = Some(format!(
            "{what} answered {code}{}{}",
            status
                .canonical_reason()
                .map(|reason| format!(" {reason}"))
                .unwrap_or_default(),
            if excerpt.is_empty() {
                String::new()
            } else {
                format!(": {excerpt}")
            }
        ));
    }
    if report.outcome == Outcome::NotReady {
        report.retry_after = retry_after;
    }
    report
}

/// A request that got no (complete) response: a timeout, or a connection that failed.
fn request_failed(
    what: &str,
    error: reqwest::Error,
    timeout: Duration,
    log: &mut AttemptLog,
    secrets: &[&str],
) -> Report {
    let error = error.without_url();
    let detail = redact(&error_chain(&error), secrets);
    log.line(&format!("! {detail}"));
    if error.is_timeout() {
        return Report::new(
            Outcome::TimedOut,
            format!(
                "{what}: no complete response within {}",
                keel_model::format_duration(timeout)
            ),
        );
    }
    let kind = if error.is_connect() {
        "cannot connect"
    } else {
        "the request failed"
    };
    Report::new(Outcome::Failed, format!("{what}: {kind}: {detail}"))
}

/// An error with its causes, as one line.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let shown = cause.to_string();
        if !text.contains(&shown) {
            text.push_str(": ");
            text.push_str(&shown);
        }
        source = cause.source();
    }
    text
}

/// The response body, at most `cap` bytes; what is beyond is not read.
async fn read_capped(
    mut response: reqwest::Response,
    cap: usize,
) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = cap.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() >= cap {
            break;
        }
    }
    Ok(body)
}

/// `Retry-After` as seconds (`120`) or an HTTP date; at most a day.
fn parse_retry_after(text: &str) -> Option<Duration> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds.min(86_400)));
    }
    let when = chrono::DateTime::parse_from_rfc2822(text).ok()?;
    let wait = when.timestamp() - chrono::Utc::now().timestamp();
    Some(Duration::from_secs(wait.clamp(0, 86_400) as u64))
}

/// The URL without its query: what messages show, since a query may carry a value that is
/// nobody else's business.
fn without_query(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

/// `text` with every secret, and its base64 and URL-encoded forms, replaced by `***`: the
/// one redaction of keel-exec ([`crate::redact::Redactor`]).
pub fn redact(text: &str, secrets: &[&str]) -> String {
    crate::redact::Redactor::new(secrets.iter().copied()).redact_text(text)
}

fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The attempt's `output.log`: the request and the response, capped at `cap` bytes.
struct AttemptLog {
    /// None for a probe, which keeps no log.
    file: Option<std::fs::File>,
    written: u64,
    cap: u64,
}

impl AttemptLog {
    fn create(dir: &Path, cap: u64) -> std::io::Result<AttemptLog> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(dir.join(crate::supervisor::OUTPUT_FILE))?;
        Ok(AttemptLog {
            file: Some(file),
            written: 0,
            cap,
        })
    }

    fn line(&mut self, text: &str) {
        let mut line = text.replace(['\r', '\n'], " ");
        line.push('\n');
        self.write(line.as_bytes());
    }

    /// A body, at most [`LOGGED_BODY`] bytes of it, each line prefixed with `mark`.
    fn body(&mut self, mark: &str, body: &[u8], secrets: &[&str]) {
        if body.is_empty() {
            return;
        }
        let shown = &body[..body.len().min(LOGGED_BODY)];
        let text = redact(&String::from_utf8_lossy(shown), secrets);
        for line in text.lines() {
            self.write(format!("{mark} {line}\n").as_bytes());
        }
        if body.len() > LOGGED_BODY {
            self.line(&format!(
                "{mark} … {} more bytes not logged",
                body.len() - LOGGED_BODY
            ));
        }
    }

    fn write(&mut self, bytes: &[u8]) {
        let Some(file) = &mut self.file else {
            return;
        };
        let room = self.cap.saturating_sub(self.written) as usize;
        let part = &bytes[..bytes.len().min(room)];
        if !part.is_empty() && file.write_all(part).is_ok() {
            self.written += part.len() as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_standard_alphabet_with_padding() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"user:pass"), "dXNlcjpwYXNz");
    }

    #[test]
    fn a_secret_is_redacted_plain_base64_and_url_encoded() {
        let secret = "s3cr3t/token+value";
        let text = format!(
            "echo {secret} then {} then {}",
            base64(secret.as_bytes()),
            crate::redact::url_encoded(secret)
        );
        let redacted = redact(&text, &[secret]);
        assert_eq!(redacted, "echo *** then *** then ***");
        // Too short to be told apart from ordinary text: left alone.
        assert_eq!(redact("a b c", &["b"]), "a b c");
    }

    #[test]
    fn retry_after_is_seconds_or_a_date_and_at_most_a_day() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(
            parse_retry_after("999999"),
            Some(Duration::from_secs(86_400))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn messages_show_a_url_without_its_query() {
        assert_eq!(without_query("http://h:1/p?key=abc#x"), "http://h:1/p");
        assert_eq!(without_query("http://h/p"), "http://h/p");
    }

    #[test]
    fn a_secret_debugs_as_stars() {
        let credential = Credential::Bearer(Secret("abcdef".into()));
        assert_eq!(format!("{credential:?}"), "Bearer(***)");
    }
}
