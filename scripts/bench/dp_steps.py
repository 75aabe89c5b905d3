#!/usr/bin/env python3
"""Step times of a `coordinator launch` run, from its workers' JSON logs.

The DP runner logs a "step" line after every step when train.log_every = 1;
the gap between consecutive lines of one worker is that step's whole wall
time (batch, forward, backward, reductions, optimizer, progress report).
Every rank of a data-parallel job waits for the others each step, so one
rank's gaps are the job's step times.

  dp_steps.py RUN_DIR [--warmup N]

Prints (after the first N steps, default 3):
  "moetrain step_s: t1 t2 ..."    rank 0's step times
  "moetrain tokens/s: N"          tokens of one step over all ranks / median step time
  "moetrain mean tokens/s: N"     the same over the mean step time
  "moetrain job tokens/s: N"      what the job itself reported (summary.json;
                                  cumulative, first steps included)
Tokens of a step are each rank's "done" tokens / steps, summed over ranks.
"""
import argparse
import datetime
import glob
import json
import os
import statistics
import sys


def parse_time(s):
    # RFC 3339 with nanoseconds; Python's fromisoformat takes at most micro.
    if s.endswith("Z"):
        s = s[:-1] + "+00:00"
    head, _, tz = s.partition("+")
    if "." in head:
        base, frac = head.split(".")
        head = base + "." + frac[:6].ljust(6, "0")
    return datetime.datetime.fromisoformat(head + "+" + tz).timestamp()


def read_log(path):
    steps, done = {}, None
    with open(path) as f:
        for n, line in enumerate(f, 1):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                sys.exit(f"{path}:{n}: not a JSON log line: {e}")
            if rec.get("message") == "step" and "step" in rec:
                steps[rec["step"]] = parse_time(rec["time"])
            elif rec.get("message") == "done":
                done = rec
    if done is None:
        sys.exit(f"{path}: no 'done' line: the run did not finish")
    return steps, done


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--warmup", type=int, default=3, help="leading steps left out")
    args = ap.parse_args()
    logs = sorted(glob.glob(os.path.join(args.run_dir, "worker-*.log")))
    if not logs:
        sys.exit(f"{args.run_dir}: no worker-*.log")
    per_step_tokens = 0
    steps0 = None
    for p in logs:
        steps, done = read_log(p)
        if done.get("steps", 0) < 1:
            sys.exit(f"{p}: 'done' line has no steps")
        per_step_tokens += done["tokens"] / done["steps"]
        if p.endswith("worker-0.log"):
            steps0 = steps
    if steps0 is None:
        sys.exit(f"{args.run_dir}: no worker-0.log")
    keys = sorted(steps0)
    if keys != list(range(keys[0], keys[0] + len(keys))):
        sys.exit(f"{args.run_dir}/worker-0.log: step lines are not consecutive (set train.log_every = 1)")
    times = [steps0[k] - steps0[k - 1] for k in keys[1:] if k > args.warmup]
    if not times:
        sys.exit(f"{args.run_dir}: no steps after the {args.warmup} warm-up steps")
    with open(os.path.join(args.run_dir, "summary.json")) as f:
        job = json.load(f)["status"]["tokens_per_sec"]
    print("moetrain step_s: " + " ".join(f"{t:.4f}" for t in times))
    print(f"moetrain tokens/s: {per_step_tokens / statistics.median(times):.0f}")
    print(f"moetrain mean tokens/s: {per_step_tokens * len(times) / sum(times):.0f}")
    print(f"moetrain job tokens/s: {job:.0f}")


if __name__ == "__main__":
    main()
