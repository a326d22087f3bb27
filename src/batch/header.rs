//! The fixed 61-byte header of a v2 record batch.
//!
//! Layout (big-endian), as written by Kafka's `DefaultRecordBatch.java`:
//!
//! | offset | field                | type | notes                                   |
//! |-------:|----------------------|------|-----------------------------------------|
//! |      0 | baseOffset           | i64  | assigned by the leader on append        |
//! |      8 | batchLength          | i32  | bytes after this field (total − 12)     |
//! |     12 | partitionLeaderEpoch | i32  | not covered by the CRC                  |
//! |     16 | magic                | i8   | 2                                       |
//! |     17 | crc                  | u32  | CRC-32C over bytes 21..end              |
//! |     21 | attributes           | i16  | see below                               |
//! |     23 | lastOffsetDelta      | i32  |                                         |
//! |     27 | baseTimestamp        | i64  | delete horizon if bit 6 is set (KIP-534)|
//! |     35 | maxTimestamp         | i64  |                                         |
//! |     43 | producerId           | i64  | −1 when not idempotent                  |
//! |     51 | producerEpoch        | i16  |                                         |
//! |     53 | baseSequence         | i32  |                                         |
//! |     57 | recordsCount         | i32  |                                         |
//! |     61 | records              |      | possibly one compressed blob            |
//!
//! Attributes: bits 0-2 compression codec, bit 3 timestamp type
//! (`LogAppendTime`), bit 4 transactional, bit 5 control, bit 6
//! hasDeleteHorizonMs.
//!
//! `baseOffset`, `batchLength`, `partitionLeaderEpoch` and `magic` lie before
//! the CRC'd range so that the broker can assign offsets and epochs without
//! recomputing the checksum.

use super::{BatchError, Compression};

/// Length of the fixed v2 batch header; records start at this offset.
pub const HEADER_LEN: usize = 61;

pub(crate) const BASE_OFFSET: usize = 0;
pub(crate) const BATCH_LENGTH: usize = 8;
pub(crate) const PARTITION_LEADER_EPOCH: usize = 12;
pub(crate) const MAGIC: usize = 16;
pub(crate) const CRC: usize = 17;
pub(crate) const ATTRIBUTES: usize = 21;
pub(crate) const LAST_OFFSET_DELTA: usize = 23;
pub(crate) const BASE_TIMESTAMP: usize = 27;
pub(crate) const MAX_TIMESTAMP: usize = 35;
pub(crate) const PRODUCER_ID: usize = 43;
pub(crate) const PRODUCER_EPOCH: usize = 51;
pub(crate) const BASE_SEQUENCE: usize = 53;
pub(crate) const RECORDS_COUNT: usize = 57;

/// Attribute bits 0-2: the compression codec.
pub const COMPRESSION_MASK: i16 = 0x07;
/// Attribute bit 3: timestamps are the broker's log-append time.
pub const TIMESTAMP_TYPE_FLAG: i16 = 1 << 3;
/// Attribute bit 4: the batch belongs to a transaction (KIP-98).
pub const TRANSACTIONAL_FLAG: i16 = 1 << 4;
/// Attribute bit 5: the batch holds a control record (transaction marker).
pub const CONTROL_FLAG: i16 = 1 << 5;
/// Attribute bit 6: `baseTimestamp` is the delete horizon (KIP-534).
pub const DELETE_HORIZON_FLAG: i16 = 1 << 6;

/// The parsed fixed header of a v2 record batch. Plain data: parsing it
/// validates nothing beyond its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BatchHeader {
    /// Offset of the first record (as assigned by the source leader).
    pub base_offset: i64,
    /// Bytes after the `batchLength` field.
    pub batch_length: i32,
    /// Leader epoch at append time; not covered by the CRC.
    pub partition_leader_epoch: i32,
    /// Format version, 2.
    pub magic: i8,
    /// CRC-32C over bytes 21..end.
    pub crc: u32,
    /// Attribute bits, see the module docs.
    pub attributes: i16,
    /// Offset of the last record relative to `base_offset`.
    pub last_offset_delta: i32,
    /// Timestamp of the first record (or the delete horizon, bit 6).
    pub base_timestamp: i64,
    /// Largest timestamp in the batch.
    pub max_timestamp: i64,
    /// Idempotent/transactional producer id, −1 if none.
    pub producer_id: i64,
    /// Producer epoch, −1 if none.
    pub producer_epoch: i16,
    /// Sequence number of the first record, −1 if none.
    pub base_sequence: i32,
    /// Number of records actually present (may be less than
    /// `last_offset_delta + 1` after compaction).
    pub records_count: i32,
}

fn be_i64(b: &[u8; HEADER_LEN], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

fn be_i32(b: &[u8; HEADER_LEN], at: usize) -> i32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    i32::from_be_bytes(a)
}

fn be_i16(b: &[u8; HEADER_LEN], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}

