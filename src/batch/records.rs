//! Walking the records inside a (decompressed) batch without decoding them.
//!
//! Record layout, as in Kafka's `DefaultRecord.java`:
//!
//! ```text
//! length: varint            (bytes after this field)
//! attributes: i8            (unused, 0)
//! timestampDelta: varlong   (relative to baseTimestamp)
//! offsetDelta: varint       (relative to baseOffset)
//! keyLength: varint         (-1 = null key)
//! key: bytes
//! valueLength: varint       (-1 = null value)
//! value: bytes
//! headersCount: varint
//! headers: [keyLength varint (>= 0), key, valueLength varint (-1 = null), value]
//! ```
//!
//! Varints are zigzag-encoded (`ByteUtils.readVarint` / `readVarlong`). The
//! walker only records *where* each part lives ([`RecordSpan`]), so callers
//! can rewrite a single field (the offset delta for renumbering, the headers
//! for provenance) and copy every other byte untouched. It is as strict as
//! `DefaultRecord.readFrom`: each record must consume exactly its declared
//! length, and, like `DefaultRecordBatch`'s iterators, the data must hold
//! exactly `count` records with nothing after them.

use std::ops::Range;

use super::BatchError;

/// Smallest possible encoded record: a one-byte length plus six one-byte
/// fields. Used to bound allocations by the data actually present.
const MIN_RECORD_LEN: usize = 7;

/// Where the parts of one record live inside the decompressed records data.
/// All ranges are byte offsets into the slice given to [`walk_records`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordSpan {
    /// The whole record, including its length varint.
    pub record: Range<usize>,
    /// Everything after the length varint (attributes to the end of the
    /// headers); its length is the value of the length varint.
    pub body: Range<usize>,
    /// The record's attributes byte (unused by Kafka so far).
    pub attributes: i8,
    /// Decoded `timestampDelta`.
    pub timestamp_delta: i64,
    /// Decoded `offsetDelta`.
    pub offset_delta: i32,
    /// The bytes of the `offsetDelta` varint.
    pub offset_delta_bytes: Range<usize>,
    /// The key bytes, `None` for a null key.
    pub key: Option<Range<usize>>,
    /// The value bytes, `None` for a null value.
    pub value: Option<Range<usize>>,
    /// Decoded `headersCount`.
    pub headers_count: i32,
    /// From the `headersCount` varint to the end of the record: the part to
    /// replace when adding headers.
    pub headers: Range<usize>,
}

/// Reads a zigzag varint like Kafka's `ByteUtils.readVarint`: at most five
/// bytes; bits beyond 32 in the fifth byte are dropped, as Java does.
pub(crate) fn read_varint(buf: &[u8], pos: &mut usize) -> Option<i32> {
    let mut value: u32 = 0;
    let mut shift = 0u32;
    loop {
        let b = *buf.get(*pos)?;
        *pos += 1;
        if b & 0x80 == 0 {
            value |= u32::from(b).wrapping_shl(shift);
            break;
        }
        value |= u32::from(b & 0x7f) << shift;
        shift += 7;
        if shift > 28 {
            return None;
        }
    }
    Some(((value >> 1) as i32) ^ -((value & 1) as i32))
}

/// Reads a zigzag varlong like `ByteUtils.readVarlong` (at most ten bytes).
pub(crate) fn read_varlong(buf: &[u8], pos: &mut usize) -> Option<i64> {
    let mut value: u64 = 0;
    let mut shift = 0u32;
    loop {
        let b = *buf.get(*pos)?;
        *pos += 1;
        if b & 0x80 == 0 {
            value |= u64::from(b).wrapping_shl(shift);
            break;
        }
        value |= u64::from(b & 0x7f) << shift;
        shift += 7;
        if shift > 63 {
            return None;
        }
    }
    Some(((value >> 1) as i64) ^ -((value & 1) as i64))
}

