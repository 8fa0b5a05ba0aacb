//! `[alerts]`: the sinks `keel serve` delivers alerts to (a Slack-compatible `webhook`, a
//! `command`), and how often one problem may be told. A webhook URL is a credential more often
//! than not, so errors here never quote one.

use keel_model::{
    AlertsSpec, DEFAULT_ALERT_TIMEOUT, DEFAULT_ALERTS_PER_HOUR, DEFAULT_BREAKER_OPEN_FOR,
    DEFAULT_DEGRADED_GRACE, WebhookUrl,
};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::context::variable_name_problem;
use super::{Checker, EXPECT_STRING, entries};
use crate::error::ConfigError;

pub(super) const ALERTS_FIELDS: &[&str] = &[
    "webhook",
    "command",
    "max_per_hour",
    "degraded_grace",
    "breaker_open_for",
    "timeout",
    "report",
];
const WEBHOOK_FIELDS: &[&str] = &["url", "url_env"];
const EXPECT_ARGV: &str = "a list of strings such as [\"notify\", \"--channel\", \"data\"]";

impl Checker<'_> {
    /// Reads `[alerts]`; `None` when it is broken (the errors say why).
    pub(super) fn alerts(
        &mut self,
        table: &DeTable<'_>,
        key_span: &std::ops::Range<usize>,
    ) -> Option<AlertsSpec> {
        const PATH: &str = "alerts";
        let errors_before = self.errors.len();
        let mut spec = AlertsSpec {
            webhook: None,
            command: None,
            max_per_hour: DEFAULT_ALERTS_PER_HOUR,
            degraded_grace: DEFAULT_DEGRADED_GRACE,
            breaker_open_for: DEFAULT_BREAKER_OPEN_FOR,
            timeout: DEFAULT_ALERT_TIMEOUT,
            report: None,
        };
        for (key, value) in entries(table) {
            let field = key.get_ref().as_ref();
            match field {
                "webhook" => spec.webhook = self.webhook(value),
                "command" => spec.command = self.alert_command(value),
                "max_per_hour" => {
                    if let Some(count) = self.positive_integer(value, field, PATH) {
                        spec.max_per_hour = count;
                    }
                }
                "degraded_grace" => {
                    if let Some(grace) = self.duration(value, field, PATH, true) {
                        spec.degraded_grace = grace;
                    }
                }
                "breaker_open_for" => {
                    if let Some(open_for) = self.duration(value, field, PATH, true) {
                        spec.breaker_open_for = open_for;
                    }
                }
                "timeout" => {
                    if let Some(timeout) = self.duration(value, field, PATH, false) {
                        spec.timeout = timeout;
                    }
                }
                "report" => {
                    if let Some(at) = self.time_of_day(value, field, PATH) {
                        spec.report = Some(at);
                    }
                }
                _ => self.unknown_field(key, PATH, ALERTS_FIELDS, &[]),
            }
        }
        if spec.webhook.is_none() && spec.command.is_none() && self.errors.len() == errors_before {
            self.errors.push(ConfigError::InvalidAlerts {
                field: "alerts".to_string(),
                reason: "it has no sink, so no alert could be delivered; add webhook = { url_env = \"KEEL_ALERT_WEBHOOK\" } or command = [\"notify-team\"]".to_string(),
                location: self.location(key_span),
            });
        }
        (self.errors.len() == errors_before).then_some(spec)
    }

    /// `webhook = { url = "http://…" }` or `webhook = { url_env = "NAME" }`.
    fn webhook(&mut self, value: &Spanned<DeValue<'_>>) -> Option<WebhookUrl> {
        const PATH: &str = "alerts.webhook";
        let table = self.table(value, "webhook", "alerts")?;
        let mut url = None;
        for (key, value) in entries(table) {
            let field = key.get_ref().as_ref();
            match field {
                "url" => {
                    let text = self.string(value, field, PATH, EXPECT_STRING)?;
                    let reason = if text.contains("hooks.slack.com") {
                        Some(
                            "a Slack webhook URL is a credential and does not belong in the pipeline file; put it in an environment variable and name it with url_env = \"KEEL_ALERT_WEBHOOK\"",
                        )
                    } else if text.starts_with("https://") {
                        Some(
                            "https is not supported by the built-in webhook client; use an http:// relay, or a command sink such as [\"curl\", \"-fsS\", \"-d\", \"@-\", \"-H\", \"content-type: application/json\", \"$URL\"]",
                        )
                    } else if !text.starts_with("http://") || text.len() <= "http://".len() {
                        Some("write an http:// URL such as \"http://127.0.0.1:9093/keel\"")
                    } else {
                        None
                    };
                    match reason {
                        Some(reason) => self.errors.push(ConfigError::InvalidAlerts {
                            field: "webhook.url".to_string(),
                            reason: reason.to_string(),
                            location: self.location(&value.span()),
                        }),
                        None => url = Some(WebhookUrl::Literal(text)),
                    }
                }
                "url_env" => {
                    let name = self.string(value, field, PATH, EXPECT_STRING)?;
                    match variable_name_problem(&name) {
                        Some(problem) => self.errors.push(ConfigError::InvalidAlerts {
                            field: "webhook.url_env".to_string(),
                            reason: format!("{problem}; name the environment variable that holds the URL, such as \"KEEL_ALERT_WEBHOOK\""),
                            location: self.location(&value.span()),
                        }),
                        None => url = Some(WebhookUrl::Env(name)),
                    }
                }
                _ => self.unknown_field(key, PATH, WEBHOOK_FIELDS, &[]),
            }
        }
        if table.contains_key("url") && table.contains_key("url_env") {
            self.errors.push(ConfigError::InvalidAlerts {
                field: "webhook".to_string(),
                reason: "it sets both url and url_env; keep one".to_string(),
                location: self.location(&value.span()),
            });
            return None;
        }
        if url.is_none() && !table.contains_key("url") && !table.contains_key("url_env") {
            self.errors.push(ConfigError::InvalidAlerts {
                field: "webhook".to_string(),
                reason: "it has no URL; add url_env = \"KEEL_ALERT_WEBHOOK\" (the variable holding the URL) or url = \"http://…\"".to_string(),
                location: self.location(&value.span()),
            });
        }
        url
    }

    /// `command = ["program", "arg", …]`: run without a shell, the alert on its stdin.
    fn alert_command(&mut self, value: &Spanned<DeValue<'_>>) -> Option<Vec<String>> {
        let DeValue::Array(items) = value.get_ref() else {
            self.wrong_type(value, "command", "alerts", EXPECT_ARGV);
            return None;
        };
        if items.is_empty() {
            self.errors.push(ConfigError::InvalidAlerts {
                field: "command".to_string(),
                reason: "it is empty; name the program to run, such as [\"notify-team\"]"
                    .to_string(),
                location: self.location(&value.span()),
            });
            return None;
        }
        let mut command = Vec::with_capacity(items.len());
        for (position, item) in items.iter().enumerate() {
            let field = format!("command[{position}]");
            let argument = self.string(item, &field, "alerts", EXPECT_STRING)?;
            if argument.contains('\0') {
                self.nul_byte(item, field, "alerts", argument, "an argument");
                return None;
            }
            command.push(argument);
        }
        Some(command)
    }
}
