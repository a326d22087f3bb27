//! Captures record batches written by librdkafka into `protocol-tests/fixtures/`, so the
//! batch view and rewriter are tested on bytes a real client produced, not only on
//! batches our own tests build.
//!
//! ```text
//! cargo run --example capture_fixtures      # needs tansu (bash tools/install-deps.sh)
//! ```
//! It starts a tansu broker on a free port, produces with librdkafka (every codec, an
//! idempotent producer, a transactional producer with one committed and one aborted
//! transaction, null keys/values and duplicate headers), fetches each partition's raw
//! record set with a plain Fetch, and writes one file per case: the records field of the
//! Fetch response, byte for byte.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

fn producer(bootstrap: &str, extra: &[(&str, &str)]) -> ThreadedProducer<DefaultProducerContext> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap).set("linger.ms", "50");
    for (k, v) in extra {
        c.set(*k, *v);
    }
    c.create().expect("producer")
}

fn send(p: &ThreadedProducer<DefaultProducerContext>, topic: &str, n: usize) {
    for i in 0..n {
        let key = format!("key-{i}");
        let value = format!("value-{i}-{}", "x".repeat(i * 7 % 40));
        let headers = OwnedHeaders::new()
            .insert(Header { key: "dup", value: Some("a") })
            .insert(Header { key: "dup", value: None::<&str> })
            .insert(Header { key: "n", value: Some(&i.to_string()) });
        let mut r = BaseRecord::to(topic).partition(0).headers(headers).timestamp(1_700_000_000_000 + i as i64);
        let k;
        let v;
        if i % 5 != 0 {
            k = key;
            r = r.key(&k);
        }
        if i % 7 != 0 {
            v = value;
            r = r.payload(&v);
        }
        p.send(r).map_err(|(e, _)| e).expect("send");
    }
    p.flush(Duration::from_secs(30)).expect("flush");
}

fn main() {
    let tansu = std::env::var("TANSU_BIN").unwrap_or_else(|_| "tansu".into());
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("tcp://127.0.0.1:{port}");
    let mut broker = Command::new(&tansu)
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
            "--storage-engine",
            "memory://tansu/",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start tansu (bash tools/install-deps.sh)");
    std::thread::sleep(Duration::from_secs(2));
    let bootstrap = format!("127.0.0.1:{port}");
    let mut cases = Vec::new();
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let topic = format!("fx-{codec}");
        send(&producer(&bootstrap, &[("compression.type", codec)]), &topic, 20);
        cases.push((format!("librdkafka-{codec}"), topic));
    }
    send(&producer(&bootstrap, &[("enable.idempotence", "true"), ("compression.type", "lz4")]), "fx-idempotent", 20);
    cases.push(("librdkafka-idempotent-lz4".into(), "fx-idempotent".into()));
    let tx = producer(&bootstrap, &[("transactional.id", "fx-tx"), ("compression.type", "zstd")]);
    tx.init_transactions(Duration::from_secs(30)).expect("init transactions");
    tx.begin_transaction().unwrap();
    send(&tx, "fx-txn", 5);
    tx.commit_transaction(Duration::from_secs(30)).unwrap();
    tx.begin_transaction().unwrap();
    send(&tx, "fx-txn", 5);
    tx.abort_transaction(Duration::from_secs(30)).unwrap();
    cases.push(("librdkafka-transactions-commit-abort-zstd".into(), "fx-txn".into()));

    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("protocol-tests/fixtures");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let conn = mirrorproxy::net::Connection::connect(
            &bootstrap,
            "capture",
            Duration::from_secs(5),
            Duration::from_secs(10),
        )
        .await
        .expect("connect");
        use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
        use kafka_protocol::messages::{BrokerId, FetchRequest, TopicName};
        use kafka_protocol::protocol::StrBytes;
        for (name, topic) in cases {
            let req = FetchRequest::default()
                .with_replica_id(BrokerId(-1))
                .with_max_wait_ms(100)
                .with_min_bytes(1)
                .with_max_bytes(1 << 20)
                .with_session_epoch(-1)
                .with_topics(vec![FetchTopic::default()
                    .with_topic(TopicName(StrBytes::from_string(topic)))
                    .with_partitions(vec![FetchPartition::default()
                        .with_partition(0)
                        .with_fetch_offset(0)
                        .with_partition_max_bytes(1 << 20)])]);
            let resp = conn.call(&req).await.expect("fetch");
            let records = resp.responses[0].partitions[0].records.clone().expect("records");
            std::fs::write(dir.join(format!("{name}.bin")), &records).unwrap();
            println!("{name}: {} bytes", records.len());
        }
    });
    let _ = broker.kill();
    let _ = broker.wait();
}
