//! Verified batches and their rewrite into Produce-ready bytes.
//!
//! What a client may put in a Produce request is checked by the target
//! broker's `LogValidator.java` (`validateBatch`, `validateRecord`): the
//! batch's offset range must match its record count, client batches must not
//! be control batches, and idempotent batches need the producer id, epoch and
//! sequence of the *target* producer session. The broker assigns the real
//! offsets and the leader epoch itself, so we send base offset 0 (like the
//! Java producer) and leave `partitionLeaderEpoch` alone.
//!
//! The common path is a single allocation and memcpy of the batch, a patch
//! of the 61-byte header and, only if a CRC-covered byte changed, one
//! CRC-32C pass over bytes 21.. (hardware-accelerated by the `crc32c`
//! crate). Renumbering (compacted batches) is the slow path.

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};

use super::header::{
    ATTRIBUTES, BASE_OFFSET, BASE_SEQUENCE, CRC, LAST_OFFSET_DELTA, PRODUCER_EPOCH, PRODUCER_ID, TRANSACTIONAL_FLAG,
};
use super::records::{renumber, walk_records, RecordSpan};
use super::{
    compress, compress_snappy, decompress, snappy_framing, BatchError, BatchHeader, Compression, CRC_START, HEADER_LEN,
};

/// The type of a control record (key `version: i16, type: i16`, KIP-98,
/// Kafka's `ControlRecordType.java`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ControlType {
    /// 0: the transaction was aborted.
    Abort,
    /// 1: the transaction was committed.
    Commit,
    /// Any other type (e.g. `KRaft` leader-change / snapshot markers).
    Other(i16),
}

impl ControlType {
    /// Maps the wire type id.
    #[must_use]
    pub fn from_id(id: i16) -> Self {
        match id {
            0 => ControlType::Abort,
            1 => ControlType::Commit,
            other => ControlType::Other(other),
        }
    }
}

/// The producer identity the target batch is written under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProducerStamp {
    /// Target producer id (−1 for a non-idempotent producer).
    pub producer_id: i64,
    /// Target producer epoch (−1 if none).
    pub producer_epoch: i16,
    /// Sequence number of the batch's first record (−1 if none).
    pub base_sequence: i32,
}

/// A batch whose CRC matched. Produced by [`super::RawBatch::verify`] only.
/// Its CRC is right by construction (checked on the way in, computed where the proxy
/// built it), so the CRC of a patched header is derived from it ([`super::crc::patch`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedBatch {
    header: BatchHeader,
    bytes: Bytes,
}

/// A batch ready for a Produce request, with the header it carries: its own
/// (patched) 61 header bytes and, apart from them, the records section, which on the
/// pass-through path is still a view of the fetched bytes. The two parts go to the
/// socket as they are (vectored write), so forwarding a batch copies nothing in user
/// space; [`OutgoingBatch::to_bytes`] joins them where one buffer is needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingBatch {
    header: BatchHeader,
    head: [u8; HEADER_LEN],
    body: Bytes,
}

impl OutgoingBatch {
    /// The 61 header bytes as sent.
    #[must_use]
    pub fn head(&self) -> &[u8; HEADER_LEN] {
        &self.head
    }

    /// The records section as sent (everything after the header).
    #[must_use]
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// Size of the batch on the wire.
    #[must_use]
    #[allow(clippy::len_without_is_empty)] // an outgoing batch is never empty
    pub fn len(&self) -> usize {
        HEADER_LEN + self.body.len()
    }

    /// The batch as one buffer (a copy).
    #[must_use]
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.len());
        out.extend_from_slice(&self.head);
        out.extend_from_slice(&self.body);
        out.freeze()
    }

    /// A batch built anew (re-batching): `bytes` is the whole batch, `header` its header.
    pub(super) fn assembled(header: BatchHeader, bytes: &Bytes) -> Self {
        let mut head = [0u8; HEADER_LEN];
        head.copy_from_slice(&bytes[..HEADER_LEN]);
        Self { header, head, body: bytes.slice(HEADER_LEN..) }
    }

    /// Number of records in the batch (the sequence numbers it uses).
    #[must_use]
    pub fn record_count(&self) -> i32 {
        self.header.records_count
    }

    /// The header as written.
    #[must_use]
    pub fn header(&self) -> BatchHeader {
        self.header
    }
}

