#!/usr/bin/env bash
# TLS benchmark: drainproxy vs nginx terminating TLS with the same certificate
# in front of the same upstream, on one machine over loopback, in one run.
#
#   bench/tls.sh                          # DURATION=5 ROUNDS=3 KEY=rsa
#   DURATION=3 ROUNDS=1 KEY=ec bench/tls.sh
#
# What it measures, per proxy, interleaved over ROUNDS (the median is reported):
#   full      full TLS 1.3 handshakes/s, one GET each: HS_CLIENTS parallel
#             `openssl s_time -new` loops (a new session every time: no resumption)
#   reconnect new connection per request, resumption allowed (what a returning
#             client does): `h2load --h1 -H 'Connection: close'`
#   keepalive HTTPS/1.1 keep-alive req/s: `wrk -t1 -c64`
#   h2        HTTP/2 over TLS req/s: `h2load -c16 -m10`
# With each number goes the proxy's CPU use during it: a proxy below ~90% was
# not the bottleneck (the client core was), so its ratio understates the gap.
#
# Both proxies are pinned to PROXY_CPU (default 0); the load generators and the
# upstream share LOAD_CPU (default 1). Writes bench/tls-results.md (or $OUT).
# Cleans up only the processes it started, by PID.
set -euo pipefail

DURATION=${DURATION:-5}       # seconds per measurement
ROUNDS=${ROUNDS:-3}           # interleaved repetitions
KEY=${KEY:-rsa}               # rsa (RSA 2048, the common web certificate) or ec (ECDSA P-256)
HS_CLIENTS=${HS_CLIENTS:-8}   # parallel `openssl s_time` clients for full handshakes
RECONNECT_N=${RECONNECT_N:-4000} # requests (= connections) for the reconnect test
CONNS=${CONNS:-64}            # wrk keep-alive connections
H2_CONNS=${H2_CONNS:-16}      # h2load connections
H2_STREAMS=${H2_STREAMS:-10}  # h2load -m
PROXY_CPU=${PROXY_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
SKIP_BUILD=${SKIP_BUILD:-0}   # 1: use the binaries already built

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
OUT=${OUT:-$REPO/bench/tls-results.md}
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
# A DRAINPROXY_* variable from the caller's environment would change the proxy under test.
unset "${!DRAINPROXY_@}" 2>/dev/null || true
PATH=$PATH:/usr/sbin:/sbin

log() { printf '[tls-bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
have() { command -v "$1" >/dev/null 2>&1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/drainproxy-tls-bench.XXXXXX")

# ---------------------------------------------------------- process tracking
# Only processes started here, remembered by PID with their start time (so a
# reused PID is never signalled), are stopped at exit.
declare -A STARTED=()
starttime() { local s; { s=$(<"/proc/$1/stat"); } 2>/dev/null || return 1; s=${s##*) }; set -- $s; echo "${20}"; }
track() { STARTED[$1]=$(starttime "$1" || echo gone); }
ours() { [[ -n ${STARTED[$1]:-} && "$(starttime "$1" 2>/dev/null)" == "${STARTED[$1]}" ]]; }
stop_pid() { # pid: TERM, up to 3s, then KILL
    local pid=$1 i
    if ours "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < 60; i++)); do
            ours "$pid" && [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]] || break
            sleep 0.05
        done
        ours "$pid" && kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
    unset "STARTED[$pid]"
}
cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${!STARTED[@]}"; do stop_pid "$pid"; done
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ tools
install_missing() {
    local pkgs=()
    have wrk || pkgs+=(wrk)
    have h2load || pkgs+=(nghttp2-client)
    have nginx || pkgs+=(nginx)
    have openssl || pkgs+=(openssl)
    ((${#pkgs[@]})) || return 0
    [[ $EUID -eq 0 ]] && have apt-get || die "missing ${pkgs[*]} (apt-get install ${pkgs[*]})"
    log "installing ${pkgs[*]} (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >"$WORK/apt.log" 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >>"$WORK/apt.log" 2>&1 ||
        { tail -20 "$WORK/apt.log" >&2; die "apt-get install failed"; }
}
install_missing
for t in cargo taskset timeout wrk h2load nginx openssl python3 curl; do have "$t" || die "$t is required"; done
[[ $(nproc) -ge 2 ]] || log "warning: one CPU online: PROXY_CPU and LOAD_CPU overlap"
CLK_TCK=$(getconf CLK_TCK)

# ------------------------------------------------------------------ build
if [[ $SKIP_BUILD != 1 ]]; then
    log "building drainproxy and bench_upstream (cargo build --release)"
    cargo build --release --bin drainproxy >"$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log" >&2; die "build failed"; }
    if [[ -f examples/bench_upstream.rs ]]; then
        cargo build --release --example bench_upstream >>"$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log" >&2; die "build failed"; }
    else
        cargo build --release --bin demo-upstream >>"$WORK/build.log" 2>&1 || { tail -30 "$WORK/build.log" >&2; die "build failed"; }
    fi
fi
DP=$TARGET_DIR/release/drainproxy
if [[ -x $TARGET_DIR/release/examples/bench_upstream ]]; then
    UPSTREAM=$TARGET_DIR/release/examples/bench_upstream
else
    UPSTREAM=$TARGET_DIR/release/demo-upstream
fi
[[ -x $DP && -x $UPSTREAM ]] || die "binaries not built in $TARGET_DIR/release"

# ------------------------------------------------------------ certificate
CERT=$WORK/cert.pem
KEYF=$WORK/key.pem
case $KEY in
    rsa) KEYSPEC=(-newkey rsa:2048) KEYDESC="RSA 2048" ;;
    ec) KEYSPEC=(-newkey ec -pkeyopt ec_paramgen_curve:P-256) KEYDESC="ECDSA P-256" ;;
    *) die "KEY must be rsa or ec" ;;
esac
openssl req -x509 "${KEYSPEC[@]}" -nodes -keyout "$KEYF" -out "$CERT" -days 2 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost -addext basicConstraints=critical,CA:FALSE >"$WORK/openssl.log" 2>&1 ||
    { cat "$WORK/openssl.log" >&2; die "openssl req failed"; }

# --------------------------------------------------------------- servers
wait_port() { # port: up to 10s
    local i
    for ((i = 0; i < 200; i++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    return 1
}
wait_line() { # file regex: up to 10s; prints the line
    local i l
    for ((i = 0; i < 200; i++)); do
        l=$(grep -m1 -E "$2" "$1" 2>/dev/null || true)
        [[ -n $l ]] && { echo "$l"; return 0; }
        sleep 0.05
    done
    return 1
}
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

log "starting the upstream ($(basename "$UPSTREAM")) on core $LOAD_CPU"
taskset -c "$LOAD_CPU" "$UPSTREAM" --listen 127.0.0.1:0 >"$WORK/upstream.out" 2>&1 &
track $!
UP_ADDR=$(wait_line "$WORK/upstream.out" '^listening ' | awk '{print $2}') || die "the upstream did not start"

log "starting drainproxy (TLS, $KEYDESC) on core $PROXY_CPU"
taskset -c "$PROXY_CPU" "$DP" --listen 127.0.0.1:0 --admin off --upstream "$UP_ADDR" \
    --tls-cert "$CERT" --tls-key "$KEYF" --log-format text >"$WORK/drainproxy.log" 2>&1 &
DP_PID=$!
track $DP_PID
DP_PORT=$(wait_line "$WORK/drainproxy.log" ' listening addr=' | sed -E 's/.*addr=[^ ]*:([0-9]+).*/\1/') ||
    { cat "$WORK/drainproxy.log" >&2; die "drainproxy did not start"; }

NGX=$WORK/nginx
NGX_PORT=$(free_port)
mkdir -p "$NGX/tmp"
# As root, nginx would switch its worker to "nobody", who cannot read the key in $WORK.
NGX_USER=""
[[ $EUID -eq 0 ]] && NGX_USER="user $(id -un) $(id -gn);"
cat >"$NGX/nginx.conf" <<EOF
# Generated by bench/tls.sh: nginx as the equivalent TLS-terminating reverse proxy.
$NGX_USER
worker_processes 1;
daemon off;
pid $NGX/nginx.pid;
error_log $NGX/error.log warn;
events { worker_connections 8192; use epoll; }
http {
    access_log off;
    client_body_temp_path $NGX/tmp/client;
    proxy_temp_path $NGX/tmp/proxy;
    fastcgi_temp_path $NGX/tmp/fastcgi;
    uwsgi_temp_path $NGX/tmp/uwsgi;
    scgi_temp_path $NGX/tmp/scgi;
    tcp_nodelay on;
    keepalive_timeout 300s;
    keepalive_requests 1000000;
    upstream app {
        server $UP_ADDR;
        keepalive 256;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NGX_PORT ssl http2;
        ssl_certificate $CERT;
        ssl_certificate_key $KEYF;
        # nginx 1.22's default lacks TLS 1.3; drainproxy (rustls) offers 1.2 and 1.3.
        ssl_protocols TLSv1.2 TLSv1.3;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            # What drainproxy adds too.
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
        }
    }
}
EOF
log "starting nginx (TLS, $KEYDESC, 1 worker) on core $PROXY_CPU"
taskset -c "$PROXY_CPU" nginx -p "$NGX" -e "$NGX/error.log" -c "$NGX/nginx.conf" >"$WORK/nginx.out" 2>&1 &
NGX_MASTER=$!
track $NGX_MASTER
wait_port "$NGX_PORT" || { cat "$NGX/error.log" "$WORK/nginx.out" >&2 || true; die "nginx did not start"; }
NGX_WORKER=
for ((i = 0; i < 100; i++)); do
    NGX_WORKER=$(pgrep -P "$NGX_MASTER" | head -1 || true)
    [[ -n $NGX_WORKER ]] && break
    sleep 0.05
done
[[ -n $NGX_WORKER ]] || die "no nginx worker"

declare -A PORT=([drainproxy]=$DP_PORT [nginx]=$NGX_PORT)
declare -A CPU_PID=([drainproxy]=$DP_PID [nginx]=$NGX_WORKER)
TARGETS=(drainproxy nginx)

# What each one negotiates with an OpenSSL client, and whether it resumes sessions.
negotiated() { # port
    # A whole HTTP/1.0 exchange, so the client also reads the TLS 1.3 session tickets sent after the handshake.
    local req='GET / HTTP/1.0\r\nHost: localhost\r\n\r\n' out proto kx r
    out=$(printf %b "$req" | timeout 5 openssl s_client -connect "127.0.0.1:$1" -servername localhost -alpn http/1.1 \
        -ign_eof -sess_out "$WORK/sess" 2>/dev/null || true)
    proto=$(grep -m1 -E '^New,' <<<"$out" | sed 's/^New, //' || true)
    kx=$(grep -m1 'Server Temp Key' <<<"$out" | sed 's/.*: //' || true)
    r=$(printf %b "$req" | timeout 5 openssl s_client -connect "127.0.0.1:$1" -servername localhost -alpn http/1.1 \
        -ign_eof -sess_in "$WORK/sess" 2>/dev/null | grep -cE '^Reused,' || true)
    echo "${proto:-?}, key exchange ${kx:-?}, session resumption: $([[ $r -ge 1 ]] && echo yes || echo no)"
}
declare -A NEGOTIATED
for t in "${TARGETS[@]}"; do
    NEGOTIATED[$t]=$(negotiated "${PORT[$t]}")
    log "$t: ${NEGOTIATED[$t]}"
    # Each proxy answers through the upstream before anything is measured.
    code=$(timeout 5 curl -sk -o /dev/null -w '%{http_code}' "https://127.0.0.1:${PORT[$t]}/") || true
    [[ $code == 200 ]] || die "$t did not answer 200 over HTTPS (got '$code')"
done

# ------------------------------------------------------------ measuring
cpu_ticks() { local s; { s=$(<"/proc/$1/stat"); } 2>/dev/null || { echo 0; return; }; s=${s##*) }; set -- $s; echo $((${12} + ${13})); }
now() { date +%s.%N; }

# Each measurement prints its rate (on failure it shows the tool's output and the rate is NA).
with_cpu() { # target command...: runs it, prints "RATE CPU%" (the proxy's CPU use meanwhile)
    local t=$1 c0 c1 t0 t1 rate
    shift
    c0=$(cpu_ticks "${CPU_PID[$t]}")
    t0=$(now)
    rate=$("$@") || rate=NA
    t1=$(now)
    c1=$(cpu_ticks "${CPU_PID[$t]}")
    awk -v r="$rate" -v c=$((c1 - c0)) -v a="$t0" -v b="$t1" -v hz="$CLK_TCK" \
        'BEGIN { printf "%s %.1f\n", r, 100 * c / hz / (b - a) }'
}

full_handshakes() { # port: HS_CLIENTS parallel s_time loops; new connections per second
    local port=$1 i t0 t1 n=0 f pids=()
    t0=$(now)
    for ((i = 0; i < HS_CLIENTS; i++)); do
        taskset -c "$LOAD_CPU" timeout $((DURATION + 20)) openssl s_time -connect "127.0.0.1:$port" -new \
            -time "$DURATION" -www / >"$WORK/s_time.$i" 2>&1 &
        pids+=($!)
    done
    for i in "${pids[@]}"; do wait "$i" || true; done
    t1=$(now)
    for ((i = 0; i < HS_CLIENTS; i++)); do
        f=$WORK/s_time.$i
        # "N connections in X real seconds, B bytes read per connection": B > 0 proves answers came back.
        grep -qE 'connections in [0-9]+ real seconds, [1-9][0-9]* bytes read per connection' "$f" || { cat "$f" >&2; return 1; }
        n=$((n + $(grep -m1 -oE '^[0-9]+ connections in [0-9]+ real' "$f" | awk '{print $1}')))
    done
    awk -v n="$n" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f\n", n / (b - a) }'
}

reconnect() { # port: h2load, one request per connection
    local out=$WORK/reconnect.out
    taskset -c "$LOAD_CPU" timeout 60 h2load --h1 -n "$RECONNECT_N" -c 16 -H 'Connection: close' \
        "https://127.0.0.1:$1/" >"$out" 2>&1 || { cat "$out" >&2; return 1; }
    grep -qE "requests: $RECONNECT_N total, .* $RECONNECT_N succeeded" "$out" || { cat "$out" >&2; return 1; }
    grep -m1 -oE '[0-9.]+ req/s' "$out" | awk '{printf "%.0f\n", $1}'
}

keepalive() { # port: wrk keep-alive
    local out=$WORK/wrk.out
    taskset -c "$LOAD_CPU" timeout $((DURATION + 20)) wrk -t1 -c"$CONNS" -d"${DURATION}s" \
        "https://127.0.0.1:$1/" >"$out" 2>&1 || { cat "$out" >&2; return 1; }
    ! grep -qE 'Non-2xx|Socket errors' "$out" || { cat "$out" >&2; return 1; }
    grep -m1 'Requests/sec:' "$out" | awk '{printf "%.0f\n", $2}'
}

h2() { # port: h2load over TLS, ALPN h2
    local out=$WORK/h2.out
    taskset -c "$LOAD_CPU" timeout $((DURATION + 20)) h2load -D "$DURATION" -c "$H2_CONNS" -m "$H2_STREAMS" \
        "https://127.0.0.1:$1/" >"$out" 2>&1 || { cat "$out" >&2; return 1; }
    grep -q 'Application protocol: h2' "$out" && grep -qE ' 0 failed, 0 errored' "$out" || { cat "$out" >&2; return 1; }
    grep -m1 -oE '[0-9.]+ req/s' "$out" | awk '{printf "%.0f\n", $1}'
}

TESTS=(full reconnect keepalive h2)
declare -A FN=([full]=full_handshakes [reconnect]=reconnect [keepalive]=keepalive [h2]=h2)
declare -A DESC=(
    [full]="full TLS 1.3 handshake (new session, 1 GET)"
    [reconnect]="new connection per request (resumption allowed)"
    [keepalive]="HTTPS/1.1 keep-alive request ($CONNS conns)"
    [h2]="h2 over TLS request ($H2_CONNS conns x $H2_STREAMS streams)"
)
declare -A TOOL=(
    [full]="${HS_CLIENTS}x \`openssl s_time -new -www /\`"
    [reconnect]="\`h2load --h1 -c16 -H 'Connection: close'\`"
    [keepalive]="\`wrk -t1 -c$CONNS -d${DURATION}s\`"
    [h2]="\`h2load -c$H2_CONNS -m$H2_STREAMS -D$DURATION\`"
)

background_busy() { # % busy of the whole machine over one second, with nothing of ours loaded
    local a b
    a=$(awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat)
    sleep 1
    b=$(awk '/^cpu / { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat)
    awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " "); d = y[2] - x[2]; printf "%.0f\n", (d > 0) ? 100 * (y[1] - x[1]) / d : 0 }'
}
BUSY_BEFORE=$(background_busy)
((BUSY_BEFORE < 15)) || log "warning: the machine is already ${BUSY_BEFORE}% busy: the numbers will be noisy"

# Warm both up (allocators, upstream pools, session caches) without measuring.
for t in "${TARGETS[@]}"; do
    taskset -c "$LOAD_CPU" timeout 20 wrk -t1 -c"$CONNS" -d1s "https://127.0.0.1:${PORT[$t]}/" >/dev/null 2>&1 || true
done

declare -A RES   # "test target round" -> "RATE CPU%"
for ((r = 1; r <= ROUNDS; r++)); do
    for test in "${TESTS[@]}"; do
        # Alternate which proxy goes first, so drift over the run hits both alike.
        order=("${TARGETS[@]}")
        ((r % 2 == 0)) && order=(nginx drainproxy)
        for t in "${order[@]}"; do
            RES["$test $t $r"]=$(with_cpu "$t" "${FN[$test]}" "${PORT[$t]}")
            log "round $r/$ROUNDS $test $t: ${RES["$test $t $r"]% *}/s, proxy CPU ${RES["$test $t $r"]#* }%"
        done
    done
done
# The proxies must still be the ones we started (a crash would make every number meaningless).
ours "$DP_PID" && kill -0 "$DP_PID" 2>/dev/null || die "drainproxy died during the run"
ours "$NGX_MASTER" && kill -0 "$NGX_MASTER" 2>/dev/null || die "nginx died during the run"

# ------------------------------------------------------------ reporting
median() { # values...: median of the numeric ones, NA if none
    printf '%s\n' "$@" | grep -E '^[0-9.]+$' | sort -n |
        awk '{ v[NR] = $1 } END { if (NR == 0) print "NA"; else if (NR % 2) print v[(NR + 1) / 2]; else { x = (v[NR / 2] + v[NR / 2 + 1]) / 2; if (x == int(x)) print x; else printf "%.1f\n", x } }'
}
cell() { # test target: "rate cpu% us-per-op", each the median over the rounds
    local rates=() cpus=() uss=() v
    for ((r = 1; r <= ROUNDS; r++)); do
        v=${RES["$1 $2 $r"]}
        rates+=("${v% *}")
        cpus+=("${v#* }")
        uss+=("$(per_op "$v")")
    done
    echo "$(median "${rates[@]}") $(median "${cpus[@]}") $(median "${uss[@]}")"
}
per_op() { # "RATE CPU%": µs of proxy CPU per request / handshake
    awk -v r="${1% *}" -v c="${1#* }" 'BEGIN { if (r ~ /^[0-9.]+$/ && r > 0) printf "%.1f", c * 10000 / r; else print "NA" }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b > 0) printf "%.2f", a / b; else print "NA" }'; }

TABLE=$WORK/table.md
{
    echo "| measurement | tool | drainproxy CPU/op | nginx CPU/op | **CPU/op nginx/drainproxy** | drainproxy rate | nginx rate | **rate drainproxy/nginx** |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|"
    for test in "${TESTS[@]}"; do
        read -r dr dc du <<<"$(cell "$test" drainproxy)"
        read -r nr nc nu <<<"$(cell "$test" nginx)"
        echo "| ${DESC[$test]} | ${TOOL[$test]} | $du µs | $nu µs | **$(ratio "$nu" "$du")** | $dr/s (CPU $dc%) | $nr/s (CPU $nc%) | **$(ratio "$dr" "$nr")** |"
    done
} >"$TABLE"
ROUNDS_TABLE=$WORK/rounds.md
{
    echo "| round | measurement | drainproxy | nginx |"
    echo "|---:|---|---:|---:|"
    for ((r = 1; r <= ROUNDS; r++)); do
        for test in "${TESTS[@]}"; do
            d=${RES["$test drainproxy $r"]} n=${RES["$test nginx $r"]}
            echo "| $r | $test | ${d% *}/s (CPU ${d#* }%, $(per_op "$d") µs/op) | ${n% *}/s (CPU ${n#* }%, $(per_op "$n") µs/op) |"
        done
    done
} >"$ROUNDS_TABLE"
BUSY_AFTER=$(background_busy)

{
    echo "# TLS: drainproxy vs nginx"
    echo
    echo "Generated by \`bench/tls.sh\` ($(date -u +%Y-%m-%dT%H:%MZ)); DURATION=$DURATION ROUNDS=$ROUNDS KEY=$KEY HS_CLIENTS=$HS_CLIENTS."
    echo "Both proxies terminate TLS with the same $KEYDESC self-signed certificate in front of the same"
    echo "upstream ($(basename "$UPSTREAM")), over loopback. Each is pinned to core $PROXY_CPU; the load"
    echo "generators and the upstream share core $LOAD_CPU. Medians of $ROUNDS interleaved rounds; \"CPU\" is"
    echo "the proxy's own CPU use during the measurement (100% = the whole core)."
    echo
    cat "$TABLE"
    echo
    echo "- **full**: the handshake rate for new clients. \`openssl s_time -new\` makes a new session for every"
    echo "  connection (no resumption), completes a TLS 1.3 handshake, sends \`GET / HTTP/1.0\` and reads the"
    echo "  answer until the server closes; $HS_CLIENTS of them run in parallel for ${DURATION}s. (h2load and wrk"
    echo "  resume sessions on reconnect, so they cannot measure full handshakes.)"
    echo "- **reconnect**: \`h2load --h1 -n $RECONNECT_N -c 16 -H 'Connection: close'\`: every request on a new"
    echo "  connection, which h2load opens by resuming the previous session when the server allows it."
    echo "- **CPU/op**: the proxy's own CPU time (utime+stime from /proc) per handshake or request. Above 1,"
    echo "  nginx/drainproxy means drainproxy spends less CPU per operation. It is the fairer comparison"
    echo "  here: on a 2-core machine the clients and the upstream share one core, so a proxy often is not"
    echo "  the bottleneck (its CPU share stays below ~90%), and other work on the machine moves the rates"
    echo "  far more than the CPU per operation."
    echo "- **rate**: what the client measured, with the proxy's CPU share meanwhile; the ratio is"
    echo "  meaningful only where both proxies ran near 100% on a quiet machine."
    echo "- Machine busy with other work: ${BUSY_BEFORE}% just before the measurements, ${BUSY_AFTER}% just after"
    echo "  (of both cores, over one second with nothing of this run loaded)."
    echo
    echo "Negotiated with an OpenSSL client:"
    echo
    for t in "${TARGETS[@]}"; do echo "- $t: ${NEGOTIATED[$t]}"; done
    echo
    echo "Every round:"
    echo
    cat "$ROUNDS_TABLE"
    echo
    echo "Machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')); $(nginx -v 2>&1);"
    echo "$(openssl version); $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2); h2load $(h2load --version | awk '{print $2}');"
    echo "drainproxy $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO" diff --quiet HEAD -- src Cargo.toml Cargo.lock 2>/dev/null || echo ' + uncommitted changes in src/') (rustls, ring)."
} >"$OUT"

echo
cat "$TABLE"
echo
log "wrote $OUT"
