#!/usr/bin/env bash
# Builds and pushes the two rolebridge images without a Docker engine.
#
#   scripts/images.sh build [--no-build]   # OCI layouts in target/images/{webhook,agent}, tag = crate version
#   scripts/images.sh push REGISTRY/PREFIX [SKOPEO_COPY_OPTION...]
#                                          # pushes both, prints NAME@sha256:... for the chart
#   scripts/images.sh build-args           # the --build-arg flags that give a Docker build the same labels
#   scripts/images.sh digests              # the manifest digests of the built layouts
#   scripts/images.sh version              # the tag: the crate version
#
# build: scripts/static-build.sh (the static binaries scripts/empty-root-test.sh tests; cargo
# does nothing when they are fresh, --no-build skips it), images/make-rootfs.sh (the root
# filesystem), images/oci-image.py (one reproducible layer, the config read from
# images/<name>.Dockerfile). The same commit gives the same manifest digests.
#
# push: `skopeo copy` of each layout to docker://REGISTRY/PREFIX/rolebridge-<name>:<tag>; the
# manifest is pushed as built, so the printed digest is the one built here. Credentials are
# skopeo's: `skopeo login REGISTRY` (or docker/podman's auth file, REGISTRY_AUTH_FILE), or
# SKOPEO_CREDS=user:password. Extra arguments go to skopeo copy, e.g. --dest-tls-verify=false for
# a plain-HTTP registry on loopback. Examples:
#   scripts/images.sh push europe-west1-docker.pkg.dev/my-project/rolebridge
#   scripts/images.sh push ghcr.io/my-org
#
# Environment: IMAGES_OUT (default target/images), SOURCE_DATE_EPOCH (default: the commit's time),
# SKOPEO_CREDS, CARGO_TARGET_DIR.
# Needs: cargo, python3, readelf (binutils), git; push needs skopeo (apt-get install skopeo).
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out_dir="${IMAGES_OUT:-${CARGO_TARGET_DIR:-$repo_root/target}/images}"
images=(webhook agent)
ca_bundle=/etc/ssl/certs/ca-certificates.crt

usage() { sed -n '2,9p' "$0" >&2; exit 2; }

version() {
  # The crate version, from cargo: what the binaries' --version print.
  (cd "$repo_root" && cargo metadata --no-deps --format-version 1 --offline) |
    python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "rolebridge-webhook"))'
}

epoch() {
  if [[ -n ${SOURCE_DATE_EPOCH:-} ]]; then echo "$SOURCE_DATE_EPOCH"; return; fi
  git -C "$repo_root" log -1 --format=%ct 2>/dev/null || die "not a git checkout; set SOURCE_DATE_EPOCH"
}

revision() {
  local rev
  rev="$(git -C "$repo_root" rev-parse HEAD 2>/dev/null)" || die "not a git checkout"
  # A dirty tree is not what the commit says: the label says so instead of lying.
  if [[ -n "$(git -C "$repo_root" status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
    echo "images: warning: uncommitted changes; revision label is $rev-dirty" >&2
    rev="$rev-dirty"
  fi
  echo "$rev"
}

arch() {
  case "$(uname -m)" in
    x86_64) echo amd64 ;;
    aarch64) echo arm64 ;;
    *) die "unsupported machine $(uname -m) (amd64 and arm64 only)" ;;
  esac
}

# NAME=VALUE per line: the final stage's ARGs, identical for both recipes.
arg_values() {
  local e
  e="$(epoch)"
  echo "VERSION=$(version)"
  echo "REVISION=$(revision)"
  echo "CREATED=$(date -u -d "@$e" +%Y-%m-%dT%H:%M:%SZ)"
  echo "SOURCE_DATE_EPOCH=$e"
}

