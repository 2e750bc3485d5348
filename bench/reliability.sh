#!/usr/bin/env bash
# Produces the "Reliability" section of BENCHMARKS.md: every attack of issue 9 against the
# shipped static release build (scripts/static-build.sh) configured as the chart runs it (2 worker threads, mimalloc without eager
# commit), before (BEFORE_REV, the code the issue measured) and after (this checkout); the
# API-server outage; binding scale (0, 10k, 100k) against the stub API server; the load run
# with two certificate rotations; and a fuzzing run. Figures are measured and printed; nothing
# here asserts (the tests do).
#
# Usage: bench/reliability.sh
#   FUZZ_SECONDS=600     length of the fuzzing run (0 skips it)
#   BEFORE_REV=7f25cd5   revision measured as "before" (built once into target/before, with this
#                        checkout's scripts/static-build.sh);
#                        BEFORE_REV= (empty) skips the before column
#   SCALE="0 10000 100000"
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
FUZZ_SECONDS=${FUZZ_SECONDS:-600}
BEFORE_REV=${BEFORE_REV-7f25cd5}
SCALE=${SCALE:-0 10000 100000}
LOAD_REQUESTS=${LOAD_REQUESTS:-200000}
review=webhook/tests/fixtures/admissionreview-v1-pod-from-apiserver.json
export MIMALLOC_ARENA_EAGER_COMMIT=0 # as the chart and the image set it

need_wrk

echo "building release binaries..." >&2
# The measured binary is the shipped one: the images' static release build, both packages as
# scripts/images.sh builds them (one package alone unifies other features: another binary).
shipped_build
after_bin="$(shipped_dir)/rolebridge-webhook"
# The attackers, the probe, the certificates and the stub API server are load peers, not what is
# measured: an ordinary release build of the examples.
cargo build --release -q -p rolebridge-webhook \
  --example bench_support --example bench_attack --example bench_apiserver
examples=${CARGO_TARGET_DIR:-target}/release/examples
support=$examples/bench_support
attack=$examples/bench_attack
stubapi=$examples/bench_apiserver
before_bin=
if [ -n "$BEFORE_REV" ]; then
  echo "building the before revision $BEFORE_REV (once; target/before)..." >&2
  src=target/before-src
  [ -d "$src" ] || git worktree add -q --detach "$src" "$BEFORE_REV"
  # Built as the after binary is, by this checkout's static-build.sh (an older revision has none,
  # or another): copied over the checkout's own, which -f lets the next checkout overwrite.
  (cd "$src" && git checkout -q -f --detach "$BEFORE_REV")
  mkdir -p "$src/scripts" && cp scripts/static-build.sh "$src/scripts/static-build.sh"
  build_before() { CARGO_TARGET_DIR="$PWD/target/before" bash "$src/scripts/static-build.sh" "$@"; }
  build_before rolebridge-webhook >&2
  before_bin="$(build_before --print-dir)/rolebridge-webhook"
fi

tmp="$(mktemp -d)"
remove_on_exit "$tmp"
"$support" cert "$tmp"
ca=$tmp/ca.crt
# Ports of its own: a server already on a fixed port would be measured instead.
port=$(free_port) admin=$(free_port) api=$(free_port) api_ctl=$(free_port)
addr=127.0.0.1:$port

# start_webhook BIN [ARGS...]: serves the bench bindings from a file; sets $wpid.
start_webhook() {
  local bin=$1; shift
  "$bin" serve --listen "$addr" --admin-listen "127.0.0.1:$admin" --tls-cert "$tmp/tls.crt" --tls-key "$tmp/tls.key" \
    --log-level error --sidecar-mode native --worker-threads 2 --namespace rolebridge "$@" 2>>"$tmp/webhook.log" &
  wpid=$!; track "$wpid"
  wait_tcp "$port" && wait_tcp "$admin"
  wait_http "http://127.0.0.1:$admin/readyz" 10 || true
}
stop_webhook() { kill "$wpid" 2>/dev/null || true; wait "$wpid" 2>/dev/null || true; }

# bodies BIN MODE SOURCES: 100 attackers holding unfinished bodies for 10 s while a probe
# admits a review every 100 ms; prints "peak|after1|after5|probe|attackers".
bodies() {
  local bin=$1 mode=$2 sources=$3
  start_webhook "$bin" --bindings-file bench/bindings.yaml
  sleep 1
  reset_hwm "$wpid"
  "$attack" bodies "$addr" "$ca" 100 "$mode" 10 "$sources" >"$tmp/attack.out" &
  local apid=$!
  "$attack" probe "$addr" "$ca" "$review" 10 >"$tmp/probe.out" 2>/dev/null &
  local ppid=$!
  wait "$apid" || true; wait "$ppid" || true
  local peak after1 after5
  peak=$(hwm_kib "$wpid")
  sleep 1; after1=$(rss_kib "$wpid")
  sleep 4; after5=$(rss_kib "$wpid")
  stop_webhook
  echo "$(mib "$peak")|$(mib "$after1")|$(mib "$after5")|$(cat "$tmp/probe.out")|$(cat "$tmp/attack.out")"
}

