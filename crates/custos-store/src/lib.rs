//! Storage for custos: objects in a store chosen by URI ([`storage_from_uri`],
//! [`Storage`], [`LocalStorage`]), and the columnar segment format that holds
//! a (workspace, table)'s events ([`SegmentBuilder`], [`decode_segment`],
//! the layout documented in [`segment`]).
//!
//! Encoding and decoding are pure functions over bytes. Encryption at rest
//! seals a segment's body under its own data key, wrapped by the
//! workspace's key from a [`KeyProvider`] ([`keys`]; segment format
//! version 2 in [`segment`]).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod error;
pub mod keys;
mod local;
pub mod purge;
pub mod retention;
pub mod segment;
mod storage;

pub use error::StoreError;
pub use keys::{
    DataKey, KeyError, KeyFileProvider, KeyProvider, KeyRef, KeyState, KeyVersionInfo, Pkcs11Config, Pkcs11Provider, ServiceKeystore,
};
pub use local::LocalStorage;
pub use segment::{
    adapt_batch, arrow_type, decode_segment, decode_segment_columns, decode_segment_opts, decode_segment_with, encode_batches, string_views, envelope_fields, rewrap_segment, segment_path, table_prefix, table_schema, workspace_prefix,
    DecodeOptions, DecodedSegment, EncodedSegment, SealInfo, SegmentBuilder, SegmentHeader, ENVELOPE_COLUMNS, FLAG_SEALED,
    IPC_FORMAT_VERSION, MAX_BATCH_ROWS, MAX_ROW_GROUP_ROWS, SEALED_IPC_FORMAT_VERSION, SEAL_ALG, SEGMENT_EXTENSION, SEGMENT_FORMAT_VERSION, SEGMENT_MAGIC,
};
pub use storage::{storage_from_uri, validate_object_path, validate_prefix, ObjectMeta, Storage, SUPPORTED_SCHEMES};
