#!/usr/bin/env bash
# Measures rolebridge-webhook (the shipped static release build) under the load the issue fixes for comparison
# with aws/amazon-eks-pod-identity-webhook: the captured 9.3 KB pod review, wrk with 16
# keep-alive HTTPS connections. Prints CPU per admission, admissions/s and idle RSS for the
# webhook and for three baselines on the same TLS stack, each adding one part of the webhook's
# work: a fixed "allowed" answer; the same after reading the body once with serde_json; and that
# answering with the webhook's own response (its base64 patch) instead. Records them in
# BENCHMARKS.md. Nothing here asserts: figures are printed.
#
# The servers take turns, round after round, and each row reports the round with its median
# throughput: the load of a shared machine moves by tens of percent over a minute, and taking
# turns spreads that over all of them instead of charging it to whichever ran last.
#
# Usage: bench/webhook.sh [seconds per run, default 10] [rounds, default 3]
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
secs=${1:-10}
rounds=${2:-3}
review=webhook/tests/fixtures/admissionreview-v1-pod-from-apiserver.json

need_wrk

echo "building release binaries..." >&2
# The measured binary is the shipped one: the images' static release build, both packages as
# scripts/images.sh builds them (one package alone unifies other features: another binary).
shipped_build
bin="$(shipped_dir)/rolebridge-webhook"
# bench_support (certificates, the fixed-"allowed" baseline server) is a load peer, not measured
# as rolebridge: an ordinary release build of the example.
cargo build --release -q -p rolebridge-webhook --example bench_support
support=${CARGO_TARGET_DIR:-target}/release/examples/bench_support

tmp="$(mktemp -d)"
remove_on_exit "$tmp"
"$support" cert "$tmp"
# Ports of its own: a server already on a fixed port would be measured instead.
wport=$(free_port) aport=$(free_port) bport=$(free_port) rport=$(free_port) pport=$(free_port)

# run NAME PORT: loads the server listening on PORT, prints "cpu_ms_per_req req_per_s".
run() {
  local pid=$1 port=$2 before after out reqs
  # Warm up connections, allocator and caches before measuring.
  REVIEW_FILE=$review wrk -t2 -c16 -d2s -s bench/post.lua "https://127.0.0.1:$port/mutate" >/dev/null
  before=$(cpu_ticks "$pid")
  out=$(REVIEW_FILE=$review wrk -t2 -c16 -d"${secs}s" --latency -s bench/post.lua "https://127.0.0.1:$port/mutate")
  after=$(cpu_ticks "$pid")
  echo "$out" >&2
  if echo "$out" | grep -q "Non-2xx"; then echo "error: non-2xx responses" >&2; exit 1; fi
  reqs=$(echo "$out" | awk '/requests in/ {print $1}')
  awk -v b="$before" -v a="$after" -v t="$ticks" -v r="$reqs" -v s="$secs" -v lat="$(echo "$out" | awk '/ 99%/ {print $2}')" \
    'BEGIN { printf "%.4f %.0f %s\n", (a-b)/t*1000/r, r/s, lat }'
}

# The same allocator setting the chart and image use (mimalloc otherwise commits its first
# arena eagerly, which would triple idle RSS).
MIMALLOC_ARENA_EAGER_COMMIT=0 "$bin" serve --bindings-file bench/bindings.yaml --listen "127.0.0.1:$wport" \
  --admin-listen "127.0.0.1:$aport" --tls-cert "$tmp/tls.crt" --tls-key "$tmp/tls.key" \
  --log-level warn --sidecar-mode native 2>"$tmp/webhook.log" &
wpid=$!; track "$wpid"
"$support" baseline "127.0.0.1:$bport" "$tmp/tls.crt" "$tmp/tls.key" &
bpid=$!; track "$bpid"
"$support" baseline-read "127.0.0.1:$rport" "$tmp/tls.crt" "$tmp/tls.key" &
rpid=$!; track "$rpid"
wait_tcp "$wport"; wait_tcp "$bport"; wait_tcp "$rport"; sleep 1

# Sanity: the webhook really mutates this review. Its response is kept: the third baseline
# answers with exactly these bytes.
curl -sk --data-binary @"$review" -H 'content-type: application/json' "https://127.0.0.1:$wport/mutate" >"$tmp/response.json"
if ! grep -q '"patchType":"JSONPatch"' "$tmp/response.json"; then
  echo "error: the webhook did not mutate the benchmark review" >&2; exit 1
