//! Header-based provenance: which clusters a record has been through, so that
//! active-active flows (A → B and B → A on the same topic names) never loop.
//!
//! # The rule
//!
//! Every record the proxy writes on a flow with provenance on carries exactly
//! one [`PROVENANCE_HEADER`] header whose value lists the clusters the record
//! has been through, origin first. A flow `S → T` never writes a record to a
//! cluster already in its list: such batches are skipped (and counted by the
//! caller). Records written by applications carry no provenance header; they
//! are mirrored normally and get `[S, T]`.
//!
//! # Wire contract (shared by all mirrorproxy instances)
//!
//! * Header key: `mirrorproxy.provenance` (exact bytes, case-sensitive).
//! * Header value (never null): ASCII text `v1:` followed by one or more
//!   cluster ids separated by `,`, origin first, e.g. `v1:east,west,central`.
//!   There is no trailing comma, no whitespace and no empty id.
//! * A cluster id is 1 to [`MAX_CLUSTER_ID_LEN`] bytes of `[A-Za-z0-9._-]`
//!   ([`ClusterId`]). Kafka's own cluster ids (URL-safe base64 of a UUID)
//!   fit, as do typical configured names. Because neither `,` nor `:` can
//!   occur in an id, the encoding is unambiguous and can be extended by a
//!   hop with a plain byte append (`,` + id), which is what stamping does.
//! * Versioning: the `v1:` prefix is the format version. A reader that meets
//!   any other prefix (a future `v2:`) reports the header as malformed rather
//!   than guessing, so an old proxy stops instead of looping.
//! * Where the header sits: on a record without one, the provenance header is
//!   appended *after* the record's own headers (which keep their order and
//!   bytes). On a record that already has one (mirrored from an earlier hop),
//!   that header's value is extended *in place*: it keeps its position, which
//!   is last for anything a mirrorproxy wrote, and any headers another tool
//!   may have added after it keep theirs.
//! * A record with two provenance headers, or one with a null or malformed
//!   value, is refused ([`BatchError::MalformedRecord`]): the key is ours and
//!   a second interpretation would be a way to defeat loop prevention.
//!
//! # Deciding per batch from the first record
//!
//! Every batch the proxy writes comes from one source batch, and stamping
//! gives all records of a batch the same list, so a batch's provenance is
//! its first record's. [`decide_provenance`] reads only the first record: for
//! an uncompressed batch it parses one record, O(1) in the batch size; for a
//! compressed batch it drives a streaming decoder only until the first record
//! is complete. [`stamp_provenance`] checks the assumption: all records of a
//! batch must carry byte-identical provenance values (or all none), otherwise
//! the batch is refused, so a batch whose first record looks fresh cannot
//! smuggle a record back to a cluster it came from.
//!
//! # Stamping
//!
//! [`stamp_provenance`] rewrites the records section and nothing else. Per
//! record it copies the untouched byte ranges and rewrites only the record
//! length varint and either the `headersCount` varint (+ the appended header)
//! or the provenance header's value length varint (+ the appended `,T`).
//! Keys, values and other headers are never parsed. Compressed batches are
//! decompressed, spliced and re-compressed with the same codec (and the same
//! snappy framing). The batch header is kept except `batchLength` and the
//! CRC, so base offset, `lastOffsetDelta` (compaction gaps included),
//! timestamps, producer fields and attributes are unchanged; the result is a
//! [`VerifiedBatch`] that goes through [`VerifiedBatch::into_outgoing`] as
//! usual.

use std::borrow::Cow;
use std::fmt;
use std::io::{self, Read};
use std::ops::Range;
use std::str::FromStr;

use bytes::Bytes;

use super::header::{BATCH_LENGTH, CRC};
use super::records::{read_varint, varint_len, walk_records, write_varint, RecordSpan};
use super::{
    compress, compress_snappy, snappy_framing, BatchError, BatchHeader, Compression, SnappyFraming, VerifiedBatch,
    CRC_START, HEADER_LEN, LOG_OVERHEAD, MAX_DECOMPRESSED_LEN,
};

