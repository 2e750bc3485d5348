#!/usr/bin/env bash
# The cost of each stage of an admission in process (webhook/examples/bench_core): time and
# callgrind instructions on the captured review and the several-containers one, built like the
# shipped binaries (scripts/static-build.sh --example).
#
#   bench/instructions.sh            prints the table
#   bench/instructions.sh --check    also fails when a stage's instructions grew by more than
#                                    25 % over bench/instructions.txt (what CI runs)
#   bench/instructions.sh --record   writes the figures measured now into bench/instructions.txt
#                                    and the table into BENCHMARKS.md
#
# Instructions, unlike time, do not move with the load of a shared machine: they are the
# regression guard. Installs valgrind from Debian when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
recorded=bench/instructions.txt
mode=()
case "${1:-}" in
  "") ;;
  --check) mode=(--check "$recorded") ;;
  --record) mode=(--record "$recorded") ;;
  -h|--help) script_help; exit 0 ;;
  *) usage_error "unknown argument $1 (see --help)" ;;
esac

need_commands valgrind
shipped_build --example bench_core
out="$(mktemp)"
remove_on_exit "$out"
"$(shipped_dir)/examples/bench_core" ${mode[@]+"${mode[@]}"} | tee "$out"
if [[ "${1:-}" == --record ]]; then
  {
    echo "In process, per admission stage, without network or TLS (\`bench/instructions.sh\`;"
    echo "µs on this machine, instructions counted by callgrind; \`× skip\` is the stage over reading the"
    echo "body once with serde's \`IgnoredAny\`):"
    echo
    echo '```'
    grep -v '^recorded in' "$out"
    echo '```'
  } >"$out.md"
  remove_on_exit "$out.md"
  replace_section stages "$out.md"
fi
