//! [`LocalStorage`]: objects as files under a root directory.

use crate::storage::{validate_object_path, validate_prefix, TEMP_PREFIX};
use crate::{ObjectMeta, Storage, StoreError};
use async_trait::async_trait;
use bytes::Bytes;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Objects stored as files under a root directory; object path `a/b/c` is the
/// file `<root>/a/b/c`.
///
/// Puts write a temporary file (`.custos-tmp-<uuid>`) in the destination
/// directory, fsync it, rename it over the destination and fsync the
/// directory, so an object is either absent, the old version, or the
/// complete new version — also after a crash or power loss. All file system
/// work runs on tokio's blocking pool.
#[derive(Clone, Debug)]
pub struct LocalStorage {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    uri: String,
}

impl LocalStorage {
    /// Open (creating it and its parents if needed) the root directory `root`.
    /// A relative root is resolved against the current directory.
    pub fn open(root: impl AsRef<Path>) -> Result<Self, StoreError> {
        let root = root.as_ref();
        let io_err = |source: io::Error| StoreError::Io {
            op: "open storage root",
            path: root.display().to_string(),
            uri: format!("file://{}", root.display()),
            source,
        };
        let abs = if root.is_absolute() {
            root.to_path_buf()
        } else {
            std::env::current_dir().map_err(io_err)?.join(root)
        };
        fs::create_dir_all(&abs).map_err(io_err)?;
        let root = abs.canonicalize().map_err(io_err)?;
        if !root.is_dir() {
            return Err(io_err(io::Error::other("not a directory")));
        }
        let uri = format!("file://{}", root.display());
        Ok(Self { inner: Arc::new(Inner { root, uri }) })
    }

    /// The root directory (canonical, absolute).
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    async fn blocking<T, F>(&self, op: &'static str, path: &str, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner)).await.map_err(|e| StoreError::TaskFailed {
            op,
            path: path.to_string(),
            uri: self.inner.uri.clone(),
            reason: e.to_string(),
        })?
    }
}

impl Inner {
    fn full_path(&self, path: &str) -> PathBuf {
        // `path` has passed `validate_object_path`, so it has only normal
        // components and the join stays under `root`.
        let mut p = self.root.clone();
        p.extend(path.split('/'));
        p
    }

    fn io(&self, op: &'static str, path: &str, source: io::Error) -> StoreError {
        StoreError::Io { op, path: path.to_string(), uri: self.uri.clone(), source }
    }

    fn not_found(&self, path: &str) -> StoreError {
        StoreError::NotFound { path: path.to_string(), uri: self.uri.clone() }
    }

    /// Open an object file for reading, with its size; a missing file or a
    /// directory is `NotFound`.
    fn open_object(&self, op: &'static str, path: &str) -> Result<(File, u64), StoreError> {
        let full = self.full_path(path);
        let file = match File::open(&full) {
            Ok(f) => f,
            Err(e) if is_not_found(&e) => return Err(self.not_found(path)),
            Err(e) => return Err(self.io(op, path, e)),
        };
        let meta = file.metadata().map_err(|e| self.io(op, path, e))?;
        if !meta.is_file() {
            return Err(self.not_found(path));
        }
        Ok((file, meta.len()))
    }

