//! Producer registry records (`registry`): batches of the registry topic through
//! `raw_records` (what `read_since` does with each batch) into `Registry::apply`,
//! then the registry's verdict on the same batches.
#![no_main]

use std::collections::HashSet;

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mirrorproxy::batch::provenance::{ClusterId, Hop};
use mirrorproxy::batch::split_batches;
use mirrorproxy::registry::{raw_records, verdict, LoopGuard, Registry};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let records = mirrorproxy_fuzz::fix_crcs(rest);
    let Ok(split) = split_batches(Bytes::from(records)) else { return };
    let mut registry = Registry::new("mirrorproxy.producers", "east");
    let mut batches = Vec::new();
    let mut applied = 0;
    for raw in split.batches {
        let Ok(v) = raw.verify() else { continue };
        let end = v.header().next_offset();
        if !v.header().is_control() {
            if let Ok(records) = raw_records(&v) {
                assert_eq!(records.len(), v.header().records_count as usize);
                let looked_up: HashSet<i64> = [v.header().producer_id].into();
                registry.apply(records, end, &looked_up);
                applied = end;
            }
        }
        batches.push(v);
    }
    assert!(registry.next_offset() >= applied, "the registry reads on after what it applied");
    let (east, west) = (ClusterId::new("east").unwrap(), ClusterId::new("west").unwrap());
    let hop = Hop::new(east.clone(), west.clone());
    let guard =
        LoopGuard { source: &east, target: &west, header: (sel & 1 == 1).then_some(&hop), skip: sel & 2 == 0 };
    for v in &batches {
        let _ = registry.seen(v.header());
        let _ = verdict(&registry, v, &guard);
    }
});
