//! The partition state machine without sockets: fetched bytes in, acknowledgements
//! and errors in, positions, queues, stops and driver actions out.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::error::ResponseError;

use super::super::budget::{Budget, Charge};
use super::super::fetch_session::PartitionFetch;
use super::super::intake::Intake;
use super::super::routes::Routes;
use super::super::FlowStats;
use super::{Failure, FetchFailure, PartState, Resume, SendState, Start};
use crate::batch::provenance::{ClusterId, Provenance};
use crate::batch::testutil::{control_batch, TestBatch, TestRecord};
use crate::checkpoint::TailBatch;
use crate::cluster::TopicPartition;
use crate::config::{OnDataLoss, Tuning};
use crate::registry::{LoopGuard, Registry};

const FLOW: &str = "a->b";

fn tp() -> TopicPartition {
    TopicPartition::new("orders", 0)
}

fn part_at(offset: i64) -> PartState {
    let start = Start { source_offset: offset, stop: None, resume: None, contiguous: false };
    PartState::new(TopicPartition::new("orders", 0), start, &Tuning::default(), Instant::now())
}

/// A batch of `n` one-byte records at `base`, written by producer `pid`.
fn batch(base: i64, n: i32, pid: i64) -> TestBatch {
    let records = (0..n).map(|i| TestRecord::new(i, Some(b"k"), Some(&[i as u8]))).collect();
    TestBatch { base_offset: base, producer_id: pid, base_sequence: 0, ..TestBatch::with_records(records) }
}

fn bytes_of(batches: &[TestBatch]) -> Bytes {
    Bytes::from(batches.iter().flat_map(TestBatch::build).collect::<Vec<u8>>())
}

/// Everything a partition borrows from its flow, owned here.
struct Flow {
    registry: Registry,
    routes: Routes,
    origin: u32,
    next_id: u64,
    lookups: HashSet<i64>,
    stats: FlowStats,
    charge: Arc<Charge>,
    source: ClusterId,
    target: ClusterId,
}

impl Flow {
    fn new() -> Self {
        let (source, target) = (ClusterId::new("a").unwrap(), ClusterId::new("b").unwrap());
        let mut routes = Routes::default();
        let origin = routes.intern(Provenance::from_origin(source.clone()).with_hop(&target));
        let charge = Arc::new(Budget::new(1 << 30).reserve(1 << 20, 0).unwrap());
        Self {
            registry: Registry::new("mirrorproxy.producers", "a"),
            routes,
            origin,
            next_id: 0,
            lookups: HashSet::new(),
            stats: FlowStats::default(),
            charge,
            source,
            target,
        }
    }

    /// Feeds one Fetch answer for the partition; true when batches were queued.
    fn fetch(&mut self, p: &mut PartState, data: Bytes, requested: i64, hwm: i64) -> bool {
        let bytes = p.partition_max_bytes;
        self.fetch_asked(p, data, (requested, bytes), hwm)
    }

    /// [`Self::fetch`] of an answer to a Fetch that asked for (offset, bytes).
    fn fetch_asked(&mut self, p: &mut PartState, data: Bytes, (offset, bytes): (i64, i32), hwm: i64) -> bool {
        let asked = PartitionFetch { fetch_offset: offset, partition_max_bytes: bytes, current_leader_epoch: -1 };
        let mut cx = Intake {
            flow: FLOW,
            registry: &self.registry,
            guard: LoopGuard { source: &self.source, target: &self.target, header: None, skip: true },
            provenance: None,
            routes: &mut self.routes,
            origin_route: self.origin,
            next_id: &mut self.next_id,
            lookups: &mut self.lookups,
            stats: &self.stats,
            charge: &self.charge,
        };
        p.accept(&tp(), data, asked, hwm, &mut cx)
    }
}

fn queued_offsets(p: &PartState) -> Vec<i64> {
    p.queue.iter().map(super::Pending::base_offset).collect()
}

