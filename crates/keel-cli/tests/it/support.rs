//! Helpers shared by the CLI tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

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
