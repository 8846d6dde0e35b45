#!/usr/bin/env bash
# One command for the performance figures: the criterion micro-benchmarks of the
# hot path, then the side-by-side compare (floor vs trackedge vs nginx when
# installed), release builds, server pinned to core 0, client to core 1.
# Extra arguments go to `trackedge-loadtest compare` (e.g. --rounds 5 --plot p.png).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo bench --bench hot_path -- --warm-up-time 1 --measurement-time 3
cargo build --release -p trackedge -p trackedge-loadtest
target/release/trackedge-loadtest compare \
    --server-bin target/release/trackedge \
    --rounds 5 --duration 5 --max-seconds 5 --connections 32 --mix open=100 \
    --json target/compare.json "$@"