/// The header key carrying provenance.
pub const PROVENANCE_HEADER: &str = "mirrorproxy.provenance";

/// Longest accepted cluster id, in bytes.
pub const MAX_CLUSTER_ID_LEN: usize = 255;

/// Format version prefix of the header value.
const VALUE_PREFIX: &[u8] = b"v1:";

/// snappy-java's stream magic (see `compression.rs`).
const XERIAL_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";
/// Full xerial stream header: magic, version, compatible version.
const XERIAL_HEADER_LEN: usize = 16;

/// Why a cluster id or a provenance header value is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProvenanceError {
    /// A cluster id is empty, too long or has a byte outside `[A-Za-z0-9._-]`.
    #[error("invalid cluster id {id:?} for provenance: {reason}")]
    InvalidClusterId {
        /// The id as given.
        id: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A provenance header value does not follow the `v1:` format.
    #[error("malformed {PROVENANCE_HEADER} header value: {reason}")]
    Malformed {
        /// What is wrong.
        reason: &'static str,
    },
}

impl ProvenanceError {
    fn reason(&self) -> &'static str {
        match self {
            ProvenanceError::InvalidClusterId { reason, .. } | ProvenanceError::Malformed { reason } => reason,
        }
    }
}

fn is_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

/// Checks one id's bytes; the reason is static so that record-level errors
/// can carry it.
fn check_id(id: &[u8]) -> Result<(), &'static str> {
    if id.is_empty() {
        return Err("empty cluster id");
    }
    if id.len() > MAX_CLUSTER_ID_LEN {
        return Err("cluster id longer than 255 bytes");
    }
    if !id.iter().all(|&b| is_id_byte(b)) {
        return Err("cluster id has a byte outside [A-Za-z0-9._-]");
    }
    Ok(())
}

/// A cluster id as it appears in provenance: 1 to [`MAX_CLUSTER_ID_LEN`]
/// bytes of `[A-Za-z0-9._-]`. Validate once (at configuration time) with
/// [`ClusterId::new`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClusterId(String);

impl ClusterId {
    /// Validates `id`.
    pub fn new(id: &str) -> Result<Self, ProvenanceError> {
        check_id(id.as_bytes()).map_err(|reason| ProvenanceError::InvalidClusterId { id: id.to_owned(), reason })?;
        Ok(Self(id.to_owned()))
    }

    /// The id.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for ClusterId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for ClusterId {
    type Err = ProvenanceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// The clusters a record has been through, origin first. Never empty.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Provenance {
    clusters: Vec<ClusterId>,
}

impl Provenance {
    /// A list; fails if it is empty.
    pub fn new(clusters: Vec<ClusterId>) -> Result<Self, ProvenanceError> {
        if clusters.is_empty() {
            return Err(ProvenanceError::Malformed { reason: "empty cluster list" });
        }
        Ok(Self { clusters })
    }

    /// A list holding only the origin.
    #[must_use]
    pub fn from_origin(origin: ClusterId) -> Self {
        Self { clusters: vec![origin] }
    }

    /// The clusters, origin first.
    #[must_use]
    pub fn clusters(&self) -> &[ClusterId] {
        &self.clusters
    }

    /// Where the record was first written.
    #[must_use]
    pub fn origin(&self) -> &ClusterId {
        &self.clusters[0]
    }

    /// The cluster the record was last written to.
    #[must_use]
    pub fn last(&self) -> &ClusterId {
        &self.clusters[self.clusters.len() - 1]
    }

    /// Whether the record has been through `cluster`.
    #[must_use]
    pub fn contains(&self, cluster: &str) -> bool {
        self.clusters.iter().any(|c| c.as_str() == cluster)
    }

    /// This list with `cluster` appended (the record written to one more
    /// cluster).
    #[must_use]
    pub fn with_hop(&self, cluster: &ClusterId) -> Self {
        let mut clusters = Vec::with_capacity(self.clusters.len() + 1);
        clusters.extend_from_slice(&self.clusters);
        clusters.push(cluster.clone());
        Self { clusters }
    }

