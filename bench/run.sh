#!/usr/bin/env bash
# drainproxy benchmark: drainproxy vs nginx vs haproxy vs the upstream direct,
# on one machine over loopback, interleaved and repeated. See bench/README.md.
#
#   bench/run.sh                                   # defaults: DURATION=5 ROUNDS=3 IDLE_CONNS=10000
#   DURATION=3 ROUNDS=1 IDLE_CONNS=2000 bench/run.sh
#
# Writes bench/results.md (or $OUT) and keeps the raw tool output in bench/logs/<stamp>/.
set -euo pipefail

# ---------------------------------------------------------------- settings
DURATION=${DURATION:-5}          # seconds per measured wrk/h2load run
WARMUP=${WARMUP:-1}              # seconds of unmeasured load before each measured run (0: none)
ROUNDS=${ROUNDS:-3}              # interleaved repetitions
IDLE_CONNS=${IDLE_CONNS:-10000}  # idle keep-alive connections for the RSS / drain phase (0: skip the phase)
CONNS=${CONNS:-64}               # wrk / h2load connections
H2_STREAMS=${H2_STREAMS:-10}     # h2load -m
PROXY_CPU=${PROXY_CPU:-0}        # the core every proxy is pinned to
LOAD_CPU=${LOAD_CPU:-1}          # the core shared by the load generator, the upstream and the idle clients
INSTALL=${INSTALL:-1}            # 1: apt-get install missing wrk / h2load / nginx / haproxy; 0: skip them
SKIP_BUILD=${SKIP_BUILD:-0}      # 1: use the binaries already built
QUIET_WAIT=${QUIET_WAIT:-0}      # before each measurement, wait up to this many seconds for the machine to be idle ...
QUIET_MAX=${QUIET_MAX:-5}        # ... i.e. for other processes to use at most this % of the machine (1 s sample)
DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-15} # give up on a drain after this many seconds
TARGETS=${TARGETS:-"direct drainproxy nginx haproxy"}
NOISE_MAX=${NOISE_MAX:-5}        # a run during which other processes used more than this % of a core ...
RETRIES=${RETRIES:-2}            # ... is measured again, at most this many times (the last try is kept)

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
LOGDIR=${LOGDIR:-$REPO/bench/logs/$STAMP}
OUT=${OUT:-$REPO/bench/results.md}
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
COMMAND="DURATION=$DURATION ROUNDS=$ROUNDS IDLE_CONNS=$IDLE_CONNS WARMUP=$WARMUP CONNS=$CONNS H2_STREAMS=$H2_STREAMS"
((QUIET_WAIT > 0)) && COMMAND+=" QUIET_WAIT=$QUIET_WAIT"
[[ $TARGETS != "direct drainproxy nginx haproxy" ]] && COMMAND+=" TARGETS=\"$TARGETS\""
COMMAND+=" bench/run.sh"
# A DRAINPROXY_* variable from the caller's environment would change the proxy under test.
unset "${!DRAINPROXY_@}" 2>/dev/null || true

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

HZ=$(getconf CLK_TCK)
mkdir -p "$LOGDIR"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/drainproxy-bench.XXXXXX")

# ---------------------------------------------------------- process tracking
# Every process we start is recorded as "pid:starttime"; cleanup signals only
# processes whose pid still has that start time (no pid-reuse accidents, and
# never a process we did not start).
declare -A STARTED=()

