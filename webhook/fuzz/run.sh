#!/usr/bin/env bash
# Runs the admission fuzz target for SECONDS (default 60) from the committed corpus, with an
# RSS and a per-allocation limit, and fails on any finding (the input is kept under
# webhook/fuzz/artifacts/). CI runs it from scripts/test.sh; a long run: `webhook/fuzz/run.sh 3600`.
# Further arguments go to libFuzzer (bench/reliability.sh adds -fork=1 -ignore_crashes=1 to count
# findings and go on).
# Needs cargo-fuzz (installed here if missing) and a C++ compiler for libFuzzer; the stable
# toolchain takes cargo-fuzz's nightly flags with RUSTC_BOOTSTRAP=1.
#
#   webhook/fuzz/run.sh [SECONDS [LIBFUZZER_ARG...]]
set -euo pipefail
cd "$(dirname "$0")/../.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh
SCRIPT_NAME=fuzz
seconds=${1:-60}
shift $(($# > 0 ? 1 : 0))
export RUSTC_BOOTSTRAP=1
need_cargo_fuzz
# Work on a copy: new inputs the run finds are not committed by accident.
corpus="$(mktemp -d)"
remove_on_exit "$corpus"
cp webhook/fuzz/corpus/admission/* "$corpus/"
cargo fuzz build admission --fuzz-dir webhook/fuzz -O
cargo fuzz run admission --fuzz-dir webhook/fuzz -O "$corpus" -- \
  -max_total_time="$seconds" -rss_limit_mb=512 -malloc_limit_mb=64 \
  -dict=webhook/fuzz/admission.dict -print_final_stats=1 "$@"
