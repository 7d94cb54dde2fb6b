#!/usr/bin/env bash
# Gateway benchmark: `cairn gateway` against Debian's nginx as a plain
# reverse proxy, both in front of the same upstream (an nginx answering
# `return 200`), driven by wrk, runs alternated nginx/cairn so machine drift
# hits both; medians go into a "Gateway vs nginx" section of
# bench/RESULTS.md (replaced on each run, the rest of the file kept).
#
#   bench/gateway.sh [--quick] [--runs N] [--out FILE]
#
# Workloads: 1 route without plugins (both proxies), over HTTP and over
# HTTPS (TLS terminated by the proxy: an ECDSA P-256 certificate for
# `localhost`, from the `ssls` resource for cairn, plain HTTP upstream);
# 1,000 routes with key-auth + limit-count + prometheus on the matched route
# (cairn) against nginx without plugins. --quick: 1 run of 5 s each; default 3 runs of 10 s.
# Env: CAIRN_BIN (default target/release/cairn, built here if missing),
# WRK_CONNECTIONS (64), WRK_THREADS (2), GW_KEEP_LOGS (a directory the
# run's logs are copied to on exit). Needs nginx, wrk, etcdctl, curl, openssl.
# Processes are stopped by PID only; the work dir is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
# shellcheck source=bench/single_store.sh
. "$ROOT/bench/single_store.sh"

QUICK=0
RUNS=""
OUT="$ROOT/bench/RESULTS.md"
while [ $# -gt 0 ]; do
    case "$1" in
    --quick) QUICK=1 ;;
    --runs) RUNS=$2; shift ;;
    --out) OUT=$2; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | grep '^#'; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
if [ "$QUICK" = 1 ]; then DUR=5; RUNS=${RUNS:-1}; else DUR=10; RUNS=${RUNS:-3}; fi
CONNS=${WRK_CONNECTIONS:-64}
THREADS=${WRK_THREADS:-2}
for tool in nginx wrk etcdctl curl openssl; do
    command -v "$tool" >/dev/null || { echo "gateway.sh needs $tool" >&2; exit 1; }
done
NGINX=$(command -v nginx)
CAIRN_BIN=${CAIRN_BIN:-$ROOT/target/release/cairn}
if [ ! -x "$CAIRN_BIN" ]; then
    cargo build --release --bin cairn
fi

