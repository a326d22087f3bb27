//! Cutting a Fetch response's `records` field into batches.
//!
//! This mirrors Kafka's `ByteBufferLogInputStream.nextBatch`: read the
//! 12-byte log overhead, sanity-check the length, and stop (without error)
//! when the rest of the buffer is shorter than the batch. Brokers truncate
//! the last batch of a partition when `max_bytes` runs out in the middle of
//! it (`FileRecords.slice` sends whole segments' bytes, not whole batches),
//! so a cut-short tail is normal: it is reported through
//! [`Split::truncated_tail`] and the caller fetches again from the next
//! offset after the last complete batch.

use bytes::Bytes;

use super::header::MAGIC;
use super::{BatchError, BatchHeader, VerifiedBatch, MAGIC_V2, MIN_BATCH_LENGTH};

/// Batches found in a Fetch response's records.
#[derive(Debug, Clone, Default)]
pub struct Split {
    /// Complete batches, in order; each a zero-copy slice of the input.
    pub batches: Vec<RawBatch>,
    /// Whether bytes after the last complete batch were dropped because the
    /// broker cut the last batch short.
    pub truncated_tail: bool,
}

/// A complete batch whose header has been parsed but whose CRC has not been
/// checked yet. Call [`RawBatch::verify`] before trusting its contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawBatch {
    header: BatchHeader,
    bytes: Bytes,
}

impl RawBatch {
    /// The parsed header (unverified).
    #[must_use]
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// The whole batch, `batch_length + 12` bytes.
    #[must_use]
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Checks the CRC-32C over bytes 21.. and the header fields a rewrite
    /// relies on (known codec, non-negative record count and last offset
    /// delta).
    pub fn verify(self) -> Result<VerifiedBatch, BatchError> {
        let header = self.header;
        let base_offset = header.base_offset;
        // One pass; a patched header's CRC is later derived from this one
        // ([`super::crc::patch`]) without reading the records again.
        let computed = super::crc::crc32c(self.bytes.get(super::CRC_START..).unwrap_or_default());
        if computed != header.crc {
            return Err(BatchError::CrcMismatch { base_offset, stored: header.crc, computed });
        }
        header.compression()?;
        if header.records_count < 0 {
            return Err(BatchError::Corrupt {
                base_offset,
                reason: format!("negative record count {}", header.records_count),
            });
        }
        if header.last_offset_delta < 0 {
            return Err(BatchError::Corrupt {
                base_offset,
                reason: format!("negative last offset delta {}", header.last_offset_delta),
            });
        }
        Ok(VerifiedBatch::new(header, self.bytes))
    }
}

/// Splits a Fetch response partition's `records` bytes into batches without
/// copying. A final batch that is cut short (or a tail too short to hold a
/// batch header) is dropped and flagged in [`Split::truncated_tail`].
///
/// Errors: a batch with magic other than 2 ([`BatchError::UnsupportedMagic`])
/// or a `batchLength` below the 49-byte minimum ([`BatchError::Corrupt`]).
// Owned `Bytes` by design: the returned batches share (and keep alive) its buffer.
#[allow(clippy::needless_pass_by_value)]
pub fn split_batches(records: Bytes) -> Result<Split, BatchError> {
    let mut split = Split { batches: Vec::with_capacity(count_batches(&records)), ..Split::default() };
    let mut pos = 0usize;
    let len = records.len();
    while pos < len {
        let rest = &records[pos..];
        // baseOffset + batchLength + partitionLeaderEpoch + magic.
        let Some(prefix) = rest.get(..=MAGIC) else {
            split.truncated_tail = true;
            break;
        };
        let mut b8 = [0u8; 8];
        b8.copy_from_slice(&prefix[..8]);
        let base_offset = i64::from_be_bytes(b8);
        let mut b4 = [0u8; 4];
        b4.copy_from_slice(&prefix[8..12]);
        let batch_length = i32::from_be_bytes(b4);
        let magic = prefix[MAGIC] as i8;
        // Magic first: legacy message sets have a smaller minimum size, and
        // "wrong format" is the more useful diagnosis.
        if magic != MAGIC_V2 {
            return Err(BatchError::UnsupportedMagic { base_offset, magic });
        }
        if batch_length < MIN_BATCH_LENGTH {
            return Err(BatchError::Corrupt {
                base_offset,
                reason: format!("batch length {batch_length} is below the minimum of {MIN_BATCH_LENGTH} bytes"),
            });
        }
        let total =
            usize::try_from(batch_length).ok().and_then(|l| l.checked_add(super::LOG_OVERHEAD)).unwrap_or(usize::MAX);
        if total > rest.len() {
            split.truncated_tail = true;
            break;
        }
        let bytes = records.slice(pos..pos + total);
        // Cannot fail: total >= 61.
        let Some(header) = BatchHeader::parse(&bytes) else {
            split.truncated_tail = true;
            break;
        };
        split.batches.push(RawBatch { header, bytes });
        pos += total;
    }
    Ok(split)
}

/// How many batches `records` seems to hold, from their length fields only (checked
/// by [`split_batches`]): one allocation for a response of thousands of small batches,
/// where growing the vector took a sixth of the proxy's time (fresh pages, zeroed).
fn count_batches(records: &[u8]) -> usize {
    let (mut pos, mut n) = (0usize, 0usize);
    while let Some(b) = records.get(pos + 8..pos + 12) {
        let length = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        let Ok(length) = usize::try_from(length) else { break };
        if length < MIN_BATCH_LENGTH as usize {
            break;
        }
        n += 1;
        pos = pos.saturating_add(length).saturating_add(super::LOG_OVERHEAD);
    }
    n
}
