#!/usr/bin/env bash
# User-space CPU per proxied request, in instructions (callgrind): stable on a
# noisy shared machine where wall-clock or perf numbers are not. See bench/README.md.
#
#   bench/callgrind.sh                       # HTTP/1.1 keep-alive, 13-byte responses
#   PROTO=h2c bench/callgrind.sh             # h2c, CONNS=4 STREAMS=10
#   N1=2000 N2=12000 CONNS=4 TOP=25 bench/callgrind.sh
#
# One drainproxy runs under `valgrind --tool=callgrind`, pinned to PROXY_CPU
# (one core: the current-thread runtime, as in bench/run.sh); bench_upstream
# and h2load share LOAD_CPU. After WARMUP requests, callgrind's counters are
# zeroed, h2load sends N1 requests, the counters are dumped; the same for N2.
# Instructions per request = (Ir(N2) - Ir(N1)) / (N2 - N1): the start, the
# warm-up and each run's connection setup and teardown cancel out. The same
# difference, function by function, gives the breakdown.
#
# Needs valgrind, h2load (nghttp2-client) and python3. Builds with a
# `callgrind` cargo profile defined here by environment variables (release +
# line tables, into target/callgrind/): Cargo.toml and target/release are
# untouched. Everything listens on 127.0.0.1 on ephemeral ports. Every process
# started is killed by pid on exit. Output: bench/logs/callgrind-<stamp>/.
set -euo pipefail

PROTO=${PROTO:-h1}          # h1 | h2c
N1=${N1:-2000}              # requests in the short measured run
N2=${N2:-12000}             # requests in the long measured run
WARMUP=${WARMUP:-1000}      # requests before measuring
CONNS=${CONNS:-4}           # h2load -c
STREAMS=${STREAMS:-10}      # h2load -m for h2c
TOP=${TOP:-15}              # functions listed per table
PROXY_CPU=${PROXY_CPU-0}    # core for the proxy ("": not pinned, multi-thread runtime)
LOAD_CPU=${LOAD_CPU-1}      # core for bench_upstream and h2load ("": not pinned)
SKIP_BUILD=${SKIP_BUILD:-0} # 1: use the binaries already in target/callgrind/
PATH_REQ=${PATH_REQ:-/}     # request path (/64k: 65536-byte responses)

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
LOGDIR=${LOGDIR:-$REPO/bench/logs/callgrind-$STAMP}
mkdir -p "$LOGDIR"
unset "${!DRAINPROXY_@}" 2>/dev/null || true

log() { printf '[callgrind %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
for tool in valgrind callgrind_control h2load python3; do
    command -v "$tool" >/dev/null || die "$tool is required (apt-get install valgrind nghttp2-client python3)"
done
case $PROTO in h1 | h2c) ;; *) die "PROTO must be h1 or h2c" ;; esac
((N2 > N1)) || die "N2 must be larger than N1"

PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

pin() { # cpu command...: run pinned to cpu, or unpinned when cpu is empty
    local cpu=$1
    shift
    if [[ -n $cpu ]]; then exec taskset -c "$cpu" "$@"; else exec "$@"; fi
}

if [[ $SKIP_BUILD != 1 ]]; then
    log "building drainproxy and bench_upstream (profile callgrind = release + line tables)"
    CARGO_PROFILE_CALLGRIND_INHERITS=release CARGO_PROFILE_CALLGRIND_DEBUG=line-tables-only \
        cargo build --profile callgrind --bin drainproxy --example bench_upstream >"$LOGDIR/build.log" 2>&1 ||
        { tail -30 "$LOGDIR/build.log" >&2; die "cargo build failed"; }
fi
BIN=$TARGET_DIR/callgrind
[[ -x $BIN/drainproxy && -x $BIN/examples/bench_upstream ]] || die "no binaries in $BIN"

wait_for() { # file regex seconds
    local end=$((SECONDS + $3))
    until grep -q "$2" "$1" 2>/dev/null; do
        ((SECONDS < end)) || return 1
        sleep 0.1
    done
}

(pin "$LOAD_CPU" "$BIN/examples/bench_upstream" --listen 127.0.0.1:0) >"$LOGDIR/upstream.log" 2>&1 &
PIDS+=($!)
wait_for "$LOGDIR/upstream.log" '^listening ' 10 || die "bench_upstream did not start"
UP_ADDR=$(awk '/^listening /{print $2; exit}' "$LOGDIR/upstream.log")

CG_OUT=$LOGDIR/callgrind.out
(pin "$PROXY_CPU" valgrind --tool=callgrind --callgrind-out-file="$CG_OUT" \
    "$BIN/drainproxy" --listen 127.0.0.1:0 --upstream "$UP_ADDR" --admin off --log-format json) \
    >"$LOGDIR/drainproxy.log" 2>&1 &
DP_PID=$!
PIDS+=("$DP_PID")
wait_for "$LOGDIR/drainproxy.log" '"message":"listening"' 60 || die "drainproxy did not start (see $LOGDIR/drainproxy.log)"
DP_ADDR=$(grep '"message":"listening"' "$LOGDIR/drainproxy.log" | head -1 | sed -E 's/.*"addr":"([^"]+)".*/\1/')
URL=http://$DP_ADDR$PATH_REQ
log "upstream $UP_ADDR, drainproxy $DP_ADDR (pid $DP_PID, under callgrind), $PROTO, $CONNS connections"

