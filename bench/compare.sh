#!/usr/bin/env bash
# Side-by-side benchmark: a 3-member etcd 3.4 cluster against a 3-node Cairn
# cluster on 127.0.0.1, same workloads, same client for both (`cairn bench`), runs
# alternated etcd/Cairn/etcd/Cairn... so machine drift hits both; medians go
# into bench/RESULTS.md. The `ec-` workloads use a second, independent client
# (bench/etcd-load, on the etcd-client crate) against the same clusters, so
# the ratios do not rest on Cairn's own load generator alone.
#
#   bench/compare.sh [--quick] [--runs N] [--out FILE]
#
# --quick: 1 run per store, short workloads, 20,000 keys for the footprint
# (under 3 minutes). Default: 3 runs, 100,000 keys (under 20 minutes).
# Env: CAIRN_BIN (default: release build, built here), ETCD_LOAD_BIN (default:
# bench/etcd-load/build.sh, with its vendored protoc), BENCH_WORKDIR (data
# dirs; default a fresh dir under /tmp, which must be on the same disk for both).
#
# Both stores keep fsync on (etcd without --unsafe-no-fsync) and their own
# default timeouts (etcd heartbeat 100 ms / election 1000 ms; Cairn 25/150).
# Processes are stopped by PID only; data dirs are removed on exit.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)

QUICK=0
RUNS=""
OUT="$ROOT/bench/RESULTS.md"
while [ $# -gt 0 ]; do
    case "$1" in
    --quick) QUICK=1 ;;
    --runs) RUNS=$2; shift ;;
    --out) OUT=$2; shift ;;
    -h | --help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "compare.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

if [ "$QUICK" = 1 ]; then
    RUNS=${RUNS:-1}
    DUR=4s           # per workload run
    LOAD_KEYS=20000  # footprint load
    FO_DUR=6s FO_KILL=2s
else
    RUNS=${RUNS:-3}
    DUR=10s
    LOAD_KEYS=100000
    FO_DUR=10s FO_KILL=3s
fi

log() { printf '[compare %s] %s\n' "$(date +%T)" "$*" >&2; }

# --- tools ------------------------------------------------------------------
if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then
    log "installing Debian's etcd-server and etcd-client"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server etcd-client >/dev/null
fi
ETCD_VERSION=$(etcd --version | sed -n 's/^etcd Version: //p')
case "$ETCD_VERSION" in
3.4.*) ;;
*) echo "compare.sh: need etcd 3.4, found $ETCD_VERSION" >&2; exit 1 ;;
esac
export ETCDCTL_API=3

if [ -z "${CAIRN_BIN:-}" ]; then
    log "building cairn (release)"
    cargo build --release --bin cairn -q
    CAIRN_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/cairn"
fi
[ -x "$CAIRN_BIN" ] || { echo "compare.sh: no cairn binary at $CAIRN_BIN" >&2; exit 1; }

# The second load generator, only if an ec- workload is going to run.
PHASES=" ${COMPARE_PHASES:-steady failover footprint} "
if [ -z "${ETCD_LOAD_BIN:-}" ] && [[ $PHASES == *" steady "* ]] &&
    { [ -z "${COMPARE_ONLY:-}" ] || [[ " $COMPARE_ONLY" == *" ec-"* ]]; }; then
    log "building bench/etcd-load (release)"
    ETCD_LOAD_BIN=$("$ROOT/bench/etcd-load/build.sh" -q)
fi

WORK=${BENCH_WORKDIR:-$(mktemp -d /tmp/cairn-compare.XXXXXX)}
mkdir -p "$WORK/results" "$WORK/logs"
RES="$WORK/results"

# --- clusters -----------------------------------------------------------------
# shellcheck source=bench/cluster.sh
. "$ROOT/bench/cluster.sh"

