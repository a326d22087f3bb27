//! Checkpoint records (`checkpoint`): batches of the checkpoint topic through
//! `CheckpointLog::apply_batch` (what `read_log` does with each fetched batch), and
//! keys and JSON values on their own; what parses round-trips.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mirrorproxy::batch::split_batches;
use mirrorproxy::checkpoint::{Checkpoint, CheckpointKey, CheckpointLog};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    if sel & 1 == 0 {
        // key and value split at the first 0xff (never in UTF-8)
        let (key, value) = match rest.iter().position(|&b| b == 0xff) {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, &rest[..0]),
        };
        if let Ok(k) = std::str::from_utf8(key) {
            if let Ok(Some(ck)) = CheckpointKey::decode(k) {
                assert_eq!(CheckpointKey::decode(&ck.encode()), Ok(Some(ck)), "a decoded key round-trips");
            }
        }
        if let Ok(c) = Checkpoint::from_json(value) {
            assert_eq!(Checkpoint::from_json(&c.to_json()).expect("own JSON parses"), c);
            let _ = c.point_at_or_below(c.source_offset);
        }
        return;
    }
    let records = mirrorproxy_fuzz::fix_crcs(rest);
    let Ok(split) = split_batches(Bytes::from(records)) else { return };
    let mut log = CheckpointLog::default();
    for raw in split.batches {
        let Ok(v) = raw.verify() else { continue };
        if log.apply_batch(&v, "fuzz").is_err() {
            assert!(v.record_spans().is_err(), "apply_batch fails only on unreadable records");
        }
    }
});
