#!/usr/bin/env bash
# Load harness (not a test): a Tower holding N shellpers is SIGKILLed, so every
# window ends at the same moment and N kill ladders run at once. Prints how
# each shellper ended (exit codes from the logs), the ladder durations, and the
# number of tagged processes still alive afterwards (must be 0).
#
#   cargo build --release -p shellper -p tower-client --bins
#   tests/load/mass_lapse.sh 300
set -euo pipefail
N=${1:-300}
root=$(cd "$(dirname "$0")/../.." && pwd)
bin="$root/target/release"
[ -x "$bin/minitower" ] && [ -x "$bin/shellper" ] || {
  echo "build first: cargo build --release -p shellper -p tower-client --bins" >&2; exit 2; }
dir=$(mktemp -d); chmod 700 "$dir"
tag="mass-lapse-$$"
cleanup() {
  # Whatever happened, nothing tagged survives the harness.
  for e in /proc/[0-9]*/environ; do
    if grep -qz "^SHELLPER_LEAK_TAG=$tag\$" "$e" 2>/dev/null; then
      p=${e#/proc/}; kill -9 "${p%/environ}" 2>/dev/null || true
    fi
  done
  rm -rf "$dir"
}
trap cleanup EXIT
SHELLPER_LEAK_TAG=$tag "$bin/minitower" --scope "$dir/s" --ttl 1s --window 2s --kill-grace 500ms \
  --spawn "$N" -- sh -c 'sleep 1000 & sleep 1000' >"$dir/events" 2>"$dir/err" &
mt=$!
disown "$mt"
for _ in $(seq 1 240); do grep -q '"ready"' "$dir/events" && break; sleep 0.5; done
grep '"ready"' "$dir/events" || { echo "minitower never got ready:"; tail "$dir/err"; exit 1; }
kill -9 "$mt"
sleep 8
alive=0
for e in /proc/[0-9]*/environ; do
  grep -qz "^SHELLPER_LEAK_TAG=$tag\$" "$e" 2>/dev/null && alive=$((alive + 1))
done
echo "shellper exit codes (count code):"
grep -h "exiting code" "$dir"/s/*.log | sed 's/.*code=\([0-9]*\).*/\1/' | sort | uniq -c
grep -h "elapsed_ms" "$dir"/s/*.log | sed 's/.*elapsed_ms=\([0-9]*\).*/\1/' | sort -n |
  awk '{a[NR]=$1} END{print "kill ladder ms: min",a[1],"median",a[int((NR+1)/2)],"p90",a[int(NR*0.9)],"max",a[NR],"(n="NR")"}'
echo "tagged processes alive 8 s after the Tower's SIGKILL: $alive"
[ "$alive" -eq 0 ]
