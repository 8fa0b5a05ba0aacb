//! Commands Keel prints for the user to run next (after `keel init`, at the end of `keel demo`),
//! written so that they work when pasted as they are: with `keel` when that is the binary the
//! shell would find, and otherwise with the path of the running binary (after `cargo run`,
//! `target/release/keel`), every argument quoted for a POSIX shell when it needs to be.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

/// How to start this same Keel from a shell in the current directory.
pub fn keel_program() -> String {
    let running = std::env::current_exe().ok();
    let cwd = std::env::current_dir().ok();
    program_for(
        running.as_deref(),
        std::env::var_os("PATH").as_deref(),
        cwd.as_deref(),
    )
}

/// `keel` if `PATH` finds the running binary under that name; otherwise the running binary's
/// path, relative to `cwd` when it lies below it.
fn program_for(
    running: Option<&Path>,
    path_variable: Option<&OsStr>,
    cwd: Option<&Path>,
) -> String {
    let Some(running) = running else {
        return "keel".into();
    };
    let same_file = |candidate: &Path| match (candidate.canonicalize(), running.canonicalize()) {
        (Ok(candidate), Ok(running)) => candidate == running,
        _ => false,
    };
    let found_on_path = path_variable
        .map(std::env::split_paths)
        .and_then(|mut dirs| dirs.find(|dir| dir.join("keel").is_file()))
        .map(|dir| dir.join("keel"));
    if found_on_path.as_deref().is_some_and(same_file) {
        return "keel".into();
    }
    let shown: PathBuf = match cwd.and_then(|cwd| running.strip_prefix(cwd).ok()) {
        // A relative path needs a slash, or the shell would look it up on PATH.
        Some(relative) if relative.components().count() > 1 => relative.to_path_buf(),
        Some(relative) => Path::new(".").join(relative),
        None => running.to_path_buf(),
    };
    shell_quote(&shown.to_string_lossy())
}

/// `text` as one POSIX shell word: as it is when it holds only characters no shell treats
/// specially, otherwise in single quotes.
pub fn shell_quote(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|character| character.is_ascii_alphanumeric() || "/._-+=:,@%".contains(character));
    if plain {
        text.to_string()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// `keel init`'s next step for the pipeline it wrote.
pub fn after_init(keel: &str, pipeline: &Path) -> String {
    let pipeline = shell_quote(&pipeline.display().to_string());
    format!("next: {keel} validate {pipeline} && {keel} run {pipeline}")
}

/// The commands `keel demo` ends with, to look at the state it leaves in the pipeline's
/// directory.
pub fn after_demo(keel: &str, pipeline: &Path, first: &str) -> Vec<String> {
    let pipeline = shell_quote(&pipeline.display().to_string());
    vec![
        format!("{keel} status {pipeline}"),
        format!("{keel} status {pipeline} --partition {first}"),
        format!("{keel} history {pipeline} grading"),
        format!("{keel} logs {pipeline} scrape_props --partition {first}"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_running_binary_is_named_by_its_path_when_path_does_not_find_it() {
        let dir = tempfile::tempdir().unwrap();
        let release = dir.path().join("target/release");
        std::fs::create_dir_all(&release).unwrap();
        let binary = release.join("keel");
        std::fs::write(&binary, "").unwrap();
        // After `cargo run`, in the repository: the path from there.
        assert_eq!(
            program_for(
                Some(&binary),
                Some(OsStr::new("/usr/bin:/bin")),
                Some(dir.path())
            ),
            "target/release/keel"
        );
        // Elsewhere: the whole path.
        let elsewhere = tempfile::tempdir().unwrap();
        assert_eq!(
            program_for(Some(&binary), None, Some(elsewhere.path())),
            binary.display().to_string()
        );
        // In the binary's own directory: ./keel, since a bare name is looked up on PATH.
        assert_eq!(program_for(Some(&binary), None, Some(&release)), "./keel");
        // Installed, and found on PATH: plain keel.
        let path = std::env::join_paths([Path::new("/nonexistent"), release.as_path()]).unwrap();
        assert_eq!(
            program_for(Some(&binary), Some(&path), Some(elsewhere.path())),
            "keel"
        );
        // Another keel first on PATH: this one by its path.
        let other = tempfile::tempdir().unwrap();
        std::fs::write(other.path().join("keel"), "").unwrap();
        let path = std::env::join_paths([other.path(), release.as_path()]).unwrap();
        assert_eq!(
            program_for(Some(&binary), Some(&path), Some(dir.path())),
            "target/release/keel"
        );
    }

    #[test]
    fn arguments_are_quoted_only_when_a_shell_would_read_them_otherwise() {
        assert_eq!(
            shell_quote("/tmp/keel-demo-7/keel.toml"),
            "/tmp/keel-demo-7/keel.toml"
        );
        assert_eq!(
            shell_quote("/tmp/my demo/keel.toml"),
            "'/tmp/my demo/keel.toml'"
        );
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn the_demo_ends_with_commands_that_run_as_printed() {
        insta::assert_snapshot!(
            after_demo(
                "target/release/keel",
                Path::new("/tmp/keel demo/keel.toml"),
                "2026-11-08"
            )
            .join("\n"),
            @r"
        target/release/keel status '/tmp/keel demo/keel.toml'
        target/release/keel status '/tmp/keel demo/keel.toml' --partition 2026-11-08
        target/release/keel history '/tmp/keel demo/keel.toml' grading
        target/release/keel logs '/tmp/keel demo/keel.toml' scrape_props --partition 2026-11-08
        "
        );
        assert_eq!(
            after_init("keel", Path::new("./keel.toml")),
            "next: keel validate ./keel.toml && keel run ./keel.toml"
        );
    }
}
