#!/usr/bin/env bash
# How long `leasectl new` takes to hand back a session held by the running
# Tower (leasectl starts, connects to the control socket, the Tower spawns a
# shellper and acquires its lease, the answer comes back), next to `tmux
# new-session -d` (a client asking a running tmux server for a session) in
# the same run. Prints one markdown table on stdout.
#
#   tests/bench/new_latency.sh            # N=30 of each, release build
#   N=10 BIN=target/debug tests/bench/new_latency.sh
#
# Everything it starts is tagged (SHELLPER_LEAK_TAG) and ended at exit:
# minitower with --on-exit terminate, tmux with kill-server.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
n=${N:-30}
bin=${BIN:-$root/target/release}
for b in minitower leasectl shellper; do
  [ -x "$bin/$b" ] || { echo "new_latency.sh: $bin/$b missing (cargo build --release -p shellper -p tower-client -p leasectl)" >&2; exit 2; }
done
command -v tmux >/dev/null || { echo "new_latency.sh: tmux is needed" >&2; exit 2; }
tmp=$(mktemp -d /tmp/newlat.XXXXXX)
export SHELLPER_LEAK_TAG="new-latency-$$"
mt=""
cleanup() {
  [ -n "$mt" ] && kill -TERM "$mt" 2>/dev/null && wait "$mt" 2>/dev/null || true
  tmux -S "$tmp/tmux.sock" kill-server 2>/dev/null || true
  # tmux's sessions die of their hangup a moment later: wait (bounded).
  for _ in $(seq 100); do
    grep -qs "SHELLPER_LEAK_TAG=$SHELLPER_LEAK_TAG" /proc/[0-9]*/environ || break
    sleep 0.1
  done
  rm -rf "$tmp"
}
trap cleanup EXIT
"$bin/minitower" --scope "$tmp/s" --on-exit terminate >"$tmp/mt.log" 2>&1 &
mt=$!
for _ in $(seq 100); do [ -S "$tmp/s/tower.ctl" ] && break; sleep 0.05; done
tmux -S "$tmp/tmux.sock" -f /dev/null new-session -d -s base sleep 600
us() { echo $(( ($(date +%s%N) - $1) / 1000 )); }
: >"$tmp/new" ; : >"$tmp/tmux"
for i in $(seq "$n"); do
  t=$(date +%s%N); "$bin/leasectl" --scope "$tmp/s" new -- sleep 600 >/dev/null; us "$t" >>"$tmp/new"
  t=$(date +%s%N); tmux -S "$tmp/tmux.sock" new-session -d -s "s$i" sleep 600; us "$t" >>"$tmp/tmux"
done
stats() { sort -n "$1" | awk '{a[NR]=$1} END {printf "%.1f | %.1f | %.1f", a[int((NR+1)/2)]/1000, a[int(NR*0.9+0.5)]/1000, a[NR]/1000}'; }
med() { sort -n "$1" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "| command (n=$n, load $(cut -d' ' -f1-3 /proc/loadavg)) | median ms | p90 ms | max ms |"
echo "|---|---|---|---|"
echo "| \`leasectl new -- sleep 600\` | $(stats "$tmp/new") |"
echo "| \`tmux new-session -d sleep 600\` | $(stats "$tmp/tmux") |"
echo
awk -v a="$(med "$tmp/new")" -v b="$(med "$tmp/tmux")" 'BEGIN {printf "median ratio leasectl new / tmux new-session: %.1f\n", a/b}'
