#!/usr/bin/env bash
# The "bounded under heavy input" goals, measured on a fresh 3-member Cairn
# cluster (release build) and printed as a Markdown table:
#
#  1. lease keep-alive (64 clients) with 1,000 and with 100,000 leases held,
#     p50/p99, and how late a 3 s lease expires with 100,000 leases held;
#  2. a paged list (`range --limit 10`, linearizable) over 1,000 and over
#     100,000 keys of 1 KiB: latency, and the serving member's peak RSS
#     growth during the pages;
#  3. 10,000 watches on one stream (the JSON gateway's /v3/watch) whose
#     client never reads, while 2,000 puts of 1 KiB land in what they watch:
#     the member's RSS growth;
#  4. linearizable gets (8 clients) alone, and while two clients without a
#     token send 1.4 MiB txns of 20,000 ops and 5 MiB bodies to the JSON
#     gateway in a loop: p50/p99 of the gets; the same against etcd 3.4.
#
#   bench/bounded.sh
#
# Env: CAIRN_BIN (default: release build, built here), BENCH_WORKDIR,
# BOUNDED_SECTIONS (which of the sections above to run; default "1 2 3 4"),
# HOSTILE_KINDS (section 4's hostile clients: "txn", "big" or both, the default;
# "grpc" sends the txn client's 20,000 ops as gRPC messages instead of JSON,
# paced by HOSTILE_GRPC_PAUSE seconds, and reports the member's CPU per txn),
# HOSTILE_GRPC_NESTED=1 nests those ops in a txn one level down, which the
# byte screen leaves to tonic and the checks after decoding;
# HOSTILE_SINK=1 (the control: the JSON hostile clients send to a process
# that reads their bytes at the member's refusal pace, not to the member).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
export ETCDCTL_API=3
log() { printf '[bounded %s] %s\n' "$(date +%T)" "$*" >&2; }

if [ -z "${CAIRN_BIN:-}" ]; then
    log "building cairn (release)"
    cargo build --release --bin cairn -q
    CAIRN_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/cairn"
fi
WORK=${BENCH_WORKDIR:-$(mktemp -d /tmp/cairn-bounded.XXXXXX)}
RES="$WORK/results"
mkdir -p "$RES" "$WORK/logs"