/// Sends the first unsent batch alone under producer (7, 0), generation 1.
fn send_next(p: &mut PartState) -> u64 {
    let idx = p.next_unsent().expect("a batch to send");
    p.stamp_for_send(idx, 1, (7, 0));
    p.mark_sent(idx, 1, 1, (7, 0))[0].0
}

const BACKOFF: Duration = Duration::from_millis(100);

fn fail_with(p: &mut PartState, id: u64, e: Option<ResponseError>) -> Failure {
    p.failed(FLOW, &tp(), id, true, e.map(|e| (e, None)), (Instant::now(), Duration::from_secs(1)))
}

#[test]
fn batches_are_queued_in_order_and_the_position_follows_them() {
    let (mut f, mut p) = (Flow::new(), part_at(0));
    assert!(f.fetch(&mut p, bytes_of(&[batch(0, 3, -1), batch(3, 2, -1)]), 0, 5));
    assert_eq!(queued_offsets(&p), [0, 3]);
    assert_eq!(p.fetch_offset, 5);
    assert!(p.fetch_at_batch_end);
    assert_eq!(p.mirrored_position(), 0, "nothing is on the target yet");
    assert_eq!(p.queued_bytes(), p.queue.iter().map(|e| e.batch.bytes().len()).sum::<usize>());
}

#[test]
fn a_start_position_inside_a_batch_cuts_the_records_before_it() {
    let (mut f, mut p) = (Flow::new(), part_at(2));
    assert!(f.fetch(&mut p, bytes_of(&[batch(0, 4, -1)]), 2, 4));
    assert_eq!(queued_offsets(&p), [2], "the batch stands for offsets 2..4 only");
    assert_eq!(p.queue[0].batch.header().records_count, 2);
    assert_eq!(p.fetch_offset, 4);
}

#[test]
fn a_batch_larger_than_the_fetch_grows_a_link_scaled_size_to_the_configured_one_then_doubles() {
    let mut flow = Flow::new();
    let mut p = part_at(0);
    let configured = p.partition_max_bytes;
    let whole = bytes_of(&[batch(0, 3, 1)]);
    let cut = whole.slice(..whole.len() - 1); // only the start of one batch came back
    let link_scaled = 1000;
    assert!(!flow.fetch_asked(&mut p, cut.clone(), (0, link_scaled), 3));
    let (f, _) = p.fetch_state(Instant::now(), link_scaled);
    assert_eq!(f.unwrap().partition_max_bytes, configured, "first the configured size, whatever the link");
    assert!(!flow.fetch_asked(&mut p, cut, (0, configured), 3));
    let (f, _) = p.fetch_state(Instant::now(), link_scaled);
    assert_eq!(f.unwrap().partition_max_bytes, configured * 2, "then twice what was asked");
    assert_eq!(p.fetch_offset, 0, "nothing skipped");
}

#[test]
fn a_crc_failure_is_fetched_again_once_then_stops_the_partition() {
    let (mut f, mut p) = (Flow::new(), part_at(0));
    let mut bad = batch(0, 3, -1).build();
    let last = bad.len() - 1;
    bad[last] ^= 0x01; // inside the records: covered by the CRC
    assert!(!f.fetch(&mut p, Bytes::from(bad.clone()), 0, 3));
    assert!(p.stopped.is_none(), "the first failure is retried");
    assert_eq!((p.fetch_offset, p.corrupt_at), (0, Some(0)), "no position taken from a corrupt batch");
    assert!(p.fetch_state(Instant::now(), i32::MAX).0.is_some(), "it fetches again");
    assert!(!f.fetch(&mut p, Bytes::from(bad), 0, 3));
    let why = p.stopped.as_deref().expect("stopped the second time");
    assert!(why.contains("CRC") && why.contains("again"), "{why}");
    assert_eq!(p.fetch_offset, 0);
    assert!(p.queue.is_empty());
}

