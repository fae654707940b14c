#!/usr/bin/env bash
# One comparison command: our shellper against dtach, tmux and a Node PTY
# server (node-pty), every row measured in the same run. Prints one table
# (markdown) on stdout; BENCHMARKS.md explains every figure.
#
#   tests/bench/compare.sh           # full run, release build (~10 min)
#   tests/bench/compare.sh --quick   # CI smoke run: proves it works, not figures
#                                    # (debug build, 2 sessions, 10 shellpers)
#   tests/bench/compare.sh --only terminal   # some steps only (memory, spawn,
#                                    # teardown, reaction, scale, terminal)
#
# Installs what it needs: dtach and tmux with apt-get when missing, node-pty
# from npm into target/bench-node (if it cannot be installed, the Node row
# says why instead of failing the run). The measuring is in compare.py
# beside this script; the scale rows come from tower-client's hold_bench.
# Full runs write target/bench/compare.json and redraw docs/bench-scale.svg.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
quick=""
only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --only) only="${2:?--only needs a list of steps}"; shift ;;
    -h | --help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "compare.sh: unknown argument $1 (usage: compare.sh [--quick] [--only STEP,...])" >&2; exit 2 ;;
  esac
  shift
done

log() { printf 'compare.sh: %s\n' "$*" >&2; }

# Peers from the distribution.
missing=()
for t in dtach tmux; do command -v "$t" >/dev/null 2>&1 || missing+=("$t"); done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  $sudo apt-get install -y "${missing[@]}" >&2 ||
    { $sudo apt-get update >&2 && $sudo apt-get install -y "${missing[@]}" >&2; }
fi

# node-pty for the Node floor, cached under target/.
node_dir="$root/target/bench-node"
node_note=""
node_ok() {
  (cd "$node_dir" && node -e 'require("node-pty")') >/dev/null 2>&1
}
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  node_note="node or npm not installed"
elif ! node_ok; then
  log "installing node-pty into $node_dir"
  mkdir -p "$node_dir"
  if ! (cd "$node_dir" && timeout 300 npm install --no-save --no-audit --no-fund --prefix . node-pty@1 >&2) ||
    ! node_ok; then
    node_note="node-pty could not be installed or built (npm install node-pty@1 failed)"
  fi
fi
[ -z "$node_note" ] || { log "no Node row: $node_note"; node_dir=""; }

# Binaries. The full run measures the build the README uses.
if [ -n "$quick" ]; then
  # The test suite (`cargo test --workspace`) has built both already; build
  # only what is missing, so the smoke run stays cheap in CI.
  profile=debug
  [ -x target/debug/shellper ] || cargo build --quiet --locked -p shellper --bin shellper
  [ -x target/debug/examples/hold_bench ] ||
    cargo build --quiet --locked -p tower-client --example hold_bench
else
  profile=release
  cargo build --quiet --locked --release -p shellper
  cargo build --quiet --locked --release -p tower-client --example hold_bench
  cargo build --quiet --locked --release -p tower-client --bin minitower
fi
bins="$root/target/$profile"

mkdir -p target/bench
json="$root/target/bench/compare${quick:+-quick}.json"
echo "### Run: $(date -u '+%Y-%m-%d %H:%M UTC'), ${quick:+quick (smoke, not figures), }$profile build"
echo
echo "- machine: $(nproc) cores, $(uname -sr), $(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
echo "- load at start:$(uptime | sed 's/.*load average/ load average/')"
echo "- peers: $(dtach --help 2>&1 | head -1 | sed 's/ - version//'), $(tmux -V), node $(node --version 2>/dev/null || echo none)"
python3 tests/bench/compare.py ${quick:+--quick} ${only:+--only "$only"} --bins "$bins" \
  --hold-bench "$bins/examples/hold_bench" --node-dir "$node_dir" --node-note "$node_note" \
  --json "$json"
echo
echo "- load at end:$(uptime | sed 's/.*load average/ load average/')"
if [ -z "$quick" ] && [ -z "$only" ]; then
  python3 tests/bench/plot_scale.py "$json" docs/bench-scale.svg
  log "plot written to docs/bench-scale.svg"
fi