cleanup() {
    for s in etcd cairn; do stop_cluster "$s"; done
    if [ -z "${BENCH_KEEP:-}" ]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { # store -> user + system CPU of its three members so far, in clock ticks
    local s=$1 i t=0 c
    for i in 0 1 2; do
        c=$(awk '{print $14 + $15}' "/proc/${PIDS[$s:$i]}/stat" 2>/dev/null || echo 0)
        t=$((t + c))
    done
    echo "$t"
}

bench() { # store name args... -> one JSON line into $RES/name.store.jsonl
    local s=$1 name=$2 before out
    shift 2
    before=$(cpu_ticks "$s")
    case $name in
    ec-*) out=$("$ETCD_LOAD_BIN" --endpoints "$(endpoints "$s")" "$@") ;;
    *) out=$("$CAIRN_BIN" --log-level error bench --endpoints "$(endpoints "$s")" --json "$@") ;;
    esac
    # The members' CPU over the run (all three together), for CPU per request.
    echo "${out%\}},\"server_cpu_ms\":$((($(cpu_ticks "$s") - before) * 1000 / CLK_TCK))}" \
        >>"$RES/$name.$s.jsonl"
}

VAL=$(head -c 256 /dev/zero | tr '\0' v)

# COMPARE_PHASES (default all): any of steady, failover, footprint; with
# BENCH_WORKDIR and BENCH_KEEP, lets one phase be re-run into the same results.
# COMPARE_ONLY (names of steady workloads, space separated) runs just those.
# (PHASES is set above, where it decides whether etcd-load is built.)

# --- 1. steady workloads ------------------------------------------------------
# etcd's published benchmark: 8-byte keys, 256-byte values; writes to the leader.
WORKLOADS=(
    "put-1|--target-leader --conns 1 --clients 1 --duration $DUR put --key-size 8 --val-size 256"
    "put-64|--target-leader --conns 8 --clients 64 --duration $DUR put --key-size 8 --val-size 256"
    # As etcdctl, clientv3 and lua-resty-etcd send writes: to every member
    # they are given, so two of three arrive at a follower and are forwarded.
    "put-64-spread|--conns 8 --clients 64 --duration $DUR put --key-size 8 --val-size 256"
    # The same loads through etcd-client (bench/etcd-load): each connection is
    # a Client::connect over all three members, whose balanced channel spreads
    # the requests (no leader targeting), as an application's client would.
    # Right after their cairn bench counterparts, so both see a similar state.
    "ec-put-64|--conns 8 --clients 64 --duration $DUR put --key-size 8 --val-size 256"
    "ec-put-1|--conns 1 --clients 1 --duration $DUR put --key-size 8 --val-size 256"
    "range-l-1|--target-leader --conns 1 --clients 1 --duration $DUR range foo --consistency l"
    "range-l-64|--target-leader --conns 8 --clients 64 --duration $DUR range foo --consistency l"
    "range-s-1|--target-leader --conns 1 --clients 1 --duration $DUR range foo --consistency s"
    "range-s-64|--target-leader --conns 8 --clients 64 --duration $DUR range foo --consistency s"
    # Random keys of 10,000, which etcd-load puts first (untimed) unless a
    # count shows they are all there.
    "ec-get-64-l|--conns 8 --clients 64 --duration $DUR --key-space 10000 get --consistency l"
    "ec-get-64-s|--conns 8 --clients 64 --duration $DUR --key-space 10000 get --consistency s"
    "lease-keepalive-64|--target-leader --conns 8 --clients 64 --duration $DUR lease-keepalive"
    "watch-1000|--duration $DUR --rate 100 watch --watchers 1000 --streams 10"
    "watch-fanout-1000|--duration $DUR watch-fanout --watchers 1000 --streams 10"
    # Fleet scale: a gateway fleet's watches on one member.
    "watch-10000|--duration $DUR --rate 100 watch --watchers 10000 --streams 100"
)

if [[ $PHASES == *" steady "* ]]; then
for s in etcd cairn; do
    fresh_cluster "$s"
    etcdctl --endpoints="$(endpoints "$s")" put foo "$VAL" >/dev/null
done
log "clusters up (etcd $(endpoints etcd); cairn $(endpoints cairn)); $RUNS run(s) of ${#WORKLOADS[@]} workloads"

