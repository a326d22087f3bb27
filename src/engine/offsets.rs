//! Offset sanity of fetched batches: offsets are checked as strictly as CRCs.
//!
//! A record batch's CRC-32C covers everything from its attributes on, but not its
//! base offset (bytes 0..8): brokers assign offsets after the producer computed the
//! CRC (`DefaultRecordBatch.java`, KIP-98). A bit flipped there on the way — a NIC, a
//! proxy, a disk the broker trusts — is invisible to the CRC, and a mirror that moves
//! its position by a batch's offsets would jump past the end of the log (and write
//! that position into its checkpoint), or skip a batch, or cut records it was never
//! past. So each batch of a Fetch response is placed against what is known for sure:
//!
//! - the offset that was asked for, and whether it is the end of the batch read just
//!   before (then no later batch may start below it: it would overlap that batch);
//! - the batch before it in the same response (offsets only go up, batches never
//!   overlap);
//! - the high watermark in the same response (no readable batch starts at or after it).
//!
//! Only the base offset is held against the high watermark. The last offset is
//! `base + lastOffsetDelta` and the delta is CRC-covered, so a bad base is the only way
//! for it to be wrong; and brokers are not consistent about where the end is (tansu
//! 0.6.0 answers ListOffsets with the last batch's base offset + 1, while its Fetch
//! reports the true end; pinned in `tests/tansu_probe.rs`).
//!
//! A batch that fails is treated like a CRC failure by the engine: fetched once more
//! (a flip on the wire is gone the second time), then its partition is stopped with
//! topic, partition and offsets in the error. Nothing from it reaches the target and
//! no checkpoint position is taken from it.

use crate::batch::BatchHeader;

/// What is known when a partition's part of a Fetch response is read.
#[derive(Debug, Clone, Copy)]
pub struct OffsetCheck {
    /// The fetch offset of the request.
    requested: i64,
    /// True when `requested` is where the previously read batch ended, so it cannot be
    /// inside a batch (a start position from a checkpoint or `latest` can be).
    requested_is_batch_end: bool,
    /// High watermark in the same response; negative when not reported.
    high_watermark: i64,
    /// Next offset after the previous batch of this response.
    previous_end: Option<i64>,
    /// The log has no gaps (its topic is not compacted): every batch starts where the
    /// one before it ended, and the first holds the requested offset.
    contiguous: bool,
}

impl OffsetCheck {
    #[must_use]
    pub fn new(requested: i64, requested_is_batch_end: bool, high_watermark: i64) -> Self {
        Self { requested, requested_is_batch_end, high_watermark, previous_end: None, contiguous: false }
    }

    /// Holds the batches to a log without gaps: right for every topic that is not
    /// compacted (only the log cleaner removes offsets from inside a log; retention and
    /// DeleteRecords move its start, which a Fetch answers with OFFSET_OUT_OF_RANGE). A
    /// base offset raised by a small flip, still below the high watermark, is then a
    /// gap, and caught; on a compacted topic it is indistinguishable from compaction.
    #[must_use]
    pub fn contiguous(mut self, contiguous: bool) -> Self {
        self.contiguous = contiguous;
        self
    }

