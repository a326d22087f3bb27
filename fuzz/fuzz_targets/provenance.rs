//! Provenance (`batch::provenance`): the header value parser on arbitrary bytes
//! (round trip of what parses), and batches through first-record reading (streaming
//! decompression), decide and stamp; a stamped batch re-verifies and reads back
//! with the hop's target in its path.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mirrorproxy::batch::provenance::{ClusterId, Hop, Provenance};
use mirrorproxy::batch::{decide_provenance, first_record_provenance, split_batches, stamp_provenance};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    if sel & 1 == 0 {
        if let Ok(p) = Provenance::decode(rest) {
            let enc = p.encode();
            assert_eq!(Provenance::decode(&enc).expect("own encoding decodes"), p);
            let cluster = ClusterId::new("fuzz").unwrap();
            let longer = p.with_hop(&cluster);
            assert!(longer.contains("fuzz"));
        }
        if let Ok(s) = std::str::from_utf8(rest) {
            let _ = ClusterId::new(s);
        }
        return;
    }
    let records = mirrorproxy_fuzz::fix_crcs(rest);
    let Ok(split) = split_batches(Bytes::from(records)) else { return };
    let hop = Hop::new(ClusterId::new("a").unwrap(), ClusterId::new("b").unwrap());
    for raw in split.batches {
        let Ok(v) = raw.verify() else { continue };
        let first = first_record_provenance(&v);
        let decision = decide_provenance(&v, &hop);
        if let (Ok(first), Ok(d)) = (&first, &decision) {
            assert_eq!(d.is_skip(), first.as_ref().is_some_and(|p| p.contains("b")));
        }
        if let Ok(s) = stamp_provenance(v.clone(), &hop) {
            let s = mirrorproxy_fuzz::reverify_one(s.bytes().clone(), "stamp_provenance");
            mirrorproxy_fuzz::check_walk(&s);
            if s.header().records_count > 0 {
                let p = first_record_provenance(&s).expect("stamped batch reads back").expect("has provenance");
                assert!(p.contains("b"), "{p}");
                assert!(decide_provenance(&s, &hop).expect("decides").is_skip(), "stamped batch is skipped on its hop");
            }
        }
    }
});
