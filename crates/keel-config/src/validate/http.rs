//! A task's `http = { … }`: the request an HTTP task sends instead of running a command. Every
//! string of the request may hold templates; credentials are named, never written here.

use std::collections::BTreeMap;

use keel_model::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_PROBE_EVERY, DEFAULT_PROBE_TIMEOUT, HTTP_METHODS, HttpAuth,
    HttpBody, HttpSpec, Outcome, ReadyProbe, STATUS_OUTCOMES, StatusMatch,
};
use toml::Spanned;
use toml::de::DeValue;

use super::context::variable_name_problem;
use super::{Checker, EXPECT_STRING, entries};
use crate::error::ConfigError;

pub(super) const HTTP_FIELDS: &[&str] = &[
    "url",
    "method",
    "headers",
    "query",
    "json",
    "body",
    "content_type",
    "auth",
    "on_status",
    "connect_timeout",
];
const AUTH_FIELDS: &[&str] = &[
    "bearer_env",
    "basic_user",
    "basic_password_env",
    "token_command",
    "token_ttl",
];
/// Headers Keel sets itself: a task setting them would break its contract or leak around it.
const RESERVED_HEADERS: &[&str] = &[
    "authorization",
    "idempotency-key",
    "traceparent",
    "content-length",
    "host",
    "transfer-encoding",
    "connection",
];

const READY_FIELDS: &[&str] = &["url", "auth", "every", "timeout"];

