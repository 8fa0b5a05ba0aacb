//! What `keel audit` looks for: one rule per kind of secret, each a regular expression over the
//! bytes of a file, and the checks that tell a secret from a look-alike (a reference, a
//! placeholder, a documentation example, a low-entropy word).
//!
//! Rules run over a whole file at once (the expressions never cross a line), so a large tree is
//! scanned at the speed of the regex engine, not line by line.

use regex::bytes::{Regex, RegexSet};

/// One kind of secret.
pub struct Rule {
    /// A stable identifier, used in reports and in the allowlist (`rule:ID`).
    pub id: &'static str,
    pub description: &'static str,
    /// The expression; its group named `secret` (or the whole match) is the secret.
    pattern: &'static str,
    /// Checks the secret must also pass (entropy, not a placeholder).
    confirm: Confirm,
}

#[derive(Clone, Copy)]
enum Confirm {
    /// The shape alone is specific enough.
    Shape,
    /// A value assigned to a credential-named key: it must look random, not like a word, a
    /// reference or a placeholder.
    Assigned,
}

const RULES: &[Rule] = &[
    Rule {
        id: "private-key",
        description: "a private key (PEM or OpenSSH)",
        pattern: r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |PGP |ENCRYPTED )?PRIVATE KEY(?: BLOCK)?-----",
        confirm: Confirm::Shape,
    },
    Rule {
        id: "aws-access-key-id",
        description: "an AWS access key id",
        pattern: r"\b(?P<secret>(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16})\b",
        confirm: Confirm::Shape,
    },
    Rule {
        id: "aws-secret-access-key",
        description: "an AWS secret access key",
        pattern: r#"(?i)aws_?secret_?(?:access_?)?key["']?(?:\s*(?:=|:|=>|:=)\s*|\s+)["']?(?P<secret>[A-Za-z0-9/+]{40})(?:[^A-Za-z0-9/+=]|$)"#,
        confirm: Confirm::Shape,
    },
    Rule {
        id: "github-token",
        description: "a GitHub token",
        pattern: r"\b(?P<secret>gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{82})\b",
        confirm: Confirm::Shape,
    },
    Rule {
        id: "gitlab-token",
        description: "a GitLab personal access token",
        pattern: r"\b(?P<secret>glpat-[A-Za-z0-9_-]{20,})",
        confirm: Confirm::Shape,
    },
    Rule {
        id: "slack-token",
        description: "a Slack token",
        pattern: r"\b(?P<secret>xox[baprs]-[0-9]{8,}-[A-Za-z0-9-]{8,})",
        confirm: Confirm::Shape,
    },
    Rule {
        id: "slack-webhook",
        description: "a Slack incoming webhook URL",
        pattern: r"(?P<secret>https://hooks\.slack\.com/(?:services|workflows)/T[A-Z0-9]{6,}/[AB][A-Z0-9]{6,}/[A-Za-z0-9]{16,})",
        confirm: Confirm::Shape,
    },
    Rule {
        id: "stripe-key",
        description: "a Stripe secret or restricted key",
        pattern: r"\b(?P<secret>(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{20,})\b",
        confirm: Confirm::Shape,
    },
    Rule {
        id: "google-api-key",
        description: "a Google API key",
        pattern: r"\b(?P<secret>AIza[0-9A-Za-z_-]{35})(?:[^0-9A-Za-z_-]|$)",
        confirm: Confirm::Shape,
    },
    Rule {
        id: "openai-key",
        description: "an OpenAI API key",
        pattern: r"\b(?P<secret>sk-(?:proj-|svcacct-)?[A-Za-z0-9_-]{20,}T3BlbkFJ[A-Za-z0-9_-]{20,})",
        confirm: Confirm::Shape,
    },
    Rule {
        id: "sendgrid-key",
        description: "a SendGrid API key",
        pattern: r"\b(?P<secret>SG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43})\b",
        confirm: Confirm::Shape,
    },
    Rule {
        id: "npm-token",
        description: "an npm access token",
        pattern: r"\b(?P<secret>npm_[A-Za-z0-9]{36})\b",
        confirm: Confirm::Shape,
    },
    Rule {
        id: "jwt",
        description: "a JSON Web Token",
        pattern: r"\b(?P<secret>eyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{16,})",
        confirm: Confirm::Shape,
    },
    Rule {
        id: "cli-password",
        description: "a password on a database client's command line (-pPASSWORD)",
        pattern: r"\b(?:mysql|mysqldump|mysqladmin|mariadb)\b[^\n]*?[ \t]-p(?P<secret>[^\s'\x22`]{6,128})",
        confirm: Confirm::Assigned,
    },
    Rule {
        id: "url-password",
        description: "a password in a URL",
        pattern: r"[a-zA-Z][a-zA-Z0-9+.-]{1,20}://[^\s:@/'\x22]{1,64}:(?P<secret>(?:%[0-9A-Fa-f]{2}|[^\s:@/'\x22$<{%])[^\s:@/'\x22]{2,127})@[A-Za-z0-9.-]+",
        confirm: Confirm::Assigned,
    },
    Rule {
        id: "generic-secret",
        description: "a literal value assigned to a credential-named key",
        pattern: r#"(?i)(?:^|[^a-z0-9])[a-z0-9_.-]*(?:secret|passw(?:or)?d|passphrase|token|api[_-]?key|apikey|access[_-]?key|private[_-]?key|client[_-]?secret|auth[_-]?key|credentials?)[a-z0-9_.-]*["']?[ \t]*(?::[ \t]*&?[a-z_][a-z0-9_:<>]*[ \t]*)?(?:=|:|=>|:=)[ \t]*(?:["'](?P<secret>[^"'\s]{8,200})["']|(?P<bare>[^"'`\s,;#:({\[-][^"'`\s,;]{7,199}))"#,
        confirm: Confirm::Assigned,
    },
];

