//! The providers a task's secrets are resolved from, behind one [`Resolver`]:
//!
//! - `store`: the encrypted store beside the pipeline. It is decrypted once and kept until the
//!   file changes, since opening it with a passphrase costs scrypt's second.
//! - `env`: Keel's own environment.
//! - `dir:PATH`: the file `PATH/NAME`, its line ending dropped. Files there are not refused for
//!   being readable by others: Docker and Kubernetes mount secrets 0444 or 0644 by default, and
//!   the mount, not the file's mode, is what keeps them private.
//! - `{ command = [...] }`: a program run without a shell, `{name}` replaced by the name; its
//!   standard output, line ending dropped, is the value, kept for `ttl` on the injected clock.
//!   It is killed after `timeout`. Its standard error is quoted in an error only when it fails
//!   (when there is no value to leak), cut to one short line.
//!
//! [`Resolver::resolve`] blocks (a file read, a process, scrypt); async callers run it in
//! `spawn_blocking`.

use std::collections::{BTreeMap, HashMap};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keel_model::SecretProvider;

use crate::store::{Key, SecretStore, store_path};
use crate::{Secret, SecretError, check_name, trim_line_ending};

/// The clock the command provider's cache reads; tests pass a manual one.
pub type Clock = Arc<dyn Fn() -> Instant + Send + Sync>;

/// Finds the store's key when it is first needed.
pub type KeyLoader = Box<dyn Fn() -> Result<Key, SecretError> + Send + Sync>;

/// The longest piece of a failed command's standard error quoted in an error.
const STDERR_QUOTE_CHARS: usize = 200;

/// Resolves secrets by name from the pipeline's provider. Cheap to share: it is `Sync`.
pub struct Resolver {
    source: Source,
    clock: Clock,
}

enum Source {
    Store {
        path: PathBuf,
        key: KeyLoader,
        cache: Mutex<Option<StoreCache>>,
    },
    Env,
    Dir(PathBuf),
    Command {
        argv: Vec<String>,
        ttl: Duration,
        timeout: Duration,
        cache: Mutex<HashMap<String, (Instant, Secret)>>,
    },
}

struct StoreCache {
    stamp: FileStamp,
    values: BTreeMap<String, Secret>,
}

/// What tells that the store file changed: its modification time, size and inode.
#[derive(PartialEq, Eq, Clone, Copy)]
struct FileStamp {
    modified: Option<std::time::SystemTime>,
    len: u64,
    inode: u64,
}

impl Resolver {
    /// A resolver for `provider` of the pipeline whose file is in `pipeline_folder`: the store
    /// is `.keel/secrets.age` there, relative `dir:` paths start there, and a key file inside it
    /// is refused. The store's key is read on first use, so a pipeline that uses no secret
    /// needs none.
    pub fn new(provider: &SecretProvider, pipeline_folder: &Path, clock: Clock) -> Self {
        let source = match provider {
            SecretProvider::Store => {
                let path = store_path(pipeline_folder);
                let pipeline_folder = pipeline_folder.to_path_buf();
                let key: KeyLoader = Box::new(move || Key::from_environment(&pipeline_folder));
                return Self::for_store(path, key, clock);
            }
            SecretProvider::Env => Source::Env,
            SecretProvider::Dir(path) => Source::Dir(pipeline_folder.join(path)),
            SecretProvider::Command { argv, ttl, timeout } => Source::Command {
                argv: argv.clone(),
                ttl: *ttl,
                timeout: *timeout,
                cache: Mutex::new(HashMap::new()),
            },
        };
        Self { source, clock }
    }

    /// A resolver for the store at `path`, whose key `key` finds when it is first needed.
    pub fn for_store(path: PathBuf, key: KeyLoader, clock: Clock) -> Self {
        Self {
            source: Source::Store {
                path,
                key,
                cache: Mutex::new(None),
            },
            clock,
        }
    }

    /// A resolver on the system clock.
    pub fn with_system_clock(provider: &SecretProvider, pipeline_folder: &Path) -> Self {
        Self::new(provider, pipeline_folder, Arc::new(Instant::now))
    }

