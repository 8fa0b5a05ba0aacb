//! `keel audit` on a labelled corpus: real-looking secrets planted in realistic files, and
//! look-alikes that are not secrets (digests, ids, references, placeholders, documentation
//! examples). Precision and recall are measured and printed; the secrets are generated at test
//! time from a seed, so the repository holds none.
//!
//! Also: `.gitignore` is respected but a tracked `.env` is read anyway, `--history` finds a
//! secret that a later commit removed, the allowlist, SARIF, and that no report prints a secret.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::support::keel;

/// A small deterministic generator (SplitMix64), so the corpus is the same on every run.
struct Seeded(u64);

impl Seeded {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn from(&mut self, alphabet: &str, length: usize) -> String {
        let alphabet = alphabet.as_bytes();
        (0..length)
            .map(|_| alphabet[(self.next() % alphabet.len() as u64) as usize] as char)
            .collect()
    }
}

const UPPER_DIGITS: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const ALNUM: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
const BASE64: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/";
const URLSAFE: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-";
const HEX: &str = "0123456789abcdef";
const DIGITS: &str = "0123456789";
const PASSWORD: &str = "abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789!#%&*+=?@^_~";

/// The corpus: files whose lines marked `«S»` hold a planted secret (the mark is removed when
/// the file is written), and every other line is a look-alike or ordinary text.
fn corpus(random: &mut Seeded) -> Vec<(&'static str, String)> {
    let mut aws_id = || format!("AKIA{}", random.from(UPPER_DIGITS, 16));
    let aws_ids: Vec<String> = (0..3).map(|_| aws_id()).collect();
    let aws_secret = random.from(BASE64, 40);
    let github = format!("ghp_{}", random.from(ALNUM, 36));
    let github_pat = format!("github_pat_{}", random.from(&format!("{ALNUM}_"), 82));
    let gitlab = format!("glpat-{}", random.from(URLSAFE, 20));
    let slack = format!(
        "xoxb-{}-{}-{}",
        random.from(DIGITS, 11),
        random.from(DIGITS, 12),
        random.from(ALNUM, 24)
    );
    let webhook = format!(
        "https://hooks.slack.com/services/T{}/B{}/{}",
        random.from(UPPER_DIGITS, 8),
        random.from(UPPER_DIGITS, 10),
        random.from(ALNUM, 24)
    );
    let stripe = format!("sk_live_{}", random.from(ALNUM, 24));
    let stripe_test = format!("sk_test_{}", random.from(ALNUM, 24));
    let google = format!("AIza{}", random.from(URLSAFE, 35));
    let sendgrid = format!(
        "SG.{}.{}",
        random.from(URLSAFE, 22),
        random.from(URLSAFE, 43)
    );
    let npm = format!("npm_{}", random.from(ALNUM, 36));
    let openai = format!(
        "sk-proj-{}T3BlbkFJ{}",
        random.from(URLSAFE, 40),
        random.from(URLSAFE, 40)
    );
    let jwt = format!(
        "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ{}.{}",
        random.from(URLSAFE, 60),
        random.from(URLSAFE, 43)
    );
    let mut password = |length| random.from(PASSWORD, length);
    let passwords: Vec<String> = (0..12).map(|n| password(10 + n)).collect();
    let hex_key = random.from(HEX, 32);
    let django = random.from(PASSWORD, 50);
    let pem_body = random.from(BASE64, 64);
    let sha1 = random.from(HEX, 40);
    let sha256 = random.from(HEX, 64);
    let uuid = format!(
        "{}-{}-4{}-a{}-{}",
        random.from(HEX, 8),
        random.from(HEX, 4),
        random.from(HEX, 3),
        random.from(HEX, 3),
        random.from(HEX, 12)
    );
    let integrity = random.from(BASE64, 86);
    let image = random.from(BASE64, 120);

    vec![
        (
            ".env",
            format!(
                "# local settings\nAPP_ENV=production\nPORT=8080\n\
                 «S»DATABASE_URL=postgres://app:{p0}@db.internal:5432/app\n\
                 «S»STATS_API_KEY={hex_key}\n\
                 «S»AWS_ACCESS_KEY_ID={a0}\n\
                 «S»AWS_SECRET_ACCESS_KEY={aws_secret}\n\
                 LOG_LEVEL=info\nMAX_TOKENS=4096\nTOKEN_TTL_SECONDS=3600\n\
                 «S»SLACK_WEBHOOK_URL={webhook}\n",
                p0 = percent_encoded(&passwords[0]),
                a0 = aws_ids[0],
            ),
        ),
        (
            "config/settings.py",
            format!(
                "import os\n\nDEBUG = False\n«S»SECRET_KEY = \"{django}\"\n\
                 DATABASE_PASSWORD = os.environ[\"DATABASE_PASSWORD\"]\n\
                 API_TOKEN = os.getenv(\"API_TOKEN\")\n\
                 «S»STRIPE_API_KEY = \"{stripe}\"\n\
                 PASSWORD_MIN_LENGTH = 12\n\
                 AUTH_PASSWORD_VALIDATORS = []\n\
                 SESSION_TOKEN_NAME = \"sessionid\"\n\
                 CACHE_KEY_PREFIX = \"hoops\"\n"
            ),
        ),
        (
            "deploy/docker-compose.yml",
            format!(
                "services:\n  db:\n    image: postgres:16\n    environment:\n\
                 «S»      POSTGRES_PASSWORD: {p1}\n\
                       POSTGRES_USER: app\n\
                   app:\n    environment:\n\
                       DB_PASSWORD: ${{DB_PASSWORD}}\n\
                 «S»      GITHUB_TOKEN: {github}\n\
                       API_KEY_FILE: /run/secrets/api_key\n",
                p1 = passwords[1],
            ),
        ),
        (
            "deploy/k8s/secret.yaml",
            format!(
                "apiVersion: v1\nkind: Secret\nmetadata:\n  name: feed-credentials\n\
                 type: Opaque\nstringData:\n\
                 «S»  password: \"{p2}\"\n\
                 «S»  sendgrid_api_key: {sendgrid}\n\
                   token: \"{{{{ .Values.feed.token }}}}\"\n",
                p2 = passwords[2],
            ),
        ),
        (
            "scripts/deploy.sh",
            format!(
                "#!/bin/sh\nset -eu\n\
                 «S»export GITLAB_TOKEN={gitlab}\n\
                 export DB_PASSWORD=\"$(cat /run/secrets/db)\"\n\
                 «S»curl -H \"Authorization: token {github_pat}\" https://api.github.com/user\n\
                 «S»mysql -u admin -p{p3} -h db.internal < schema.sql\n\
                 aws configure set region eu-west-1\n\
                 «S»aws configure set aws_secret_access_key {aws_secret}\n",
                p3 = passwords[3],
            ),
        ),
        (
            "src/client.js",
            format!(
                "const base = 'https://api.example.com';\n\
                 «S»const apiKey = \"{google}\";\n\
                 const token = process.env.FEED_TOKEN;\n\
                 «S»const npmToken = '{npm}';\n\
                 const password = prompt('password');\n\
                 «S»const session = '{jwt}';\n\
                 function auth(token) {{ return token.length > 0; }}\n"
            ),
        ),
        (
            "app/config.json",
            format!(
                "{{\n  \"name\": \"hoops\",\n  \"version\": \"1.4.2\",\n\
                 «S»  \"client_secret\": \"{p4}\",\n\
                   \"token_type\": \"bearer\",\n\
                   \"token_url\": \"https://auth.example.com/oauth/token\",\n\
                 «S»  \"openai_api_key\": \"{openai}\",\n\
                   \"max_tokens\": 2048\n}}\n",
                p4 = passwords[4],
            ),
        ),
        (
            "infra/terraform.tfvars",
            format!(
                "region = \"eu-west-1\"\n\
                 «S»db_password = \"{p5}\"\n\
                 «S»access_key = \"{a1}\"\n\
                 secret_arn = \"arn:aws:secretsmanager:eu-west-1:123456789012:secret:prod/db-Ab12Cd\"\n\
                 instance_type = \"t3.medium\"\n",
                p5 = passwords[5],
                a1 = aws_ids[1],
            ),
        ),
        (
            "keys/deploy_key",
            format!(
                "«S»-----BEGIN OPENSSH PRIVATE KEY-----\n{pem_body}\n{pem_body}\n-----END OPENSSH PRIVATE KEY-----\n"
            ),
        ),
        (
            "keys/server.pem",
            format!(
                "«S»-----BEGIN RSA PRIVATE KEY-----\n{pem_body}\n-----END RSA PRIVATE KEY-----\n\
                 -----BEGIN CERTIFICATE-----\n{pem_body}\n-----END CERTIFICATE-----\n"
            ),
        ),
        (
            "notes/ops.md",
            format!(
                "# Operations\n\nRotate the feed key monthly. Tokens start with `ghp_` or `glpat-`.\n\
                 The AWS docs use AKIAIOSFODNN7EXAMPLE as an example key id.\n\
                 Set `password = \"<your password>\"` in your local file.\n\
                 «S»Temporary admin login: admin / password={p6}\n\
                 Commit {sha1} fixed the loader.\n\
                 «S»The Slack bot used {slack} until March.\n",
                p6 = passwords[6],
            ),
        ),
        (
            "src/db.rs",
            format!(
                "let url = format!(\"postgres://{{user}}:{{password}}@{{host}}/app\");\n\
                 let password = std::env::var(\"DB_PASSWORD\")?;\n\
                 let token = TokenSource::Generated;\n\
                 «S»const FALLBACK_TOKEN: &str = \"{p7}\";\n\
                 let digest = \"{sha256}\";\n\
                 let id = \"{uuid}\";\n",
                p7 = passwords[7],
            ),
        ),
        (
            "tests/fixtures/lockfile.json",
            format!(
                "{{\n  \"integrity\": \"sha512-{integrity}==\",\n  \"resolved\": \"https://registry.npmjs.org/left-pad/-/left-pad-1.3.0.tgz\",\n\
                   \"image\": \"data:image/png;base64,{image}\"\n}}\n"
            ),
        ),
        (
            "config/app.ini",
            format!(
                "[database]\nhost = db.internal\nuser = app\n\
                 «S»password = {p8}\n\
                 [feed]\n\
                 «S»api_key = {p9}\n\
                 api_key_env = STATS_API_KEY\n\
                 token_refresh = 300\n\
                 password_file = /etc/app/password\n",
                p8 = passwords[8],
                p9 = passwords[9],
            ),
        ),
        (
            "ci/pipeline.yml",
            format!(
                "steps:\n  - run: make test\n    env:\n\
                       PGPASSWORD: ${{{{ secrets.PGPASSWORD }}}}\n\
                 «S»      STRIPE_KEY: {stripe_test}\n\
                       TOKEN: changeme\n\
                       PASSWORD: example-password\n\
                 «S»      REGISTRY_PASSWORD: {p10}\n",
                p10 = passwords[10],
            ),
        ),
        (
            "src/Connect.java",
            format!(
                "String password = getPassword();\n\
                 String url = \"jdbc:postgresql://db/app\";\n\
                 «S»String secret = \"{p11}\";\n\
                 int tokenCount = 100000;\n",
                p11 = passwords[11],
            ),
        ),
    ]
}

