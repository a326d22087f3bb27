//! Incremental fetch sessions (KIP-227), the client side, without I/O.
//!
//! Without a session every Fetch names every partition the mirror reads from that
//! broker, and every response names every one of them again, data or not: at 10,000
//! partitions that is a few hundred KB of request and response per round trip, most of
//! it about partitions where nothing happened. With a session the broker remembers the
//! partitions and their fetch positions; a request then carries only what changed since
//! the previous one (partitions added, positions moved, partitions to forget) and a
//! response only the partitions with data or with news (high watermark, log start,
//! error).
//!
//! The rules, from KIP-227 and Kafka's `FetchSessionHandler` / `FetchSession`:
//! - `(session 0, epoch -1)` is a sessionless full fetch; `(id or 0, epoch 0)` is a full
//!   fetch that closes session `id` (if any) and asks for a new one; the broker answers
//!   a new session id, or 0 when it will not keep one (then every request stays full,
//!   which is how brokers without sessions, tansu 0.6.0 among them, are served).
//! - `(id, n > 0)` is incremental; n is the previous epoch + 1 (after `i32::MAX`: 1). The
//!   broker refuses a wrong epoch (`INVALID_FETCH_SESSION_EPOCH`) or a session it no
//!   longer has (`FETCH_SESSION_ID_NOT_FOUND`, e.g. after eviction or a restart).
//! - A partition the client stops wanting is forgotten explicitly; one that it keeps
//!   and whose position, partition max bytes or leader epoch is unchanged is not sent.
//! - Only one request per session may be outstanding (the engine keeps one Fetch per
//!   source broker).
//! - Any doubt (error response, transport failure, a response naming a partition that
//!   is not in the session) ends the session: the next request is full again. A full
//!   request costs one large round trip, never data: positions come from the mirror's
//!   own state, not from the broker's memory.

use super::{FastMap, FastSet};
use crate::cluster::TopicPartition;

/// What the broker must remember about one partition of the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionFetch {
    pub fetch_offset: i64,
    pub partition_max_bytes: i32,
    pub current_leader_epoch: i32,
}

const INVALID_SESSION_ID: i32 = 0;
const INITIAL_EPOCH: i32 = 0;
const FINAL_EPOCH: i32 = -1;
/// `FETCH_SESSION_ID_NOT_FOUND`.
pub const SESSION_NOT_FOUND: i16 = 70;
/// `INVALID_FETCH_SESSION_EPOCH`.
pub const INVALID_EPOCH: i16 = 71;

/// The session fields of one Fetch request, kept to read its response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    pub session_id: i32,
    pub session_epoch: i32,
}

impl Ticket {
    #[must_use]
    pub fn is_full(self) -> bool {
        self.session_epoch == INITIAL_EPOCH || self.session_epoch == FINAL_EPOCH
    }
}

/// One Fetch request's session fields and partitions.
#[derive(Debug)]
pub struct SessionRequest {
    pub ticket: Ticket,
    /// Partitions to name in the request: all of them for a full fetch; the added and
    /// changed ones for an incremental fetch.
    pub send: Vec<(TopicPartition, PartitionFetch)>,
    /// Partitions the broker should drop from the session (incremental only).
    pub forget: Vec<TopicPartition>,
}

/// What to do with a Fetch response, as far as the session is concerned.
#[derive(Debug, PartialEq, Eq)]
pub enum SessionOutcome {
    /// Use the response's partitions.
    Use,
    /// The broker refused the request because of the session (unknown id or wrong
    /// epoch): nothing in the response is usable; the next request is full.
    Restart,
}

/// The session with one broker.
#[derive(Debug)]
pub struct FetchSession {
    enabled: bool,
    session_id: i32,
    /// Epoch of the next request.
    next_epoch: i32,
    /// The partitions as the broker knows them once the last request was applied.
    partitions: FastMap<TopicPartition, PartitionFetch>,
    /// Partitions to forget with the next incremental request (their leader moved).
    forget_next: FastSet<TopicPartition>,
}