impl VerifiedBatch {
    pub(crate) fn new(header: BatchHeader, bytes: Bytes) -> Self {
        Self { header, bytes }
    }

    /// The verified header.
    #[must_use]
    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// The whole batch as received.
    #[must_use]
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// The codec (validated by `verify`).
    fn codec(&self) -> Compression {
        self.header.compression().unwrap_or(Compression::None)
    }

    /// The records part as stored (possibly compressed).
    #[must_use]
    pub fn records_data(&self) -> &[u8] {
        self.bytes.get(HEADER_LEN..).unwrap_or_default()
    }

    /// The records part decompressed (borrowed when uncompressed).
    pub fn decompressed_records(&self) -> Result<Cow<'_, [u8]>, BatchError> {
        let base = self.header.base_offset;
        match self.codec() {
            Compression::None => Ok(Cow::Borrowed(self.records_data())),
            codec => decompress(codec, self.records_data()).map(Cow::Owned).map_err(|e| e.at_batch(base)),
        }
    }

    /// Decompresses and walks the records; see [`walk_records`].
    pub fn record_spans(&self) -> Result<(Cow<'_, [u8]>, Vec<RecordSpan>), BatchError> {
        let data = self.decompressed_records()?;
        let spans = walk_records(&data, self.header.records_count).map_err(|e| e.at_batch(self.header.base_offset))?;
        Ok((data, spans))
    }

    /// A batch left with no records by compaction (kept to preserve producer
    /// state, KIP-98). Such batches carry nothing to mirror; skip them.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.header.records_count == 0
    }

    /// Whether the offset range is wider than the record count (compaction
    /// removed records), so offset deltas must be rewritten before the batch
    /// is acceptable in a Produce request. False for empty batches.
    #[must_use]
    pub fn needs_renumbering(&self) -> bool {
        !self.is_empty() && i64::from(self.header.records_count) != i64::from(self.header.last_offset_delta) + 1
    }

    /// For a control batch, the type of its marker record; `None` for data
    /// batches.
    pub fn control_type(&self) -> Result<Option<ControlType>, BatchError> {
        if !self.header.is_control() {
            return Ok(None);
        }
        let base_offset = self.header.base_offset;
        let corrupt = |reason: &str| BatchError::Corrupt { base_offset, reason: reason.to_owned() };
        let (data, spans) = self.record_spans()?;
        let first = spans.first().ok_or_else(|| corrupt("control batch has no control record"))?;
        let key =
            first.key.clone().and_then(|k| data.get(k)).ok_or_else(|| corrupt("control record has a null key"))?;
        let (Some(version), Some(kind)) = (key.get(0..2), key.get(2..4)) else {
            return Err(corrupt("control record key shorter than 4 bytes"));
        };
        let version = i16::from_be_bytes([version[0], version[1]]);
        if version < 0 {
            return Err(corrupt("control record key has a negative version"));
        }
        Ok(Some(ControlType::from_id(i16::from_be_bytes([kind[0], kind[1]]))))
    }

    /// Produces the bytes to send to the target broker: base offset 0, the
    /// given producer id/epoch/base sequence, transactional bit cleared, all
    /// other attribute bits kept, `partitionLeaderEpoch` kept, records
    /// renumbered to consecutive offset deltas if compaction left gaps.
    ///
    /// The CRC is recomputed only if a covered byte changed. Control batches
    /// and empty batches are refused ([`BatchError::NotForwardable`]).
    pub fn into_outgoing(self, stamp: ProducerStamp) -> Result<OutgoingBatch, BatchError> {
        let base_offset = self.header.base_offset;
        if self.header.is_control() {
            return Err(BatchError::NotForwardable {
                base_offset,
                reason: "control batches (transaction markers) cannot be produced by a client",
            });
        }
        if self.is_empty() {
            return Err(BatchError::NotForwardable {
                base_offset,
                reason: "the batch has no records (emptied by compaction)",
            });
        }
        if self.needs_renumbering() {
            self.renumbered(stamp)
        } else {
            Ok(self.patched(stamp))
        }
    }

    fn stamped_header(&self, stamp: ProducerStamp) -> BatchHeader {
        BatchHeader {
            base_offset: 0,
            attributes: self.header.attributes & !TRANSACTIONAL_FLAG,
            producer_id: stamp.producer_id,
            producer_epoch: stamp.producer_epoch,
            base_sequence: stamp.base_sequence,
            ..self.header
        }
    }

    /// Fast path: patch the header fields in a copy of the 61 header bytes, fix the
    /// CRC if a covered byte changed; the records section is not copied.
    fn patched(self, stamp: ProducerStamp) -> OutgoingBatch {
        let mut header = self.stamped_header(stamp);
        let mut head = [0u8; HEADER_LEN];
        head.copy_from_slice(&self.bytes[..HEADER_LEN]);
        head[BASE_OFFSET..BASE_OFFSET + 8].copy_from_slice(&header.base_offset.to_be_bytes());
        head[ATTRIBUTES..ATTRIBUTES + 2].copy_from_slice(&header.attributes.to_be_bytes());
        head[PRODUCER_ID..PRODUCER_ID + 8].copy_from_slice(&header.producer_id.to_be_bytes());
        head[PRODUCER_EPOCH..PRODUCER_EPOCH + 2].copy_from_slice(&header.producer_epoch.to_be_bytes());
        head[BASE_SEQUENCE..BASE_SEQUENCE + 4].copy_from_slice(&header.base_sequence.to_be_bytes());
        let body = self.bytes.slice(HEADER_LEN..);
        if head[CRC_START..] != self.bytes[CRC_START..HEADER_LEN] {
            header.crc =
                super::crc::patch(self.header.crc, &self.bytes[CRC_START..HEADER_LEN], &head[CRC_START..], body.len());
            head[CRC..CRC + 4].copy_from_slice(&header.crc.to_be_bytes());
        }
        OutgoingBatch { header, head, body }
    }

    /// Compresses plain records data with this batch's codec (and snappy framing).
    fn pack(&self, plain: Vec<u8>) -> Result<Vec<u8>, BatchError> {
        let base_offset = self.header.base_offset;
        Ok(match self.codec() {
            Compression::None => plain,
            Compression::Snappy => {
                compress_snappy(&plain, snappy_framing(self.records_data())).map_err(|e| e.at_batch(base_offset))?
            }
            other => compress(other, &plain).map_err(|e| e.at_batch(base_offset))?,
        })
    }

    /// The same batch without its records at offsets below `offset`, or `None` when
    /// no record is left.
    ///
    /// Needed where a start position falls inside a batch (Fetch returns whole
    /// batches): the records before it were not asked for. The kept records keep
    /// their offset deltas and the base offset stays, exactly as log compaction
    /// leaves a batch, so [`VerifiedBatch::into_outgoing`] renumbers them. Records
    /// are copied byte for byte; only the batch is re-compressed.
    pub fn without_records_before(self, offset: i64) -> Result<Option<VerifiedBatch>, BatchError> {
        let base_offset = self.header.base_offset;
        if offset <= base_offset {
            return Ok(Some(self));
        }
        if offset > self.header.last_offset() {
            return Ok(None);
        }
        let (data, spans) = self.record_spans()?;
        let mut plain = Vec::with_capacity(data.len());
        let mut kept = 0i32;
        for span in &spans {
            if base_offset + i64::from(span.offset_delta) >= offset {
                plain.extend_from_slice(&data[span.record.clone()]);
                kept += 1;
            }
        }
        if kept == 0 {
            return Ok(None);
        }
        let body = self.pack(plain)?;
        let (header, bytes) = assemble(
            BatchHeader { records_count: kept, ..self.header },
            &body,
            "the trimmed batch would be larger than 2 GiB",
        )?;
        Ok(Some(VerifiedBatch::new(header, bytes)))
    }

    /// Slow path: rewrite offset deltas to 0..n-1 and re-compress.
    fn renumbered(self, stamp: ProducerStamp) -> Result<OutgoingBatch, BatchError> {
        let base_offset = self.header.base_offset;
        let (data, spans) = self.record_spans()?;
        let count = self.header.records_count;
        let already_consecutive =
            spans.iter().enumerate().all(|(i, s)| usize::try_from(s.offset_delta).is_ok_and(|d| d == i));

        let body: Cow<'_, [u8]> = if already_consecutive {
            // Only trailing records were removed: the records bytes are fine
            // as stored, just the header's lastOffsetDelta is too large.
            Cow::Borrowed(self.records_data())
        } else {
            let plain = renumber(&data, &spans)
                .map_err(|reason| BatchError::Corrupt { base_offset, reason: reason.to_owned() })?;
            Cow::Owned(self.pack(plain)?)
        };
        let (header, bytes) = assemble(
            BatchHeader { last_offset_delta: count - 1, ..self.stamped_header(stamp) },
            &body,
            "the renumbered batch would be larger than 2 GiB",
        )?;
        debug_assert_eq!(&bytes[LAST_OFFSET_DELTA..LAST_OFFSET_DELTA + 4], &(count - 1).to_be_bytes());
        let mut head = [0u8; HEADER_LEN];
        head.copy_from_slice(&bytes[..HEADER_LEN]);
        Ok(OutgoingBatch { header, head, body: bytes.slice(HEADER_LEN..) })
    }
}

