//! The benchmark harness: librdkafka mirror.
#![allow(clippy::pedantic, clippy::too_many_arguments, clippy::type_complexity, unused_imports)]

use super::*;

pub(crate) fn rdmirror(args: &[String]) {
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::Message;
    use rdkafka::producer::{BaseProducer, BaseRecord};
    use rdkafka::{Offset, TopicPartitionList};
    let source = arg(args, "--source").expect("--source");
    let target = arg(args, "--target").expect("--target");
    let topic = text(args, "--topic", "bench.t");
    let partitions = num(args, "--partitions", 4.0) as i32;
    let codec = text(args, "--codec", "none");
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &source)
        .set("group.id", "bench-rdmirror")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("fetch.wait.max.ms", "100")
        .set("log_level", "3")
        .create()
        .expect("consumer");
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &target)
        .set("compression.type", &codec)
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("queue.buffering.max.kbytes", "262144")
        .set("log_level", "3")
        .create()
        .expect("producer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(&topic, p, Offset::Beginning).unwrap();
    }
    consumer.assign(&tpl).expect("assign");
    loop {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let mut rec = BaseRecord::<[u8], [u8]>::to(&topic).partition(m.partition());
                if let Some(k) = m.key() {
                    rec = rec.key(k);
                }
                if let Some(v) = m.payload() {
                    rec = rec.payload(v);
                }
                if let Some(ts) = m.timestamp().to_millis() {
                    rec = rec.timestamp(ts);
                }
                if let Some(h) = m.headers() {
                    rec = rec.headers(h.detach());
                }
                loop {
                    match producer.send(rec) {
                        Ok(()) => break,
                        Err((_, r)) => {
                            rec = r;
                            producer.poll(Duration::from_millis(1));
                        }
                    }
                }
                producer.poll(Duration::ZERO);
            }
            Some(Err(e)) => eprintln!("rdmirror: {e}"),
            None => {
                producer.poll(Duration::ZERO);
            }
        }
    }
}