/// A password as it must be written in a URL.
fn percent_encoded(password: &str) -> String {
    password
        .bytes()
        .map(|byte| match byte {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (byte as char).to_string()
            }
            _ => format!("%{byte:02X}"),
        })
        .collect()
}

/// Writes the corpus under `dir`; returns the planted (path, line) pairs.
fn write_corpus(dir: &Path, files: &[(&str, String)]) -> BTreeSet<(String, usize)> {
    let mut planted = BTreeSet::new();
    for (path, text) in files {
        let mut lines = Vec::new();
        for (index, line) in text.lines().enumerate() {
            match line.strip_prefix("«S»") {
                Some(rest) => {
                    planted.insert((path.to_string(), index + 1));
                    lines.push(rest);
                }
                None => lines.push(line),
            }
        }
        let target = dir.join(path);
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::write(&target, lines.join("\n") + "\n").unwrap();
    }
    planted
}

fn audit_json(dir: &Path, extra: &[&str]) -> (i32, Value, String) {
    let output = keel()
        .arg("audit")
        .arg(dir)
        .args(["--format", "json"])
        .args(extra)
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or(Value::Null);
    (
        output.status.code().unwrap_or(-1),
        report,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn found_lines(report: &Value) -> BTreeSet<(String, usize)> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|finding| {
            (
                finding["path"].as_str().unwrap().to_string(),
                finding["line"].as_u64().unwrap() as usize,
            )
        })
        .collect()
}

