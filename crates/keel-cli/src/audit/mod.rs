//! `keel audit [PATH] [--history]`: Keel's own secret scanner, so that a credential committed
//! to a repository (an `.env` file, a config, a script) is found before it leaks further.
//!
//! Files come from a walk that respects `.gitignore` (and `.git/info/exclude`), plus every
//! tracked `.env` file even when it is ignored; `--history` scans the lines each commit added
//! instead. Rules are in [`rules`]; an allowlist silences what is known to be harmless; the
//! report is text, JSON or SARIF. No report ever holds a secret: each finding shows its line
//! with every secret on it replaced by `***`.

mod allow;
mod report;
pub mod rules;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result};

use crate::Exit;
use crate::args::{AuditArgs, AuditFormat};
use allow::Allowlist;
use rules::{Hit, Rules};

/// The allowlist read from the scanned directory when `--allowlist` is not given.
pub const DEFAULT_ALLOWLIST: &str = ".keel-audit-allow";

/// Files larger than this are skipped (and counted): secrets live in text files, not in data
/// dumps, and a scan must not read a 10 GB file into memory.
const MAX_FILE_BYTES: u64 = 32 << 20;

/// The longest line of a diff that `--history` keeps; the rest is cut (minified files).
const MAX_DIFF_LINE: usize = 64 << 10;

/// How much of a finding's line the report shows.
const CONTEXT_CHARS: usize = 160;

/// One secret found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Finding {
    pub rule: &'static str,
    pub path: String,
    /// 1-based.
    pub line: usize,
    /// 1-based, in bytes.
    pub column: usize,
    /// The commit that added the line (`--history` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// What the allowlist names to silence this finding: `PATH:RULE:LINE`, with the commit
    /// first under `--history`. It holds nothing derived from the secret.
    pub fingerprint: String,
    /// The line, every secret on it replaced by `***`.
    pub context: String,
}

/// What was read.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Scanned {
    pub files: u64,
    pub bytes: u64,
    pub skipped_binary: u64,
    pub skipped_large: u64,
    pub commits: u64,
    pub allowed: u64,
    pub seconds: f64,
}

pub fn audit(args: AuditArgs) -> Result<u8> {
    let root = args.path.clone();
    if !root.exists() {
        return Err(Exit::usage(format!(
            "{} does not exist; give a directory or file to scan (the default is the current directory)",
            root.display()
        )));
    }
    let allowlist = match &args.allowlist {
        Some(path) => Allowlist::read(path)?,
        None => {
            let beside = root.join(DEFAULT_ALLOWLIST);
            if root.is_dir() && beside.is_file() {
                Allowlist::read(&beside)?
            } else {
                Allowlist::default()
            }
        }
    };
    let rules = Rules::new();
    let started = Instant::now();
    let (mut findings, mut scanned) = if args.history {
        scan_history(&root, &rules, &allowlist)?
    } else {
        scan_tree(&root, &rules, &allowlist)?
    };
    scanned.seconds = started.elapsed().as_secs_f64();
    findings.sort_by(|a, b| {
        (&a.commit, &a.path, a.line, a.column).cmp(&(&b.commit, &b.path, b.line, b.column))
    });
    let text = match args.format {
        AuditFormat::Text => report::text(&findings),
        AuditFormat::Json => report::json(&findings, &scanned),
        AuditFormat::Sarif => report::sarif(&findings),
    };
    match &args.output {
        Some(path) => std::fs::write(path, &text)
            .with_context(|| format!("cannot write the report to {}", path.display()))?,
        None => print!("{text}"),
    }
    eprintln!(
        "{}",
        report::summary(&findings, &scanned, allowlist.source())
    );
    if findings.is_empty() {
        Ok(0)
    } else {
        eprintln!(
            "hint: move each secret out of the repository and rotate it; silence a false alarm with a \
             line `fingerprint:FINGERPRINT` (or `path:GLOB`, `rule:ID`) in {DEFAULT_ALLOWLIST}"
        );
        Ok(1)
    }
}

/// Scans a tree with no allowlist (for `keel bench`).
pub fn scan(root: &Path) -> Result<(Vec<Finding>, Scanned)> {
    scan_tree(root, &Rules::new(), &Allowlist::default())
}

