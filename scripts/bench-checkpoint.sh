#!/usr/bin/env bash
# bench-checkpoint.sh: checkpoint save throughput against raw sequential
# write on the same file system, measured in the same run.
#
# Each round runs, back to back (odd rounds dd first, even rounds save
# first, so neither always meets the other's dirty pages or warm caches):
#   anchor: dd if=/dev/zero of=F bs=1M count=SIZE_MB conv=fdatasync
#   save:   BenchmarkSave (2 ranks write ZeRO-1 style shards of realistic
#           weights + Adam moments concurrently, fsync, commit), one iteration
#           of SIZE_MB raw state, for the codecs in VARIANTS (each in its
#           own process, the order rotating from round to round)
# and prints the medians over ROUNDS, each variant's ratio to dd and its
# median compression ratio (raw bytes / bytes on disk). Every measurement
# starts on an idle disk: each save process spends seconds generating its
# state before the timed save, so dd is preceded by `sync` and SETTLE
# seconds of idle (the deletion of the previous file, whose discards the
# file system may still be issuing, would otherwise land in dd's time). The
# machine's load average is printed: compression is CPU work, so on a busy
# machine the compressed variants measure the CPU share they got, not the
# writer. A tmpfs directory is refused (fdatasync is a no-op there).
# Target: save >= 0.9x dd (results: docs/decisions.md#checkpoints).
#
# Environment:
#   SIZE_MB              raw MB per measurement (default 256)
#   ROUNDS               rounds (default 3)
#   VARIANTS             BenchmarkSave sub-benchmarks (default "auto raw": the
#                        default codec, byte planes where they pay, and none;
#                        also auto-always: no raw fallback, zstd-frames: float32
#                        as zstd frames, direct and raw-direct: with O_DIRECT
#                        instead of through the page cache)
#   SETTLE               seconds of idle disk before dd (default 5)
#   WARMUP               1: each save process saves once untimed first, as a
#                        training process has after its first checkpoint
#                        (default 0: the timed save is the process's first)
#   CHECKPOINT_BENCH_DIR directory on the file system to test (default: a new
#                        temp dir under ${TMPDIR:-/tmp}, removed at exit)
#   CHECKPOINT_TEST_BIN  prebuilt `go test -c ./checkpoint` binary (default:
#                        build one with go)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

SIZE_MB=${SIZE_MB:-256}
ROUNDS=${ROUNDS:-3}
VARIANTS=${VARIANTS:-"auto raw"}
SETTLE=${SETTLE:-5}
WARMUP=${WARMUP:-0}
case "$SIZE_MB$ROUNDS$SETTLE$WARMUP" in *[!0-9]*) echo "SIZE_MB and ROUNDS must be positive integers" >&2; exit 2;; esac
[ "$SIZE_MB" -gt 0 ] && [ "$ROUNDS" -gt 0 ] || { echo "SIZE_MB and ROUNDS must be positive" >&2; exit 2; }

bench_dir CHECKPOINT_BENCH_DIR ckbench
bindir=$(mktemp -d "${TMPDIR:-/tmp}/ckbench-bin.XXXXXX")
trap 'rm -rf "$bindir"; [ -n "$cleanup_dir" ] && rm -rf "$cleanup_dir"; rm -f "$DIR/dd.bin"' EXIT
if [ "$(stat -f -c %T "$DIR")" = tmpfs ]; then
  echo "bench-checkpoint: $DIR is on tmpfs, where fdatasync writes nothing to a disk; set CHECKPOINT_BENCH_DIR to a directory on a disk" >&2
  exit 2
fi

checkpoint_test_bin "$bindir/checkpoint.test" # not in DIR: a user's directory keeps nothing of ours

echo "file system: $(df -h "$DIR" | awk 'NR==2 {print $1, $6}') ($(stat -f -c %T "$DIR"))  size: ${SIZE_MB} MB  rounds: $ROUNDS  warm-up save: $WARMUP  cpus: $(nproc)  load: $(cut -d' ' -f1-3 /proc/loadavg)"
run_dd() {
  local t0 t1
  sync
  sleep "$SETTLE"
  t0=$(date +%s%N)
  dd if=/dev/zero of="$DIR/dd.bin" bs=1M count="$SIZE_MB" conv=fdatasync status=none
  t1=$(date +%s%N)
  rm -f "$DIR/dd.bin"
  dd_mbs=$(awk -v b=$((SIZE_MB * 1048576)) -v ns=$((t1 - t0)) 'BEGIN {printf "%.1f", b / 1e6 / (ns / 1e9)}')
}
# run_save R runs each variant in a process of its own (each generates its
# state first, so none inherits another's heap or scheduler debt), starting
# with a different variant each round.
run_save() {
  local v
  out=""
  for v in $(rotated "$1" $VARIANTS); do
    sync
    out+=$(CHECKPOINT_BENCH_MB=$SIZE_MB CHECKPOINT_BENCH_DIR=$DIR CHECKPOINT_BENCH_WARMUP=$WARMUP "$BIN" -test.run '^$' \
           -test.bench "^BenchmarkSave/^$v\$" -test.benchtime 1x)
    out+=$'\n'
  done
}
versus_dd "$ROUNDS" BenchmarkSave save conv=fdatasync run_save ratio compression
