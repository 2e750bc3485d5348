#!/usr/bin/env bash
# shellcheck disable=SC2154 # HOST_cached and HOST_fresh are set by start_emulator, by name
# Footprint benchmark for rolebridge-agent. Prints figures; asserts nothing.
#
# Builds the agent as it ships (release, static glibc), starts the GKE metadata emulator on
# loopback, and measures:
#   - stripped binary size
#   - `init` wall time and peak RSS (median / max over $RUNS runs), emulator serving a cached
#     token so that RSA signing in the emulator is not counted
#   - `check` wall time and peak RSS
#   - idle RSS of `run` (VmRSS / VmHWM from /proc/PID/status after the first write)
#   - CPU per refresh of `run` (/proc/PID/schedstat, nanoseconds on CPU, over ~$REFRESH_SECS s
#     of 2-second tokens, i.e. a refresh about every second)
#   - the credentials endpoint (needs python3 with moto[server], see e2e/sdk/install-peers.sh):
#     `run` serving one chained binding (moto as STS), idle private memory (smaps_rollup
#     Private_Clean + Private_Dirty) next to token-only `run`; latency of $ENDPOINT_REQUESTS
#     sequential requests over one keep-alive connection (p50/p99/max, measured by the debug
#     build of e2e's endpoint-bench client, so client overhead is included); 50 concurrent
#     requests and the STS calls they caused (from moto's request recorder)
#
# Usage: agent/bench.sh            (env: RUNS=20 REFRESH_SECS=20)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh

RUNS="${RUNS:-20}"
REFRESH_SECS="${REFRESH_SECS:-20}"
ENDPOINT_REQUESTS="${ENDPOINT_REQUESTS:-20000}"
PY="${ROLEBRIDGE_PYTHON:-python3}"
AUD=sts.amazonaws.com

echo "building release agent (static) and the emulator..." >&2
# The measured binary is the shipped one: the images' static release build, both packages as
# scripts/images.sh builds them (one package alone unifies other features: another binary; cargo
# does nothing when it is fresh).
shipped_build
AGENT="$(shipped_dir)/rolebridge-agent"
# The emulator and the endpoint client are test peers, not measured: debug builds of e2e's bins.
cargo build --quiet -p rolebridge-e2e --bin gke-metadata-emulator --bin endpoint-bench
EMU=${CARGO_TARGET_DIR:-target}/debug/gke-metadata-emulator
LOAD=${CARGO_TARGET_DIR:-target}/debug/endpoint-bench

WORK="$(mktemp -d)"
# Token files go to tmpfs when there is one: the webhook's emptyDir is in memory (medium Memory),
# where fsync is free; a disk-backed directory would add the filesystem's fsync cost.
TOK="$(mktemp -d -p /dev/shm 2>/dev/null || mktemp -d)"
remove_on_exit "$WORK" "$TOK"

# start_emulator NAME ARGS... -> sets HOST_<NAME>
start_emulator() {
  local name=$1; shift
  "$EMU" --listen 127.0.0.1:0 "$@" >"$WORK/$name.out" 2>/dev/null &
  track $!
  for _ in $(seq 100); do
    grep -q '^GCE_METADATA_HOST=' "$WORK/$name.out" 2>/dev/null && break
    sleep 0.05
  done
  local host
  host="$(sed -n 's/^GCE_METADATA_HOST=//p' "$WORK/$name.out")"
  [ -n "$host" ] || { echo "emulator $name did not start" >&2; exit 1; }
  printf -v "HOST_$name" '%s' "$host"
}

now_ns() { date +%s%N; }

# stats CMD... : runs CMD $RUNS times; prints "median_ms max_ms median_rss_kib max_rss_kib"
stats() {
  local walls=() rsss=()
  for _ in $(seq "$RUNS"); do
    local t0 t1
    t0=$(now_ns)
    "$@" >/dev/null 2>&1
    t1=$(now_ns)
    walls+=("$(( (t1 - t0) / 1000 ))")
    /usr/bin/time -f '%M' -o "$WORK/rss" "$@" >/dev/null 2>&1
    rsss+=("$(tail -n1 "$WORK/rss")")
  done
  local ws rs
  ws=$(printf '%s\n' "${walls[@]}" | sort -n)
  rs=$(printf '%s\n' "${rsss[@]}" | sort -n)
  local mid=$(( (RUNS + 1) / 2 ))
  printf '%s %s %s %s\n' \
    "$(echo "$ws" | sed -n "${mid}p" | awk '{printf "%.2f", $1/1000}')" \
    "$(echo "$ws" | tail -n1 | awk '{printf "%.2f", $1/1000}')" \
    "$(echo "$rs" | sed -n "${mid}p" | awk '{printf "%.2f", $1/1024}')" \
    "$(echo "$rs" | tail -n1 | awk '{printf "%.2f", $1/1024}')"
}

