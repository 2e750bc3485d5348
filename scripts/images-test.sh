#!/usr/bin/env bash
# Proves the Docker-free images end to end, on a machine without a container engine:
#   0. the unit tests of images/oci-image.py (its Dockerfile reader and layer writer);
#   1. scripts/images.sh build (the static binaries are built once: cargo does nothing when
#      scripts/empty-root-test.sh already built them), and again from scratch into a fresh
#      directory: the same manifest digests; no build path inside the binaries;
#   2. the drift test can fail: a Dockerfile with an instruction oci-image.py does not know is
#      refused, and one whose USER differs fails images/check-image.py;
#   3. a registry on loopback (Debian's docker-registry): scripts/images.sh push, then pulled back
#      by digest with skopeo, as a node would;
#   4. images/check-image.py on the pulled images: config against the Dockerfile (BuildKit's
#      parser), files against make-rootfs.sh, no shell in any layer, one layer, sizes;
#   5. umoci unpack, and scripts/empty-root-test.sh --roots runs both binaries from the unpacked
#      roots (chroot, user 65532, no network).
# Sizes and digests land in target/images/sizes.json. Ends with "images-test: N passed, M failed".
#
#   scripts/images-test.sh
#   IMAGES_TEST_REBUILD_BINARIES=1 scripts/images-test.sh   # also build the binaries a second
#       time in a fresh clone at another path (~10 min on 2 cores) and compare the digests; this
#       fails today (rust-lang/cargo#15122, see images/README.md "Reproducible")
#
# Needs root (chroot, apt-get for skopeo, umoci and docker-registry when missing).
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
target_dir="${CARGO_TARGET_DIR:-$repo_root/target}"
out_dir="$target_dir/images"
sizes_file="$out_dir/sizes.json"
images=(webhook agent)
case "$(uname -m)" in x86_64) arch=amd64 ;; aarch64) arch=arm64 ;; *) arch="$(uname -m)" ;; esac
venv="$repo_root/.tools/images-venv"
# BuildKit's Dockerfile parser, for the drift test (images/check-image.py).
dockerfile_pin="dockerfile==3.4.0"

case "${1:-}" in
  "") ;;
  -h|--help) script_help; exit 0 ;;
  *) usage_error "unknown argument $1" ;;
esac
need_root "chroot, apt-get"

passed=0
failed=0
step "tools"
need_commands skopeo umoci docker-registry readelf:binutils
python_venv "$venv" "$dockerfile_pin"
echo "skopeo $(skopeo --version | cut -d' ' -f3), $(umoci --version), docker-registry $(dpkg-query -W -f='${Version}' docker-registry 2>/dev/null || echo '?')"

work="$(mktemp -d)"
remove_on_exit "$work"

# The tag images.sh gives the layouts (the crate version): one rule, in images.sh.
tag="$(bash "$repo_root/scripts/images.sh" version)"
build_args=()
while IFS= read -r kv; do
  [[ $kv == SOURCE_DATE_EPOCH=* ]] || build_args+=(--build-arg "$kv")
done < <(bash "$repo_root/scripts/images.sh" build-args | tr ' ' '\n' | grep -v -e '^--build-arg$' -e '^$')

digests_of() { # DIR: the layouts' NAME:TAG@DIGEST lines, from images.sh
  IMAGES_OUT="$1" bash "$repo_root/scripts/images.sh" digests
}

step "unit tests of images/oci-image.py"
if PYTHONDONTWRITEBYTECODE=1 python3 -m unittest discover -s "$repo_root/images" -p 'test_*.py' 2>"$work/unit.err"; then
  ok "oci-image.py: $(tail -n 3 "$work/unit.err" | grep -o 'Ran [0-9]* tests')"
else
  cat "$work/unit.err"; fail "oci-image.py unit tests"
fi

step "build (scripts/images.sh build)"
if bash "$repo_root/scripts/images.sh" build; then
  ok "images built in $out_dir"