impl BatchHeader {
    /// Parses the first [`HEADER_LEN`] bytes of `bytes`; `None` if there are
    /// fewer. No field is validated.
    #[must_use]
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let b: &[u8; HEADER_LEN] = bytes.get(..HEADER_LEN)?.try_into().ok()?;
        Some(Self {
            base_offset: be_i64(b, BASE_OFFSET),
            batch_length: be_i32(b, BATCH_LENGTH),
            partition_leader_epoch: be_i32(b, PARTITION_LEADER_EPOCH),
            magic: b[MAGIC] as i8,
            crc: be_i32(b, CRC) as u32,
            attributes: be_i16(b, ATTRIBUTES),
            last_offset_delta: be_i32(b, LAST_OFFSET_DELTA),
            base_timestamp: be_i64(b, BASE_TIMESTAMP),
            max_timestamp: be_i64(b, MAX_TIMESTAMP),
            producer_id: be_i64(b, PRODUCER_ID),
            producer_epoch: be_i16(b, PRODUCER_EPOCH),
            base_sequence: be_i32(b, BASE_SEQUENCE),
            records_count: be_i32(b, RECORDS_COUNT),
        })
    }

    /// Serialises the header exactly as stored (the `crc` field is written
    /// as is, not recomputed).
    #[must_use]
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        self.write_into(&mut b);
        b
    }

    /// Writes the header into `out`, which must hold exactly [`HEADER_LEN`]
    /// bytes.
    pub(crate) fn write_into(&self, b: &mut [u8; HEADER_LEN]) {
        b[BASE_OFFSET..BASE_OFFSET + 8].copy_from_slice(&self.base_offset.to_be_bytes());
        b[BATCH_LENGTH..BATCH_LENGTH + 4].copy_from_slice(&self.batch_length.to_be_bytes());
        b[PARTITION_LEADER_EPOCH..PARTITION_LEADER_EPOCH + 4]
            .copy_from_slice(&self.partition_leader_epoch.to_be_bytes());
        b[MAGIC] = self.magic as u8;
        b[CRC..CRC + 4].copy_from_slice(&self.crc.to_be_bytes());
        b[ATTRIBUTES..ATTRIBUTES + 2].copy_from_slice(&self.attributes.to_be_bytes());
        b[LAST_OFFSET_DELTA..LAST_OFFSET_DELTA + 4].copy_from_slice(&self.last_offset_delta.to_be_bytes());
        b[BASE_TIMESTAMP..BASE_TIMESTAMP + 8].copy_from_slice(&self.base_timestamp.to_be_bytes());
        b[MAX_TIMESTAMP..MAX_TIMESTAMP + 8].copy_from_slice(&self.max_timestamp.to_be_bytes());
        b[PRODUCER_ID..PRODUCER_ID + 8].copy_from_slice(&self.producer_id.to_be_bytes());
        b[PRODUCER_EPOCH..PRODUCER_EPOCH + 2].copy_from_slice(&self.producer_epoch.to_be_bytes());
        b[BASE_SEQUENCE..BASE_SEQUENCE + 4].copy_from_slice(&self.base_sequence.to_be_bytes());
        b[RECORDS_COUNT..RECORDS_COUNT + 4].copy_from_slice(&self.records_count.to_be_bytes());
    }

    /// The codec named by attribute bits 0-2.
    pub fn compression(&self) -> Result<Compression, BatchError> {
        let codec = self.attributes & COMPRESSION_MASK;
        Compression::from_id(codec).ok_or(BatchError::UnknownCompression { base_offset: self.base_offset, codec })
    }

    /// Attribute bit 3: timestamps are log-append time rather than create time.
    #[must_use]
    pub fn is_log_append_time(&self) -> bool {
        self.attributes & TIMESTAMP_TYPE_FLAG != 0
    }

    /// Attribute bit 4 (KIP-98).
    #[must_use]
    pub fn is_transactional(&self) -> bool {
        self.attributes & TRANSACTIONAL_FLAG != 0
    }

    /// Attribute bit 5: a transaction marker batch (KIP-98).
    #[must_use]
    pub fn is_control(&self) -> bool {
        self.attributes & CONTROL_FLAG != 0
    }

    /// Attribute bit 6: `base_timestamp` holds the delete horizon (KIP-534).
    #[must_use]
    pub fn has_delete_horizon(&self) -> bool {
        self.attributes & DELETE_HORIZON_FLAG != 0
    }

    /// Offset of the last record: `base_offset + last_offset_delta`
    /// (saturating, so hostile values cannot overflow).
    #[must_use]
    pub fn last_offset(&self) -> i64 {
        self.base_offset.saturating_add(i64::from(self.last_offset_delta))
    }

    /// The offset to fetch next after this batch: `last_offset() + 1`.
    #[must_use]
    pub fn next_offset(&self) -> i64 {
        self.last_offset().saturating_add(1)
    }

    /// Total size of the batch on the wire (`batch_length + 12`); `None` if
    /// `batch_length` is negative.
    #[must_use]
    pub fn total_len(&self) -> Option<usize> {
        usize::try_from(self.batch_length).ok()?.checked_add(super::LOG_OVERHEAD)
    }
}
