//! The LZ4 frame format (lz4 `doc/lz4_Frame_format.md`), decoded block by block.
//!
//! Why not `lz4_flex::frame::FrameDecoder`: it allocates and zero-fills a buffer of the
//! frame's maximum block size (64 KiB to 4 MiB) for every frame. A Kafka batch is one
//! frame, and producers with `linger.ms=0` write batches of a few hundred bytes: merging
//! such batches (coalescing, `engine::produce`) spent most of its time in that memset
//! and in the kernel's page zeroing behind it (perf, 200 B records in batches of 4).
//! Here each block is decompressed into one scratch buffer per thread, zeroed once, and
//! only its real output is copied out.
//!
//! Checked: magic, version, reserved bits, block sizes against the frame's maximum, the
//! output against `limit`, and that the input ends with the frame (trailing bytes are
//! an error, as in Kafka's `KafkaLZ4BlockInputStream`). Not checked: the header byte
//! checksum and the optional block/content xxHash32 checksums, which are skipped; the
//! batch's CRC-32C, verified before any decompression, covers every one of these bytes.

use std::cell::RefCell;

use super::compression::Compression;
use super::BatchError;

const MAGIC: u32 = 0x184D_2204;
/// Blocks may refer to at most this much output before them (linked blocks).
const WINDOW: usize = 64 * 1024;

fn malformed(reason: impl Into<String>) -> BatchError {
    BatchError::Decompress { base_offset: None, codec: Compression::Lz4, reason: reason.into() }
}

thread_local! {
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Decompresses one LZ4 frame, failing once more than `limit` bytes would come out.
pub(super) fn decompress_frame(data: &[u8], limit: usize) -> Result<Vec<u8>, BatchError> {
    let take = |at: usize, n: usize| data.get(at..at + n).ok_or_else(|| malformed("frame cut short"));
    let magic = u32::from_le_bytes(take(0, 4)?.try_into().expect("4 bytes"));
    if magic != MAGIC {
        return Err(malformed(format!("not an LZ4 frame (magic {magic:#010x})")));
    }
    let (flg, bd) = (take(4, 1)?[0], take(5, 1)?[0]);
    if flg >> 6 != 1 {
        return Err(malformed(format!("LZ4 frame version {} (only 1 exists)", flg >> 6)));
    }
    if flg & 0b10 != 0 || bd & 0b1000_1111 != 0 {
        return Err(malformed("reserved bits set in the LZ4 frame descriptor"));
    }
    if flg & 0b1 != 0 {
        return Err(malformed("LZ4 frame needs a dictionary (DictID), which Kafka never uses"));
    }
    let independent = flg & 0b10_0000 != 0;
    let block_checksums = flg & 0b1_0000 != 0;
    let content_size = flg & 0b1000 != 0;
    let content_checksum = flg & 0b100 != 0;
    let max_block = match (bd >> 4) & 0b111 {
        4 => 64 << 10,
        5 => 256 << 10,
        6 => 1 << 20,
        7 => 4 << 20,
        id => return Err(malformed(format!("LZ4 block maximum size id {id} is not defined"))),
    };
    let mut at = 6 + if content_size { 8 } else { 0 };
    take(at, 1)?; // the header checksum byte
    at += 1;
    let mut out = Vec::with_capacity(data.len().saturating_mul(4).min(limit).min(1 << 20));
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        loop {
            let word = u32::from_le_bytes(take(at, 4)?.try_into().expect("4 bytes"));
            at += 4;
            if word == 0 {
                break; // end mark
            }
            let len = (word & 0x7FFF_FFFF) as usize;
            if len > max_block {
                return Err(malformed(format!("LZ4 block of {len} bytes in a frame of {max_block}-byte blocks")));
            }
            let block = take(at, len)?;
            at += len + if block_checksums { 4 } else { 0 };
            if word & 0x8000_0000 != 0 {
                if out.len() + len > limit {
                    return Err(too_large(limit));
                }
                out.extend_from_slice(block); // stored uncompressed
                continue;
            }
            if scratch.len() < max_block {
                scratch.resize(max_block, 0);
            }
            let dict = if independent { &[][..] } else { &out[out.len().saturating_sub(WINDOW)..] };
            let n = lz4_flex::block::decompress_into_with_dict(block, &mut scratch[..max_block], dict)
                .map_err(|e| malformed(format!("LZ4 block: {e}")))?;
            if out.len() + n > limit {
                return Err(too_large(limit));
            }
            out.extend_from_slice(&scratch[..n]);
        }
        Ok(())
    })?;
    if content_checksum {
        take(at, 4)?;
        at += 4;
    }
    if at != data.len() {
        return Err(malformed(format!("{} bytes after the LZ4 frame", data.len().saturating_sub(at))));
    }
    Ok(out)
}

fn too_large(limit: usize) -> BatchError {
    BatchError::DecompressedTooLarge { base_offset: None, codec: Compression::Lz4, limit }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn frame(data: &[u8], info: lz4_flex::frame::FrameInfo) -> Vec<u8> {
        let mut enc = lz4_flex::frame::FrameEncoder::with_frame_info(info, Vec::new());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn sample(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8 ^ (i / 1000) as u8).collect()
    }

    #[test]
    fn agrees_with_the_reference_decoder_for_every_frame_shape() {
        use lz4_flex::frame::{BlockMode, BlockSize, FrameInfo};
        for n in [0, 1, 800, 65_536, 65_537, 300_000] {
            let data = sample(n);
            for mode in [BlockMode::Independent, BlockMode::Linked] {
                for size in [BlockSize::Max64KB, BlockSize::Max256KB, BlockSize::Max4MB] {
                    for checksums in [false, true] {
                        let info = FrameInfo::new()
                            .block_mode(mode)
                            .block_size(size)
                            .block_checksums(checksums)
                            .content_checksum(checksums)
                            .content_size(checksums.then_some(n as u64));
                        let f = frame(&data, info);
                        let got = decompress_frame(&f, 1 << 30).unwrap();
                        assert!(got == data, "{n} bytes, {mode:?} {size:?} checksums {checksums}");
                    }
                }
            }
        }
    }

    #[test]
    fn limits_and_malformed_frames_are_errors() {
        let f = frame(&sample(100_000), lz4_flex::frame::FrameInfo::new());
        assert!(matches!(decompress_frame(&f, 99_999), Err(BatchError::DecompressedTooLarge { .. })));
        for cut in [0, 3, 6, 7, 12, f.len() - 1] {
            assert!(decompress_frame(&f[..cut], 1 << 20).is_err(), "cut at {cut}");
        }
        let mut longer = f.clone();
        longer.push(0);
        assert!(decompress_frame(&longer, 1 << 20).is_err(), "trailing byte");
        let mut bad = f.clone();
        bad[0] ^= 1;
        assert!(decompress_frame(&bad, 1 << 20).is_err(), "magic");
        let mut bad = f.clone();
        bad[5] = 0x30; // block size id 3
        assert!(decompress_frame(&bad, 1 << 20).is_err(), "block size id");
        let mut bad = f;
        let len_at = 7;
        bad[len_at + 3] = 0x7F; // a block longer than the frame's maximum
        assert!(decompress_frame(&bad, 1 << 20).is_err(), "block length");
    }
}