impl Checker<'_> {
    /// A resource's `ready = { url = "…", every = "10s", timeout = "5s", auth = { … } }`.
    pub(super) fn ready_probe(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        path: &str,
        resource: &str,
    ) -> Option<ReadyProbe> {
        let table = self.table(value, "ready", path)?;
        let path = format!("{path}.ready");
        let errors_before = self.errors.len();
        let mut probe = ReadyProbe {
            url: String::new(),
            auth: None,
            every: DEFAULT_PROBE_EVERY,
            timeout: DEFAULT_PROBE_TIMEOUT,
        };
        let owner = format!("resource {resource:?}");
        for (key, item) in entries(table) {
            let field = key.get_ref().as_ref();
            match field {
                "url" => {
                    let Some(url) = self.string(item, field, &path, EXPECT_STRING) else {
                        continue;
                    };
                    let problem = url_problem(&url).or_else(|| {
                        url.contains(['{', '}']).then(|| {
                            "a probe belongs to no partition or task, so its URL has no templates"
                                .to_string()
                        })
                    });
                    match problem {
                        Some(reason) => self.errors.push(ConfigError::InvalidHttp {
                            owner: owner.clone(),
                            field: "ready.url".to_string(),
                            reason,
                            location: self.location(&item.span()),
                        }),
                        None => probe.url = url,
                    }
                }
                "auth" => probe.auth = self.http_auth(item, &path, resource),
                "every" => {
                    if let Some(every) = self.duration(item, field, &path, false) {
                        probe.every = every;
                    }
                }
                "timeout" => {
                    if let Some(timeout) = self.duration(item, field, &path, false) {
                        probe.timeout = timeout;
                    }
                }
                _ => self.unknown_field(key, &path, READY_FIELDS, &[]),
            }
        }
        if !table.contains_key("url") {
            self.errors.push(ConfigError::MissingField {
                field: "url".to_string(),
                table: path.clone(),
                location: self.location(&value.span()),
            });
        }
        (self.errors.len() == errors_before).then_some(probe)
    }

    /// Reads `http = { … }` of `task`; `None` when it is broken (the errors say why).
    pub(super) fn http(
        &mut self,
        key: &Spanned<toml::de::DeString<'_>>,
        value: &Spanned<DeValue<'_>>,
        path: &str,
        task: &str,
    ) -> Option<HttpSpec> {
        let table = self.table(value, "http", path)?;
        let path = format!("{path}.http");
        let errors_before = self.errors.len();
        let mut spec = HttpSpec {
            url: String::new(),
            method: String::new(),
            headers: BTreeMap::new(),
            query: BTreeMap::new(),
            body: HttpBody::None,
            auth: None,
            on_status: Vec::new(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        };
        let mut text_body = None;
        let mut content_type = None;
        for (field_key, value) in entries(table) {
            let field = field_key.get_ref().as_ref();
            match field {
                "url" => {
                    if let Some(url) = self.string(value, field, &path, EXPECT_STRING) {
                        self.http_url(value, &url, task);
                        spec.url = url;
                    }
                }
                "method" => {
                    if let Some(method) = self.string(value, field, &path, EXPECT_STRING) {
                        let upper = method.to_ascii_uppercase();
                        if HTTP_METHODS.contains(&upper.as_str()) {
                            spec.method = upper;
                        } else {
                            self.invalid_http(
                                value,
                                task,
                                "method",
                                format!(
                                    "{method:?} is not a method Keel sends; use one of {}",
                                    HTTP_METHODS.join(", ")
                                ),
                            );
                        }
                    }
                }
                "headers" | "query" => {
                    let pairs = self.http_pairs(value, field, &path, task);
                    if field == "headers" {
                        for name in pairs.keys() {
                            if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                                self.invalid_http(
                                    value,
                                    task,
                                    "headers",
                                    format!("Keel sets the {name:?} header itself; remove it (credentials go in auth = {{ … }})"),
                                );
                            }
                        }
                        spec.headers = pairs;
                    } else {
                        spec.query = pairs;
                    }
                }
                "json" => {
                    spec.body = HttpBody::Json(self.http_json(value, task));
                }
                "body" => text_body = self.string(value, field, &path, EXPECT_STRING),
                "content_type" => content_type = self.string(value, field, &path, EXPECT_STRING),
                "auth" => spec.auth = self.http_auth(value, &path, task),
                "on_status" => spec.on_status = self.http_on_status(value, &path, task),
                "connect_timeout" => {
                    if let Some(timeout) = self.duration(value, field, &path, false) {
                        spec.connect_timeout = timeout;
                    }
                }
                _ => self.unknown_field(field_key, &path, HTTP_FIELDS, &[]),
            }
        }
        if !table.contains_key("url") {
            self.errors.push(ConfigError::MissingField {
                field: "url".to_string(),
                table: path.clone(),
                location: self.location(&key.span()),
            });
        }
        if let Some(text) = text_body {
            if table.contains_key("json") {
                self.invalid_http(
                    value,
                    task,
                    "body",
                    "it has both json and body; keep one".to_string(),
                );
            }
            if let Some(item) = table.get("body") {
                self.check_task_templates(item, &text, task, "http body");
            }
            spec.body = HttpBody::Text {
                text,
                content_type: content_type.unwrap_or_else(|| "text/plain; charset=utf-8".into()),
            };
        } else if content_type.is_some() {
            self.invalid_http(
                value,
                task,
                "content_type",
                "it has no effect without body = \"…\" (json = { … } is sent as application/json)"
                    .to_string(),
            );
        }
        if spec.method.is_empty() {
            spec.method = match spec.body {
                HttpBody::None => "GET".to_string(),
                _ => "POST".to_string(),
            };
        }
        if matches!(spec.method.as_str(), "GET" | "HEAD") && spec.body != HttpBody::None {
            self.invalid_http(
                value,
                task,
                "method",
                format!(
                    "a {} request carries no body; use method = \"POST\" or drop the body",
                    spec.method
                ),
            );
        }
        (self.errors.len() == errors_before).then_some(spec)
    }

    fn invalid_http(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        task: &str,
        field: &str,
        reason: String,
    ) {
        self.errors.push(ConfigError::InvalidHttp {
            owner: format!("task {task:?}"),
            field: format!("http.{field}"),
            reason,
            location: self.location(&value.span()),
        });
    }

    /// The URL, with templates checked.
    fn http_url(&mut self, value: &Spanned<DeValue<'_>>, url: &str, task: &str) {
        match url_problem(url) {
            Some(reason) => self.invalid_http(value, task, "url", reason),
            None => self.check_task_templates(value, url, task, "http url"),
        }
    }

    /// `headers` or `query`: a table of strings, each a template.
    fn http_pairs(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        field: &str,
        path: &str,
        task: &str,
    ) -> BTreeMap<String, String> {
        let mut pairs = BTreeMap::new();
        let Some(table) = self.table(value, field, path) else {
            return pairs;
        };
        let table_path = format!("{path}.{field}");
        let template_field = if field == "headers" {
            "http headers"
        } else {
            "http query"
        };
        for (name, item) in entries(table) {
            let name = name.get_ref().to_string();
            let Some(text) = self.string(item, &name, &table_path, EXPECT_STRING) else {
                continue;
            };
            if field == "headers"
                && (name.is_empty()
                    || !name.bytes().all(|byte| {
                        byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
                    }))
            {
                self.invalid_http(
                    item,
                    task,
                    "headers",
                    format!("{name:?} is not a header name; use letters, digits and dashes, as in \"X-Request-Source\""),
                );
                continue;
            }
            if text.contains(['\r', '\n', '\0']) {
                self.invalid_http(
                    item,
                    task,
                    field,
                    format!("the value of {name:?} holds a line break or a NUL, which HTTP cannot carry; remove it"),
                );
                continue;
            }
            self.check_task_templates(item, &text, task, template_field);
            pairs.insert(name, text);
        }
        pairs
    }

    /// `json = …`: any TOML value as JSON, every string checked as a template. Dates and
    /// times become strings.
    fn http_json(&mut self, value: &Spanned<DeValue<'_>>, task: &str) -> serde_json::Value {
        use serde_json::Value;
        match value.get_ref() {
            DeValue::String(text) => {
                self.check_task_templates(value, text, task, "http json");
                Value::String(text.to_string())
            }
            DeValue::Integer(integer) => integer
                .to_string()
                .parse::<i64>()
                .map(Value::from)
                .unwrap_or(Value::Null),
            DeValue::Float(float) => float
                .to_string()
                .parse::<f64>()
                .ok()
                .and_then(serde_json::Number::from_f64)
                .map_or(Value::Null, Value::Number),
            DeValue::Boolean(flag) => Value::Bool(*flag),
            DeValue::Datetime(datetime) => Value::String(datetime.to_string()),
            DeValue::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|item| self.http_json(item, task))
                    .collect(),
            ),
            DeValue::Table(table) => Value::Object(
                entries(table)
                    .into_iter()
                    .map(|(name, item)| (name.get_ref().to_string(), self.http_json(item, task)))
                    .collect(),
            ),
        }
    }

    /// `auth = { bearer_env = "NAME" }`, `{ basic_user = "…", basic_password_env = "NAME" }` or
    /// `{ token_command = ["…"], token_ttl = "50m" }`.
    fn http_auth(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        path: &str,
        task: &str,
    ) -> Option<HttpAuth> {
        let table = self.table(value, "auth", path)?;
        let path = format!("{path}.auth");
        let mut strings: BTreeMap<&str, String> = BTreeMap::new();
        let mut command = None;
        let mut ttl = None;
        for (key, item) in entries(table) {
            let field = key.get_ref().as_ref();
            match field {
                "bearer_env" | "basic_password_env" => {
                    let name = self.string(item, field, &path, EXPECT_STRING)?;
                    if let Some(problem) = variable_name_problem(&name) {
                        self.invalid_http(
                            item,
                            task,
                            &format!("auth.{field}"),
                            format!("{problem}; name the environment variable that holds the secret, such as \"ANALYTICS_TOKEN\""),
                        );
                        return None;
                    }
                    strings.insert(
                        if field == "bearer_env" {
                            "bearer_env"
                        } else {
                            "basic_password_env"
                        },
                        name,
                    );
                }
                "basic_user" => {
                    let user = self.string(item, field, &path, EXPECT_STRING)?;
                    strings.insert("basic_user", user);
                }
                "token_command" => {
                    command = self.task_argv(item, &path, task);
                }
                "token_ttl" => ttl = self.duration(item, field, &path, false),
                _ => self.unknown_field(key, &path, AUTH_FIELDS, &[]),
            }
        }
        let kinds = [
            table.contains_key("bearer_env"),
            table.contains_key("basic_user") || table.contains_key("basic_password_env"),
            table.contains_key("token_command"),
        ];
        let reason = match kinds.iter().filter(|kind| **kind).count() {
            0 => Some(
                "it names no credential; use bearer_env = \"NAME\", basic_user with basic_password_env, or token_command = [\"…\"]",
            ),
            1 => None,
            _ => Some(
                "it mixes kinds of credential; keep one of bearer_env, basic_user with basic_password_env, or token_command",
            ),
        };
        if let Some(reason) = reason {
            self.invalid_http(value, task, "auth", reason.to_string());
            return None;
        }
        if kinds[0] {
            return strings.remove("bearer_env").map(HttpAuth::BearerEnv);
        }
        if kinds[1] {
            let (Some(user), Some(password_env)) = (
                strings.remove("basic_user"),
                strings.remove("basic_password_env"),
            ) else {
                self.invalid_http(
                    value,
                    task,
                    "auth",
                    "basic authentication needs both basic_user and basic_password_env".to_string(),
                );
                return None;
            };
            return Some(HttpAuth::Basic { user, password_env });
        }
        if table.contains_key("token_ttl") && ttl.is_none() {
            return None;
        }
        command.map(|command| HttpAuth::TokenCommand {
            command,
            ttl: ttl.unwrap_or(std::time::Duration::from_secs(300)),
        })
    }

    /// A program and its arguments, run without a shell (`token_command`).
    fn task_argv(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        path: &str,
        task: &str,
    ) -> Option<Vec<String>> {
        let DeValue::Array(items) = value.get_ref() else {
            self.invalid_http(
                value,
                task,
                "auth.token_command",
                "write a list of strings such as [\"print-token\", \"--audience\", \"analytics\"]"
                    .to_string(),
            );
            return None;
        };
        if items.is_empty() {
            self.invalid_http(
                value,
                task,
                "auth.token_command",
                "it is empty; name the program that prints the token".to_string(),
            );
            return None;
        }
        let mut argv = Vec::with_capacity(items.len());
        for (position, item) in items.iter().enumerate() {
            let field = format!("token_command[{position}]");
            let argument = self.string(item, &field, path, EXPECT_STRING)?;
            if argument.contains('\0') {
                self.nul_byte(item, field, path, argument, "an argument");
                return None;
            }
            argv.push(argument);
        }
        Some(argv)
    }

    /// `on_status = { "404" = "no_data", "5xx" = "failed_permanent" }`.
    fn http_on_status(
        &mut self,
        value: &Spanned<DeValue<'_>>,
        path: &str,
        task: &str,
    ) -> Vec<(StatusMatch, Outcome)> {
        let mut rules = Vec::new();
        let Some(table) = self.table(value, "on_status", path) else {
            return rules;
        };
        let table_path = format!("{path}.on_status");
        let names: Vec<&str> = STATUS_OUTCOMES
            .iter()
            .map(|outcome| outcome.as_str())
            .collect();
        for (key, item) in entries(table) {
            let Some(pattern) = StatusMatch::parse(key.get_ref()) else {
                self.invalid_http(
                    item,
                    task,
                    "on_status",
                    format!(
                        "{:?} is not a status; write a code such as \"404\" or a class such as \"5xx\"",
                        key.get_ref().to_string()
                    ),
                );
                continue;
            };
            let Some(name) = self.string(item, key.get_ref(), &table_path, EXPECT_STRING) else {
                continue;
            };
            match name.parse::<Outcome>() {
                Ok(outcome) if STATUS_OUTCOMES.contains(&outcome) => rules.push((pattern, outcome)),
                _ => self.invalid_http(
                    item,
                    task,
                    "on_status",
                    format!(
                        "{name:?} is not an outcome a status may have; use one of {}",
                        names.join(", ")
                    ),
                ),
            }
        }
        rules
    }
}

/// What is wrong with a URL Keel is to call: it must be `http://` or `https://` with a host, and
/// hold no credentials, since the file is no place for them.
fn url_problem(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    match rest {
        None => Some(
            "write an http:// or https:// URL such as \"http://127.0.0.1:8080/process\"".to_string(),
        ),
        Some(rest) if rest.is_empty() || rest.starts_with('/') => {
            Some("it has no host; write one as in \"http://127.0.0.1:8080/process\"".into())
        }
        Some(rest) if rest.split(['/', '?']).next().is_some_and(|host| host.contains('@')) => {
            Some("credentials do not belong in the URL; use auth = { bearer_env = \"NAME\" } or basic_user / basic_password_env".into())
        }
        Some(_) => None,
    }
}
