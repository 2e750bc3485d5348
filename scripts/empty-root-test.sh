#!/usr/bin/env bash
# Proves, without a Docker engine, what the images promise: both release binaries are static and
# run in a root filesystem that holds nothing but the binary and a CA bundle (assembled by
# images/make-rootfs.sh, exactly as the Dockerfiles' `scratch` stage), as user 65532, with no
# network, no /proc, no /dev and an empty environment.
#
#   scripts/empty-root-test.sh                 # build (scripts/static-build.sh) and test
#   scripts/empty-root-test.sh --no-build      # test binaries already built
#   scripts/empty-root-test.sh --roots DIR     # test the roots DIR/rolebridge-webhook and
#                                              # DIR/rolebridge-agent as they are (unpacked images)
#
# Needs root (chroot); unshare(1) from util-linux isolates network, mounts, PIDs and IPC.
# Environment: CARGO_TARGET_DIR (default <repo>/target), CARGO_LOCKED=0 to build without
# --locked. Ends with "empty-root: N passed, M failed".
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SCRIPT_NAME=empty-root

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bins=(rolebridge-webhook rolebridge-agent)
build=1
roots=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --no-build) build=0 ;;
    --roots)
      [[ $# -ge 2 && -d $2 ]] || usage_error "--roots needs a directory"
      roots=$2; build=0; shift ;;
    -h|--help) script_help; exit 0 ;;
    *) usage_error "unknown argument $1" ;;
  esac
  shift
done

need_root chroot
for tool in chroot unshare readelf; do
  command -v "$tool" >/dev/null || die "missing $tool"
done
ca_bundle=/etc/ssl/certs/ca-certificates.crt
[[ -s $ca_bundle ]] || apt_install ca-certificates

passed=0
failed=0
if [[ $build -eq 1 ]]; then
  shipped_build
fi
bin_dir="$(shipped_dir)"

work="$(mktemp -d)"
remove_on_exit "$work"

# run_in ROOT OUTFILE ARGS...: the binary in ROOT, as 65532:65532, nothing else around it.
run_in() {
  local root=$1 out=$2
  shift 2
  unshare --net --mount --pid --ipc --uts --fork \
    chroot --userspec=65532:65532 "$root" "$@" </dev/null >"$out" 2>"$out.err"
}

for bin in "${bins[@]}"; do
  step "$bin"
  if [[ -n $roots ]]; then
    root="$roots/$bin"
    if [[ ! -x $root/$bin ]]; then
      fail "$bin: no /$bin in $root"
      continue
    fi
  else
    path="$bin_dir/$bin"
    root="$work/$bin"
    if [[ ! -x $path ]]; then
      fail "$bin: not built at $path"
      continue
    fi
    if out="$(sh "$repo_root/images/make-rootfs.sh" "$path" "$root" "$ca_bundle" 2>&1)"; then
      ok "$bin: static, rootfs assembled ($out)"
    else
      echo "$out"; fail "$bin: make-rootfs (not static?)"
      continue
    fi
  fi
  listing="$(cd "$root" && find . -mindepth 1 | sort | tr '\n' ' ')"
  echo "     root contains: $listing"

  if run_in "$root" "$work/help.out" "/$bin" --help && grep -qi "usage" "$work/help.out"; then
    ok "$bin --help"
  else
    cat "$work/help.out" "$work/help.out.err"; fail "$bin --help"
    continue
  fi
  if run_in "$root" "$work/version.out" "/$bin" --version && grep -q "${bin}" "$work/version.out"; then
    ok "$bin --version: $(cat "$work/version.out")"
  else
    cat "$work/version.out.err"; fail "$bin --version"
  fi
  subcommands="$(sed -n '/^Commands:/,/^$/p' "$work/help.out")"

  case "$bin" in
    rolebridge-webhook)
      if grep -qE '^\s+crd\b' <<<"$subcommands"; then
        if run_in "$root" "$work/crd.out" "/$bin" crd; then
          if cmp -s "$work/crd.out" "$repo_root/crds/awsrolebinding.yaml"; then
            ok "$bin crd: prints crds/awsrolebinding.yaml exactly"
          elif grep -q "kind: CustomResourceDefinition" "$work/crd.out"; then
            diff -u "$repo_root/crds/awsrolebinding.yaml" "$work/crd.out" | head -n 20 || true
            fail "$bin crd: output differs from crds/awsrolebinding.yaml"
          else
            head -n 5 "$work/crd.out"; fail "$bin crd: no CustomResourceDefinition printed"
          fi
        else
          cat "$work/crd.out.err"; fail "$bin crd"
        fi
      else
        echo "     (no crd subcommand yet; --help is all that can be run)"
      fi
      # The chart configures the webhook through ROLEBRIDGE_* variables: each must be one that
      # `serve` reads (clap lists them as [env: NAME=]).
      if run_in "$root" "$work/serve-help.out" "/$bin" serve --help; then
        rendered="$repo_root/charts/rolebridge/tests/rendered/default.yaml"
        unknown=""
        while read -r var; do
          grep -q "env: $var=" "$work/serve-help.out" || unknown="$unknown $var"
        done < <(grep -oE 'name: ROLEBRIDGE_[A-Z_]+' "$rendered" | cut -d' ' -f2 | sort -u)
        if [[ -z "$unknown" ]]; then
          ok "$bin serve reads every ROLEBRIDGE_* variable the chart sets"
        else
          fail "$bin serve does not know the chart's variables:$unknown"
        fi
      else
        cat "$work/serve-help.out.err"; fail "$bin serve --help"
      fi
      ;;
    rolebridge-agent)
      if grep -qE '^\s+trust-policy\b' <<<"$subcommands"; then
        # Offline: the unique ID is given, so no metadata server and no DNS are needed.
        if run_in "$root" "$work/tp.out" "/$bin" trust-policy --gsa-unique-id 112233445566778899001 \
           && python3 - "$work/tp.out" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
text = json.dumps(doc)
assert doc.get("Version") == "2012-10-17", doc.get("Version")
assert "sts:AssumeRoleWithWebIdentity" in text, "no AssumeRoleWithWebIdentity"
assert "accounts.google.com" in text and "112233445566778899001" in text, "not pinned to the GSA"
PY
        then
          ok "$bin trust-policy --gsa-unique-id ...: valid IAM trust policy, offline"
        else
          cat "$work/tp.out" "$work/tp.out.err"; fail "$bin trust-policy"
        fi
      else
        echo "     (no trust-policy subcommand yet; --help is all that can be run)"
      fi
      ;;
  esac
done

echo
summary