/// Values seen in documentation and tutorials, never real.
const DOCUMENTATION_EXAMPLES: &[&str] = &[
    "AKIAIOSFODNN7EXAMPLE",
    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
];

/// Words inside a value that say it is a placeholder.
const PLACEHOLDER_WORDS: &[&str] = &[
    "example",
    "changeme",
    "change_me",
    "change-me",
    "placeholder",
    "your_",
    "your-",
    "yourpassword",
    "xxxx",
    "****",
    "redacted",
    "dummy",
    "sample",
    "replace",
    "insert",
    "todo",
    "fixme",
    "<",
    "...",
    "…",
];

/// A secret found in a file: the rule and the byte range of the secret in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub rule: &'static str,
    pub start: usize,
    pub end: usize,
}

/// The compiled rules.
pub struct Rules {
    set: RegexSet,
    compiled: Vec<(Regex, &'static Rule)>,
}

impl Rules {
    pub fn new() -> Rules {
        // ASCII classes and word boundaries: files are bytes, and the rules' shapes are ASCII.
        let patterns: Vec<String> = RULES
            .iter()
            .map(|rule| format!("(?-u){}", rule.pattern))
            .collect();
        // The patterns are constants of this file, checked by the tests.
        let set = RegexSet::new(&patterns).expect("the audit rules compile");
        let compiled = patterns
            .iter()
            .zip(RULES)
            .map(|(pattern, rule)| (Regex::new(pattern).expect("an audit rule compiles"), rule))
            .collect();
        Rules { set, compiled }
    }

    /// Every rule, for reports (SARIF lists them).
    pub fn all() -> &'static [Rule] {
        RULES
    }

    /// The secrets in `text`, in order of position; where rules overlap, the more specific
    /// (earlier) rule wins.
    pub fn scan(&self, text: &[u8]) -> Vec<Hit> {
        let mut hits: Vec<Hit> = Vec::new();
        for index in self.set.matches(text).iter() {
            let (regex, rule) = &self.compiled[index];
            for captures in regex.captures_iter(text) {
                let bare = captures.name("bare");
                let Some(secret) = captures.name("secret").or(bare).or_else(|| captures.get(0))
                else {
                    continue;
                };
                if !confirmed(rule.confirm, secret.as_bytes(), bare.is_none()) {
                    continue;
                }
                let hit = Hit {
                    rule: rule.id,
                    start: secret.start(),
                    end: secret.end(),
                };
                if !hits
                    .iter()
                    .any(|seen| seen.start < hit.end && hit.start < seen.end)
                {
                    hits.push(hit);
                }
            }
        }
        hits.sort_by_key(|hit| hit.start);
        hits
    }
}

