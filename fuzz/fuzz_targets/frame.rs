//! The frame reader (`wire::check_frame`, `wire::peek_correlation_id`) over a byte
//! stream as the connection's read loop sees it: frames are cut one after another
//! until the buffer holds no complete frame or the reader refuses it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mirrorproxy::wire::{check_frame, peek_correlation_id, LENGTH_PREFIX};

fuzz_target!(|data: &[u8]| {
    // The first byte picks the maximum frame: a small one (reached by the fuzzer's
    // inputs) or the connection's real 512 MiB.
    let Some((&sel, stream)) = data.split_first() else { return };
    let max = if sel & 1 == 0 { 256 } else { mirrorproxy::net::MAX_FRAME };
    let mut buf = stream;
    loop {
        match check_frame(buf, max) {
            Ok(Some(total)) => {
                assert!(total >= LENGTH_PREFIX + 4 && total <= buf.len(), "frame of {total} in {}", buf.len());
                assert!(total - LENGTH_PREFIX <= max);
                let body = &buf[LENGTH_PREFIX..total];
                let id = peek_correlation_id(body).expect("a checked frame holds a correlation id");
                assert_eq!(id.to_be_bytes(), body[..4]);
                buf = &buf[total..];
            }
            Ok(None) => {
                // Incomplete: only when the prefix says more bytes than are there.
                if buf.len() >= LENGTH_PREFIX {
                    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
                    assert!(len >= 4 && LENGTH_PREFIX + len as usize > buf.len());
                }
                break;
            }
            Err(e) => {
                assert!(!e.to_string().is_empty());
                break;
            }
        }
    }
});
