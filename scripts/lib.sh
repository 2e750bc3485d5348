# shellcheck shell=bash
# The helpers the scripts share, one place each. Sourced, never run:
#   . "$(dirname "${BASH_SOURCE[0]}")/lib.sh"          (from scripts/; adjust the path elsewhere)
# Sourcing defines functions (and _lib_dir, this folder) and nothing else: no output, no traps,
# no `set`, no cd; the state below is created on first use, under _lib_* names. Every function
# works under `set -euo pipefail`.
#
# Messages name the script as $SCRIPT_NAME (default: the file name without .sh).
#
# Output
#   suite_step TITLE...      "\n==> TITLE   [N free]": scripts/test.sh's tiers, with the free disk
#                            (a CI machine ran out of it once)
#   step TITLE...            "\n== TITLE": a step of one script
#   say TITLE...             "==> TITLE" in bold on stderr: the demo's narration
#   die MSG...               "NAME: MSG" on stderr, exit 1
#   usage_error MSG...       "NAME: MSG" on stderr, exit 2 (a wrong argument)
#   script_help              prints the script's opening comment (its usage), for -h/--help
# Pass/fail counters (the plain closing line CI reads)
#   ok MSG... / fail MSG...  "ok   MSG" / "FAIL MSG", counted in $passed / $failed
#   summary                  "NAME: N passed, M failed"; its status is 0 only when none failed,
#                            so it can end a script
# Cleanup: whatever happens (success, failure, Ctrl-C, TERM), in this order
#   track PID...             kill the process (TERM) and wait for it on exit
#   on_exit FUNC             call FUNC STATUS on exit (STATUS: the script's exit status)
#   remove_on_exit PATH...   rm -rf PATH on exit (a `mktemp -d` work directory)
#   The exit status is kept. Only the main shell's exit cleans up: a process started inside
#   $( ... ) is that code's to stop.
# Ports
#   free_port                a free TCP port on 127.0.0.1
#   wait_tcp PORT [SECONDS]  until 127.0.0.1:PORT accepts a connection (default 10 s); status 1 if not
#   wait_http URL [SECONDS] [PID]  until URL answers 2xx/3xx (default 30 s); status 1 if not, or as
#                            soon as PID (the server) has exited
# Installing (Debian packages, PyPI, crates.io; idempotent)
#   need_root WHY            die unless root
#   apt_install PKG...       apt-get install, quietly; apt-get update only when the lists lack it
#   need_commands CMD[:PKG]...   installs from Debian the packages of the commands not on PATH
#   need_wrk                 wrk, the HTTP load generator of the benchmarks
#   need_cargo_fuzz          cargo-fuzz, pinned
#   python_venv DIR REQ...   a venv in DIR with exactly the pinned REQs (pip); rebuilt when the pins
#                            change; installs python3-venv from Debian when Python lacks it
# The shipped binaries
#   shipped_build [ARG...]   scripts/static-build.sh ARG...: the static release build the images
#                            ship (cargo does nothing when it is fresh); its output goes to stderr
#   shipped_dir [ARG...]     the directory those binaries are in (static-build.sh --print-dir)
#   (static-build.sh itself does not source this file: the Dockerfiles' build stage runs it, and
#   bench/reliability.sh runs a copy in an older checkout.)

_lib_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

_lib_name() { echo "${SCRIPT_NAME:-$(basename "$0" .sh)}"; }

# ---- output ---------------------------------------------------------------------------------

suite_step() { printf '\n==> %s   [%s free]\n' "$*" "$(df -h --output=avail . 2>/dev/null | tail -n1 | tr -d ' ')"; }
step() { printf '\n== %s\n' "$*"; }
say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { echo "$(_lib_name): $*" >&2; exit 1; }
usage_error() { echo "$(_lib_name): $*" >&2; exit 2; }
# The comment block under the shebang, minus shellcheck directives.
script_help() { sed -n '2,/^[^#]/{/^#/!d;/^# *shellcheck /d;p}' "$0"; }

# ---- counters -------------------------------------------------------------------------------

ok() { passed=$((${passed:-0} + 1)); echo "ok   $*"; }
fail() { failed=$((${failed:-0} + 1)); echo "FAIL $*"; }
summary() {
  echo "$(_lib_name): ${passed:-0} passed, ${failed:-0} failed"
  [[ ${failed:-0} -eq 0 ]]
}

# ---- cleanup --------------------------------------------------------------------------------

_lib_cleanup() {
  local status=$? p f
  set +e
  for p in "${_lib_pids[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${_lib_pids[@]}"; do wait "$p" 2>/dev/null; done
  for f in "${_lib_hooks[@]}"; do "$f" "$status"; done
  rm -rf -- "${_lib_temps[@]}"
  exit "$status"
}
_lib_arm() {
  [[ ${_lib_armed:-} == "$$" ]] && return 0
  _lib_armed=$$
  _lib_pids=() _lib_hooks=() _lib_temps=()
  trap _lib_cleanup EXIT
  # Without these bash may die of the signal without running the EXIT trap.
  trap 'exit 130' INT
  trap 'exit 143' TERM
}
track() { _lib_arm; _lib_pids+=("$@"); }
on_exit() { _lib_arm; _lib_hooks+=("$1"); }
remove_on_exit() { _lib_arm; _lib_temps+=("$@"); }

# ---- ports ----------------------------------------------------------------------------------

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_tcp() {
  local i
  for ((i = 0; i < ${2:-10} * 20; i++)); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  return 1
}
wait_http() {
  local i
  for ((i = 0; i < ${2:-30} * 10; i++)); do
    python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=1)' "$1" 2>/dev/null && return 0
    if [[ -n ${3:-} ]] && ! kill -0 "$3" 2>/dev/null; then return 1; fi
    sleep 0.1
  done
  return 1
}

# ---- installing -----------------------------------------------------------------------------

need_root() { [[ $(id -u) -eq 0 ]] || die "must run as root ($*)"; }
apt_install() {
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1 ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null; }
}
need_commands() {
  local pair missing=()
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
  done
  ((${#missing[@]})) || return 0
  echo "$(_lib_name): installing ${missing[*]} from Debian" >&2
  apt_install "${missing[@]}"
}
need_wrk() { need_commands wrk; }
need_cargo_fuzz() {
  command -v cargo-fuzz >/dev/null 2>&1 && return 0
  echo "$(_lib_name): installing cargo-fuzz (crates.io)" >&2
  cargo install --locked cargo-fuzz --version 0.13.2
}
python_venv() {
  local venv=$1 want
  shift
  want="$(printf '%s\n' "$@")"
  if [[ -x $venv/bin/python && -f $venv/.requirements && "$(cat "$venv/.requirements")" == "$want" ]]; then
    return 0
  fi
  echo "installing $* into $venv"
  rm -rf "$venv"
  if ! python3 -m venv "$venv" 2>/dev/null; then
    # Debian's python3 needs python3-venv for ensurepip.
    if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
      die "python3 -m venv failed (install python3-venv)"
    fi
    apt_install python3-venv
    rm -rf "$venv"
    python3 -m venv "$venv"
  fi
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$@"
  echo "$want" >"$venv/.requirements"
}

# ---- the shipped binaries -------------------------------------------------------------------

# shellcheck disable=SC2120 # the arguments are optional
shipped_build() { bash "$_lib_dir/static-build.sh" "$@" >&2; }
# shellcheck disable=SC2120 # the arguments are optional
shipped_dir() { bash "$_lib_dir/static-build.sh" --print-dir "$@"; }
