//! Recognises values that look like plaintext secrets, so that `keel.toml` can be committed.
//!
//! The checks favour well-known token shapes over entropy guesses: a false alarm on an ordinary
//! argument would make users fight the validator, while these prefixes almost never occur by
//! accident.

/// A secret-looking part of a string value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Finding {
    /// What it looks like, for example `AWS access key`.
    pub what: &'static str,
    /// The public start of the secret with the rest cut off, for example `AKIA…`. It never
    /// contains the secret part itself.
    pub redacted: String,
    /// The byte offset of the secret-looking part in the value.
    pub offset: usize,
}

/// Fragments of a `key=value` key that mark the value as a credential.
const SECRET_KEY_WORDS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "api_key",
    "api-key",
    "apikey",
    "access_key",
    "access-key",
    "private_key",
    "private-key",
];

/// Fragments of a key that say the value is a reference to a secret, not the secret itself.
const REFERENCE_KEY_WORDS: &[&str] = &["file", "path", "env", "name", "type", "url"];

/// The shortest value after `password=` and the like that is treated as a real secret. Shorter
/// values are usually placeholders or flags such as `--token=none`.
const MIN_ASSIGNED_SECRET_LEN: usize = 6;

/// Values after `password=` and the like that say "no secret here".
const PLACEHOLDERS: &[&str] = &[
    "none", "null", "nil", "false", "true", "empty", "unset", "default", "prompt", "stdin", "-",
];

/// Returns the first part of `value` that looks like a plaintext secret.
pub(crate) fn find_secret(value: &str) -> Option<Finding> {
    private_key(value)
        .or_else(|| prefixed_token(value))
        .or_else(|| url_password(value))
        .or_else(|| assigned_secret(value))
        .or_else(|| bearer_token(value))
}

fn private_key(value: &str) -> Option<Finding> {
    let offset = value.find("-----BEGIN ")?;
    let header_end = value[offset..]
        .find("-----\n")
        .or(value[offset..].find("-----\r"));
    let header = &value[offset..offset + header_end.unwrap_or(value.len() - offset)];
    header.contains("PRIVATE KEY").then(|| Finding {
        what: "private key",
        redacted: "-----BEGIN …".to_string(),
        offset,
    })
}

/// Token formats with a fixed, public prefix: (prefix, what, shortest body, allowed body bytes).
type Shape = (&'static str, &'static str, usize, fn(u8) -> bool);

const TOKEN_SHAPES: &[Shape] = &[
    ("AKIA", "AWS access key", 16, is_upper_or_digit),
    ("ASIA", "AWS access key", 16, is_upper_or_digit),
    ("ghp_", "GitHub token", 20, is_alphanumeric),
    ("gho_", "GitHub token", 20, is_alphanumeric),
    ("ghu_", "GitHub token", 20, is_alphanumeric),
    ("ghs_", "GitHub token", 20, is_alphanumeric),
    ("ghr_", "GitHub token", 20, is_alphanumeric),
    ("github_pat_", "GitHub token", 20, is_word),
    ("xoxa-", "Slack token", 10, is_dashed_word),
    ("xoxb-", "Slack token", 10, is_dashed_word),
    ("xoxp-", "Slack token", 10, is_dashed_word),
    ("sk_live_", "Stripe key", 10, is_alphanumeric),
    ("rk_live_", "Stripe key", 10, is_alphanumeric),
];

fn is_upper_or_digit(byte: u8) -> bool {
    byte.is_ascii_uppercase() || byte.is_ascii_digit()
}

fn is_alphanumeric(byte: u8) -> bool {
    byte.is_ascii_alphanumeric()
}

fn is_word(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_'
}

fn is_dashed_word(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'-'
}

fn prefixed_token(value: &str) -> Option<Finding> {
    let bytes = value.as_bytes();
    let mut best: Option<Finding> = None;
    for (prefix, what, min_body, allowed) in TOKEN_SHAPES {
        for (offset, _) in value.match_indices(prefix) {
            // A prefix glued to the end of a longer word ("MAKIA...") is not a token start.
            if offset > 0 && is_word(bytes[offset - 1]) {
                continue;
            }
            let body = bytes[offset + prefix.len()..]
                .iter()
                .take_while(|byte| allowed(**byte))
                .count();
            if body >= *min_body && best.as_ref().is_none_or(|found| offset < found.offset) {
                best = Some(Finding {
                    what,
                    redacted: format!("{prefix}…"),
                    offset,
                });
            }
        }
    }
    best
}

