//! Helpers shared by the CLI tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

/// The keel binary under test.
pub fn keel() -> assert_cmd::Command {
    assert_cmd::Command::cargo_bin("keel").expect("the keel binary is built")
}

pub fn keel_path() -> PathBuf {
    assert_cmd::cargo::cargo_bin("keel")
}

/// Writes `text` as `keel.toml` in `dir` and returns its path.
pub fn write_pipeline(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("keel.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// A `keel serve` a test started (under faketime or not). Dropped, it is killed with
/// everything faketime started, so a failing test leaves nothing running.
pub struct Served(pub Child);

impl Drop for Served {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let path = format!("/proc/{}/task/{}/children", self.0.id(), self.0.id());
            for pid in std::fs::read_to_string(path)
                .unwrap_or_default()
                .split_whitespace()
            {
                if let Ok(pid) = pid.parse::<i32>() {
                    // SAFETY: killing a process this test started.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Polls `ready` until it holds; panics after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `keel serve` on the `pipelines` on a free loopback port, with its log in `log` and
/// `env` added to its environment, and waits for it to log its API's address, which it returns
/// beside the guard.
pub fn serve_on_free_port(
    pipelines: &[&Path],
    log: &Path,
    env: &[(&str, &str)],
) -> (Served, String) {
    let file = std::fs::File::create(log).unwrap();
    let child = std::process::Command::new(keel_path())
        .arg("serve")
        .args(pipelines)
        .args(["--addr", "127.0.0.1:0", "--grace", "1s"])
        .env_remove("KEEL_API_TOKEN")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    let served = Served(child);
    let mut addr = None;
    wait_for(
        "keel serve to log its address",
        Duration::from_secs(40),
        || {
            addr = std::fs::read_to_string(log).ok().and_then(|text| {
                let start = text.find("API on http://")? + "API on http://".len();
                let rest = &text[start..];
                let end = rest.find(|c: char| c == ';' || c.is_whitespace())?;
                Some(rest[..end].to_string())
            });
            addr.is_some()
        },
    );
    (served, addr.unwrap())
}
