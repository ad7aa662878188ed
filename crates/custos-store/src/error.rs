//! The error type of this crate.

/// Everything that can go wrong in object storage or the segment codec.
///
/// Messages are lowercase and name the object path, URI or segment concerned.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A storage URI with a scheme this build does not implement.
    #[error("unsupported storage uri scheme {scheme:?} in {uri:?}: supported schemes are {supported}")]
    UnsupportedUri {
        /// The scheme found (before `://`).
        scheme: String,
        /// The whole URI.
        uri: String,
        /// The supported schemes, comma-separated.
        supported: &'static str,
    },
    /// A storage URI that cannot be parsed or used.
    #[error("invalid storage uri {uri:?}: {reason}")]
    InvalidUri {
        /// The URI.
        uri: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An object path (or list prefix) that is not a safe relative path.
    #[error("invalid object path {path:?}: {reason}")]
    InvalidPath {
        /// The path as given (truncated to 256 characters).
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// No object at this path.
    #[error("object {path:?} not found in {uri}")]
    NotFound {
        /// The object path.
        path: String,
        /// The storage URI.
        uri: String,
    },
    /// A range read that is empty-reversed or runs past the end of the object.
    #[error("range {start}..{end} is out of bounds for object {path:?} of {size} bytes")]
    RangeOutOfBounds {
        /// The object path.
        path: String,
        /// Requested start.
        start: u64,
        /// Requested end (exclusive).
        end: u64,
        /// The object's size.
        size: u64,
    },
    /// An I/O failure on one object or directory.
    #[error("{op} {path:?} in {uri} failed: {source}")]
    Io {
        /// The operation ("put", "get", "list", ...).
        op: &'static str,
        /// The object path or prefix.
        path: String,
        /// The storage URI.
        uri: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A blocking storage task panicked or was cancelled.
    #[error("{op} {path:?} in {uri} failed: background task did not complete: {reason}")]
    TaskFailed {
        /// The operation.
        op: &'static str,
        /// The object path or prefix.
        path: String,
        /// The storage URI.
        uri: String,
        /// The join error.
        reason: String,
    },
    /// Segment bytes that are damaged, truncated or inconsistent.
    #[error("corrupt segment: {0}")]
    CorruptSegment(String),

    /// A sealed segment failed authentication: a byte changed (with its
    /// checksum forged), it was moved from another workspace, or its data
    /// key does not unwrap. Never silently wrong rows: the segment is not
    /// read.
    #[error("segment {segment} fails authentication ({reason}): it was tampered with, truncated or sealed under another key")]
    Tampered {
        /// The segment id.
        segment: String,
        /// Which check failed.
        reason: String,
    },

    /// A sealed segment was read without a key provider.
    #[error("segment {segment} is sealed and no key provider was given")]
    Sealed {
        /// The segment id.
        segment: String,
    },

    /// The key provider refused the key a segment needs (revoked, unknown,
    /// or the provider failed).
    #[error("segment {segment}: {source}")]
    Key {
        /// The segment id.
        segment: String,
        /// Why.
        #[source]
        source: crate::keys::KeyError,
    },
    /// A segment written in a format version this build cannot read.
    #[error("unsupported segment format version {version} (this build reads version {supported})")]
    UnsupportedSegmentVersion {
        /// The version found.
        version: u16,
        /// The version this build reads.
        supported: u16,
    },
    /// A segment with feature flags this build does not understand.
    #[error("unsupported segment flags {flags:#06x} (this build understands none)")]
    UnsupportedSegmentFlags {
        /// The flags found.
        flags: u16,
    },
    /// `SegmentBuilder::finish` on a builder with no rows.
    #[error("segment {segment} of table {table} in workspace {workspace} has no rows")]
    EmptySegment {
        /// The segment id.
        segment: String,
        /// The table.
        table: String,
        /// The workspace.
        workspace: String,
    },
    /// Encoding a segment failed inside Arrow.
    #[error("encoding segment {segment}: {reason}")]
    Encode {
        /// The segment id.
        segment: String,
        /// What failed.
        reason: String,
    },
    /// A record batch that cannot be adapted to a table schema.
    #[error("cannot adapt column {column:?} to the table schema: {reason}")]
    SchemaMismatch {
        /// The column concerned.
        column: String,
        /// Why.
        reason: String,
    },
}