    /// The header value (`v1:a,b,c`).
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        let len = VALUE_PREFIX.len() + self.clusters.iter().map(|c| c.0.len() + 1).sum::<usize>() - 1;
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(VALUE_PREFIX);
        for (i, c) in self.clusters.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(c.0.as_bytes());
        }
        out
    }

    /// Parses a header value; strict (see the module docs).
    pub fn decode(value: &[u8]) -> Result<Self, ProvenanceError> {
        check_value(value).map_err(|reason| ProvenanceError::Malformed { reason })?;
        // All bytes are ASCII now.
        let clusters = value[VALUE_PREFIX.len()..]
            .split(|&b| b == b',')
            .map(|id| ClusterId(String::from_utf8_lossy(id).into_owned()))
            .collect();
        Ok(Self { clusters })
    }
}

impl fmt::Display for Provenance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.clusters.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(c.as_str())?;
        }
        Ok(())
    }
}

/// Validates a header value without allocating.
fn check_value(value: &[u8]) -> Result<(), &'static str> {
    let Some(list) = value.strip_prefix(VALUE_PREFIX) else {
        return Err("unknown format version (expected the prefix \"v1:\")");
    };
    for id in list.split(|&b| b == b',') {
        check_id(id)?;
    }
    Ok(())
}

/// One flow's hop `source → target`, with the header bytes prepared once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    source: ClusterId,
    target: ClusterId,
    /// A complete encoded header `[keyLen, key, valueLen, "v1:S,T"]`.
    fresh_header: Vec<u8>,
    /// `,T`, appended to an existing value.
    suffix: Vec<u8>,
}

impl Hop {
    /// The hop of a flow mirroring from `source` to `target`. Build it once
    /// per flow: the header bytes written into every record are prepared
    /// here. (`source == target` is accepted: such a flow stamps `[S, S]`
    /// and then never re-reads its own output.)
    #[must_use]
    pub fn new(source: ClusterId, target: ClusterId) -> Self {
        let value = Provenance::from_origin(source.clone()).with_hop(&target).encode();
        let mut fresh_header = Vec::with_capacity(PROVENANCE_HEADER.len() + value.len() + 4);
        write_varint(&mut fresh_header, PROVENANCE_HEADER.len() as i32);
        fresh_header.extend_from_slice(PROVENANCE_HEADER.as_bytes());
        write_varint(&mut fresh_header, value.len() as i32);
        fresh_header.extend_from_slice(&value);
        let mut suffix = Vec::with_capacity(target.0.len() + 1);
        suffix.push(b',');
        suffix.extend_from_slice(target.0.as_bytes());
        Self { source, target, fresh_header, suffix }
    }

    /// The cluster read from.
    #[must_use]
    pub fn source(&self) -> &ClusterId {
        &self.source
    }

    /// The cluster written to.
    #[must_use]
    pub fn target(&self) -> &ClusterId {
        &self.target
    }

    /// See [`decide_provenance`].
    pub fn decide(&self, batch: &VerifiedBatch) -> Result<Decision, BatchError> {
        decide_provenance(batch, self)
    }

    /// See [`stamp_provenance`].
    pub fn stamp(&self, batch: VerifiedBatch) -> Result<VerifiedBatch, BatchError> {
        stamp_provenance(batch, self)
    }
}

/// What to do with a batch on a flow with provenance on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Stamp it ([`stamp_provenance`]) and write it. `provenance` is the
    /// first record's list before this hop (`None`: written by an
    /// application).
    Forward {
        /// The list found in the first record.
        provenance: Option<Provenance>,
    },
    /// The records have already been through the target: do not write them.
    /// The caller accounts the batch's offsets (`base_offset ..=
    /// last_offset()` of its header) as done and counts the skip.
    Skip {
        /// The list found in the first record (it contains the target).
        provenance: Provenance,
    },
}

impl Decision {
    /// Whether the batch is to be skipped.
    #[must_use]
    pub fn is_skip(&self) -> bool {
        matches!(self, Decision::Skip { .. })
    }
}