/// `scheme://user:password@host`, as in a PostgreSQL `state` URL.
fn url_password(value: &str) -> Option<Finding> {
    for (scheme_end, _) in value.match_indices("://") {
        let authority_start = scheme_end + 3;
        let rest = &value[authority_start..];
        let authority_len = rest
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace())
            .unwrap_or(rest.len());
        let authority = &rest[..authority_len];
        let Some(at) = authority.rfind('@') else {
            continue;
        };
        let Some(colon) = authority[..at].find(':') else {
            continue;
        };
        let password = &authority[colon + 1..at];
        if password.is_empty() || is_reference(password) {
            continue;
        }
        let scheme_start = value[..scheme_end]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '.'))
            .map_or(0, |position| position + 1);
        return Some(Finding {
            what: "password in a URL",
            redacted: format!(
                "{}{}:…@",
                &value[scheme_start..authority_start],
                &authority[..colon]
            ),
            offset: scheme_start,
        });
    }
    None
}

/// `password=…`, `--api-token=…` or `export SECRET_KEY=…` with a real-looking value.
fn assigned_secret(value: &str) -> Option<Finding> {
    let mut offset = 0;
    for word in value.split_inclusive(|c: char| c.is_whitespace() || c == '"' || c == '\'') {
        let word_offset = offset;
        offset += word.len();
        let word = word.trim_end_matches(|c: char| c.is_whitespace() || c == '"' || c == '\'');
        let Some(equals) = word.find('=') else {
            continue;
        };
        let secret_value = &word[equals + 1..];
        if names_a_secret(&word[..equals]) && looks_like_a_secret_value(secret_value) {
            return Some(Finding {
                what: "password or token",
                redacted: format!("{}=…", &word[..equals]),
                offset: word_offset,
            });
        }
    }
    None
}

/// Whether a value given to a secret-named key is a secret rather than a placeholder, a
/// reference (`$VAR`, `{template}`, a path) or a number.
fn looks_like_a_secret_value(value: &str) -> bool {
    value.chars().count() >= MIN_ASSIGNED_SECRET_LEN
        && !is_reference(value)
        && !value.bytes().all(|byte| byte.is_ascii_digit())
        && !PLACEHOLDERS.contains(&value.to_ascii_lowercase().as_str())
}

/// A flag that names a credential followed by its value as the next argument:
/// `["--secret-access-key", "wJalrXUtnFEMI…"]`. Returns the index of the value and what was
/// found there.
pub(crate) fn find_secret_in_arguments(arguments: &[&str]) -> Option<(usize, Finding)> {
    arguments.windows(2).enumerate().find_map(|(index, pair)| {
        let [flag, value] = pair else { return None };
        let is_flag = flag.starts_with('-') && !flag.contains('=') && flag.len() > 1;
        (is_flag
            && names_a_secret(flag)
            && !value.starts_with('-')
            && looks_like_a_secret_value(value))
        .then(|| {
            (
                index + 1,
                Finding {
                    what: "password or token",
                    redacted: format!("{flag} …"),
                    offset: 0,
                },
            )
        })
    })
}

/// Whether a key such as `DB_PASSWORD` or `--api-token` says that its value is a credential.
fn names_a_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_KEY_WORDS.iter().any(|part| key.contains(part))
        && !REFERENCE_KEY_WORDS.iter().any(|part| key.contains(part))
}

/// An environment variable whose name says it holds a credential and whose value looks like
/// one, not like a reference to one: `env = { DB_PASSWORD = "hunter2hunter2" }`. The value
/// alone is checked by [`find_secret`]; here the name is the `password=` that the value lacks.
pub(crate) fn find_secret_in_variable(name: &str, value: &str) -> Option<Finding> {
    // A long number is a count or a limit (`MAX_TOKENS = "100000000"`), not a password.
    (names_a_secret(name) && looks_like_a_secret_value(value)).then(|| Finding {
        what: "password or token",
        redacted: format!("{name}=…"),
        offset: 0,
    })
}

/// `Authorization: Bearer eyJhbGciOi…` in a curl command.
fn bearer_token(value: &str) -> Option<Finding> {
    let lower = value.to_ascii_lowercase();
    for (offset, _) in lower.match_indices("bearer ") {
        let token: String = value[offset + 7..]
            .chars()
            .take_while(|c| !c.is_whitespace() && *c != '"' && *c != '\'')
            .collect();
        if token.len() >= 16 && !is_reference(&token) {
            return Some(Finding {
                what: "bearer token",
                redacted: format!("{}…", &value[offset..offset + 7]),
                offset,
            });
        }
    }
    None
}