fn confirmed(confirm: Confirm, secret: &[u8], quoted: bool) -> bool {
    let Ok(secret) = std::str::from_utf8(secret) else {
        return false;
    };
    if DOCUMENTATION_EXAMPLES.contains(&secret) {
        return false;
    }
    match confirm {
        Confirm::Shape => true,
        Confirm::Assigned => looks_random(secret, quoted),
    }
}

/// Whether a value assigned to a credential-named key is a secret: not a reference to one
/// (`$VAR`, `${VAR}`, `{{ var }}`, `%s`, `arn:…`, a path, a call), not a placeholder, and
/// random enough — mixed character classes and enough entropy — not to be a word or an
/// identifier. An unquoted value is also taken for code when it reads like code
/// (`TokenSource::Generated`, `os.environ[…]`, `*alias`).
pub fn looks_random(value: &str, quoted: bool) -> bool {
    let lower = value.to_ascii_lowercase();
    let scheme = lower.split_once(':').is_some_and(|(scheme, _)| {
        (2..=16).contains(&scheme.len())
            && scheme
                .bytes()
                .all(|byte| byte.is_ascii_lowercase() || byte == b'-')
    });
    // `%s`, `%(name)s` are format strings; `%2A…` is a percent-encoded character.
    let format_string = value.starts_with('%')
        && !value
            .as_bytes()
            .get(1..3)
            .is_some_and(|pair| pair.iter().all(u8::is_ascii_hexdigit));
    if value.starts_with(['$', '{', '<'])
        || format_string
        || value.contains("${")
        || value.contains("{{")
        || value.contains("{:")
        || value.contains("{}")
        || value.contains("()")
        || scheme
        || PLACEHOLDER_WORDS.iter().any(|word| lower.contains(word))
    {
        return false;
    }
    let path = value.starts_with(['/', '~']) || value.starts_with("./");
    let code = !quoted
        && (value.starts_with(['.', '(', '[', '@', '&', '*', '!'])
            || value.contains(['(', '['])
            || value.contains("::"));
    if path || code {
        return false;
    }
    // Identifiers and dotted names (`settings.API_TOKEN`, `get_password`, `TOKEN_FILE`,
    // `getApiToken`) — but not letters in random case (`TyTaXKELZP`), which no one names a
    // thing.
    let identifier = value
        .bytes()
        .all(|byte| byte.is_ascii_alphabetic() || byte == b'_' || byte == b'.' || byte == b'-');
    if identifier && !random_case(value) {
        return false;
    }
    let classes = [
        value.bytes().any(|byte| byte.is_ascii_lowercase()),
        value.bytes().any(|byte| byte.is_ascii_uppercase()),
        value.bytes().any(|byte| byte.is_ascii_digit()),
        value.bytes().any(|byte| !byte.is_ascii_alphanumeric()),
    ]
    .iter()
    .filter(|present| **present)
    .count();
    // One class only: a number (a count, a port) or a word.
    if classes < 2 {
        return false;
    }
    entropy(value) >= MIN_ENTROPY
}

/// Whether the letters of a value switch case like a random string, not like an identifier:
/// camelCase and PascalCase switch once per word, a random string about every other letter.
fn random_case(value: &str) -> bool {
    let letters: Vec<bool> = value
        .bytes()
        .filter(u8::is_ascii_alphabetic)
        .map(|byte| byte.is_ascii_uppercase())
        .collect();
    let switches = letters.windows(2).filter(|pair| pair[0] != pair[1]).count();
    letters.len() >= 10 && switches * 3 >= letters.len()
}