else
  fail "scripts/images.sh build"
  echo; summary; exit 1
fi
first="$(digests_of "$out_dir")"
echo "$first"

step "reproducible"
if IMAGES_OUT="$work/rebuild" bash "$repo_root/scripts/images.sh" build --no-build >/dev/null &&
   [[ "$(digests_of "$work/rebuild")" == "$first" ]]; then
  ok "layouts rebuilt from scratch into a fresh directory: same manifest digests"
else
  digests_of "$work/rebuild" || true; fail "rebuilt layouts differ"
fi
rm -rf "$work/rebuild"
bin_dir="$(shipped_dir)"
sysroot="$(cd "$repo_root" && rustc --print sysroot)"
for name in "${images[@]}"; do
  leaks=""
  for p in "$repo_root" "${CARGO_HOME:-$HOME/.cargo}" "$sysroot" "$target_dir"; do
    grep -qaF "$p/" "$bin_dir/rolebridge-$name" && leaks="$leaks $p"
  done
  if [[ -z $leaks ]]; then
    ok "rolebridge-$name: no build path in the binary (checkout, cargo home, sysroot, target dir)"
  else
    fail "rolebridge-$name: the binary names build paths:$leaks"
  fi
done
if [[ ${IMAGES_TEST_REBUILD_BINARIES:-0} == 1 ]]; then
  clone="$work/clone"
  git clone --quiet --no-hardlinks "$repo_root" "$clone"
  git -C "$clone" checkout --quiet "$(git -C "$repo_root" rev-parse HEAD)"
  if [[ -n "$(git -C "$repo_root" status --porcelain --untracked-files=no)" ]]; then
    echo "     (uncommitted changes are not in the clone; the digests may differ for that reason)"
  fi
  if CARGO_TARGET_DIR="$clone/target" bash "$clone/scripts/images.sh" build >"$work/clone.log" 2>&1 &&
     [[ "$(digests_of "$clone/target/images")" == "$first" ]]; then
    ok "binaries and images rebuilt in a fresh clone and target dir: same manifest digests"
  else
    tail -n 20 "$work/clone.log"; digests_of "$clone/target/images" || true
    # Known: cargo hashes a path crate's absolute location into -C metadata (rust-lang/cargo#15122),
    # which --remap-path-prefix cannot undo; only a checkout at the same path reproduces.
    fail "a fresh clone at another path builds different images (rust-lang/cargo#15122)"
  fi
  rm -rf "$clone"
fi

step "the drift test can fail"
mkdir -p "$work/mutated"
sed 's/^CMD \["serve"\]$/WORKDIR \/tmp\n&/' "$repo_root/images/webhook.Dockerfile" >"$work/mutated/webhook.Dockerfile"
if ! python3 "$repo_root/images/oci-image.py" config --dockerfile "$work/mutated/webhook.Dockerfile" \
     "${build_args[@]}" >/dev/null 2>"$work/mutated.err" && grep -q "WORKDIR" "$work/mutated.err"; then
  ok "oci-image.py refuses a final-stage instruction it does not reproduce ($(head -c 120 "$work/mutated.err"))"
else
  fail "oci-image.py accepted WORKDIR in the final stage"
fi

# Each image's expected files: make-rootfs.sh again, for the same binary.
for name in "${images[@]}"; do
  sh "$repo_root/images/make-rootfs.sh" "$bin_dir/rolebridge-$name" "$work/rootfs/$name" >/dev/null
done
sed 's/^USER 65532:65532$/USER 0:0/' "$repo_root/images/webhook.Dockerfile" >"$work/mutated/webhook.Dockerfile"
if ! "$venv/bin/python" "$repo_root/images/check-image.py" --layout "$out_dir/webhook" --tag "$tag" \
     --dockerfile "$work/mutated/webhook.Dockerfile" --rootfs "$work/rootfs/webhook" "${build_args[@]}" \
     >"$work/mutated.out" 2>&1 && grep -q "config User" "$work/mutated.out"; then
  ok "check-image.py fails an image whose USER differs from its Dockerfile"
