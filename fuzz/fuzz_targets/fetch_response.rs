//! Fetch response decoding as the connection does it (`wire::decode_response` for
//! `FetchRequest`, i.e. the vendored `kafka-protocol` decoder), every version we
//! may negotiate (0..=12), then every partition's `records` through the batch
//! pipeline.
#![no_main]

use bytes::Bytes;
use kafka_protocol::messages::FetchRequest;
use libfuzzer_sys::fuzz_target;
use mirrorproxy::wire::decode_response;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, frame)) = data.split_first() else { return };
    let version = i16::from(sel % 13);
    // Bit 7: fix the batches' CRCs, so that the fuzzer reaches record-level code.
    let fix = sel & 0x80 != 0;
    let Ok(resp) = decode_response::<FetchRequest>(Bytes::copy_from_slice(frame), version) else { return };
    for topic in resp.responses {
        for p in topic.partitions {
            let Some(records) = p.records else { continue };
            let records = if fix { Bytes::from(mirrorproxy_fuzz::fix_crcs(&records)) } else { records };
            mirrorproxy_fuzz::check_records(records, sel);
        }
    }
});
