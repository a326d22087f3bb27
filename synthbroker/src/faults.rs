//! The wrong answers of a faulty source ([`crate::Fault`]), for the tests that a client
//! survives a broker gone bad: every one ends in an error the proxy names, never a panic
//! or an abort. They are shaped for Fetch v12 (flexible: compact arrays, tagged fields),
//! the version the proxy speaks to Kafka, so that the decoder the proxy really uses is
//! the one fed garbage.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::{FetchRequest, FetchResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::Compression;
use mirrorproxy::wire::{encode_response, WireError};

use crate::batches::encode_batch;
use crate::{Fault, SynthBroker};

impl SynthBroker {
    /// The answer to a Fetch under `fault`: a Fetch that does not read the data topic
    /// (the proxy's checkpoints) is answered with no data, as a healthy broker would.
    pub(crate) fn fault_answer(&self, fault: Fault, req: &FetchRequest, v: i16, corr: i32) -> Result<Bytes, WireError> {
        if !req.topics.iter().any(|t| t.topic.0.as_str() == self.topic) {
            return encode_response::<FetchRequest>(&FetchResponse::default(), v, corr);
        }
        let flexible = v >= 12;
        let mut body = BytesMut::new();
        body.put_i32(corr);
        match fault {
            Fault::RandomGarbage => body.extend_from_slice(&garbage(self.fetches().wrapping_sub(1))),
            Fault::HugeArrayLength => {
                if flexible {
                    body.put_u8(0); // no tagged fields in the v1 response header
                }
                body.put_i32(0); // throttle_time_ms
                body.put_i16(0); // error_code
                body.put_i32(0); // session_id
                if flexible {
                    body.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]); // responses: u32::MAX - 1 topics
                } else {
                    body.put_i32(i32::MAX); // responses: 2^31 - 1 topics
                }
                body.extend_from_slice(&[0u8; 16]);
            }
            Fault::FlippedBaseOffset => {
                let mut batch = BytesMut::from(&encode_batch(1, 1, Compression::None, 0)[..]);
                batch[0..8].copy_from_slice(&(1i64 << 32).to_be_bytes());
                let topic = TopicName(StrBytes::from_string(self.topic.clone()));
                let resp = FetchResponse::default().with_responses(vec![FetchableTopicResponse::default()
                    .with_topic(topic)
                    .with_partitions(vec![PartitionData::default()
                        .with_partition_index(0)
                        .with_high_watermark(1)
                        .with_last_stable_offset(1)
                        .with_log_start_offset(0)
                        .with_records(Some(batch.freeze()))])]);
                return encode_response::<FetchRequest>(&resp, v, corr);
            }
        }
        let mut frame = BytesMut::with_capacity(4 + body.len());
        frame.put_i32(i32::try_from(body.len()).unwrap_or(i32::MAX));
        frame.extend_from_slice(&body);
        Ok(frame.freeze())
    }
}

/// Deterministic pseudo-random bytes (xorshift64*), 24..=279 of them, different for
/// every `n`.
fn garbage(n: u64) -> Vec<u8> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ n.wrapping_mul(0xD1B5_4A32_D192_ED03);
    let mut next = || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let len = 24 + (next() % 256) as usize;
    (0..len).map(|_| (next() >> 56) as u8).collect()
}
