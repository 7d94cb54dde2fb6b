#!/usr/bin/env bash
# Gateway cost per request in CPU instructions, which a noisy shared machine
# does not move (wall-clock req/s does): a release `cairn gateway` (or nginx
# as a plain reverse proxy) runs under `valgrind --tool=callgrind`; after a
# warm-up the counters are zeroed, a fixed number of keep-alive requests is
# sent, the counters are dumped and divided by the requests served.
# User-space instructions only: syscalls are counted apart (`--syscalls`,
# with strace), since valgrind does not see the kernel.
#
#   bench/gateway-cost.sh [--requests N] [--conns C] [--syscalls] [--keep] [WORKLOAD...]
#
# Workloads: one (1 route, no plugins), plugins (1,000 routes, key-auth +
# limit-count + prometheus on the matched one), nginx (the reference proxy,
# one worker). Default: one plugins nginx. N=2000, C=8.
# Env: CAIRN_BIN (default target/release/cairn). Needs nginx, valgrind,
# etcdctl, curl, python3 (and strace for --syscalls).
# Prints "workload: I instructions/request (N requests)"; with --keep the
# callgrind files stay in the printed work dir for callgrind_annotate.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
# shellcheck source=bench/single_store.sh
. "$ROOT/bench/single_store.sh"

N=2000
CONNS=8
KEEP=0
SYSCALLS=0
WORKLOADS=()
while [ $# -gt 0 ]; do
    case "$1" in
    --requests) N=$2; shift ;;
    --conns) CONNS=$2; shift ;;
    --keep) KEEP=1 ;;
    --syscalls) SYSCALLS=1 ;;
    -h | --help) sed -n '2,18p' "$0"; exit 0 ;;
    one | plugins | nginx) WORKLOADS+=("$1") ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
