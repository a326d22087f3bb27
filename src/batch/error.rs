//! The single error type of the batch layer.
//!
//! Every variant says in plain words what is wrong with the bytes and, where
//! the batch header could be read, at which base offset the batch starts, so
//! that an operator can find the batch again with `kafka-dump-log.sh` or a
//! consumer seek. Functions that work below the batch level (record walking,
//! decompression) do not know the base offset; their errors carry `None`
//! there and the batch-level callers fill it in.

use std::fmt;

use super::Compression;

/// Everything that can go wrong while splitting, verifying or rewriting
/// record batches.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BatchError {
    /// The magic byte is not 2: legacy message sets (v0/v1) or garbage.
    #[error("record batch at offset {base_offset}: magic byte is {magic}, only record batch format v2 (magic 2) is supported")]
    UnsupportedMagic {
        /// Base offset of the batch.
        base_offset: i64,
        /// The magic byte found.
        magic: i8,
    },

    /// The stored CRC-32C does not match the bytes: the batch was damaged.
    #[error("record batch at offset {base_offset}: CRC-32C mismatch (stored {stored:#010x}, computed {computed:#010x}), the batch is corrupt")]
    CrcMismatch {
        /// Base offset of the batch.
        base_offset: i64,
        /// CRC stored in the header.
        stored: u32,
        /// CRC computed over bytes 21.. of the batch.
        computed: u32,
    },

    /// A header field has an impossible value (negative length, negative
    /// record count, ...).
    #[error("record batch at offset {base_offset} is corrupt: {reason}")]
    Corrupt {
        /// Base offset of the batch.
        base_offset: i64,
        /// What is wrong.
        reason: String,
    },

    /// Attribute bits 0-2 name a codec Kafka does not define (5, 6 or 7).
    #[error("record batch at offset {base_offset}: unknown compression codec id {codec} in the attributes")]
    UnknownCompression {
        /// Base offset of the batch.
        base_offset: i64,
        /// The value of attribute bits 0-2.
        codec: i16,
    },

    /// The records of a batch are malformed (bad varint, a length running
    /// past the end, wrong record count, trailing bytes).
    #[error("{}malformed record #{index} at byte {position} of the records: {reason}", at(*.base_offset))]
    MalformedRecord {
        /// Base offset of the batch, when known.
        base_offset: Option<i64>,
        /// Zero-based index of the record within the batch.
        index: usize,
        /// Byte position within the (decompressed) records data.
        position: usize,
        /// What is wrong.
        reason: &'static str,
    },

    /// The compressed records could not be decompressed.
    #[error("{}cannot decompress {codec} records: {reason}", at(*.base_offset))]
    Decompress {
        /// Base offset of the batch, when known.
        base_offset: Option<i64>,
        /// Codec from the batch attributes.
        codec: Compression,
        /// The decoder's complaint.
        reason: String,
    },

    /// Decompressing would produce more than the allowed number of bytes;
    /// refused to protect memory (compression bomb or absurd batch).
    #[error("{}{codec} records decompress to more than {limit} bytes, refusing", at(*.base_offset))]
    DecompressedTooLarge {
        /// Base offset of the batch, when known.
        base_offset: Option<i64>,
        /// Codec from the batch attributes.
        codec: Compression,
        /// The limit that was exceeded.
        limit: usize,
    },

    /// Compression failed (should not happen for in-memory buffers).
    #[error("{}cannot compress records with {codec}: {reason}", at(*.base_offset))]
    Compress {
        /// Base offset of the batch, when known.
        base_offset: Option<i64>,
        /// Codec requested.
        codec: Compression,
        /// The encoder's complaint.
        reason: String,
    },

    /// The batch is valid but must not be produced to the target cluster
    /// (control batch, empty batch, rewritten batch too large).
    #[error("record batch at offset {base_offset} cannot be forwarded: {reason}")]
    NotForwardable {
        /// Base offset of the batch.
        base_offset: i64,
        /// Why.
        reason: &'static str,
    },
}

fn at(base_offset: Option<i64>) -> AtOffset {
    AtOffset(base_offset)
}

struct AtOffset(Option<i64>);

impl fmt::Display for AtOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(offset) => write!(f, "record batch at offset {offset}: "),
            None => Ok(()),
        }
    }
}

impl BatchError {
    /// Fills in the base offset of errors raised below the batch level.
    #[must_use]
    pub(crate) fn at_batch(mut self, offset: i64) -> Self {
        match &mut self {
            BatchError::MalformedRecord { base_offset, .. }
            | BatchError::Decompress { base_offset, .. }
            | BatchError::DecompressedTooLarge { base_offset, .. }
            | BatchError::Compress { base_offset, .. } => {
                base_offset.get_or_insert(offset);
            }
            _ => {}
        }
        self
    }

    /// Base offset of the batch the error is about, when known.
    #[must_use]
    pub fn base_offset(&self) -> Option<i64> {
        match self {
            BatchError::UnsupportedMagic { base_offset, .. }
            | BatchError::CrcMismatch { base_offset, .. }
            | BatchError::Corrupt { base_offset, .. }
            | BatchError::UnknownCompression { base_offset, .. }
            | BatchError::NotForwardable { base_offset, .. } => Some(*base_offset),
            BatchError::MalformedRecord { base_offset, .. }
            | BatchError::Decompress { base_offset, .. }
            | BatchError::DecompressedTooLarge { base_offset, .. }
            | BatchError::Compress { base_offset, .. } => *base_offset,
        }
    }
}
