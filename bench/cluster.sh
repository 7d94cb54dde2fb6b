# Sourced by the benchmark scripts: 3-member etcd 3.4 and Cairn clusters on
# 127.0.0.1, started and stopped by PID. The caller sets WORK (data dirs and
# logs under it), RES (retry counts), CAIRN_BIN, and stops what it started (stop_cluster) on exit.

# --- clusters -----------------------------------------------------------------
# Ports away from 2379/2380, and below the ephemeral range (32768+) so an
# outgoing connection cannot already hold one.
declare -A CPORT=([etcd]=21379 [cairn]=22379)
declare -A PPORT=([etcd]=21479 [cairn]=22479)
declare -A PIDS=() # "store:i" -> pid

client_url() { echo "http://127.0.0.1:$((CPORT[$1] + $2))"; }
peer_url() { echo "http://127.0.0.1:$((PPORT[$1] + $2))"; }
endpoints() { echo "$(client_url "$1" 0),$(client_url "$1" 1),$(client_url "$1" 2)"; }
initial_cluster() {
    echo "n0=$(peer_url "$1" 0),n1=$(peer_url "$1" 1),n2=$(peer_url "$1" 2)"
}

start_node() { # store i
    local s=$1 i=$2
    local flags=(--name "n$i" --data-dir "$WORK/$s/n$i"
        --listen-client-urls "$(client_url "$s" "$i")" --advertise-client-urls "$(client_url "$s" "$i")"
        --listen-peer-urls "$(peer_url "$s" "$i")" --initial-advertise-peer-urls "$(peer_url "$s" "$i")"
        --initial-cluster "$(initial_cluster "$s")" --initial-cluster-state new
        --initial-cluster-token "bench-$s")
    if [ "$s" = etcd ]; then
        etcd "${flags[@]}" >>"$WORK/logs/$s-n$i.log" 2>&1 &
    else
        "$CAIRN_BIN" --log-level warn store "${flags[@]}" >>"$WORK/logs/$s-n$i.log" 2>&1 &
    fi
    PIDS[$s:$i]=$!
}

start_cluster() { for i in 0 1 2; do start_node "$1" "$i"; done; }

# A fresh cluster, up and serving. If it fails to form (Cairn once refused to
# bootstrap a member that a peer started a few ms earlier already listed), wipe
# and try again; retries are counted in $RES/bootstrap-retries.STORE and
# reported in RESULTS.md.
fresh_cluster() {
    local s=$1 try
    for try in 1 2 3 4 5; do
        rm -rf "${WORK:?}/$s"
        start_cluster "$s"
        if wait_ready "$s" && sleep 1 && all_alive "$s"; then return 0; fi
        echo "$try" >>"$RES/bootstrap-retries.$s"
        log "$s: fresh cluster failed to form (try $try); retrying"
        stop_cluster "$s"
    done
    return 1
}

all_alive() { # store: 0 if all three members run
    local i
    for i in 0 1 2; do kill -0 "${PIDS[$1:$i]:-0}" 2>/dev/null || return 1; done
}

# Waits (at most 60 s) until a linearizable get through any member succeeds.
# Fails at once if a member has exited.
wait_ready() {
    local s=$1 deadline=$((SECONDS + 60))
    until etcdctl --endpoints="$(endpoints "$s")" --dial-timeout=1s --command-timeout=1s \
        get ready-probe >/dev/null 2>&1; do
        if ! all_alive "$s"; then
            echo "${0##*/}: a $s member exited; logs in $WORK/logs" >&2
            return 1
        fi
        if [ $SECONDS -ge $deadline ]; then
            echo "${0##*/}: $s did not become ready in 60 s; logs in $WORK/logs" >&2
            return 1
        fi
        sleep 0.02
    done
}

stop_node() { # store i [signal]
    local key="$1:$2" sig=${3:-TERM}
    local pid=${PIDS[$key]:-}
    [ -n "$pid" ] || return 0
    kill "-$sig" "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    unset "PIDS[$key]"
}

stop_cluster() { for i in 0 1 2; do stop_node "$1" "$i"; done; }

pid_map() { # store -> ENDPOINT=PID,...
    local s=$1 out="" i
    for i in 0 1 2; do
        [ -n "${PIDS[$s:$i]:-}" ] && out="$out${out:+,}$(client_url "$s" "$i")=${PIDS[$s:$i]}"
    done
    echo "$out"
}

