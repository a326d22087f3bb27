//! Load generator and counter for demos and tests, built on librdkafka (the `rdkafka`
//! crate), so data is produced and checked by a client independent of mirrorproxy.
//!
//! ```text
//! cargo run --release --example loadgen -- produce --bootstrap H:P --topic T [--records N] [--rate R]
//!     [--partitions P] [--size BYTES] [--codec none|gzip|snappy|lz4|zstd]
//! cargo run --release --example loadgen -- count --bootstrap H:P --topic T --expect N [--timeout-secs S]
//! ```
//! `produce` creates the topic when missing, writes keyed records ("k<i>") with the
//! sequence number in the value, and prints progress once a second. `count` reads every
//! partition from the beginning and exits 0 once it has seen `--expect` distinct keys,
//! 1 on timeout or when a key was seen twice.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}

fn num(args: &[String], name: &str, default: u64) -> u64 {
    arg(args, name).map_or(default, |v| v.parse().unwrap_or_else(|_| panic!("{name} takes a number, got '{v}'")))
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map_or("", String::as_str);
    let bootstrap = arg(&args, "--bootstrap").expect("--bootstrap H:P is required");
    let topic = arg(&args, "--topic").expect("--topic is required");
    match mode {
        "produce" => produce(&args, &bootstrap, &topic),
        "count" => std::process::exit(count(&args, &bootstrap, &topic)),
        _ => {
            eprintln!("usage: loadgen produce|count --bootstrap H:P --topic T ...");
            std::process::exit(2);
        }
    }
}

fn produce(args: &[String], bootstrap: &str, topic: &str) {
    let records = num(args, "--records", 100_000);
    let rate = num(args, "--rate", 0);
    let partitions = num(args, "--partitions", 3) as i32;
    let size = num(args, "--size", 100) as usize;
    let codec = arg(args, "--codec").unwrap_or_else(|| "lz4".into());
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", bootstrap).create().expect("admin client");
    let topic_spec = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let _ = futures::executor::block_on(admin.create_topics([&topic_spec], &AdminOptions::new()));
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("compression.type", &codec)
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("queue.buffering.max.kbytes", "262144")
        .create()
        .expect("producer");
    let start = Instant::now();
    let mut last_report = Instant::now();
    let padding = "x".repeat(size.saturating_sub(20));
    for i in 0..records {
        if rate > 0 {
            let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let key = format!("k{i}");
        let value = format!("{i}:{padding}");
        let mut rec = BaseRecord::to(topic).key(&key).payload(&value).partition((i % partitions as u64) as i32);
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    rec = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            println!("loadgen: produced {} of {records} to {topic}", i + 1);
            last_report = Instant::now();
        }
    }
    producer.flush(Duration::from_secs(60)).expect("flush");
    println!("loadgen: produced {records} records to {topic} in {:.1}s", start.elapsed().as_secs_f64());
}

fn count(args: &[String], bootstrap: &str, topic: &str) -> i32 {
    let expect = num(args, "--expect", 0) as usize;
    let timeout = Duration::from_secs(num(args, "--timeout-secs", 60));
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "loadgen-count")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .expect("consumer");
    let deadline = Instant::now() + timeout;
    let partitions = loop {
        if let Ok(md) = consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) {
            let n = md.topics().first().map_or(0, |t| t.partitions().len());
            if n > 0 {
                break n;
            }
        }
        if Instant::now() > deadline {
            eprintln!("loadgen: topic {topic} not found on {bootstrap}");
            return 1;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p as i32, Offset::Beginning).expect("partition");
    }
    consumer.assign(&tpl).expect("assign");
    let mut keys = HashSet::new();
    let mut duplicates = 0usize;
    while keys.len() < expect && Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned()).unwrap_or_default();
            if !keys.insert(key) {
                duplicates += 1;
            }
        }
    }
    println!(
        "loadgen: {} distinct records on {topic} at {bootstrap} (expected {expect}), {duplicates} duplicates",
        keys.len()
    );
    i32::from(keys.len() != expect || duplicates > 0)
}
