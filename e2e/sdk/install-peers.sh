#!/usr/bin/env bash
# Installs the real peers the SDK tests (e2e/tests/sdk_*.rs) run against:
#   moto's server (STS + S3), boto3 and the AWS CLI (v1, from PyPI);
#   the AWS SDK for JavaScript v3 (@aws-sdk/client-s3, @aws-sdk/client-sts, pinned in
#   e2e/sdk/js/package.json and package-lock.json) into e2e/sdk/js/node_modules, from npm.
# Idempotent: does nothing when they are already installed. Uses apt (for Python or Node.js
# themselves, if missing), pip and npm only. The tests find the interpreter as
# $ROLEBRIDGE_PYTHON or python3, and node on PATH.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh"

PY="${ROLEBRIDGE_PYTHON:-python3}"
# Versions the tests were written against.
PEERS=('moto[server]==5.2.1' 'boto3==1.43.11' 'awscli==1.45.11')

have_peers() {
  "$PY" - <<'PYEOF' >/dev/null 2>&1
import os, shutil, sys, sysconfig
import boto3, moto, awscli, flask  # noqa: F401
cands = [shutil.which("aws"), os.path.join(sysconfig.get_path("scripts"), "aws")]
sys.exit(0 if any(c and os.path.exists(c) for c in cands) else 1)
PYEOF
}

if ! command -v "$PY" >/dev/null 2>&1; then
  echo "install-peers: $PY not found; installing Python from apt"
  apt_install python3 python3-pip python3-venv
fi

install_js() {
  local js dir_stamp want
  js="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/js"
  if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "install-peers: node/npm not found; installing Node.js from apt"
    apt_install nodejs npm
  fi
  dir_stamp="$js/node_modules/.rolebridge-lock.sha256"
  want="$(sha256sum "$js/package-lock.json" | cut -d' ' -f1)"
  if [ -f "$dir_stamp" ] && [ "$(cat "$dir_stamp")" = "$want" ] \
     && [ -f "$js/node_modules/@aws-sdk/client-s3/package.json" ] \
     && [ -f "$js/node_modules/@aws-sdk/client-sts/package.json" ]; then
    echo "install-peers: the JS SDK v3 is already installed in $js"
    return 0
  fi
  echo "install-peers: npm ci (JS SDK v3) in $js"
  (cd "$js" && npm ci --no-audit --no-fund --loglevel=error)
  echo "$want" > "$dir_stamp"
}

install_js

if have_peers; then
  echo "install-peers: moto, boto3 and the AWS CLI are already installed for $("$PY" -c 'import sys; print(sys.executable)')"
  exit 0
fi

if ! "$PY" -m pip --version >/dev/null 2>&1; then
  "$PY" -m ensurepip --upgrade >/dev/null 2>&1 || apt_install python3-pip
fi

echo "install-peers: pip install ${PEERS[*]}"
if ! "$PY" -m pip install --quiet --disable-pip-version-check "${PEERS[@]}"; then
  # Debian's Python refuses system-wide pip installs (PEP 668); this machine is a throwaway
  # test runner, so install anyway.
  "$PY" -m pip install --quiet --disable-pip-version-check --break-system-packages "${PEERS[@]}"
fi

# pyenv needs its shims refreshed for the new `aws` and `moto_server` entry points.
if command -v pyenv >/dev/null 2>&1; then pyenv rehash || true; fi

have_peers || { echo "install-peers: peers still not importable after install" >&2; exit 1; }
echo "install-peers: done"