/// Whether a value refers to a secret kept elsewhere: an environment variable, a template, a
/// path or a placeholder such as `<password>`.
fn is_reference(value: &str) -> bool {
    value.starts_with(['$', '{', '/', '.', '~', '<', '%', '*'])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn what(value: &str) -> Option<&'static str> {
        find_secret(value).map(|finding| finding.what)
    }

    #[test]
    fn recognises_well_known_token_shapes() {
        let aws = find_secret("aws_key AKIAIOSFODNN7EXAMPLE").unwrap();
        assert_eq!(aws.what, "AWS access key");
        assert_eq!(aws.redacted, "AKIA…");
        assert_eq!(aws.offset, 8);
        assert_eq!(
            what("ghp_0123456789abcdefghij0123456789abcdef"),
            Some("GitHub token")
        );
        assert_eq!(
            what("github_pat_11ABCDEFG0123456789_abcdefghijkl"),
            Some("GitHub token")
        );
        assert_eq!(what("xoxb-1234567890-abcdef"), Some("Slack token"));
        assert_eq!(what("sk_live_4eC39HqLyjWDarjtT1zdp7dc"), Some("Stripe key"));
        assert_eq!(
            what("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk"),
            Some("private key")
        );
    }

    #[test]
    fn recognises_assigned_credentials_without_printing_them() {
        let finding = find_secret("--api-token=s3cr3tvalue123").unwrap();
        assert_eq!(finding.redacted, "--api-token=…");
        let finding = find_secret("export DB_PASSWORD=hunter2hunter2 && run").unwrap();
        assert_eq!(finding.redacted, "DB_PASSWORD=…");
        assert_eq!(finding.offset, 7);
        let finding = find_secret("postgres://keel:hunter2@db.internal/keel").unwrap();
        assert_eq!(finding.redacted, "postgres://keel:…@");
        let finding =
            find_secret("curl -H 'Authorization: Bearer abcdefghijklmnopqrstuvwxyz' x").unwrap();
        assert_eq!(finding.redacted, "Bearer …");
    }

    #[test]
    fn recognises_short_passwords_and_secrets_passed_as_the_next_argument() {
        let finding = find_secret("--password=hunter2").unwrap();
        assert_eq!(finding.redacted, "--password=…");
        let (index, finding) = find_secret_in_arguments(&[
            "aws",
            "--secret-access-key",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        ])
        .unwrap();
        assert_eq!(index, 2);
        assert_eq!(finding.redacted, "--secret-access-key …");
        assert_eq!(
            find_secret_in_arguments(&["load", "--password", "hunter2"]).map(|found| found.0),
            Some(2)
        );
        for arguments in [
            &["load", "--password", "$DB_PASSWORD"][..],
            &["load", "--password-file", "/run/secrets/db"],
            &["load", "--token", "{param.token}"],
            &["load", "--token", "--verbose"],
            &["load", "--max-tokens", "100000"],
            &["load", "--password", "none"],
            &["load", "password", "hunter2hunter2"],
        ] {
            assert_eq!(find_secret_in_arguments(arguments), None, "{arguments:?}");
        }
    }

    #[test]
    fn a_variable_named_like_a_credential_needs_no_equals_sign_in_its_value() {
        let finding = find_secret_in_variable("DB_PASSWORD", "hunter2hunter2").unwrap();
        assert_eq!(finding.redacted, "DB_PASSWORD=…");
        assert!(find_secret_in_variable("STATS_API_KEY", "k3y-0f-the-feed").is_some());
        for (name, value) in [
            ("DB_PASSWORD", "${DB_PASSWORD}"),
            ("DB_PASSWORD_FILE", "/run/secrets/db"),
            ("API_TOKEN", "short"),
            ("MAX_TOKENS", "100000000"),
            ("REGION", "eu-west-1-long-value"),
            ("SECRET_NAME", "STATS_API_KEY"),
        ] {
            assert_eq!(find_secret_in_variable(name, value), None, "{name}={value}");
        }
    }

    #[test]
    fn leaves_ordinary_values_alone() {
        for value in [
            "echo scraping {date}",
            "--token-file=/run/secrets/token",
            "--password=$DB_PASSWORD",
            "--token={partition}",
            "--token=none",
            "postgres://keel@db/keel",
            "postgres://keel:${PGPASSWORD}@db/keel",
            "sqlite:.keel/state.db",
            "MAKIAIOSFODNN7EXAMPLE1",
            "AKIA-short",
            "secret_name=STATS_API_KEY",
            "-----BEGIN CERTIFICATE-----\nMIIB",
            "Authorization: Bearer $TOKEN",
        ] {
            assert_eq!(find_secret(value), None, "{value}");
        }
    }
}
