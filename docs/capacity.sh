#!/usr/bin/env bash
# The capacity figures of docs/fleet.md: bytes per event in the spool, on disk and on
# the wire, and the forwarder's drain rate into the file sink, from one loadtest run
# against a release build (cargo build --release -p trackedge -p trackedge-loadtest).
# With TANSU=/path/to/tansu and a build with `--features kafka`, a third phase fills
# the spool again and drains it into a local tansu broker (3 partitions).
# BATCH and BATCH_BYTES set forward.max_batch_events and max_batch_bytes (defaults
# 1000 and 1 MiB). Binds 127.0.0.1:18080, :19090 and :19092 while it runs.
set -euo pipefail
B=${B:-target/release}
W=$(mktemp -d)
$B/trackedge-loadtest geodb --out $W/geo.mmdb >/dev/null
conf() { cat <<EOC
node_id = "cap"
[client_ip]
trusted_proxies = ["127.0.0.1"]
[rate_limit]
enabled = false
[geoip]
city_db = "$W/geo.mmdb"
[forward]
sink = "$1"
max_batch_events = ${BATCH:-1000}
max_batch_bytes = ${BATCH_BYTES:-1048576}
EOC
}
conf none > $W/none.toml; conf file > $W/file.toml
start() { $B/trackedge serve --config $1 --data-dir $W/data --public-addr 127.0.0.1:18080 --admin-addr 127.0.0.1:19090 > $W/out.log 2>>$W/err.log & echo $!; }
pid=$(start $W/none.toml); sleep 1
$B/trackedge-loadtest run --target 127.0.0.1:18080 --keys $W/data/keys.txt --rate ${RATE:-10000} --duration ${SECS:-10} --mix open=70,click=25,download=5 --bad-share 0 2>&1 | tail -5
sleep 1
echo "spool after the run: $(curl -s 127.0.0.1:19090/admin/spool | tr -d ' \n')"
kill -TERM $pid; while kill -0 $pid 2>/dev/null; do sleep 0.05; done
du -sb $W/data/spool
: > $W/out.log
pid=$(start $W/file.toml)
until grep -q listening $W/out.log; do sleep 0.01; done
t0=$(date +%s.%N)
until curl -s 127.0.0.1:19090/admin/spool | grep -q '"events": 0,'; do sleep 0.05; done
t1=$(date +%s.%N)
kill -TERM $pid; while kill -0 $pid 2>/dev/null; do sleep 0.05; done
n=$(wc -l < $W/data/events.ndjson)
echo "drained $n events to the file sink in $(echo "$t1 - $t0" | bc) s (from listening to an empty spool)"
echo "JSON bytes: $(wc -c < $W/data/events.ndjson)  gzip -1: $(gzip -1 -c $W/data/events.ndjson | wc -c)"
if [ -n "${TANSU:-}" ]; then
    $TANSU broker --listener-url tcp://127.0.0.1:19092 --advertised-listener-url tcp://127.0.0.1:19092 \
        --storage-engine memory://tansu/ > $W/tansu.log 2>&1 &
    broker=$!
    sleep 1
    $TANSU topic create --broker tcp://127.0.0.1:19092 --partitions 3 trackedge-events
    pid=$(start $W/none.toml); until grep -q listening $W/out.log; do sleep 0.01; done
    $B/trackedge-loadtest run --target 127.0.0.1:18080 --keys $W/data/keys.txt --rate ${RATE:-10000} --duration ${SECS:-10} --mix open=70,click=25,download=5 --bad-share 0 >/dev/null 2>&1
    sleep 1
    kill -TERM $pid; while kill -0 $pid 2>/dev/null; do sleep 0.05; done
    conf kafka > $W/kafka.toml
    printf '[forward.kafka]\nbrokers = "127.0.0.1:19092"\n' >> $W/kafka.toml
    : > $W/out.log
    pid=$(start $W/kafka.toml)
    until grep -q listening $W/out.log; do sleep 0.01; done
    t0=$(date +%s.%N)
    until curl -s 127.0.0.1:19090/admin/spool | grep -q '"events": 0,'; do sleep 0.05; done
    t1=$(date +%s.%N)
    echo "drained into kafka: $(curl -s 127.0.0.1:19090/metrics | grep '^trackedge_forward_events_total') in $(echo "$t1 - $t0" | bc) s"
    kill -TERM $pid; while kill -0 $pid 2>/dev/null; do sleep 0.05; done
    kill $broker
fi
echo "$W"
