#!/usr/bin/env bash
# Local demo: two tansu brokers on loopback, mirrorproxy between them, a load generator
# writing to the source, progress from the proxy once a second, and a final count of
# the target by an independent client (librdkafka). Everything it starts, it stops.
#
#   bash tools/demo.sh            # 200k records at 20k records/s
#   RECORDS=1000000 RATE=0 bash tools/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

RECORDS=${RECORDS:-200000}
RATE=${RATE:-20000}
CODEC=${CODEC:-lz4}

TANSU=$(bash tools/install-deps.sh --no-sqlite | tail -n 1)
echo "[demo] building (release)"
cargo build --release --quiet --bin mirrorproxy --example loadgen
BIN=target/release/mirrorproxy
LOADGEN=target/release/examples/loadgen

work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
EDGE=$(free_port); CLOUD=$(free_port)
for port in "$EDGE" "$CLOUD"; do
    "$TANSU" broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
        --storage-engine memory://tansu/ >"$work/tansu-$port.log" 2>&1 &
    pids+=($!)
done
for port in "$EDGE" "$CLOUD"; do
    for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
done
echo "[demo] source cluster 'edge' on 127.0.0.1:$EDGE, target cluster 'cloud' on 127.0.0.1:$CLOUD"

cat >"$work/mirror.toml" <<TOML
[clusters.edge]
bootstrap = "127.0.0.1:$EDGE"

[clusters.cloud]
bootstrap = "127.0.0.1:$CLOUD"

[[flows]]
source = "edge"
target = "cloud"
topics = "orders\\\\..*"
start = "earliest"

[tuning]
summary_interval_ms = 1000
metadata_refresh_ms = 1000
fetch_max_wait_ms = 100   # tansu 0.6.0 holds every Fetch for part of its wait (README, Benchmarks)
TOML

"$BIN" check --config "$work/mirror.toml"
RUST_LOG=info "$BIN" run --config "$work/mirror.toml" &
proxy=$!
pids+=($proxy)

echo "[demo] producing $RECORDS records ($CODEC) to edge/orders.demo"
"$LOADGEN" produce --bootstrap "127.0.0.1:$EDGE" --topic orders.demo --records "$RECORDS" --rate "$RATE" --codec "$CODEC"
echo "[demo] counting what arrived on cloud/orders.demo"
"$LOADGEN" count --bootstrap "127.0.0.1:$CLOUD" --topic orders.demo --expect "$RECORDS" --timeout-secs 120
kill -INT "$proxy"
wait "$proxy"
echo "[demo] done: every record arrived once; mirrorproxy stopped cleanly"
