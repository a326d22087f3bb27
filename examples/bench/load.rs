//! The benchmark harness: load generator (real brokers).
#![allow(clippy::pedantic, clippy::too_many_arguments, clippy::type_complexity, unused_imports)]

use super::*;

pub(crate) struct ProduceSpec {
    pub(crate) bootstrap: String,
    pub(crate) topic: String,
    pub(crate) records: u64,
    pub(crate) rate: f64,
    pub(crate) size: usize,
    pub(crate) codec: String,
    pub(crate) partitions: i32,
    pub(crate) keys: String,
    pub(crate) key_space: u64,
    pub(crate) linger_ms: u32,
    /// librdkafka's batch.num.messages (0: its default): small batches, as producers
    /// with `linger.ms=0` make them.
    pub(crate) batch_records: u32,
}

impl ProduceSpec {
    pub(crate) fn from_args(args: &[String]) -> Self {
        Self {
            bootstrap: arg(args, "--bootstrap").expect("--bootstrap"),
            topic: text(args, "--topic", "bench.t"),
            records: num(args, "--records", 100_000.0) as u64,
            rate: num(args, "--rate", 0.0),
            size: num(args, "--size", 1000.0) as usize,
            codec: text(args, "--codec", "lz4"),
            partitions: num(args, "--partitions", 4.0) as i32,
            keys: text(args, "--keys", "seq"),
            key_space: num(args, "--key-space", 10_000.0) as u64,
            linger_ms: num(args, "--linger-ms", 20.0) as u32,
            batch_records: num(args, "--batch-num-messages", 0.0) as u32,
        }
    }
}

pub(crate) struct ProduceOut {
    pub(crate) records: u64,
    pub(crate) secs: f64,
}

/// Produces records with rdkafka: the value starts with the send time (8-byte BE µs)
/// followed by semi-compressible padding. Keys: `seq` ("k<i>", partition i % P),
/// `random` (uniform over `key_space`, partitioned by key hash), `none`.
pub(crate) fn produce(p: &ProduceSpec, stop: Option<&AtomicBool>) -> ProduceOut {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::config::ClientConfig;
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", &p.bootstrap).create().expect("admin");
    let spec = NewTopic::new(&p.topic, p.partitions, TopicReplication::Fixed(1));
    let _ = futures::executor::block_on(admin.create_topics([&spec], &AdminOptions::new()));
    let mut config = ClientConfig::new();
    if p.batch_records > 0 {
        config.set("batch.num.messages", p.batch_records.to_string());
    }
    let producer: ThreadedProducer<DefaultProducerContext> = config
        .set("bootstrap.servers", &p.bootstrap)
        .set("compression.type", &p.codec)
        .set("enable.idempotence", "true")
        .set("linger.ms", p.linger_ms.to_string())
        .set("queue.buffering.max.kbytes", "262144")
        .create()
        .expect("producer");
    let padding = value_bytes(p.size.saturating_sub(8), 7);
    let start = Instant::now();
    let mut rng: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut value = Vec::with_capacity(p.size.max(8));
    let mut sent = 0u64;
    for i in 0..p.records {
        if stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
            break;
        }
        if p.rate > 0.0 {
            let due = start + Duration::from_secs_f64(i as f64 / p.rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        value.clear();
        value.extend_from_slice(&now_us().to_be_bytes());
        value.extend_from_slice(&padding);
        let key = match p.keys.as_str() {
            "random" => {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                Some(format!("k{}", rng % p.key_space.max(1)))
            }
            "none" => None,
            _ => Some(format!("k{i}")),
        };
        let mut rec = BaseRecord::<str, [u8]>::to(&p.topic).payload(&value[..]);
        if let Some(k) = &key {
            rec = rec.key(k.as_str());
        }
        if p.keys != "random" {
            rec = rec.partition((i % p.partitions as u64) as i32);
        }
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    rec = r;
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        }
        sent += 1;
    }
    producer.flush(Duration::from_secs(120)).expect("flush");
    ProduceOut { records: sent, secs: start.elapsed().as_secs_f64() }
}

/// Consumes `topic` from the end and records (now − send time in the value) in µs.
pub(crate) fn latency_consumer(
    bootstrap: String,
    topic: String,
    partitions: i32,
    stop: Arc<AtomicBool>,
    ready: Arc<AtomicBool>,
    since_us: i64,
) -> Latencies {
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::{Offset, TopicPartitionList};
    let mut out = Latencies {
        hist: Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap(),
        rereads: 0,
        payload_dups: 0,
        older: 0,
    };
    let (mut offsets, mut stamps) = (std::collections::HashSet::new(), std::collections::HashSet::new());
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "bench-latency")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .set("log_level", "3")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(&topic, p, Offset::End).unwrap();
    }
    consumer.assign(&tpl).expect("assign");
    // let the consumer resolve its positions before data flows
    let _ = consumer.poll(Duration::from_millis(1000));
    ready.store(true, Ordering::Relaxed);
    while !stop.load(Ordering::Relaxed) {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) {
            if !offsets.insert((m.partition(), m.offset())) {
                out.rereads += 1; // the consumer was sent back over records it had
                continue;
            }
            if let Some(v) = m.payload() {
                if v.len() >= 8 {
                    let sent = i64::from_be_bytes(v[..8].try_into().unwrap());
                    if sent < since_us {
                        out.older += 1;
                        continue;
                    }
                    if !stamps.insert((m.partition(), sent)) {
                        out.payload_dups += 1; // the same record at a second offset
                    }
                    let _ = out.hist.record(((now_us() - sent).max(1) as u64).min(out.hist.high()));
                }
            }
        }
    }
    out
}

/// What a latency consumer saw: each offset's latency once (records written from
/// `since_us` on), how often it was handed an offset again or a record it had at
/// another offset (a duplicate in the log), and how many older records it skipped:
/// tansu reports a partition's end as its last batch's base + 1, so a consumer that
/// starts at the end of a log of large batches first reads most of the last one (up to
/// thousands of backlog records, whose latency said nothing about the mirror).
pub(crate) struct Latencies {
    pub hist: Histogram<u64>,
    pub rereads: u64,
    pub payload_dups: u64,
    pub older: u64,
}