start_emulator cached --cache-tokens --lifetime 3600
# Warm the emulator's token cache so `init` measures the agent, not RSA signing.
curl -s -o /dev/null -H 'Metadata-Flavor: Google' \
  "http://$HOST_cached/computeMetadata/v1/instance/service-accounts/default/identity?audience=$AUD&format=full"

SIZE=$(stat -c %s "$AGENT")
if ldd "$AGENT" 2>&1 | grep -q 'statically linked\|not a dynamic executable'; then
  LINKAGE="statically linked"
else
  LINKAGE="dynamically linked"
fi

export GCE_METADATA_HOST="$HOST_cached"
read -r INIT_MED INIT_MAX INIT_RSS_MED INIT_RSS_MAX < <(stats "$AGENT" --log-level off init --token "$TOK/init.token=$AUD")
read -r CHECK_MED CHECK_MAX CHECK_RSS_MED CHECK_RSS_MAX < <(stats "$AGENT" --log-level off check --token "$TOK/init.token=$AUD")

# Idle RSS of the sidecar.
"$AGENT" --log-level off run --token "$TOK/run.token=$AUD" &
RUN_PID=$!
track "$RUN_PID"
for _ in $(seq 200); do [ -s "$TOK/run.token" ] && break; sleep 0.01; done
sleep 3
IDLE_RSS=$(mib2 "$(rss_kib "$RUN_PID")")
IDLE_HWM=$(mib2 "$(hwm_kib "$RUN_PID")")
IDLE_THREADS=$(status_field Threads "$RUN_PID")
IDLE_ANON=$(mib2 "$(anon_kib "$RUN_PID")")
IDLE_FILE=$(mib2 "$(status_field RssFile "$RUN_PID")")
IDLE_PRIV_KIB=$(private_kib "$RUN_PID")
kill -TERM "$RUN_PID"; wait "$RUN_PID" || true

# CPU per refresh: fresh 2 s tokens from a non-caching emulator.
start_emulator fresh --lifetime 2
GCE_METADATA_HOST="$HOST_fresh" "$AGENT" --log-level off run --token "$TOK/refresh.token=$AUD" &
REF_PID=$!
track "$REF_PID"
for _ in $(seq 200); do [ -s "$TOK/refresh.token" ] && break; sleep 0.01; done
issued() { curl -s "http://$HOST_fresh/emulator/stats" | sed -n 's/.*"tokens_issued":\([0-9]*\).*/\1/p'; }
C0=$(issued); S0=$(awk '{print $1}' "/proc/$REF_PID/schedstat")
sleep "$REFRESH_SECS"
C1=$(issued); S1=$(awk '{print $1}' "/proc/$REF_PID/schedstat")
REF_RSS=$(mib2 "$(hwm_kib "$REF_PID")")
kill -TERM "$REF_PID"; wait "$REF_PID" || true
REFRESHES=$(( C1 - C0 ))
CPU_PER_REFRESH=$(awk -v s="$(( S1 - S0 ))" -v n="$REFRESHES" 'BEGIN { if (n > 0) printf "%.3f", s / n / 1e6; else print "n/a" }')

# The credentials endpoint: one chained binding, moto as STS.
EP="n/a"
if "$PY" -c 'import moto, flask' 2>/dev/null; then
  MOTO_PORT=$(free_port)
  MOTO_ENABLE_RECORDING=true MOTO_RECORDER_FILEPATH="$WORK/moto-recording" \
    "$PY" -m moto.server -H 127.0.0.1 -p "$MOTO_PORT" >/dev/null 2>&1 &
  track $!
  wait_http "http://127.0.0.1:$MOTO_PORT/moto-api/" 15 $! || true
  EP_PORT=$(free_port)
  SPEC='{"name":"bench","audience":"sts.amazonaws.com","roleArn":"arn:aws:iam::111111111111:role/ci-identity","chain":[{"roleArn":"arn:aws:iam::222222222222:role/docs-writer","externalId":"bench-ext"}],"durationSeconds":900,"sessionTags":true}'
  GCE_METADATA_HOST="$HOST_cached" AWS_ENDPOINT_URL_STS="http://127.0.0.1:$MOTO_PORT" \
    ROLEBRIDGE_POD_NAME=bench-pod ROLEBRIDGE_POD_NAMESPACE=bench ROLEBRIDGE_POD_UID=0000 \
    ROLEBRIDGE_SERVICE_ACCOUNT=bench ROLEBRIDGE_CLUSTER_NAME=bench \
    "$AGENT" --log-level off run --credentials "$SPEC" --credentials-port "$EP_PORT" \
    --auth-token-file "$TOK/credentials.auth" &
  EP_PID=$!
  track "$EP_PID"
  wait_http "http://127.0.0.1:$EP_PORT/healthz" 10 "$EP_PID" || true
  sleep 3
  EP_RSS=$(mib2 "$(rss_kib "$EP_PID")")
  EP_ANON=$(mib2 "$(anon_kib "$EP_PID")")
  EP_PRIV_KIB=$(private_kib "$EP_PID")
  assume_roles() {
    curl -s "http://127.0.0.1:$MOTO_PORT/moto-api/recorder/download-recording" | "$PY" -c '
import base64, json, sys
n = 0
for line in sys.stdin:
    e = json.loads(line)
    b = e.get("body") or ""
    if e.get("body_encoded"):
        b = base64.b64decode(b).decode("utf-8", "replace")
    n += "Action=AssumeRole&" in b + "&"
print(n)'
  }
  STS0=$(assume_roles)
  LOADJSON=$("$LOAD" --addr "127.0.0.1:$EP_PORT" --token-file "$TOK/credentials.auth" --requests "$ENDPOINT_REQUESTS" --concurrency 50)
  STS1=$(assume_roles)
  EP_HWM=$(mib2 "$(hwm_kib "$EP_PID")")
  kill -TERM "$EP_PID"; wait "$EP_PID" || true
  field() { echo "$LOADJSON" | sed -n "s/.*\"$1\":\([0-9.]*\).*/\1/p"; }
  EP="ok"
