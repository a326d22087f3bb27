//! Batch-level compression codecs, byte-compatible with what Kafka clients
//! write.
//!
//! In a v2 batch everything after the 61-byte header is compressed as one
//! blob (`DefaultRecordBatch.compressedIterator`). The codecs and their
//! framing, as in Kafka's `CompressionType` / `*Compression.java`:
//!
//! * **gzip**: a gzip stream (`GZIPOutputStream`). Decoded with a multi-member
//!   decoder, as `GZIPInputStream` accepts concatenated members.
//! * **snappy**: the Java client writes snappy-java's *xerial* framing
//!   (`SnappyOutputStream`): the magic `0x82 'SNAPPY' 0x00`, a version i32
//!   and a compatible-version i32, then blocks of `[len i32][raw snappy
//!   block]` of at most 32 KiB input each. librdkafka can write a bare raw
//!   snappy block instead, and snappy-java's reader falls back to raw when
//!   the magic is absent. We detect the framing on read ([`snappy_framing`])
//!   so that a rewrite can re-use it ([`compress_snappy`]).
//! * **lz4**: the LZ4 *frame* format (`KafkaLZ4BlockOutputStream`):
//!   independent 64 KiB blocks, no content size, no checksums.
//! * **zstd**: a zstd frame (level 3 is Kafka's default).
//!
//! Every decompressor output is capped ([`MAX_DECOMPRESSED_LEN`] by default):
//! the input comes from the network, and a few KiB of zstd or gzip can
//! describe gigabytes of zeros.

use std::fmt;
use std::io::{Read, Write};

use super::BatchError;

/// Default cap on decompressed records data per batch (256 MiB). Kafka's own
/// default `message.max.bytes` is 1 MiB, so real batches are far below this.
#[cfg(not(fuzzing))]
pub const MAX_DECOMPRESSED_LEN: usize = 256 * 1024 * 1024;
/// Under the fuzzer (`--cfg fuzzing`, set by cargo-fuzz) the cap is 4 MiB: the same
/// code paths (a bomb stops at the cap), but an input that inflates to the cap costs
/// milliseconds instead of seconds of re-compression, so the batch-level targets run
/// tens of times more executions (README "Fuzzing").
#[cfg(fuzzing)]
pub const MAX_DECOMPRESSED_LEN: usize = 4 * 1024 * 1024;

/// snappy-java's stream magic: `0x82 'S' 'N' 'A' 'P' 'P' 'Y' 0x00`.
const XERIAL_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";
/// Full xerial header: magic, version 1, minimum compatible version 1.
const XERIAL_HEADER: &[u8; 16] = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01";
/// snappy-java's default block size.
const XERIAL_BLOCK: usize = 32 * 1024;

/// Kafka's default zstd level (`CompressionType.ZSTD` / `ZstdCompression`).
const ZSTD_LEVEL: i32 = 3;

/// The compression codec of a batch (attribute bits 0-2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    /// 0: uncompressed.
    None,
    /// 1: gzip.
    Gzip,
    /// 2: snappy (xerial-framed or raw).
    Snappy,
    /// 3: LZ4 frame.
    Lz4,
    /// 4: zstd.
    Zstd,
}

impl Compression {
    /// All codecs, in id order.
    pub const ALL: [Compression; 5] =
        [Compression::None, Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd];

    /// The codec for attribute bits 0-2, `None` for the undefined ids 5-7.
    #[must_use]
    pub fn from_id(id: i16) -> Option<Self> {
        match id {
            0 => Some(Compression::None),
            1 => Some(Compression::Gzip),
            2 => Some(Compression::Snappy),
            3 => Some(Compression::Lz4),
            4 => Some(Compression::Zstd),
            _ => None,
        }
    }

    /// The value of attribute bits 0-2 for this codec.
    #[must_use]
    pub fn id(self) -> i16 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }

    /// Kafka's name for the codec (`compression.type` values).
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a snappy blob is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SnappyFraming {
    /// snappy-java's stream format (Java clients).
    Xerial,
    /// One raw snappy block (some librdkafka versions).
    Raw,
}

/// Detects the framing of snappy-compressed records the way snappy-java's
/// `SnappyInputStream` does: xerial if the stream starts with its magic.
#[must_use]
pub fn snappy_framing(compressed: &[u8]) -> SnappyFraming {
    if compressed.starts_with(XERIAL_MAGIC) {
        SnappyFraming::Xerial
    } else {
        SnappyFraming::Raw
    }
}

/// Decompresses a batch's records blob, refusing output beyond
/// [`MAX_DECOMPRESSED_LEN`]. For [`Compression::None`] this is a copy.
pub fn decompress(compression: Compression, data: &[u8]) -> Result<Vec<u8>, BatchError> {
    decompress_with_limit(compression, data, MAX_DECOMPRESSED_LEN)
}

/// [`decompress`] with an explicit output cap in bytes.
pub fn decompress_with_limit(compression: Compression, data: &[u8], limit: usize) -> Result<Vec<u8>, BatchError> {
    let too_large = || BatchError::DecompressedTooLarge { base_offset: None, codec: compression, limit };
    match compression {
        Compression::None => {
            if data.len() > limit {
                return Err(too_large());
            }
            Ok(data.to_vec())
        }
        Compression::Gzip => read_bounded(compression, flate2::read::MultiGzDecoder::new(data), data.len(), limit),
        Compression::Lz4 => super::lz4::decompress_frame(data, limit),
        Compression::Zstd => {
            let decoder =
                zstd::stream::read::Decoder::with_buffer(data).map_err(|e| decompress_error(compression, &e))?;
            read_bounded(compression, decoder, data.len(), limit)
        }
        Compression::Snappy => match snappy_framing(data) {
            SnappyFraming::Raw => {
                let mut out = Vec::new();
                snappy_block_into(data, &mut out, limit)?;
                Ok(out)
            }
            SnappyFraming::Xerial => xerial_decompress(data, limit),
        },
    }
}

