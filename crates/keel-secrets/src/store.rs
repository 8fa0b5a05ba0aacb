//! The secret store: one age file, `.keel/secrets.age` beside the pipeline, holding a JSON
//! object of names to values inside the encryption.
//!
//! The key is a passphrase (`KEEL_SECRETS_PASSPHRASE`, scrypt) or an X25519 identity in a key
//! file outside the repository (`~/.config/keel/secrets.key`, mode 0600). A write goes to a
//! temporary file that is synced and renamed over the store, and the folder is synced after,
//! so a kill at any point leaves the old store or the new one, never a mix.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::age::{self, AgeError, Identity, Recipient, X25519Identity};
use crate::{Secret, SecretError, check_name};

/// The store's file name inside the state folder.
pub const STORE_FILE: &str = "secrets.age";
/// The store of the pipeline whose file is in `pipeline_folder`: `.keel/secrets.age` beside it.
pub fn store_path(pipeline_folder: &Path) -> PathBuf {
    pipeline_folder.join(".keel").join(STORE_FILE)
}

/// The variable holding the store's passphrase.
pub const PASSPHRASE_VARIABLE: &str = "KEEL_SECRETS_PASSPHRASE";

/// The key that opens the store.
pub enum Key {
    Passphrase(Zeroizing<String>),
    KeyFile {
        path: PathBuf,
        identity: X25519Identity,
    },
}

impl Key {
    /// The key from Keel's environment: `KEEL_SECRETS_PASSPHRASE` when it is set and not empty,
    /// else the key file [`default_key_file`]. `pipeline_folder` is where the pipeline lives; a
    /// key file inside it is refused, since it could be committed with the pipeline.
    pub fn from_environment(pipeline_folder: &Path) -> Result<Key, SecretError> {
        if let Some(passphrase) =
            std::env::var_os(PASSPHRASE_VARIABLE).filter(|value| !value.is_empty())
        {
            let passphrase = passphrase.into_string().map_err(|_| SecretError::NotUtf8 {
                name: PASSPHRASE_VARIABLE.to_string(),
                source_name: "the environment".to_string(),
            })?;
            return Ok(Key::Passphrase(Zeroizing::new(passphrase)));
        }
        let key_file = default_key_file();
        Key::from_key_file(&key_file, pipeline_folder)
    }

    /// Reads an `age-keygen` key file, refusing one that others can read.
    pub fn from_key_file(path: &Path, pipeline_folder: &Path) -> Result<Key, SecretError> {
        let metadata = match std::fs::metadata(path) {
            Ok(metadata) => metadata,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(SecretError::NoKey {
                    key_file: path.to_path_buf(),
                });
            }
            Err(source) => {
                return Err(SecretError::Io {
                    action: "read the key file",
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let mode = metadata.mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(SecretError::KeyFileOpen {
                path: path.to_path_buf(),
                mode,
            });
        }
        if let (Ok(key), Ok(folder)) = (path.canonicalize(), pipeline_folder.canonicalize())
            && key.starts_with(&folder)
        {
            return Err(SecretError::KeyFileInRepository {
                path: path.to_path_buf(),
                folder,
            });
        }
        let text =
            Zeroizing::new(
                std::fs::read_to_string(path).map_err(|source| SecretError::Io {
                    action: "read the key file",
                    path: path.to_path_buf(),
                    source,
                })?,
            );
        let identity =
            X25519Identity::from_key_file(&text).map_err(|source| SecretError::BadKeyFile {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Key::KeyFile {
            path: path.to_path_buf(),
            identity,
        })
    }

    fn identity(&self) -> Identity {
        match self {
            Key::Passphrase(passphrase) => Identity::Passphrase(passphrase.clone()),
            Key::KeyFile { identity, .. } => Identity::X25519(identity.clone()),
        }
    }

    fn recipient(&self) -> Recipient {
        match self {
            Key::Passphrase(passphrase) => Recipient::Passphrase {
                passphrase: passphrase.clone(),
                work_factor: age::DEFAULT_WORK_FACTOR,
            },
            Key::KeyFile { identity, .. } => identity.recipient(),
        }
    }

    /// What to do when this key does not open the store.
    fn hint(&self, error: &AgeError) -> String {
        match (self, error) {
            (Key::Passphrase(_), AgeError::WrongPassphrase) => {
                format!("check {PASSPHRASE_VARIABLE}: it is not the passphrase the store was written with")
            }
            (Key::KeyFile { path, .. }, AgeError::WrongKey) => {
                format!("the store was written with another key than {}", path.display())
            }
            (Key::Passphrase(_), AgeError::OtherRecipient { .. }) => {
                format!("unset {PASSPHRASE_VARIABLE} so that the key file is used")
            }
            (Key::KeyFile { .. }, AgeError::OtherRecipient { .. }) => {
                format!("set {PASSPHRASE_VARIABLE} to the passphrase it was written with")
            }
            _ => "the file is damaged; restore it from a backup, or remove it and set the secrets again".to_string(),
        }
    }
}

/// Where the key file is looked for: `$XDG_CONFIG_HOME/keel/secrets.key`, else
/// `$HOME/.config/keel/secrets.key`.
pub fn default_key_file() -> PathBuf {
    let config = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|value| !value.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".config")))
        .unwrap_or_else(|| PathBuf::from("/nonexistent/.config"));
    config.join("keel").join("secrets.key")
}