/// The first record's provenance, `None` if it has no provenance header
/// (written by an application) or the batch has no records. Reads only the
/// first record (streaming decompression for compressed batches).
pub fn first_record_provenance(batch: &VerifiedBatch) -> Result<Option<Provenance>, BatchError> {
    let header = batch.header();
    let base_offset = header.base_offset;
    if header.records_count == 0 {
        return Ok(None);
    }
    let codec = header.compression()?;
    let data = batch.records_data();
    let first: Cow<'_, [u8]> = match codec {
        Compression::None => Cow::Borrowed(first_record_slice(data).map_err(|e| e.at_batch(base_offset))?),
        codec => {
            Cow::Owned(first_record_compressed(codec, data, MAX_DECOMPRESSED_LEN).map_err(|e| e.at_batch(base_offset))?)
        }
    };
    let spans = walk_records(&first, 1).map_err(|e| e.at_batch(base_offset))?;
    let malformed =
        |position, reason| BatchError::MalformedRecord { base_offset: Some(base_offset), index: 0, position, reason };
    let Some(loc) = find_provenance(&first, &spans[0]).map_err(|(p, r)| malformed(p, r))? else {
        return Ok(None);
    };
    Provenance::decode(&first[loc.value.clone()]).map(Some).map_err(|e| malformed(loc.value.start, e.reason()))
}

/// Whether to forward or skip `batch` on `hop`: skip when the first record
/// has already been through the hop's target. Control batches are refused
/// ([`BatchError::NotForwardable`]); an empty batch is `Forward` with no
/// provenance (and refused later by `into_outgoing`).
pub fn decide_provenance(batch: &VerifiedBatch, hop: &Hop) -> Result<Decision, BatchError> {
    refuse_control(batch)?;
    Ok(match first_record_provenance(batch)? {
        Some(provenance) if provenance.contains(hop.target.as_str()) => Decision::Skip { provenance },
        provenance => Decision::Forward { provenance },
    })
}

/// Adds `hop.target` to the provenance of every record: records without a
/// provenance header get `v1:S,T` appended after their own headers, records
/// with one get `,T` appended to its value in place. See the module docs.
///
/// Refused: control batches and batches whose records have already been
/// through the target ([`BatchError::NotForwardable`]); records with a
/// duplicate, null or malformed provenance header, and batches whose records
/// do not all carry the first record's provenance
/// ([`BatchError::MalformedRecord`]). An empty batch is returned unchanged.
pub fn stamp_provenance(batch: VerifiedBatch, hop: &Hop) -> Result<VerifiedBatch, BatchError> {
    refuse_control(&batch)?;
    if batch.is_empty() {
        return Ok(batch);
    }
    let header = *batch.header();
    let base_offset = header.base_offset;
    let codec = header.compression()?;
    let (data, spans) = batch.record_spans()?;
    // Upper bound of the growth per record: the fresh header plus a longer
    // record length and header count (+5 each at most).
    let growth = spans.len().saturating_mul(hop.fresh_header.len() + 10);
    let out = match codec {
        Compression::None => {
            let mut out = Vec::with_capacity(HEADER_LEN + data.len() + growth);
            out.extend_from_slice(&batch.bytes()[..HEADER_LEN]);
            splice(&data, &spans, hop, base_offset, &mut out)?;
            out
        }
        codec => {
            let mut plain = Vec::with_capacity(data.len() + growth);
            splice(&data, &spans, hop, base_offset, &mut plain)?;
            let body = match codec {
                Compression::Snappy => compress_snappy(&plain, snappy_framing(batch.records_data())),
                codec => compress(codec, &plain),
            }
            .map_err(|e| e.at_batch(base_offset))?;
            let mut out = Vec::with_capacity(HEADER_LEN + body.len());
            out.extend_from_slice(&batch.bytes()[..HEADER_LEN]);
            out.extend_from_slice(&body);
            out
        }
    };
    seal(header, out)
}

