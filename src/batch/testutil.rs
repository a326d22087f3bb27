//! Test-only batch builder. It encodes records with its own tiny varint
//! writer (not the one under test) so that the walker and the rewrite are
//! checked against an independent encoding; the proptests additionally
//! cross-check with `kafka_protocol`'s decoder.

use super::{compress, compress_snappy, Compression, SnappyFraming};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TestRecord {
    pub offset_delta: i32,
    pub timestamp_delta: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl TestRecord {
    pub fn new(offset_delta: i32, key: Option<&[u8]>, value: Option<&[u8]>) -> Self {
        Self {
            offset_delta,
            timestamp_delta: i64::from(offset_delta) * 10,
            key: key.map(<[u8]>::to_vec),
            value: value.map(<[u8]>::to_vec),
            headers: Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
#[allow(clippy::struct_excessive_bools)]
pub(crate) struct TestBatch {
    pub base_offset: i64,
    pub partition_leader_epoch: i32,
    pub compression: Compression,
    pub snappy_framing: SnappyFraming,
    pub log_append_time: bool,
    pub transactional: bool,
    pub control: bool,
    pub delete_horizon: bool,
    /// Defaults to the largest record offset delta.
    pub last_offset_delta: Option<i32>,
    pub base_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records: Vec<TestRecord>,
}

impl Default for TestBatch {
    fn default() -> Self {
        Self {
            base_offset: 1000,
            partition_leader_epoch: 7,
            compression: Compression::None,
            snappy_framing: SnappyFraming::Xerial,
            log_append_time: false,
            transactional: false,
            control: false,
            delete_horizon: false,
            last_offset_delta: None,
            base_timestamp: 1_700_000_000_000,
            producer_id: 4242,
            producer_epoch: 3,
            base_sequence: 17,
            records: Vec::new(),
        }
    }
}

fn varlong(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    loop {
        if z < 0x80 {
            out.push(z as u8);
            return;
        }
        out.push((z as u8 & 0x7f) | 0x80);
        z >>= 7;
    }
}

fn bytes_field(out: &mut Vec<u8>, b: Option<&Vec<u8>>) {
    match b {
        None => varlong(out, -1),
        Some(b) => {
            varlong(out, b.len() as i64);
            out.extend_from_slice(b);
        }
    }
}

pub(crate) fn encode_record(r: &TestRecord) -> Vec<u8> {
    let mut body = vec![0u8];
    varlong(&mut body, r.timestamp_delta);
    varlong(&mut body, i64::from(r.offset_delta));
    bytes_field(&mut body, r.key.as_ref());
    bytes_field(&mut body, r.value.as_ref());
    varlong(&mut body, r.headers.len() as i64);
    for (k, v) in &r.headers {
        bytes_field(&mut body, Some(k));
        bytes_field(&mut body, v.as_ref());
    }
    let mut out = Vec::new();
    varlong(&mut out, body.len() as i64);
    out.extend_from_slice(&body);
    out
}

impl TestBatch {
    pub fn with_records(records: Vec<TestRecord>) -> Self {
        Self { records, ..Self::default() }
    }

    pub fn plain_records(&self) -> Vec<u8> {
        self.records.iter().flat_map(encode_record).collect()
    }

    pub fn attributes(&self) -> i16 {
        let mut a = self.compression.id();
        if self.log_append_time {
            a |= 1 << 3;
        }
        if self.transactional {
            a |= 1 << 4;
        }
        if self.control {
            a |= 1 << 5;
        }
        if self.delete_horizon {
            a |= 1 << 6;
        }
        a
    }

    pub fn build(&self) -> Vec<u8> {
        let plain = self.plain_records();
        let body = match (self.compression, self.snappy_framing) {
            (Compression::Snappy, framing) => compress_snappy(&plain, framing).unwrap(),
            (c, _) => compress(c, &plain).unwrap(),
        };
        let last_delta =
            self.last_offset_delta.unwrap_or_else(|| self.records.iter().map(|r| r.offset_delta).max().unwrap_or(0));
        let max_ts =
            self.records.iter().map(|r| self.base_timestamp + r.timestamp_delta).max().unwrap_or(self.base_timestamp);
        let mut out = Vec::with_capacity(61 + body.len());
        out.extend_from_slice(&self.base_offset.to_be_bytes());
        out.extend_from_slice(&((49 + body.len()) as i32).to_be_bytes());
        out.extend_from_slice(&self.partition_leader_epoch.to_be_bytes());
        out.push(2);
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&self.attributes().to_be_bytes());
        out.extend_from_slice(&last_delta.to_be_bytes());
        out.extend_from_slice(&self.base_timestamp.to_be_bytes());
        out.extend_from_slice(&max_ts.to_be_bytes());
        out.extend_from_slice(&self.producer_id.to_be_bytes());
        out.extend_from_slice(&self.producer_epoch.to_be_bytes());
        out.extend_from_slice(&self.base_sequence.to_be_bytes());
        out.extend_from_slice(&(self.records.len() as i32).to_be_bytes());
        out.extend_from_slice(&body);
        let crc = crc32c::crc32c(&out[21..]);
        out[17..21].copy_from_slice(&crc.to_be_bytes());
        out
    }
}

/// A control batch (KIP-98 transaction marker) with the given type id.
pub(crate) fn control_batch(kind: i16) -> TestBatch {
    let mut key = 0i16.to_be_bytes().to_vec();
    key.extend_from_slice(&kind.to_be_bytes());
    // Value: version i16 + coordinator epoch i32 (EndTransactionMarker).
    let value = [0u8, 0, 0, 0, 0, 5];
    TestBatch {
        control: true,
        transactional: true,
        records: vec![TestRecord::new(0, Some(&key), Some(&value))],
        ..TestBatch::default()
    }
}

/// Records decoded with our walker, every header kept.
pub fn decode_records(v: &super::VerifiedBatch) -> Vec<TestRecord> {
    let (data, spans) = v.record_spans().expect("walk");
    spans
        .iter()
        .map(|s| {
            let mut pos = s.headers.start;
            let _ = super::records::read_varint(&data, &mut pos);
            let mut headers = Vec::new();
            for _ in 0..s.headers_count {
                let kl = super::records::read_varint(&data, &mut pos).unwrap() as usize;
                let k = data[pos..pos + kl].to_vec();
                pos += kl;
                let vl = super::records::read_varint(&data, &mut pos).unwrap();
                let val = (vl >= 0).then(|| data[pos..pos + vl as usize].to_vec());
                pos += usize::try_from(vl).unwrap_or(0);
                headers.push((k, val));
            }
            TestRecord {
                offset_delta: s.offset_delta,
                timestamp_delta: s.timestamp_delta,
                key: s.key.clone().map(|r| data[r].to_vec()),
                value: s.value.clone().map(|r| data[r].to_vec()),
                headers,
            }
        })
        .collect()
}
