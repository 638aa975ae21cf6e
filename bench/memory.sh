#!/usr/bin/env bash
# RSS of drainproxy before and after 100k requests (issue #4: memory stays flat).
#
#   bench/memory.sh            # REQUESTS=100000 CONNS=32
#
# Loopback only; starts the demo upstream and drainproxy, ends both (by PID).
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS="${REQUESTS:-100000}"
CONNS="${CONNS:-32}"
command -v h2load >/dev/null || { apt-get update -qq && apt-get install -y -qq nghttp2-client >/dev/null; }
cargo build --release --quiet --bins
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT

./target/release/demo-upstream --listen 127.0.0.1:0 >"$tmp/up.log" & pids+=($!)
until grep -qs listening "$tmp/up.log"; do sleep 0.05; done
up=$(awk '/listening/{print $2}' "$tmp/up.log")
./target/release/drainproxy --listen 127.0.0.1:0 --admin off --upstream "$up" 2>"$tmp/dp.log" & dp=$!; pids+=($dp)
until grep -qs " listening" "$tmp/dp.log"; do sleep 0.05; done
addr=$(grep -o ' addr=[0-9.:]*' "$tmp/dp.log" | tail -1 | cut -d= -f2)
rss() { awk '/VmRSS/{print $2}' "/proc/$dp/status"; }

echo "RSS at start:            $(rss) KiB"
h2load --h1 -n 10000 -c "$CONNS" "http://$addr/" >/dev/null
warm=$(rss)
echo "RSS after 10k warm-up:   $warm KiB"
for round in 1 2 3; do
  h2load --h1 -n "$REQUESTS" -c "$CONNS" "http://$addr/" | grep -E "^requests:" | sed "s/^/round $round: /"
  echo "RSS after round $round (+$REQUESTS): $(rss) KiB"
done
echo "growth over $((3 * REQUESTS)) requests after warm-up: $(( $(rss) - warm )) KiB"