fn refuse_control(batch: &VerifiedBatch) -> Result<(), BatchError> {
    if batch.header().is_control() {
        return Err(BatchError::NotForwardable {
            base_offset: batch.header().base_offset,
            reason: "control batches (transaction markers) carry no provenance and cannot be produced by a client",
        });
    }
    Ok(())
}

/// Sets `batchLength` and the CRC of a rewritten batch (header bytes copied
/// from the source) and wraps it.
fn seal(header: BatchHeader, mut out: Vec<u8>) -> Result<VerifiedBatch, BatchError> {
    let batch_length = i32::try_from(out.len() - LOG_OVERHEAD).map_err(|_| BatchError::NotForwardable {
        base_offset: header.base_offset,
        reason: "the stamped batch would be larger than 2 GiB",
    })?;
    out[BATCH_LENGTH..BATCH_LENGTH + 4].copy_from_slice(&batch_length.to_be_bytes());
    let crc = super::crc::crc32c(&out[CRC_START..]);
    out[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
    let header = BatchHeader { batch_length, crc, ..header };
    Ok(VerifiedBatch::new(header, Bytes::from(out)))
}

/// Where a record's provenance header value lives.
#[derive(Debug, Clone)]
struct HeaderLoc {
    /// Start of the value length varint.
    value_len_start: usize,
    /// The value bytes.
    value: Range<usize>,
}

type RecordFault = (usize, &'static str);

/// Finds the provenance header of one walked record; refuses duplicates and
/// a null value. Only header keys are compared; nothing else is parsed.
fn find_provenance(data: &[u8], span: &RecordSpan) -> Result<Option<HeaderLoc>, RecordFault> {
    if span.headers_count == 0 {
        return Ok(None);
    }
    let body = data.get(..span.body.end).ok_or((span.record.start, "record span outside the data"))?;
    let mut pos = span.headers.start;
    let count = read_varint(body, &mut pos).ok_or((span.headers.start, "malformed header count"))?;
    let mut found = None;
    for _ in 0..count {
        let at = pos;
        let key_len = read_varint(body, &mut pos)
            .and_then(|l| usize::try_from(l).ok())
            .ok_or((at, "malformed header key length"))?;
        let key =
            body.get(pos..pos.saturating_add(key_len)).ok_or((at, "header key runs past the end of the record"))?;
        pos += key_len;
        let value_len_start = pos;
        let value_len = read_varint(body, &mut pos).ok_or((pos, "malformed header value length"))?;
        let value_len = usize::try_from(value_len).ok();
        if key == PROVENANCE_HEADER.as_bytes() {
            if found.is_some() {
                return Err((at, "more than one mirrorproxy.provenance header in a record"));
            }
            let Some(len) = value_len else {
                return Err((value_len_start, "null mirrorproxy.provenance header value"));
            };
            found = Some(HeaderLoc { value_len_start, value: pos..pos.saturating_add(len) });
        }
        pos = pos.saturating_add(value_len.unwrap_or(0));
        if pos > body.len() {
            return Err((value_len_start, "header value runs past the end of the record"));
        }
    }
    Ok(found)
}

/// Appends every record of `data`, stamped for `hop`, to `out`.
fn splice(data: &[u8], spans: &[RecordSpan], hop: &Hop, base_offset: i64, out: &mut Vec<u8>) -> Result<(), BatchError> {
    let fault = |index: usize| {
        move |(position, reason): RecordFault| BatchError::MalformedRecord {
            base_offset: Some(base_offset),
            index,
            position,
            reason,
        }
    };
    let Some(first) = spans.first() else {
        return Ok(());
    };
    let first_loc = find_provenance(data, first).map_err(fault(0))?;
    let first_value = first_loc.as_ref().map(|loc| &data[loc.value.clone()]);
    if let (Some(value), Some(loc)) = (first_value, &first_loc) {
        let provenance = Provenance::decode(value).map_err(|e| fault(0)((loc.value.start, e.reason())))?;
        if provenance.contains(hop.target.as_str()) {
            return Err(BatchError::NotForwardable {
                base_offset,
                reason: "the records have already been through the target cluster (provenance)",
            });
        }
    }
    let too_large =
        |index: usize, span: &RecordSpan| fault(index)((span.record.start, "stamped record larger than 2 GiB"));
    for (index, span) in spans.iter().enumerate() {
        let loc = if index == 0 { first_loc.clone() } else { find_provenance(data, span).map_err(fault(index))? };
        match (loc, first_value) {
            (None, None) => {
                // Append the fresh header after the record's own headers.
                let mut count_end = span.headers.start;
                read_varint(data, &mut count_end)
                    .ok_or_else(|| fault(index)((span.headers.start, "malformed header count")))?;
                let count = span
                    .headers_count
                    .checked_add(1)
                    .ok_or_else(|| fault(index)((span.headers.start, "too many headers")))?;
                let body_len =
                    span.body.len() - (count_end - span.headers.start) + varint_len(count) + hop.fresh_header.len();
                let body_len = i32::try_from(body_len).map_err(|_| too_large(index, span))?;
                write_varint(out, body_len);
                out.extend_from_slice(&data[span.body.start..span.headers.start]);
                write_varint(out, count);
                out.extend_from_slice(&data[count_end..span.body.end]);
                out.extend_from_slice(&hop.fresh_header);
            }
            (Some(loc), Some(first_value)) if data.get(loc.value.clone()) == Some(first_value) => {
                // Extend the existing value in place.
                let value_len =
                    i32::try_from(loc.value.len() + hop.suffix.len()).map_err(|_| too_large(index, span))?;
                let body_len = span.body.len() - (loc.value.start - loc.value_len_start)
                    + varint_len(value_len)
                    + hop.suffix.len();
                let body_len = i32::try_from(body_len).map_err(|_| too_large(index, span))?;
                write_varint(out, body_len);
                out.extend_from_slice(&data[span.body.start..loc.value_len_start]);
                write_varint(out, value_len);
                out.extend_from_slice(&data[loc.value.clone()]);
                out.extend_from_slice(&hop.suffix);
                out.extend_from_slice(&data[loc.value.end..span.body.end]);
            }
            (loc, _) => {
                let position = loc.map_or(span.record.start, |l| l.value.start);
                return Err(fault(index)((
                    position,
                    "the record's provenance differs from the first record of the batch",
                )));
            }
        }
    }
    Ok(())
}

/// The first record of uncompressed records data, length varint included.
fn first_record_slice(data: &[u8]) -> Result<&[u8], BatchError> {
    let malformed = |reason| BatchError::MalformedRecord { base_offset: None, index: 0, position: 0, reason };
    let mut pos = 0;
    let len = read_varint(data, &mut pos).ok_or(malformed("malformed or missing record length"))?;
    let len = usize::try_from(len).map_err(|_| malformed("negative record length"))?;
    let end = pos
        .checked_add(len)
        .filter(|&end| end <= data.len())
        .ok_or(malformed("record length runs past the end of the records data"))?;
    Ok(&data[..end])
}

fn decompress_error(codec: Compression, e: &dyn fmt::Display) -> BatchError {
    BatchError::Decompress { base_offset: None, codec, reason: e.to_string() }
}

/// Decompresses just enough of `data` to return its first record (length
/// varint included, nothing after it).
fn first_record_compressed(codec: Compression, data: &[u8], limit: usize) -> Result<Vec<u8>, BatchError> {
    match codec {
        Compression::None => first_record_slice(data).map(<[u8]>::to_vec),
        Compression::Gzip => read_first_record(codec, flate2::bufread::MultiGzDecoder::new(data), limit),
        Compression::Lz4 => read_first_record(codec, lz4_flex::frame::FrameDecoder::new(data), limit),
        Compression::Zstd => ZSTD_CONTEXT.with(|cell| {
            // A context per thread: creating one (and its window buffer) for
            // every decision costs more than decoding the first block.
            let mut slot = cell.borrow_mut();
            let context = match &mut *slot {
                Some(context) => context,
                empty => empty.insert(
                    zstd::zstd_safe::DCtx::try_create()
                        .ok_or_else(|| decompress_error(codec, &"cannot allocate a zstd context"))?,
                ),
            };
            let decoder = zstd::stream::read::Decoder::with_context(data, context);
            read_first_record(codec, decoder, limit)
        }),
        Compression::Snappy => match snappy_framing(data) {
            SnappyFraming::Xerial => read_first_record(codec, XerialReader::new(data, limit), limit),
            SnappyFraming::Raw => {
                let reader = RawSnappyReader::new(data, limit).map_err(|e| decompress_error(codec, &e))?;
                read_first_record(codec, reader, limit)
            }
        },
    }
}

thread_local! {
    static ZSTD_CONTEXT: std::cell::RefCell<Option<zstd::zstd_safe::DCtx<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Reads from a decompressing reader until the first record is complete.
fn read_first_record(codec: Compression, mut reader: impl Read, limit: usize) -> Result<Vec<u8>, BatchError> {
    let malformed = |reason| BatchError::MalformedRecord { base_offset: None, index: 0, position: 0, reason };
    let mut buf = Vec::with_capacity(256);
    let (len_end, len) = loop {
        let mut pos = 0;
        if let Some(len) = read_varint(&buf, &mut pos) {
            break (pos, len);
        }
        if buf.len() >= 5 {
            return Err(malformed("malformed or missing record length"));
        }
        let got = (&mut reader).take(64).read_to_end(&mut buf).map_err(|e| decompress_error(codec, &e))?;
        if got == 0 {
            return Err(malformed("malformed or missing record length"));
        }
    };
    let len = usize::try_from(len).map_err(|_| malformed("negative record length"))?;
    let need = len_end.saturating_add(len);
    if need > limit {
        return Err(BatchError::DecompressedTooLarge { base_offset: None, codec, limit });
    }
    if buf.len() < need {
        (&mut reader).take((need - buf.len()) as u64).read_to_end(&mut buf).map_err(|e| decompress_error(codec, &e))?;
    }
    if buf.len() < need {
        return Err(malformed("record length runs past the end of the records data"));
    }
    buf.truncate(need);
    Ok(buf)
}

fn io_error(reason: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, reason.to_owned())
}

/// snappy-java's stream format, decoded one block at a time.
struct XerialReader<'a> {
    rest: &'a [u8],
    block: Vec<u8>,
    pos: usize,
    budget: usize,
}

impl<'a> XerialReader<'a> {
    fn new(data: &'a [u8], limit: usize) -> Self {
        Self { rest: data, block: Vec::new(), pos: 0, budget: limit }
    }

    /// Decodes the next block; `false` at the end of the stream.
    fn next_block(&mut self) -> io::Result<bool> {
        loop {
            if self.rest.is_empty() {
                return Ok(false);
            }
            if self.rest.starts_with(XERIAL_MAGIC) {
                self.rest =
                    self.rest.get(XERIAL_HEADER_LEN..).ok_or_else(|| io_error("xerial stream header cut short"))?;
                continue;
            }
            let len_bytes: [u8; 4] = self
                .rest
                .get(..4)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| io_error("xerial block length cut short"))?;
            let len =
                usize::try_from(i32::from_be_bytes(len_bytes)).map_err(|_| io_error("negative xerial block length"))?;
            let block =
                self.rest.get(4..4 + len).ok_or_else(|| io_error("xerial block runs past the end of the data"))?;
            let n = snap::raw::decompress_len(block).map_err(|e| io_error(&e.to_string()))?;
            if n > self.budget {
                return Err(io_error("snappy output exceeds the decompression limit"));
            }
            self.budget -= n;
            self.block.clear();
            self.block.resize(n, 0);
            let written =
                snap::raw::Decoder::new().decompress(block, &mut self.block).map_err(|e| io_error(&e.to_string()))?;
            self.block.truncate(written);
            self.pos = 0;
            self.rest = &self.rest[4 + len..];
            return Ok(true);
        }
    }
}

