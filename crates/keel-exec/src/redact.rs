//! Redaction of secret values in a stream of bytes: a task's captured output, a report's
//! message. Each secret is looked for as written, base64-encoded and URL-encoded; every
//! occurrence becomes `***`. A stream is redacted as it flows, holding back only as many bytes
//! as the longest form minus one, so a secret split across two reads is still caught.

use base64::Engine;

/// Shorter values are not redacted: replacing every `a1` in a log would say more than it hides.
pub const MIN_SECRET_LEN: usize = 4;

/// The forms of the secrets to hide, longest first.
#[derive(Debug, Default, Clone)]
pub struct Redactor {
    needles: Vec<Vec<u8>>,
    /// Bytes held back because a needle may start in them.
    carry: Vec<u8>,
}

impl Redactor {
    /// A redactor for `values`; values shorter than [`MIN_SECRET_LEN`] are ignored.
    pub fn new<'a>(values: impl IntoIterator<Item = &'a str>) -> Redactor {
        let mut needles: Vec<Vec<u8>> = Vec::new();
        for value in values {
            if value.len() < MIN_SECRET_LEN {
                continue;
            }
            let standard = base64::engine::general_purpose::STANDARD.encode(value);
            let forms = [
                value.to_string(),
                standard.clone(),
                standard.trim_end_matches('=').to_string(),
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value),
                url_encoded(value),
            ];
            for form in forms {
                if form.len() >= MIN_SECRET_LEN && !needles.iter().any(|n| n == form.as_bytes()) {
                    needles.push(form.into_bytes());
                }
            }
        }
        needles.sort_by_key(|needle| std::cmp::Reverse(needle.len()));
        Redactor {
            needles,
            carry: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    /// Redacts a whole text at once.
    pub fn redact_text(&self, text: &str) -> String {
        if self.needles.is_empty() {
            return text.to_string();
        }
        String::from_utf8_lossy(&self.replace(text.as_bytes())).into_owned()
    }

    /// Redacts a whole buffer at once.
    pub fn redact_bytes(&self, bytes: &[u8]) -> Vec<u8> {
        self.replace(bytes)
    }

    /// Takes the next bytes of a stream; returns what may be written now, redacted.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<u8> {
        if self.needles.is_empty() {
            return bytes.to_vec();
        }
        self.carry.extend_from_slice(bytes);
        let replaced = self.replace(&self.carry);
        // Hold back a tail that could be the start of a needle; it is never part of a `***`
        // (a replacement ends with the needle it replaced, so the tail after it is fresh).
        let hold = self.longest() - 1;
        let (emit, keep) = split_keeping_tail(&replaced, hold);
        self.carry = keep.to_vec();
        emit.to_vec()
    }

    /// The end of the stream: what was held back, redacted.
    pub fn finish(&mut self) -> Vec<u8> {
        let rest = std::mem::take(&mut self.carry);
        self.replace(&rest)
    }

    fn longest(&self) -> usize {
        self.needles.first().map_or(1, Vec::len)
    }

    fn replace(&self, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(bytes.len());
        let mut index = 0;
        'outer: while index < bytes.len() {
            for needle in &self.needles {
                if bytes[index..].starts_with(needle) {
                    out.extend_from_slice(b"***");
                    index += needle.len();
                    continue 'outer;
                }
            }
            out.push(bytes[index]);
            index += 1;
        }
        out
    }
}

/// Splits `bytes` so the last `hold` bytes are kept back, unless they are the tail of a `***`.
fn split_keeping_tail(bytes: &[u8], hold: usize) -> (&[u8], &[u8]) {
    let at = bytes.len().saturating_sub(hold);
    bytes.split_at(at)
}

/// `value` as a URL would carry it: unreserved bytes as they are, every other byte `%XX`.
pub(crate) fn url_encoded(value: &str) -> String {
    value
        .bytes()
        .map(|byte| match byte {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "k8Tq/2vL+m9x?R4";

    #[test]
    fn every_form_is_hidden_in_a_text() {
        let redactor = Redactor::new([SECRET]);
        let base64 = base64::engine::general_purpose::STANDARD.encode(SECRET);
        let text = format!("a {SECRET} b {base64} c {} d", url_encoded(SECRET));
        assert_eq!(redactor.redact_text(&text), "a *** b *** c *** d");
    }

    #[test]
    fn a_secret_split_across_reads_is_still_hidden() {
        let text = format!("token={SECRET}; again {SECRET}\n");
        for cut in 0..text.len() {
            let mut redactor = Redactor::new([SECRET]);
            let mut out = redactor.feed(&text.as_bytes()[..cut]);
            out.extend(redactor.feed(&text.as_bytes()[cut..]));
            out.extend(redactor.finish());
            assert_eq!(
                String::from_utf8(out).unwrap(),
                "token=***; again ***\n",
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn short_values_and_no_values_change_nothing() {
        let mut redactor = Redactor::new(["ab"]);
        assert!(redactor.is_empty());
        assert_eq!(redactor.feed(b"ab cd"), b"ab cd");
    }
}
