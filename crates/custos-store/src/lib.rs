//! Storage for custos: objects in a store chosen by URI ([`storage_from_uri`],
//! [`Storage`], [`LocalStorage`]), and the columnar segment format that holds
//! a (workspace, table)'s events ([`SegmentBuilder`], [`decode_segment`],
//! the layout documented in [`segment`]).
//!
//! Encoding and decoding are pure functions over bytes, so encryption at rest
//! can wrap them without touching either side.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod error;
mod local;
pub mod segment;
mod storage;

pub use error::StoreError;
pub use local::LocalStorage;
pub use segment::{
    adapt_batch, arrow_type, decode_segment, decode_segment_columns, envelope_fields, segment_path, table_prefix, table_schema,
    DecodedSegment, EncodedSegment, SegmentBuilder, SegmentHeader, ENVELOPE_COLUMNS, MAX_BATCH_ROWS,
    SEGMENT_EXTENSION, SEGMENT_FORMAT_VERSION, SEGMENT_MAGIC,
};
pub use storage::{storage_from_uri, validate_object_path, validate_prefix, ObjectMeta, Storage, SUPPORTED_SCHEMES};
