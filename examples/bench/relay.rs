//! The benchmark harness: relay.
#![allow(clippy::pedantic, clippy::too_many_arguments, clippy::type_complexity, unused_imports)]

use super::*;

pub(crate) fn relay_main(args: &[String]) {
    let listen = text(args, "--listen", "127.0.0.1:0");
    let upstream = arg(args, "--upstream").expect("--upstream H:P");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let l = TcpListener::bind(&listen).await.unwrap();
        loop {
            let (mut a, _) = l.accept().await.unwrap();
            let up = upstream.clone();
            tokio::spawn(async move {
                let Ok(mut b) = TcpStream::connect(&up).await else { return };
                let _ = a.set_nodelay(true);
                let _ = b.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, 256 << 10, 256 << 10).await;
            });
        }
    });
}

/// Reads Fetch responses through `addr` as fast as they come (2 requests in flight),
/// discarding them; counts bytes into `counter` until `stop`.
pub(crate) async fn raw_fetch_reader(
    addr: String,
    topic: String,
    partitions: i32,
    counter: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) {
    let Ok(sock) = TcpStream::connect(&addr).await else { return };
    let _ = sock.set_nodelay(true);
    let (mut r, mut w) = sock.into_split();
    let req = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(500)
        .with_min_bytes(1)
        .with_max_bytes(32 << 20)
        .with_topics(vec![FetchTopic::default().with_topic(TopicName(StrBytes::from_string(topic))).with_partitions(
            (0..partitions)
                .map(|i| {
                    FetchPartition::default().with_partition(i).with_fetch_offset(0).with_partition_max_bytes(4 << 20)
                })
                .collect(),
        )]);
    let frame = wire::encode_request(&req, 11, 1, "raw-reader").unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(2);
    let stop2 = stop.clone();
    tokio::spawn(async move {
        while !stop2.load(Ordering::Relaxed) {
            if tx.send(()).await.is_err() || w.write_all(&frame).await.is_err() {
                return;
            }
        }
    });
    let mut buf = vec![0u8; 1 << 20];
    let mut pending: usize = 0; // bytes left of the current frame
    let mut header = Vec::with_capacity(4);
    while !stop.load(Ordering::Relaxed) {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        counter.fetch_add(n as u64, Ordering::Relaxed);
        let mut i = 0;
        while i < n {
            if pending == 0 {
                header.push(buf[i]);
                i += 1;
                if header.len() == 4 {
                    pending = i32::from_be_bytes(header[..4].try_into().unwrap()) as usize;
                    header.clear();
                }
            } else {
                let take = pending.min(n - i);
                pending -= take;
                i += take;
                if pending == 0 {
                    let _ = rx.recv().await; // one response done: allow the next request
                }
            }
        }
    }
}