fi
"$support" baseline-reply "127.0.0.1:$pport" "$tmp/tls.crt" "$tmp/tls.key" "$tmp/response.json" &
ppid=$!; track "$ppid"
wait_tcp "$pport"
w_idle=$(rss_kib "$wpid"); b_idle=$(rss_kib "$bpid"); w_anon=$(anon_kib "$wpid")

# median LINE...: the line ("cpu rps p99") with the median throughput.
median() { printf '%s\n' "$@" | sort -k2,2n | awk '{l[NR] = $0} END {print l[int((NR + 1) / 2)]}'; }
ws=() bs=() rs=() ps=() per_round=""
for ((round = 1; round <= rounds; round++)); do
  echo "round $round of $rounds" >&2
  ws+=("$(run "$wpid" "$wport")"); bs+=("$(run "$bpid" "$bport")")
  rs+=("$(run "$rpid" "$rport")"); ps+=("$(run "$ppid" "$pport")")
  per_round+="${per_round:+, }$(awk -v w="${ws[-1]}" -v b="${bs[-1]}" 'BEGIN {split(w, x, " "); split(b, y, " "); printf "%.0f %%", x[2] / y[2] * 100}')"
done
read -r w_cpu w_rps w_p99 < <(median "${ws[@]}")
read -r b_cpu b_rps b_p99 < <(median "${bs[@]}")
read -r r_cpu r_rps r_p99 < <(median "${rs[@]}")
read -r p_cpu p_rps p_p99 < <(median "${ps[@]}")
w_rss=$(rss_kib "$wpid")
ratio=$(awk -v w="$w_rps" -v b="$b_rps" 'BEGIN {printf "%.0f", w/b*100}')
read_ratio=$(awk -v r="$r_rps" -v b="$b_rps" 'BEGIN {printf "%.0f", r/b*100}')
reply_ratio=$(awk -v r="$p_rps" -v b="$b_rps" 'BEGIN {printf "%.0f", r/b*100}')
reply_size=$(wc -c <"$tmp/response.json")

table=$(cat <<TXT
| server | CPU per admission | admissions/s | p99 latency | idle RSS | of which anonymous | RSS after load |
|---|---|---|---|---|---|---|
| rolebridge-webhook | ${w_cpu} ms | ${w_rps} | ${w_p99} | $(mib "$w_idle") | $(mib "$w_anon") | $(mib "$w_rss") |
| baseline (fixed "allowed", same TLS stack) | ${b_cpu} ms | ${b_rps} | ${b_p99} | $(mib "$b_idle") | - | - |
| baseline reading the body once (serde_json \`IgnoredAny\`) | ${r_cpu} ms | ${r_rps} | ${r_p99} | - | - | - |
| baseline reading the body once and answering with the webhook's own ${reply_size}-byte response | ${p_cpu} ms | ${p_rps} | ${p_p99} | - | - | - |

Webhook throughput is ${ratio}% of the baseline's (each round: ${per_round}); merely reading the body once
with serde_json, and deciding nothing, leaves ${read_ratio}%; reading it and carrying the webhook's own
answer back through the same stack, still deciding nothing, leaves ${reply_ratio}%.
TXT
)
echo
echo "$table"

{
  echo "Produced by \`bench/webhook.sh\` on $(date -u +%Y-%m-%d), $(nproc) cores ($(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | xargs)),"
  echo "the shipped static release build, captured 9.3 KB pod review with one matching binding (a full mutation per request),"
  echo "wrk -t2 -c16 -d${secs}s over HTTPS keep-alive, ${rounds} rounds taking turns (each row: its median round); wrk shares the same cores. CPU is the server's user+system time"
  echo "divided by the requests served. Idle RSS is read after one admission; the part that is not anonymous is"
  echo "clean, file-backed pages of the binary (shared page cache, reclaimable)."
  echo
  echo "$table"
  echo
  echo "Go peer (aws/amazon-eks-pod-identity-webhook): not run here (its Go modules need a Go module proxy,"
  echo "which this machine cannot reach). Recorded earlier on the same kind of machine and load: 0.26–0.39 ms CPU"
  echo "per admission, 4.5–5.5k admissions/s, 26 MiB idle RSS."
  if [ -f agent/BENCHMARKS.md ]; then echo; echo "Agent footprint: see [agent/BENCHMARKS.md](agent/BENCHMARKS.md)."; fi
} > "$tmp/admission.md"
replace_section admission "$tmp/admission.md"
echo "wrote the admission section of BENCHMARKS.md" >&2
