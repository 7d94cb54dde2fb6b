#!/usr/bin/env bash
# The HA drill: brings compose/docker-compose.yaml up from nothing on this
# machine, puts a real load balancer (haproxy, a host process) in front of
# the two gateways and the two control planes, and checks, with etcdctl, the
# admin API and curl, what the reference deployment guide checks by hand,
# and more. From scenario G2 on, steady traffic (GET /get, Host: test.com,
# ~25 req/s) runs through the gateways' load balancer, and each scenario
# prints how many of its requests failed: any failed request is a FAIL.
#
#   G1. a route written through the control planes' load balancer is served
#       through the gateways' load balancer (the guide's smoke test); prints
#       the time until each gateway serves it
#   G2. stop gateway1 (the guide's first check): traffic keeps flowing; it
#       comes back, serves, and the load balancer sends it traffic again
#   1. stop control1: the admin API through control2 still reads and writes
#   2. stop store1: reads and writes through both control planes and etcdctl
#      still work; then stop the store leader too: with 1 of 3 left, writes
#      fail with a clear error within a bound, serializable reads answer, and
#      both gateways still serve every route they had
#   3. start them again (store1 on a NEW address): they rejoin, every member
#      has the same HashKV at the same revision, no acknowledged write is lost
#   4. docker kill (SIGKILL) the leader under a write load: acknowledged
#      writes survive; prints the time until writes succeed again
#   5. rolling restart of the three stores under load (etcdctl puts,
#      admin-API route writes through both control planes, and `cairn bench
#      put` at 500 writes/s): no request fails beyond one retry, no bench
#      write fails; prints how long after each stop of the leader a new one
#      leads (a stopping leader hands over first)
#   G3. stop and start the whole stack (a full outage: no traffic is sent
#       while it is down): every route is served again, and a NEW route
#       reaches both gateways
#
# Prints PASS/FAIL per scenario, exits non-zero on any FAIL, and removes its
# containers, network and volumes and stops haproxy on every exit.
#
#   compose/build-image.sh && compose/ha-drill.sh
#
# Needs: docker with docker-compose (1.29) or `docker compose`, the
# cairn:local image, etcdctl 3.4 (Debian's etcd-client), curl, and haproxy
# (Debian's 2.6; installed with apt-get when missing and running as root).
# Uses host ports on 127.0.0.1: 9000, 9001 (control planes), 12379, 13379,
# 14379 (stores), 9080/9081, 9443/9444, 9091/9092 (gateways: HTTP, HTTPS,
# metrics and /readyz), and the load balancer's 19080 (gateways), 19000
# (control planes) and 19404 (its stats page).
set -euo pipefail
cd "$(dirname "$0")/.."

