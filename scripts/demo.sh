#!/usr/bin/env bash
# Builds drainproxy and runs it in front of the bundled demo upstream, so you can watch a drain.
set -euo pipefail
cd "$(dirname "$0")/.."

PROXY_PORT="${PROXY_PORT:-8080}"
APP_PORT="${APP_PORT:-3000}"
ADMIN_PORT="${ADMIN_PORT:-9901}"

cargo build --release --quiet --bin drainproxy --bin demo-upstream
./target/release/demo-upstream --listen "127.0.0.1:${APP_PORT}" >/dev/null &
APP_PID=$!
trap 'kill "$APP_PID" 2>/dev/null || true' EXIT

cat <<INFO

  drainproxy demo
  ---------------
  client -> drainproxy http://127.0.0.1:${PROXY_PORT} -> demo upstream 127.0.0.1:${APP_PORT}
  admin:    http://127.0.0.1:${ADMIN_PORT}/readyz  /healthz  /metrics  /status

  Try a drain, from another terminal:

    curl -i 'http://127.0.0.1:${PROXY_PORT}/slow?ms=4000' &     # a slow request in flight
    curl -X POST http://127.0.0.1:${ADMIN_PORT}/drain          # or: kill -TERM \$(pgrep -n drainproxy)
    curl -i http://127.0.0.1:${ADMIN_PORT}/readyz              # 503 from the first instant of the drain

  The slow request still completes (200, with "connection: close"), new
  connections are refused, and drainproxy exits 0 the moment it is done.
  Other routes: /  /hang  /stream?chunks=5&ms=500  /echo  /bytes?n=65536  /ws
  Press Ctrl-C once to drain, twice to stop at once.

INFO

./target/release/drainproxy --listen "127.0.0.1:${PROXY_PORT}" --upstream "127.0.0.1:${APP_PORT}" \
    --admin "127.0.0.1:${ADMIN_PORT}" --grace 10s "$@"
