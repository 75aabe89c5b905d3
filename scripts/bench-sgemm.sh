#!/usr/bin/env bash
# Compare tensor.Gemm with OpenBLAS sgemm (through numpy, one thread) on the
# square anchors and the model's shapes. Runs alternate between the two so
# a shared, noisy machine hurts both alike; the table shows medians over
# rounds and the ratio of ours (1 thread) to OpenBLAS from the same rounds,
# rated both by wall-clock time and by the benchmarking thread's CPU time
# (the CPU-time rating leaves out time slices taken by other processes).
#
#   scripts/bench-sgemm.sh [-r ROUNDS] [-f FILTER]
#
# FILTER is a substring of the shape name (e.g. NT_ or m2048). Needs Go and
# a python3 with numpy linked to OpenBLAS (Debian: python3-numpy and
# libopenblas0-pthread); set PYTHON to choose the interpreter.
set -euo pipefail

rounds=3
filter=""
while getopts "r:f:h" opt; do
	case "$opt" in
	r) rounds=$OPTARG ;;
	f) filter=$OPTARG ;;
	h) sed -n '2,12p' "$0"; exit 0 ;;
	*) echo "usage: $0 [-r ROUNDS] [-f FILTER]" >&2; exit 2 ;;
	esac
done
if ! [[ "$rounds" =~ ^[1-9][0-9]*$ ]]; then
	echo "bench-sgemm.sh: -r wants a positive integer, got '$rounds'" >&2
	exit 2
fi

root=$(cd "$(dirname "$0")/.." && pwd)
source "$root/scripts/lib.sh"
find_python bench-sgemm.sh numpy "apt-get install python3-numpy libopenblas0-pthread, or set PYTHON"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$root" && go test -c -o "$tmp/tensor.test" ./tensor)

# Go sub-benchmark names are SHAPE/tN; FILTER narrows the shape part.
benchre="BenchmarkGemm\$/${filter:+.*${filter}.*}"
for ((r = 1; r <= rounds; r++)); do
	echo "round $r/$rounds..." >&2
	(cd "$root/tensor" && "$tmp/tensor.test" -test.run '^$' -test.bench "$benchre" -test.benchtime 300ms) |
		awk '/^BenchmarkGemm\// {
			split($1, p, "/"); sub(/-[0-9]+$/, "", p[3])
			for (i = 1; i < NF; i++) {
				if ($(i+1) == "GFLOP/s") print p[2], p[3], $i
				if ($(i+1) == "cpuGFLOP/s") print p[2], p[3] "cpu", $i
			}
		}' >>"$tmp/ours"
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OPENBLAS_NUM_THREADS=1 \
		"$py" "$root/scripts/bench/sgemm_numpy.py" --filter "$filter" | awk '{ print $1, "blas", $2; print $1, "blascpu", $3 }' >>"$tmp/ours"
done

"$py" - "$tmp/ours" "$rounds" <<'PY'
import collections, statistics, sys
vals = collections.defaultdict(list)
order = []
for line in open(sys.argv[1]):
    shape, kind, v = line.split()
    if shape not in order:
        order.append(shape)
    vals[(shape, kind)].append(float(v))
nan = float("nan")
med = lambda s, k: statistics.median(vals[(s, k)]) if vals[(s, k)] else nan
ratio = lambda a, b: a / b if b == b and b > 0 else nan
print(f"medians of {sys.argv[2]} round(s), GFLOP/s; 'cpu' columns rate by the thread's CPU time")
hdr = ["shape", "ours t1", "ours t2", "OpenBLAS t1", "ratio t1", "ours cpu", "OpenBLAS cpu", "ratio cpu"]
print(f"{hdr[0]:<24} | " + " | ".join(f"{h:>12}" for h in hdr[1:]))
print("-" * (27 + 15 * (len(hdr) - 1)))
rw, rc = [], []
for s in order:
    o1, o2, bl = med(s, "t1"), med(s, "t2"), med(s, "blas")
    oc, bc = med(s, "t1cpu"), med(s, "blascpu")
    r1, r2 = ratio(o1, bl), ratio(oc, bc)
    if r1 == r1:
        rw.append(r1)
    if r2 == r2:
        rc.append(r2)
    print(f"{s:<24} | " + " | ".join(f"{v:12.2f}" if i in (3, 6) else f"{v:12.1f}" for i, v in enumerate([o1, o2, bl, r1, oc, bc, r2])))
if rw:
    print(f"geometric mean ratio, wall: {statistics.geometric_mean(rw):.2f}")
if rc:
    print(f"geometric mean ratio, cpu:  {statistics.geometric_mean(rc):.2f}")
PY