impl Read for XerialReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.block.len() {
            if !self.next_block()? {
                return Ok(0);
            }
        }
        let n = out.len().min(self.block.len() - self.pos);
        out[..n].copy_from_slice(&self.block[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A raw snappy block decoded incrementally (the `snap` crate only decodes
/// whole blocks). Format: a varint uncompressed length, then elements whose
/// tag's low two bits select a literal or a copy with a 1-, 2- or 4-byte
/// offset (`format_description.txt` of google/snappy).
struct RawSnappyReader<'a> {
    input: &'a [u8],
    ip: usize,
    out: Vec<u8>,
    total: usize,
    read: usize,
}

/// Decoded bytes produced per refill; the first record is usually inside
/// the first refill.
const RAW_SNAPPY_STEP: usize = 4096;

impl<'a> RawSnappyReader<'a> {
    fn new(input: &'a [u8], limit: usize) -> io::Result<Self> {
        let mut total: u64 = 0;
        let mut ip = 0;
        for shift in (0..35).step_by(7) {
            let b = *input.get(ip).ok_or_else(|| io_error("snappy length preamble cut short"))?;
            ip += 1;
            total |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
            if shift == 28 {
                return Err(io_error("snappy length preamble too long"));
            }
        }
        let total = usize::try_from(total)
            .ok()
            .filter(|&t| t <= limit && u32::try_from(t).is_ok())
            .ok_or_else(|| io_error("snappy output exceeds the decompression limit"))?;
        Ok(Self { input, ip, out: Vec::with_capacity(total.min(RAW_SNAPPY_STEP * 2)), total, read: 0 })
    }

    fn byte(&mut self) -> io::Result<usize> {
        let b = *self.input.get(self.ip).ok_or_else(|| io_error("snappy element cut short"))?;
        self.ip += 1;
        Ok(usize::from(b))
    }

    fn le(&mut self, n: usize) -> io::Result<usize> {
        let mut v = 0usize;
        for i in 0..n {
            v |= self.byte()? << (8 * i);
        }
        Ok(v)
    }

    /// Decodes one element.
    fn element(&mut self) -> io::Result<()> {
        let tag = self.byte()?;
        let (len, offset) = match tag & 3 {
            0 => {
                let mut len = tag >> 2;
                if len >= 60 {
                    len = self.le(len - 59)?;
                }
                let len = len + 1;
                if len > self.total - self.out.len() {
                    return Err(io_error("snappy literal exceeds the declared length"));
                }
                let lit = self
                    .input
                    .get(self.ip..self.ip + len)
                    .ok_or_else(|| io_error("snappy literal runs past the input"))?;
                self.out.extend_from_slice(lit);
                self.ip += len;
                return Ok(());
            }
            1 => {
                let len = 4 + ((tag >> 2) & 7);
                (len, ((tag & 0xe0) << 3) | self.byte()?)
            }
            2 => (1 + (tag >> 2), self.le(2)?),
            _ => (1 + (tag >> 2), self.le(4)?),
        };
        if offset == 0 || offset > self.out.len() {
            return Err(io_error("snappy copy offset out of range"));
        }
        if len > self.total - self.out.len() {
            return Err(io_error("snappy copy exceeds the declared length"));
        }
        let start = self.out.len() - offset;
        if offset >= len {
            self.out.extend_from_within(start..start + len);
        } else {
            for i in 0..len {
                let b = self.out[start + i];
                self.out.push(b);
            }
        }
        Ok(())
    }
}

impl Read for RawSnappyReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.read == self.out.len() {
            let target = self.out.len() + RAW_SNAPPY_STEP;
            while self.out.len() < target && self.ip < self.input.len() {
                self.element()?;
            }
            if self.ip == self.input.len() && self.out.len() != self.total {
                return Err(io_error("snappy output shorter than the declared length"));
            }
        }
        let n = buf.len().min(self.out.len() - self.read);
        buf[..n].copy_from_slice(&self.out[self.read..self.read + n]);
        self.read += n;
        Ok(n)
    }
}

#[cfg(test)]
#[path = "provenance_tests.rs"]
mod tests;