    fn put(&self, path: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let full = self.full_path(path);
        let dir = match full.parent() {
            Some(d) => d.to_path_buf(),
            // A validated path has at least one component, so the full path
            // always has the root as an ancestor.
            None => return Err(self.io("put", path, io::Error::other("no parent directory"))),
        };
        if !dir.is_dir() {
            self.create_dirs_durably(path, &dir)?;
        }
        let tmp = dir.join(format!("{TEMP_PREFIX}{}", uuid::Uuid::new_v4().simple()));
        let result = (|| -> io::Result<()> {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            drop(f);
            fs::rename(&tmp, &full)?;
            sync_dir(&dir)
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(self.io("put", path, e));
        }
        Ok(())
    }

    /// Create `dir` and its missing ancestors under the root, then fsync each
    /// new directory's parent so the directory entries are durable.
    fn create_dirs_durably(&self, path: &str, dir: &Path) -> Result<(), StoreError> {
        let mut missing = Vec::new();
        let mut cur = dir;
        while !cur.exists() && cur != self.root {
            missing.push(cur.to_path_buf());
            match cur.parent() {
                Some(p) => cur = p,
                None => break,
            }
        }
        fs::create_dir_all(dir).map_err(|e| self.io("put", path, e))?;
        for d in missing.iter() {
            if let Some(parent) = d.parent() {
                sync_dir(parent).map_err(|e| self.io("put", path, e))?;
            }
        }
        Ok(())
    }

    fn get(&self, path: &str) -> Result<Bytes, StoreError> {
        let (mut f, size) = self.open_object("get", path)?;
        let mut buf = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        f.read_to_end(&mut buf).map_err(|e| self.io("get", path, e))?;
        Ok(Bytes::from(buf))
    }

    fn get_range(&self, path: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        let (mut f, size) = self.open_object("get_range", path)?;
        if range.start > range.end || range.end > size {
            return Err(StoreError::RangeOutOfBounds {
                path: path.to_string(),
                start: range.start,
                end: range.end,
                size,
            });
        }
        let len = usize::try_from(range.end - range.start).map_err(|_| {
            self.io("get_range", path, io::Error::new(io::ErrorKind::InvalidInput, "range too large for memory"))
        })?;
        let mut buf = vec![0u8; len];
        f.seek(SeekFrom::Start(range.start)).map_err(|e| self.io("get_range", path, e))?;
        f.read_exact(&mut buf).map_err(|e| self.io("get_range", path, e))?;
        Ok(Bytes::from(buf))
    }

    fn delete(&self, path: &str) -> Result<(), StoreError> {
        let full = self.full_path(path);
        match fs::remove_file(&full) {
            Ok(()) => {
                if let Some(dir) = full.parent() {
                    sync_dir(dir).map_err(|e| self.io("delete", path, e))?;
                }
                Ok(())
            }
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => {
                // Deleting a directory name is deleting an absent object.
                if full.is_dir() {
                    Ok(())
                } else {
                    Err(self.io("delete", path, e))
                }
            }
        }
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        // Walk from the deepest directory the prefix fixes: "a/b/c" walks
        // "a/b" and keeps entries starting with "a/b/c".
        let (dir_part, _) = prefix.rsplit_once('/').unwrap_or(("", prefix));
        let start = if dir_part.is_empty() { self.root.clone() } else { self.full_path(dir_part) };
        let mut out = Vec::new();
        let mut stack = vec![(start, dir_part.to_string())];
        while let Some((dir, rel)) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if is_not_found(&e) || e.kind() == io::ErrorKind::NotADirectory => continue,
                Err(e) => return Err(self.io("list", prefix, e)),
            };
            for entry in entries {
                let entry = entry.map_err(|e| self.io("list", prefix, e))?;
                let Some(name) = entry.file_name().to_str().map(str::to_string) else {
                    continue; // not a name this API can have written
                };
                if name.starts_with(TEMP_PREFIX) {
                    continue;
                }
                let child = if rel.is_empty() { name } else { format!("{rel}/{name}") };
                // Prune subtrees that cannot match the prefix.
                if !(child.starts_with(prefix) || prefix.starts_with(&format!("{child}/"))) {
                    continue;
                }
                // `file_type` does not follow symlinks: links are skipped.
                let ft = match entry.file_type() {
                    Ok(ft) => ft,
                    Err(e) if is_not_found(&e) => continue,
                    Err(e) => return Err(self.io("list", prefix, e)),
                };
                if ft.is_dir() {
                    stack.push((entry.path(), child));
                } else if ft.is_file() && child.starts_with(prefix) {
                    let size = match entry.metadata() {
                        Ok(m) => m.len(),
                        Err(e) if is_not_found(&e) => continue, // deleted meanwhile
                        Err(e) => return Err(self.io("list", prefix, e)),
                    };
                    out.push(ObjectMeta { path: child, size });
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn size(&self, path: &str) -> Result<u64, StoreError> {
        let full = self.full_path(path);
        match fs::metadata(&full) {
            Ok(m) if m.is_file() => Ok(m.len()),
            Ok(_) => Err(self.not_found(path)),
            Err(e) if is_not_found(&e) => Err(self.not_found(path)),
            Err(e) => Err(self.io("size", path, e)),
        }
    }
}

fn is_not_found(e: &io::Error) -> bool {
    // A file where a directory is expected ("a" is a file, "a/b" requested)
    // also means the object does not exist.
    matches!(e.kind(), io::ErrorKind::NotFound | io::ErrorKind::NotADirectory)
}

/// Fsync a directory so entries created, renamed or removed in it are durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[async_trait]
impl Storage for LocalStorage {
    fn uri(&self) -> &str {
        &self.inner.uri
    }

    async fn put(&self, path: &str, bytes: Bytes) -> Result<(), StoreError> {
        validate_object_path(path)?;
        let p = path.to_string();
        self.blocking("put", path, move |s| s.put(&p, &bytes)).await
    }

    async fn get(&self, path: &str) -> Result<Bytes, StoreError> {
        validate_object_path(path)?;
        let p = path.to_string();
        self.blocking("get", path, move |s| s.get(&p)).await
    }

    async fn get_range(&self, path: &str, range: Range<u64>) -> Result<Bytes, StoreError> {
        validate_object_path(path)?;
        let p = path.to_string();
        self.blocking("get_range", path, move |s| s.get_range(&p, range)).await
    }

    async fn delete(&self, path: &str) -> Result<(), StoreError> {
        validate_object_path(path)?;
        let p = path.to_string();
        self.blocking("delete", path, move |s| s.delete(&p)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError> {
        validate_prefix(prefix)?;
        let p = prefix.to_string();
        self.blocking("list", prefix, move |s| s.list(&p)).await
    }

    async fn size(&self, path: &str) -> Result<u64, StoreError> {
        validate_object_path(path)?;
        let p = path.to_string();
        self.blocking("size", path, move |s| s.size(&p)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage_from_uri;

    #[tokio::test(flavor = "multi_thread")]
    async fn local_storage_passes_the_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStorage::open(dir.path()).unwrap();
        crate::conformance::run_all(&s).await;
    }

    #[tokio::test]
    async fn file_uris_and_plain_paths_open_local_storage_and_create_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("a/b");
        let s = storage_from_uri(&format!("file://{}", root.display())).unwrap();
        assert!(root.is_dir());
        assert!(s.uri().starts_with("file:///"), "{}", s.uri());
        s.put("x/y", Bytes::from_static(b"hi")).await.unwrap();
        let plain = storage_from_uri(root.to_str().unwrap()).unwrap();
        assert_eq!(plain.get("x/y").await.unwrap(), Bytes::from_static(b"hi"));
        assert_eq!(plain.uri(), s.uri());
    }

    #[test]
    fn other_schemes_are_refused_naming_the_scheme_and_the_supported_ones() {
        let err = storage_from_uri("s3://bucket/prefix").unwrap_err();
        assert!(matches!(err, StoreError::UnsupportedUri { ref scheme, .. } if scheme == "s3"), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("\"s3\"") && msg.contains("file"), "{msg}");
        assert!(matches!(storage_from_uri("file://host/x"), Err(StoreError::InvalidUri { .. })));
        assert!(matches!(storage_from_uri(""), Err(StoreError::InvalidUri { .. })));
    }

    #[tokio::test]
    async fn puts_leave_no_temporary_files_and_listing_skips_stray_ones() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStorage::open(dir.path()).unwrap();
        s.put("d/obj", Bytes::from_static(b"1")).await.unwrap();
        s.put("d/obj", Bytes::from_static(b"22")).await.unwrap();
        let names: Vec<_> = fs::read_dir(dir.path().join("d")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("obj")]);
        // A crash between write and rename leaves a temp file; it is invisible.
        fs::write(dir.path().join("d").join(format!("{TEMP_PREFIX}dead")), b"partial").unwrap();
        let listed = s.list("d/").await.unwrap();
        assert_eq!(listed, vec![ObjectMeta { path: "d/obj".into(), size: 2 }]);
        assert!(matches!(s.get(&format!("d/{TEMP_PREFIX}dead")).await, Err(StoreError::InvalidPath { .. })));
    }

    #[tokio::test]
    async fn directories_are_not_objects() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStorage::open(dir.path()).unwrap();
        s.put("d/obj", Bytes::from_static(b"1")).await.unwrap();
        assert!(matches!(s.get("d").await, Err(StoreError::NotFound { .. })));
        assert!(matches!(s.size("d").await, Err(StoreError::NotFound { .. })));
        assert!(matches!(s.get("d/obj/below").await, Err(StoreError::NotFound { .. })));
        s.delete("d").await.unwrap();
        assert_eq!(s.get("d/obj").await.unwrap(), Bytes::from_static(b"1"));
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn listing_does_not_follow_symlinks_out_of_the_root() {
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), b"s").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStorage::open(dir.path()).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link")).unwrap();
        assert!(s.list("").await.unwrap().is_empty());
    }
}
