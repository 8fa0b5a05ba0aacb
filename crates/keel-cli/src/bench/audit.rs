//! How fast `keel audit` reads a tree: a generated tree of source and config files, with a
//! secret planted in every 50th file, scanned by the same code as the command.

use std::path::Path;
use std::time::Instant;

use anyhow::Result;

/// Lines the generated files are made of: code, config, references and look-alikes, none a
/// secret.
const LINES: &[&str] = &[
    "fn load(partition: &str) -> Result<Vec<Row>> { let rows = fetch(partition)?; Ok(rows) }",
    "    let password = std::env::var(\"DB_PASSWORD\").context(\"DB_PASSWORD is not set\")?;",
    "DATABASE_URL=postgres://app:${PGPASSWORD}@db.internal:5432/app",
    "  integrity: sha512-9a1f0b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8",
    "    api_key_env: STATS_API_KEY  # read from the environment",
    "import os; TOKEN = os.environ[\"FEED_TOKEN\"]  # never hard-coded",
    "{\"game_id\": \"0022400123\", \"home\": \"BOS\", \"away\": \"NYK\", \"points\": [112, 108]}",
    "SELECT player_id, AVG(points) FROM box_scores WHERE game_date >= $1 GROUP BY player_id;",
    "    // The feed answers 429 when we poll too fast; back off and try again later.",
    "commit 3f786850e387550fdab836ed7e6dc881de23001b fixed the loader for 2026-11-30",
];

/// Generates about `megabytes` of files under `dir/audit`, scans them, prints the speed.
pub fn audit(dir: &Path, megabytes: usize) -> Result<()> {
    let root = dir.join("audit");
    let _ = std::fs::remove_dir_all(&root);
    let file_bytes = 64 << 10;
    let files = megabytes * (1 << 20) / file_bytes;
    let mut planted = 0;
    for index in 0..files {
        let folder = root.join(format!("src{}", index % 40));
        std::fs::create_dir_all(&folder)?;
        let mut text = String::with_capacity(file_bytes + 200);
        let mut line = index;
        while text.len() < file_bytes {
            text.push_str(LINES[line % LINES.len()]);
            text.push('\n');
            line += 7;
        }
        if index % 50 == 0 {
            // Not a real key: a shape the rules know, built at run time.
            text.push_str(&format!(
                "AWS_ACCESS_KEY_ID=AKIA{:016}\n",
                index * 7919 + 13
            ));
            planted += 1;
        }
        std::fs::write(folder.join(format!("file{index}.rs")), text)?;
    }
    let started = Instant::now();
    let (findings, scanned) = crate::audit::scan(&root)?;
    let elapsed = started.elapsed();
    println!(
        "audit: {} files, {:.1} MB in {:.3} s · {:.0} MB/s on {} threads · {} of {planted} planted secrets found",
        scanned.files,
        scanned.bytes as f64 / 1e6,
        elapsed.as_secs_f64(),
        scanned.bytes as f64 / 1e6 / elapsed.as_secs_f64(),
        std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(8),
        findings.len(),
    );
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}
