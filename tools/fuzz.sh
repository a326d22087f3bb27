#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for a short while (README "Fuzzing"):
#   bash tools/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#   bash tools/fuzz.sh --runs N [TARGET...]      # N executions each (the 10 million runs)
# Default 10 s each, all targets. Reads fuzz/corpus/<target>/ and leaves it as it is
# (new inputs go to a scratch directory); exits non-zero on the first crash, leak of
# memory past the limits, or timeout, with the input in fuzz/artifacts/<target>/.
#
# Stable toolchain: `-s none` builds without a sanitizer, so cargo-fuzz passes rustc
# only stable flags (the sanitizers need the nightly-only -Zsanitizer). Memory is
# capped by the fuzz crate's own allocator (fuzz/src/lib.rs) plus -rss_limit_mb.
# `-a` keeps debug assertions and overflow checks on, so arithmetic overflow panics.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

LIMIT=(-max_total_time="${1:-10}")
WHAT="${1:-10}s"
if [ "${1:-}" = "--runs" ]; then
    LIMIT=(-runs="$2")
    WHAT="$2 runs"
    shift 2
else
    shift || true
fi
FLAGS=(-s none -a)

cargo fuzz build "${FLAGS[@]}"
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for t in "${targets[@]}"; do
    mkdir -p "$scratch/$t" "corpus/$t"
    echo "[fuzz] $t: $WHAT"
    cargo fuzz run "${FLAGS[@]}" "$t" "$scratch/$t" "corpus/$t" -- \
        "${LIMIT[@]}" -rss_limit_mb=512 -malloc_limit_mb=512 -timeout=10 \
        -print_final_stats=1 2>"$scratch/$t.log" || {
        tail -n 60 "$scratch/$t.log" >&2
        echo "[fuzz] $t FAILED: crashing input in fuzz/artifacts/$t/" >&2
        exit 1
    }
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec)|^#[0-9]+.*DONE' "$scratch/$t.log" || true
done
echo "[fuzz] all ${#targets[@]} targets ran $WHAT each without a crash"
