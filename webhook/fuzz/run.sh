#!/usr/bin/env bash
# Runs the admission fuzz target for SECONDS (default 60) from the committed corpus, with an
# RSS and a per-allocation limit, and fails on any finding (the input is kept under
# webhook/fuzz/artifacts/). CI runs it from scripts/test.sh; a long run: `webhook/fuzz/run.sh 3600`.
# Needs cargo-fuzz (installed here if missing) and a C++ compiler for libFuzzer; the stable
# toolchain takes cargo-fuzz's nightly flags with RUSTC_BOOTSTRAP=1.
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-60}
export RUSTC_BOOTSTRAP=1
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "installing cargo-fuzz (crates.io)..." >&2
  cargo install --locked cargo-fuzz --version 0.13.2
fi
# Work on a copy: new inputs the run finds are not committed by accident.
corpus=$(mktemp -d)
trap 'rm -rf "$corpus"' EXIT
cp webhook/fuzz/corpus/admission/* "$corpus/"
cargo fuzz build admission --fuzz-dir webhook/fuzz -O
cargo fuzz run admission --fuzz-dir webhook/fuzz -O "$corpus" -- \
  -max_total_time="$seconds" -rss_limit_mb=512 -malloc_limit_mb=64 \
  -dict=webhook/fuzz/admission.dict -print_final_stats=1
