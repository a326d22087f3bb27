//! The benchmark harness: WAN link emulator.
#![allow(clippy::pedantic, clippy::too_many_arguments, clippy::type_complexity, unused_imports)]

use super::*;

pub(crate) fn link_main(args: &[String]) {
    let listen = text(args, "--listen", "127.0.0.1:0");
    let upstream = arg(args, "--upstream").expect("--upstream H:P");
    let bytes_per_s = parse_rate(&text(args, "--rate", "200mbit"));
    let one_way = Duration::from_secs_f64(num(args, "--rtt-ms", 50.0) / 2000.0);
    let queue_limit = (bytes_per_s * one_way.as_secs_f64() * 2.0) as usize + (1 << 20);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async move {
        let listener = TcpListener::bind(&listen).await.unwrap_or_else(|e| panic!("bind {listen}: {e}"));
        println!("link {listen} -> {upstream}: {bytes_per_s} B/s, {one_way:?} each way, queue {queue_limit} B");
        loop {
            let Ok((down, _)) = listener.accept().await else { return };
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(up) = TcpStream::connect(&upstream).await else { return };
                let _ = (down.set_nodelay(true), up.set_nodelay(true));
                let (dr, dw) = down.into_split();
                let (ur, uw) = up.into_split();
                tokio::spawn(link_direction(dr, uw, one_way, bytes_per_s, queue_limit));
                link_direction(ur, dw, one_way, bytes_per_s, queue_limit).await;
            });
        }
    });
}

/// One direction of the emulated link: what is read at t leaves the queue when the
/// link has serialised it (rate) and arrives `one_way` later.
pub(crate) async fn link_direction(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    one_way: Duration,
    bytes_per_s: f64,
    queue_limit: usize,
) {
    const CHUNK: usize = 16 << 10;
    let queued = Arc::new(tokio::sync::Semaphore::new(queue_limit));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Bytes, u32)>();
    let q = queued.clone();
    let reader = tokio::spawn(async move {
        let mut serialised_until = tokio::time::Instant::now();
        loop {
            let mut buf = BytesMut::with_capacity(CHUNK);
            match r.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let permit = q.clone().acquire_many_owned(n as u32).await.unwrap();
                    permit.forget();
                    let now = tokio::time::Instant::now();
                    serialised_until = serialised_until.max(now) + Duration::from_secs_f64(n as f64 / bytes_per_s);
                    if tx.send((serialised_until + one_way, buf.freeze(), n as u32)).is_err() {
                        return;
                    }
                }
            }
        }
    });
    while let Some((at, chunk, n)) = rx.recv().await {
        tokio::time::sleep_until(at).await;
        if w.write_all(&chunk).await.is_err() {
            break;
        }
        queued.add_permits(n as usize);
    }
    reader.abort();
}
