//! Produce requests as a list of buffers, so that forwarded record batches reach the
//! socket without being copied into a request buffer.
//!
//! `kafka-protocol`'s encoder writes every field into one `BytesMut`, record batches
//! included: for a mirror that is one full copy of all data it moves (it was about a
//! sixth of the proxy's CPU in the isolation benchmark, `tools/bench/README.md`). This
//! encoder writes the small fields (request header, topic and partition fields, each
//! batch's 61 patched header bytes) into one "glue" buffer and leaves each batch's
//! records section where it is, a view of the fetched bytes; the connection writes the
//! parts with one vectored write (`writev`). Small records sections are copied into
//! the glue anyway, because an I/O vector entry costs more than copying a few hundred
//! bytes.
//!
//! Layout (Produce v3–v12; v9+ are "flexible", KIP-482: compact strings, arrays and
//! bytes with unsigned-varint lengths plus one, and tagged-field sections; their request
//! header is v2, whose client id is still a classic nullable string):
//!
//! ```text
//! ProduceRequest => transactional_id acks timeout_ms [topic_data]
//!   topic_data => name [partition_data]
//!     partition_data => index records
//! ```
//!
//! v0–v2 carry the old message-set format and are refused: a broker that old (before
//! Kafka 0.11) cannot take record batch v2 at all. v13 names topics by id (KIP-516) and
//! is not implemented ([`crate::net::our_max_version`] stops at 12). The encoding is
//! checked byte for byte against `kafka-protocol`'s for every supported version by the
//! property test below.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::ApiKey;

use super::{WireError, LENGTH_PREFIX};

/// Records sections smaller than this are copied into the glue buffer.
const INLINE_BELOW: usize = 2048;

/// The request-level fields of a Produce request.
#[derive(Debug, Clone, Copy)]
pub struct ProduceFields<'a> {
    pub transactional_id: Option<&'a str>,
    pub acks: i16,
    pub timeout_ms: i32,
}

/// One partition's records: `head` is copied (a batch's patched header), `body`
/// (the rest of the batch) is referenced.
#[derive(Debug, Clone)]
pub struct PartitionRecords<'a> {
    pub partition: i32,
    pub head: &'a [u8],
    pub body: Bytes,
}

/// One topic's partitions.
#[derive(Debug, Clone)]
pub struct TopicRecords<'a> {
    pub name: &'a str,
    pub partitions: Vec<PartitionRecords<'a>>,
}

/// A frame as buffers to be written in order (length prefix included in the first).
pub type FrameParts = Vec<Bytes>;

enum Part {
    Glue(usize, usize),
    Body(Bytes),
}

/// Lowest and highest Produce versions [`encode_produce`] can write.
pub const PRODUCE_VERSIONS: std::ops::RangeInclusive<i16> = 3..=12;