/// The corpus is written under 20 seeds (the same files, different secrets: a password may
/// start with `*` or hold `#`), and the counts are summed.
#[test]
fn the_labelled_corpus_is_found_with_high_precision_and_recall() {
    let (mut planted_total, mut flagged_total, mut true_total) = (0, 0, 0);
    let mut problems = Vec::new();
    for seed in 1..=20 {
        let dir = tempfile::tempdir().unwrap();
        let files = corpus(&mut Seeded(seed));
        let planted = write_corpus(dir.path(), &files);
        let (code, report, stderr) = audit_json(dir.path(), &[]);
        assert_eq!(code, 1, "{stderr}");
        let found = found_lines(&report);
        planted_total += planted.len();
        flagged_total += found.len();
        true_total += found.intersection(&planted).count();
        for missed in planted.difference(&found) {
            problems.push(format!("seed {seed}: missed {missed:?}"));
        }
        for false_alarm in found.difference(&planted) {
            problems.push(format!("seed {seed}: false alarm {false_alarm:?}"));
        }
    }
    let precision = true_total as f64 / flagged_total as f64;
    let recall = true_total as f64 / planted_total as f64;
    for problem in &problems {
        println!("{problem}");
    }
    println!(
        "audit corpus (20 seeds): {planted_total} planted secrets, {flagged_total} lines flagged, {true_total} true; precision {precision:.3}, recall {recall:.3}"
    );
    assert!(
        precision >= 0.95 && recall >= 0.95,
        "precision {precision:.3}, recall {recall:.3}: {problems:#?}"
    );
}

