#!/usr/bin/env bash
# The one static release build of the binaries, shared by scripts/empty-root-test.sh,
# scripts/images.sh and the Dockerfiles' build stage, so the binaries tested in an empty root are
# the ones in the images, whichever recipe built them.
#
#   scripts/static-build.sh [--target TRIPLE] [PACKAGE...]   # default: this host's triple, both
#   scripts/static-build.sh --print-dir [--target TRIPLE]    # where the binaries land; no build
#   scripts/static-build.sh --example NAME                   # a webhook example (a benchmark),
#       built like the shipped binaries (same flags, features and target directory), into
#       <print-dir>/examples
#
# Reproducible on purpose: the same commit built in another checkout, target directory or home
# gives byte-identical binaries, so an image digest changes only when the source does.
#  - --remap-path-prefix rewrites the paths rustc would embed (panic locations, file!() of
#    dependencies): the cargo home, the toolchain's sysroot, the checkout and the target directory.
#  - CFLAGS_<triple> does the same for the C parts (ring, mimalloc), whose assert() keeps __FILE__.
#  - SOURCE_DATE_EPOCH=0 for anything that stamps a date (gcc's __DATE__ and __TIME__).
# `--target` keeps +crt-static away from build scripts and proc macros, which must stay dynamic.
#
# Environment: CARGO_TARGET_DIR (default <repo>/target), CARGO_HOME (default ~/.cargo),
# CARGO_LOCKED=0 to build without --locked.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
triple="$(uname -m)-unknown-linux-gnu"
target_dir="${CARGO_TARGET_DIR:-$repo_root/target}"
print_dir=0
packages=()
examples=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --print-dir) print_dir=1 ;;
    --target)
      [[ $# -ge 2 ]] || { echo "static-build: --target needs a triple" >&2; exit 2; }
      triple=$2; shift ;;
    --example)
      [[ $# -ge 2 ]] || { echo "static-build: --example needs a name" >&2; exit 2; }
      examples+=(--example "$2"); shift ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    rolebridge-webhook|rolebridge-agent) packages+=("$1") ;;
    *) echo "static-build: unknown argument $1 (see $0 --help)" >&2; exit 2 ;;
  esac
  shift
done
[[ ${#packages[@]} -eq 0 ]] && packages=(rolebridge-webhook rolebridge-agent)
if [[ $print_dir -eq 1 ]]; then
  echo "$target_dir/$triple/release"
  exit 0
fi

cargo_home="${CARGO_HOME:-$HOME/.cargo}"
sysroot="$(cd "$repo_root" && rustc --print sysroot)"
# A constant, not the commit's time: the cc crate reruns every C build (and so nearly the whole
# release build) whenever SOURCE_DATE_EPOCH changes, and gcc only uses it for __DATE__/__TIME__.
# Fixed, those expand the same on every build; the images take their dates from the commit in
# scripts/images.sh.
export SOURCE_DATE_EPOCH=0

# rustc applies the last matching --remap-path-prefix, so the most specific prefix comes last (a
# target directory inside the checkout maps like the rest of the checkout).
remaps=("$cargo_home=/cargo" "$sysroot=/rustc-sysroot" "$repo_root=/rolebridge")
[[ $target_dir != "$repo_root"/* ]] && remaps+=("$target_dir=/rolebridge/target")
rustflags="-C target-feature=+crt-static"
cflags="${CFLAGS:-}"
for r in "${remaps[@]}"; do
  rustflags+=" --remap-path-prefix=$r"
  cflags+=" -ffile-prefix-map=$r"
done

locked=(--locked)
[[ "${CARGO_LOCKED:-1}" == 0 ]] && locked=()
pkg_args=()
for p in "${packages[@]}"; do pkg_args+=(-p "$p"); done
echo "== cargo build --release (static, $triple, ${packages[*]}${examples[*]+ ${examples[*]}})"
cd "$repo_root"
# CFLAGS_<triple> is the cc crate's per-target variable: it wins over CFLAGS, which is why CFLAGS
# is folded in above.
env "CFLAGS_${triple//-/_}=${cflags# }" RUSTFLAGS="$rustflags" \
  cargo build --release "${locked[@]}" --target "$triple" "${pkg_args[@]}" ${examples[@]+"${examples[@]}"}
