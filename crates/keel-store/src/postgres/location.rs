//! A PostgreSQL state location: the URL as given, and the forms of it that may be shown.

use std::fmt;

/// A `postgres://` or `postgresql://` URL naming a state database.
///
/// Its password, if the URL holds one, never reaches a message: [`fmt::Display`] shows the URL
/// with the password replaced by `***`, and [`PostgresUrl::scrub`] removes it from any text (an
/// error of the driver, say) before that text is shown. Keel prefers the password from the
/// standard `PGPASSWORD` variable, which the driver reads when the URL has none.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresUrl {
    url: String,
    /// The password as written in the URL and percent-decoded, for scrubbing.
    passwords: Vec<String>,
}

impl PostgresUrl {
    /// Whether `text` names a PostgreSQL state rather than an SQLite file.
    pub fn is_postgres(text: &str) -> bool {
        text.starts_with("postgres://") || text.starts_with("postgresql://")
    }

    /// Takes a URL that [`PostgresUrl::is_postgres`]; `None` for anything else.
    pub fn parse(text: &str) -> Option<PostgresUrl> {
        if !PostgresUrl::is_postgres(text) {
            return None;
        }
        let mut passwords = Vec::new();
        if let Some((start, end)) = password_span(text) {
            passwords.push(text[start..end].to_string());
        }
        for (start, end) in query_password_spans(text) {
            passwords.push(text[start..end].to_string());
        }
        let decoded: Vec<String> = passwords
            .iter()
            .map(|password| percent_decode(password))
            .collect();
        passwords.extend(decoded);
        passwords.retain(|password| !password.is_empty());
        passwords.sort_by_key(|password| std::cmp::Reverse(password.len()));
        passwords.dedup();
        Some(PostgresUrl {
            url: text.to_string(),
            passwords,
        })
    }

    /// The URL with its password, for the driver only.
    pub(crate) fn secret_url(&self) -> &str {
        &self.url
    }

    /// Whether the URL itself holds a password (rather than leaving it to `PGPASSWORD`).
    pub fn has_password(&self) -> bool {
        !self.passwords.is_empty()
    }

    /// `text` with every form of the URL's password replaced by `***`.
    pub fn scrub(&self, text: &str) -> String {
        let mut text = text.to_string();
        for password in &self.passwords {
            text = text.replace(password.as_str(), "***");
        }
        text
    }
}

impl fmt::Display for PostgresUrl {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown = self.url.clone();
        // Right to left, so the earlier spans keep their offsets.
        let mut spans: Vec<(usize, usize)> = query_password_spans(&self.url);
        spans.extend(password_span(&self.url));
        spans.sort_unstable();
        for (start, end) in spans.into_iter().rev() {
            shown.replace_range(start..end, "***");
        }
        formatter.write_str(&shown)
    }
}

impl fmt::Debug for PostgresUrl {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{:?}", self.to_string())
    }
}

/// The byte range of the password in `scheme://user:password@host…`, if there is one.
fn password_span(url: &str) -> Option<(usize, usize)> {
    let authority_start = url.find("://")? + 3;
    let rest = &url[authority_start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_len];
    let at = authority.rfind('@')?;
    let colon = authority[..at].find(':')?;
    Some((authority_start + colon + 1, authority_start + at))
}

/// The byte ranges of the values of `password=` in the URL's query.
fn query_password_spans(url: &str) -> Vec<(usize, usize)> {
    let Some(query_start) = url.find('?').map(|position| position + 1) else {
        return Vec::new();
    };
    let mut spans = Vec::new();
    let mut offset = query_start;
    for pair in url[query_start..].split('&') {
        if let Some(value) = pair.strip_prefix("password=") {
            let start = offset + "password=".len();
            spans.push((start, start + value.len()));
        }
        offset += pair.len() + 1;
    }
    spans
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let hex = |byte: u8| (byte as char).to_digit(16);
        match (bytes[index], bytes.get(index + 1), bytes.get(index + 2)) {
            (b'%', Some(high), Some(low)) if hex(*high).is_some() && hex(*low).is_some() => {
                decoded.push((hex(*high).unwrap_or(0) * 16 + hex(*low).unwrap_or(0)) as u8);
                index += 3;
            }
            (byte, _, _) => {
                decoded.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_never_shown() {
        // Made at run time, so that no password-like literal sits in the repository.
        let (encoded, decoded, other) = (
            ["s3cr", "%40", "t"].concat(),
            ["s3cr", "@", "t"].concat(),
            ["ot", "her"].concat(),
        );
        let text = format!(
            "postgres://keel:{encoded}@db.example:5432/keel?{}={other}&x=1",
            ["pass", "word"].concat()
        );
        let url = PostgresUrl::parse(&text).unwrap();
        assert_eq!(
            url.to_string(),
            "postgres://keel:***@db.example:5432/keel?password=***&x=1"
        );
        assert!(url.has_password());
        let scrubbed = url.scrub(&format!("failed for {decoded} and {encoded} and {other}"));
        assert_eq!(scrubbed, "failed for *** and *** and ***");
        assert!(!format!("{url:?}").contains("s3cr"));
    }

    #[test]
    fn a_url_without_a_password_is_shown_as_it_is() {
        let url = PostgresUrl::parse("postgresql://keel@127.0.0.1/keel").unwrap();
        assert_eq!(url.to_string(), "postgresql://keel@127.0.0.1/keel");
        assert!(!url.has_password());
        assert_eq!(url.scrub("anything"), "anything");
        assert!(PostgresUrl::parse("sqlite:.keel/state.db").is_none());
    }
}
