//! Shared parts of the fuzz targets: an allocation cap and the checks of the batch
//! pipeline that several targets run on what they parse.
//!
//! # Allocation cap
//!
//! libFuzzer's `-malloc_limit_mb` only works through a sanitizer's malloc hooks, and
//! on the stable toolchain the targets are built without one (`cargo fuzz -s none`).
//! So this crate installs its own global allocator: any single allocation above
//! [`MAX_ALLOC`] or more than [`MAX_LIVE`] bytes live at once fails, and Rust aborts
//! with "memory allocation of N bytes failed", which libFuzzer reports as a crash
//! with the input saved. `-rss_limit_mb` (checked by libFuzzer itself) stays on too.
//! The caps are above the crate's own decompression cap (4 MiB under the fuzzer,
//! `MAX_DECOMPRESSED_LEN`), so only an allocation no limit bounds trips them.

pub mod seeds;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use mirrorproxy::batch::provenance::{ClusterId, Hop};
use mirrorproxy::batch::{
    first_record_provenance, merge, split_batches, BatchHeader, ProducerStamp, VerifiedBatch, CRC_START,
    HEADER_LEN, LOG_OVERHEAD,
};

/// Largest single allocation allowed. Under `--cfg fuzzing` the crate's decompression
/// cap is 4 MiB (`MAX_DECOMPRESSED_LEN`); 64 MiB leaves room for a few copies of that
/// and still catches an allocation that no limit bounds.
pub const MAX_ALLOC: usize = 64 << 20;
/// Most bytes live at once.
pub const MAX_LIVE: usize = 256 << 20;

/// A [`System`] allocator that refuses allocations past the caps above.
pub struct CappedAlloc;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to `System`; only refuses (returns null) on top.
unsafe impl GlobalAlloc for CappedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !reserve(layout.size()) {
            return std::ptr::null_mut();
        }
        let p = System.alloc(layout);
        if p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !reserve(layout.size()) {
            return std::ptr::null_mut();
        }
        let p = System.alloc_zeroed(layout);
        if p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = layout.size();
        if new_size > old && !reserve(new_size - old) {
            return std::ptr::null_mut();
        }
        if new_size > MAX_ALLOC {
            LIVE.fetch_sub(new_size - old, Ordering::Relaxed);
            return std::ptr::null_mut();
        }
        let p = System.realloc(ptr, layout, new_size);
        if p.is_null() {
            if new_size > old {
                LIVE.fetch_sub(new_size - old, Ordering::Relaxed);
            }
        } else if new_size < old {
            LIVE.fetch_sub(old - new_size, Ordering::Relaxed);
        }
        p
    }
}

fn reserve(size: usize) -> bool {
    if size > MAX_ALLOC {
        return false;
    }
    let before = LIVE.fetch_add(size, Ordering::Relaxed);
    if before + size > MAX_LIVE {
        LIVE.fetch_sub(size, Ordering::Relaxed);
        return false;
    }
    true
}

#[global_allocator]
static GLOBAL: CappedAlloc = CappedAlloc;

/// Rewrites the CRC of every complete batch in `records` so that the fuzzer gets past
/// verification into the record-level code (a random CRC matches once in 2^32).
#[must_use]
pub fn fix_crcs(records: &[u8]) -> Vec<u8> {
    let mut out = records.to_vec();
    let mut pos = 0usize;
    while let Some(prefix) = out.get(pos..pos + LOG_OVERHEAD) {
        let len = i32::from_be_bytes([prefix[8], prefix[9], prefix[10], prefix[11]]);
        let Some(total) = usize::try_from(len).ok().and_then(|l| l.checked_add(LOG_OVERHEAD)) else { break };
        if total < HEADER_LEN || pos + total > out.len() {
            break;
        }
        let crc = crc32c_of(&out[pos + CRC_START..pos + total]);
        out[pos + 17..pos + 21].copy_from_slice(&crc.to_be_bytes());
        pos += total;
    }
    out
}

