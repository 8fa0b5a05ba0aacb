//! `keel demo` end to end: the reference pipeline against a faulty feed, through the binary.

use crate::support::keel;

#[test]
fn the_demo_runs_three_dates_heals_the_faults_and_leaves_its_state() {
    let dir = tempfile::tempdir().unwrap();
    let output = keel()
        .args(["demo", "--days", "3", "--start", "2026-11-09", "--dir"])
        .arg(dir.path())
        .timeout(std::time::Duration::from_secs(120))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    for date in ["2026-11-09", "2026-11-10", "2026-11-11"] {
        assert!(
            stdout.contains(&format!("{date}  succeeded")),
            "{date} did not succeed:\n{stdout}"
        );
    }
    // 2026-11-11 is switched to a day without games by the default faults.
    assert!(
        stdout.contains("2026-11-11  succeeded 21 tasks") && stdout.contains("no games"),
        "{stdout}"
    );
    // Late props are not ready on the first checks: the sensor waited for them, and
    // scrape_props started only then.
    assert!(
        stdout.contains("waited for scrape_props: its sensor said not ready"),
        "{stdout}"
    );
    // It says how to inspect the state, with commands that run as printed, pasted in a shell
    // started elsewhere: the keel under test is not on PATH, so they name it by its path.
    let hints: Vec<&str> = stdout
        .split("inspect it with:\n")
        .nth(1)
        .unwrap_or_default()
        .lines()
        .map_while(|line| line.strip_prefix("  "))
        .collect();
    assert_eq!(hints.len(), 4, "{stdout}");
    let elsewhere = tempfile::tempdir().unwrap();
    for hint in hints {
        let pasted = std::process::Command::new("sh")
            .args(["-c", hint])
            .current_dir(elsewhere.path())
            .output()
            .unwrap();
        assert!(
            pasted.status.success(),
            "{hint}: {}",
            String::from_utf8_lossy(&pasted.stderr)
        );
    }

    // The state is left in place, and `keel status` reads it.
    let pipeline = dir.path().join("keel.toml");
    let status = keel()
        .args(["status", "--json"])
        .arg(&pipeline)
        .output()
        .unwrap();
    assert!(status.status.success());
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let runs = json["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3);
    for run in runs {
        assert_eq!(run["state"], "succeeded", "{run}");
        assert_eq!(run["tasks"].as_array().unwrap().len(), 21);
    }
    // The picks were exported for the game days.
    assert!(dir.path().join("exports").read_dir().unwrap().count() >= 2);
    // No feed is left running: its port is closed once the demo has exited.
    let log = std::fs::read_to_string(dir.path().join("feed.log")).unwrap();
    let address = log
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or("")
        .trim_end_matches(['.', ',', ';']);
    if !address.is_empty() {
        assert!(
            std::net::TcpStream::connect(address).is_err(),
            "the feed on {address} is still listening"
        );
    }
}