/// The store file and the key that opens it.
pub struct SecretStore {
    path: PathBuf,
    key: Key,
}

impl SecretStore {
    /// The store at `path` (usually `<state folder>/secrets.age`), opened with `key`.
    pub fn new(path: PathBuf, key: Key) -> Self {
        Self { path, key }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every secret; none when the file does not exist yet.
    pub fn load(&self) -> Result<BTreeMap<String, Secret>, SecretError> {
        let file = match std::fs::read(&self.path) {
            Ok(file) => file,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(BTreeMap::new());
            }
            Err(source) => return Err(self.io("read", source)),
        };
        let plaintext =
            age::decrypt(&self.key.identity(), &file).map_err(|source| SecretError::Decrypt {
                path: self.path.clone(),
                hint: self.key.hint(&source),
                source,
            })?;
        // The parse error is dropped, not quoted: it could show a piece of a value.
        let values: BTreeMap<String, String> =
            serde_json::from_slice(&plaintext).map_err(|_| SecretError::CorruptStore {
                path: self.path.clone(),
            })?;
        Ok(values
            .into_iter()
            .map(|(name, value)| (name, Secret::new(value)))
            .collect())
    }

    /// One secret; an unknown name gets the closest known one as a suggestion.
    pub fn get(&self, name: &str) -> Result<Secret, SecretError> {
        check_name(name)?;
        let mut values = self.load()?;
        values.remove(name).ok_or_else(|| SecretError::Unknown {
            name: name.to_string(),
            source_name: format!("the secret store {}", self.path.display()),
            suggestion: keel_model::closest(name, values.keys().map(String::as_str)),
        })
    }

    /// The names in the store, sorted.
    pub fn names(&self) -> Result<Vec<String>, SecretError> {
        Ok(self.load()?.into_keys().collect())
    }

    /// Sets `name` to `value` (its line ending dropped); an empty value is refused.
    pub fn set(&self, name: &str, value: &Secret) -> Result<(), SecretError> {
        check_name(name)?;
        let value = crate::trim_line_ending(value.expose());
        if value.is_empty() {
            return Err(SecretError::Empty {
                name: name.to_string(),
                source_name: "standard input".to_string(),
                hint: "pipe the value in, as in `printf %s \"$VALUE\" | keel secrets set NAME`",
            });
        }
        let _lock = self.lock()?;
        let mut values = self.load()?;
        values.insert(name.to_string(), Secret::new(value.to_string()));
        self.save(&values)
    }

    /// Removes `name`; an unknown name is an error, with a suggestion.
    pub fn remove(&self, name: &str) -> Result<(), SecretError> {
        check_name(name)?;
        let _lock = self.lock()?;
        let mut values = self.load()?;
        if values.remove(name).is_none() {
            return Err(SecretError::Unknown {
                name: name.to_string(),
                source_name: format!("the secret store {}", self.path.display()),
                suggestion: keel_model::closest(name, values.keys().map(String::as_str)),
            });
        }
        self.save(&values)
    }

    /// Holds `secrets.age.lock` beside the store until dropped, so that two `keel secrets set`
    /// at once each read the other's write instead of losing it.
    fn lock(&self) -> Result<std::fs::File, SecretError> {
        let folder = self.folder();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(folder)
            .map_err(|source| self.io("create the folder of", source))?;
        let lock = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(folder.join(format!("{STORE_FILE}.lock")))
            .map_err(|source| self.io("lock", source))?;
        lock.lock().map_err(|source| self.io("lock", source))?;
        Ok(lock)
    }

    fn folder(&self) -> &Path {
        self.path
            .parent()
            .filter(|folder| !folder.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
    }

    fn save(&self, values: &BTreeMap<String, Secret>) -> Result<(), SecretError> {
        let plain: BTreeMap<&str, &str> = values
            .iter()
            .map(|(name, value)| (name.as_str(), value.expose()))
            .collect();
        let plaintext =
            Zeroizing::new(serde_json::to_vec(&plain).expect("a map of strings serialises"));
        let encrypted = age::encrypt(&self.key.recipient(), &plaintext).map_err(|source| {
            SecretError::Decrypt {
                path: self.path.clone(),
                source,
                hint: "try again".to_string(),
            }
        })?;
        let folder = self.folder();
        let temporary = folder.join(format!(".{STORE_FILE}.{}.tmp", std::process::id()));
        let written = (|| {
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&temporary)?;
            file.write_all(&encrypted)?;
            file.sync_all()?;
            std::fs::rename(&temporary, &self.path)?;
            std::fs::File::open(folder)?.sync_all()
        })();
        if let Err(source) = written {
            let _ = std::fs::remove_file(&temporary);
            return Err(self.io("write", source));
        }
        Ok(())
    }

    fn io(&self, action: &'static str, source: std::io::Error) -> SecretError {
        SecretError::Io {
            action,
            path: self.path.clone(),
            source,
        }
    }
}
