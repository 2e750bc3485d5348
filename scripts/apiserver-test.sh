#!/usr/bin/env bash
# The real-API-server suite (e2e/tests/apiserver.rs): the webhook, the CRD and the status
# controller in front of a real kube-apiserver.
#
# Which API server:
#   ROLEBRIDGE_E2E_KUBECONFIG set   that cluster (a disposable one: the suite creates and deletes
#                                   namespaces, bindings and a webhook configuration)
#   ../shared/kube present          starts kube-apiserver 1.36 + etcd on loopback from there
#                                   (installs etcd and xz from Debian if missing), on ports of its
#                                   own so a developer's running instance is not disturbed, and
#                                   stops it whatever happens
#   neither                         says the suite was skipped (a user's fresh clone)
#
#   scripts/apiserver-test.sh [extra cargo test args]
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
kube_dir="${ROLEBRIDGE_SHARED_KUBE:-$repo/../shared/kube}"

run_suite() {
  # The webhook the suite starts is the one `cargo test --workspace` builds: a no-op right after
  # that step of scripts/test.sh, and never a binary older than the code. Named explicitly, so
  # the suite does not build a variant of its own (other features, all dependencies again).
  local bin="${ROLEBRIDGE_WEBHOOK_BIN:-}"
  if [[ -z "$bin" ]]; then
    cargo test --workspace --locked --no-run -q
    bin="${CARGO_TARGET_DIR:-$repo/target}/debug/rolebridge-webhook"
  fi
  ROLEBRIDGE_WEBHOOK_BIN="$bin" ROLEBRIDGE_E2E_KUBECONFIG="$1" \
    cargo test --locked -p rolebridge-e2e --test apiserver "${@:2}" -- --ignored
}

if [[ -n "${ROLEBRIDGE_E2E_KUBECONFIG:-}" ]]; then
  echo "apiserver-test: using the cluster of ROLEBRIDGE_E2E_KUBECONFIG=$ROLEBRIDGE_E2E_KUBECONFIG"
  run_suite "$ROLEBRIDGE_E2E_KUBECONFIG" "$@"
  exit 0
fi
if [[ ! -f "$kube_dir/kube-up.sh" ]]; then
  echo "SKIPPED: no API server: ROLEBRIDGE_E2E_KUBECONFIG is not set and $kube_dir is absent; the suite stays ignored"
  exit 0
fi

need_commands etcd:etcd-server xz:xz-utils

# A home and ports of this script's own: a developer's kube-up on the defaults keeps running.
export KUBE_HOME="${KUBE_HOME:-$repo/target/kube-e2e}"
export KUBE_API_PORT="${KUBE_API_PORT:-16443}"
export KUBE_ETCD_PORT="${KUBE_ETCD_PORT:-12379}"
export KUBE_ETCD_PEER_PORT="${KUBE_ETCD_PEER_PORT:-12380}"
kube_down() { bash "$kube_dir/kube-down.sh" --purge >/dev/null 2>&1 || true; }
# Stop exactly what kube-up started, whatever happens (a failed start included).
on_exit kube_down
# A previous run killed before its trap ran leaves processes kube-up refuses to start over.
kube_down
if ! bash "$kube_dir/kube-up.sh"; then
  echo "apiserver-test: kube-up failed; its logs:" >&2
  tail -n 40 "$KUBE_HOME"/run/*.log >&2 2>/dev/null || true
  exit 1
fi
run_suite "$KUBE_HOME/kubeconfig" "$@"