#[test]
fn no_report_format_prints_a_planted_secret() {
    let dir = tempfile::tempdir().unwrap();
    let mut random = Seeded(11);
    let secret = format!("ghp_{}", random.from(ALNUM, 36));
    let password = random.from(PASSWORD, 18);
    std::fs::write(
        dir.path().join("settings.env"),
        format!("GITHUB_TOKEN={secret}\nDB_PASSWORD={password}\n"),
    )
    .unwrap();
    for format in ["text", "json", "sarif"] {
        let output = keel()
            .arg("audit")
            .arg(dir.path())
            .args(["--format", format])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1));
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(all.contains("github-token"), "{format}: {all}");
        for (name, value) in [("token", &secret), ("password", &password)] {
            assert!(
                !all.contains(value.as_str()),
                "{format} printed the {name}: {all}"
            );
            // Not even the part after the public prefix.
            assert!(
                !all.contains(&value[6..]),
                "{format} printed part of the {name}"
            );
        }
        if format == "sarif" {
            let sarif: Value = serde_json::from_slice(&output.stdout).unwrap();
            assert_eq!(sarif["version"], "2.1.0");
            let results = sarif["runs"][0]["results"].as_array().unwrap();
            assert_eq!(results.len(), 2);
            assert_eq!(
                results[0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"],
                "settings.env"
            );
            assert_eq!(
                results[0]["locations"][0]["physicalLocation"]["region"]["startLine"],
                1
            );
        }
    }
}

