//! Kafka record batches (format v2, magic 2) as opaque, mostly untouched bytes.
//!
//! # Why this layer exists
//!
//! mirrorproxy copies data from a source cluster to a target cluster without
//! ever decoding records into structs: a Fetch response's `records` field is a
//! concatenation of record batches, and a Produce request's `records` field is
//! the same wire format. So the cheapest correct mirror forwards each batch as
//! bytes and patches only the 61-byte batch header. This module is the
//! sans-I/O codec for that: it splits, verifies and rewrites batches over
//! [`bytes::Bytes`], zero-copy where possible.
//!
//! The layout is the one written by Kafka's `DefaultRecordBatch.java`
//! (`clients/src/main/java/org/apache/kafka/common/record/DefaultRecordBatch.java`);
//! see [`BatchHeader`] for the field table.
//!
//! # Batch states as types
//!
//! A batch moves through three states, each its own type (in the spirit of
//! tansu's deflated/inflated split), so the compiler enforces the order of
//! checks:
//!
//! 1. [`RawBatch`]: a zero-copy slice cut out of a Fetch response by
//!    [`split_batches`]. Its header has been parsed, nothing more.
//! 2. [`VerifiedBatch`]: the CRC-32C over bytes `21..` matched
//!    ([`RawBatch::verify`]). Only a verified batch can be rewritten, so a
//!    batch corrupted on the wire can never leave this process with a freshly
//!    computed, *valid* CRC that would hide the corruption from the target
//!    broker.
//! 3. [`OutgoingBatch`]: the bytes to put in a Produce request
//!    ([`VerifiedBatch::into_outgoing`]): base offset 0, the mirror's
//!    producer id/epoch/sequence, the transactional bit cleared.
//!
//! # Why batches sometimes need renumbering
//!
//! Log compaction removes records from the middle of a batch but keeps the
//! batch's `lastOffsetDelta` so that the batch still covers its original
//! offset range (`LogCleaner` / `MemoryRecords.filterTo`). A compacted batch
//! with records at deltas 0, 2, 5 has `recordsCount = 3` and
//! `lastOffsetDelta = 5`. The target broker's `LogValidator.validateBatch`
//! rejects such a batch in a Produce request ("Inconsistent batch offset
//! range ... and count of records"), because for a client batch the offset
//! range must equal the count. [`VerifiedBatch::into_outgoing`] therefore
//! rewrites the records' `offsetDelta` varints to `0..n-1` (decompressing and
//! re-compressing with the same codec when needed), copying every other byte
//! of each record untouched.
//!
//! # Transactions and control batches (KIP-98)
//!
//! Transactional batches carry attribute bit 4; the transaction outcome is
//! written later as a *control batch* (bit 5) holding one record whose key is
//! `version: i16, type: i16` (0 = ABORT, 1 = COMMIT). The mirror does not
//! replay source transactions: callers are expected to filter aborted data
//! (via the Fetch response's aborted-transactions list or `read_committed`),
//! skip control batches ([`VerifiedBatch::control_type`]) and forward the
//! committed data as idempotent, non-transactional batches, which is why
//! [`VerifiedBatch::into_outgoing`] clears bit 4 and refuses control batches.
//!
//! # Robustness
//!
//! Everything here parses network input. No input bytes may cause a panic:
//! all slicing is checked, lengths are validated before use, and
//! decompression output is bounded by [`MAX_DECOMPRESSED_LEN`] so that a
//! compression bomb cannot exhaust memory. Errors are [`BatchError`] values
//! that carry the batch's base offset where known.

mod compression;
pub mod crc;
mod error;
mod header;
mod lz4;
pub mod merge;
pub mod provenance;
mod records;
mod split;
mod verified;

#[cfg(test)]
mod tests;
#[cfg(test)]
pub(crate) mod testutil;

pub use compression::{
    compress, compress_snappy, decompress, decompress_with_limit, snappy_framing, Compression, SnappyFraming,
    MAX_DECOMPRESSED_LEN,
};
pub use error::BatchError;
pub use header::{BatchHeader, HEADER_LEN};
pub use provenance::{
    decide_provenance, first_record_provenance, stamp_provenance, ClusterId, Decision, Hop, Provenance,
    ProvenanceError, PROVENANCE_HEADER,
};
pub use records::{walk_records, RecordSpan};
pub use split::{split_batches, RawBatch, Split};
pub use verified::{ControlType, OutgoingBatch, ProducerStamp, VerifiedBatch};

/// The only record batch format this crate understands (Kafka 0.11+, KIP-98).
pub const MAGIC_V2: i8 = 2;

/// Bytes before the `batchLength` field ends: `baseOffset` (8) + `batchLength` (4).
/// `batchLength` counts the bytes after this prefix (Kafka's `LOG_OVERHEAD`).
pub const LOG_OVERHEAD: usize = 12;

/// Smallest legal `batchLength`: a v2 header with zero records (61 − 12).
pub const MIN_BATCH_LENGTH: i32 = (HEADER_LEN - LOG_OVERHEAD) as i32;

/// Offset of the first byte covered by the CRC (the attributes field).
pub const CRC_START: usize = 21;