cmd_build() {
  local build=1
  for arg in "$@"; do
    case "$arg" in
      --no-build) build=0 ;;
      *) echo "images: build: unknown argument $arg" >&2; usage ;;
    esac
  done
  [[ -s $ca_bundle ]] || die "no CA bundle at $ca_bundle (apt-get install ca-certificates)"
  local e tag bin_dir work
  e="$(epoch)"
  tag="$(version)"
  local -a build_args=()
  while IFS= read -r kv; do
    # SOURCE_DATE_EPOCH is BuildKit's own argument, not one the Dockerfile declares.
    [[ $kv == SOURCE_DATE_EPOCH=* ]] || build_args+=(--build-arg "$kv")
  done < <(arg_values)
  [[ $build -eq 1 ]] && shipped_build
  bin_dir="$(shipped_dir)"
  work="$(mktemp -d)"
  remove_on_exit "$work"
  for name in "${images[@]}"; do
    sh "$repo_root/images/make-rootfs.sh" "$bin_dir/rolebridge-$name" "$work/$name" "$ca_bundle" >/dev/null
    python3 "$repo_root/images/oci-image.py" build \
      --dockerfile "$repo_root/images/$name.Dockerfile" --rootfs "$work/$name" \
      --out "$out_dir/$name" --tag "$tag" --epoch "$e" --arch "$(arch)" "${build_args[@]}"
  done
}

# The manifest digest of a built layout, from its index.json.
layout_digest() {
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifests"][0]["digest"])' "$1/index.json"
}

cmd_digests() {
  local tag
  tag="$(version)"
  for name in "${images[@]}"; do
    [[ -f $out_dir/$name/index.json ]] || die "no image at $out_dir/$name; run $0 build"
    echo "rolebridge-$name:$tag@$(layout_digest "$out_dir/$name")"
  done
}

cmd_push() {
  [[ $# -ge 1 ]] || { echo "images: push needs REGISTRY/PREFIX" >&2; usage; }
  local dest=${1%/}
  shift
  [[ $dest == */* && $dest != -* ]] ||
    die "push: $dest is not REGISTRY/PREFIX (e.g. europe-west1-docker.pkg.dev/PROJECT/REPO)"
  command -v skopeo >/dev/null || die "skopeo not found (apt-get install skopeo)"
  local -a creds=()
  [[ -n ${SKOPEO_CREDS:-} ]] && creds=(--dest-creds "$SKOPEO_CREDS")
  local tag name built ref pushed helm_flags=""
  tag="$(version)"
  for name in "${images[@]}"; do
    [[ -f $out_dir/$name/index.json ]] || die "no image at $out_dir/$name; run $0 build first"
    built="$(layout_digest "$out_dir/$name")"
    ref="$dest/rolebridge-$name"
    echo "== skopeo copy oci:$out_dir/$name:$tag docker://$ref:$tag" >&2
    # --preserve-digests: fail rather than convert the manifest (the digest would change).
    skopeo copy --quiet --preserve-digests "${creds[@]}" "$@" \
      "oci:$out_dir/$name:$tag" "docker://$ref:$tag" >&2
    # Asked back from the registry: the digest a pod will pull, not the one we hope was stored.
    local -a inspect_opts=()
    for o in "$@"; do
      case "$o" in --dest-tls-verify=*) inspect_opts+=("--tls-verify=${o#--dest-tls-verify=}") ;; esac
    done
    [[ -n ${SKOPEO_CREDS:-} ]] && inspect_opts+=(--creds "$SKOPEO_CREDS")
    pushed="$(skopeo inspect "${inspect_opts[@]}" --format '{{.Digest}}' "docker://$ref:$tag")"
    [[ $pushed == "$built" ]] || die "$ref:$tag is $pushed in the registry, but $built was built"
    echo "$ref@$pushed"
    # The chart (0.2.0) names both images REGISTRY/PREFIX/rolebridge-{webhook,agent} from one
    # image.registry; only the digests are per image.
    local key=image
    [[ $name == agent ]] && key=agent.image
    helm_flags+=" --set $key.digest=$pushed"
  done
  echo "images: chart values: --set image.registry=$dest$helm_flags" >&2
}

case "${1:-}" in
  build) shift; cmd_build "$@" ;;
  push) shift; cmd_push "$@" ;;
  digests) shift; cmd_digests ;;
  version) version ;;
  build-args)
    while IFS= read -r kv; do printf -- '--build-arg %s ' "$kv"; done < <(arg_values)
    echo ;;
  -h|--help) script_help ;;
  "") usage ;;
  *) echo "images: unknown command $1" >&2; usage ;;
esac
