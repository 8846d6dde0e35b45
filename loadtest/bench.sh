#!/usr/bin/env bash
# One command for the performance figures: the criterion micro-benchmarks of the
# hot path, then the side-by-side compare (floor vs trackedge vs nginx when
# installed) on release builds, server pinned to core 0, client to core 1.
#   ROUNDS=5 SECONDS_PER_PHASE=10 CONNECTIONS=64 MODES=all GEOIP=GeoLite2-City.mmdb \
#       loadtest/bench.sh [--plot compare.png ...]
# Extra arguments go to `trackedge-loadtest compare` (options not set below).
# The JSON report lands in target/compare.json.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo bench --bench hot_path -- --warm-up-time 1 --measurement-time 3
cargo build --release -p trackedge -p trackedge-loadtest
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
geoip=()
if [ -n "${GEOIP:-}" ]; then geoip=(--geoip "$GEOIP"); fi
target/release/trackedge-loadtest compare \
    --server-bin target/release/trackedge \
    --modes "${MODES:-all}" \
    --rounds "${ROUNDS:-3}" \
    --duration "${SECONDS_PER_PHASE:-10}" \
    --max-seconds "${SECONDS_PER_PHASE:-10}" \
    --connections "${CONNECTIONS:-64}" \
    --quiet "${geoip[@]}" \
    --json target/compare.json "$@"
echo "machine after: load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2