fi

printf '\nrolebridge-agent footprint (%s, %s, %s cores, token dir on %s)\n\n' "$(uname -m)" "$LINKAGE" "$(nproc)" "$(stat -f -c %T "$TOK")"
printf '| %-34s | %-22s | %-10s |\n' "measure" "result" "target"
printf '|%s|%s|%s|\n' "------------------------------------" "------------------------" "------------"
printf '| %-34s | %-22s | %-10s |\n' "stripped binary size" "$(awk -v s="$SIZE" 'BEGIN{printf "%.2f MB (%d B)", s/1e6, s}')" "<= 8 MB"
printf '| %-34s | %-22s | %-10s |\n' "init wall, median / max (ms)" "$INIT_MED / $INIT_MAX" "<= 10 ms"
printf '| %-34s | %-22s | %-10s |\n' "init peak RSS, median / max (MiB)" "$INIT_RSS_MED / $INIT_RSS_MAX" "<= 4 MiB"
printf '| %-34s | %-22s | %-10s |\n' "check wall, median / max (ms)" "$CHECK_MED / $CHECK_MAX" "-"
printf '| %-34s | %-22s | %-10s |\n' "check peak RSS, median / max (MiB)" "$CHECK_RSS_MED / $CHECK_RSS_MAX" "-"
printf '| %-34s | %-22s | %-10s |\n' "run idle VmRSS / VmHWM (MiB)" "$IDLE_RSS / $IDLE_HWM" "<= 3 MiB"
printf '| %-34s | %-22s | %-10s |\n' "  of which anon / file-backed (MiB)" "$IDLE_ANON / $IDLE_FILE" "-"
printf '| %-34s | %-22s | %-10s |\n' "run threads" "$IDLE_THREADS" "-"
printf '| %-34s | %-22s | %-10s |\n' "CPU per refresh (ms)" "$CPU_PER_REFRESH ($REFRESHES refreshes)" "<= 0.5 ms"
printf '| %-34s | %-22s | %-10s |\n' "run VmHWM after refreshes (MiB)" "$REF_RSS" "-"
if [ "$EP" = ok ]; then
  printf '| %-34s | %-22s | %-10s |\n' "run idle private, token-only (MiB)" "$(mib2 "$IDLE_PRIV_KIB")" "-"
  printf '| %-34s | %-22s | %-10s |\n' "endpoint idle private (MiB)" "$(mib2 "$EP_PRIV_KIB")" "-"
  printf '| %-34s | %-22s | %-10s |\n' "  endpoint - token-only (MiB)" "$(awk -v a="$EP_PRIV_KIB" -v b="$IDLE_PRIV_KIB" 'BEGIN{printf "%+.2f", (a-b)/1024}')" "<= +1 MiB"
  printf '| %-34s | %-22s | %-10s |\n' "endpoint idle VmRSS / anon (MiB)" "$EP_RSS / $EP_ANON" "-"
  printf '| %-34s | %-22s | %-10s |\n' "endpoint request p50 / p99 / max (us)" "$(field p50_us) / $(field p99_us) / $(field max_us)" "p99 < 1000"
  printf '| %-34s | %-22s | %-10s |\n' "  requests answered 200" "$(field sequential_ok) of $(field requests)" "all"
  printf '| %-34s | %-22s | %-10s |\n' "50 concurrent: 200s / wall (ms)" "$(field concurrent_ok) / $(field concurrent_wall_ms)" "50"
  printf '| %-34s | %-22s | %-10s |\n' "  extra STS calls during the load" "$(( STS1 - STS0 ))" "0"
  printf '| %-34s | %-22s | %-10s |\n' "endpoint VmHWM after the load (MiB)" "$EP_HWM" "-"
else
  echo "(credentials endpoint not measured: $PY lacks moto[server]; run e2e/sdk/install-peers.sh)"
fi
echo
echo "(runs=$RUNS; wall times include fork/exec from bash; the emulator is a debug build on loopback)"