FILE=compose/docker-compose.yaml
PROJECT="${CAIRN_DRILL_PROJECT:-cairndrill$$}"
export CAIRN_IMAGE="${CAIRN_IMAGE:-cairn:local}"
export CAIRN_PUBLISH_ADDR=127.0.0.1
export CAIRN_ADMIN_KEY="${CAIRN_ADMIN_KEY:-drill-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')}"
export ETCDCTL_API=3
WORK=$(mktemp -d /tmp/cairn-drill.XXXXXX)
declare -A PORT=([store1]=12379 [store2]=13379 [store3]=14379)
ALL_EPS=127.0.0.1:12379,127.0.0.1:13379,127.0.0.1:14379
CONTROL_URLS=(http://127.0.0.1:9000 http://127.0.0.1:9001)
GATEWAY_URLS=(http://127.0.0.1:9080 http://127.0.0.1:9081)
# The load balancer's listeners (haproxy on the host).
GATEWAY_LB=http://127.0.0.1:19080
CONTROL_LB=http://127.0.0.1:19000
LB_STATS=http://127.0.0.1:19404/stats
HAPROXY_PID=""
TRAFFIC_PID=""
# "id uri" of each route written for the gateways: all must stay served.
GATEWAY_ROUTES=()
RESULTS=()
FAILED=0
LOAD_PID=""
ADMIN_LOAD_PID=""
PLACEHOLDER=""
BENCH5=""
RETRY_DELAY=1.5

if docker compose version >/dev/null 2>&1; then
  COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  COMPOSE=(docker-compose)
else
  echo "ha-drill: neither 'docker compose' nor docker-compose is installed" >&2
  exit 2
fi
compose() { "${COMPOSE[@]}" -p "$PROJECT" -f "$FILE" "$@"; }

now_ms() { date +%s%3N; }
log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*"; }

cleanup() {
  local rc=$?
  set +e # a killed child's status must not end the cleanup
  local pid
  for pid in "$LOAD_PID" "$ADMIN_LOAD_PID" "$TRAFFIC_PID" "$HAPROXY_PID"; do
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
  done
  if [ "$rc" -ne 0 ] || [ "$FAILED" -ne 0 ]; then
    echo "---- last log lines of each service"
    compose logs --no-color --tail 25 2>/dev/null || true
  fi
  [ -n "$PLACEHOLDER" ] && docker rm -f -v "$PLACEHOLDER" >/dev/null 2>&1
  [ -n "$BENCH5" ] && docker rm -f "$BENCH5" >/dev/null 2>&1
  compose down -v --remove-orphans -t 5 >/dev/null 2>&1 || true
  if [ "$rc" -ne 0 ] || [ "$FAILED" -ne 0 ]; then
    echo "ha-drill: work files kept in $WORK"
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- helpers ---------------------------------------------------------------

# etcdctl against $EPS (default: all three stores); always bounded.
ectl() {
  timeout 30 etcdctl --endpoints="${EPS:-$ALL_EPS}" --dial-timeout=2s --command-timeout=5s "$@"
}
ep_of() { echo "127.0.0.1:${PORT[$1]}"; }
cid() { compose ps -q "$1"; }
health() { docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$(cid "$1")" 2>/dev/null || echo gone; }
ip_of() { docker inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$(cid "$1")"; }

# wait_for SECONDS WHAT COMMAND...: polls COMMAND every 0.2 s.
wait_for() {
  local secs=$1 what=$2
  shift 2
  local deadline=$(($(now_ms) + secs * 1000))
  until "$@" >/dev/null 2>&1; do
    if [ "$(now_ms)" -ge "$deadline" ]; then
      log "timed out after ${secs}s waiting for $what"
      return 1
    fi
    sleep 0.2
  done
}
# "running" is what a service without a health check (echo) reports.
is_healthy() {
  local h
  h=$(health "$1")
  [ "$h" = healthy ] || [ "$h" = running ]
}
wait_healthy() {
  local s
  for s in "$@"; do wait_for 90 "$s to be healthy" is_healthy "$s" || return 1; done
}

# Member id of the leader as member $1 sees it (empty when it has none).
leader_seen_by() {
  EPS=$(ep_of "$1") ectl endpoint status -w fields 2>/dev/null | awk -F' : ' '/"Leader"/ {print $2}'
}
member_id_of() {
  EPS=$(ep_of "$1") ectl endpoint status -w fields 2>/dev/null | awk -F' : ' '/"MemberID"/ {print $2}'
}
revision_of() {
  EPS=$(ep_of "$1") ectl endpoint status -w fields 2>/dev/null | awk -F' : ' '/"Revision"/ {print $2}'
}
# The service name of the current leader, among running stores $@.
leader_service() {
  local s l=""
  for s in "$@"; do
    l=$(leader_seen_by "$s")
    [ -n "$l" ] && [ "$l" != 0 ] && break
  done
  [ -n "$l" ] && [ "$l" != 0 ] || return 1
  for s in "$@"; do
    if [ "$(member_id_of "$s")" = "$l" ]; then
      echo "$s"
      return 0
    fi
  done
  return 1
}

# Acknowledged writes: every successful put appends "key value" here; scenario
# 3 and 4 check that each is still there.
ACKED="$WORK/acked"
: >"$ACKED"
put_acked() { # key value
  if ectl put "$1" "$2" >/dev/null 2>"$WORK/last.err"; then
    echo "$1 $2" >>"$ACKED"
  else
    cat "$WORK/last.err" >&2
    return 1
  fi
}

# Bound of one admin API request. The control plane's own store client gives
# up after its retry budget (8 s, control/src/lib.rs) plus one request
# timeout (3 s), so an answer within 20 s is the control plane's, and "000"
# (no answer) means it hung.
ADMIN_TIMEOUT=${ADMIN_TIMEOUT:-20}
admin() { # METHOD BASE_URL PATH [BODY] -> prints "CODE BODY"
  local body
  body=$(curl -sS -m "$ADMIN_TIMEOUT" -X "$1" -H "X-API-KEY: $CAIRN_ADMIN_KEY" \
    -H 'Content-Type: application/json' ${4:+--data "$4"} \
    -w '\n%{http_code}' "$2$3" 2>&1) || true
  printf '%s %s\n' "$(tail -n1 <<<"$body")" "$(head -n -1 <<<"$body" | tr -d '\n' | cut -c1-300)"
}
# Writes route $2 through control plane $1 and reads it back; records the
# route's key as acknowledged.
route_rw() {
  local base=$1 id=$2 out code
  out=$(admin PUT "$base" "/apisix/admin/routes/$id" \
    "{\"uri\":\"/drill/$id\",\"upstream\":{\"type\":\"roundrobin\",\"nodes\":{\"127.0.0.1:1980\":1}}}")
  code=${out%% *}
  if [ "$code" != 200 ] && [ "$code" != 201 ]; then
    log "PUT $base/apisix/admin/routes/$id: $out"
    return 1
  fi
  echo "/apisix/routes/$id -" >>"$ACKED"
  out=$(admin GET "$base" "/apisix/admin/routes/$id")
  if [ "${out%% *}" != 200 ] || [[ $out != *"/drill/$id"* ]]; then
    log "GET $base/apisix/admin/routes/$id: $out"
    return 1
  fi
}

result() { # scenario-name ok|fail [detail]
  if [ "$2" = ok ]; then
    RESULTS+=("PASS  $1${3:+ ($3)}")
    log "PASS  $1${3:+ ($3)}"
  else
    RESULTS+=("FAIL  $1${3:+ ($3)}")
    log "FAIL  $1${3:+ ($3)}"
    FAILED=1
  fi
}

# Background write load: sequential keys under $1, each put tried once more
# after a failure, RETRY_DELAY later (a client's retry; longer than one
# election, ~1 s here, so that a request refused with "leader changed" is
# retried against the new leader); lines "start_ms end_ms ok|retry-ok|fail key"
# go to $2. Stops when $3 exists or after $4 seconds.
start_load() {
  local prefix=$1 out=$2 stop=$3 max=$4
  rm -f "$stop"
  : >"$out"
  (
    set +e
    i=0
    deadline=$(($(now_ms) + max * 1000))
    while [ ! -e "$stop" ] && [ "$(now_ms)" -lt "$deadline" ]; do
      i=$((i + 1))
      key="$prefix/$(printf %06d "$i")"
      s=$(now_ms)
      if ectl put "$key" "$i" >/dev/null 2>>"$out.err"; then
        echo "$s $(now_ms) ok $key" >>"$out"
        echo "$key $i" >>"$ACKED"
      else
        sleep "$RETRY_DELAY"
        if ectl put "$key" "$i" >/dev/null 2>>"$out.err"; then
          echo "$s $(now_ms) retry-ok $key" >>"$out"
          echo "$key $i" >>"$ACKED"
        else
          echo "$s $(now_ms) fail $key" >>"$out"
        fi
      fi
    done
  ) &
  LOAD_PID=$!
}
stop_load() {
  touch "$1"
  wait "$LOAD_PID" || true
  LOAD_PID=""
}

# Admin API load: route PUTs alternating between the two control planes, one
# every 0.3 s, each tried once more through the same control plane after a
# failure (RETRY_DELAY later); lines "start_ms end_ms ok|retry-ok|fail id" go
# to $1. Stops when $2 exists or after $3 seconds.
start_admin_load() {
  local out=$1 stop=$2 max=$3
  rm -f "$stop"
  : >"$out"
  (
    set +e
    i=0
    deadline=$(($(now_ms) + max * 1000))
    while [ ! -e "$stop" ] && [ "$(now_ms)" -lt "$deadline" ]; do
      i=$((i + 1))
      id="s5-$(printf %05d "$i")"
      base=${CONTROL_URLS[$((i % 2))]}
      body="{\"uri\":\"/drill/$id\",\"upstream\":{\"type\":\"roundrobin\",\"nodes\":{\"127.0.0.1:1980\":1}}}"
      s=$(now_ms)
      out_=$(admin PUT "$base" "/apisix/admin/routes/$id" "$body")
      if [[ ${out_%% *} == 20[01] ]]; then
        echo "$s $(now_ms) ok $id" >>"$out"
        echo "/apisix/routes/$id -" >>"$ACKED"
      else
        echo "$(date +%H:%M:%S) $base $id: $out_" >>"$out.err"
        sleep "$RETRY_DELAY"
        out_=$(admin PUT "$base" "/apisix/admin/routes/$id" "$body")
        if [[ ${out_%% *} == 20[01] ]]; then
          echo "$s $(now_ms) retry-ok $id" >>"$out"
          echo "/apisix/routes/$id -" >>"$ACKED"
        else
          echo "$(date +%H:%M:%S) $base $id (retry): $out_" >>"$out.err"
          echo "$s $(now_ms) fail $id" >>"$out"
        fi
      fi
      sleep 0.3
    done
  ) &
  ADMIN_LOAD_PID=$!
}
stop_admin_load() {
  touch "$1"
  wait "$ADMIN_LOAD_PID" || true
  ADMIN_LOAD_PID=""
}

# Every acknowledged key is present with its value (read linearizably, or
# serializably from each member when $1 = each).
check_acked() {
  local missing=0 key val got s
  sort -u "$ACKED" >"$WORK/acked.sorted"
  # One range read per prefix, then a local comparison.
  ectl get /drill/ --prefix=true >"$WORK/drill.kv" || return 1
  ectl get /apisix/routes/ --prefix=true --keys-only >"$WORK/routes.keys" || return 1
  while read -r key val; do
    if [ "$val" = - ]; then
      grep -qxF "$key" "$WORK/routes.keys" || { log "missing acknowledged key $key"; missing=$((missing + 1)); }
    else
      got=$(grep -A1 -xF "$key" "$WORK/drill.kv" | sed -n 2p)
      [ "$got" = "$val" ] || { log "acknowledged $key=$val, found '${got}'"; missing=$((missing + 1)); }
    fi
  done <"$WORK/acked.sorted"
  if [ "${1:-}" = each ]; then
    for s in store1 store2 store3; do
      got=$(EPS=$(ep_of "$s") ectl get /drill/ --prefix=true --consistency=s --keys-only | grep -c '^/drill/' || true)
      want=$(grep -c '^/drill/' "$WORK/drill.kv" || true)
      [ "$got" = "$want" ] || { log "$s holds $got /drill/ keys, the cluster $want"; missing=$((missing + 1)); }
    done
  fi
  log "$(wc -l <"$WORK/acked.sorted") acknowledged writes checked, $missing missing or wrong"
  [ "$missing" -eq 0 ]
}

# All members at the same revision (writes have stopped), then HashKV there.
same_hashkv() {
  local rev hashes
  wait_for 60 "all members at one revision" all_same_revision || return 1
  rev=$(revision_of store1)
  hashes=$(EPS=$ALL_EPS ectl endpoint hashkv --rev="$rev" -w fields | awk -F' : ' '/"Hash"/ {print $2}' | sort -u)
  log "revision $rev, HashKV per member: $(EPS=$ALL_EPS ectl endpoint hashkv --rev="$rev" | tr '\n' ' ')"
  [ "$(wc -l <<<"$hashes")" = 1 ] && [ -n "$hashes" ]
}
all_same_revision() {
  local a b c
  a=$(revision_of store1) b=$(revision_of store2) c=$(revision_of store3)
  [ -n "$a" ] && [ "$a" = "$b" ] && [ "$b" = "$c" ]
}

# ---- the gateway tier: load balancer, routes, traffic ----------------------

# haproxy on the host, in front of both tiers. Backends are health-checked
# every 200 ms (down after 2 failures, up after 2 successes): a gateway on
# its metrics port's /readyz (ready once its first config load is applied,
# and it stays ready without the stores), a control plane on /readyz (ready
# while the stores have a quorum). A request whose connection failed, or
# that got no answer at all (a gateway stopped mid-request), is re-sent to
# the other server: that is what a load balancer in front of stateless
# gateways is for. A status a gateway answers (its 502, 503) is never
# retried, so it reaches the traffic loop and counts as a failure. The
# control planes' backend retries failed connections only (PUTs are not
# idempotent).
lb_start() {
  local cfg="$WORK/haproxy.cfg"
  cat >"$cfg" <<CFG
global
  log stdout format raw local0
  maxconn 1000

defaults
  mode http
  log global
  option log-health-checks
  # accept time, backend/server, status, retries (+ when redispatched),
  # total ms, termination state, queue/connect/response ms
  log-format "%Ts.%ms %b/%s %ST %rc %Tt %tsc %Tw/%Tc/%Tr"
  timeout connect 1s
  timeout check 1s
  timeout client 30s
  # Longer than the drill's admin API bound (ADMIN_TIMEOUT).
  timeout server 30s
  retries 3
  option redispatch 1
  default-server inter 200ms fall 2 rise 2

frontend gateways_in
  bind ${GATEWAY_LB#http://}
  default_backend gateways

backend gateways
  retry-on conn-failure empty-response
  option httpchk GET /readyz
  http-check expect status 200
  server gateway1 ${GATEWAY_URLS[0]#http://} check port 9091
  server gateway2 ${GATEWAY_URLS[1]#http://} check port 9092

frontend controls_in
  bind ${CONTROL_LB#http://}
  default_backend controls

backend controls
  option httpchk GET /readyz
  http-check expect status 200
  server control1 ${CONTROL_URLS[0]#http://} check
  server control2 ${CONTROL_URLS[1]#http://} check

listen stats
  bind ${LB_STATS#http://}
  mode http
  stats enable
  stats uri /${LB_STATS##*/}
CFG
  haproxy -c -q -f "$cfg" || return 1
  haproxy -db -f "$cfg" >"$WORK/haproxy.log" 2>&1 &
  HAPROXY_PID=$!
}
# lb_status BACKEND SERVER: UP, DOWN, ... as haproxy sees it (stats CSV,
# column 18).
lb_status() {
  curl -s -m 2 "$LB_STATS;csv" | awk -F, -v b="$1" -v s="$2" '$1 == b && $2 == s {print $18}'
}
lb_up() { [ "$(lb_status "$1" "$2")" = UP ]; }

# A route for the gateways: Host test.com, URI $2, upstream the echo
# container; written through the control planes' load balancer.
gateway_route_put() { # id uri -> prints "CODE BODY"
  admin PUT "$CONTROL_LB" "/apisix/admin/routes/$1" \
    "{\"uri\":\"$2\",\"hosts\":[\"test.com\"],\"upstream\":{\"type\":\"roundrobin\",\"nodes\":{\"echo:8080\":1}}}"
}
# serves BASE_URL URI: the guide's smoke test, answered by echo.
serves() {
  local body
  body=$(curl -s -m 2 -f -H 'Host: test.com' "$1$2") && [[ $body == *"test.com$2"* ]]
}
# Every route in GATEWAY_ROUTES is served by each gateway, asked directly.
gateways_serve_all() {
  local g r missing=0
  for g in "${GATEWAY_URLS[@]}"; do
    for r in "${GATEWAY_ROUTES[@]}"; do
      serves "$g" "${r#* }" || { log "$g does not serve route ${r%% *} (${r#* })"; missing=$((missing + 1)); }
    done
  done
  log "${#GATEWAY_ROUTES[@]} routes checked on each of ${#GATEWAY_URLS[@]} gateways, $missing not served"
  [ "$missing" -eq 0 ]
}

# Writes route $1 (URI $2) through the control planes' load balancer while
# each gateway is polled directly (one curl after another, a few ms each:
# the resolution); prints how long after the PUT was sent each one served it,
# and sets PROPAGATION to that text. Fails when the PUT fails or a gateway
# does not serve the route within 30 s.
propagate() {
  local id=$1 uri=$2 i out sent_ms put_ms t pids=() took=() rc=0
  for i in "${!GATEWAY_URLS[@]}"; do
    rm -f "$WORK/served.$i"
    (
      deadline=$(($(now_ms) + 30000))
      while [ "$(now_ms)" -lt "$deadline" ]; do
        if serves "${GATEWAY_URLS[$i]}" "$uri"; then
          now_ms >"$WORK/served.$i"
          exit 0
        fi
      done
    ) &
    pids+=($!)
  done
  sent_ms=$(now_ms)
  out=$(gateway_route_put "$id" "$uri")
  put_ms=$(($(now_ms) - sent_ms))
  if [[ ${out%% *} != 20[01] ]]; then
    log "PUT route $id through $CONTROL_LB: $out"
    PROPAGATION="route $id: PUT failed (HTTP ${out%% *})"
    kill "${pids[@]}" 2>/dev/null
    wait "${pids[@]}" 2>/dev/null
    return 1
  fi
  GATEWAY_ROUTES+=("$id $uri")
  wait "${pids[@]}" || true
  for i in "${!GATEWAY_URLS[@]}"; do
    if [ -s "$WORK/served.$i" ]; then
      t=$(($(cat "$WORK/served.$i") - sent_ms))
      took+=("gateway$((i + 1)) after ${t} ms")
    else
      took+=("gateway$((i + 1)) not within 30 s")
      rc=1
    fi
  done
  PROPAGATION=$(printf '%s, ' "${took[@]}")
  PROPAGATION="route $id served by ${PROPAGATION%, } (the PUT answered in ${put_ms} ms)"
  log "$PROPAGATION"
  return "$rc"
}

# Steady traffic through the gateways' load balancer: GET /get with Host
# test.com, one request at a time (curl -m 2) with a 20 ms pause, ~25 req/s;
# a line "ms status" per request goes to $WORK/traffic.$1, the start of each
# failed answer to $WORK/traffic.$1.err. Stops at traffic_stop or after
# $2 seconds (default 600).
traffic_start() {
  local name=$1 max=${2:-600}
  TRAFFIC_NAME=$name
  TRAFFIC_FILE="$WORK/traffic.$name"
  TRAFFIC_LB_FROM=$(wc -l <"$WORK/haproxy.log")
  rm -f "$WORK/traffic.stop"
  : >"$TRAFFIC_FILE"
  (
    set +e
    deadline=$(($(now_ms) + max * 1000))
    while [ ! -e "$WORK/traffic.stop" ] && [ "$(now_ms)" -lt "$deadline" ]; do
      code=$(curl -s -m 2 -o "$WORK/traffic.body" -w '%{http_code}' -H 'Host: test.com' "$GATEWAY_LB/get")
      echo "$(now_ms) $code" >>"$TRAFFIC_FILE"
      [ "$code" = 200 ] || echo "$(date +%H:%M:%S.%3N) HTTP $code $(head -c 200 "$WORK/traffic.body" 2>/dev/null)" >>"$TRAFFIC_FILE.err"
      sleep 0.02
    done
  ) &
  TRAFFIC_PID=$!
}
# Stops the traffic; sets TRAFFIC (requests, failures, what the load
# balancer retried, which gateway served how many) and fails when any
# request failed.
traffic_stop() {
  local total failed by
  touch "$WORK/traffic.stop"
  wait "$TRAFFIC_PID" || true
  TRAFFIC_PID=""
  total=$(grep -c . "$TRAFFIC_FILE" || true)
  failed=$(grep -vc ' 200$' "$TRAFFIC_FILE" || true)
  # The load balancer's request lines (they start with a time; its health
  # check lines do not) for this stretch: per server, and retried.
  tail -n +"$((TRAFFIC_LB_FROM + 1))" "$WORK/haproxy.log" |
    grep -E '^[0-9]+\.[0-9]+ gateways/' >"$TRAFFIC_FILE.lb" || true
  # shellcheck disable=SC2016 # awk's own $2, not the shell's
  by=$(awk '{ n[substr($2, 10)]++; if ($4 != "0") r++ }
    END { for (s in n) printf "%s %d, ", s, n[s]; printf "%d retried by the LB", r }' "$TRAFFIC_FILE.lb")
  TRAFFIC="traffic: $total requests, $failed failed ($by)"
  log "$TRAFFIC_NAME $TRAFFIC"
  # shellcheck disable=SC2016 # awk's own $4, not the shell's
  awk '$4 != "0"' "$TRAFFIC_FILE.lb" | head -3 | sed 's/^/  retried by the LB: /'
  if [ "$failed" -ne 0 ]; then
    head -5 "$TRAFFIC_FILE.err"
    return 1
  fi
  [ "$total" -gt 0 ]
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ---- up from nothing -------------------------------------------------------

# The load balancer is part of what the drill brings up, as a host package.
if ! command -v haproxy >/dev/null && [ "$(id -u)" = 0 ]; then
  echo "== installing haproxy (the drill's load balancer)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null
fi
for tool in etcdctl curl timeout haproxy; do
  command -v "$tool" >/dev/null || { echo "ha-drill: $tool is not installed" >&2; exit 2; }
done
docker image inspect "$CAIRN_IMAGE" >/dev/null 2>&1 ||
  { echo "ha-drill: image $CAIRN_IMAGE not found; run compose/build-image.sh" >&2; exit 2; }
for p in 9000 9001 12379 13379 14379 9080 9081 9443 9444 9091 9092 19080 19000 19404; do
  if port_busy "$p"; then echo "ha-drill: port $p on 127.0.0.1 is in use" >&2; exit 2; fi
done

# The control plane is a subcommand of the same binary; an image built
# before it existed cannot run this drill.
docker run --rm "$CAIRN_IMAGE" control --help >/dev/null 2>&1 ||
  { echo "ha-drill: $CAIRN_IMAGE has no 'control' subcommand; rebuild it with compose/build-image.sh" >&2; exit 2; }
SERVICES=(store1 store2 store3 control1 control2 gateway1 gateway2 echo)

log "compose: ${COMPOSE[*]} ($("${COMPOSE[@]}" version --short 2>/dev/null || echo '?')), project $PROJECT"
t0=$(now_ms)
compose up -d "${SERVICES[@]}"
wait_healthy "${SERVICES[@]}"
log "stack healthy in $(($(now_ms) - t0)) ms"
ectl endpoint status -w table
ectl member list -w table
put_acked /drill/setup/1 v1
# haproxy on the host, in front of both tiers (its systemd service, if any,
# is left alone: this one runs from the work directory).
lb_start || { echo "ha-drill: haproxy did not start" >&2; exit 2; }
wait_for 20 "the load balancer to see every gateway and control plane up" \
  eval 'lb_up gateways gateway1 && lb_up gateways gateway2 && lb_up controls control1 && lb_up controls control2'
log "haproxy (pid $HAPROXY_PID): gateways on $GATEWAY_LB, control planes on $CONTROL_LB, stats on $LB_STATS"

# ---- G1: a route through the control planes' LB, served through the gateways' LB

ok=ok
propagate test-get /get || ok=fail
props=("$PROPAGATION")
serves "$GATEWAY_LB" /get || { log "the gateways' load balancer does not serve /get"; ok=fail; }
log "smoke test: curl $GATEWAY_LB/get -H 'Host: test.com': $(curl -s -m 2 -H 'Host: test.com' "$GATEWAY_LB/get" | tr -d '\n ' | cut -c1-160)"
# Two more routes, so "every route they had" below means more than one.
for r in "test-a /a" "test-b /b/c"; do
  propagate "${r% *}" "${r#* }" || ok=fail
  props+=("$PROPAGATION")
done
detail=$(printf '%s; ' "${props[@]}")
result "G1 a route written through the control planes' LB is served through the gateways' LB" "$ok" "${detail%; }"

# ---- G2: stop gateway1 under traffic ---------------------------------------

ok=ok
traffic_start g2
sleep 2 # steady traffic through both gateways first
# docker stop sends SIGTERM: the gateway says it is not ready and serves on
# for its drain period (2 s), so the load balancer takes it out first.
t=$(now_ms)
compose stop -t 5 gateway1 &
stop_pid=$!
wait_for 10 "the load balancer to see gateway1 down" eval '! lb_up gateways gateway1' || ok=fail
down=$(($(now_ms) - t))
wait "$stop_pid" || ok=fail
log "gateway1 stopped in $(($(now_ms) - t)) ms; the load balancer marked it down after ${down} ms"
sleep 3 # traffic through gateway2 alone
compose start gateway1
wait_healthy gateway1 || ok=fail
serves "${GATEWAY_URLS[0]}" /get || { log "gateway1 does not serve /get after its restart"; ok=fail; }
wait_for 10 "the load balancer to see gateway1 up" lb_up gateways gateway1 || ok=fail
from=$(wc -l <"$WORK/haproxy.log")
sleep 2 # traffic through both again
back=$(tail -n +"$((from + 1))" "$WORK/haproxy.log" | grep -c '^[0-9.]* gateways/gateway1 200 ' || true)
[ "$back" -gt 0 ] || { log "the load balancer sent gateway1 no request after it came back"; ok=fail; }
traffic_stop || ok=fail
result "G2 stop gateway1: traffic through the LB keeps flowing, gateway1 comes back" "$ok" \
  "$TRAFFIC; out of the LB ${down} ms after the stop began; $back requests to gateway1 in the 2 s after it came back"

# ---- 1: stop control1 ------------------------------------------------------

ok=ok
traffic_start s1
route_rw "${CONTROL_URLS[0]}" s1-before || ok=fail
compose stop -t 5 control1
t=$(now_ms)
route_rw "${CONTROL_URLS[1]}" s1-via-control2 || ok=fail
# The route written through control1 before it stopped reads through control2.
out=$(admin GET "${CONTROL_URLS[1]}" /apisix/admin/routes/s1-before)
[ "${out%% *}" = 200 ] || { log "GET s1-before via control2: $out"; ok=fail; }
took=$(($(now_ms) - t))
compose start control1
wait_healthy control1 || ok=fail
route_rw "${CONTROL_URLS[0]}" s1-after || ok=fail
traffic_stop || ok=fail
result "1 stop control1: admin API via control2 reads and writes" "$ok" "control2 answered in ${took} ms; $TRAFFIC"

# ---- 2: stop store1, then the leader ---------------------------------------

ok=ok
traffic_start s2a
# Scenario 3 checks that store1 comes back on another address; Docker forgets
# a stopped container's address, so note it now.
store1_ip=$(ip_of store1)
compose stop -t 5 store1
# If store1 led, the other two elect a leader first (scenario 5 is the one
# about requests in flight during an election); bounded like everything else.
t=$(now_ms)
wait_for 30 "a leader among store2, store3" leader_service store2 store3 || ok=fail
log "leader with store1 stopped: $(leader_service store2 store3 || echo none) ($(($(now_ms) - t)) ms after the stop)"
for i in 1 2 3; do
  put_acked "/drill/s2/etcdctl-$i" "v$i" || { log "etcdctl put failed with store1 down"; ok=fail; }
done
[ "$(ectl get /drill/s2/etcdctl-3 --print-value-only)" = v3 ] || { log "etcdctl get failed"; ok=fail; }
route_rw "${CONTROL_URLS[0]}" s2-control1 || ok=fail
route_rw "${CONTROL_URLS[1]}" s2-control2 || ok=fail
gateways_serve_all || ok=fail
traffic_stop || ok=fail
result "2a stop store1: etcdctl and both control planes read and write, the gateways serve" "$ok" "$TRAFFIC"

ok=ok
traffic_start s2b
leader=$(leader_service store2 store3) || { log "no leader among store2, store3"; leader=""; }
if [ -z "$leader" ]; then
  traffic_stop || true
  result "2b stop the leader too: 1 of 3 left" fail "no leader found"
else
  survivor=store2
  [ "$leader" = store2 ] && survivor=store3
  log "store leader is $leader; stopping it, $survivor stays"
  compose stop -t 5 "$leader"
  s=$(now_ms)
  set +e
  # A command timeout longer than the store's own request timeout, so the
  # error shown is the store's answer, not etcdctl giving up.
  err=$(timeout 60 etcdctl --endpoints="$(ep_of "$survivor")" \
    --dial-timeout=2s --command-timeout=20s put /drill/s2/no-quorum x 2>&1)
  rc=$?
  set -e
  took=$(($(now_ms) - s))
  if [ "$rc" = 0 ]; then
    log "a write succeeded without quorum"; ok=fail
  elif [ "$rc" = 124 ]; then
    log "etcdctl put hung for 60 s"; ok=fail
  else
    log "write refused after $took ms: $(grep -v '"level":"warn"' <<<"$err" | tr '\n' ' ' | cut -c1-200)"
  fi
  got=$(EPS=$(ep_of "$survivor") ectl get /drill/s2/etcdctl-3 --consistency=s --print-value-only) || got=""
  [ "$got" = v3 ] || { log "serializable read on $survivor gave '$got'"; ok=fail; }
  # The admin API refuses writes too: a 5xx with an error_msg, within
  # ADMIN_TIMEOUT (curl's bound; "000" = no answer = it hung).
  admin_took=()
  for base in "${CONTROL_URLS[@]}"; do
    s=$(now_ms)
    out=$(admin PUT "$base" /apisix/admin/routes/s2-no-quorum '{"uri":"/drill/nq","upstream":{"type":"roundrobin","nodes":{"127.0.0.1:1980":1}}}')
    code=${out%% *}
    admin_took+=(":${base##*:} in $(($(now_ms) - s)) ms")
    log "admin PUT via $base without quorum: $out ($(($(now_ms) - s)) ms)"
    case "$code" in
      5??) [[ $out == *'"error_msg"'* ]] || { log "a 5xx from $base without an error_msg"; ok=fail; } ;;
      000) log "no answer from $base within ${ADMIN_TIMEOUT} s"; ok=fail ;;
      *) log "a write through $base was not refused (HTTP $code)"; ok=fail ;;
    esac
  done
  # The gateways keep serving the last config they have.
  gateways_serve_all || ok=fail
  traffic_stop || ok=fail
  result "2b stop the leader too: etcdctl and admin API writes refused, serializable reads answer, the gateways serve" "$ok" \
    "etcdctl refused in ${took} ms; admin API via ${admin_took[*]}; $TRAFFIC"
fi

# ---- 3: restart the stopped stores -----------------------------------------

ok=ok
traffic_start s3
# store1's address is free while it is stopped (Docker drops it); a
# placeholder container takes an address first, so store1 comes back on a
# different one and its peers can only find it by resolving its name again.
net=$(docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{end}}' "$(cid store2)")
PLACEHOLDER="${PROJECT}-placeholder"
docker run -d --name "$PLACEHOLDER" --network "$net" "$CAIRN_IMAGE" \
  store --name placeholder --data-dir /placeholder >/dev/null
# The other stopped store starts first: with the placeholder it takes the
# lowest free addresses, one of which was store1's (Docker hands out the
# lowest free address, and would otherwise give store1 its old one back).
[ -n "$leader" ] && compose start "$leader"
compose start store1
wait_healthy store1 store2 store3 control1 control2 || ok=fail
new_ip=$(ip_of store1)
log "store1 was at $store1_ip before it stopped, now at $new_ip"
if [ "$store1_ip" = "$new_ip" ]; then
  log "store1 kept its address: the re-resolution path was not exercised"; ok=fail
fi
put_acked /drill/s3/after-rejoin v1 || ok=fail
same_hashkv || { log "HashKV differs"; ok=fail; }
check_acked each || ok=fail
gateways_serve_all || ok=fail
traffic_stop || ok=fail
result "3 restart: members rejoin, same HashKV at the same revision, no acknowledged write lost" "$ok" "$TRAFFIC"

# ---- 4: SIGKILL the leader under load --------------------------------------

ok=ok
traffic_start s4
leader=$(leader_service store1 store2 store3) || leader=""
if [ -z "$leader" ]; then
  traffic_stop || true
  result "4 kill -9 the leader under load" fail "no leader"
else
  start_load /drill/s4 "$WORK/load4" "$WORK/stop4" 60
  wait_for 20 "the load to be writing" grep -q ok "$WORK/load4" || ok=fail
  sleep 1 # a second of steady writes before the kill
  docker kill -s KILL "$(cid "$leader")" >/dev/null
  # Taken when `docker kill` has returned, i.e. the leader is dead: a write
  # that started earlier may have finished on the old leader.
  kill_ms=$(now_ms)
  log "SIGKILL $leader (the leader)"
  # Writes that started after the kill and succeeded: the first one's end.
  # shellcheck disable=SC2016 # awk's own $1, not the shell's
  wait_for 30 "a write started after the kill to succeed" \
    awk -v k="$kill_ms" '$1 >= k && ($3 == "ok" || $3 == "retry-ok") {f=1} END {exit !f}' "$WORK/load4" || ok=fail
  recover=$(awk -v k="$kill_ms" '$1 >= k && ($3 == "ok" || $3 == "retry-ok") {print $2 - k; exit}' "$WORK/load4")
  sleep 2
  stop_load "$WORK/stop4"
  log "writes succeeded again ${recover:-?} ms after the SIGKILL"
  compose start "$leader"
  wait_healthy store1 store2 store3 || ok=fail
  check_acked || ok=fail
  same_hashkv || ok=fail
  n=$(grep -c . "$WORK/load4" || true)
  traffic_stop || ok=fail
  result "4 kill -9 the leader under load: acknowledged writes survive" "$ok" \
    "writes again after ${recover:-?} ms; $n writes in the load; $TRAFFIC"
fi

# ---- 5: rolling restart under load -----------------------------------------

ok=ok
traffic_start s5
elections=()
s5_since=$(date -u +%Y-%m-%dT%H:%M:%SZ)
start_load /drill/s5 "$WORK/load5" "$WORK/stop5" 240
start_admin_load "$WORK/admin5" "$WORK/stopadmin5" 240
# And 500 writes/s from `cairn bench put` in a container on the stores'
# network (32 clients over the three members, as real clients spread), run
# until the restarts are over and stopped with SIGTERM, on which it reports.
BENCH5="${PROJECT}-bench5"
net5=$(docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{end}}' "$(cid store1)")
docker run --rm --name "$BENCH5" --network "$net5" "$CAIRN_IMAGE" bench put \
  --endpoints http://store1:2379,http://store2:2379,http://store3:2379 \
  --conns 3 --clients 32 --rate 500 --duration 600s --key-space 10000 --json \
  >"$WORK/bench5.json" 2>"$WORK/bench5.err" &
bench5_pid=$!
wait_for 20 "the load to be writing" grep -q ok "$WORK/load5" || ok=fail
wait_for 20 "the admin load to be writing" grep -q ok "$WORK/admin5" || ok=fail
for s in store1 store2 store3; do
  others=()
  for o in store1 store2 store3; do [ "$o" != "$s" ] && others+=("$o"); done
  was_leader=0
  [ "$(leader_service store1 store2 store3 || true)" = "$s" ] && was_leader=1
  old_id=$(member_id_of "$s")
  # A stopping leader hands leadership over before it exits (SIGTERM), so
  # the new leader is looked for while `stop` runs, from the moment it
  # starts. Polled without pause; each poll is a few etcdctl calls (~0.1 s),
  # the resolution.
  t=$(now_ms)
  compose stop -t 10 "$s" >/dev/null 2>&1 &
  stop_pid=$!
  if [ "$was_leader" = 1 ]; then
    new=""
    while [ "$(($(now_ms) - t))" -lt 30000 ]; do
      new=$(leader_service "${others[@]}") && [ "$(member_id_of "$new")" != "$old_id" ] && break
      new=""
    done
    if [ -n "$new" ]; then
      e=$(($(now_ms) - t))
      elections+=("$s(leader): $new leads ${e} ms after the stop began")
      log "restarting $s (the leader): $new leads ${e} ms after the stop began"
    else
      log "no new leader within 30 s of stopping $s"
      ok=fail
    fi
  else
    log "restarting $s (a follower): no election"
  fi
  wait "$stop_pid" || true
  log "$s stopped $(($(now_ms) - t)) ms after the stop began"
  compose start "$s" >/dev/null 2>&1
  wait_healthy store1 store2 store3 || ok=fail
  sleep 1
done
sleep 1
docker kill -s TERM "$BENCH5" >/dev/null 2>&1 || true
wait "$bench5_pid" || true
stop_load "$WORK/stop5"
stop_admin_load "$WORK/stopadmin5"
# One JSON line: "ok" and "failed" counts, latency of the successful writes.
bench5=$(grep -o '"ok":[0-9]*,"failed":[0-9]*' "$WORK/bench5.json" || true)
bench5_errors=""
bench5_ok=$(sed -n 's/.*"ok":\([0-9]*\).*/\1/p' <<<"$bench5")
bench5_failed=$(sed -n 's/.*"failed":\([0-9]*\).*/\1/p' <<<"$bench5")
bench5_max=$(grep -o '"max_ms":[0-9.]*' "$WORK/bench5.json" | head -1 | cut -d: -f2)
bench5_rps=$(grep -o '"throughput_rps":[0-9.]*' "$WORK/bench5.json" | cut -d: -f2)
log "rolling restart: cairn bench put at 500/s: ${bench5_ok:-?} writes ok (${bench5_rps:-?}/s), ${bench5_failed:-?} failed, slowest ${bench5_max:-?} ms"
if [ -z "$bench5_ok" ] || [ "$bench5_ok" = 0 ] || [ "$bench5_failed" != 0 ]; then
  ok=fail
  tail -5 "$WORK/bench5.err"
  # The error texts also go into the summary line: CI shows only its tail.
  bench5_errors=$(grep -o '"errors":{[^}]*}' "$WORK/bench5.json" | head -c 600 || true)
  log "rolling restart: bench errors: ${bench5_errors:-none recorded}"
fi
retries=$(grep -c ' retry-ok ' "$WORK/load5" || true)
fails=$(grep -c ' fail ' "$WORK/load5" || true)
total=$(grep -c . "$WORK/load5" || true)
log "rolling restart: $total etcdctl writes, $retries needed a retry, $fails failed after a retry"
[ "$fails" = 0 ] || { ok=fail; grep ' fail ' "$WORK/load5" | head -5; tail -5 "$WORK/load5.err"; }
aretries=$(grep -c ' retry-ok ' "$WORK/admin5" || true)
afails=$(grep -c ' fail ' "$WORK/admin5" || true)
atotal=$(grep -c . "$WORK/admin5" || true)
log "rolling restart: $atotal admin API route writes, $aretries needed a retry, $afails failed after a retry"
[ -s "$WORK/admin5.err" ] && tail -5 "$WORK/admin5.err"
[ "$afails" = 0 ] || { ok=fail; grep ' fail ' "$WORK/admin5" | head -5; }
check_acked || ok=fail
same_hashkv || ok=fail
for e in "${elections[@]}"; do log "election: $e"; done
# Each hand-over as the stopping leader measured it (from its stop request to
# the transferee leading), from the stores' logs.
handovers=$(for s in store1 store2 store3; do docker logs --since "$s5_since" "$(cid "$s")" 2>&1; done |
  sed 's/\x1b\[[0-9;]*m//g' | grep 'stopping: leadership handed over' |
  grep -o 'took_ms=[0-9]*' | sed 's/took_ms=\(.*\)/\1 ms/' | paste -sd, - || true)
log "hand-overs as the stopping leaders measured them: ${handovers:-none}"
traffic_stop || ok=fail
result "5 rolling restart under load: no request failed beyond one retry, none of 500 writes/s failed" "$ok" \
  "${bench5_ok:-?} bench writes at 500/s, ${bench5_failed:-?} failed${bench5_errors:+ ($bench5_errors)}, slowest ${bench5_max:-?} ms; $total etcdctl writes, $retries retried after ${RETRY_DELAY}s; $atotal admin API writes, $aretries retried; new leader seen: ${elections[*]:-none}; hand-overs took ${handovers:-none}; $TRAFFIC"

# ---- G3: stop and start everything -----------------------------------------

ok=ok
# A full outage, on purpose: no traffic while everything is down.
compose stop -t 5
log "every service stopped; starting them all again"
t=$(now_ms)
compose start
wait_healthy "${SERVICES[@]}" || ok=fail
wait_for 20 "the load balancer to see every gateway and control plane up" \
  eval 'lb_up gateways gateway1 && lb_up gateways gateway2 && lb_up controls control1 && lb_up controls control2' || ok=fail
log "stack healthy again $(($(now_ms) - t)) ms after the start"
traffic_start g3
gateways_serve_all || ok=fail
propagate test-after-restart /after-restart || ok=fail
sleep 2
traffic_stop || ok=fail
result "G3 restart everything: every route served again, a new route reaches both gateways" "$ok" "$PROPAGATION; $TRAFFIC"

echo
echo "==== HA drill summary"
printf '%s\n' "${RESULTS[@]}"
if [ "$FAILED" -ne 0 ]; then
  echo "ha-drill: FAILED"
  exit 1
fi
echo "ha-drill: all scenarios passed"
