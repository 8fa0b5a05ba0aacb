//! `[secrets]`: where a task's secrets come from: `provider = "store" | "env" | "dir:PATH" |
//! { command = [...], ttl = "5m", timeout = "30s" }`.

use keel_model::{DEFAULT_SECRET_COMMAND_TIMEOUT, DEFAULT_SECRET_TTL, SecretProvider, SecretsSpec};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::{Checker, EXPECT_STRING, entries};
use crate::error::ConfigError;

pub(super) const SECRETS_FIELDS: &[&str] = &["provider"];
const COMMAND_FIELDS: &[&str] = &["command", "ttl", "timeout"];
const PROVIDERS: &str = "write \"store\" (the encrypted store of `keel secrets set`), \"env\" (Keel's environment), \"dir:/run/secrets\" (a file per secret) or { command = [\"vault-read\", \"{name}\"] }";

impl Checker<'_> {
    /// Reads `[secrets]`; `None` when it is broken (the errors say why).
    pub(super) fn secrets(
        &mut self,
        table: &DeTable<'_>,
        key_span: &std::ops::Range<usize>,
    ) -> Option<SecretsSpec> {
        let errors_before = self.errors.len();
        let mut provider = None;
        for (key, value) in entries(table) {
            let field = key.get_ref().as_ref();
            match field {
                "provider" => provider = self.secret_provider(value),
                _ => self.unknown_field(key, "secrets", SECRETS_FIELDS, &[]),
            }
        }
        if !table.contains_key("provider") {
            self.errors.push(ConfigError::InvalidSecrets {
                field: "secrets".to_string(),
                reason: format!("it has no provider; {PROVIDERS}"),
                location: self.location(key_span),
            });
        }
        let provider = provider?;
        (self.errors.len() == errors_before).then_some(SecretsSpec { provider })
    }

    fn secret_provider(&mut self, value: &Spanned<DeValue<'_>>) -> Option<SecretProvider> {
        if let DeValue::Table(table) = value.get_ref() {
            return self.secrets_command(table, value);
        }
        let text = self.string(value, "provider", "secrets", EXPECT_STRING)?;
        let provider = match text.as_str() {
            "store" => Some(SecretProvider::Store),
            "env" => Some(SecretProvider::Env),
            _ => text
                .strip_prefix("dir:")
                .filter(|path| !path.trim().is_empty() && !path.contains('\0'))
                .map(|path| SecretProvider::Dir(path.to_string())),
        };
        if provider.is_none() {
            let reason = if text.starts_with("dir:") {
                "\"dir:\" needs a folder, such as \"dir:/run/secrets\"".to_string()
            } else {
                format!("{text:?} is not a provider; {PROVIDERS}")
            };
            self.errors.push(ConfigError::InvalidSecrets {
                field: "provider".to_string(),
                reason,
                location: self.location(&value.span()),
            });
        }
        provider
    }

    fn secrets_command(
        &mut self,
        table: &DeTable<'_>,
        value: &Spanned<DeValue<'_>>,
    ) -> Option<SecretProvider> {
        const PATH: &str = "secrets.provider";
        let errors_before = self.errors.len();
        let mut argv = None;
        let mut ttl = DEFAULT_SECRET_TTL;
        let mut timeout = DEFAULT_SECRET_COMMAND_TIMEOUT;
        for (key, item) in entries(table) {
            let field = key.get_ref().as_ref();
            match field {
                "command" => argv = self.secrets_argv(item),
                "ttl" => ttl = self.duration(item, field, PATH, true).unwrap_or(ttl),
                "timeout" => timeout = self.duration(item, field, PATH, false).unwrap_or(timeout),
                _ => self.unknown_field(key, PATH, COMMAND_FIELDS, &[]),
            }
        }
        if !table.contains_key("command") {
            self.errors.push(ConfigError::InvalidSecrets {
                field: "provider".to_string(),
                reason: "a provider table needs command, such as { command = [\"vault-read\", \"{name}\"] }".to_string(),
                location: self.location(&value.span()),
            });
        }
        let argv = argv?;
        (self.errors.len() == errors_before).then_some(SecretProvider::Command {
            argv,
            ttl,
            timeout,
        })
    }

    fn secrets_argv(&mut self, value: &Spanned<DeValue<'_>>) -> Option<Vec<String>> {
        const EXPECT_ARGV: &str = "a list of strings such as [\"vault\", \"read\", \"{name}\"]";
        let DeValue::Array(items) = value.get_ref() else {
            self.wrong_type(value, "command", "secrets.provider", EXPECT_ARGV);
            return None;
        };
        let mut argv = Vec::with_capacity(items.len());
        for (position, item) in items.iter().enumerate() {
            let field = format!("command[{position}]");
            let argument = self.string(item, &field, "secrets.provider", EXPECT_STRING)?;
            if argument.contains('\0') {
                self.nul_byte(item, field, "secrets.provider", argument, "an argument");
                return None;
            }
            argv.push(argument);
        }
        let reason = if argv.is_empty() {
            Some(
                "it is empty; name the program that prints a secret, such as [\"vault-read\", \"{name}\"]",
            )
        } else if !argv.iter().any(|argument| argument.contains("{name}")) {
            Some(
                "no argument holds \"{name}\", so every secret would get the same value; pass the name, as in [\"vault-read\", \"{name}\"]",
            )
        } else {
            None
        };
        if let Some(reason) = reason {
            self.errors.push(ConfigError::InvalidSecrets {
                field: "command".to_string(),
                reason: reason.to_string(),
                location: self.location(&value.span()),
            });
            return None;
        }
        Some(argv)
    }
}