/// Like [`assemble`] for a records section already written after `HEADER_LEN`
/// reserved bytes of `buf`: the header goes into those bytes and nothing is copied
/// (merging many small batches spent a tenth of its time copying its output once more).
pub(super) fn assemble_in_place(
    mut header: BatchHeader,
    mut buf: Vec<u8>,
    too_large: &'static str,
) -> Result<(BatchHeader, Bytes), BatchError> {
    let base_offset = header.base_offset;
    header.batch_length = i32::try_from(buf.len().saturating_sub(super::LOG_OVERHEAD))
        .map_err(|_| BatchError::NotForwardable { base_offset, reason: too_large })?;
    let head = buf
        .first_chunk_mut::<HEADER_LEN>()
        .ok_or(BatchError::NotForwardable { base_offset, reason: "no room reserved for the batch header" })?;
    header.write_into(head);
    header.crc = super::crc::crc32c(&buf[CRC_START..]);
    buf[CRC..CRC + 4].copy_from_slice(&header.crc.to_be_bytes());
    Ok((header, Bytes::from(buf)))
}

/// Builds a batch from a header and a new records section: sets `batchLength`, writes
/// the header and computes the CRC. `too_large` is the error when it exceeds 2 GiB.
pub(super) fn assemble(
    mut header: BatchHeader,
    body: &[u8],
    too_large: &'static str,
) -> Result<(BatchHeader, Bytes), BatchError> {
    let base_offset = header.base_offset;
    header.batch_length = i32::try_from(body.len() + HEADER_LEN - super::LOG_OVERHEAD)
        .map_err(|_| BatchError::NotForwardable { base_offset, reason: too_large })?;
    let mut head = [0u8; HEADER_LEN];
    header.write_into(&mut head);
    let mut out = BytesMut::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&head);
    out.extend_from_slice(body);
    header.crc = super::crc::crc32c(&out[CRC_START..]);
    out[CRC..CRC + 4].copy_from_slice(&header.crc.to_be_bytes());
    Ok((header, out.freeze()))
}
