#!/usr/bin/env python3
"""Steady-state tokens/s of a `worker train --standalone --json-logs` run.

The standalone trainer logs, after every step (train.log_every = 1), the
cumulative tokens/s of its training time so far ("tokens_per_sec": tokens
of steps 1..k over the time spent in them: batch, forward, backward,
optimizer). Step k's log line therefore gives the training time of the
first k steps, and the difference between the last step and step N is the
time of the steps after the first N (warm-up: page faults of fresh buffers,
the first batches), without the start-up.

  standalone_steps.py LOG [--warmup N]

Prints "standalone tokens/s: X" (tokens of the steps after the warm-up
over their training time) and "standalone steps: K" (how many steps that is).
"""
import argparse
import json
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("log")
    ap.add_argument("--warmup", type=int, default=3, help="leading steps left out")
    args = ap.parse_args()
    if args.warmup < 1:
        sys.exit("--warmup must be at least 1 (step 1 includes the first touch of every buffer)")
    tps, tokens_per_step = {}, None
    with open(args.log) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line.startswith("{"):
                continue  # progress-line text, if any
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                sys.exit(f"{args.log}:{n}: not a JSON log line: {e}")
            if rec.get("message") == "step" and "tokens_per_sec" in rec:
                tps[rec["step"]] = rec["tokens_per_sec"]
            elif rec.get("message") == "done" and rec.get("steps"):
                tokens_per_step = rec["tokens"] / rec["steps"]
    if tokens_per_step is None:
        sys.exit(f"{args.log}: no 'done' line: the run did not finish")
    last = max(tps, default=0)
    if args.warmup not in tps or last <= args.warmup:
        sys.exit(f"{args.log}: need step lines for step {args.warmup} and later (set train.log_every = 1 and steps > warm-up)")
    if min(tps[args.warmup], tps[last]) <= 0:
        sys.exit(f"{args.log}: non-positive tokens_per_sec")
    t_warm = args.warmup * tokens_per_step / tps[args.warmup]
    t_all = last * tokens_per_step / tps[last]
    if t_all <= t_warm:
        sys.exit(f"{args.log}: training time did not grow after the warm-up (rounding? run more steps)")
    print(f"standalone tokens/s: {(last - args.warmup) * tokens_per_step / (t_all - t_warm):.0f}")
    print(f"standalone steps: {last - args.warmup}")


if __name__ == "__main__":
    main()