fn git(dir: &Path, args: &[&str]) {
    let status = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=Keel Test",
            "-c",
            "user.email=keel@test.invalid",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(status.status.success(), "git {args:?}: {status:?}");
}

#[test]
fn gitignore_is_respected_but_a_tracked_env_file_is_read_and_history_keeps_removed_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let mut random = Seeded(3);
    let tracked = format!("AKIA{}", random.from(UPPER_DIGITS, 16));
    let ignored = format!("ghp_{}", random.from(ALNUM, 36));
    let removed = format!("sk_live_{}", random.from(ALNUM, 24));
    git(root, &["init", "-q"]);
    std::fs::write(root.join(".gitignore"), ".env\nbuild/\n").unwrap();
    std::fs::write(root.join(".env"), format!("AWS_ACCESS_KEY_ID={tracked}\n")).unwrap();
    std::fs::create_dir(root.join("build")).unwrap();
    std::fs::write(root.join("build/out.txt"), format!("token {ignored}\n")).unwrap();
    std::fs::write(
        root.join("app.py"),
        format!("# a\n# b\nSTRIPE = \"{removed}\"\n"),
    )
    .unwrap();
    // The .env was committed before it was ignored: tracked, so it is read anyway.
    git(root, &["add", "-f", ".env", ".gitignore", "app.py"]);
    git(root, &["commit", "-q", "-m", "first"]);
    std::fs::write(
        root.join("app.py"),
        "# a\n# b\nSTRIPE = os.environ['STRIPE']\n",
    )
    .unwrap();
    git(root, &["commit", "-q", "-am", "move the key out"]);

    let (code, report, stderr) = audit_json(root, &[]);
    assert_eq!(code, 1, "{stderr}");
    let found = found_lines(&report);
    assert_eq!(
        found,
        BTreeSet::from([(".env".to_string(), 1)]),
        "the ignored build/ is skipped, the tracked .env is read, app.py is clean now"
    );

    let (code, report, stderr) = audit_json(root, &["--history"]);
    assert_eq!(code, 1, "{stderr}");
    let findings = report["findings"].as_array().unwrap();
    let in_app: Vec<_> = findings
        .iter()
        .filter(|finding| finding["path"] == "app.py")
        .collect();
    assert_eq!(in_app.len(), 1, "{findings:?}");
    assert_eq!(in_app[0]["rule"], "stripe-key");
    assert_eq!(in_app[0]["line"], 3);
    assert_eq!(in_app[0]["commit"].as_str().unwrap().len(), 40);
    assert!(stderr.contains("2 commits of history"), "{stderr}");

    // The allowlist silences by fingerprint and by path; the scan is clean then.
    let fingerprint = in_app[0]["fingerprint"].as_str().unwrap();
    std::fs::write(
        root.join(".keel-audit-allow"),
        format!("# known and rotated\nfingerprint:{fingerprint}\npath:.env\n"),
    )
    .unwrap();
    let (code, report, stderr) = audit_json(root, &["--history"]);
    assert_eq!(code, 0, "{report} {stderr}");
    assert!(stderr.contains("allowed by"), "{stderr}");
}

#[test]
fn bad_arguments_and_a_bad_allowlist_exit_2_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let output = keel()
        .args(["audit", "/nonexistent/keel-audit"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("does not exist"));

    std::fs::write(dir.path().join("allow"), "path:docs/**\nrule:gihub-token\n").unwrap();
    let output = keel()
        .arg("audit")
        .arg(dir.path())
        .arg("--allowlist")
        .arg(dir.path().join("allow"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("allow:2"), "{stderr}");
    assert!(
        stderr.contains("did you mean rule:github-token"),
        "{stderr}"
    );

    let output = keel()
        .arg("audit")
        .arg(dir.path())
        .arg("--history")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "not a git repository");
    assert!(String::from_utf8_lossy(&output.stderr).contains("--history needs a git repository"));
}
