#!/usr/bin/env python3
"""SGEMM anchor: numpy's BLAS (OpenBLAS on Debian with libopenblas0) on the
same shapes as tensor.BenchmarkGemm, printing one line per shape:

    NAME WALL_GFLOPS CPU_GFLOPS

NAME matches the Go sub-benchmark name (e.g. NT_m2048_n768_k256). Each
shape reports the median over --reps timed samples after warm-up, rated by
wall-clock time and by the calling thread's CPU time (which, like the Go
benchmark's cpuGFLOP/s, leaves out time other processes take on a shared
machine; it is only meaningful with OPENBLAS_NUM_THREADS=1, when OpenBLAS
computes on the calling thread).
"""
import argparse
import statistics
import sys
import time

import numpy as np

# Kept in step with gemmBenchShapes in tensor/gemm_bench_test.go:
# (m, n, k, transA, transB); op(A) is m×k, op(B) is k×n.
SHAPES = [
    (1024, 1024, 1024, False, False),
    (2048, 2048, 2048, False, False),
    (2048, 768, 256, False, False),
    (2048, 768, 256, False, True),
    (2048, 256, 256, False, False),
    (2048, 256, 256, False, True),
    (2048, 256, 768, False, True),
    (256, 768, 2048, True, False),
    (256, 256, 2048, True, False),
    (512, 512, 256, False, False),
    (512, 256, 512, False, False),
    (512, 256, 512, False, True),
    (512, 512, 256, False, True),
    (256, 512, 512, True, False),
    (512, 256, 512, True, False),
    (256, 256, 64, False, True),
    (256, 64, 256, False, False),
]


def name(m, n, k, ta, tb):
    return f"{'T' if ta else 'N'}{'T' if tb else 'N'}_m{m}_n{n}_k{k}"


def bench(m, n, k, ta, tb, reps, min_time):
    rng = np.random.default_rng(1)
    # Stored layouts as in the Go benchmark; .T gives numpy a transposed
    # view, which it hands to sgemm as a transpose flag (no copy).
    a = rng.uniform(-1, 1, (k, m) if ta else (m, k)).astype(np.float32)
    b = rng.uniform(-1, 1, (n, k) if tb else (k, n)).astype(np.float32)
    opa = a.T if ta else a
    opb = b.T if tb else b
    out = np.empty((m, n), dtype=np.float32)
    np.matmul(opa, opb, out=out)
    # Calls per sample so one sample lasts at least min_time seconds.
    t0 = time.perf_counter()
    np.matmul(opa, opb, out=out)
    one = max(time.perf_counter() - t0, 1e-7)
    inner = max(1, int(min_time / one))
    wall, cpu = [], []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.thread_time()
        for _ in range(inner):
            np.matmul(opa, opb, out=out)
        wall.append((time.perf_counter() - t0) / inner)
        cpu.append(max(time.thread_time() - c0, 1e-9) / inner)
    flops = 2.0 * m * n * k
    return flops / statistics.median(wall) / 1e9, flops / statistics.median(cpu) / 1e9


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=5, help="timed samples per shape (median reported)")
    p.add_argument("--min-time", type=float, default=0.05, help="seconds per sample at least")
    p.add_argument("--filter", default="", help="only shapes whose name contains this")
    args = p.parse_args()
    if args.reps < 1 or args.min_time <= 0:
        sys.exit("sgemm_numpy.py: --reps must be >= 1 and --min-time > 0")
    for s in SHAPES:
        nm = name(*s)
        if args.filter and args.filter not in nm:
            continue
        wall, cpu = bench(*s, args.reps, args.min_time)
        print(f"{nm} {wall:.1f} {cpu:.1f}", flush=True)


if __name__ == "__main__":
    main()
