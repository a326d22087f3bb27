//! Batch views: a partition's `records` bytes split (`RawBatch`), verified
//! (`VerifiedBatch`), trimmed, provenance-stamped, patched into an `OutgoingBatch`
//! with several producer stamps and merged; every batch this produces must split
//! and re-verify (CRC) as exactly one batch and walk its records without a panic.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        // `FUZZ_WRITE_SEEDS=<dir>`: write the seed inputs of every target (see seeds.rs).
        if let Some(dir) = std::env::var_os("FUZZ_WRITE_SEEDS") {
            mirrorproxy_fuzz::seeds::write_all(std::path::Path::new(&dir));
        }
    },
    |data: &[u8]| {
    let Some((&sel, records)) = data.split_first() else { return };
    // Mostly with CRCs fixed (the interesting part is past verification); sometimes
    // as they are, which exercises the CRC mismatch path.
    let records = if sel & 0x80 == 0 { mirrorproxy_fuzz::fix_crcs(records) } else { records.to_vec() };
    mirrorproxy_fuzz::check_records(Bytes::from(records), sel);
});
