//! Decompression (`batch::decompress_with_limit`) of every codec on arbitrary bytes:
//! never more output than the limit, and what came out compresses and decompresses
//! back to itself (with the snappy framing detected on the input).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mirrorproxy::batch::{compress, compress_snappy, decompress_with_limit, snappy_framing, Compression};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, blob)) = data.split_first() else { return };
    let codec = Compression::ALL[usize::from(sel % 5)];
    // A small limit, so that bombs are caught by it quickly (bit 3 picks a tiny one).
    let limit = if sel & 0x08 == 0 { 1 << 20 } else { 64 };
    match decompress_with_limit(codec, blob, limit) {
        Ok(out) => {
            assert!(out.len() <= limit, "{codec}: {} bytes out, limit {limit}", out.len());
            let again = match codec {
                Compression::Snappy => compress_snappy(&out, snappy_framing(blob)),
                c => compress(c, &out),
            }
            .expect("compressing decompressed data");
            let back = decompress_with_limit(codec, &again, limit).expect("own compression decompresses");
            assert_eq!(back, out, "{codec} round trip");
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
