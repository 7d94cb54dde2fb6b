# Sourced by the gateway benchmarks: a one-member store for the gateway to
# read. start_single_store NAME starts it on $EP (client) and $PEER (peer)
# with data in $WORK/store, adds its PID to PIDS, and returns once a put
# succeeds (at most 20 s).
start_single_store() {
    "$CAIRN_BIN" store --name "$1" --data-dir "$WORK/store" \
        --listen-client-urls "$EP" --advertise-client-urls "$EP" \
        --listen-peer-urls "http://$PEER" --initial-advertise-peer-urls "http://$PEER" \
        --initial-cluster "$1=http://$PEER" >"$WORK/store.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 1 200); do etcdctl --endpoints="$EP" put /bench/ready 1 >/dev/null 2>&1 && break; sleep 0.1; done
}
