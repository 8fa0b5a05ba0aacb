//! HTTP tasks (`http = { … }` instead of `command`): the request a task makes, with templates
//! not yet expanded, how it authenticates, and how a response's status becomes an outcome.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::Outcome;

/// The methods an HTTP task may use.
pub const HTTP_METHODS: &[&str] = &["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"];

/// How long a connection may take to open when the task does not say.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The request an HTTP task sends. Every string may hold templates (`{date}`, `{param.NAME}`, …),
/// expanded per attempt; header, query and JSON names are taken as written.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HttpSpec {
    /// `http://` or `https://`, with templates.
    pub url: String,
    /// One of [`HTTP_METHODS`]; `POST` when the request has a body, `GET` otherwise.
    pub method: String,
    /// Header name → value template.
    pub headers: BTreeMap<String, String>,
    /// Query parameter name → value template, added to the URL's own.
    pub query: BTreeMap<String, String>,
    pub body: HttpBody,
    pub auth: Option<HttpAuth>,
    /// How a status becomes an outcome where the default mapping is not wanted.
    pub on_status: Vec<(StatusMatch, Outcome)>,
    pub connect_timeout: Duration,
}

/// What the request carries.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpBody {
    None,
    /// A JSON document whose strings are templates (`json = { date = "{date}" }`).
    Json(serde_json::Value),
    /// A text body from a template, with its content type.
    Text {
        text: String,
        content_type: String,
    },
}

/// Where the request's credentials come from. Only names are kept here: the values are read
/// when an attempt starts and never stored, logged or shown.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpAuth {
    /// `Authorization: Bearer VALUE` with the value of this environment variable.
    BearerEnv(String),
    /// Basic authentication: a user name and the variable holding the password.
    Basic { user: String, password_env: String },
    /// A command that prints a token (a cloud identity token, say), run when no cached token is
    /// younger than `ttl`, and sent as a bearer token.
    TokenCommand { command: Vec<String>, ttl: Duration },
}

/// A resource's health probe (`ready = { url = "…/ready" }`): checked before a task that uses
/// the resource starts, at most once per `every`; while it fails, those tasks wait as behind an
/// open breaker, using up no attempt.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReadyProbe {
    /// A GET of this URL; no templates (a probe belongs to no partition).
    pub url: String,
    pub auth: Option<HttpAuth>,
    /// How long a probe's answer holds, failed or not.
    pub every: Duration,
    /// How long one probe may take.
    pub timeout: Duration,
}

/// How long a probe's answer holds when `every` is not given.
pub const DEFAULT_PROBE_EVERY: Duration = Duration::from_secs(10);
/// How long a probe may take when `timeout` is not given.
pub const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Which statuses an `on_status` entry covers: one code (`"404"`) or a class (`"4xx"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StatusMatch {
    Code(u16),
    Class(u16),
}

impl StatusMatch {
    /// `"404"` or `"4xx"`; `None` for anything else.
    pub fn parse(text: &str) -> Option<StatusMatch> {
        let bytes = text.as_bytes();
        if bytes.len() != 3 || !(b'1'..=b'5').contains(&bytes[0]) {
            return None;
        }
        if text[1..].eq_ignore_ascii_case("xx") {
            return Some(StatusMatch::Class(u16::from(bytes[0] - b'0')));
        }
        text.parse().ok().map(StatusMatch::Code)
    }

    pub fn matches(self, status: u16) -> bool {
        match self {
            StatusMatch::Code(code) => code == status,
            StatusMatch::Class(class) => status / 100 == class,
        }
    }
}

/// The outcomes an `on_status` entry may name.
pub const STATUS_OUTCOMES: &[Outcome] = &[
    Outcome::Succeeded,
    Outcome::NoData,
    Outcome::NotReady,
    Outcome::Failed,
    Outcome::FailedPermanent,
];

/// The outcome of a response with `status`: the task's own `on_status` first (a code before a
/// class), then the default mapping — 2xx succeeded; 429 and 503 not ready (the service asks to
/// be called later, which uses no attempt); other 5xx, 408 and anything else unexpected failed
/// (retried); other 4xx failed permanently (the request itself is wrong).
pub fn status_outcome(on_status: &[(StatusMatch, Outcome)], status: u16) -> Outcome {
    let own = on_status
        .iter()
        .find(|(pattern, _)| matches!(pattern, StatusMatch::Code(_)) && pattern.matches(status))
        .or_else(|| {
            on_status
                .iter()
                .find(|(pattern, _)| pattern.matches(status))
        });
    if let Some((_, outcome)) = own {
        return *outcome;
    }
    match status {
        200..=299 => Outcome::Succeeded,
        429 | 503 => Outcome::NotReady,
        408 => Outcome::Failed,
        400..=499 => Outcome::FailedPermanent,
        _ => Outcome::Failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_outcomes_with_a_code_before_a_class() {
        let none: &[(StatusMatch, Outcome)] = &[];
        assert_eq!(status_outcome(none, 200), Outcome::Succeeded);
        assert_eq!(status_outcome(none, 204), Outcome::Succeeded);
        assert_eq!(status_outcome(none, 429), Outcome::NotReady);
        assert_eq!(status_outcome(none, 503), Outcome::NotReady);
        assert_eq!(status_outcome(none, 500), Outcome::Failed);
        assert_eq!(status_outcome(none, 502), Outcome::Failed);
        assert_eq!(status_outcome(none, 408), Outcome::Failed);
        assert_eq!(status_outcome(none, 404), Outcome::FailedPermanent);
        assert_eq!(status_outcome(none, 302), Outcome::Failed);
        let own = [
            (StatusMatch::Class(4), Outcome::Failed),
            (StatusMatch::Code(404), Outcome::NoData),
        ];
        assert_eq!(status_outcome(&own, 404), Outcome::NoData);
        assert_eq!(status_outcome(&own, 400), Outcome::Failed);
        assert_eq!(status_outcome(&own, 500), Outcome::Failed);
        assert_eq!(status_outcome(&own, 200), Outcome::Succeeded);
    }

    #[test]
    fn status_patterns_are_a_code_or_a_class() {
        assert_eq!(StatusMatch::parse("404"), Some(StatusMatch::Code(404)));
        assert_eq!(StatusMatch::parse("5xx"), Some(StatusMatch::Class(5)));
        assert_eq!(StatusMatch::parse("5XX"), Some(StatusMatch::Class(5)));
        assert_eq!(StatusMatch::parse("600"), None);
        assert_eq!(StatusMatch::parse("40"), None);
        assert_eq!(StatusMatch::parse("4x4"), None);
        assert_eq!(StatusMatch::parse("abc"), None);
        assert!(StatusMatch::Class(4).matches(418));
        assert!(!StatusMatch::Class(4).matches(500));
    }
}