else
  cat "$work/mutated.out"; fail "check-image.py did not notice a USER that differs"
fi

step "registry on loopback"
port="$(free_port)"
mkdir -p "$work/registry"
cat >"$work/registry.yml" <<EOF
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: 127.0.0.1:$port
EOF
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
registry_pid=$!
track "$registry_pid"
if wait_http "http://127.0.0.1:$port/v2/" 10 "$registry_pid"; then
  ok "docker-registry listening on 127.0.0.1:$port"
else
  cat "$work/registry.log"; fail "docker-registry did not start"
  echo; summary; exit 1
fi

prefix="127.0.0.1:$port/rolebridge"
if bash "$repo_root/scripts/images.sh" push "$prefix" --dest-tls-verify=false >"$work/push.out"; then
  ok "scripts/images.sh push $prefix"
else
  fail "scripts/images.sh push"
fi
cat "$work/push.out"

for name in "${images[@]}"; do
  want="$prefix/rolebridge-$name@$(grep "^rolebridge-$name:" <<<"$first" | cut -d@ -f2)"
  if grep -qxF "$want" "$work/push.out"; then
    ok "push printed $want (the digest built here)"
  else
    fail "push did not print $want"
    continue
  fi
  pulled="$work/pulled/$name"
  mkdir -p "$work/pulled"
  if skopeo copy --quiet --src-tls-verify=false "docker://$want" "oci:$pulled:$tag"; then
    ok "rolebridge-$name pulled back by digest"
  else
    fail "skopeo copy docker://$want"
    continue
  fi
  if "$venv/bin/python" "$repo_root/images/check-image.py" --layout "$pulled" --tag "$tag" \
       --dockerfile "$repo_root/images/$name.Dockerfile" --rootfs "$work/rootfs/$name" \
       --arch "$arch" --sizes "$work/sizes.json" "${build_args[@]}"; then
    ok "rolebridge-$name: config, files and layers as the Dockerfile says"
  else
    fail "rolebridge-$name: check-image.py"
  fi
  mkdir -p "$work/roots"
  if umoci unpack --image "$pulled:$tag" "$work/bundle-$name" >/dev/null 2>"$work/umoci.err"; then
    mv "$work/bundle-$name/rootfs" "$work/roots/rolebridge-$name"
    ok "rolebridge-$name unpacked with umoci: $(cd "$work/roots/rolebridge-$name" && find . -mindepth 1 | sort | tr '\n' ' ')"
  else
    cat "$work/umoci.err"; fail "umoci unpack rolebridge-$name"
  fi
done
[[ -f $work/sizes.json ]] && cp "$work/sizes.json" "$sizes_file"

step "the unpacked images run (scripts/empty-root-test.sh --roots)"
if [[ -d $work/roots ]] && bash "$repo_root/scripts/empty-root-test.sh" --roots "$work/roots" | tee "$work/empty-root.out" | sed 's/^/     /'; then
  ok "both binaries run from the unpacked images ($(tail -n 1 "$work/empty-root.out"))"
else
  fail "running the unpacked images ($(tail -n 1 "$work/empty-root.out" 2>/dev/null))"
fi

echo
if [[ -f $sizes_file ]]; then
  echo "sizes and digests ($sizes_file), as BENCHMARKS.md's Images table:"
  python3 - "$sizes_file" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    s = json.loads(line)
    print(f"| {s['image']} | {s['compressed'] / 2**20:.1f} MiB ({s['compressed']} B) | "
          f"{s['uncompressed'] / 1e6:.1f} MB ({s['uncompressed']} B) | {s['layers']} | `{s['manifest_digest']}` |")
PY
fi
summary
