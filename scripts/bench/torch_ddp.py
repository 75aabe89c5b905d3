#!/usr/bin/env python3
"""PyTorch DDP over gloo on the reference MoE model: the anchor of moetrain's
data-parallel throughput (scripts/bench-train.sh -d).

WORLD processes (default 2) on this host, each torch.set_num_threads(THREADS),
a gloo process group over loopback (127.0.0.1), the model of torch_moe.py
(identical architecture, sizes and initialisation; same seed on every rank, and
DDP broadcasts rank 0's weights anyway) wrapped in DistributedDataParallel with
its default 25 MB gradient buckets, AdamW 1e-3, batch BATCH x 256 per rank of
random tokens (a different stream per rank). A step is forward, zero_grad,
backward (DDP all-reduces the buckets as they fill) and the optimizer step.

Prints, from rank 0:
  "ddp step_s: t1 t2 ..."             every timed step's wall time on rank 0
  "ddp tokens/s: N"                    WORLD*BATCH*256 / median step time
  "ddp mean tokens/s: N"               WORLD*BATCH*256*steps / total timed time

torch.set_num_threads does not reach OpenBLAS's own pool; run with
OPENBLAS_NUM_THREADS=1 so each rank really is one thread:
  env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OPENBLAS_NUM_THREADS=1 \
      python3 scripts/bench/torch_ddp.py --world 2 --threads 1 --steps 60
"""
import argparse
import os
import socket
import statistics
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_moe import T, Model, timed_steps  # noqa: E402  (the one model definition)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(rank, args, port):
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=args.world)
    torch.manual_seed(0)
    m = Model()
    # The causal mask is a bool buffer, which gloo cannot broadcast; it is a
    # constant, identical on every rank.
    DDP._set_params_and_buffers_to_ignore_for_model(m, ["mask"])
    model = DDP(m, bucket_cap_mb=args.bucket_mb)
    n = sum(p.numel() for p in model.parameters())
    assert n == 9_644_288, n
    g = torch.Generator().manual_seed(1 + rank)
    dist.barrier()
    loss, times = timed_steps(model, args, g)
    # Every rank's timed steps, so rank 0 can check the replicas agree.
    loss_t = loss.detach().reshape(1)
    dist.all_reduce(loss_t)
    if rank == 0:
        tok = args.world * args.batch * T
        med = statistics.median(times)
        print(f"torch {torch.__version__} ddp gloo world {args.world} threads {args.threads} params {n} "
              f"mean loss {loss_t.item() / args.world:.4f}")
        print("ddp step_s: " + " ".join(f"{t:.4f}" for t in times))
        print(f"ddp tokens/s: {tok / med:.0f}")
        print(f"ddp mean tokens/s: {tok * len(times) / sum(times):.0f}")
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--world", type=int, default=2, help="number of processes")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--steps", type=int, default=60, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8, help="sequences of 256 per rank")
    ap.add_argument("--bucket-mb", type=float, default=25.0, help="DDP bucket_cap_mb")
    args = ap.parse_args()
    for k in ("world", "threads", "steps", "batch"):
        if getattr(args, k) < 1:
            ap.error(f"--{k} must be >= 1")
    if args.warmup < 0 or not args.bucket_mb > 0:
        ap.error("--warmup must be >= 0 and --bucket-mb > 0")
    mp.spawn(run, args=(args, free_port()), nprocs=args.world, join=True)


if __name__ == "__main__":
    main()