proc_field() { # pid field-number-after-comm (1 = state, 2 = ppid, 12 = utime, 13 = stime, 20 = starttime)
    local s f
    { s=$(<"/proc/$1/stat"); } 2>/dev/null || return 1
    s=${s##*) }
    read -r -a f <<<"$s"
    printf '%s\n' "${f[$2 - 1]}"
}
track() { local st; st=$(proc_field "$1" 20) && STARTED[$1]=$st; }
ours() { [[ -n "${STARTED[$1]:-}" ]] && [[ "$(proc_field "$1" 20 2>/dev/null)" == "${STARTED[$1]}" ]]; }
alive() { ours "$1" && [[ "$(proc_field "$1" 1)" != Z ]]; }

stop_pid() { # pid [signal] [timeout-seconds]: signal, wait, then SIGKILL; reaps our children
    local pid=$1 sig=${2:-TERM} t=${3:-3} i
    if alive "$pid"; then
        kill -s "$sig" "$pid" 2>/dev/null || true
        for ((i = 0; i < t * 20; i++)); do alive "$pid" || break; sleep 0.05; done
        if alive "$pid"; then kill -s KILL "$pid" 2>/dev/null || true; fi
    fi
    wait "$pid" 2>/dev/null || true
    unset "STARTED[$pid]"
}

cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${!STARTED[@]}"; do alive "$pid" && kill -s TERM "$pid" 2>/dev/null || true; done
    sleep 0.3
    for pid in "${!STARTED[@]}"; do alive "$pid" && kill -s KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_port() { # port [timeout-seconds]
    local i
    for ((i = 0; i < ${2:-10} * 20; i++)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    return 1
}

free_ports() { # n: n distinct free loopback ports
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

cpu_ticks() { # pid: utime+stime of the whole process (all threads), in clock ticks
    local u s
    u=$(proc_field "$1" 12) && s=$(proc_field "$1" 13) && echo $((u + s)) || echo NA
}
sched_wait_ns() { # pid: ns its threads spent runnable but waiting for a CPU (contention on its core)
    local sum=0 f a b c
    for f in /proc/"$1"/task/*/schedstat; do
        { read -r a b c <"$f"; } 2>/dev/null && sum=$((sum + b))
    done
    echo "$sum"
}
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo NA; }
core_snapshot() { # "busy,total,work,steal" of PROXY_CPU and LOAD_CPU from /proc/stat
    # work = user+nice+system+irq+softirq: what processes' utime+stime add up to (ticks landing in
    # softirq count in both a process's stime and the softirq column)
    awk -v a="cpu$PROXY_CPU" -v b="cpu$LOAD_CPU" '
        $1 == a || $1 == b { t = 0; for (i = 2; i <= NF; i++) t += $i; r[$1] = (t - $5 - $6) "," t "," ($2 + $3 + $4 + $7 + $8) "," $9 }
        END { printf "%s %s\n", r[a], r[b] }' /proc/stat
}
CH_TICKS=0
children_ticks() { # sets CH_TICKS: CPU of this shell's reaped children (wrk, h2load), in clock ticks
    # (not in $(...): a subshell has children of its own)
    times >"$WORK/times"
    CH_TICKS=$(awk -v hz="$HZ" 'NR == 2 { split($1, u, /[ms]/); split($2, s, /[ms]/); printf "%d\n", (u[1] * 60 + u[2] + s[1] * 60 + s[2]) * hz }' "$WORK/times")
}
foreign_pct() { # k0 k1 our_ticks wall_ns: CPU used on the two cores by processes not ours (+ steal), % of one core
    awk -v k0="$1" -v k1="$2" -v ours="$3" -v wall="$4" -v hz="$HZ" -v same="$((PROXY_CPU == LOAD_CPU))" 'BEGIN {
        n = split(k0, a, " "); split(k1, b, " "); if (same) n = 1; f = 0
        for (i = 1; i <= n; i++) { split(a[i], x, ","); split(b[i], y, ","); f += (y[3] - x[3]) + (y[4] - x[4]) }
        f -= ours; if (f < 0) f = 0
        printf "%.1f\n", (wall > 0) ? 100 * f / (wall / 1e9 * hz) : 0 }'
}
background_busy() { # % busy of both cores over one second, with nothing of ours loaded
    local a b
    a=$(awk '/^cpu / {t=0; for(i=2;i<=NF;i++) t+=$i; print t-$5-$6, t}' /proc/stat)
    sleep 1
    b=$(awk '/^cpu / {t=0; for(i=2;i<=NF;i++) t+=$i; print t-$5-$6, t}' /proc/stat)
    awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " "); d = y[2] - x[2]; printf "%.0f\n", (d > 0) ? 100 * (y[1] - x[1]) / d : 0 }'
}

wait_quiet() { # with QUIET_WAIT > 0: wait (bounded) until other processes leave the machine idle
    ((QUIET_WAIT > 0)) || return 0
    local end=$((SECONDS + QUIET_WAIT)) b said=0
    while :; do
        b=$(background_busy)
        ((b <= QUIET_MAX)) && return 0
        if ((SECONDS >= end)); then log "the machine is still ${b}% busy with other processes: going on"; return 0; fi
        ((said)) || log "the machine is ${b}% busy with other processes: waiting up to ${QUIET_WAIT}s"
        said=1
        sleep 2
    done
}

# ------------------------------------------------------------------ tools
have() { command -v "$1" >/dev/null 2>&1; }
for t in cargo python3 taskset timeout curl; do have "$t" || die "$t is required"; done
[[ $(nproc) -ge 2 ]] || log "warning: fewer than 2 CPUs online; PROXY_CPU and LOAD_CPU overlap"

install_missing() {
    local pkgs=()
    have wrk || pkgs+=(wrk)
    have h2load || pkgs+=(nghttp2-client)
    have nginx || pkgs+=(nginx)
    have haproxy || pkgs+=(haproxy)
    ((${#pkgs[@]})) || return 0
    local sudo=()
    [[ $EUID -eq 0 ]] || { have sudo && sudo -n true 2>/dev/null && sudo=(sudo -n); } || {
        log "not root and no passwordless sudo: not installing ${pkgs[*]}"
        return 0
    }
    have apt-get || { log "no apt-get: not installing ${pkgs[*]}"; return 0; }
    log "installing ${pkgs[*]} (apt-get)"
    # shellcheck disable=SC2068
    ${sudo[@]} env DEBIAN_FRONTEND=noninteractive apt-get update -qq >"$LOGDIR/apt.log" 2>&1 || true
    # shellcheck disable=SC2068
    ${sudo[@]} env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" \
        >>"$LOGDIR/apt.log" 2>&1 || log "apt-get install failed (see $LOGDIR/apt.log); going on with what is there"
}
[[ $INSTALL == 1 ]] && install_missing
# Find nginx/haproxy in sbin even when it is not on PATH.
PATH=$PATH:/usr/sbin:/sbin
have wrk || die "wrk is required (apt-get install wrk)"

VERSIONS="$LOGDIR/versions.txt"
{
    echo "wrk: $(wrk -v 2>&1 | head -1 || true)"
    if have h2load; then echo "h2load: $(h2load --version 2>&1 | head -1)"; else echo "h2load: not installed (h2c skipped)"; fi
    if have nginx; then echo "nginx: $(nginx -v 2>&1 | head -1)"; else echo "nginx: not installed (skipped)"; fi
    if have haproxy; then echo "haproxy: $(haproxy -v 2>&1 | head -1)"; else echo "haproxy: not installed (skipped)"; fi
    echo "rustc: $(rustc --version 2>&1)"
    echo "drainproxy: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo ' + uncommitted changes in src/')"
} >"$VERSIONS"
sed 's/^/  /' "$VERSIONS" >&2

# Drop targets whose server is missing.
T_LIST=()
for t in $TARGETS; do
    case $t in
        nginx) have nginx && T_LIST+=(nginx) || log "nginx not installed: skipped" ;;
        haproxy) have haproxy && T_LIST+=(haproxy) || log "haproxy not installed: skipped" ;;
        direct | drainproxy) T_LIST+=("$t") ;;
        *) die "unknown target $t" ;;
    esac
done

# ------------------------------------------------------------------ build
if [[ $SKIP_BUILD != 1 ]]; then
    log "building drainproxy and the bench helpers (cargo build --release)"
    cargo build --release --bin drainproxy >"$LOGDIR/build.log" 2>&1 || { tail -30 "$LOGDIR/build.log" >&2; die "cargo build --release --bin drainproxy failed"; }
    cargo build --release --example bench_upstream --example idle_clients >>"$LOGDIR/build.log" 2>&1 || { tail -30 "$LOGDIR/build.log" >&2; die "building the bench examples failed"; }
fi
DP=${DRAINPROXY_BIN:-$TARGET_DIR/release/drainproxy}
UPSTREAM=${UPSTREAM_BIN:-$TARGET_DIR/release/examples/bench_upstream}
IDLE=${IDLE_BIN:-$TARGET_DIR/release/examples/idle_clients}
for b in "$DP" "$UPSTREAM" "$IDLE"; do [[ -x $b ]] || die "$b not built"; done
# Run copies: a cargo build by someone else in the same tree must not swap a binary mid-run.
mkdir -p "$WORK/bin"
cp "$DP" "$WORK/bin/drainproxy" && cp "$UPSTREAM" "$WORK/bin/bench_upstream" && cp "$IDLE" "$WORK/bin/idle_clients"
DP=$WORK/bin/drainproxy UPSTREAM=$WORK/bin/bench_upstream IDLE=$WORK/bin/idle_clients
echo "drainproxy binary: sha256 $(sha256sum "$DP" | cut -c1-16), built $(date -u -r "$DP" +%Y-%m-%dT%H:%M:%SZ)" >>"$VERSIONS"

# ------------------------------------------------------------- fd limits
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
if ((IDLE_CONNS > 0 && NOFILE < IDLE_CONNS + 2048)); then
    log "warning: open-files limit is $NOFILE; lowering IDLE_CONNS from $IDLE_CONNS to $((NOFILE - 2048))"
    IDLE_CONNS=$((NOFILE - 2048))
fi

# --------------------------------------------------------------- servers
read -r P_UP P_DP P_NGX P_NGX_H2 P_HAP P_HAP_H2 <<<"$(free_ports 6)"

UP_PID=
start_upstream() {
    taskset -c "$LOAD_CPU" "$UPSTREAM" --listen "127.0.0.1:$P_UP" >>"$LOGDIR/upstream.out" 2>&1 &
    UP_PID=$!
    track "$UP_PID"
    wait_port "$P_UP" || die "bench_upstream did not start"
}

# Each start_* sets SIG_PID (the process to signal), MEM_PID (the process that
# holds the connections: nginx's worker) and PORT / H2_PORT.
SIG_PID= MEM_PID= PORT= H2_PORT=

start_direct() { SIG_PID=$UP_PID MEM_PID=$UP_PID PORT=$P_UP H2_PORT=$P_UP; }

start_drainproxy() { # [extra args]
    taskset -c "$PROXY_CPU" "$DP" --listen "127.0.0.1:$P_DP" --upstream "127.0.0.1:$P_UP" --admin off "$@" \
        >>"$LOGDIR/drainproxy.log" 2>&1 &
    SIG_PID=$! MEM_PID=$! PORT=$P_DP H2_PORT=$P_DP
    track "$SIG_PID"
    wait_port "$P_DP" || die "drainproxy did not start (see $LOGDIR/drainproxy.log)"
}

NGX_DIR=$WORK/nginx
write_nginx_conf() {
    mkdir -p "$NGX_DIR/tmp"
    local user=""
    # As root, nginx would switch its worker to "nobody": keep the current user.
    [[ $EUID -eq 0 ]] && user="user $(id -un) $(id -gn);"
    cat >"$NGX_DIR/nginx.conf" <<EOF
# Generated by bench/run.sh: nginx as the equivalent reverse proxy.
$user
worker_processes 1;
worker_rlimit_nofile $NOFILE;
daemon off;
master_process on;
pid $NGX_DIR/nginx.pid;
error_log $NGX_DIR/error.log warn;
events {
    worker_connections $((NOFILE - 64));
    use epoll;
}
http {
    access_log off;
    default_type application/octet-stream;
    client_body_temp_path $NGX_DIR/tmp/client;
    proxy_temp_path $NGX_DIR/tmp/proxy;
    fastcgi_temp_path $NGX_DIR/tmp/fastcgi;
    uwsgi_temp_path $NGX_DIR/tmp/uwsgi;
    scgi_temp_path $NGX_DIR/tmp/scgi;
    tcp_nodelay on;
    keepalive_timeout 300s;
    keepalive_requests 1000000;
    upstream app {
        server 127.0.0.1:$P_UP;
        keepalive 1024;
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }
    server {
        listen 127.0.0.1:$P_NGX;
        listen 127.0.0.1:$P_NGX_H2 http2;
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
}
start_nginx() {
    write_nginx_conf
    taskset -c "$PROXY_CPU" nginx -p "$NGX_DIR" -e "$NGX_DIR/error.log" -c "$NGX_DIR/nginx.conf" >>"$LOGDIR/nginx.log" 2>&1 &
    SIG_PID=$! PORT=$P_NGX H2_PORT=$P_NGX_H2
    track "$SIG_PID"
    wait_port "$P_NGX" || { cat "$NGX_DIR/error.log" >&2 || true; die "nginx did not start"; }
    local i w=
    for ((i = 0; i < 100; i++)); do
        w=$(pgrep -P "$SIG_PID" | head -1 || true)
        [[ -n $w ]] && break
        sleep 0.05
    done
    [[ -n $w ]] || die "no nginx worker"
    track "$w"
    MEM_PID=$w
}

HAP_DIR=$WORK/haproxy
start_haproxy() {
    mkdir -p "$HAP_DIR"
    cat >"$HAP_DIR/haproxy.cfg" <<EOF
# Generated by bench/run.sh: haproxy as the equivalent reverse proxy (no logging).
global
    nbthread 1
    maxconn $((IDLE_CONNS + 4 * CONNS + 512))
    # maxconn counts front and back fds; the idle phase needs only front ones: start even if ulimit -n looks short.
    no strict-limits
    # By default haproxy keeps idle server connections only while they hold < 20-25 % of its fds;
    # with 10k idle clients each holding one, it then opens a new upstream connection per request.
    tune.pool-low-fd-ratio 80
    tune.pool-high-fd-ratio 90
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 300s
    timeout server 300s
    timeout http-request 300s
    timeout http-keep-alive 300s
frontend fe
    bind 127.0.0.1:$P_HAP
    bind 127.0.0.1:$P_HAP_H2 proto h2
    default_backend app
backend app
    server app 127.0.0.1:$P_UP
EOF
    taskset -c "$PROXY_CPU" haproxy -db -f "$HAP_DIR/haproxy.cfg" >>"$LOGDIR/haproxy.log" 2>&1 &
    SIG_PID=$! MEM_PID=$! PORT=$P_HAP H2_PORT=$P_HAP_H2
    track "$SIG_PID"
    wait_port "$P_HAP" || die "haproxy did not start (see $LOGDIR/haproxy.log)"
}

start_target() { "start_$1" "${@:2}"; }
stop_target() { # target: stop it (the upstream stays)
    [[ $1 == direct ]] && return 0
    local m=$MEM_PID s=$SIG_PID
    stop_pid "$s" TERM 3
    [[ $m != "$s" ]] && stop_pid "$m" TERM 1
    return 0
}

# ------------------------------------------------------------ measurement
RUNS=$LOGDIR/runs.tsv
printf 'round\tscenario\ttarget\tlog\tproxy_ticks\tupstream_ticks\twall_ns\tcores_before\tcores_after\tproxy_wait_ns\tforeign_pct\tfinal\n' >"$RUNS"

# measure ROUND SCEN TARGET PID_FOR_CPU -- command...: runs the measured command, records CPU and cores.
measure() {
    local r=$1 scen=$2 target=$3 pid=$4
    shift 5
    local attempt out c0 c1 u0 u1 t0 t1 k0 k1 w0 w1 h0 h1 dc fp final line
    for ((attempt = 1; attempt <= RETRIES + 1; attempt++)); do
        out="$LOGDIR/r$r-$scen-$target.txt"
        ((attempt > 1)) && out="$LOGDIR/r$r-$scen-$target-try$attempt.txt"
        c0=NA c1=NA w0=0 w1=0
        [[ $pid != NA ]] && c0=$(cpu_ticks "$pid") && w0=$(sched_wait_ns "$pid")
        u0=$(cpu_ticks "$UP_PID")
        children_ticks
        h0=$CH_TICKS
        k0=$(core_snapshot)
        t0=$(date +%s%N)
        timeout $((DURATION + 60)) "$@" >"$out" 2>&1 || echo "# exit status $?" >>"$out"
        t1=$(date +%s%N)
        k1=$(core_snapshot)
        children_ticks
        h1=$CH_TICKS
        u1=$(cpu_ticks "$UP_PID")
        [[ $pid != NA ]] && c1=$(cpu_ticks "$pid") && w1=$(sched_wait_ns "$pid")
        dc=NA
        [[ $c0 != NA && $c1 != NA ]] && dc=$((c1 - c0))
        fp=$(foreign_pct "$k0" "$k1" $((${dc/NA/0} + u1 - u0 + h1 - h0)) $((t1 - t0)))
        final=1
        if ((attempt <= RETRIES)) && awk -v f="$fp" -v m="$NOISE_MAX" 'BEGIN { exit !(f > m) }'; then final=0; fi
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$scen" "$target" "$(basename "$out")" "$dc" $((u1 - u0)) \
            $((t1 - t0)) "$k0" "$k1" $((w1 - w0)) "$fp" "$final" >>"$RUNS"
        line=$(grep -E '^Requests/sec|^finished in|Non-2xx|Socket errors|^requests:' "$out" | tr -s ' ' | paste -sd ';' - || true)
        log "r$r $scen $target: ${line:-no result, see $out} [other processes: ${fp}% of a core]"
        ((final)) && break
        log "  another process used ${fp}% of a core during that run (> NOISE_MAX=$NOISE_MAX): measuring again"
        sleep 1
        wait_quiet
    done
}

wrk_run() { # round scen target path
    local url="http://127.0.0.1:$PORT$4" cpu_pid=$MEM_PID
    [[ $3 == direct ]] && cpu_pid=NA
    wait_quiet
    if ((WARMUP > 0)); then
        timeout $((WARMUP + 30)) taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${WARMUP}s" "$url" >/dev/null 2>&1 || true
    fi
    measure "$1" "$2" "$3" "$cpu_pid" -- taskset -c "$LOAD_CPU" wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "$url"
}

h2_run() { # round target
    local url="http://127.0.0.1:$H2_PORT/" cpu_pid=$MEM_PID
    [[ $2 == direct ]] && cpu_pid=NA
    wait_quiet
    if ((WARMUP > 0)); then
        timeout $((WARMUP + 30)) taskset -c "$LOAD_CPU" h2load -t1 -c"$CONNS" -m"$H2_STREAMS" -D"$WARMUP" "$url" >/dev/null 2>&1 || true
    fi
    measure "$1" h2c "$2" "$cpu_pid" -- taskset -c "$LOAD_CPU" h2load -t1 -c"$CONNS" -m"$H2_STREAMS" -D"$DURATION" "$url"
}

sanity() { # target: one request of each kind must answer 200
    local code
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$PORT/64k" || true)
    [[ $code == 200 ]] || log "warning: $1 answered GET /64k with '$code'"
}

rotate() { # k items...: the items rotated left by k
    local k=$1
    shift
    local n=$# i
    for ((i = 0; i < n; i++)); do
        local j=$(((i + k) % n + 1))
        printf '%s ' "${!j}"
    done
}

IDLE_TSV=$LOGDIR/idle.tsv
printf 'round\ttarget\trss_before_kib\trss_idle_kib\trss_after_load_kib\tready\tdrain\n' >"$IDLE_TSV"

idle_phase() { # round target signal [drainproxy args]
    local r=$1 t=$2 sig=$3
    shift 3
    start_target "$t" "$@"
    sanity "$t"
    wrk_run "$r" idle0 "$t" /
    sleep 0.3
    local rss0 rss1 rss2 go="$WORK/go-$r-$t" out="$LOGDIR/r$r-idleclients-$t.txt"
    rss0=$(rss_kib "$MEM_PID")
    rm -f "$go"
    timeout $((DRAIN_TIMEOUT + 120)) taskset -c "$LOAD_CPU" "$IDLE" --connect "127.0.0.1:$PORT" --conns "$IDLE_CONNS" \
        --concurrency 256 --go-file "$go" --pid "$SIG_PID" --signal "$sig" --timeout "$DRAIN_TIMEOUT" >"$out" 2>&1 &
    local cpid=$! i
    track "$cpid"
    for ((i = 0; i < 1200; i++)); do grep -q '^ready' "$out" 2>/dev/null && break; alive "$cpid" || break; sleep 0.05; done
    # "Idle" means idle for a few seconds: drainproxy moves a connection quiet
    # for 100 ms out of its task into the parking lot, and a second after a
    # burst of them it hands the memory that burst used back to the OS.
    sleep 2.5
    rss1=$(rss_kib "$MEM_PID")
    log "r$r idle $t: $(grep '^ready' "$out" || echo 'clients not ready'); RSS ${rss0} -> ${rss1} KiB"
    # No waiting for a quiet machine, no retry, no warm-up here: the idle connections must stay
    # well inside every proxy's idle timeout (drainproxy: its 30 s header-read timeout).
    QUIET_WAIT=0 RETRIES=0 WARMUP=0 wrk_run "$r" idle1 "$t" /
    rss2=$(rss_kib "$MEM_PID")
    touch "$go"
    wait "$cpid" 2>/dev/null || true
    unset "STARTED[$cpid]"
    log "r$r drain $t: $(grep '^drain' "$out" || echo 'no drain result')"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$t" "$rss0" "$rss1" "$rss2" \
        "$(grep '^ready' "$out" | head -1)" "$(grep '^drain' "$out" | head -1)" >>"$IDLE_TSV"
    # It should be gone already; if it is not (the drain timed out), stop it hard.
    stop_target "$t"
    if [[ $t == direct ]]; then
        # The floor: the upstream killed outright (SIGTERM, default action) closes every socket
        # at exit, with no drain logic at all. Start it again for what follows.
        stop_pid "$UP_PID" KILL 1
        start_upstream
    fi
}

# ------------------------------------------------------------------- run
wait_quiet
BG_BUSY_START=$(background_busy)
log "background CPU busy before start: ${BG_BUSY_START}%"
echo "$BG_BUSY_START" >"$LOGDIR/background_busy.txt"

start_upstream
T_H2=()
if have h2load; then
    for t in "${T_LIST[@]}"; do T_H2+=("$t"); done
fi

for ((r = 1; r <= ROUNDS; r++)); do
    log "round $r/$ROUNDS: background CPU busy $(background_busy | tee -a "$LOGDIR/background_busy.txt")%"
    # shellcheck disable=SC2207
    order=($(rotate $((r - 1)) "${T_LIST[@]}"))
    for scen in h1-small h1-64k; do
        path=/
        [[ $scen == h1-64k ]] && path=/64k
        for t in "${order[@]}"; do
            start_target "$t"
            [[ $scen == h1-small ]] && sanity "$t"
            wrk_run "$r" "$scen" "$t" "$path"
            stop_target "$t"
        done
    done
    if ((${#T_H2[@]})); then
        # shellcheck disable=SC2207
        order=($(rotate $((r - 1)) "${T_H2[@]}"))
        for t in "${order[@]}"; do
            start_target "$t"
            h2_run "$r" "$t"
            stop_target "$t"
        done
    fi
    if ((IDLE_CONNS > 0)); then
        for t in "${order[@]}"; do
            case $t in
                direct) idle_phase "$r" direct TERM ;;
                drainproxy) idle_phase "$r" drainproxy TERM --idle-grace 0 ;;
                nginx) idle_phase "$r" nginx QUIT ;;
                haproxy) idle_phase "$r" haproxy USR1 ;;
            esac
        done
    fi
done
stop_pid "$UP_PID" TERM 2

# ---------------------------------------------------------------- report
NOISE_MAX=$NOISE_MAX python3 "$REPO/bench/report.py" --logdir "$LOGDIR" --command "$COMMAND" --proxy-cpu "$PROXY_CPU" --load-cpu "$LOAD_CPU" \
    --idle-conns "$IDLE_CONNS" --duration "$DURATION" --rounds "$ROUNDS" --out "$OUT"
cp "$OUT" "$LOGDIR/results.md"
log "wrote $OUT (raw output in ${LOGDIR#"$REPO"/})"