#[test]
fn a_base_offset_beyond_the_high_watermark_is_corrupt_and_nothing_moves() {
    let (mut f, mut p) = (Flow::new(), part_at(100));
    // Offset 100 with bit 32 flipped: not covered by the CRC.
    let flipped = batch(0x64 | (1 << 32), 3, -1);
    assert!(!f.fetch(&mut p, bytes_of(std::slice::from_ref(&flipped)), 100, 103));
    assert_eq!(p.corrupt_at, Some(100));
    assert!(!f.fetch(&mut p, bytes_of(&[flipped]), 100, 103));
    let why = p.stopped.as_deref().expect("stopped");
    assert!(why.contains("offsets") && why.contains("100"), "{why}");
    assert_eq!((p.fetch_offset, p.mirrored_position()), (100, 100), "the checkpoint cannot move past it");
}

#[test]
fn a_small_raise_of_a_base_offset_is_a_gap_where_the_topic_is_not_compacted() {
    let (mut f, mut p) = (Flow::new(), part_at(100));
    p.contiguous = true;
    // The response was cut after the second batch (the log goes on to 200): its end
    // cannot be held against the high watermark, but the gap it leaves can.
    let raised = [batch(100, 3, -1), batch(103 + 8, 3, -1)];
    assert!(f.fetch(&mut p, bytes_of(&raised), 100, 200), "the batch before it goes on");
    assert_eq!(queued_offsets(&p), [100]);
    assert_eq!((p.fetch_offset, p.corrupt_at), (103, Some(103)), "fetched again from the real end");
    let why = {
        f.fetch(&mut p, bytes_of(&[batch(103 + 8, 3, -1)]), 103, 200);
        p.stopped.clone().expect("stopped when the gap is there again")
    };
    assert!(why.contains("gap") && why.contains("111"), "{why}");
    assert_eq!(p.mirrored_position(), 100, "no position past offset 103 was ever taken");
}

#[test]
fn a_transaction_is_held_until_its_marker_and_an_aborted_one_is_dropped() {
    let (mut f, mut p) = (Flow::new(), part_at(0));
    let txn = |base, pid| TestBatch { transactional: true, ..batch(base, 2, pid) };
    let marker = |base, pid, kind| TestBatch { base_offset: base, producer_id: pid, ..control_batch(kind) };
    assert!(!f.fetch(&mut p, bytes_of(&[txn(0, 11), txn(2, 12)]), 0, 4));
    assert!(p.queue.is_empty(), "outcome unknown: staged, not queued");
    assert_eq!(p.mirrored_position(), 0, "a checkpoint stays before staged data");
    // 11 aborts (type 0), 12 commits (type 1).
    assert!(f.fetch(&mut p, bytes_of(&[marker(4, 11, 0), marker(5, 12, 1)]), 4, 6));
    assert_eq!(queued_offsets(&p), [2], "only the committed transaction goes on");
    assert_eq!(f.stats.aborted_records.load(Ordering::Relaxed), 2);
    assert_eq!(f.stats.control_batches.load(Ordering::Relaxed), 2);
    assert_eq!(p.fetch_offset, 6);
}

#[test]
fn an_unregistered_producer_id_makes_the_partition_wait_for_the_registry() {
    let (mut f, mut p) = (Flow::new(), part_at(0));
    assert!(f.fetch(&mut p, bytes_of(&[batch(0, 1, -1), batch(1, 1, 42), batch(2, 1, 43)]), 0, 3));
    assert_eq!(queued_offsets(&p), [0], "batches of an application before it go on");
    assert!(p.registry_wait);
    assert_eq!(p.fetch_offset, 1, "fetched again from the batch that waits");
    assert_eq!(f.lookups, HashSet::from([42, 43]), "one registry read for every new id of the answer");
    assert_eq!(p.fetch_state(Instant::now(), i32::MAX), (None, false), "no fetch until the read");
}