/// The files of the tree (or the one file), scanned on every core.
fn scan_tree(root: &Path, rules: &Rules, allowlist: &Allowlist) -> Result<(Vec<Finding>, Scanned)> {
    let files = if root.is_file() {
        vec![(
            root.to_path_buf(),
            display_path(root, root.parent().unwrap_or(root)),
        )]
    } else {
        tree_files(root)?
    };
    let files: Vec<_> = files
        .into_iter()
        .filter(|(_, shown)| !allowlist.skips_path(shown))
        .collect();
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    let chunk = files.len().div_ceil(workers).max(1);
    let results: Vec<(Vec<Finding>, Scanned)> = std::thread::scope(|scope| {
        let handles: Vec<_> = files
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    let mut findings = Vec::new();
                    let mut scanned = Scanned::default();
                    for (path, shown) in part {
                        scan_file(path, shown, rules, allowlist, &mut findings, &mut scanned);
                    }
                    (findings, scanned)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().unwrap_or_default())
            .collect()
    });
    let mut findings = Vec::new();
    let mut scanned = Scanned::default();
    for (part, counts) in results {
        findings.extend(part);
        scanned.files += counts.files;
        scanned.bytes += counts.bytes;
        scanned.skipped_binary += counts.skipped_binary;
        scanned.skipped_large += counts.skipped_large;
        scanned.allowed += counts.allowed;
    }
    Ok((findings, scanned))
}

fn scan_file(
    path: &Path,
    shown: &str,
    rules: &Rules,
    allowlist: &Allowlist,
    findings: &mut Vec<Finding>,
    scanned: &mut Scanned,
) {
    // Unreadable files (permissions, a file removed during the walk) are skipped: the scan
    // reports what it could read, it does not stop.
    let Ok(file) = std::fs::File::open(path) else {
        return;
    };
    let mut bytes = Vec::new();
    if file
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .is_err()
    {
        return;
    }
    if bytes.len() as u64 > MAX_FILE_BYTES {
        scanned.skipped_large += 1;
        return;
    }
    if bytes[..bytes.len().min(8192)].contains(&0) {
        scanned.skipped_binary += 1;
        return;
    }
    scanned.files += 1;
    scanned.bytes += bytes.len() as u64;
    let hits = rules.scan(&bytes);
    for finding in findings_in(&bytes, &hits, shown, None, |line| line) {
        if allowlist.allows(&finding) {
            scanned.allowed += 1;
        } else {
            findings.push(finding);
        }
    }
}

/// Turns hits into findings: line, column, masked context. `line_number` maps the line's
/// position in `bytes` (1-based) to the line number shown (a diff's lines map to the file's).
fn findings_in(
    bytes: &[u8],
    hits: &[Hit],
    path: &str,
    commit: Option<&str>,
    line_number: impl Fn(usize) -> usize,
) -> Vec<Finding> {
    let mut findings = Vec::new();
    let mut line = 1;
    let mut line_start = 0;
    let mut cursor = 0;
    for hit in hits {
        for (offset, byte) in bytes[cursor..hit.start].iter().enumerate() {
            if *byte == b'\n' {
                line += 1;
                line_start = cursor + offset + 1;
            }
        }
        cursor = hit.start;
        let line_end = bytes[line_start..]
            .iter()
            .position(|byte| *byte == b'\n')
            .map_or(bytes.len(), |end| line_start + end);
        let shown_line = line_number(line);
        let fingerprint = match commit {
            Some(commit) => format!("{commit}:{path}:{}:{shown_line}", hit.rule),
            None => format!("{path}:{}:{shown_line}", hit.rule),
        };
        findings.push(Finding {
            rule: hit.rule,
            path: path.to_string(),
            line: shown_line,
            column: hit.start - line_start + 1,
            commit: commit.map(str::to_string),
            fingerprint,
            context: masked_line(bytes, line_start, line_end, hits),
        });
    }
    findings
}

