#!/usr/bin/env bash
# One command for the benchmark harness (see tools/bench/README.md):
#   bash tools/bench/run.sh                       # all modes, defaults (~12 min on 2 cores)
#   QUICK=1 bash tools/bench/run.sh               # 1 rep, 4 s per point, 1 KB only (~3 min)
#   MODES=isolation,latency bash tools/bench/run.sh -- --secs 5   # extra args go to `bench run`
# Results: $OUT/results.json, $OUT/*.png, a table on stdout; logs in $OUT/logs/.
# Needs root for the WAN mode (ip netns, tc netem); without it WAN is reported as skipped.
set -euo pipefail
cd "$(dirname "$0")/../.."

OUT=${OUT:-target/bench}
MODES=${MODES:-isolation,latency,wan,real}
[ "${1:-}" = "--" ] && shift

# Bench-only tools: perf/valgrind are optional (profiling); iproute2 gives ip + tc.
if ! command -v tc >/dev/null 2>&1 || ! command -v ip >/dev/null 2>&1; then
    echo "[bench] installing iproute2 (ip, tc) for the WAN mode" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends iproute2 >&2 || true
fi
if ! ls /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf >/dev/null 2>&1; then
    echo "[bench] installing fonts-dejavu-core for the PNG plots" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends fonts-dejavu-core >&2 || true
fi

TANSU_ARGS=()
case "$MODES" in
    *real*)
        TANSU=$(bash tools/install-deps.sh --no-sqlite | tail -n 1)
        TANSU_ARGS=(--tansu "$TANSU")
        ;;
esac

echo "[bench] building mirrorproxy and the harness (release)" >&2
cargo build --release --quiet --bin mirrorproxy --example bench

# Remove a namespace left by an interrupted run (the harness also cleans up on exit).
cleanup() {
    ip link del mpb0 2>/dev/null || true
    ip netns del mpbench 2>/dev/null || true
}
trap cleanup EXIT INT TERM
cleanup

EXTRA=()
if [ -n "${QUICK:-}" ]; then
    EXTRA=(--reps 1 --secs 4 --warmup 1 --sizes 1000 --real-records 30000)
fi
target/release/examples/bench run --modes "$MODES" --out "$OUT" "${TANSU_ARGS[@]}" "${EXTRA[@]}" "$@"