for w in "${WORKLOADS[@]}"; do
    name=${w%%|*}
    args=${w#*|}
    # COMPARE_ONLY="put-64 put-64-spread": just those workloads.
    if [ -n "${COMPARE_ONLY:-}" ] && [[ " $COMPARE_ONLY " != *" $name "* ]]; then continue; fi
    for r in $(seq 1 "$RUNS"); do
        # A B, then B A: each store goes first equally often.
        if [ $((r % 2)) = 1 ]; then order="etcd cairn"; else order="cairn etcd"; fi
        for s in $order; do
            # shellcheck disable=SC2086 # args is a word list on purpose
            bench "$s" "$name" $args
        done
    done
    log "$name done"
done
fi

# --- 2. failover --------------------------------------------------------------
if [[ $PHASES == *" failover "* ]]; then
for s in etcd cairn; do
    if [ -z "${PIDS[$s:0]:-}" ]; then
        fresh_cluster "$s"
        etcdctl --endpoints="$(endpoints "$s")" put foo "$VAL" >/dev/null
    fi
done
for r in $(seq 1 "$RUNS"); do
    for s in etcd cairn; do
        bench "$s" failover --conns 4 --clients 16 --rate 500 --duration "$FO_DUR" \
            --request-timeout 1s failover --kill-after "$FO_KILL" --pids "$(pid_map "$s")" ||
            log "failover on $s failed"
        # Bring the killed member back with the same flags (it must not re-bootstrap).
        for i in 0 1 2; do
            pid=${PIDS[$s:$i]:-}
            if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
                wait "$pid" 2>/dev/null || true
                start_node "$s" "$i"
            fi
        done
        # A member that cannot restart after kill -9 is a finding, not the end of
        # the benchmark: note it (RESULTS.md reports it) and go on with a fresh cluster.
        if ! { wait_ready "$s" && sleep 1 && all_alive "$s"; }; then
            echo "$r" >>"$RES/failover-restart-failed.$s"
            cp "$WORK/logs/$s-"n*.log "$RES/" 2>/dev/null || true
            log "$s: killed member did not come back (run $r); starting a fresh cluster"
            stop_cluster "$s"
            fresh_cluster "$s"
        fi
    done
done
log "failover done"
fi
for s in etcd cairn; do stop_cluster "$s"; rm -rf "${WORK:?}/$s"; done

# --- 3. footprint: RSS, disk, restart time --------------------------------------
for s in etcd cairn; do
    [[ $PHASES == *" footprint "* ]] || break
    fresh_cluster "$s"
    "$CAIRN_BIN" --log-level error bench --endpoints "$(endpoints "$s")" --target-leader \
        --conns 8 --clients 64 --total "$LOAD_KEYS" --key-space "$LOAD_KEYS" --sequential-keys \
        --json put --key-size 8 --val-size 256 >"$RES/load.$s.json"
    etcdctl --endpoints="$(endpoints "$s")" put foo "$VAL" >/dev/null
    rss=() disk=()
    for i in 0 1 2; do
        rss+=("$(awk '/VmHWM/ {print $2}' "/proc/${PIDS[$s:$i]}/status")")
    done
    # Graceful stop, then measure disk (what a restart has to read).
    stop_cluster "$s"
    for i in 0 1 2; do disk+=("$(du -sk "$WORK/$s/n$i" | cut -f1)"); done
    t0=$(date +%s%N)
    start_cluster "$s"
    if wait_ready "$s"; then
        restart_ms=$((($(date +%s%N) - t0) / 1000000))
    else
        restart_ms=null # reported as a failed restart
        cp "$WORK/logs/$s-"n*.log "$RES/" 2>/dev/null || true
        log "$s: did not restart after the load"
    fi
    printf '{"store":"%s","keys":%s,"vmhwm_kb":[%s],"disk_kb":[%s],"restart_ms":%s}\n' \
        "$s" "$LOAD_KEYS" "$(IFS=,; echo "${rss[*]}")" "$(IFS=,; echo "${disk[*]}")" \
        "$restart_ms" >"$RES/footprint.$s.json"
    stop_cluster "$s"
    rm -rf "${WORK:?}/$s"
    log "footprint $s: $(cat "$RES/footprint.$s.json")"
done

# --- 4. RESULTS.md --------------------------------------------------------------
MODE=$([ "$QUICK" = 1 ] && echo quick || echo full)
python3 "$ROOT/bench/summarize.py" "$RES" "$OUT" --mode "$MODE" --runs "$RUNS" \
    --etcd-version "$ETCD_VERSION" --cairn-rev "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    --duration "$DUR" --load-keys "$LOAD_KEYS"
log "wrote $OUT"
