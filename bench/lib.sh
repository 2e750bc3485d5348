# shellcheck shell=bash
# Shared by the benchmark scripts (sourced, from the repository root): scripts/lib.sh (cleanup,
# ports, installing wrk, building the shipped binaries), then what only the benchmarks need:
# process figures read from /proc, and the one way BENCHMARKS.md is written (each script replaces
# only its own section).
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

# Clock ticks per second, the unit of cpu_ticks.
# shellcheck disable=SC2034 # read by the scripts that source this
ticks=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# status_field FIELD PID: the value of a line "FIELD: N ..." of /proc/PID/status (VmRSS, VmHWM,
# RssAnon, RssFile, Threads; sizes in KiB).
status_field() { awk -v f="$1:" '$1 == f {print $2}' "/proc/$2/status"; }
rss_kib() { status_field VmRSS "$1"; }
anon_kib() { status_field RssAnon "$1"; }
hwm_kib() { status_field VmHWM "$1"; }
# Private (not shared with other processes mapping the same binary): what each pod costs.
private_kib() { awk '/^Private_(Clean|Dirty):/ {s += $2} END {print s}' "/proc/$1/smaps_rollup"; }
# Resets the peak-RSS mark (VmHWM) of a process.
reset_hwm() { echo 5 > "/proc/$1/clear_refs"; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f MiB", k/1024}'; }
# mib2 KIB: the number of MiB, two decimals, no unit.
mib2() { awk -v k="$1" 'BEGIN {printf "%.2f", k/1024}'; }

# replace_section NAME FILE: puts FILE's text into BENCHMARKS.md between
# "<!-- begin NAME -->" and "<!-- end NAME -->" (appended if the markers are not there yet).
replace_section() {
  python3 - "$1" "$2" <<'PY'
import sys, pathlib
name, text = sys.argv[1], pathlib.Path(sys.argv[2]).read_text().rstrip("\n")
path = pathlib.Path("BENCHMARKS.md")
doc = path.read_text() if path.exists() else "# Benchmarks\n"
begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
block = f"{begin}\n{text}\n{end}"
if begin in doc and end in doc:
    head, rest = doc.split(begin, 1)
    doc = head + block + rest.split(end, 1)[1]
else:
    doc = doc.rstrip("\n") + "\n\n" + block + "\n"
path.write_text(doc)
PY
}
