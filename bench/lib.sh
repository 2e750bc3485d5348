# Shared by the bench scripts (sourced). Process figures read from /proc, and the one way
# BENCHMARKS.md is written: each script replaces only its own section.

ticks=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
anon_kib() { awk '/^RssAnon/ {print $2}' "/proc/$1/status"; }
hwm_kib() { awk '/^VmHWM/ {print $2}' "/proc/$1/status"; }
# Resets the peak-RSS mark (VmHWM) of a process.
reset_hwm() { echo 5 > "/proc/$1/clear_refs"; }
mib() { awk -v k="$1" 'BEGIN {printf "%.1f MiB", k/1024}'; }
wait_tcp() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; return 1; }

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
