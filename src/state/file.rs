//! The state file: JSON, replaced atomically (write a temporary file beside it,
//! fsync it, rename it over the old one, fsync the directory), so a crash at any
//! moment leaves either the old state or the new one, never a torn file. A stray
//! temporary file from a crash is ignored on load and overwritten on the next save.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::doc::{FORMAT_VERSION, StateDoc};
use super::store::{StateError, StateStore};

#[derive(Debug, Clone)]
pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    pub fn new(path: impl Into<PathBuf>) -> FileStore {
        FileStore { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn temp_path(&self) -> PathBuf {
        let mut name = self
            .path
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        name.push(".tmp");
        self.path.with_file_name(name)
    }

    /// Moves an unreadable state file aside (`NAME.bad-UNIXTIME`), so the process
    /// can start from its config without destroying the evidence.
    pub fn set_aside(&self) -> std::io::Result<PathBuf> {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut name = self
            .path
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        name.push(format!(".bad-{secs}"));
        let aside = self.path.with_file_name(name);
        fs::rename(&self.path, &aside)?;
        Ok(aside)
    }
}

impl StateStore for FileStore {
    fn load(&self) -> Result<Option<StateDoc>, StateError> {
        let path = self.path.display().to_string();
        let text = match fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(StateError::Read { path, source }),
        };
        let doc: StateDoc = serde_json::from_str(&text).map_err(|e| StateError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if doc.version != FORMAT_VERSION {
            return Err(StateError::Corrupt {
                path,
                reason: format!(
                    "format version {} (this build reads {FORMAT_VERSION})",
                    doc.version
                ),
            });
        }
        Ok(Some(doc))
    }

    fn save(&self, doc: &StateDoc) -> Result<(), StateError> {
        let write_err = |source| StateError::Write {
            path: self.path.display().to_string(),
            source,
        };
        let json =
            serde_json::to_vec_pretty(doc).map_err(|e| write_err(std::io::Error::other(e)))?;
        let temp = self.temp_path();
        let result = (|| {
            let mut f = File::create(&temp)?;
            f.write_all(&json)?;
            f.write_all(b"\n")?;
            f.sync_all()?;
            drop(f);
            fs::rename(&temp, &self.path)?;
            // The rename is durable only once the directory is synced.
            let dir = match self.path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("."),
            };
            File::open(dir)?.sync_all()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&temp);
        }
        result.map_err(write_err)
    }

    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::AdminState;
    use crate::state::{ServerState, SettingsState, UpstreamState};

    fn doc() -> StateDoc {
        let mut d = StateDoc::new();
        d.upstreams.insert(
            "app".into(),
            UpstreamState {
                settings: SettingsState {
                    balance: "round_robin".into(),
                    hash_key: None,
                    keepalive: 32,
                    keepalive_timeout_ms: 60_000,
                    connect_timeout_ms: 5_000,
                    read_timeout_ms: 60_000,
                    send_timeout_ms: 60_000,
                    retry_tries: 3,
                    retry_timeout_ms: 0,
                    retry_non_idempotent: false,
                    health_check: None,
                    scheme: None,
                    protocol: None,
                    tls_server_name: None,
                    tls_ca: None,
                    tls_verify: None,
                    tls_client_cert: None,
                    tls_client_key: None,
                    panic_threshold: None,
                },
                next_id: 2,
                servers: vec![ServerState {
                    id: 1,
                    addr: "127.0.0.1:8080".into(),
                    weight: 3,
                    max_conns: 0,
                    max_fails: 1,
                    fail_timeout_ms: 10_000,
                    slow_start_ms: 0,
                    backup: false,
                    state: AdminState::Drain,
                    origin: None,
                }],
            },
        );
        d
    }

    #[test]
    fn saved_state_loads_back_equal_and_a_missing_file_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("s.json"));
        assert!(store.load().unwrap().is_none());
        store.save(&doc()).unwrap();
        assert_eq!(store.load().unwrap(), Some(doc()));
        assert!(!store.temp_path().exists());
    }

    #[test]
    fn a_torn_temp_file_beside_the_state_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("s.json"));
        store.save(&doc()).unwrap();
        fs::write(store.temp_path(), b"{\"version\": 1, \"upstr").unwrap();
        assert_eq!(store.load().unwrap(), Some(doc()));
        store.save(&StateDoc::new()).unwrap();
        assert_eq!(store.load().unwrap(), Some(StateDoc::new()));
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_the_file_and_can_be_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        fs::write(&path, b"not json").unwrap();
        let store = FileStore::new(&path);
        let err = store.load().unwrap_err().to_string();
        assert!(err.contains("s.json") && err.contains("not valid"), "{err}");
        let aside = store.set_aside().unwrap();
        assert!(aside.exists() && !path.exists());
        assert!(store.load().unwrap().is_none());
    }

    #[test]
    fn a_write_into_a_missing_directory_fails_and_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(dir.path().join("no/such/dir/s.json"));
        let err = store.save(&doc()).unwrap_err().to_string();
        assert!(err.contains("s.json"), "{err}");
    }
}