#[test]
fn acknowledgements_out_of_order_advance_the_position_in_order() {
    let (mut f, mut p) = (Flow::new(), part_at(0));
    f.fetch(&mut p, bytes_of(&[batch(0, 3, -1), batch(3, 2, -1)]), 0, 5);
    let (first, second) = (send_next(&mut p), send_next(&mut p));
    assert_eq!(p.in_flight, 2);
    let acked = p.acked(FLOW, &tp(), second, 13, true, BACKOFF).expect("in flight");
    assert_eq!(acked, super::Acked::default(), "the later batch waits for the earlier one");
    assert_eq!((p.queue.len(), p.target_next, p.mirrored_position()), (2, None, 0));
    let acked = p.acked(FLOW, &tp(), first, 10, true, BACKOFF).expect("in flight");
    assert_eq!((acked.records, acked.batches), (5, 2));
    assert_eq!((p.target_next, p.mirrored_position(), p.in_flight), (Some(15), 5, 0));
    assert!(p.acked(FLOW, &tp(), first, 10, true, BACKOFF).is_none(), "a second answer is ignored");
}

#[test]
fn an_acknowledgement_without_an_offset_counts_on_from_the_last_one() {
    let (mut f, mut p) = (Flow::new(), part_at(0));
    f.fetch(&mut p, bytes_of(&[batch(0, 3, -1), batch(3, 2, -1)]), 0, 5);
    let (a, b) = (send_next(&mut p), send_next(&mut p));
    p.acked(FLOW, &tp(), a, 20, true, BACKOFF);
    p.acked(FLOW, &tp(), b, -1, true, BACKOFF); // DUPLICATE_SEQUENCE_NUMBER, no offset
    assert_eq!(p.target_next, Some(25));
}

#[test]
fn stamps_take_consecutive_sequences_and_a_resend_keeps_its_stamp() {
    let (mut f, mut p) = (Flow::new(), part_at(0));
    f.fetch(&mut p, bytes_of(&[batch(0, 3, -1), batch(3, 2, -1), batch(5, 4, -1)]), 0, 9);
    let a = send_next(&mut p);
    let b = send_next(&mut p);
    let seq = |p: &PartState, i: usize| p.queue[i].stamp.map(|(_, s)| s.base_sequence);
    assert_eq!((seq(&p, 0), seq(&p, 1)), (Some(0), Some(3)));
    // The first fails with a retriable error while the second is in flight.
    let failure = fail_with(&mut p, a, Some(ResponseError::RequestTimedOut));
    assert_eq!(failure, Failure { requeued: true, opened: true, ..Failure::default() });
    assert!(p.recovering, "no sends until the in-flight request answers");
    assert!(p.produce_not_before > Instant::now(), "backoff");
    fail_with(&mut p, b, None); // no answer for the second either
    assert!(!p.recovering);
    assert_eq!(p.next_unsent(), Some(0), "resent from the oldest unacknowledged batch");
    let again = send_next(&mut p);
    assert_eq!((again, seq(&p, 0)), (a, Some(0)), "same batch, same sequence: the broker drops a duplicate");
    send_next(&mut p);
    send_next(&mut p);
    assert_eq!(seq(&p, 2), Some(5), "a fresh batch continues after the resent ones");
}

#[test]
fn backoff_doubles_up_to_the_maximum_and_an_ack_resets_it() {
    let (mut f, mut p) = (Flow::new(), part_at(0));
    f.fetch(&mut p, bytes_of(&[batch(0, 1, -1)]), 0, 1);
    let start = p.produce_backoff;
    for _ in 0..12 {
        let id = send_next(&mut p);
        fail_with(&mut p, id, Some(ResponseError::NotEnoughReplicas));
    }
    assert_eq!(p.produce_backoff, Duration::from_secs(1), "capped");
    let id = send_next(&mut p);
    p.acked(FLOW, &tp(), id, 0, true, start);
    assert_eq!(p.produce_backoff, start);
}

