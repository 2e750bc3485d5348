#!/usr/bin/env bash
# Runs every test tier of rolebridge; installs what the tests need first (idempotent).
#   unit + golden + property + in-process HTTPS   cargo test --workspace
#   the README's demo, both deliveries             scripts/demo.sh
#   agent faults against the metadata emulator      cargo test (e2e crate)
#   real AWS SDKs (boto3, AWS CLI, Rust SDK) + moto  cargo test (e2e crate), peers from PyPI
#   admission fuzzing, 60 s from the corpus          webhook/fuzz/run.sh (cargo-fuzz, libFuzzer)
#   static binaries in an empty root                scripts/empty-root-test.sh
#   instructions per admission stage (callgrind)    bench/instructions.sh --check (fails past +25 %)
#   OCI images without Docker, registry round trip  scripts/images-test.sh
#   Helm chart lint/render/schema checks            scripts/chart-check.sh
#   real API server                                 scripts/apiserver-test.sh (../shared/kube, else skipped)
# A missing peer fails its test (this script installs them first); ROLEBRIDGE_SKIP_MISSING_PEERS=1
# makes it a skip instead.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

# On CI (a throwaway clone) a step's build products are deleted once no later step needs
# them, so the disk holds one build at a time; locally they are kept for the next run.
reclaim() { if [[ "${CI:-}" == true ]]; then rm -rf "$@"; fi; }

suite_step "installing test peers"
bash e2e/sdk/install-peers.sh
bash scripts/install-helm.sh

suite_step "formatting and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
if cargo tree --workspace -i openssl-sys >/dev/null 2>&1; then
  echo "error: openssl-sys is in the dependency graph" >&2; exit 1
fi

suite_step "cargo tests (all crates)"
cargo test --workspace --locked --no-fail-fast

suite_step "real API server (e2e/tests/apiserver.rs; ../shared/kube or ROLEBRIDGE_E2E_KUBECONFIG)"
bash scripts/apiserver-test.sh

suite_step "the README's demo (inject → agent → moto; web identity, then a cross-account chain)"
bash scripts/demo.sh
reclaim "${CARGO_TARGET_DIR:-target}/debug"

suite_step "fuzzing the admission path (60 s, libFuzzer)"
bash webhook/fuzz/run.sh 60
reclaim webhook/fuzz/target

suite_step "static binaries in an empty root"
bash scripts/empty-root-test.sh

suite_step "instructions per admission (callgrind; fails past +25 % of bench/instructions.txt)"
bash bench/instructions.sh --check

suite_step "OCI images (build twice, loopback registry round trip, run unpacked)"
bash scripts/images-test.sh

# After the release build: the chart check also starts the shipped webhook with every rendered
# configuration.
suite_step "Helm chart"
ROLEBRIDGE_WEBHOOK_BIN="$(shipped_dir)/rolebridge-webhook" \
  bash scripts/chart-check.sh

suite_step "all tests passed"
