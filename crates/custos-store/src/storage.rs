//! The object-storage abstraction and storage selection by URI.

use crate::{LocalStorage, StoreError};
use async_trait::async_trait;
use bytes::Bytes;
use std::ops::Range;
use std::sync::Arc;

/// One stored object, as [`Storage::list`] reports it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ObjectMeta {
    /// The object path, relative to the storage root, '/'-separated.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
}

/// A flat namespace of immutable-by-convention objects addressed by relative
/// '/'-separated paths (modelled on Quickwit's `Storage`).
///
/// Paths must pass [`validate_object_path`]: relative, no empty, `.` or `..`
/// components, no backslash or NUL. Every implementation must pass
/// `custos_store::conformance::run_all` (feature `conformance`).
#[async_trait]
pub trait Storage: Send + Sync + std::fmt::Debug {
    /// The URI this storage was opened from (e.g. `file:///var/lib/custos`).
    fn uri(&self) -> &str;

    /// Durable, atomic put: after `Ok` the object is fully written and
    /// survives a crash or power loss; readers never see a partial object.
    /// Overwrites an existing object.
    async fn put(&self, path: &str, bytes: Bytes) -> Result<(), StoreError>;

    /// The whole object; [`StoreError::NotFound`] when absent.
    async fn get(&self, path: &str) -> Result<Bytes, StoreError>;

    /// Bytes `range.start..range.end` of the object;
    /// [`StoreError::RangeOutOfBounds`] when the range is reversed or runs past
    /// the end. An empty in-bounds range gives empty bytes.
    async fn get_range(&self, path: &str, range: Range<u64>) -> Result<Bytes, StoreError>;

    /// Remove the object. Idempotent: deleting an absent object is `Ok`.
    async fn delete(&self, path: &str) -> Result<(), StoreError>;

    /// Every object whose path starts with `prefix` (a plain string prefix,
    /// so `"ws/a"` matches `"ws/a/x"` and `"ws/ab"`), sorted by path. The
    /// empty prefix lists everything.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, StoreError>;

    /// The object's size in bytes; [`StoreError::NotFound`] when absent.
    async fn size(&self, path: &str) -> Result<u64, StoreError>;
}

/// The URI schemes [`storage_from_uri`] accepts.
pub const SUPPORTED_SCHEMES: &str = "file (file:///absolute/dir, or a plain path)";

/// Open the storage a URI names.
///
/// * `file:///abs/dir` or a plain path (relative paths are resolved against
///   the current directory) → [`LocalStorage`], creating the root directory.
///   File URIs are not percent-decoded and must have an empty host.
/// * any other scheme (`s3://...`) → [`StoreError::UnsupportedUri`].
pub fn storage_from_uri(uri: &str) -> Result<Arc<dyn Storage>, StoreError> {
    let invalid = |reason: &str| StoreError::InvalidUri { uri: uri.to_string(), reason: reason.to_string() };
    if uri.trim().is_empty() {
        return Err(invalid("empty uri"));
    }
    if uri.contains('\0') {
        return Err(invalid("contains a nul byte"));
    }
    match uri.split_once("://") {
        Some((scheme, rest)) => {
            if !scheme.eq_ignore_ascii_case("file") {
                return Err(StoreError::UnsupportedUri {
                    scheme: scheme.to_string(),
                    uri: uri.to_string(),
                    supported: SUPPORTED_SCHEMES,
                });
            }
            if !rest.starts_with('/') {
                return Err(invalid("a file uri needs an empty host and an absolute path (file:///dir)"));
            }
            Ok(Arc::new(LocalStorage::open(rest)?))
        }
        None => Ok(Arc::new(LocalStorage::open(uri)?)),
    }
}

/// Prefix of the temporary files a local put writes before renaming; object
/// path components may not start with it, and listings skip such files.
pub(crate) const TEMP_PREFIX: &str = ".custos-tmp-";

fn path_error(path: &str, reason: &'static str) -> StoreError {
    StoreError::InvalidPath { path: path.chars().take(256).collect(), reason }
}

fn check_components<'a>(path: &str, components: impl Iterator<Item = &'a str>) -> Result<(), StoreError> {
    for c in components {
        match c {
            "" => return Err(path_error(path, "empty path component")),
            "." | ".." => return Err(path_error(path, "'.' and '..' components are not allowed")),
            c if c.starts_with(TEMP_PREFIX) => {
                return Err(path_error(path, "components may not start with the reserved temporary-file prefix"))
            }
            _ => {}
        }
    }
    Ok(())
}

fn check_chars(path: &str) -> Result<(), StoreError> {
    if path.starts_with('/') {
        return Err(path_error(path, "absolute paths are not allowed"));
    }
    if path.contains('\\') {
        return Err(path_error(path, "backslashes are not allowed"));
    }
    if path.contains('\0') {
        return Err(path_error(path, "nul bytes are not allowed"));
    }
    if path.len() > 4096 {
        return Err(path_error(path, "longer than 4096 bytes"));
    }
    Ok(())
}

/// Check that `path` is a safe object path: non-empty, relative,
/// '/'-separated, with no empty, `.` or `..` component, no backslash and no
/// NUL. Joining a valid path under a root can never leave the root.
pub fn validate_object_path(path: &str) -> Result<(), StoreError> {
    if path.is_empty() {
        return Err(path_error(path, "empty path"));
    }
    check_chars(path)?;
    check_components(path, path.split('/'))
}

/// Check a [`Storage::list`] prefix: empty, or a valid object path that may
/// end with '/'.
pub fn validate_prefix(prefix: &str) -> Result<(), StoreError> {
    if prefix.is_empty() {
        return Ok(());
    }
    check_chars(prefix)?;
    let trimmed = prefix.strip_suffix('/').unwrap_or(prefix);
    check_components(prefix, trimmed.split('/'))
}