#[test]
fn a_lost_producer_state_resets_the_route_and_a_refusal_stops_the_partition() {
    let (mut f, mut p) = (Flow::new(), part_at(0));
    f.fetch(&mut p, bytes_of(&[batch(0, 1, -1), batch(1, 1, -1)]), 0, 2);
    let id = send_next(&mut p);
    let failure = fail_with(&mut p, id, Some(ResponseError::UnknownProducerId));
    assert_eq!(failure.reset_producer, Some(f.origin));
    let id = send_next(&mut p);
    let failure = fail_with(&mut p, id, Some(ResponseError::NotLeaderOrFollower));
    assert!(failure.refresh_metadata && failure.reset_producer.is_none());
    let id = send_next(&mut p);
    fail_with(&mut p, id, Some(ResponseError::RecordListTooLarge));
    let why = p.stopped.as_deref().expect("not retriable: stopped");
    assert!(why.starts_with("target:") && why.contains("source offset 0"), "{why}");
    assert_eq!(p.queue.len(), 2, "nothing dropped");
}

#[test]
fn an_out_of_range_position_is_data_loss_stopped_by_default_or_continued() {
    let e = ResponseError::OffsetOutOfRange;
    let now = Instant::now();
    let mut p = part_at(10);
    assert_eq!(p.fetch_failed(FLOW, &tp(), e, (25, 40), OnDataLoss::Stop, now), FetchFailure::Lost(15));
    let why = p.stopped.as_deref().expect("stopped");
    assert!(why.contains("15 offsets are lost") && why.contains("on_data_loss"), "{why}");
    assert_eq!(p.fetch_offset, 10);
    let mut p = part_at(10);
    assert_eq!(p.fetch_failed(FLOW, &tp(), e, (25, 40), OnDataLoss::Continue, now), FetchFailure::Lost(15));
    assert!(p.stopped.is_none());
    assert_eq!((p.fetch_offset, p.fetch_at_batch_end), (25, false));
    let mut p = part_at(50);
    assert_eq!(p.fetch_failed(FLOW, &tp(), e, (0, 40), OnDataLoss::Stop, now), FetchFailure::Lost(10), "truncated");
    let later = now + Duration::from_secs(1);
    let mut p = part_at(0);
    assert_eq!(
        p.fetch_failed(FLOW, &tp(), ResponseError::NotLeaderOrFollower, (0, 0), OnDataLoss::Stop, later),
        FetchFailure::Retry
    );
    assert_eq!(p.fetch_state(now, i32::MAX), (None, true), "held back until the backoff ends");
}

#[test]
fn a_full_queue_stops_fetching_until_acknowledgements_drain_it() {
    let (mut f, mut p) = (Flow::new(), part_at(0));
    f.fetch(&mut p, bytes_of(&[batch(0, 3, -1)]), 0, 3);
    // The queue may hold twice the Fetch size: asking for half of what is queued, full.
    let cap = i32::try_from(p.queued_bytes() / 2).unwrap();
    assert_eq!(p.fetch_state(Instant::now(), cap), (None, false));
    let id = send_next(&mut p);
    p.acked(FLOW, &tp(), id, 0, true, BACKOFF);
    let (wanted, _) = p.fetch_state(Instant::now(), cap);
    assert_eq!(wanted.map(|w| w.fetch_offset), Some(3));
}

#[test]
fn checkpoints_are_due_only_when_the_position_moved() {
    let (mut f, mut p) = (Flow::new(), part_at(0));
    assert_eq!(p.checkpoint_due(), None, "target position unknown");
    f.fetch(&mut p, bytes_of(&[batch(0, 3, -1)]), 0, 3);
    let id = send_next(&mut p);
    p.acked(FLOW, &tp(), id, 100, true, BACKOFF);
    assert_eq!(p.checkpoint_due(), Some((3, 103)));
    p.checkpoint_written((3, 103));
    assert_eq!(p.checkpoint_due(), None);
    assert!(p.checkpoint_points().contains(&(3, 103)), "the last checkpoint joins the mapping history");
}