# slow BIN WHAT: one request sent at 1 byte/s; prints when and how it ended.
slow() {
  start_webhook "$1" --bindings-file bench/bindings.yaml
  timeout 70 "$attack" slow "$addr" "$ca" "$2" || echo "still open after 60 s"
  stop_webhook
}

idle() {
  start_webhook "$1" --bindings-file bench/bindings.yaml
  timeout 200 "$attack" idle "$addr" "$ca" "$review" || echo "still open after 180 s"
  stop_webhook
}

cell() { echo "$1" | cut -d'|' -f"$2"; }
versions=(after)
[ -n "$before_bin" ] && versions=(before after)
bin_of() { if [ "$1" = before ]; then echo "$before_bin"; else echo "$after_bin"; fi; }

echo "== hostile clients" >&2
declare -A R
for v in "${versions[@]}"; do
  b=$(bin_of "$v")
  R[$v,over1]=$(bodies "$b" over 1)
  R[$v,under4]=$(bodies "$b" under 4)
  R[$v,chunked4]=$(bodies "$b" chunked 4)
  R[$v,slowbody]=$(slow "$b" body)
  R[$v,slowhead]=$(slow "$b" head)
  R[$v,idle]=$(idle "$b")
done
for k in "${!R[@]}"; do echo "$k: ${R[$k]}" >&2; done

# load: LOAD_REQUESTS admissions with wrk at saturation, certificate rotated at 1/3 and 2/3,
# RSS sampled every 0.25 s, a probe opening fresh connections throughout.
echo "== load run" >&2
start_webhook "$after_bin" --bindings-file bench/bindings.yaml
REVIEW_FILE=$review wrk -t2 -c16 -d2s -s bench/post.lua "https://$addr/mutate" >/dev/null
rps=$(REVIEW_FILE=$review wrk -t2 -c16 -d3s -s bench/post.lua "https://$addr/mutate" | awk '/Requests\/sec/ {print int($2)}')
secs=$(( LOAD_REQUESTS / (rps > 0 ? rps : 1) + 2 ))
: >"$tmp/rss.samples"
( while kill -0 "$wpid" 2>/dev/null; do rss_kib "$wpid" >>"$tmp/rss.samples"; sleep 0.25; done ) &
sampler=$!
( sleep $(( secs / 3 )); "$support" rotate "$tmp"; sleep $(( secs / 3 )); "$support" rotate "$tmp" ) &
rotator=$!
"$attack" probe "$addr" "$ca" "$review" "$secs" >"$tmp/load-probe.out" 2>&1 &
probe=$!
cpu0=$(cpu_ticks "$wpid")
load=$(REVIEW_FILE=$review wrk -t2 -c16 -d"${secs}s" --latency -s bench/post.lua "https://$addr/mutate")
cpu1=$(cpu_ticks "$wpid")
wait "$rotator" "$probe" || true
kill "$sampler" 2>/dev/null || true
echo "$load" >&2
reloads=$(curl -s "http://127.0.0.1:$admin/metrics" | awk '/^rolebridge_tls_reloads_total\{result="ok"\}/ {print $2}')
stop_webhook
reqs=$(echo "$load" | awk '/requests in/ {print $1}')
errors=$(echo "$load" | awk '/Non-2xx|Socket errors/ {for (i=1;i<=NF;i++) if ($i ~ /^[0-9]+,?$/) s+=$i} END {print s+0}')
p99=$(echo "$load" | awk '/ 99%/ {print $2}')
read -r q1 q4 < <(awk '{a[NR]=$1} END {n=NR; q=int(n/4); for(i=1;i<=q;i++){s1+=a[i]; s4+=a[n-q+i]} printf "%.0f %.0f\n", s1/q, s4/q}' "$tmp/rss.samples")
cpu_per=$(awk -v a="$cpu1" -v b="$cpu0" -v t="$ticks" -v r="$reqs" 'BEGIN {printf "%.4f", (a-b)/t*1000/r}')

