#!/usr/bin/env bash
# bench-checkpoint-load.sh: checkpoint load throughput against a sequential
# read of the same bytes, both from a cold page cache, in the same run.
#
# A checkpoint of SIZE_MB raw state (BenchmarkSave's: 2 shards of
# ZeRO-1-style weights + Adam moments, default writer options) is written
# once into DIR. Each round then runs, back to back (odd rounds dd first,
# even rounds load first), each after `sync; echo 3 > /proc/sys/vm/drop_caches`
# and SETTLE seconds (on a virtual machine that hands freed memory back to
# its host, a read right after the drop refills pages just freed, which is
# cheaper than filling pages the host took back; the wait puts both sides in
# the second case):
#   anchor: dd if=SHARD of=/dev/null bs=1M, for each shard file in turn
#   load:   BenchmarkLoadCheckpoint, one iteration per variant in VARIANTS,
#           each in its own process: "read" is a rank's resume (open the
#           checkpoint, read every tensor whole into the trainer's buffers);
#           "verify" is the coordinator's check that picks the checkpoint
#           (every byte read and checked)
# and prints the medians over ROUNDS and each variant's ratio to dd. All
# rates are the shard files' bytes over wall time. Dropping the page cache
# needs root; without it the script refuses to run (a warm read measures
# memory, not the device).
# Target: load >= 0.9x dd (results: docs/decisions.md#checkpoints).
#
# Environment:
#   SIZE_MB              raw MB of state (default 512)
#   ROUNDS               rounds (default 3)
#   SETTLE               seconds between dropping the cache and reading (default 5)
#   VARIANTS             sub-benchmarks (default "read verify")
#   CHECKPOINT_BENCH_DIR directory on the file system to test (default: a new
#                        temp dir under ${TMPDIR:-/tmp}, removed at exit)
#   CHECKPOINT_TEST_BIN  prebuilt `go test -c ./checkpoint` binary (default:
#                        build one with go)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

SIZE_MB=${SIZE_MB:-512}
ROUNDS=${ROUNDS:-3}
SETTLE=${SETTLE:-5}
VARIANTS=${VARIANTS:-"read verify"}
case "$SIZE_MB$ROUNDS$SETTLE" in *[!0-9]*) echo "SIZE_MB and ROUNDS must be positive integers" >&2; exit 2;; esac
[ "$SIZE_MB" -gt 0 ] && [ "$ROUNDS" -gt 0 ] || { echo "SIZE_MB and ROUNDS must be positive" >&2; exit 2; }
[ -w /proc/sys/vm/drop_caches ] || { echo "bench-checkpoint-load: cannot drop the page cache (needs root)" >&2; exit 2; }

bench_dir CHECKPOINT_BENCH_DIR ckload
bindir=$(mktemp -d "${TMPDIR:-/tmp}/ckload-bin.XXXXXX")
trap 'rm -rf "$bindir" "$DIR/ckload-$SIZE_MB"; [ -n "$cleanup_dir" ] && rm -rf "$cleanup_dir"' EXIT

checkpoint_test_bin "$bindir/checkpoint.test"

drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
bench() { # bench VARIANT: one iteration, caches dropped by the benchmark
  CHECKPOINT_BENCH_MB=$SIZE_MB CHECKPOINT_BENCH_DIR=$DIR CHECKPOINT_BENCH_DROP_CACHES=1 CHECKPOINT_BENCH_SETTLE=$SETTLE "$BIN" -test.run '^$' \
    -test.bench "^BenchmarkLoadCheckpoint/^$1\$" -test.benchtime 1x
}

bench read >/dev/null # writes the checkpoint
shards=("$DIR/ckload-$SIZE_MB"/step-*/shard-*.mtck)
[ -f "${shards[0]}" ] || { echo "no shards in $DIR/ckload-$SIZE_MB" >&2; exit 1; }
bytes=$(stat -c %s "${shards[@]}" | awk '{s += $1} END {print s}')
echo "file system: $(df -h "$DIR" | awk 'NR==2 {print $1, $6}') ($(stat -f -c %T "$DIR"))  state: ${SIZE_MB} MB in ${#shards[@]} shards of $bytes bytes  rounds: $ROUNDS  cpus: $(nproc)  load: $(cut -d' ' -f1-3 /proc/loadavg)"

run_dd() {
  local t0 t1 f
  drop
  sleep "$SETTLE"
  t0=$(date +%s%N)
  for f in "${shards[@]}"; do dd if="$f" of=/dev/null bs=1M status=none; done
  t1=$(date +%s%N)
  dd_mbs=$(awk -v b="$bytes" -v ns=$((t1 - t0)) 'BEGIN {printf "%.1f", b / 1e6 / (ns / 1e9)}')
}
run_load() {
  local v
  out=""
  for v in $(rotated "$1" $VARIANTS); do
    out+=$(bench "$v")
    out+=$'\n'
  done
}
versus_dd "$ROUNDS" BenchmarkLoadCheckpoint load "cold cache, bs=1M" run_load