#[test]
fn after_a_restart_batches_already_on_the_target_are_not_sent_again() {
    let on_target = [batch(0, 3, -1), batch(3, 2, -1)];
    let tail = on_target
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let raw = crate::batch::split_batches(bytes_of(std::slice::from_ref(b))).unwrap().batches.remove(0);
            TailBatch { base_offset: 50 + 3 * i as i64, header: *raw.header() }
        })
        .collect();
    let start = Start {
        source_offset: 0,
        stop: None,
        resume: Some(Resume { fresh: false, target_offset: 50, tail, last_timestamp: -1, points: Vec::new() }),
        contiguous: true,
    };
    let mut p = PartState::new(tp(), start, &Tuning::default(), Instant::now());
    let mut f = Flow::new();
    assert!(f.fetch(&mut p, bytes_of(&[on_target[0].clone(), on_target[1].clone(), batch(5, 1, -1)]), 0, 6));
    assert_eq!(queued_offsets(&p), [5], "only the batch the crash window did not cover");
    assert_eq!(p.target_next, Some(55));
    assert!(p.reconcile.is_empty(), "reconciliation ended");
}

#[test]
fn a_stopped_partition_keeps_its_first_reason_and_fetches_nothing() {
    let mut p = part_at(0);
    p.stop(FLOW, &tp(), super::Side::Target, "first");
    p.stop(FLOW, &tp(), super::Side::Source, "second");
    assert_eq!(p.stopped.as_deref(), Some("target: first"));
    assert_eq!(p.fetch_state(Instant::now(), i32::MAX), (None, false));
    assert!(p.queue.iter().all(|e| e.state == SendState::Unsent));
}

proptest::proptest! {
    /// Any order of answers (acknowledged, failed, unanswered) to pipelined sends: the
    /// mirrored position never goes backwards nor past an unacknowledged batch, resends
    /// keep their sequences, and once everything is acknowledged the position is the end.
    #[test]
    fn positions_only_advance_in_order_whatever_the_answers(
        sizes in proptest::collection::vec(1i32..5, 1..8),
        answers in proptest::collection::vec((0usize..8, 0u8..3), 0..40),
    ) {
        let (mut f, mut p) = (Flow::new(), part_at(0));
        let mut batches = Vec::new();
        let mut base = 0i64;
        for n in &sizes {
            batches.push(batch(base, *n, -1));
            base += i64::from(*n);
        }
        let end = base;
        f.fetch(&mut p, bytes_of(&batches), 0, end);
        let mut sequences = std::collections::HashMap::new();
        let mut last_position = 0;
        let mut in_flight: Vec<u64> = Vec::new();
        for (pick, answer) in answers {
            if !p.recovering && p.next_unsent().is_some() && in_flight.len() < 3 {
                let idx = p.next_unsent().unwrap();
                let id = send_next(&mut p);
                let seq = p.queue[idx].stamp.unwrap().1.base_sequence;
                proptest::prop_assert_eq!(*sequences.entry(id).or_insert(seq), seq, "a resend keeps its stamp");
                in_flight.push(id);
                continue;
            }
            if in_flight.is_empty() {
                continue;
            }
            let id = in_flight.remove(pick % in_flight.len());
            match answer {
                0 => { p.acked(FLOW, &tp(), id, -1, true, BACKOFF); }
                1 => { fail_with(&mut p, id, Some(ResponseError::RequestTimedOut)); }
                _ => { fail_with(&mut p, id, None); }
            }
            let position = p.mirrored_position();
            proptest::prop_assert!(position >= last_position, "backwards: {} -> {}", last_position, position);
            if let Some(front) = p.queue.front() {
                proptest::prop_assert_eq!(position, front.base_offset(), "the position is the oldest batch not acknowledged");
            }
            last_position = position;
        }
        // Drain: answer everything in flight with success, then send and ack the rest.
        for id in in_flight.drain(..) {
            p.acked(FLOW, &tp(), id, -1, true, BACKOFF);
        }
        p.recovering = false;
        while p.next_unsent().is_some() {
            let id = send_next(&mut p);
            p.acked(FLOW, &tp(), id, -1, true, BACKOFF);
        }
        proptest::prop_assert!(p.queue.is_empty());
        proptest::prop_assert_eq!(p.mirrored_position(), end);
        proptest::prop_assert_eq!(p.in_flight, 0);
    }
}
