#!/usr/bin/env bash
# Builds the cargo-fuzz targets and runs each for FUZZ_SECONDS (default 60).
#
#   fuzz/run.sh                     # every target
#   FUZZ_SECONDS=600 fuzz/run.sh ua_cache segment_decode
#
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz --locked`).
# Corpora grow in fuzz/corpus/<target> (only the committed seed-* files are tracked);
# a crash leaves its input in fuzz/artifacts/<target>/ and this script exits 1 after
# naming it. Each run's libFuzzer output is kept in fuzz/artifacts/<target>/run.log.
set -euo pipefail
cd "$(dirname "$0")"

seconds=${FUZZ_SECONDS:-60}
if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi

cargo +nightly fuzz build

failed=()
summary=()
for target in "${targets[@]}"; do
    mkdir -p "corpus/$target" "artifacts/$target"
    log="artifacts/$target/run.log"
    stamp=$(mktemp)
    echo "== $target: ${seconds}s"
    if cargo +nightly fuzz run "$target" "corpus/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
        # The last status line: "#N DONE cov: C ft: F corp: K/Sb ... exec/s: E ...".
        done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1 || true)
        summary+=("$target: ${done_line:-no DONE line, see $log}")
        echo "   ${done_line:-finished}"
    else
        failed+=("$target")
        echo "   FAILED; libFuzzer output in fuzz/$log"
        grep -E 'panicked at|ERROR: libFuzzer|SUMMARY' "$log" | head -n 5 | sed 's/^/   /' || true
        find "artifacts/$target" -type f -newer "$stamp" ! -name run.log \
            -printf '   artifact: fuzz/%p\n'
        echo "   reproduce: cargo +nightly fuzz run $target fuzz/artifacts/$target/<artifact>"
    fi
    rm -f "$stamp"
done

echo
echo "== summary (${seconds}s per target)"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "crashed: ${failed[*]}" >&2
    exit 1
fi