# outage: the webhook against the stub API server, which goes away for 20 s and comes back
# with its watch history compacted; then one new binding. Time until it is Bound.
echo "== API outage" >&2
kubeconfig=$tmp/kubeconfig
cat >"$kubeconfig" <<YAML
apiVersion: v1
kind: Config
clusters: [{name: stub, cluster: {server: "http://127.0.0.1:$api"}}]
users: [{name: stub, user: {}}]
contexts: [{name: stub, context: {cluster: stub, user: stub, namespace: rolebridge}}]
current-context: stub
YAML
stats() { curl -s "http://127.0.0.1:$api_ctl/stats"; }
field() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }
start_stub() {
  "$stubapi" "127.0.0.1:$api" "127.0.0.1:$api_ctl" "$1" "$2" >"$tmp/stub.log" 2>&1 &
  spid=$!; track "$spid"
  wait_tcp "$api_ctl"
}
stop_stub() { kill "$spid" 2>/dev/null || true; wait "$spid" 2>/dev/null || true; }
# until_converged N LIMIT: seconds until N bindings are Bound (or "> LIMIT s").
until_converged() {
  local n=$1 limit=$2 start now
  start=$(date +%s.%N)
  while :; do
    [ "$(stats | field converged)" -ge "$n" ] && break
    now=$(date +%s.%N)
    if awk -v a="$now" -v b="$start" -v l="$limit" 'BEGIN {exit !(a-b > l)}'; then echo "> $limit s ($(stats | field converged) of $n)"; return; fi
    sleep 0.2
  done
  awk -v a="$(date +%s.%N)" -v b="$start" 'BEGIN {printf "%.1f s\n", a-b}'
}
outage() {
  local bin=$1
  start_stub 100 10
  KUBECONFIG=$kubeconfig start_webhook "$bin"
  until_converged 100 120 >/dev/null
  curl -s -X POST "http://127.0.0.1:$api_ctl/outage?seconds=20" >/dev/null
  sleep 21
  curl -s -X POST "http://127.0.0.1:$api_ctl/binding?ns=team-001&name=late" >/dev/null
  until_converged 101 120
  stop_webhook; stop_stub
}
O_after=$(outage "$after_bin")
O_before=-
[ -n "$before_bin" ] && O_before=$(outage "$before_bin")

# scale: N bindings (each with its own service account, 200 namespaces) exist before the
# webhook starts; time until all are Bound, API writes, RSS, then 30 s of a steady cluster.
echo "== scale" >&2
scale_row() {
  local bin=$1 n=$2 limit=$3 t rss cpu0 cpu1 writes leases0 leases1
  start_stub "$n" 200
  KUBECONFIG=$kubeconfig start_webhook "$bin"
  t=$(until_converged "$n" "$limit")
  sleep 2
  writes=$(stats | field status_writes)
  rss=$(rss_kib "$wpid")
  cpu0=$(cpu_ticks "$wpid"); leases0=$(stats | field lease_writes)
  sleep 30
  cpu1=$(cpu_ticks "$wpid"); leases1=$(stats | field lease_writes)
  local steady
  steady=$(awk -v a="$cpu1" -v b="$cpu0" -v t="$ticks" 'BEGIN {printf "%.2f %%", (a-b)/t/30*100}')
  echo "$n|$t|$writes|$(mib "$rss")|$steady|$(( leases1 - leases0 )) in 30 s"
  stop_webhook; stop_stub
}
S=()
for n in $SCALE; do S+=("after|$(scale_row "$after_bin" "$n" 300)"); done
[ -n "$before_bin" ] && S+=("before|$(scale_row "$before_bin" 10000 120)")
# 20,000 new bindings applied at once to a running webhook.
burst() {
  local bin=$1
  start_stub 0 1
  KUBECONFIG=$kubeconfig start_webhook "$bin"
  sleep 2
  curl -s -X POST "http://127.0.0.1:$api_ctl/bindings?count=20000&namespaces=200" >/dev/null
  echo "$(until_converged 20000 300)|$(stats | field status_writes)|$(mib "$(rss_kib "$wpid")")"
  stop_webhook; stop_stub
}
B_after=$(burst "$after_bin")

# fuzzing
F="not run"
if [ "$FUZZ_SECONDS" -gt 0 ]; then
  echo "== fuzzing for $FUZZ_SECONDS s" >&2
  # CI's fuzz run, longer and in fork mode with -ignore_crashes: a finding is counted (and kept
  # in webhook/fuzz/artifacts) and the run goes on, so the figures cover the whole time.
  bash webhook/fuzz/run.sh "$FUZZ_SECONDS" -fork=1 -ignore_crashes=1 >"$tmp/fuzz.log" 2>&1 || true
  last=$(grep -E '^#[0-9]+: cov:' "$tmp/fuzz.log" | tail -1)
  execs=$(echo "$last" | sed -E 's/^#([0-9]+):.*/\1/')
  cov=$(echo "$last" | grep -o 'cov: [0-9]*' | cut -d' ' -f2)
  ft=$(echo "$last" | grep -o 'ft: [0-9]*' | cut -d' ' -f2)
  corp=$(echo "$last" | grep -o 'corp: [0-9]*' | cut -d' ' -f2)
  crashes=$(echo "$last" | grep -o 'oom/timeout/crash: [0-9/]*' | cut -d' ' -f2)
  cp "$tmp/fuzz.log" target/fuzz-last.log
  F="$FUZZ_SECONDS s, $execs executions, coverage $cov edges, $ft features, corpus $corp inputs, oom/timeout/crash $crashes (log: target/fuzz-last.log)"
