#!/bin/bash
# What an idle connection's heap holds, by allocation site: the gateway runs under heaptrack,
# probe.mjs opens N connections (subscribed when SUBSCRIBE=1), and the gateway is killed with
# SIGKILL while they are held, so heaptrack's "leaked" bytes are exactly what was live then.
#
#   bench/results/exploratory/rss-split/live-heap.sh <gateway binary> <database url> <n> <0|1>
#
# Needs heaptrack (Debian package), ws in tests/js/node_modules, a migrated database seeded
# with `cable-bench seed -n <n>`. Prints the top allocation sites in bytes per connection.
set -euo pipefail
gateway=$1 database_url=$2 n=$3 subscribe=$4
here=$(cd "$(dirname "$0")" && pwd)
out=$(mktemp -d /tmp/live-heap.XXXXXX)
port=18557
DATABASE_URL=$database_url CABLE_LISTEN=127.0.0.1:$port CABLE_MAX_CONNECTIONS=19500 RUST_LOG=warn \
    heaptrack -o "$out/heap" "$gateway" serve >"$out/heaptrack.log" 2>&1 &
heaptrack_pid=$!
for _ in $(seq 300); do (echo >/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
pid=$(pgrep -f "^$gateway serve" | head -n1)
cd "$here/../../../../tests/js"
PROBE_SAMPLES=3 PROBE_LAYOUT=${PROBE_LAYOUT:-} node "$here/probe.mjs" "$port" "$pid" "$n" "$subscribe" 2>"$out/probe.err" &
probe=$!
until grep -q "all confirmed" "$out/probe.err"; do sleep 0.5; done
sleep 12
kill -9 "$pid"
wait "$heaptrack_pid" || true
kill "$probe" 2>/dev/null || true
heaptrack_print -f "$out/heap.zst" -p 0 -a 0 -T 0 --flamegraph-cost-type leaked -F "$out/live.stacks" >/dev/null
python3 "$here/live-heap.py" "$out/live.stacks" "$n"