WORK=$(mktemp -d /tmp/cairn-gwbench.XXXXXX)
PIDS=()
cleanup() {
    [ -n "${GW_KEEP_LOGS:-}" ] && cp "$WORK"/*.log "$GW_KEEP_LOGS"/ 2>/dev/null
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

# Fixed loopback ports well away from the defaults.
STORE=127.0.0.1:42379 PEER=127.0.0.1:42380
UP_PORT=42080 NGX_PORT=42081 GW_PORT=42082 GW_TLS=42083 GW_METRICS=42084 NGX_TLS=42088
export ETCDCTL_API=3
EP=http://$STORE

wait_http() { # url, what
    for _ in $(seq 1 200); do
        curl -s -o /dev/null "$1" && return 0
        sleep 0.1
    done
    echo "$2 did not come up" >&2
    exit 1
}

# One certificate for both proxies' HTTPS (wrk sends the URL's host as SNI).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost \
    -keyout "$WORK/tls.key" -out "$WORK/tls.crt" 2>/dev/null

# The upstream and the reference proxy: one nginx, three servers.
mkdir -p "$WORK/nginx"
cat >"$WORK/nginx/nginx.conf" <<CONF
worker_processes auto;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx;
    proxy_temp_path $WORK/nginx;
    fastcgi_temp_path $WORK/nginx;
    uwsgi_temp_path $WORK/nginx;
    scgi_temp_path $WORK/nginx;
    upstream backend { server 127.0.0.1:$UP_PORT; keepalive 320; }
    server { listen 127.0.0.1:$UP_PORT; location / { return 200 "ok\n"; } }
    server {
        listen 127.0.0.1:$NGX_PORT;
        listen 127.0.0.1:$NGX_TLS ssl;
        ssl_certificate $WORK/tls.crt;
        ssl_certificate_key $WORK/tls.key;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Real-IP \$remote_addr;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
        }
    }
}
CONF
"$NGINX" -p "$WORK/nginx" -e "$WORK/nginx/error.log" -c "$WORK/nginx/nginx.conf" -g 'daemon off;' &
PIDS+=($!)
start_single_store b1
"$CAIRN_BIN" gateway --endpoints "$EP" --listen 127.0.0.1:$GW_PORT --listen-tls 127.0.0.1:$GW_TLS \
    --metrics 127.0.0.1:$GW_METRICS --id bench >"$WORK/gateway.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$UP_PORT/" "the upstream nginx"
wait_http "http://127.0.0.1:$GW_METRICS/readyz" "cairn gateway"

UPSTREAM="{\"nodes\":{\"127.0.0.1:$UP_PORT\":1}}"
etcdctl --endpoints=$EP put /apisix/routes/bench "{\"uri\":\"/bench\",\"upstream\":$UPSTREAM}" >/dev/null
for _ in $(seq 1 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:$GW_PORT/bench)" = 200 ] && break
    sleep 0.1
done

# wrk → "req/s p99_ms errors"
run_wrk() { # url, extra header
    local out
    out=$(wrk -t"$THREADS" -c"$CONNS" -d"${DUR}s" --latency ${2:+-H "$2"} "$1")
    echo "$out" >>"$WORK/wrk.log"
    local rps p99 errs
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    p99=$(echo "$out" | awk '$1 == "99%" {v=$2; if (v ~ /us$/) {sub(/us$/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v*=1000}; print v}')
    errs=$(echo "$out" | awk '/Non-2xx/ {n+=$NF} /Socket errors/ {for (i=3;i<=NF;i+=2) n+=$i} END {print n+0}')
    echo "$rps $p99 $errs"
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

declare -A R
bench_pair() { # name, nginx url, cairn url, cairn header
    local name=$1
    for i in $(seq 1 "$RUNS"); do
        echo "[$name] run $i/$RUNS: nginx" >&2
        echo "$(run_wrk "$2")" >>"$WORK/$name.nginx"
        echo "[$name] run $i/$RUNS: cairn" >&2
        echo "$(run_wrk "$3" "${4:-}")" >>"$WORK/$name.cairn"
    done
    for who in nginx cairn; do
        R[$name.$who.rps]=$(awk '{print $1}' "$WORK/$name.$who" | median)
        R[$name.$who.p99]=$(awk '{print $2}' "$WORK/$name.$who" | median)
        R[$name.$who.err]=$(awk '{n+=$3} END {print n+0}' "$WORK/$name.$who")
    done
}

# Polls `url` (with curl's own start-up as the only pause) until it answers
# 200; gives up after 20,000 tries.
poll_200() { # url
    local tries=0
    until [ "$(curl -s -o /dev/null -w '%{http_code}' "$1")" = 200 ]; do
        tries=$((tries + 1))
        [ $tries -lt 20000 ] || { echo "$1 never answered 200" >&2; exit 1; }
    done
}

# Propagation: a route written (etcdctl returned: committed) until the
# gateway serves it, polled with curl (so a few ms of curl start-up are
# included); prints "p50 p99 max" in ms.
propagation() { # label
    local n=$((QUICK == 1 ? 20 : 100))
    for i in $(seq 1 "$n"); do
        etcdctl --endpoints=$EP put /apisix/routes/prop "{\"uri\":\"/prop/$1/$i\",\"upstream\":$UPSTREAM}" >/dev/null
        local t0 t1
        t0=$(date +%s%N)
        poll_200 "http://127.0.0.1:$GW_PORT/prop/$1/$i"
        t1=$(date +%s%N)
        echo $(((t1 - t0) / 1000))
    done | sort -n | awk '{a[NR]=$1} END {i=int(NR*0.99); if (i<1) i=1; printf "%.1f %.1f %.1f", a[int((NR+1)/2)]/1000, a[i]/1000, a[NR]/1000}'
}
PROP_ONE=$(propagation one)

bench_pair one "http://127.0.0.1:$NGX_PORT/bench" "http://127.0.0.1:$GW_PORT/bench"

python3 -c 'import json, sys; print(json.dumps({"cert": open(sys.argv[1]).read(), "key": open(sys.argv[2]).read(), "snis": ["localhost"]}))' \
    "$WORK/tls.crt" "$WORK/tls.key" | etcdctl --endpoints=$EP put /apisix/ssls/bench >/dev/null
for _ in $(seq 1 100); do
    [ "$(curl -sk -o /dev/null -w '%{http_code}' "https://localhost:$GW_TLS/bench")" = 200 ] && break
    sleep 0.1
done
bench_pair tls "https://localhost:$NGX_TLS/bench" "https://localhost:$GW_TLS/bench"

# 1,000 routes; the matched one with key-auth + limit-count + prometheus.
etcdctl --endpoints=$EP put /apisix/consumers/bench '{"username":"bench","plugins":{"key-auth":{"key":"bench-key"}}}' >/dev/null
for i in $(seq 1 999); do
    etcdctl --endpoints=$EP put /apisix/routes/r$i "{\"uri\":\"/r/$i/*\",\"upstream\":$UPSTREAM}" >/dev/null
done
etcdctl --endpoints=$EP put /apisix/routes/bench "{\"uri\":\"/bench\",\"plugins\":{\"key-auth\":{},\"limit-count\":{\"count\":1000000000,\"time_window\":60},\"prometheus\":{}},\"upstream\":$UPSTREAM}" >/dev/null
for _ in $(seq 1 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' -H 'apikey: bench-key' http://127.0.0.1:$GW_PORT/bench)" = 200 ] && break
    sleep 0.1
done
PROP_MANY=$(propagation many)
bench_pair plugins "http://127.0.0.1:$NGX_PORT/bench" "http://127.0.0.1:$GW_PORT/bench" "apikey: bench-key"

# 10,000 routes: written over one keep-alive connection to the store's JSON
# gateway, then a fresh gateway is timed from start to ready (/readyz) and to
# serving the last route; then propagation at that size.
python3 "$ROOT/bench/put_routes.py" "$STORE" "$UP_PORT" 1000 10000
GW2_PORT=42085 GW2_TLS=42086 GW2_METRICS=42087
t0=$(date +%s%N)
"$CAIRN_BIN" gateway --endpoints "$EP" --listen 127.0.0.1:$GW2_PORT --listen-tls 127.0.0.1:$GW2_TLS \
    --metrics 127.0.0.1:$GW2_METRICS --id bench2 >"$WORK/gateway2.log" 2>&1 &
PIDS+=($!)
poll_200 "http://127.0.0.1:$GW2_METRICS/readyz"
t_ready=$(date +%s%N)
poll_200 "http://127.0.0.1:$GW2_PORT/r/9999/x"
t_serving=$(date +%s%N)
READY_MS=$(((t_ready - t0) / 1000000))
SERVING_MS=$(((t_serving - t0) / 1000000))
PROP_10K=$(propagation tenk)

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b > 0) printf "%.2f", a / b; else print "n/a"}'; }
fmt() { awk -v v="$1" 'BEGIN {printf "%.3f", v}'; }
rev=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
SECTION=$(cat <<MD
<!-- gateway.sh: begin -->
## Gateway vs nginx

Generated by \`bench/gateway.sh\` ($RUNS run(s) per proxy and workload, ${DUR}s each, alternating nginx/cairn; medians). wrk -t$THREADS -c$CONNS on 127.0.0.1; upstream: nginx \`return 200\` with keepalive; reference: Debian nginx $("$NGINX" -v 2>&1 | sed 's/.*nginx\///') as a plain reverse proxy (keepalive 320 to the upstream), \`worker_processes auto\`; cairn gateway at \`$rev\` (binary \`${CAIRN_BIN#"$ROOT"/}\`). Machine: $(nproc) CPUs, shared with the load generator.

| workload | nginx req/s | cairn req/s | cairn/nginx | nginx p99 ms | cairn p99 ms | cairn/nginx p99 | errors nginx / cairn |
|---|---:|---:|---:|---:|---:|---:|---:|
| 1 route, no plugins | ${R[one.nginx.rps]} | ${R[one.cairn.rps]} | **$(ratio "${R[one.cairn.rps]}" "${R[one.nginx.rps]}")** | $(fmt "${R[one.nginx.p99]}") | $(fmt "${R[one.cairn.p99]}") | $(ratio "${R[one.cairn.p99]}" "${R[one.nginx.p99]}") | ${R[one.nginx.err]} / ${R[one.cairn.err]} |
| 1 route, no plugins, HTTPS (TLS ends at the proxy) | ${R[tls.nginx.rps]} | ${R[tls.cairn.rps]} | **$(ratio "${R[tls.cairn.rps]}" "${R[tls.nginx.rps]}")** | $(fmt "${R[tls.nginx.p99]}") | $(fmt "${R[tls.cairn.p99]}") | $(ratio "${R[tls.cairn.p99]}" "${R[tls.nginx.p99]}") | ${R[tls.nginx.err]} / ${R[tls.cairn.err]} |
| 1,000 routes, key-auth + limit-count + prometheus (nginx: no plugins) | ${R[plugins.nginx.rps]} | ${R[plugins.cairn.rps]} | **$(ratio "${R[plugins.cairn.rps]}" "${R[plugins.nginx.rps]}")** | $(fmt "${R[plugins.nginx.p99]}") | $(fmt "${R[plugins.cairn.p99]}") | $(ratio "${R[plugins.cairn.p99]}" "${R[plugins.nginx.p99]}") | ${R[plugins.nginx.err]} / ${R[plugins.cairn.err]} |

Route propagation (etcdctl put returned → the gateway serves the new route, polled with curl), p50 / p99 / max in ms: at 2 routes $(echo "$PROP_ONE" | awk '{print $1 " / " $2 " / " $3}'); at 1,001 routes $(echo "$PROP_MANY" | awk '{print $1 " / " $2 " / " $3}'); at 10,001 routes $(echo "$PROP_10K" | awk '{print $1 " / " $2 " / " $3}').

A gateway started beside 10,001 routes: ready (\`/readyz\` 200) after $READY_MS ms, serving the last route after $SERVING_MS ms (process start included).

Goals (issue 17): 1 route ≥ 1.0× nginx's throughput with p99 ≤ nginx's; 1,000 routes with the three plugins ≥ 0.8×; a written route served within 100 ms (p99).
<!-- gateway.sh: end -->
MD
)
touch "$OUT"
python3 - "$OUT" "$SECTION" <<'PY'
import re, sys
path, section = sys.argv[1], sys.argv[2]
text = open(path).read()
pat = re.compile(r"<!-- gateway.sh: begin -->.*?<!-- gateway.sh: end -->", re.S)
text = pat.sub(lambda m: section, text) if pat.search(text) else text.rstrip("\n") + "\n\n" + section + "\n"
open(path, "w").write(text)
PY
echo "$SECTION"