/// CRC-32C as an independent check: the crate's own `crc32c` dependency, applied to
/// the whole covered range in one pass (the crate combines two partial CRCs).
fn crc32c_of(b: &[u8]) -> u32 {
    // Bitwise CRC-32C (Castagnoli, reflected polynomial 0x82F63B78): slow but
    // independent of the code under test; inputs are at most a few KiB.
    let mut crc = !0u32;
    for &byte in b {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    !crc
}

/// The producer stamps the checks patch batches with: none, typical, and extremes.
pub const STAMPS: [ProducerStamp; 3] = [
    ProducerStamp { producer_id: -1, producer_epoch: -1, base_sequence: -1 },
    ProducerStamp { producer_id: 4242, producer_epoch: 7, base_sequence: 123_456 },
    ProducerStamp { producer_id: i64::MAX, producer_epoch: i16::MAX, base_sequence: i32::MAX },
];

/// Splits `bytes` expecting exactly one batch and verifies it; panics otherwise. For
/// bytes this crate wrote itself, which must always verify.
pub fn reverify_one(bytes: Bytes, what: &str) -> VerifiedBatch {
    let len = bytes.len();
    let split = split_batches(bytes).unwrap_or_else(|e| panic!("{what}: own output does not split: {e}"));
    assert!(!split.truncated_tail, "{what}: own output has a truncated tail");
    assert_eq!(split.batches.len(), 1, "{what}: own output is not one batch");
    let raw = split.batches.into_iter().next().unwrap();
    assert_eq!(raw.bytes().len(), len, "{what}: batch length does not cover the output");
    raw.verify().unwrap_or_else(|e| panic!("{what}: own output does not re-verify: {e}"))
}

/// Walks the records of a verified batch and checks what the walk claims.
pub fn check_walk(v: &VerifiedBatch) {
    if let Ok((data, spans)) = v.record_spans() {
        assert_eq!(spans.len(), v.header().records_count as usize, "span count");
        let mut pos = 0;
        for s in &spans {
            assert_eq!(s.record.start, pos, "records are contiguous");
            assert!(s.body.start > s.record.start && s.body.end == s.record.end);
            assert!(s.offset_delta_bytes.start >= s.body.start && s.offset_delta_bytes.end <= s.body.end);
            for r in [&s.key, &s.value].into_iter().flatten() {
                assert!(r.start <= r.end && r.end <= s.body.end);
            }
            assert!(s.headers.start <= s.headers.end && s.headers.end == s.body.end);
            pos = s.record.end;
        }
        assert_eq!(pos, data.len(), "records cover the data");
    }
}

/// Everything the engine does with a verified source batch that has no I/O in it:
/// trim, control type, stamp, patch into an outgoing batch; the results re-verify.
pub fn check_verified(v: &VerifiedBatch, selector: u8) {
    let h = *v.header();
    check_walk(v);
    let _ = v.control_type();
    let _ = first_record_provenance(v);
    let _ = merge::mergeable(v);

    // A start position inside the batch (without_records_before), as the engine cuts.
    let cut = h.base_offset.saturating_add(i64::from(selector % 4));
    if let Ok(Some(t)) = v.clone().without_records_before(cut) {
        let t2 = reverify_one(t.bytes().clone(), "without_records_before");
        assert!(t2.header().records_count <= h.records_count);
        check_walk(&t2);
    }

    // One producer stamp per input, chosen by the selector (each may re-compress a
    // renumbered batch; all three on every input made the target three times slower
    // for no more coverage: the fuzzer varies the selector byte too).
    let stamp = STAMPS[usize::from(selector >> 2) % STAMPS.len()];
    {
        match v.clone().into_outgoing(stamp) {
            Ok(out) => {
                let o = reverify_one(out.to_bytes(), "into_outgoing");
                let oh = o.header();
                assert_eq!(*oh, out.header(), "outgoing header as written");
                assert_eq!(oh.base_offset, 0);
                assert_eq!(oh.producer_id, stamp.producer_id);
                assert_eq!(oh.producer_epoch, stamp.producer_epoch);
                assert_eq!(oh.base_sequence, stamp.base_sequence);
                assert!(!oh.is_transactional());
                assert_eq!(oh.records_count, h.records_count);
                assert_eq!(oh.last_offset_delta, h.records_count - 1, "offset range equals the count");
                assert_eq!(oh.partition_leader_epoch, h.partition_leader_epoch);
                check_walk(&o);
                // Patching the patched batch again (a resend under a new producer
                // epoch) stays valid too.
                if let Ok(again) = o.into_outgoing(STAMPS[1]) {
                    reverify_one(again.to_bytes(), "into_outgoing twice");
                }
            }
            // Only the renumbering path reads the records, so only it may fail on them.
            Err(_) => assert!(h.is_control() || h.records_count == 0 || v.needs_renumbering(), "patch failed"),
        }
    }

    // Loop prevention stamp, as the engine does before patching.
    let hop = Hop::new(ClusterId::new("east").unwrap(), ClusterId::new("west").unwrap());
    let _ = hop.decide(v);
    if let Ok(s) = hop.stamp(v.clone()) {
        let s2 = reverify_one(s.bytes().clone(), "stamp_provenance");
        check_walk(&s2);
        if s2.header().records_count > 0 {
            let p = first_record_provenance(&s2).expect("stamped provenance reads back");
            assert!(p.expect("stamped batch has provenance").contains("west"));
        }
        if let Ok(out) = s2.into_outgoing(STAMPS[1]) {
            reverify_one(out.to_bytes(), "stamp then into_outgoing");
        }
    }
}

/// A Fetch response partition's `records` bytes through the whole batch pipeline.
pub fn check_records(records: Bytes, selector: u8) {
    let input_len = records.len();
    let Ok(split) = split_batches(records) else { return };
    let mut covered = 0;
    let mut verified = Vec::new();
    for raw in split.batches {
        let h: BatchHeader = *raw.header();
        assert_eq!(raw.bytes().len(), h.total_len().unwrap(), "raw batch length");
        assert_eq!(BatchHeader::parse(raw.bytes()), Some(h));
        covered += raw.bytes().len();
        if let Ok(v) = raw.verify() {
            check_verified(&v, selector);
            verified.push(v);
        }
    }
    assert!(covered <= input_len);
    if !split.truncated_tail {
        assert_eq!(covered, input_len, "no truncated tail, yet bytes left over");
    }

    // Re-batching: consecutive mergeable batches into one.
    let run: Vec<&VerifiedBatch> = verified.iter().filter(|v| merge::mergeable(v)).take(4).collect();
    if run.len() > 1 {
        let codec = merge::target_codec(run[0], None);
        if let Ok(out) = merge::merge(&run, STAMPS[1], codec) {
            let m = reverify_one(out.batch.to_bytes(), "merge");
            let count: i64 = run.iter().map(|v| i64::from(v.header().records_count)).sum();
            assert_eq!(i64::from(m.header().records_count), count, "merged record count");
            if let Ok(plain) = m.decompressed_records() {
                assert_eq!(out.plain_bytes, plain.len(), "merge reported its uncompressed size");
            }
            check_walk(&m);
        }
    }
}
