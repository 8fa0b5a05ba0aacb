//! The reports of `keel audit`: a readable list, JSON, and SARIF 2.1.0 for code-scanning UIs.

use serde_json::{Value, json};

use super::rules::Rules;
use super::{Finding, Scanned};
use crate::display::count;

pub fn text(findings: &[Finding]) -> String {
    let mut out = String::new();
    for finding in findings {
        let description = Rules::all()
            .iter()
            .find(|rule| rule.id == finding.rule)
            .map_or("", |rule| rule.description);
        let commit = finding
            .commit
            .as_deref()
            .map(|commit| format!("{} ", &commit[..commit.len().min(12)]))
            .unwrap_or_default();
        out.push_str(&format!(
            "{commit}{}:{}:{}  {}  {description}\n    {}\n    fingerprint:{}\n",
            finding.path,
            finding.line,
            finding.column,
            finding.rule,
            finding.context,
            finding.fingerprint
        ));
    }
    out
}

pub fn json(findings: &[Finding], scanned: &Scanned) -> String {
    let report = json!({ "findings": findings, "scanned": scanned });
    format!(
        "{}\n",
        serde_json::to_string_pretty(&report).unwrap_or_default()
    )
}

pub fn sarif(findings: &[Finding]) -> String {
    let rules: Vec<Value> = Rules::all()
        .iter()
        .map(|rule| {
            json!({
                "id": rule.id,
                "shortDescription": { "text": rule.description },
                "defaultConfiguration": { "level": "error" },
            })
        })
        .collect();
    let results: Vec<Value> = findings
        .iter()
        .map(|finding| {
            let mut result = json!({
                "ruleId": finding.rule,
                "level": "error",
                "message": { "text": format!("{}: {}", finding.rule, finding.context) },
                "locations": [{
                    "physicalLocation": {
                        "artifactLocation": { "uri": finding.path },
                        "region": { "startLine": finding.line, "startColumn": finding.column },
                    }
                }],
                "partialFingerprints": { "keel/v1": finding.fingerprint },
            });
            if let Some(commit) = &finding.commit {
                result["properties"] = json!({ "commit": commit });
            }
            result
        })
        .collect();
    let report = json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": { "driver": {
                "name": "keel audit",
                "version": env!("CARGO_PKG_VERSION"),
                "rules": rules,
            }},
            "results": results,
        }],
    });
    format!(
        "{}\n",
        serde_json::to_string_pretty(&report).unwrap_or_default()
    )
}

/// One line for stderr: what was found, what was read and how fast.
pub fn summary(findings: &[Finding], scanned: &Scanned, allowlist: Option<&str>) -> String {
    let mut files: Vec<&str> = findings
        .iter()
        .map(|finding| finding.path.as_str())
        .collect();
    files.sort_unstable();
    files.dedup();
    let megabytes = scanned.bytes as f64 / 1e6;
    let rate = if scanned.seconds > 0.0 {
        megabytes / scanned.seconds
    } else {
        0.0
    };
    let mut line = format!(
        "{} in {}; scanned {}{} ({megabytes:.1} MB) in {:.2} s ({rate:.0} MB/s)",
        count(findings.len() as u64, "finding", "findings"),
        count(files.len() as u64, "file", "files"),
        if scanned.commits > 0 {
            format!(
                "{} of history, ",
                count(scanned.commits, "commit", "commits")
            )
        } else {
            String::new()
        },
        count(scanned.files, "file", "files"),
        scanned.seconds,
    );
    if scanned.skipped_binary + scanned.skipped_large > 0 {
        line.push_str(&format!(
            "; skipped {} binary and {} over 32 MiB",
            scanned.skipped_binary, scanned.skipped_large
        ));
    }
    if let Some(source) = allowlist {
        line.push_str(&format!("; {} allowed by {source}", scanned.allowed));
    }
    line
}