    /// Places the next batch of the response; `Err` says why its offsets cannot be
    /// true. On success the batch becomes the previous one for the next call.
    pub fn check(&mut self, h: &BatchHeader) -> Result<(), String> {
        let base = h.base_offset;
        let next = h.next_offset();
        if base < 0 {
            return Err(format!("negative base offset {base}"));
        }
        if self.high_watermark >= 0 && base >= self.high_watermark {
            return Err(format!(
                "base offset {base} is at or beyond the high watermark {} reported in the same response",
                self.high_watermark
            ));
        }
        match self.previous_end {
            Some(end) if base < end => {
                return Err(format!(
                    "base offset {base} goes backwards: the batch before it in the same response ends at {}",
                    end - 1
                ));
            }
            Some(end) if self.contiguous && base > end => {
                return Err(format!(
                    "base offset {base} leaves a gap after the batch before it in the same response, which ends at {}, in a topic that is not compacted",
                    end - 1
                ));
            }
            Some(_) => {}
            None => {
                if self.contiguous && base > self.requested {
                    return Err(format!(
                        "base offset {base} is beyond the requested offset {}, a gap in a topic that is not compacted",
                        self.requested
                    ));
                }
                if next <= self.requested {
                    return Err(format!(
                        "batch {base}..={} lies entirely below the requested offset {}",
                        h.last_offset(),
                        self.requested
                    ));
                }
                if self.requested_is_batch_end && base < self.requested {
                    return Err(format!(
                        "base offset {base} overlaps the batch read before it, which ended at {}",
                        self.requested - 1
                    ));
                }
            }
        }
        self.previous_end = Some(next);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(base: i64, records: i32) -> BatchHeader {
        BatchHeader {
            base_offset: base,
            batch_length: 100,
            partition_leader_epoch: 0,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: records - 1,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            records_count: records,
        }
    }

    #[test]
    fn consecutive_batches_from_the_requested_offset_pass() {
        let mut c = OffsetCheck::new(100, true, 130);
        for base in [100, 110, 120] {
            c.check(&batch(base, 10)).unwrap();
        }
    }

    #[test]
    fn a_start_position_inside_the_first_batch_passes_but_not_after_a_batch_end() {
        OffsetCheck::new(105, false, 130).check(&batch(100, 10)).unwrap();
        let e = OffsetCheck::new(105, true, 130).check(&batch(100, 10)).unwrap_err();
        assert!(e.contains("overlaps the batch read before it, which ended at 104"), "{e}");
    }

    #[test]
    fn a_base_offset_beyond_the_high_watermark_is_refused() {
        // The defect found in the field: a flip in bit 32 of the base offset.
        let e = OffsetCheck::new(107, true, 7500).check(&batch(4_294_967_403, 10)).unwrap_err();
        assert!(e.contains("4294967403") && e.contains("high watermark 7500"), "{e}");
        // Exactly at the high watermark: nothing readable starts there.
        assert!(OffsetCheck::new(0, false, 10).check(&batch(10, 1)).is_err());
        // Not reported (-1): no bound.
        OffsetCheck::new(0, false, -1).check(&batch(1 << 40, 1)).unwrap();
    }

    #[test]
    fn a_high_watermark_below_the_last_offset_passes() {
        // tansu's ListOffsets end: the last batch's base + 1 (only bases are checked).
        let mut c = OffsetCheck::new(0, true, 11);
        c.check(&batch(0, 10)).unwrap();
        c.check(&batch(10, 5)).unwrap();
    }

    #[test]
    fn negative_backwards_and_overlapping_bases_are_refused() {
        assert!(OffsetCheck::new(0, false, 100).check(&batch(-5, 10)).unwrap_err().contains("negative"));
        let mut c = OffsetCheck::new(0, true, 100);
        c.check(&batch(0, 10)).unwrap();
        let e = c.check(&batch(5, 10)).unwrap_err();
        assert!(e.contains("goes backwards") && e.contains("ends at 9"), "{e}");
        let mut c = OffsetCheck::new(0, true, 100);
        c.check(&batch(0, 10)).unwrap();
        assert!(c.check(&batch(0, 10)).is_err(), "the same batch twice");
    }

    #[test]
    fn a_batch_wholly_below_the_requested_offset_is_refused() {
        // A flip that lowers a base offset would otherwise make the batch look read.
        let e = OffsetCheck::new(50, true, 100).check(&batch(10, 10)).unwrap_err();
        assert!(e.contains("entirely below the requested offset 50"), "{e}");
    }

    #[test]
    fn a_gap_is_not_corruption() {
        // Compacted topics and aborted-then-compacted ranges leave gaps between batches.
        let mut c = OffsetCheck::new(0, true, 1000);
        c.check(&batch(0, 10)).unwrap();
        c.check(&batch(500, 10)).unwrap();
    }

    #[test]
    fn a_failed_batch_does_not_become_the_previous_one() {
        let mut c = OffsetCheck::new(0, true, 100);
        c.check(&batch(0, 10)).unwrap();
        assert!(c.check(&batch(1 << 33, 1)).is_err());
        c.check(&batch(10, 10)).unwrap();
    }

    #[test]
    fn a_gap_is_corruption_where_the_topic_is_not_compacted() {
        let mut c = OffsetCheck::new(100, true, 200).contiguous(true);
        assert!(c.check(&batch(100, 3)).is_ok());
        let e = c.check(&batch(108, 3)).unwrap_err();
        assert!(e.contains("gap") && e.contains("102"), "{e}");
        let e = OffsetCheck::new(100, true, 200).contiguous(true).check(&batch(104, 3)).unwrap_err();
        assert!(e.contains("beyond the requested offset 100"), "{e}");
        // A start position inside a batch still passes.
        assert!(OffsetCheck::new(101, false, 200).contiguous(true).check(&batch(100, 3)).is_ok());
    }
}