/// Appends a zigzag varint (`ByteUtils.writeVarint`).
pub(crate) fn write_varint(out: &mut Vec<u8>, value: i32) {
    let mut v = ((value << 1) ^ (value >> 31)) as u32;
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Encoded size of a zigzag varint.
pub(crate) fn varint_len(value: i32) -> usize {
    let v = ((value << 1) ^ (value >> 31)) as u32;
    match v {
        0..=0x7f => 1,
        0x80..=0x3fff => 2,
        0x4000..=0x001f_ffff => 3,
        0x0020_0000..=0x0fff_ffff => 4,
        _ => 5,
    }
}

/// Appends a zigzag varlong (`ByteUtils.writeVarlong`).
pub(crate) fn write_varlong(out: &mut Vec<u8>, value: i64) {
    let mut v = ((value << 1) ^ (value >> 63)) as u64;
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Encoded size of a zigzag varlong.
pub(crate) fn varlong_len(value: i64) -> usize {
    let v = ((value << 1) ^ (value >> 63)) as u64;
    (64 - v.leading_zeros() as usize).max(1).div_ceil(7)
}

/// Walks `count` records in `decompressed_records` (the bytes after the
/// 61-byte header, decompressed) and returns where each one's parts are.
///
/// Fails if a varint is malformed, a length is negative or runs past the
/// record, a record does not consume exactly its declared length, there are
/// fewer than `count` records, or bytes remain after the last one.
pub fn walk_records(decompressed_records: &[u8], count: i32) -> Result<Vec<RecordSpan>, BatchError> {
    let data = decompressed_records;
    let count = usize::try_from(count).map_err(|_| BatchError::MalformedRecord {
        base_offset: None,
        index: 0,
        position: 0,
        reason: "negative record count",
    })?;
    let mut spans = Vec::with_capacity(count.min(data.len() / MIN_RECORD_LEN + 1));
    let mut pos = 0usize;
    for index in 0..count {
        let span = walk_one(data, pos).map_err(|(position, reason)| BatchError::MalformedRecord {
            base_offset: None,
            index,
            position,
            reason,
        })?;
        pos = span.record.end;
        spans.push(span);
    }
    if pos != data.len() {
        return Err(BatchError::MalformedRecord {
            base_offset: None,
            index: count,
            position: pos,
            reason: "bytes remain after the declared number of records",
        });
    }
    Ok(spans)
}

type WalkError = (usize, &'static str);

/// Reads a length-prefixed byte field: `Ok(None)` for -1 (when allowed).
fn nullable_bytes(
    body: &[u8],
    pos: &mut usize,
    what_bad_len: &'static str,
    allow_null: bool,
) -> Result<Option<Range<usize>>, WalkError> {
    let at = *pos;
    let len = read_varint(body, pos).ok_or((at, "malformed length varint"))?;
    if len == -1 && allow_null {
        return Ok(None);
    }
    let len = usize::try_from(len).map_err(|_| (at, what_bad_len))?;
    let start = *pos;
    let end =
        start.checked_add(len).filter(|&end| end <= body.len()).ok_or((at, "field runs past the end of the record"))?;
    *pos = end;
    Ok(Some(start..end))
}

fn walk_one(data: &[u8], start: usize) -> Result<RecordSpan, WalkError> {
    let mut pos = start;
    let length = read_varint(data, &mut pos).ok_or((start, "malformed or missing record length"))?;
    let length = usize::try_from(length).map_err(|_| (start, "negative record length"))?;
    let body_start = pos;
    let body_end = body_start
        .checked_add(length)
        .filter(|&end| end <= data.len())
        .ok_or((start, "record length runs past the end of the records data"))?;
    // Parse inside the body only, so nothing can run into the next record.
    let body = &data[..body_end];

    let attributes = *body.get(pos).ok_or((pos, "record shorter than its attributes byte"))? as i8;
    pos += 1;
    let at = pos;
    let timestamp_delta = read_varlong(body, &mut pos).ok_or((at, "malformed timestamp delta"))?;
    let delta_start = pos;
    let offset_delta = read_varint(body, &mut pos).ok_or((delta_start, "malformed offset delta"))?;
    let offset_delta_bytes = delta_start..pos;
    let key = nullable_bytes(body, &mut pos, "key length below -1", true)?;
    let value = nullable_bytes(body, &mut pos, "value length below -1", true)?;
    let headers_start = pos;
    let headers_count = read_varint(body, &mut pos).ok_or((headers_start, "malformed header count"))?;
    if headers_count < 0 {
        return Err((headers_start, "negative header count"));
    }
    for _ in 0..headers_count {
        // Header keys are never null (`DefaultRecord.readHeaders`).
        nullable_bytes(body, &mut pos, "negative header key length", false)?;
        nullable_bytes(body, &mut pos, "header value length below -1", true)?;
    }
    if pos != body_end {
        return Err((pos, "record length does not match its contents"));
    }
    Ok(RecordSpan {
        record: start..body_end,
        body: body_start..body_end,
        attributes,
        timestamp_delta,
        offset_delta,
        offset_delta_bytes,
        key,
        value,
        headers_count,
        headers: headers_start..body_end,
    })
}

/// Rewrites each record's offset delta to its index, re-encoding the length
/// varint; all other bytes are copied as they are.
pub(crate) fn renumber(data: &[u8], spans: &[RecordSpan]) -> Result<Vec<u8>, &'static str> {
    let mut out = Vec::with_capacity(data.len() + spans.len() * 4);
    for (index, span) in spans.iter().enumerate() {
        let index = i32::try_from(index).map_err(|_| "more than i32::MAX records")?;
        let old_body = span.body.len();
        let new_body = old_body - span.offset_delta_bytes.len() + varint_len(index);
        let new_body = i32::try_from(new_body).map_err(|_| "record larger than 2 GiB")?;
        write_varint(&mut out, new_body);
        out.extend_from_slice(&data[span.body.start..span.offset_delta_bytes.start]);
        write_varint(&mut out, index);
        out.extend_from_slice(&data[span.offset_delta_bytes.end..span.body.end]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varlong_lengths() {
        for v in [0i64, 1, -1, 63, -64, 64, 1 << 20, -(1 << 40), i64::MAX, i64::MIN] {
            let mut out = Vec::new();
            write_varlong(&mut out, v);
            assert_eq!(out.len(), varlong_len(v), "{v}");
            let mut pos = 0;
            assert_eq!(read_varlong(&out, &mut pos), Some(v));
        }
    }

    #[test]
    fn varint_round_trip_and_len() {
        for v in [0, 1, -1, 63, -64, 64, 300, -300, i32::MAX, i32::MIN, 1 << 20, 1 << 27] {
            let mut out = Vec::new();
            write_varint(&mut out, v);
            assert_eq!(out.len(), varint_len(v), "len of {v}");
            let mut pos = 0;
            assert_eq!(read_varint(&out, &mut pos), Some(v));
            assert_eq!(pos, out.len());
        }
    }

    #[test]
    fn varint_rejects_overlong_and_truncated() {
        let mut pos = 0;
        assert_eq!(read_varint(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x01], &mut pos), None);
        let mut pos = 0;
        assert_eq!(read_varint(&[0x80], &mut pos), None);
        let mut pos = 0;
        assert_eq!(read_varlong(&[0xff; 11], &mut pos), None);
        let mut pos = 0;
        // zigzag(-1) == 1
        assert_eq!(read_varlong(&[0x01], &mut pos), Some(-1));
    }

    #[test]
    fn walk_rejects_trailing_bytes_and_short_data() {
        // length 6: attrs 0, ts 0, off 0, key -1 (0x01), value -1, headers 0
        let rec = [0x0c, 0, 0, 0, 0x01, 0x01, 0];
        assert_eq!(walk_records(&rec, 1).unwrap().len(), 1);
        let mut extra = rec.to_vec();
        extra.push(0);
        assert!(walk_records(&extra, 1).is_err());
        assert!(walk_records(&rec, 2).is_err());
        assert!(walk_records(&rec, -1).is_err());
        assert!(walk_records(&rec[..6], 1).is_err());
        assert_eq!(walk_records(&[], 0).unwrap(), vec![]);
    }
}