load() { # requests
    local args=(-t1 -c"$CONNS" -n"$1")
    if [[ $PROTO == h1 ]]; then args+=(--h1); else args+=(-m"$STREAMS"); fi
    local out
    out=$(pin "$LOAD_CPU" h2load "${args[@]}" "$URL" 2>&1) || { echo "$out" >&2; die "h2load failed"; }
    echo "$out" >>"$LOGDIR/h2load.log"
    grep -q "requests: $1 total, $1 started, $1 done, $1 succeeded" <<<"$out" ||
        { echo "$out" >&2; die "h2load: not every request succeeded"; }
}

measure() { # requests dump-number: callgrind numbers its dumps 1, 2, ...
    callgrind_control --zero "$DP_PID" >/dev/null 2>&1
    load "$1"
    callgrind_control --dump="n$1" "$DP_PID" >/dev/null 2>&1
    local f=$CG_OUT.$2
    for _ in $(seq 100); do [[ -s $f ]] && break; sleep 0.1; done
    [[ -s $f ]] || die "callgrind dump $f missing"
}

log "warm-up: $WARMUP requests"
load "$WARMUP"
log "measuring $N1 then $N2 requests"
measure "$N1" 1
measure "$N2" 2
F1=$CG_OUT.1 F2=$CG_OUT.2

python3 - "$F1" "$F2" "$N1" "$N2" "$TOP" <<'EOF' | tee "$LOGDIR/report.txt"
import re, sys
from collections import defaultdict

f1, f2, n1, n2, top = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])

def parse(path):
    """Self cost by function, by source crate, inclusive by function, total."""
    names = {"fl": {}, "fn": {}}
    selfc, incl, bycrate = defaultdict(int), defaultdict(int), defaultdict(int)
    fn = fl = None
    cfn = None
    in_call = False
    total = 0

    def name(kind, rest):
        m = re.match(r"\((\d+)\)(?: (.*))?", rest)
        if not m:
            return rest
        if m.group(2) is not None:
            names[kind][m.group(1)] = m.group(2)
        return names[kind].get(m.group(1), "?")

    for line in open(path, errors="replace"):
        line = line.rstrip("\n")
        if not line:
            continue
        c = line[0]
        if c.isdigit() or c in "+-*":
            cost = int(line.split()[-1]) if len(line.split()) > 1 else 0
            if in_call:
                in_call = False
                if cfn != fn:
                    incl[fn] += cost
            else:
                selfc[fn] += cost
                incl[fn] += cost
                bycrate[crate(fl, fn)] += cost
                total += cost
            continue
        key, _, rest = line.partition("=")
        if key in ("fl", "fi", "fe"):
            fl = name("fl", rest)
        elif key == "fn":
            fn = name("fn", rest)
        elif key in ("cfi", "cfl"):
            name("fl", rest)
        elif key == "cfn":
            cfn = name("fn", rest)
        elif key == "calls":
            in_call = True
    return selfc, incl, bycrate, total

def crate(path, fn):
    path = path or ""
    m = re.search(r"/registry/src/[^/]+/([A-Za-z0-9_\-]+?)-\d+\.\d+[^/]*/", path)
    if m:
        return m.group(1)
    if "/rustc/" in path:
        return "std/core/alloc"
    if re.search(r"/src/[a-z_]+\.rs$", path) and "drainproxy" in fn:
        return "drainproxy"
    if fn.startswith(("mi_", "_mi_")):
        return "mimalloc"
    if path.startswith("./") or "sysdeps" in path or path == "???":
        return "libc/other (" + (fn.split("@")[0] if fn.startswith("__mem") else "misc") + ")"
    return path

s1, i1, c1, t1 = parse(f1)
s2, i2, c2, t2 = parse(f2)
dn = n2 - n1
per = lambda a, b, k: (b.get(k, 0) - a.get(k, 0)) / dn

print(f"instructions per request: {(t2 - t1) / dn:,.0f}   "
      f"(Ir {t1:,} for {n1} requests, {t2:,} for {n2}; difference / {dn})")
print("\nself instructions per request by source crate (inlined code counted where it was written):")
rows = sorted(((per(c1, c2, k), k) for k in set(c1) | set(c2)), reverse=True)
for v, k in rows[:top]:
    print(f"  {v:9,.0f}  {100 * v / ((t2 - t1) / dn):5.1f}%  {k}")
short = lambda s: s if len(s) <= 150 else s[:147] + "..."
print(f"\ntop {top} functions, self instructions per request:")
rows = sorted(((per(s1, s2, k), k) for k in set(s1) | set(s2)), reverse=True)
for v, k in rows[:top]:
    print(f"  {v:9,.0f}  {short(k)}")
print(f"\ntop {top} functions, inclusive instructions per request (runtime frames skipped):")
rows = sorted(((per(i1, i2, k), k) for k in set(i1) | set(i2)), reverse=True)
skip = re.compile(r"^(main|\(below main\)|__libc_start|std::|0x|drainproxy::main|tokio::runtime::(scheduler|task::raw|task::harness|context|park|runtime))")
shown = 0
for v, k in rows:
    if skip.search(k):
        continue
    print(f"  {v:9,.0f}  {short(k)}")
    shown += 1
    if shown == top:
        break
EOF
log "dumps and logs in $LOGDIR; browse one with: callgrind_annotate --inclusive=yes $F2"