[ ${#WORKLOADS[@]} -gt 0 ] || WORKLOADS=(one plugins nginx)
for tool in nginx valgrind callgrind_control etcdctl curl python3; do
    command -v "$tool" >/dev/null || { echo "gateway-cost.sh needs $tool" >&2; exit 1; }
done
[ "$SYSCALLS" = 0 ] || command -v strace >/dev/null || { echo "--syscalls needs strace" >&2; exit 1; }
NGINX=$(command -v nginx)
CAIRN_BIN=${CAIRN_BIN:-$ROOT/target/release/cairn}
[ -x "$CAIRN_BIN" ] || { echo "no $CAIRN_BIN (cargo build --release --bin cairn)" >&2; exit 1; }

WORK=$(mktemp -d /tmp/cairn-gwcost.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    if [ "$KEEP" = 1 ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

STORE=127.0.0.1:43379 PEER=127.0.0.1:43380
UP_PORT=43080 NGX_PORT=43081 GW_PORT=43082 GW_TLS=43083 GW_METRICS=43084
export ETCDCTL_API=3
EP=http://$STORE

wait_http() { # url, what, tries
    for _ in $(seq 1 "${3:-300}"); do
        curl -s -o /dev/null "$1" && return 0
        sleep 0.2
    done
    echo "$2 did not come up" >&2
    exit 1
}

# The fixed-count client: C keep-alive connections (one thread each), N
# requests in all; fails unless every answer is 200.
cat >"$WORK/client.py" <<'PY'
import http.client, sys, threading
port, n, conns, path = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
headers = dict(h.split(": ", 1) for h in sys.argv[5:])
bad = []
def run(k):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    for _ in range(k):
        c.request("GET", path, headers=headers)
        r = c.getresponse()
        r.read()
        if r.status != 200:
            bad.append(r.status)
ts = [threading.Thread(target=run, args=(n // conns + (i < n % conns),)) for i in range(conns)]
for t in ts: t.start()
for t in ts: t.join()
if bad:
    sys.exit("%d non-200 answers, e.g. %s" % (len(bad), bad[0]))
PY
client() { python3 "$WORK/client.py" "$@"; }

# The upstream (nginx `return 200`) runs outside valgrind throughout.
start_nginx() { # dir, server blocks, wrapper...
    local dir=$1 servers=$2
    shift 2
    mkdir -p "$dir"
    cat >"$dir/nginx.conf" <<CONF
worker_processes 1;
master_process off;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $dir;
    proxy_temp_path $dir;
    fastcgi_temp_path $dir;
    uwsgi_temp_path $dir;
    scgi_temp_path $dir;
    upstream backend { server 127.0.0.1:$UP_PORT; keepalive 320; }
    $servers
}
CONF
    "$@" "$NGINX" -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" >"$dir/out.log" 2>&1 &
    PIDS+=($!)
    LAST_PID=$!
}
start_nginx "$WORK/upstream" "server { listen 127.0.0.1:$UP_PORT; location / { return 200 \"ok\n\"; } }"
wait_http "http://127.0.0.1:$UP_PORT/" "the upstream nginx"

# Zeroes the counters of `pid`, runs the client, dumps; prints instructions.
measure() { # pid, out file, client args...
    local pid=$1 out=$2
    shift 2
    callgrind_control -z "$pid" >/dev/null
    client "$@"
    callgrind_control -d "$pid" >/dev/null
    sleep 1
    local f
    f=$(ls -t "$out".* 2>/dev/null | grep -v '\.0$' | head -1 || true)
    [ -n "$f" ] || f=$out
    awk '/^summary:|^totals:/ {print $2; exit}' "$f"
}

# Syscalls per request: strace attached around the same fixed-count run.
count_syscalls() { # pid, label, client args...
    local pid=$1 label=$2
    shift 2
    strace -q -f -c -p "$pid" -o "$WORK/$label.strace" &
    local st=$!
    sleep 1
    client "$@"
    sleep 0.5
    kill -INT "$st"
    wait "$st" 2>/dev/null || true
    # strace -c's last row: "100.00 secs usecs/call calls [errors] total".
    awk -v n="$N" -v l="$label" '$NF == "total" {t=$4} END {printf "%s: %.1f syscalls/request\n", l, t/n}' "$WORK/$label.strace"
}

need_store() {
    [ -z "${STORE_UP:-}" ] || return 0
    start_single_store c1
    STORE_UP=1
}

UPSTREAM="{\"nodes\":{\"127.0.0.1:$UP_PORT\":1}}"
# Writes the routes of a workload; prints the client's extra header.
routes() { # workload
    etcdctl --endpoints=$EP del --prefix /apisix/ >/dev/null
    if [ "$1" = one ]; then
        etcdctl --endpoints=$EP put /apisix/routes/bench "{\"uri\":\"/bench\",\"upstream\":$UPSTREAM}" >/dev/null
        return
    fi
    etcdctl --endpoints=$EP put /apisix/consumers/bench '{"username":"bench","plugins":{"key-auth":{"key":"bench-key"}}}' >/dev/null
    python3 "$ROOT/bench/put_routes.py" "$STORE" "$UP_PORT" 1 1000
    etcdctl --endpoints=$EP put /apisix/routes/bench "{\"uri\":\"/bench\",\"plugins\":{\"key-auth\":{},\"limit-count\":{\"count\":1000000000,\"time_window\":60},\"prometheus\":{}},\"upstream\":$UPSTREAM}" >/dev/null
}

for w in "${WORKLOADS[@]}"; do
    hdr=()
    [ "$w" = plugins ] && hdr=("apikey: bench-key")
    out=$WORK/callgrind.$w
    if [ "$w" = nginx ]; then
        start_nginx "$WORK/nginx" "server { listen 127.0.0.1:$NGX_PORT; location / {
            proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\";
            proxy_set_header Host \$host; proxy_set_header X-Real-IP \$remote_addr;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; } }" \
            valgrind --tool=callgrind --callgrind-out-file="$out" -q
        pid=$LAST_PID
        port=$NGX_PORT
        wait_http "http://127.0.0.1:$port/bench" "nginx under valgrind"
    else
        need_store
        routes "$w"
        valgrind --tool=callgrind --callgrind-out-file="$out" -q \
            "$CAIRN_BIN" gateway --endpoints "$EP" --listen 127.0.0.1:$GW_PORT \
            --listen-tls 127.0.0.1:$GW_TLS --metrics 127.0.0.1:$GW_METRICS --id cost \
            >"$WORK/gateway.$w.log" 2>&1 &
        pid=$!
        PIDS+=($pid)
        port=$GW_PORT
        for _ in $(seq 1 600); do
            [ "$(curl -s -o /dev/null -w "%{http_code}" "${hdr[@]/#/-H}" "http://127.0.0.1:$port/bench" || true)" = 200 ] && break
            sleep 0.2
        done
    fi
    # Warm-up: pools, lazily built state, the allocator's arenas.
    client "$port" 200 "$CONNS" /bench "${hdr[@]}"
    ir=$(measure "$pid" "$out" "$port" "$N" "$CONNS" /bench "${hdr[@]}")
    awk -v w="$w" -v ir="$ir" -v n="$N" -v c="$CONNS" 'BEGIN {printf "%s: %.0f instructions/request (%d requests, %d connections)\n", w, ir / n, n, c}'
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    if [ "$SYSCALLS" = 1 ]; then
        # Again without valgrind (strace sees the real syscalls).
        if [ "$w" = nginx ]; then
            start_nginx "$WORK/nginx-s" "server { listen 127.0.0.1:$NGX_PORT; location / {
                proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\";
                proxy_set_header Host \$host; proxy_set_header X-Real-IP \$remote_addr;
                proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; } }" env
            pid=$LAST_PID
            wait_http "http://127.0.0.1:$port/bench" "nginx"
        else
            "$CAIRN_BIN" gateway --endpoints "$EP" --listen 127.0.0.1:$GW_PORT \
                --listen-tls 127.0.0.1:$GW_TLS --metrics 127.0.0.1:$GW_METRICS --id cost \
                >"$WORK/gateway-s.$w.log" 2>&1 &
            pid=$!
            PIDS+=($pid)
            for _ in $(seq 1 300); do
                [ "$(curl -s -o /dev/null -w "%{http_code}" "${hdr[@]/#/-H}" "http://127.0.0.1:$port/bench" || true)" = 200 ] && break
                sleep 0.1
            done
        fi
        client "$port" 200 "$CONNS" /bench "${hdr[@]}"
        count_syscalls "$pid" "$w" "$port" "$N" "$CONNS" /bench "${hdr[@]}"
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
done
