//! The position store: how far each file source has read each file,
//! persisted in `<state_dir>/positions.json`.
//!
//! The file is JSON, keyed by source name so two sources never clash:
//!
//! ```json
//! {
//!   "version": 1,
//!   "sources": {
//!     "file:logs:/var/log/app/*.log": [
//!       { "path": "/var/log/app/a.log", "dev": 2049, "ino": 131, "offset": 5120 }
//!     ]
//!   }
//! }
//! ```
//!
//! `offset` is the byte just after the last line whose events were
//! acknowledged. Writes are atomic: a temporary file is written and synced,
//! renamed over the old one, and the directory synced.

use super::SourceError;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The name of the positions file inside the state directory.
pub const POSITIONS_FILE: &str = "positions.json";
const FORMAT_VERSION: u32 = 1;

/// How far one file has been read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePosition {
    /// The path the file was last seen at (non-UTF-8 bytes replaced).
    pub path: String,
    /// Device number of the file system holding the file.
    pub dev: u64,
    /// Inode number; with `dev`, the file's identity across renames.
    pub ino: u64,
    /// Byte offset just after the last line read (and, once committed,
    /// acknowledged).
    pub offset: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    version: u32,
    sources: BTreeMap<String, Vec<FilePosition>>,
}

/// The positions of every file source, backed by [`POSITIONS_FILE`].
#[derive(Debug)]
pub struct PositionStore {
    path: PathBuf,
    sources: BTreeMap<String, Vec<FilePosition>>,
}

impl PositionStore {
    /// Open the store in `state_dir` (created if missing), loading the
    /// positions file if it exists.
    pub fn open(state_dir: &Path) -> Result<Self, SourceError> {
        std::fs::create_dir_all(state_dir).map_err(|source| SourceError::Io {
            action: "creating state directory",
            path: state_dir.to_path_buf(),
            source,
        })?;
        let path = state_dir.join(POSITIONS_FILE);
        let sources = match std::fs::read(&path) {
            Ok(bytes) => {
                let file: StoreFile =
                    serde_json::from_slice(&bytes).map_err(|e| SourceError::CorruptPositions {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                if file.version != FORMAT_VERSION {
                    return Err(SourceError::CorruptPositions {
                        path,
                        reason: format!(
                            "unsupported version {} (expected {FORMAT_VERSION})",
                            file.version
                        ),
                    });
                }
                file.sources
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => {
                return Err(SourceError::Io {
                    action: "reading",
                    path,
                    source,
                })
            }
        };
        Ok(Self { path, sources })
    }

    /// The positions file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved positions of source `name` (empty if none).
    pub fn get(&self, name: &str) -> &[FilePosition] {
        self.sources.get(name).map(Vec::as_slice).unwrap_or(&[])
    }

    /// True when positions were ever saved for source `name` (even an empty list).
    pub fn has_source(&self, name: &str) -> bool {
        self.sources.contains_key(name)
    }

    /// Keep only the sources for which `keep` is true (in memory; written at
    /// the next [`PositionStore::set`]).
    pub fn retain_sources(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.sources.retain(|name, _| keep(name));
    }

    /// Replace the positions of source `name` and persist the store, unless
    /// they are unchanged.
    pub fn set(&mut self, name: &str, positions: Vec<FilePosition>) -> Result<(), SourceError> {
        if self.sources.get(name) == Some(&positions) {
            return Ok(());
        }
        self.sources.insert(name.to_string(), positions);
        self.save()
    }

    fn save(&self) -> Result<(), SourceError> {
        let file = StoreFile {
            version: FORMAT_VERSION,
            sources: self.sources.clone(),
        };
        let mut bytes = serde_json::to_vec_pretty(&file).map_err(|e| SourceError::Io {
            action: "encoding",
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        bytes.push(b'\n');
        write_atomically(&self.path, &bytes)
    }
}

/// Write `bytes` to `path` atomically (see [`crate::fsutil::write_atomic`]).
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), SourceError> {
    crate::fsutil::write_atomic(path, bytes, 0o600).map_err(|source| SourceError::Io {
        action: "writing",
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(path: &str, offset: u64) -> FilePosition {
        FilePosition {
            path: path.into(),
            dev: 1,
            ino: 2,
            offset,
        }
    }

    #[test]
    fn positions_survive_reopening_and_sources_do_not_clash() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = PositionStore::open(&dir.path().join("state")).unwrap();
        s.set("a", vec![pos("/x", 10)]).unwrap();
        s.set("b", vec![pos("/x", 20)]).unwrap();
        let s = PositionStore::open(&dir.path().join("state")).unwrap();
        assert_eq!(s.get("a"), &[pos("/x", 10)]);
        assert_eq!(s.get("b"), &[pos("/x", 20)]);
        assert!(s.get("c").is_empty());
        assert!(!dir.path().join("state/positions.json.tmp").exists());
    }

    #[test]
    fn corrupt_positions_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(POSITIONS_FILE), "{not json").unwrap();
        let e = PositionStore::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("positions.json") && e.contains("corrupt"), "{e}");
    }
}