/// Compresses a records blob with `compression`; snappy gets the xerial
/// framing the Java client writes.
pub fn compress(compression: Compression, data: &[u8]) -> Result<Vec<u8>, BatchError> {
    let fail =
        |e: &dyn fmt::Display| BatchError::Compress { base_offset: None, codec: compression, reason: e.to_string() };
    match compression {
        Compression::None => Ok(data.to_vec()),
        Compression::Gzip => {
            let mut enc =
                flate2::write::GzEncoder::new(Vec::with_capacity(data.len() / 2 + 64), flate2::Compression::default());
            enc.write_all(data).map_err(|e| fail(&e))?;
            enc.finish().map_err(|e| fail(&e))
        }
        Compression::Snappy => compress_snappy(data, SnappyFraming::Xerial),
        Compression::Lz4 => {
            let info = lz4_flex::frame::FrameInfo::new()
                .block_size(lz4_flex::frame::BlockSize::Max64KB)
                .block_mode(lz4_flex::frame::BlockMode::Independent);
            let mut enc = lz4_flex::frame::FrameEncoder::with_frame_info(info, Vec::with_capacity(data.len() / 2 + 64));
            enc.write_all(data).map_err(|e| fail(&e))?;
            enc.finish().map_err(|e| fail(&e))
        }
        Compression::Zstd => zstd::bulk::compress(data, ZSTD_LEVEL).map_err(|e| fail(&e)),
    }
}

/// Snappy-compresses `data` with the given framing.
pub fn compress_snappy(data: &[u8], framing: SnappyFraming) -> Result<Vec<u8>, BatchError> {
    let fail =
        |e: snap::Error| BatchError::Compress { base_offset: None, codec: Compression::Snappy, reason: e.to_string() };
    let mut encoder = snap::raw::Encoder::new();
    match framing {
        SnappyFraming::Raw => encoder.compress_vec(data).map_err(fail),
        SnappyFraming::Xerial => {
            let mut out = Vec::with_capacity(XERIAL_HEADER.len() + data.len() / 2 + 64);
            out.extend_from_slice(XERIAL_HEADER);
            let mut block = Vec::new();
            for chunk in data.chunks(XERIAL_BLOCK) {
                block.resize(snap::raw::max_compress_len(chunk.len()), 0);
                let n = encoder.compress(chunk, &mut block).map_err(fail)?;
                let len = u32::try_from(n).map_err(|_| BatchError::Compress {
                    base_offset: None,
                    codec: Compression::Snappy,
                    reason: "snappy block larger than 4 GiB".into(),
                })?;
                out.extend_from_slice(&len.to_be_bytes());
                out.extend_from_slice(&block[..n]);
            }
            Ok(out)
        }
    }
}

fn decompress_error(codec: Compression, e: &dyn fmt::Display) -> BatchError {
    BatchError::Decompress { base_offset: None, codec, reason: e.to_string() }
}

/// Reads `reader` to the end, failing once more than `limit` bytes come out.
fn read_bounded(codec: Compression, reader: impl Read, input_len: usize, limit: usize) -> Result<Vec<u8>, BatchError> {
    // A guess only; the cap protects against a lying input.
    let mut out = Vec::with_capacity(input_len.saturating_mul(4).min(limit).min(1 << 20));
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    reader.take(cap).read_to_end(&mut out).map_err(|e| decompress_error(codec, &e))?;
    if out.len() > limit {
        return Err(BatchError::DecompressedTooLarge { base_offset: None, codec, limit });
    }
    Ok(out)
}

/// Appends the decompression of one raw snappy block to `out`.
fn snappy_block_into(block: &[u8], out: &mut Vec<u8>, limit: usize) -> Result<(), BatchError> {
    let codec = Compression::Snappy;
    let n = snap::raw::decompress_len(block).map_err(|e| decompress_error(codec, &e))?;
    let start = out.len();
    let end = start.checked_add(n).filter(|&end| end <= limit).ok_or(BatchError::DecompressedTooLarge {
        base_offset: None,
        codec,
        limit,
    })?;
    out.resize(end, 0);
    let written =
        snap::raw::Decoder::new().decompress(block, &mut out[start..]).map_err(|e| decompress_error(codec, &e))?;
    out.truncate(start + written);
    Ok(())
}

/// Decodes snappy-java's stream format. Like `SnappyInputStream`, a second
/// stream header at a block boundary (concatenated streams) is skipped.
fn xerial_decompress(data: &[u8], limit: usize) -> Result<Vec<u8>, BatchError> {
    let fail = |reason: &str| decompress_error(Compression::Snappy, &reason);
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        if rest.starts_with(XERIAL_MAGIC) {
            rest = rest.get(XERIAL_HEADER.len()..).ok_or_else(|| fail("xerial stream header cut short"))?;
            continue;
        }
        let len_bytes: [u8; 4] =
            rest.get(..4).and_then(|b| b.try_into().ok()).ok_or_else(|| fail("xerial block length cut short"))?;
        let len = usize::try_from(i32::from_be_bytes(len_bytes)).map_err(|_| fail("negative xerial block length"))?;
        let block = rest.get(4..4 + len).ok_or_else(|| fail("xerial block runs past the end of the data"))?;
        snappy_block_into(block, &mut out, limit)?;
        rest = &rest[4 + len..];
    }
    Ok(out)
}