# shellcheck source=bench/cluster.sh
. "$ROOT/bench/cluster.sh"
cleanup() {
    stop_cluster cairn
    stop_cluster etcd
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

EPS=$(endpoints cairn)
EP0=$(client_url cairn 0)
PID0() { echo "${PIDS[cairn:0]}"; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hwm_kib() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }
# Resets the peak RSS the kernel keeps for a process (VmHWM).
reset_hwm() { echo 5 >"/proc/$1/clear_refs"; }
bench_json() { "$CAIRN_BIN" --log-level error bench --endpoints "$EPS" --json "$@"; }
# p50 and p99 (ms) of a bench JSON result.
lat() { python3 -c 'import json,sys; l=json.load(sys.stdin)["latency"]; print("%.2f / %.2f" % (l["p50_ms"], l["p99_ms"]))'; }

want() { [[ " ${BOUNDED_SECTIONS:-1 2 3 4} " == *" $1 "* ]]; }
ROWS=()
row() { ROWS+=("| $1 | $2 |"); }

# --- 1. leases ----------------------------------------------------------------
if want 1; then
for held in 1000 100000; do
    fresh_cluster cairn
    log "lease keep-alive with $held leases held"
    r=$(bench_json --conns 8 --clients 64 --duration 10s lease-keepalive --idle-leases "$held")
    row "lease keep-alive p50 / p99 (ms), $held leases held" "$(lat <<<"$r")"
    if [ "$held" = 100000 ]; then
        id=$(etcdctl --endpoints="$EPS" lease grant 3 | awk '{print $2}')
        t0=$(date +%s.%N)
        etcdctl --endpoints="$EPS" put expiring v --lease="$id" >/dev/null
        until [ -z "$(etcdctl --endpoints="$EPS" get expiring --print-value-only)" ]; do
            sleep 0.05
        done
        late=$(python3 -c "import time; print('%.2f' % (time.time() - $t0 - 3))")
        row "a 3 s lease's key deleted after TTL + (s), 100,000 leases held" "$late"
    fi
    stop_cluster cairn
done
fi

# --- 2. paged list ------------------------------------------------------------
if want 2; then
for keys in 1000 100000; do
    fresh_cluster cairn
    log "loading $keys keys of 1 KiB"
    bench_json --conns 4 --clients 32 --total "$keys" --sequential-keys --key-space "$keys" \
        --val-size 1024 put >/dev/null
    pid=$(PID0)
    reset_hwm "$pid"
    base=$(rss_kib "$pid")
    r=$("$CAIRN_BIN" --log-level error bench --endpoints "$EP0" --json --clients 1 --duration 5s \
        range 0 : --limit 10 --consistency l)
    row "paged list p50 / p99 (ms), $keys keys of 1 KiB" "$(lat <<<"$r")"
    row "paged list: peak RSS above the start (MiB), $keys keys" \
        "$(( ($(hwm_kib "$pid") - base) / 1024 ))"
    stop_cluster cairn
done
fi

# --- 3. watches that are never read -------------------------------------------
if want 3; then
fresh_cluster cairn
pid=$(PID0)
before=$(rss_kib "$pid")
log "10,000 watches on one stream that never reads"
python3 - "$EP0" <<'EOF' &
import base64, json, socket, sys, time
host, port = sys.argv[1].removeprefix("http://").split(":")
s = socket.create_connection((host, int(port)))
s.sendall(b"POST /v3/watch HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
key = base64.b64encode(b"w/").decode()
end = base64.b64encode(b"w0").decode()
for _ in range(10000):
    msg = json.dumps({"create_request": {"key": key, "range_end": end}}).encode()
    s.sendall(b"%x\r\n%s\r\n" % (len(msg), msg))
time.sleep(120)  # never reads; killed by the script
EOF
reader=$!
sleep 5
# 2,000 puts of 1 KiB into the watched prefix, through another connection.
python3 - "$EPS" <<'EOF'
import base64, json, sys, urllib.request
ep = sys.argv[1].split(",")[0]
v = base64.b64encode(b"x" * 1024).decode()
for i in range(2000):
    k = base64.b64encode(b"w/%d" % (i % 10)).decode()
    req = urllib.request.Request(ep + "/v3/kv/put", json.dumps({"key": k, "value": v}).encode())
    urllib.request.urlopen(req).read()
EOF
sleep 3
after=$(rss_kib "$pid")
row "10,000 never-read watches on one stream + 2,000 puts of 1 KiB: RSS growth (MiB)" \
    "$(( (after - before) / 1024 ))"
kill "$reader" 2>/dev/null || true
wait "$reader" 2>/dev/null || true

stop_cluster cairn
fi

# --- 4. normal requests beside a hostile client ---------------------------------
# Run against etcd 3.4 too (when installed): the hostile clients share the
# machine's two cores with the member, so etcd's figures say what of the
# slowdown is the machine's and what is the member's.
if want 4; then
for store in cairn etcd; do
if [ "$store" = etcd ] && ! command -v etcd >/dev/null; then
    log "etcd not installed: section 4 runs against Cairn only"
    continue
fi
fresh_cluster "$store"
eps=$(endpoints "$store")
ep0=$(client_url "$store" 0)
name=$([ "$store" = cairn ] && echo Cairn || echo "etcd 3.4")
if [ -n "${HOSTILE_SINK:-}" ]; then
    # The control: the hostile clients send to a process of their own that
    # reads their bodies at the member's refusal pace (32 MiB/s) and answers
    # 400, so what the gets lose is what sharing the machine with that
    # traffic costs, not what the member does with it.
    python3 - 23999 <<'EOF' &
import socket, sys, threading, time
PACE = 32 << 20
lock, nxt = threading.Lock(), [0.0]
def paced(n):
    with lock:
        now = time.monotonic()
        start = max(nxt[0], now)
        nxt[0] = start + n / PACE
    time.sleep(max(0.0, start + n / PACE - now))
def serve(c):
    with c:
        head = b""
        while b"\r\n\r\n" not in head:
            d = c.recv(65536)
            if not d:
                return
            head += d
        h, rest = head.split(b"\r\n\r\n", 1)
        length = next(int(l.split(b":")[1]) for l in h.split(b"\r\n")
                      if l.lower().startswith(b"content-length:"))
        got = len(rest)
        paced(got)
        while got < length:
            d = c.recv(1 << 20)
            if not d:
                return
            got += len(d)
            paced(len(d))
        c.sendall(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(64)
end = time.time() + 90
while time.time() < end:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
EOF
    sink=$!
    hostile_ep=http://127.0.0.1:23999
else
    sink=
    hostile_ep=$ep0
fi
etcdctl --endpoints="$eps" put k v >/dev/null
gets() { "$CAIRN_BIN" --log-level error bench --endpoints "$eps" --json \
    --conns 2 --clients 8 --duration 8s range k --consistency l; }
row "$name: linearizable get p50 / p99 (ms), quiet" "$(gets | lat)"
hostile=()
for kind in ${HOSTILE_KINDS:-txn big}; do
    if [ "$kind" = grpc ]; then
        # The txn client's 20,000 ops as one gRPC message (1.4 MB of
        # protobuf), sent by curl over HTTP/2 without a token.
        python3 - "$WORK/txn.grpc" "${HOSTILE_GRPC_NESTED:-}" <<'EOF'
import sys
def varint(n):
    out = b""
    while True:
        b, n = n & 0x7F, n >> 7
        if not n:
            return out + bytes([b])
        out += bytes([b | 0x80])
def field(num, payload):
    return varint(num << 3 | 2) + varint(len(payload)) + payload
msg = b"".join(field(2, field(2, field(1, b"h%d" % i) + field(2, b"v" * 56)))
               for i in range(20000))
if sys.argv[2]:
    # One level down: the only success op of the txn is a txn of them.
    msg = field(2, field(4, msg))
open(sys.argv[1], "wb").write(b"\0" + len(msg).to_bytes(4, "big") + msg)
EOF
        # The trap: a subshell in a loop would otherwise outlive the kill below.
        # Paced (HOSTILE_GRPC_PAUSE, default 0.05 s between requests): each
        # curl costs this machine ~20 ms of CPU to start, so unpaced, a store
        # that refuses faster would be measured beside a hungrier client.
        : >"$WORK/hostile.count"
        (trap 'exit 0' TERM; end=$((SECONDS + 60)); while [ $SECONDS -lt $end ]; do
            curl -s -o /dev/null --http2-prior-knowledge -H 'content-type: application/grpc' \
                -H 'te: trailers' --data-binary @"$WORK/txn.grpc" "$ep0/etcdserverpb.KV/Txn" || true
            echo >>"$WORK/hostile.count"
            sleep "${HOSTILE_GRPC_PAUSE:-0.05}"
        done) &
        hostile+=($!)
        # What each one costs the member it is sent to, over 4 s of it alone.
        sleep 1
        member=${PIDS[$store:0]}
        c0=$(cpu_ticks "$member"); n0=$(wc -l <"$WORK/hostile.count")
        sleep 4
        c1=$(cpu_ticks "$member"); n1=$(wc -l <"$WORK/hostile.count")
        row "$name: member CPU per hostile gRPC txn (ms); txns per second" \
            "$(awk -v c=$((c1 - c0)) -v n=$((n1 - n0)) -v t="$(getconf CLK_TCK)" \
                'BEGIN { printf "%.2f; %.1f", n ? c * 1000 / t / n : 0, n / 4 }')"
        continue
    fi
    python3 - "$hostile_ep" "$kind" <<'EOF' &
import base64, json, sys, time, urllib.request, urllib.error
ep, kind = sys.argv[1], sys.argv[2]
if kind == "txn":
    ops = [{"request_put": {"key": base64.b64encode(b"h%d" % i).decode(), "value": ""}}
           for i in range(20000)]
    body = json.dumps({"success": ops}).encode()
    path = "/v3/kv/txn"
else:
    body = json.dumps({"key": "aA==", "value": "a" * (5 << 20)}).encode()
    path = "/v3/kv/put"
end = time.time() + 60
while time.time() < end:
    try:
        urllib.request.urlopen(urllib.request.Request(ep + path, body), timeout=10).read()
    except (urllib.error.URLError, OSError):
        pass
EOF
    hostile+=($!)
done
sleep 1
beside="2 hostile clients (1.4 MiB txns, 5 MiB bodies, no token)"
[ -z "${HOSTILE_KINDS:-}" ] || beside="hostile clients: $HOSTILE_KINDS (no token)"
[ -z "$sink" ] || beside="$beside, sent to a pacing sink instead of the member"
row "$name: the same beside $beside" "$(gets | lat)"
kill "${hostile[@]}" $sink 2>/dev/null || true
wait "${hostile[@]}" $sink 2>/dev/null || true
stop_cluster "$store"
done
fi

echo "| measure | result |"
echo "|---|---|"
printf '%s\n' "${ROWS[@]}"