/// The line with every hit on it replaced by `***`, trimmed and cut to a readable length.
fn masked_line(bytes: &[u8], start: usize, end: usize, hits: &[Hit]) -> String {
    let mut masked = Vec::with_capacity(end - start);
    let mut position = start;
    for hit in hits.iter().filter(|hit| hit.start < end && hit.end > start) {
        let from = hit.start.max(position);
        masked.extend_from_slice(&bytes[position..from]);
        masked.extend_from_slice(b"***");
        position = hit.end.min(end).max(position);
    }
    masked.extend_from_slice(&bytes[position.min(end)..end]);
    let text = String::from_utf8_lossy(&masked);
    let text = text.trim();
    match text.char_indices().nth(CONTEXT_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// Every file of the tree a scan reads: the walk (respecting `.gitignore`), and the tracked
/// `.env` files the walk left out. Each with the path shown in reports (relative, `/`).
fn tree_files(root: &Path) -> Result<Vec<(PathBuf, String)>> {
    let mut files = Vec::new();
    let walk = ignore::WalkBuilder::new(root)
        .hidden(false)
        .git_ignore(true)
        .git_exclude(true)
        .git_global(false)
        .require_git(false)
        .parents(true)
        .filter_entry(|entry| entry.file_name() != ".git")
        .build();
    for entry in walk {
        let Ok(entry) = entry else { continue };
        if entry.file_type().is_some_and(|kind| kind.is_file()) {
            let path = entry.into_path();
            let shown = display_path(&path, root);
            files.push((path, shown));
        }
    }
    for tracked in tracked_env_files(root) {
        let path = root.join(&tracked);
        if path.is_file() && !files.iter().any(|(_, shown)| *shown == tracked) {
            files.push((path, tracked));
        }
    }
    files.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(files)
}

/// Tracked files named `.env`, `.env.*` or `*.env`, relative to `root`; none outside a git
/// work tree or without git.
fn tracked_env_files(root: &Path) -> Vec<String> {
    let listing = match Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["ls-files", "-z"])
        .stderr(Stdio::null())
        .output()
    {
        Ok(output) if output.status.success() => output.stdout,
        _ => return Vec::new(),
    };
    listing
        .split(|byte| *byte == 0)
        .filter_map(|name| std::str::from_utf8(name).ok())
        .filter(|name| is_env_file(name))
        .map(str::to_string)
        .collect()
}

fn is_env_file(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name == ".env" || name.starts_with(".env.") || name.ends_with(".env")
}

fn display_path(path: &Path, root: &Path) -> String {
    let relative = path.strip_prefix(root).unwrap_or(path);
    let shown = relative.to_string_lossy().replace('\\', "/");
    if shown.is_empty() {
        path.file_name().map_or_else(
            || path.to_string_lossy().into_owned(),
            |name| name.to_string_lossy().into_owned(),
        )
    } else {
        shown
    }
}

/// The lines every commit added (`git log -p`), scanned per commit and file, streamed so the
/// history of a large repository never sits in memory.
fn scan_history(
    root: &Path,
    rules: &Rules,
    allowlist: &Allowlist,
) -> Result<(Vec<Finding>, Scanned)> {
    let directory = if root.is_dir() {
        root
    } else {
        root.parent().unwrap_or(root)
    };
    let mut child = Command::new("git")
        .arg("-C")
        .arg(directory)
        .args([
            "log",
            "-p",
            "--all",
            "--no-textconv",
            "--no-ext-diff",
            "--no-color",
            "--no-renames",
            "-U0",
            "--format=commit %H",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| {
            Exit::usage(format!(
                "cannot run git to read the history ({error}); install git, or scan without --history"
            ))
        })?;
    let stdout = child.stdout.take().context("git log has no output")?;
    let mut reader = BufReader::new(stdout);
    let mut findings = Vec::new();
    let mut scanned = Scanned::default();
    let mut added = Added::default();
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = (&mut reader)
            .take(MAX_DIFF_LINE as u64)
            .read_until(b'\n', &mut line)
            .context("cannot read git log's output")?;
        if read == 0 {
            break;
        }
        if read == MAX_DIFF_LINE && line.last() != Some(&b'\n') {
            // Cut: skip the rest of this line.
            let mut rest = Vec::new();
            reader.read_until(b'\n', &mut rest).ok();
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        if let Some(commit) = text.strip_prefix(b"commit ") {
            added.flush(rules, allowlist, &mut findings, &mut scanned);
            added.commit = String::from_utf8_lossy(commit).into_owned();
            scanned.commits += 1;
        } else if let Some(path) = text.strip_prefix(b"+++ ") {
            added.flush(rules, allowlist, &mut findings, &mut scanned);
            let path = String::from_utf8_lossy(path);
            added.path = path.strip_prefix("b/").map(str::to_string);
        } else if text.starts_with(b"@@ ") {
            added.next_line = hunk_start(text);
        } else if let Some(body) = text.strip_prefix(b"+")
            && added.path.is_some()
        {
            added.push(body);
        }
    }
    added.flush(rules, allowlist, &mut findings, &mut scanned);
    let status = child.wait().context("git log did not finish")?;
    if !status.success() {
        let mut error = String::new();
        if let Some(mut stderr) = child.stderr.take() {
            stderr.read_to_string(&mut error).ok();
        }
        return Err(Exit::usage(format!(
            "git log failed in {} ({}); --history needs a git repository",
            directory.display(),
            error.trim()
        )));
    }
    Ok((findings, scanned))
}

/// The lines one commit added to one file, with their line numbers in the new file.
#[derive(Default)]
struct Added {
    commit: String,
    path: Option<String>,
    next_line: usize,
    text: Vec<u8>,
    numbers: Vec<usize>,
}

impl Added {
    fn push(&mut self, body: &[u8]) {
        self.text.extend_from_slice(body);
        self.text.push(b'\n');
        self.numbers.push(self.next_line);
        self.next_line += 1;
    }

    fn flush(
        &mut self,
        rules: &Rules,
        allowlist: &Allowlist,
        findings: &mut Vec<Finding>,
        scanned: &mut Scanned,
    ) {
        if let Some(path) = &self.path
            && !self.text.is_empty()
            && !allowlist.skips_path(path)
        {
            scanned.bytes += self.text.len() as u64;
            scanned.files += 1;
            let hits = rules.scan(&self.text);
            let numbers = &self.numbers;
            let found = findings_in(&self.text, &hits, path, Some(&self.commit), |line| {
                numbers.get(line - 1).copied().unwrap_or(line)
            });
            for finding in found {
                if allowlist.allows(&finding) {
                    scanned.allowed += 1;
                } else {
                    findings.push(finding);
                }
            }
        }
        self.text.clear();
        self.numbers.clear();
    }
}

/// The first line of the new side of `@@ -a,b +c,d @@`.
fn hunk_start(header: &[u8]) -> usize {
    let text = String::from_utf8_lossy(header);
    text.split_whitespace()
        .find_map(|part| part.strip_prefix('+'))
        .and_then(|range| range.split(',').next())
        .and_then(|start| start.parse().ok())
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finding_names_its_line_and_column_and_masks_every_secret_on_it() {
        let text =
            b"a = 1\nTOKEN=ghp_abcdefghijklmnopqrstuvwxyz0123456789 KEY=AKIAQ3EGRSZKX7MDPL2T\n";
        let hits = Rules::new().scan(text);
        let findings = findings_in(text, &hits, "x/.env", None, |line| line);
        assert_eq!(findings.len(), 2);
        assert_eq!((findings[0].line, findings[0].column), (2, 7));
        assert_eq!(findings[0].context, "TOKEN=*** KEY=***");
        assert_eq!(findings[0].fingerprint, "x/.env:github-token:2");
        assert_eq!(findings[1].rule, "aws-access-key-id");
    }

    #[test]
    fn hunk_headers_give_the_new_line() {
        assert_eq!(hunk_start(b"@@ -3,0 +4,2 @@ fn main"), 4);
        assert_eq!(hunk_start(b"@@ -0,0 +1 @@"), 1);
    }

    #[test]
    fn env_files_are_recognised_by_name() {
        for name in [".env", "app/.env.production", "deploy/prod.env"] {
            assert!(is_env_file(name), "{name}");
        }
        for name in ["environment.rs", ".envrc.example.md", "src/env.rs"] {
            assert!(!is_env_file(name), "{name}");
        }
    }
}