    /// The value of secret `name`.
    pub fn resolve(&self, name: &str) -> Result<Secret, SecretError> {
        check_name(name)?;
        match &self.source {
            Source::Store { path, key, cache } => resolve_from_store(name, path, key, cache),
            Source::Env => resolve_from_env(name),
            Source::Dir(folder) => resolve_from_dir(name, folder),
            Source::Command {
                argv,
                ttl,
                timeout,
                cache,
            } => {
                let now = (self.clock)();
                if let Some((fetched, secret)) = lock(cache).get(name)
                    && now.saturating_duration_since(*fetched) < *ttl
                {
                    return Ok(secret.clone());
                }
                let secret = run_command(name, argv, *timeout)?;
                lock(cache).insert(name.to_string(), (now, secret.clone()));
                Ok(secret)
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere while holding the cache leaves it consistent (entries are replaced
    // whole), so a poisoned lock is still usable.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn resolve_from_store(
    name: &str,
    path: &Path,
    key: &KeyLoader,
    cache: &Mutex<Option<StoreCache>>,
) -> Result<Secret, SecretError> {
    let stamp = match std::fs::metadata(path) {
        Ok(metadata) => {
            use std::os::unix::fs::MetadataExt as _;
            FileStamp {
                modified: metadata.modified().ok(),
                len: metadata.len(),
                inode: metadata.ino(),
            }
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(SecretError::Unknown {
                name: name.to_string(),
                source_name: format!(
                    "the secret store {} (it does not exist yet; add it with `keel secrets set {name}`)",
                    path.display()
                ),
                suggestion: None,
            });
        }
        Err(source) => {
            return Err(SecretError::Io {
                action: "read",
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let mut cache = lock(cache);
    if cache.as_ref().is_none_or(|cached| cached.stamp != stamp) {
        let store = SecretStore::new(path.to_path_buf(), key()?);
        *cache = Some(StoreCache {
            stamp,
            values: store.load()?,
        });
    }
    let values = &cache.as_ref().expect("filled above").values;
    values
        .get(name)
        .cloned()
        .ok_or_else(|| SecretError::Unknown {
            name: name.to_string(),
            source_name: format!("the secret store {}", path.display()),
            suggestion: keel_model::closest(name, values.keys().map(String::as_str)),
        })
}

fn resolve_from_env(name: &str) -> Result<Secret, SecretError> {
    let source_name = "Keel's environment".to_string();
    let Some(value) = std::env::var_os(name) else {
        return Err(SecretError::Unknown {
            name: name.to_string(),
            source_name,
            suggestion: None,
        });
    };
    let value = value.into_string().map_err(|_| SecretError::NotUtf8 {
        name: name.to_string(),
        source_name: source_name.clone(),
    })?;
    if value.is_empty() {
        return Err(SecretError::Empty {
            name: name.to_string(),
            source_name,
            hint: "set the variable to the value before starting Keel",
        });
    }
    Ok(Secret::new(value))
}

fn resolve_from_dir(name: &str, folder: &Path) -> Result<Secret, SecretError> {
    let path = folder.join(name);
    let source_name = format!("the folder {}", folder.display());
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => zeroize::Zeroizing::new(bytes),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let names: Vec<String> = std::fs::read_dir(folder)
                .map(|entries| {
                    entries
                        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
                        .collect()
                })
                .unwrap_or_default();
            return Err(SecretError::Unknown {
                name: name.to_string(),
                source_name,
                suggestion: keel_model::closest(name, names.iter().map(String::as_str)),
            });
        }
        Err(source) => {
            return Err(SecretError::Io {
                action: "read",
                path,
                source,
            });
        }
    };
    let text = std::str::from_utf8(&bytes).map_err(|_| SecretError::NotUtf8 {
        name: name.to_string(),
        source_name: source_name.clone(),
    })?;
    let value = trim_line_ending(text);
    if value.is_empty() {
        return Err(SecretError::Empty {
            name: name.to_string(),
            source_name,
            hint: "write the value into the file",
        });
    }
    Ok(Secret::new(value.to_string()))
}

fn run_command(name: &str, argv: &[String], timeout: Duration) -> Result<Secret, SecretError> {
    let argv: Vec<String> = argv
        .iter()
        .map(|argument| argument.replace("{name}", name))
        .collect();
    let program = argv.first().cloned().unwrap_or_default();
    let failed = |reason: String| SecretError::Command {
        name: name.to_string(),
        program: program.clone(),
        reason,
    };
    let mut child = Command::new(&program)
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| failed(format!("could not start: {error}")))?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let stdout = std::thread::spawn(move || {
        let mut bytes = zeroize::Zeroizing::new(Vec::new());
        let _ = stdout.read_to_end(&mut bytes);
        bytes
    });
    let stderr = std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = stderr.read_to_end(&mut bytes);
        bytes
    });
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() >= timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(failed(format!(
                    "ran for more than {}; it was stopped (set a longer timeout in [secrets] if it needs one)",
                    keel_model::format_duration(timeout)
                )));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(error) => return Err(failed(format!("could not be waited for: {error}"))),
        }
    };
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    if !status.success() {
        let said = String::from_utf8_lossy(&stderr);
        let said: String = said
            .trim()
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(STDERR_QUOTE_CHARS)
            .collect();
        let said = if said.is_empty() {
            String::new()
        } else {
            format!(": {said}")
        };
        return Err(failed(format!("failed with {status}{said}")));
    }
    let text = std::str::from_utf8(&stdout)
        .map_err(|_| failed("printed a value that is not UTF-8".to_string()))?;
    let value = trim_line_ending(text);
    if value.is_empty() {
        return Err(failed(
            "printed nothing; it should print the secret's value on standard output".to_string(),
        ));
    }
    Ok(Secret::new(value.to_string()))
}
