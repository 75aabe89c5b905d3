#!/usr/bin/env bash
# bench-data-train.sh: training throughput from prepared shards against the
# embedded corpus, in the same run. Each round trains the reference model
# (`worker train --standalone`, the job defaults, evaluation off) for STEPS
# steps on each source, the order alternating from round to round; tokens/s
# is the trainer's own figure over its training time (data loading
# included) at the last step. Prints each round, the medians and the ratio.
#
#   scripts/bench-data-train.sh DIR      # DIR: shards from `coordinator data prepare`
#                                         # or `go run ./sampling/internal/genshards`
# Environment: ROUNDS (default 5), STEPS (default 30), THREADS (default 1).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
[ $# -eq 1 ] && [ -d "$1" ] || { echo "usage: $0 PREPARED_DIR" >&2; exit 2; }
data=$(cd "$1" && pwd)
ROUNDS=${ROUNDS:-5}
STEPS=${STEPS:-30}
THREADS=${THREADS:-1}
work=$(mktemp -d "${TMPDIR:-/tmp}/datatrain.XXXXXX")
trap 'rm -rf "$work"' EXIT
(cd "$(dirname "$0")/.." && go build -o "$work/worker" ./cmd/worker)
printf '[train]\neval_every = 0\nlog_every = %d\n' "$STEPS" > "$work/job.toml"
echo "shards: $data  steps: $STEPS  threads: $THREADS  rounds: $ROUNDS  cpus: $(nproc)  load: $(cut -d' ' -f1-3 /proc/loadavg)"
# run SOURCE prints the tokens/s of one training run on SOURCE.
run() {
  (cd "$work" && ./worker train --standalone --config job.toml --steps "$STEPS" --threads "$THREADS" --data "$1" 2>&1) |
    grep '"step"\| step=' | tail -1 | sed -n 's/.*tokens_per_sec[=":]*\([0-9.]*\).*/\1/p'
}
emb=() shard=()
for r in $(seq 1 "$ROUNDS"); do
  for src in $(rotated "$r" embedded "$data"); do
    v=$(run "$src")
    [ -n "$v" ] || { echo "round $r: no tokens/s from $src" >&2; exit 1; }
    if [ "$src" = embedded ]; then emb+=("$v"); else shard+=("$v"); fi
  done
  echo "round $r: embedded ${emb[-1]} tokens/s, shards ${shard[-1]} tokens/s  (load $(cut -d' ' -f1 /proc/loadavg))"
done
me=$(median_of "${emb[@]}") ms=$(median_of "${shard[@]}")
echo "median embedded corpus: $me tokens/s"
echo "median prepared shards: $ms tokens/s = $(awk -v a="$ms" -v b="$me" 'BEGIN {printf "%.3f", a / b}')x the embedded corpus"