/// Bits per byte below which an assigned value is taken for a word with a digit or two:
/// `hunter22` (2.75) is flagged, `aaaa1111` (1.0) is not.
const MIN_ENTROPY: f64 = 2.5;

/// Shannon entropy in bits per byte.
pub fn entropy(value: &str) -> f64 {
    let mut counts = [0u32; 256];
    for byte in value.bytes() {
        counts[usize::from(byte)] += 1;
    }
    let length = value.len() as f64;
    counts
        .iter()
        .filter(|count| **count > 0)
        .map(|count| {
            let share = f64::from(*count) / length;
            -share * share.log2()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules_of(text: &str) -> Vec<&'static str> {
        Rules::new()
            .scan(text.as_bytes())
            .into_iter()
            .map(|hit| hit.rule)
            .collect()
    }

    #[test]
    fn every_rule_compiles_and_has_a_unique_id() {
        let rules = Rules::new();
        assert_eq!(rules.compiled.len(), RULES.len());
        let mut ids: Vec<_> = RULES.iter().map(|rule| rule.id).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), RULES.len());
    }

    #[test]
    fn finds_each_kind_and_the_exact_span_of_the_secret() {
        let text = "export AWS_ACCESS_KEY_ID=AKIAQ3EGRSZKX7MDPL2T\n";
        let hits = Rules::new().scan(text.as_bytes());
        assert_eq!(hits.len(), 1);
        assert_eq!(&text[hits[0].start..hits[0].end], "AKIAQ3EGRSZKX7MDPL2T");
        assert_eq!(
            rules_of("DB_PASSWORD=k8Tq2vLm9xR4wZ\n"),
            vec!["generic-secret"]
        );
        assert_eq!(
            rules_of("url: postgres://app:k8Tq%402vLm9x@db.internal:5432/app"),
            vec!["url-password"]
        );
        assert_eq!(
            rules_of("-----BEGIN OPENSSH PRIVATE KEY-----"),
            vec!["private-key"]
        );
    }

    #[test]
    fn leaves_references_placeholders_and_words_alone() {
        for text in [
            "password = ${DB_PASSWORD}",
            "password: \"{{ vault_password }}\"",
            "token = os.environ[\"API_TOKEN\"]",
            "api_key = get_api_key()",
            "secret_name = STATS_API_KEY",
            "password = \"changeme123\"",
            "password = \"<your password>\"",
            "AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE",
            "max_tokens = 100000000",
            "token_file = /run/secrets/token",
            "postgres://app:${PGPASSWORD}@db/app",
            "postgres://app:%s@db/app",
            "AWS_ACCESS_KEY_ID=\"AKIA{:016}\"",
            "| `cli-password` | `mysql -pPASSWORD` and its kin |",
            "password_hash = sha256",
            "sha = 3f786850e387550fdab836ed7e6dc881de23001b",
            "let source = TokenSource::Generated2;",
            "use crate::secrets::{find_secret, Other2};",
        ] {
            assert!(rules_of(text).is_empty(), "{text}: {:?}", rules_of(text));
        }
    }

    #[test]
    fn entropy_tells_words_from_random_strings() {
        assert!(entropy("aaaaaaaa") < 0.1);
        assert!(entropy("k8Tq2vLm9xR4wZ") > 3.5);
        assert!(!looks_random("aaaa1111", true));
        assert!(looks_random("TyTaXKELZP", false));
        for identifier in [
            "getApiTokenFromEnvironment",
            "SESSION_TOKEN_NAME",
            "settings.ApiToken",
        ] {
            assert!(!looks_random(identifier, false), "{identifier}");
        }
        assert!(looks_random("hunter22", true));
        assert!(looks_random("*k8Tq2vLm9x", true));
        assert!(!looks_random("*k8Tq2vLm9x", false));
        assert!(!looks_random(
            "arn:aws:secretsmanager:eu-west-1:1234:secret:db-Ab12",
            true
        ));
        assert!(looks_random("k8Tq2vLm9xR4wZ", false));
    }
}