fi

before() { if [ -n "$before_bin" ]; then echo "${R[before,$1]}"; else echo "-|-|-|-|-"; fi; }
row() { # row LABEL KEY
  local b a
  b=$(before "$2"); a=${R[after,$2]}
  echo "| $1 | $(cell "$b" 1) → **$(cell "$a" 1)** | $(cell "$b" 3) → **$(cell "$a" 3)** | $(cell "$b" 4) → **$(cell "$a" 4)** | $(cell "$a" 5) |"
}
out=$tmp/section.md
{
  echo "## Reliability"
  echo
  echo "Produced by \`bench/reliability.sh\` on $(date -u +%Y-%m-%d), $(nproc) cores, the shipped static release build with the chart's settings"
  echo "(\`--worker-threads 2\`, \`MIMALLOC_ARENA_EAGER_COMMIT=0\`, default limits; the chart's memory limit is 128 MiB)."
  echo "Before = revision ${BEFORE_REV:-(not measured)}, the code issue 9 was measured on; after = this checkout."
  echo "Peak is the kernel's VmHWM over the attack; a probe opens a fresh h2 connection and admits the captured"
  echo "review every 100 ms throughout (the API server's view). Attackers reconnect whenever they are cut."
  echo
  echo "| attack (10 s, attackers then leave) | peak RSS | RSS 5 s after | probe: answered, errors, slowest | what the attackers got (after) |"
  echo "|---|---|---|---|---|"
  row "100 connections, one pod, Content-Length 4 MiB, ~4 MB sent" over1
  row "100 connections from 4 pods, Content-Length just under the limit, all but 64 KiB sent" under4
  row "100 connections from 4 pods, chunked ~4 MB" chunked4
  echo
  echo "| slow client | before | after |"
  echo "|---|---|---|"
  echo "| request body at 1 byte/s | $( [ -n "$before_bin" ] && echo "${R[before,slowbody]}" || echo -) | **${R[after,slowbody]}** |"
  echo "| request head at 1 byte/s | $( [ -n "$before_bin" ] && echo "${R[before,slowhead]}" || echo -) | **${R[after,slowhead]}** |"
  echo "| idle HTTP/1.1 keep-alive connection closed after | $( [ -n "$before_bin" ] && echo "${R[before,idle]}" || echo -) | **${R[after,idle]}** |"
  echo
  echo "API-server outage (stub API server, 100 bindings): it goes away for 20 s, comes back with its watch history"
  echo "compacted (old resourceVersions get 410 Gone), then one binding is created. Time from its creation to its"
  echo "Ready status: before $O_before, after **$O_after**."
  echo
  echo "Scale (stub API server; every binding has its own Workload-Identity service account; 200 namespaces;"
  echo "objects carry managedFields and the last-applied annotation, as \`kubectl apply\` leaves them):"
  echo
  echo "| build | bindings | all Bound after start | status writes | RSS | steady CPU (30 s) | lease writes |"
  echo "|---|---|---|---|---|---|---|"
  for s in "${S[@]}"; do echo "| ${s//|/ | } |"; done
  echo
  echo "20,000 bindings applied at once to a running webhook: all Bound after **$(cell "$B_after" 1)**, $(cell "$B_after" 2) status writes, RSS $(cell "$B_after" 3)."
  echo
  echo "Load: $reqs admissions (wrk -c16 at saturation, ${secs} s) with the serving certificate rotated twice"
  echo "($reloads reloads picked up): $errors errors, p99 $p99, $cpu_per ms CPU per admission; RSS mean $(mib "$q1") in"
  echo "the first quarter, $(mib "$q4") in the last; probe on fresh connections during the rotations: $(tail -n 1 "$tmp/load-probe.out")."
  echo
  echo "Fuzzing (\`cargo fuzz run admission\`, libFuzzer, one core, the committed corpus as seeds): $F."
} >"$out"
cat "$out"
replace_section reliability "$out"
echo "wrote the Reliability section of BENCHMARKS.md" >&2