impl FetchSession {
    /// `enabled = false` sends sessionless full fetches (epoch -1), as before KIP-227.
    #[must_use]
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            session_id: INVALID_SESSION_ID,
            next_epoch: if enabled { INITIAL_EPOCH } else { FINAL_EPOCH },
            partitions: FastMap::default(),
            forget_next: FastSet::default(),
        }
    }

    /// True when the next request will be incremental.
    #[must_use]
    pub fn is_established(&self) -> bool {
        self.session_id != INVALID_SESSION_ID && self.next_epoch > INITIAL_EPOCH
    }

    fn ticket(&self) -> Ticket {
        Ticket { session_id: self.session_id, session_epoch: self.next_epoch }
    }

    /// Builds the next request for the partitions wanted now. The session's view is
    /// updated at once: if the request then fails, [`FetchSession::transport_failed`]
    /// makes the next one full anyway.
    pub fn build(&mut self, wanted: Vec<(TopicPartition, PartitionFetch)>) -> SessionRequest {
        if !self.is_established() {
            self.forget_next.clear();
            self.partitions.clear();
            self.partitions.extend(wanted.iter().cloned());
            return SessionRequest { ticket: self.ticket(), send: wanted, forget: Vec::new() };
        }
        // In place: at thousands of partitions this runs for every Fetch. Every partition
        // not wanted is forgotten below, so earlier `forget_later` calls are covered.
        self.forget_next.clear();
        let mut send = Vec::new();
        let mut kept = 0;
        let mut added = 0;
        for (tp, f) in &wanted {
            if let Some(known) = self.partitions.get_mut(tp) {
                kept += 1;
                if *known != *f {
                    *known = *f;
                    send.push((tp.clone(), *f));
                }
            } else {
                added += 1;
                self.partitions.insert(tp.clone(), *f);
                send.push((tp.clone(), *f));
            }
        }
        let mut forget = Vec::new();
        if kept + added != self.partitions.len() {
            let wanted: FastSet<&TopicPartition> = wanted.iter().map(|(tp, _)| tp).collect();
            self.partitions.retain(|tp, _| {
                let keep = wanted.contains(tp);
                if !keep {
                    forget.push(tp.clone());
                }
                keep
            });
            forget.sort();
        }
        SessionRequest { ticket: self.ticket(), send, forget }
    }

    /// Builds the next incremental request from changes only: `Some` = fetch this
    /// partition so, `None` = stop fetching it; every other partition stays as it is.
    /// This is what keeps a Fetch at many partitions from costing a walk over all of
    /// them. None (and the next request is full) when the session would hold nothing.
    ///
    /// # Panics
    /// If the session is not established (use [`FetchSession::build`]).
    pub fn build_incremental(
        &mut self,
        changes: Vec<(TopicPartition, Option<PartitionFetch>)>,
    ) -> Option<SessionRequest> {
        assert!(self.is_established(), "incremental fetch without a session");
        let mut send = Vec::new();
        let mut forget = Vec::new();
        for (tp, change) in changes {
            match change {
                Some(f) => {
                    self.forget_next.remove(&tp);
                    if self.partitions.insert(tp.clone(), f) != Some(f) {
                        send.push((tp, f));
                    }
                }
                None => {
                    if self.partitions.remove(&tp).is_some() {
                        self.forget_next.remove(&tp);
                        forget.push(tp);
                    }
                }
            }
        }
        for tp in self.forget_next.drain() {
            if self.partitions.remove(&tp).is_some() {
                forget.push(tp);
            }
        }
        if self.partitions.is_empty() {
            // Nothing to read: let the next request, when there is one, start over.
            self.next_epoch = INITIAL_EPOCH;
            return None;
        }
        forget.sort();
        Some(SessionRequest { ticket: self.ticket(), send, forget })
    }

    /// Forget `tp` with the next incremental request (its leader is another broker now).
    /// The current request's view is left alone: its response may still name `tp`.
    pub fn forget_later(&mut self, tp: &TopicPartition) {
        if self.partitions.contains_key(tp) {
            self.forget_next.insert(tp.clone());
        }
    }

    /// What the broker reads for `tp` in the request just built: its offset and size
    /// (None: the broker does not read it, so a response must not name it). Valid
    /// until the next [`FetchSession::build`]; the engine keeps one Fetch per broker
    /// outstanding.
    #[must_use]
    pub fn asked(&self, tp: &TopicPartition) -> Option<PartitionFetch> {
        self.partitions.get(tp).copied()
    }

    /// The partitions the broker reads for the request just built.
    pub fn partitions(&self) -> impl Iterator<Item = &TopicPartition> {
        self.partitions.keys()
    }

    /// Takes the session fields of the response to the request `req` was the ticket of.
    /// `error_code` is the response's top-level error; errors other than the two session
    /// errors end the session too (the caller cannot use such a response either).
    pub fn on_response(&mut self, req: Ticket, error_code: i16, session_id: i32) -> SessionOutcome {
        if !self.enabled {
            return if error_code == 0 { SessionOutcome::Use } else { SessionOutcome::Restart };
        }
        if error_code != 0 {
            if error_code == SESSION_NOT_FOUND {
                self.session_id = INVALID_SESSION_ID;
            }
            self.next_epoch = INITIAL_EPOCH; // close the old session (if any), ask for a new one
            return SessionOutcome::Restart;
        }
        if req.is_full() {
            self.session_id = session_id;
            self.next_epoch = if session_id == INVALID_SESSION_ID { INITIAL_EPOCH } else { 1 };
        } else if session_id == INVALID_SESSION_ID {
            // The broker closed the session; this response is still a valid answer.
            self.session_id = INVALID_SESSION_ID;
            self.next_epoch = INITIAL_EPOCH;
        } else if session_id != req.session_id {
            // Not our session: nothing in it can be trusted.
            self.next_epoch = INITIAL_EPOCH;
            return SessionOutcome::Restart;
        } else {
            self.next_epoch = if req.session_epoch == i32::MAX { 1 } else { req.session_epoch + 1 };
        }
        SessionOutcome::Use
    }

    /// The request failed in transport (or its response could not be used): the broker
    /// may or may not have applied it, so the next request is full and replaces the
    /// session.
    pub fn transport_failed(&mut self) {
        if self.enabled {
            self.next_epoch = INITIAL_EPOCH;
        }
    }

    /// A response named a partition that is not in the session: the two views differ.
    pub fn diverged(&mut self) {
        self.transport_failed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, HashMap};

    /// A broker's side of KIP-227, written from the KIP (FetchSession.scala's rules):
    /// what it holds per session and how it applies a request.
    #[derive(Default)]
    struct ModelBroker {
        next_id: i32,
        sessions: HashMap<i32, (i32, HashMap<TopicPartition, PartitionFetch>)>,
        refuse_new: bool,
    }

    /// What the broker answered: error, session id, and the partitions it read.
    type Answer = (i16, i32, Option<HashMap<TopicPartition, PartitionFetch>>);

    impl ModelBroker {
        fn apply(&mut self, req: &SessionRequest) -> Answer {
            let sent: HashMap<_, _> = req.send.iter().cloned().collect();
            match req.ticket.session_epoch {
                FINAL_EPOCH => {
                    self.sessions.remove(&req.ticket.session_id);
                    (0, 0, Some(sent))
                }
                INITIAL_EPOCH => {
                    assert!(req.forget.is_empty(), "a full fetch forgets nothing");
                    self.sessions.remove(&req.ticket.session_id);
                    if self.refuse_new {
                        return (0, 0, Some(sent));
                    }
                    self.next_id += 1;
                    self.sessions.insert(self.next_id, (1, sent.clone()));
                    (0, self.next_id, Some(sent))
                }
                epoch => {
                    let Some((expected, parts)) = self.sessions.get_mut(&req.ticket.session_id) else {
                        return (SESSION_NOT_FOUND, 0, None);
                    };
                    if *expected != epoch {
                        return (INVALID_EPOCH, 0, None);
                    }
                    for tp in &req.forget {
                        assert!(parts.remove(tp).is_some(), "forgot {tp}, which the session does not hold");
                    }
                    for (tp, f) in sent {
                        let old = parts.insert(tp, f);
                        assert_ne!(old, Some(f), "sent an unchanged partition");
                    }
                    *expected = if epoch == i32::MAX { 1 } else { epoch + 1 };
                    (0, req.ticket.session_id, Some(parts.clone()))
                }
            }
        }
    }

    type Want = BTreeMap<u8, (u8, u8)>;

    #[derive(Debug, Clone)]
    enum Step {
        /// Partitions wanted now: index → (offset, leader epoch); with `true`, an
        /// established session gets only the changes (as the engine's dirty set).
        Fetch(Want, bool),
        /// The request is lost in transport; whether the broker applied it is the flag.
        Lost(Want, bool),
        /// The partition's leader moved to another broker.
        Moved(u8),
        /// The broker forgets every session (restart, eviction).
        Evict,
        RefuseNew(bool),
    }

    fn tp_of(p: u8) -> TopicPartition {
        TopicPartition::new(if p % 2 == 0 { "a" } else { "b" }, i32::from(p))
    }

    fn fetch_of((o, e): (u8, u8)) -> PartitionFetch {
        PartitionFetch {
            fetch_offset: i64::from(o),
            partition_max_bytes: 1 << 20,
            current_leader_epoch: i32::from(e % 2),
        }
    }

    fn wanted(m: &Want) -> Vec<(TopicPartition, PartitionFetch)> {
        m.iter().map(|(p, v)| (tp_of(*p), fetch_of(*v))).collect()
    }

    fn step() -> impl Strategy<Value = Step> {
        let set = || prop::collection::btree_map(0u8..16, (0u8..4, 0u8..3), 0..10);
        prop_oneof![
            6 => (set(), any::<bool>()).prop_map(|(s, inc)| Step::Fetch(s, inc)),
            1 => (set(), any::<bool>()).prop_map(|(s, applied)| Step::Lost(s, applied)),
            1 => (0u8..16).prop_map(Step::Moved),
            1 => Just(Step::Evict),
            1 => any::<bool>().prop_map(Step::RefuseNew),
        ]
    }

    /// The request for `w`: full, or only the partitions that differ from `current` (plus
    /// one unchanged one, as a dirty set may hold).
    fn request(client: &mut FetchSession, current: &Want, w: &Want, incremental: bool) -> Option<SessionRequest> {
        if !(incremental && client.is_established()) {
            return Some(client.build(wanted(w)));
        }
        let mut changes = Vec::new();
        let keys: std::collections::BTreeSet<u8> = current.keys().chain(w.keys()).copied().collect();
        for (i, p) in keys.into_iter().enumerate() {
            if current.get(&p) != w.get(&p) || i == 0 {
                changes.push((tp_of(p), w.get(&p).copied().map(fetch_of)));
            }
        }
        client.build_incremental(changes)
    }

    proptest! {
        /// After every answered request the broker reads exactly the partitions and
        /// positions the client wanted, and the client knows which those are; requests
        /// carry only what changed; a lost or refused request never leaves the two
        /// views apart for more than one round trip.
        #[test]
        fn broker_reads_what_the_client_wants(steps in prop::collection::vec(step(), 1..60)) {
            let mut broker = ModelBroker::default();
            let mut client = FetchSession::new(true);
            // What the client last asked this broker for.
            let mut current = Want::new();
            for s in steps {
                match s {
                    Step::Evict => broker.sessions.clear(),
                    Step::RefuseNew(r) => broker.refuse_new = r,
                    Step::Moved(p) => {
                        if current.remove(&p).is_some() {
                            client.forget_later(&tp_of(p));
                        }
                    }
                    Step::Lost(w, applied) => {
                        let req = client.build(wanted(&w));
                        if applied {
                            broker.apply(&req);
                        }
                        client.transport_failed();
                        current = w;
                    }
                    Step::Fetch(w, incremental) => {
                        let want: HashMap<_, _> = wanted(&w).into_iter().collect();
                        // A refusal costs one round trip: the retry must succeed.
                        for attempt in 0..2 {
                            let Some(req) = request(&mut client, &current, &w, incremental && attempt == 0) else {
                                prop_assert!(w.is_empty(), "no request although partitions are wanted");
                                prop_assert!(!client.is_established());
                                break;
                            };
                            current.clone_from(&w);
                            let (err, id, read) = broker.apply(&req);
                            match client.on_response(req.ticket, err, id) {
                                SessionOutcome::Use => {
                                    let read = read.unwrap();
                                    prop_assert_eq!(&read, &want);
                                    prop_assert_eq!(client.partitions().count(), read.len());
                                    for (tp, f) in &read {
                                        prop_assert_eq!(client.asked(tp), Some(*f));
                                    }
                                    break;
                                }
                                SessionOutcome::Restart => {
                                    prop_assert!(attempt == 0, "the full retry was refused too");
                                    prop_assert!(err == SESSION_NOT_FOUND || err == INVALID_EPOCH);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn steady_state_sends_only_moved_partitions() {
        let tp = |p| TopicPartition::new("t", p);
        let f = |o| PartitionFetch { fetch_offset: o, partition_max_bytes: 100, current_leader_epoch: 0 };
        let mut broker = ModelBroker::default();
        let mut s = FetchSession::new(true);
        let all = |o1| (0..1000).map(|p| (tp(p), f(if p == 1 { o1 } else { 0 }))).collect::<Vec<_>>();
        let req = s.build(all(0));
        assert!(req.ticket.is_full());
        assert_eq!((req.ticket.session_id, req.ticket.session_epoch, req.send.len()), (0, 0, 1000));
        let (e, id, _) = broker.apply(&req);
        assert_eq!(s.on_response(req.ticket, e, id), SessionOutcome::Use);
        assert!(s.is_established());
        // partition 1 moved: one partition in the request, 1000 fetched
        let req = s.build(all(7));
        assert_eq!((req.ticket.session_id, req.ticket.session_epoch), (id, 1));
        assert_eq!(req.send, vec![(tp(1), f(7))]);
        assert!(req.forget.is_empty());
        assert_eq!(s.partitions().count(), 1000);
        assert_eq!(s.asked(&tp(1)).map(|f| f.fetch_offset), Some(7));
        let (e, id2, _) = broker.apply(&req);
        assert_eq!(s.on_response(req.ticket, e, id2), SessionOutcome::Use);
        // nothing moved, partition 999 paused: an empty request that forgets one
        let mut w = all(7);
        w.pop();
        let req = s.build(w);
        assert_eq!(req.ticket.session_epoch, 2);
        assert!(req.send.is_empty());
        assert_eq!(req.forget, vec![tp(999)]);
        // the broker lost the session (restart): refused, then one full request
        broker.sessions.clear();
        let (e, id3, _) = broker.apply(&req);
        assert_eq!(e, SESSION_NOT_FOUND);
        assert_eq!(s.on_response(req.ticket, e, id3), SessionOutcome::Restart);
        let req = s.build(all(7));
        assert_eq!((req.ticket.session_id, req.ticket.session_epoch, req.send.len()), (0, 0, 1000));
    }

    #[test]
    fn a_broker_without_sessions_gets_full_fetches() {
        let mut s = FetchSession::new(true);
        for _ in 0..3 {
            let req = s.build(vec![(
                TopicPartition::new("t", 0),
                PartitionFetch { fetch_offset: 5, partition_max_bytes: 1, current_leader_epoch: -1 },
            )]);
            assert_eq!((req.ticket.session_id, req.ticket.session_epoch, req.send.len()), (0, 0, 1));
            assert_eq!(s.on_response(req.ticket, 0, 0), SessionOutcome::Use);
        }
        let mut off = FetchSession::new(false);
        let req = off.build(vec![]);
        assert_eq!((req.ticket.session_id, req.ticket.session_epoch), (0, -1));
        assert_eq!(off.on_response(req.ticket, 0, 42), SessionOutcome::Use);
        assert_eq!(off.build(vec![]).ticket.session_epoch, -1, "disabled stays sessionless");
    }

    #[test]
    fn epochs_wrap_to_one_and_foreign_sessions_restart() {
        let mut s = FetchSession::new(true);
        let req = s.build(vec![]);
        assert_eq!(s.on_response(req.ticket, 0, 9), SessionOutcome::Use);
        s.next_epoch = i32::MAX;
        let req = s.build(vec![]);
        assert_eq!(req.ticket.session_epoch, i32::MAX);
        assert_eq!(s.on_response(req.ticket, 0, 9), SessionOutcome::Use);
        let req = s.build(vec![]);
        assert_eq!(req.ticket.session_epoch, 1);
        assert_eq!(s.on_response(req.ticket, 0, 10), SessionOutcome::Restart, "answer for another session");
        let req = s.build(vec![]);
        assert_eq!(
            (req.ticket.session_id, req.ticket.session_epoch),
            (9, 0),
            "closes the old session, asks for a new one"
        );
    }
}
