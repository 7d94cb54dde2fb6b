#!/usr/bin/env bash
# The HA drill: brings compose/docker-compose.yaml up from nothing on this
# machine and checks, with etcdctl and the admin API, what the reference
# deployment guide checks by hand, and more:
#
#   1. stop control1: the admin API through control2 still reads and writes
#   2. stop store1: reads and writes through both control planes and etcdctl
#      still work; then stop the store leader too: with 1 of 3 left, writes
#      fail with a clear error within a bound, serializable reads answer
#   3. start them again (store1 on a NEW address): they rejoin, every member
#      has the same HashKV at the same revision, no acknowledged write is lost
#   4. docker kill (SIGKILL) the leader under a write load: acknowledged
#      writes survive; prints the time until writes succeed again
#   5. rolling restart of the three stores under load (etcdctl puts, and
#      admin-API route writes through both control planes): no request fails
#      beyond one retry; prints each election's duration
#
# Prints PASS/FAIL per scenario, exits non-zero on any FAIL, and removes its
# containers, network and volumes on every exit.
#
#   compose/build-image.sh && compose/ha-drill.sh
#
# Needs: docker with docker-compose (1.29) or `docker compose`, the
# cairn:local image, etcdctl 3.4 (Debian's etcd-client), curl. Uses host
# ports 9000, 9001, 12379, 13379, 14379 on 127.0.0.1, and the compose file's
# gateways publish 9080/9081, 9443/9444 and 9091/9092 (the scenarios below do
# not exercise the gateway tier yet).
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
RESULTS=()
FAILED=0
LOAD_PID=""
ADMIN_LOAD_PID=""
PLACEHOLDER=""
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
  [ -n "$LOAD_PID" ] && kill "$LOAD_PID" 2>/dev/null && wait "$LOAD_PID" 2>/dev/null
  [ -n "$ADMIN_LOAD_PID" ] && kill "$ADMIN_LOAD_PID" 2>/dev/null && wait "$ADMIN_LOAD_PID" 2>/dev/null
  if [ "$rc" -ne 0 ] || [ "$FAILED" -ne 0 ]; then
    echo "---- last log lines of each service"
    compose logs --no-color --tail 25 2>/dev/null || true
  fi
  [ -n "$PLACEHOLDER" ] && docker rm -f -v "$PLACEHOLDER" >/dev/null 2>&1
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
is_healthy() { [ "$(health "$1")" = healthy ]; }
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

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ---- up from nothing -------------------------------------------------------

for tool in etcdctl curl timeout; do
  command -v "$tool" >/dev/null || { echo "ha-drill: $tool is not installed" >&2; exit 2; }
done
docker image inspect "$CAIRN_IMAGE" >/dev/null 2>&1 ||
  { echo "ha-drill: image $CAIRN_IMAGE not found; run compose/build-image.sh" >&2; exit 2; }
for p in 9000 9001 12379 13379 14379; do
  if port_busy "$p"; then echo "ha-drill: port $p on 127.0.0.1 is in use" >&2; exit 2; fi
done

# The control plane is a subcommand of the same binary; an image built
# before it existed cannot run this drill.
docker run --rm "$CAIRN_IMAGE" control --help >/dev/null 2>&1 ||
  { echo "ha-drill: $CAIRN_IMAGE has no 'control' subcommand; rebuild it with compose/build-image.sh" >&2; exit 2; }
SERVICES=(store1 store2 store3 control1 control2)

log "compose: ${COMPOSE[*]} ($("${COMPOSE[@]}" version --short 2>/dev/null || echo '?')), project $PROJECT"
t0=$(now_ms)
compose up -d "${SERVICES[@]}"
wait_healthy "${SERVICES[@]}"
log "stack healthy in $(($(now_ms) - t0)) ms"
ectl endpoint status -w table
ectl member list -w table
put_acked /drill/setup/1 v1

# ---- 1: stop control1 ------------------------------------------------------

ok=ok
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
result "1 stop control1: admin API via control2 reads and writes" "$ok" "control2 answered in ${took} ms"

# ---- 2: stop store1, then the leader ---------------------------------------

ok=ok
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
result "2a stop store1: etcdctl and both control planes read and write" "$ok"

ok=ok
leader=$(leader_service store2 store3) || { log "no leader among store2, store3"; leader=""; }
if [ -z "$leader" ]; then
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
  result "2b stop the leader too: etcdctl and admin API writes refused, serializable reads answer" "$ok" \
    "etcdctl refused in ${took} ms; admin API via ${admin_took[*]}"
fi

# ---- 3: restart the stopped stores -----------------------------------------

ok=ok
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
result "3 restart: members rejoin, same HashKV at the same revision, no acknowledged write lost" "$ok"

# ---- 4: SIGKILL the leader under load --------------------------------------

ok=ok
leader=$(leader_service store1 store2 store3) || leader=""
if [ -z "$leader" ]; then
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
  result "4 kill -9 the leader under load: acknowledged writes survive" "$ok" \
    "writes again after ${recover:-?} ms; $n writes in the load"
fi

# ---- 5: rolling restart under load -----------------------------------------

ok=ok
elections=()
start_load /drill/s5 "$WORK/load5" "$WORK/stop5" 240
start_admin_load "$WORK/admin5" "$WORK/stopadmin5" 240
wait_for 20 "the load to be writing" grep -q ok "$WORK/load5" || ok=fail
wait_for 20 "the admin load to be writing" grep -q ok "$WORK/admin5" || ok=fail
for s in store1 store2 store3; do
  others=()
  for o in store1 store2 store3; do [ "$o" != "$s" ] && others+=("$o"); done
  was_leader=0
  [ "$(leader_service store1 store2 store3 || true)" = "$s" ] && was_leader=1
  old_id=$(member_id_of "$s")
  compose stop -t 10 "$s" >/dev/null 2>&1
  # The election starts when the old leader's process is gone (openraft 0.9
  # cannot hand leadership over), i.e. when `stop` returns. Polled without
  # pause; each poll is a few etcdctl calls (~0.1 s), the resolution.
  t=$(now_ms)
  if [ "$was_leader" = 1 ]; then
    new=""
    while [ "$(($(now_ms) - t))" -lt 30000 ]; do
      new=$(leader_service "${others[@]}") && [ "$(member_id_of "$new")" != "$old_id" ] && break
      new=""
    done
    if [ -n "$new" ]; then
      e=$(($(now_ms) - t))
      elections+=("$s(leader): new leader $new after ${e} ms")
      log "restarting $s (the leader): $new elected ${e} ms after $s stopped"
    else
      log "no new leader within 30 s of stopping $s"
      ok=fail
    fi
  else
    log "restarting $s (a follower): no election"
  fi
  compose start "$s" >/dev/null 2>&1
  wait_healthy store1 store2 store3 || ok=fail
  sleep 1
done
sleep 1
stop_load "$WORK/stop5"
stop_admin_load "$WORK/stopadmin5"
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
result "5 rolling restart under load: no request failed beyond one retry" "$ok" \
  "$total etcdctl writes, $retries retried after ${RETRY_DELAY}s; $atotal admin API writes, $aretries retried; elections: ${elections[*]:-none}"

echo
echo "==== HA drill summary"
printf '%s\n' "${RESULTS[@]}"
if [ "$FAILED" -ne 0 ]; then
  echo "ha-drill: FAILED"
  exit 1
fi
echo "ha-drill: all scenarios passed"