/// Encodes a Produce request frame at `version` as buffers to be written in order.
pub fn encode_produce(
    version: i16,
    correlation_id: i32,
    client_id: &str,
    fields: &ProduceFields<'_>,
    topics: &[TopicRecords<'_>],
) -> Result<FrameParts, WireError> {
    let err = |reason: String| WireError::Encode { api: ApiKey::Produce, version, reason };
    if !PRODUCE_VERSIONS.contains(&version) {
        return Err(err(format!(
            "this client writes Produce v{}..=v{} only (below v3 no record batch v2: a broker older than Kafka 0.11)",
            PRODUCE_VERSIONS.start(),
            PRODUCE_VERSIONS.end()
        )));
    }
    let flexible = version >= 9;
    let mut glue = BytesMut::with_capacity(256);
    let mut parts: Vec<Part> = Vec::with_capacity(2 * topics.iter().map(|t| t.partitions.len()).sum::<usize>() + 1);
    let mut glue_start = 0;

    // Request header v1 (v2 when flexible): api key, version, correlation id, client id.
    glue.put_i32(0); // length, patched below
    glue.put_i16(ApiKey::Produce as i16);
    glue.put_i16(version);
    glue.put_i32(correlation_id);
    put_classic_string(&mut glue, client_id).map_err(err)?;
    if flexible {
        glue.put_u8(0); // no tagged fields
    }
    match fields.transactional_id {
        None if flexible => put_uvarint(&mut glue, 0),
        None => glue.put_i16(-1),
        Some(id) => put_string(&mut glue, id, flexible).map_err(err)?,
    }
    glue.put_i16(fields.acks);
    glue.put_i32(fields.timeout_ms);
    put_array_len(&mut glue, topics.len(), flexible).map_err(err)?;
    let mut body_len = 0usize;
    for topic in topics {
        put_string(&mut glue, topic.name, flexible).map_err(err)?;
        put_array_len(&mut glue, topic.partitions.len(), flexible).map_err(err)?;
        for p in &topic.partitions {
            glue.put_i32(p.partition);
            let len = p.head.len() + p.body.len();
            if flexible {
                let len = u32::try_from(len + 1).map_err(|_| err(format!("records of {len} bytes")))?;
                put_uvarint(&mut glue, len);
            } else {
                glue.put_i32(i32::try_from(len).map_err(|_| err(format!("records of {len} bytes")))?);
            }
            glue.extend_from_slice(p.head);
            if p.body.len() < INLINE_BELOW {
                glue.extend_from_slice(&p.body);
            } else {
                parts.push(Part::Glue(glue_start, glue.len()));
                glue_start = glue.len();
                body_len += p.body.len();
                parts.push(Part::Body(p.body.clone()));
            }
            if flexible {
                glue.put_u8(0);
            }
        }
        if flexible {
            glue.put_u8(0);
        }
    }
    if flexible {
        glue.put_u8(0);
    }
    parts.push(Part::Glue(glue_start, glue.len()));
    let size = glue.len() + body_len - LENGTH_PREFIX;
    let size = i32::try_from(size).map_err(|_| err(format!("request of {size} bytes")))?;
    glue[..LENGTH_PREFIX].copy_from_slice(&size.to_be_bytes());
    let glue = glue.freeze();
    Ok(parts
        .into_iter()
        .filter_map(|p| match p {
            Part::Glue(a, b) => (b > a).then(|| glue.slice(a..b)),
            Part::Body(b) => Some(b),
        })
        .collect())
}

fn put_uvarint(buf: &mut BytesMut, mut v: u32) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

fn put_classic_string(buf: &mut BytesMut, s: &str) -> Result<(), String> {
    let len = i16::try_from(s.len()).map_err(|_| format!("string of {} bytes", s.len()))?;
    buf.put_i16(len);
    buf.extend_from_slice(s.as_bytes());
    Ok(())
}

fn put_string(buf: &mut BytesMut, s: &str, flexible: bool) -> Result<(), String> {
    if flexible {
        let len = u32::try_from(s.len() + 1).map_err(|_| format!("string of {} bytes", s.len()))?;
        put_uvarint(buf, len);
        buf.extend_from_slice(s.as_bytes());
        Ok(())
    } else {
        put_classic_string(buf, s)
    }
}

fn put_array_len(buf: &mut BytesMut, n: usize, flexible: bool) -> Result<(), String> {
    if flexible {
        put_uvarint(buf, u32::try_from(n + 1).map_err(|_| format!("array of {n} items"))?);
    } else {
        buf.put_i32(i32::try_from(n).map_err(|_| format!("array of {n} items"))?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ProduceRequest, TopicName};
    use kafka_protocol::protocol::StrBytes;
    use proptest::prelude::*;

    /// A topic name and its partitions: (index, head, body).
    type TestTopic = (String, Vec<(i32, Vec<u8>, Bytes)>);

    fn joined(parts: &FrameParts) -> Vec<u8> {
        parts.iter().flat_map(|b| b.iter().copied()).collect()
    }

    fn reference(version: i16, corr: i32, client: &str, f: &ProduceFields<'_>, topics: &[TopicRecords<'_>]) -> Bytes {
        let req = ProduceRequest::default()
            .with_transactional_id(f.transactional_id.map(|t| StrBytes::from_string(t.into()).into()))
            .with_acks(f.acks)
            .with_timeout_ms(f.timeout_ms)
            .with_topic_data(
                topics
                    .iter()
                    .map(|t| {
                        TopicProduceData::default()
                            .with_name(TopicName(StrBytes::from_string(t.name.into())))
                            .with_partition_data(
                                t.partitions
                                    .iter()
                                    .map(|p| {
                                        let mut r = p.head.to_vec();
                                        r.extend_from_slice(&p.body);
                                        PartitionProduceData::default()
                                            .with_index(p.partition)
                                            .with_records(Some(r.into()))
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            );
        super::super::encode_request(&req, version, corr, client).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// Byte for byte what kafka-protocol writes, at every version we write, with
        /// bodies both inlined and referenced, and names long enough for 2-byte varints.
        #[test]
        fn same_bytes_as_kafka_protocol(
            version in 3i16..=12,
            corr in any::<i32>(),
            client in "[a-z]{0,20}",
            txn in proptest::option::of("[a-z]{1,10}"),
            acks in prop_oneof![Just(-1i16), Just(0), Just(1)],
            timeout in 0i32..100_000,
            topics in proptest::collection::vec(
                ("[a-z.]{1,200}", proptest::collection::vec((0i32..1000, 0usize..61, 0usize..6000), 0..4)),
                0..4,
            ),
        ) {
            let data: Vec<TestTopic> = topics
                .into_iter()
                .map(|(n, ps)| {
                    let ps = ps
                        .into_iter()
                        .map(|(i, h, b)| (i, vec![h as u8; h], Bytes::from(vec![(b % 251) as u8; b])))
                        .collect();
                    (n, ps)
                })
                .collect();
            let topics: Vec<TopicRecords<'_>> = data
                .iter()
                .map(|(n, ps)| TopicRecords {
                    name: n,
                    partitions: ps
                        .iter()
                        .map(|(i, h, b)| PartitionRecords { partition: *i, head: h, body: b.clone() })
                        .collect(),
                })
                .collect();
            let fields = ProduceFields { transactional_id: txn.as_deref(), acks, timeout_ms: timeout };
            let ours = encode_produce(version, corr, &client, &fields, &topics).unwrap();
            let theirs = reference(version, corr, &client, &fields, &topics);
            prop_assert_eq!(joined(&ours), theirs.to_vec());
            prop_assert!(ours.iter().all(|p| !p.is_empty()));
        }
    }

    #[test]
    fn large_bodies_are_referenced_not_copied() {
        let body = Bytes::from(vec![7u8; 100_000]);
        let topics = [TopicRecords {
            name: "t",
            partitions: vec![PartitionRecords { partition: 0, head: &[1; 61], body: body.clone() }],
        }];
        let f = ProduceFields { transactional_id: None, acks: -1, timeout_ms: 1000 };
        let parts = encode_produce(9, 1, "c", &f, &topics).unwrap();
        assert_eq!(parts.len(), 3, "glue, body, glue");
        assert_eq!(parts[1].as_ptr(), body.as_ptr(), "the body is the fetched buffer itself");
    }

    #[test]
    fn versions_without_record_batch_v2_are_refused() {
        let f = ProduceFields { transactional_id: None, acks: -1, timeout_ms: 1000 };
        for v in [0, 1, 2, 13] {
            let e = encode_produce(v, 1, "c", &f, &[]).unwrap_err().to_string();
            assert!(e.contains(&format!("Produce v{v}")) && e.contains("v3..=v12"), "{e}");
        }
    }
}
