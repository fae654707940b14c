#!/usr/bin/env bash
# Memory harness (not a test): starts N idle shellpers (legacy mode, `sleep`
# child) from BIN and prints the average VmHWM, PSS and USS per shellper
# (/proc/PID/status and /proc/PID/smaps). PSS with many running is what one
# more shellper really costs: shared pages (libc, the binary's text) are split
# between the processes that map them.
#
#   tests/load/shellper_pss.sh target/release/shellper 10
set -euo pipefail
bin=${1:?usage: shellper_pss.sh BIN [N]}
n=${2:-10}
dir=$(mktemp -d); chmod 700 "$dir"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  sleep 0.5
  rm -rf "$dir"
}
trap cleanup EXIT
for i in $(seq 1 "$n"); do
  "$bin" --socket "$dir/$i.sock" --window 60s --claim 60s -- sleep 600 >"$dir/$i.info" &
  disown
done
sleep 1.5
for i in $(seq 1 "$n"); do
  pids+=("$(sed -n 's/.*"pid":\([0-9]*\).*/\1/p' "$dir/$i.info")")
done
for p in "${pids[@]}"; do
  hwm=$(awk '/^VmHWM/{print $2}' "/proc/$p/status")
  awk -v h="$hwm" '/^Pss:/{p+=$2} /^Private_Clean:|^Private_Dirty:/{u+=$2} END{print h, p, u}' "/proc/$p/smaps"
done | awk '{h+=$1; p+=$2; u+=$3; k++} END{printf "%d shellpers: avg VmHWM %d KiB, PSS %d KiB, USS %d KiB\n", k, h/k, p/k, u/k}'
