//! The record walker (`batch::walk_records`) on arbitrary decompressed records data.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mirrorproxy::batch::walk_records;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    // The declared record count: small counts (what the data can hold) and, from the
    // top bit, huge ones (the walker must not allocate for them up front).
    let count = match data[0] >> 6 {
        0 | 1 => i32::from(data[0]),
        2 => i32::from_be_bytes([data[1] & 0x7f, 0xff, 0xff, 0xff]),
        _ => -i32::from(data[1]) - 1,
    };
    let records = &data[2..];
    if let Ok(spans) = walk_records(records, count) {
        assert_eq!(spans.len(), count as usize);
        let mut pos = 0;
        for s in &spans {
            assert_eq!(s.record.start, pos);
            assert!(s.body.start > s.record.start && s.body.end == s.record.end);
            assert!(s.offset_delta_bytes.start > s.body.start && s.offset_delta_bytes.end <= s.body.end);
            for r in [&s.key, &s.value].into_iter().flatten() {
                assert!(r.start <= r.end && r.end <= s.body.end);
                let _ = &records[r.clone()];
            }
            assert!(s.headers_count >= 0 && s.headers.end == s.body.end);
            pos = s.record.end;
        }
        assert_eq!(pos, records.len());
    }
});
