#!/usr/bin/env bash
# bench-checkpoint-overhead.sh: what asynchronous checkpointing costs the
# training step. Runs `coordinator launch` on the reference model (default
# config, validation off) ROUNDS times in pairs, without checkpoints and with
# --checkpoint-every EVERY, alternating which of the pair goes first, and
# reports the median mean step time of each and the overhead, and the
# training stall of the checkpointed runs.
#
# Mean step time = (time of the step-STEPS log line - time of the step-1
# line) / (STEPS - 1) in worker-0.log: it covers the snapshots (taken on the
# training goroutine) and the background shard writes competing for CPU
# and memory bandwidth, and leaves out start-up and the final wait for the
# last shard. Stall = the time the training loop spends in checkpointing
# (waiting for the previous shard write, then the snapshot copy; the
# "checkpoint snapshot" lines' stall field) within the same window, as a
# share of that window, per worker; the largest worker's is reported.
# Targets: stall < 2% of step time at EVERY = 20 (docs/decisions.md#checkpoints).
#
# Environment:
#   STEPS            steps per run, a multiple of 10 (default 150)
#   EVERY            checkpoint interval (default 20)
#   ROUNDS           pairs of runs (default 3)
#   WORKERS          worker processes (default 2)
#   THREADS          kernel threads per worker (default: launch's cores/workers)
#   BENCH_DIR        where runs and checkpoints go (default: a temp dir, removed)
#   COORDINATOR_BIN  prebuilt coordinator binary (default: build one with go)
set -euo pipefail
source "$(dirname "$0")/lib.sh"

STEPS=${STEPS:-150}
EVERY=${EVERY:-20}
ROUNDS=${ROUNDS:-3}
WORKERS=${WORKERS:-2}
THREADS=${THREADS:-0}
for v in STEPS EVERY ROUNDS WORKERS THREADS; do
  case "${!v}" in ''|*[!0-9]*) echo "$v must be a non-negative integer" >&2; exit 2;; esac
done
[ $((STEPS % 10)) -eq 0 ] && [ "$STEPS" -gt "$EVERY" ] && [ "$EVERY" -gt 0 ] && [ "$ROUNDS" -gt 0 ] ||
  { echo "need STEPS a multiple of 10 above EVERY > 0, ROUNDS > 0" >&2; exit 2; }
command -v python3 >/dev/null || { echo "bench-checkpoint-overhead: python3 is needed to read the logs" >&2; exit 1; }

bench_dir BENCH_DIR ckoverhead
trap '[ -n "$cleanup_dir" ] && rm -rf "$cleanup_dir"' EXIT

BIN=${COORDINATOR_BIN:-}
if [ -z "$BIN" ]; then
  root=$(cd "$(dirname "$0")/.." && pwd)
  BIN=$DIR/coordinator
  (cd "$root" && go build -o "$BIN" ./cmd/coordinator)
fi

cat >"$DIR/job.toml" <<EOF
[train]
steps = $STEPS
eval_every = 0
log_every = 10
EOF

# step_time RUN prints the mean step time in ms of worker-0.log.
step_time() {
  python3 - "$1/worker-0.log" "$STEPS" <<'PY'
import json, sys
from datetime import datetime
path, last = sys.argv[1], int(sys.argv[2])
t = {}
for line in open(path):
    d = json.loads(line)
    if d.get("message") == "step" and d.get("step") in (1, last):
        s = d["time"].rstrip("Z")
        head, _, frac = s.partition(".")
        ts = datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").timestamp() + float("0." + (frac or "0"))
        t[d["step"]] = ts
if 1 not in t or last not in t:
    sys.exit(f"{path}: no step lines for steps 1 and {last}")
print(f"{(t[last] - t[1]) / (last - 1) * 1e3:.2f}")
PY
}

# stall RUN prints the largest worker's checkpoint stall as a % of the
# window from its step-1 line to its step-STEPS line.
stall() {
  python3 - "$STEPS" "$1"/worker-*.log <<'PY'
import json, sys
from datetime import datetime
last, worst = int(sys.argv[1]), None
def ts(s):
    head, _, frac = s.rstrip("Z").partition(".")
    return datetime.strptime(head, "%Y-%m-%dT%H:%M:%S").timestamp() + float("0." + (frac or "0"))
for path in sys.argv[2:]:
    t, stalls = {}, []
    for line in open(path):
        d = json.loads(line)
        if d.get("message") == "step" and d.get("step") in (1, last):
            t[d["step"]] = ts(d["time"])
        elif d.get("message") == "checkpoint snapshot" and 1 < d.get("step", 0) <= last:
            stalls.append(d["stall"])
    if 1 not in t or last not in t or not stalls:
        sys.exit(f"{path}: no step lines for steps 1 and {last}, or no checkpoint snapshot lines")
    pct = sum(stalls) / 1e3 / (t[last] - t[1]) * 100
    worst = pct if worst is None else max(worst, pct)
    n = len(stalls)
print(f"{worst:.2f} {n}")
PY
}

run() { # run NAME [flags...]
  local name=$1; shift
  rm -rf "$DIR/$name" "$DIR/ck-$name"
  "$BIN" launch --workers "$WORKERS" --threads "$THREADS" --config "$DIR/job.toml" --run-dir "$DIR/$name" \
    --no-bar "$@" 2>"$DIR/$name.err" || { echo "run $name failed:" >&2; cat "$DIR/$name.err" >&2; exit 1; }
}

echo "reference model, $WORKERS workers, $STEPS steps, checkpoint every $EVERY; cpus: $(nproc)  load: $(cut -d' ' -f1-3 /proc/loadavg)"
off="" on="" stalls=""
for r in $(seq 1 "$ROUNDS"); do
  order="off on"
  [ $((r % 2)) -eq 0 ] && order="on off"
  for arm in $order; do
    if [ "$arm" = off ]; then
      run "off-$r"
      off+="$(step_time "$DIR/off-$r") "
    else
      run "on-$r" --checkpoint-dir "$DIR/ck-on-$r" --checkpoint-every "$EVERY" --checkpoint-keep 1
      on+="$(step_time "$DIR/on-$r") "
      read -r pct nsnap < <(stall "$DIR/on-$r")
      stalls+="$pct "
      info=$(python3 -c '
import json, sys
for line in open(sys.argv[1]):
    d = json.loads(line)
    if d.get("message") == "checkpoint published":
        last = d
print("%.1f MB stored, commit %.0f ms" % (last["bytes"] / 1e6, last["commit"]))' "$DIR/on-$r/coordinator.log" 2>/dev/null || echo "?")
      rm -rf "$DIR/ck-on-$r"
    fi
  done
  echo "round $r: no checkpoints $(echo $off | awk '{print $NF}') ms/step, every $EVERY: $(echo $on | awk '{print $NF}') ms/step ($info per checkpoint; stall $pct% over $nsnap snapshots)"
done
m_off=$(median_of $off)
m_on=$(median_of $on)
m_stall=$(median_of $stalls)
awk -v a="$m_off" -v b="$m_on" -v e="$EVERY" 'BEGIN {printf "median mean step time: %.2f ms without, %.2f ms with checkpoints every %d steps: overhead %+.1f%%\n", a, b, e, (b / a - 1) * 100}'
echo "median checkpoint stall: $m_stall% of step time (target < 2%)"
