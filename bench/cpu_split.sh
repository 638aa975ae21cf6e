#!/usr/bin/env bash
# Where a proxied request's CPU goes: user vs kernel time per request, for one
# or more drainproxy binaries (say, before and after a change) and nginx,
# interleaved in one run. See bench/README.md.
#
#   bench/cpu_split.sh                                   # target/release/drainproxy vs nginx
#   bench/cpu_split.sh /tmp/drainproxy-old target/release/drainproxy
#   ROUNDS=6 DURATION=5 PATH_REQ=/64k NGINX=0 bench/cpu_split.sh
#
# Each proxy is pinned to PROXY_CPU; wrk -t1 -c64 and bench_upstream share
# LOAD_CPU (as in bench/run.sh). Per run: utime and stime of the proxy (from
# /proc/PID/stat; nginx: its worker) over a measured wrk run, divided by the
# requests wrk completed. Loopback and ephemeral ports only; everything
# started is killed by pid on exit.
set -euo pipefail

ROUNDS=${ROUNDS:-4}
DURATION=${DURATION:-4}
PATH_REQ=${PATH_REQ:-/}
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
NGINX=${NGINX:-1}          # 1: include nginx when it is installed

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
BINS=("$@")
((${#BINS[@]})) || BINS=("$TARGET_DIR/release/drainproxy")
HZ=$(getconf CLK_TCK)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/drainproxy-cpu.XXXXXX")
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

command -v wrk >/dev/null || { echo "wrk is needed (apt-get install wrk)" >&2; exit 1; }
cargo build --release --quiet --bins --examples

wait_line() { # file pattern: prints the first matching line, waiting up to 5 s
    local i
    for ((i = 0; i < 100; i++)); do
        grep -m1 "$2" "$1" 2>/dev/null && return 0
        sleep 0.05
    done
    echo "timed out waiting for '$2' in $1" >&2
    return 1
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

taskset -c "$LOAD_CPU" "$TARGET_DIR/release/examples/bench_upstream" --listen 127.0.0.1:0 >"$WORK/upstream.out" &
PIDS+=($!)
UPSTREAM_PID=$!
UPSTREAM=$(wait_line "$WORK/upstream.out" listening | awk '{print $2}')

NAMES=() ADDRS=() CPU_PIDS=()
for i in "${!BINS[@]}"; do
    taskset -c "$PROXY_CPU" "${BINS[$i]}" --listen 127.0.0.1:0 --upstream "$UPSTREAM" --admin off 2>"$WORK/proxy$i.log" &
    PIDS+=($!)
    CPU_PIDS+=($!)
    NAMES+=("drainproxy[$i] ${BINS[$i]}")
    ADDRS+=("$(wait_line "$WORK/proxy$i.log" 'drainproxy: listening' | grep -o 'addr=[0-9.:]*' | cut -d= -f2)")
done

if [[ $NGINX == 1 ]] && command -v nginx >/dev/null; then
    port=$(free_port)
    mkdir -p "$WORK/nginx"
    user=""
    # As root, nginx would switch its worker to "nobody": keep the current user (as bench/run.sh does).
    [[ $EUID -eq 0 ]] && user="user $(id -un) $(id -gn);"
    # The same proxy settings as bench/run.sh's nginx.
    cat >"$WORK/nginx/nginx.conf" <<EOF
$user
worker_processes 1;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log;
events { worker_connections 4096; use epoll; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx; proxy_temp_path $WORK/nginx; fastcgi_temp_path $WORK/nginx;
    uwsgi_temp_path $WORK/nginx; scgi_temp_path $WORK/nginx;
    tcp_nodelay on;
    keepalive_timeout 300s;
    keepalive_requests 1000000;
    upstream app { server $UPSTREAM; keepalive 1024; keepalive_requests 1000000; keepalive_timeout 300s; }
    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # A 64 KiB response fits in memory: never a temp file.
            proxy_buffer_size 16k;
            proxy_buffers 8 16k;
            proxy_max_temp_file_size 0;
        }
    }
}
EOF
    taskset -c "$PROXY_CPU" nginx -p "$WORK/nginx" -e "$WORK/nginx/error.log" -c "$WORK/nginx/nginx.conf" 2>"$WORK/nginx/stderr" &
    master=$!
    PIDS+=("$master")
    worker=""
    for ((i = 0; i < 100; i++)); do
        worker=$(pgrep -P "$master" | head -1 || true)
        [[ -n $worker ]] && break
        sleep 0.05
    done
    [[ -n $worker ]] || { echo "nginx did not start" >&2; exit 1; }
    CPU_PIDS+=("$worker")
    NAMES+=("nginx $(nginx -v 2>&1 | sed 's/.*nginx\///')")
    ADDRS+=("127.0.0.1:$port")
fi

ticks() { awk '{print $14, $15}' "/proc/$1/stat"; } # utime stime (after comm; no spaces in these comms)
echo "round	proxy	req/s	user_us_per_req	kernel_us_per_req	total_us_per_req	upstream_us_per_req" >"$WORK/runs.tsv"
for ((r = 1; r <= ROUNDS; r++)); do
    for i in "${!NAMES[@]}"; do
        url="http://${ADDRS[$i]}$PATH_REQ"
        taskset -c "$LOAD_CPU" wrk -t1 -c64 -d1s "$url" >/dev/null
        read -r u0 s0 < <(ticks "${CPU_PIDS[$i]}")
        read -r uu0 us0 < <(ticks "$UPSTREAM_PID")
        n=$(taskset -c "$LOAD_CPU" wrk -t1 -c64 -d"${DURATION}s" "$url" | awk '/requests in/ {print $1}')
        read -r u1 s1 < <(ticks "${CPU_PIDS[$i]}")
        read -r uu1 us1 < <(ticks "$UPSTREAM_PID")
        python3 - "$r" "${NAMES[$i]}" "$n" "$DURATION" "$HZ" "$u0" "$s0" "$u1" "$s1" "$((uu1 + us1 - uu0 - us0))" >>"$WORK/runs.tsv" <<'EOF'
import sys
r, name, n, dur, hz, u0, s0, u1, s1, up = sys.argv[1:]
n, dur, hz = int(n), float(dur), int(hz)
user, kern = (int(u1) - int(u0)) / hz / n * 1e6, (int(s1) - int(s0)) / hz / n * 1e6
print(f"{r}\t{name}\t{n / dur:.0f}\t{user:.2f}\t{kern:.2f}\t{user + kern:.2f}\t{int(up) / hz / n * 1e6:.2f}")
EOF
        tail -1 "$WORK/runs.tsv" >&2
    done
done

python3 - "$WORK/runs.tsv" "$PATH_REQ" <<'EOF'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])][1:]
names = list(dict.fromkeys(r[1] for r in rows))
print(f"\nwrk -t1 -c64 {sys.argv[2]}, medians (min-max) over {len({r[0] for r in rows})} interleaved rounds:\n")
print("| proxy | req/s | user µs/request | kernel µs/request | total µs/request | upstream µs/request |")
print("|---|---:|---:|---:|---:|---:|")
for name in names:
    cols = [[float(r[c]) for r in rows if r[1] == name] for c in range(2, 7)]
    cell = lambda v, fmt: f"{fmt.format(statistics.median(v))} ({fmt.format(min(v))}–{fmt.format(max(v))})"
    print(f"| {name} | {cell(cols[0], '{:,.0f}')} | " + " | ".join(cell(c, '{:.2f}') for c in cols[1:]) + " |")
EOF
