//! The allowlist of `keel audit`: what is known to be harmless, one entry per line.
//!
//! ```text
//! # test fixtures hold fake keys
//! path:tests/fixtures/**
//! rule:jwt path:docs/**
//! fingerprint:config/app.env:generic-secret:3
//! ```

use std::path::Path;

use anyhow::Result;
use globset::{Glob, GlobMatcher};

use super::Finding;
use super::rules::Rules;
use crate::Exit;

/// One line: every part it names must match for a finding to be allowed.
#[derive(Default)]
struct Entry {
    path: Option<GlobMatcher>,
    rule: Option<String>,
    fingerprint: Option<String>,
}

#[derive(Default)]
pub struct Allowlist {
    entries: Vec<Entry>,
    source: Option<String>,
}

impl Allowlist {
    pub fn read(path: &Path) -> Result<Allowlist> {
        let text = std::fs::read_to_string(path).map_err(|error| {
            Exit::usage(format!(
                "cannot read the allowlist {} ({error}); give a readable file to --allowlist",
                path.display()
            ))
        })?;
        let mut allowlist = Allowlist::parse(&text).map_err(|(line, problem)| {
            Exit::usage(format!("{}:{line}: {problem}", path.display()))
        })?;
        allowlist.source = Some(path.display().to_string());
        Ok(allowlist)
    }

    /// The entries of `text`, or the first bad line's number and what is wrong with it.
    fn parse(text: &str) -> Result<Allowlist, (usize, String)> {
        let mut entries = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut entry = Entry::default();
            for part in line.split_whitespace() {
                let (kind, value) = part.split_once(':').unwrap_or((part, ""));
                if value.is_empty() {
                    return Err((index + 1, bad_entry(part)));
                }
                match kind {
                    "path" => {
                        let glob = Glob::new(value).map_err(|error| {
                            (index + 1, format!("bad glob {value:?} ({error}); write path:GLOB, e.g. path:tests/fixtures/**"))
                        })?;
                        entry.path = Some(glob.compile_matcher());
                    }
                    "rule" => {
                        let ids = Rules::all().iter().map(|rule| rule.id);
                        if !Rules::all().iter().any(|rule| rule.id == value) {
                            let suggestion = keel_model::closest(value, ids)
                                .map(|id| format!("did you mean rule:{id}? "))
                                .unwrap_or_default();
                            return Err((
                                index + 1,
                                format!(
                                    "unknown rule {value:?}; {suggestion}`keel audit --help` lists the rules"
                                ),
                            ));
                        }
                        entry.rule = Some(value.to_string());
                    }
                    "fingerprint" => entry.fingerprint = Some(value.to_string()),
                    _ => return Err((index + 1, bad_entry(part))),
                }
            }
            entries.push(entry);
        }
        Ok(Allowlist {
            entries,
            source: None,
        })
    }

    /// The file the entries came from, for the summary.
    pub fn source(&self) -> Option<&str> {
        self.source.as_deref()
    }

    /// Whether a file is left out altogether: an entry that names only a path.
    pub fn skips_path(&self, path: &str) -> bool {
        self.entries.iter().any(|entry| {
            entry.rule.is_none()
                && entry.fingerprint.is_none()
                && entry.path.as_ref().is_some_and(|glob| glob.is_match(path))
        })
    }

    pub fn allows(&self, finding: &Finding) -> bool {
        self.entries.iter().any(|entry| {
            entry
                .path
                .as_ref()
                .is_none_or(|glob| glob.is_match(&finding.path))
                && entry.rule.as_ref().is_none_or(|rule| rule == finding.rule)
                && entry
                    .fingerprint
                    .as_ref()
                    .is_none_or(|fingerprint| *fingerprint == finding.fingerprint)
        })
    }
}

fn bad_entry(part: &str) -> String {
    format!(
        "cannot read {part:?}; an entry is path:GLOB, rule:ID or fingerprint:FINGERPRINT (parts on one line must all match)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(path: &str, rule: &'static str, line: usize) -> Finding {
        Finding {
            rule,
            path: path.into(),
            line,
            column: 1,
            commit: None,
            fingerprint: format!("{path}:{rule}:{line}"),
            context: String::new(),
        }
    }

    #[test]
    fn entries_match_on_every_part_they_name() {
        let allowlist = Allowlist::parse(
            "# fixtures\npath:tests/fixtures/**\nrule:jwt path:docs/**\nfingerprint:app.env:generic-secret:3\n",
        )
        .unwrap();
        assert!(allowlist.skips_path("tests/fixtures/a/b.env"));
        assert!(!allowlist.skips_path("docs/api.md"));
        assert!(allowlist.allows(&finding("docs/api.md", "jwt", 9)));
        assert!(!allowlist.allows(&finding("docs/api.md", "github-token", 9)));
        assert!(allowlist.allows(&finding("app.env", "generic-secret", 3)));
        assert!(!allowlist.allows(&finding("app.env", "generic-secret", 4)));
    }

    #[test]
    fn a_bad_line_is_named_with_what_to_write() {
        let (line, problem) = Allowlist::parse("path:a/**\n\nrule:jtw\n").err().unwrap();
        assert_eq!(line, 3);
        assert!(problem.contains("did you mean rule:jwt"), "{problem}");
        let (line, problem) = Allowlist::parse("tests/**\n").err().unwrap();
        assert_eq!(line, 1);
        assert!(problem.contains("path:GLOB"), "{problem}");
    }
}
