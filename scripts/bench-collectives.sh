#!/usr/bin/env bash
# bench-collectives.sh: moetrain collectives vs OpenMPI over TCP loopback, in
# one run, interleaved (ours, MPI, ours, MPI, ...) so both see the same noise.
#
# Prints, at np=2 and 4, all-reduce and all-to-all busbw (GB/s) for 64K, 1M,
# 16M and 64M buffers, medians over ROUNDS runs, and the ratio ours/OpenMPI;
# then the 4 KiB all-reduce latency at np=2; then all-reduce of 64 MiB at np=4
# over links shaped to 1 GB/s per direction, as a share of the ring bound.
#
# Environment: ROUNDS (3), ITERS (default by size: 200 up to 64K, 50 up to 1M, 10 up to
# 16M, else 5), WARMUP (3), REPS (5), NPS ("2 4"),
# SIZES ("64K 1M 16M 64M"), LAT_ITERS (200), SKIP_SHAPED (unset), COORD (a prebuilt
# coordinator binary; default: go build).
# Needs mpicc and mpirun (Debian openmpi-bin + libopenmpi-dev), python3, and go unless COORD is set.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
ROUNDS=${ROUNDS:-3}
ITERS=${ITERS:-}
WARMUP=${WARMUP:-3}
REPS=${REPS:-5}
NPS=${NPS:-"2 4"}
SIZES=${SIZES:-"64K 1M 16M 64M"}
LAT_ITERS=${LAT_ITERS:-200}

for tool in mpicc mpirun python3; do
	command -v "$tool" >/dev/null || { echo "bench-collectives: $tool not found" >&2; exit 1; }
done

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
if [ -n "${COORD:-}" ]; then
	cp "$COORD" "$TMP/coordinator"
else
	command -v go >/dev/null || { echo "bench-collectives: go not found (or set COORD)" >&2; exit 1; }
	(cd "$ROOT" && go build -o "$TMP/coordinator" ./cmd/coordinator)
fi
mpicc -O2 -o "$TMP/mpi_coll" "$ROOT/scripts/bench/mpi_coll.c"

bytes() { # 64K -> 65536
	local s=$1
	case $s in
	*K) echo $((${s%K} * 1024)) ;;
	*M) echo $((${s%M} * 1048576)) ;;
	*G) echo $((${s%G} * 1073741824)) ;;
	*) echo "$s" ;;
	esac
}

MPIRUN=(mpirun --allow-run-as-root --oversubscribe --mca btl tcp,self --mca btl_tcp_if_include lo)

ours() { # np ops sizes iters [extra flags]
	local np=$1 ops=$2 sizes=$3 iters=$4
	shift 4
	"$TMP/coordinator" bench collectives --workers "$np" --transport tcp --ops "$ops" --sizes "$sizes" \
		--iters "$iters" --warmup "$WARMUP" --reps "$REPS" --json "$@" |
		python3 -c 'import sys,json
for l in sys.stdin:
    r=json.loads(l); print(r["Op"], r["Bytes"], r["Time"]/1e3, r["AlgBW"], r["BusBW"], r["Wrong"])'
}
mpi() { # np ops sizes iters
	"${MPIRUN[@]}" -np "$1" "$TMP/mpi_coll" "$2" "$3" "$4" "$WARMUP" "$REPS"
}

# Iterations per timed repetition: enough that a repetition of a small size is
# not a few hundred microseconds of scheduler noise (ITERS overrides).
iters_for() {
	local b=$1
	if [ -n "$ITERS" ]; then echo "$ITERS"
	elif [ "$b" -le 65536 ]; then echo 200
	elif [ "$b" -le 1048576 ]; then echo 50
	elif [ "$b" -le 16777216 ]; then echo 10
	else echo 5
	fi
}

for np in $NPS; do
	for round in $(seq "$ROUNDS"); do
		for s in $SIZES; do
			b=$(bytes "$s")
			it=$(iters_for "$b")
			ours "$np" allreduce,alltoall "$s" "$it" | sed "s/^/ours $np /" >>"$TMP/results"
			mpi "$np" allreduce,alltoall "$b" "$it" | sed "s/^/mpi $np /" >>"$TMP/results"
		done
	done
done
for round in $(seq "$ROUNDS"); do
	ours 2 allreduce 4K "$LAT_ITERS" | sed "s/^/ours 2 /" >>"$TMP/latency"
	mpi 2 allreduce 4096 "$LAT_ITERS" | sed "s/^/mpi 2 /" >>"$TMP/latency"
done

python3 - "$TMP/results" "$TMP/latency" <<'EOF'
import sys, statistics as st
def load(path):
    d = {}
    for line in open(path):
        impl, np_, op, size, t, alg, bus, wrong = line.split()
        d.setdefault((impl, int(np_), op, int(size)), []).append((float(t), float(bus), int(wrong)))
    return d
res = load(sys.argv[1])
print("# busbw GB/s, median of %d rounds (wrong = elements differing from exact values, all rounds)" % len(next(iter(res.values()))))
print("%-10s %3s %10s %10s %10s %7s %6s" % ("op", "np", "size", "ours", "openmpi", "ratio", "wrong"))
for key in sorted({(k[1], k[2], k[3]) for k in res}, key=lambda k: (k[1], k[0], k[2])):
    np_, op, size = key
    o = res.get(("ours",) + key); m = res.get(("mpi",) + key)
    if not o or not m: continue
    ob = st.median(x[1] for x in o); mb = st.median(x[1] for x in m)
    wrong = sum(x[2] for x in o)
    print("%-10s %3d %10d %10.3f %10.3f %7.2f %6d" % (op, np_, size, ob, mb, ob / mb if mb else float("nan"), wrong))
lat = load(sys.argv[2])
o = st.median(x[0] for x in lat[("ours", 2, "allreduce", 4096)])
m = st.median(x[0] for x in lat[("mpi", 2, "allreduce", 4096)])
print("# 4 KiB all-reduce latency at np=2: ours %.1f us, OpenMPI %.1f us (target <= 30 us)" % (o, m))
EOF

if [ -z "${SKIP_SHAPED:-}" ]; then
	echo "# shaped links, 1 GB/s per direction, all-reduce at np=4 (bound% = busbw / link bandwidth; target >= 85)"
	"$TMP/coordinator" bench collectives --workers 4 --transport tcp --ops allreduce --sizes 64M \
		--iters 5 --warmup 2 --reps 3 --link-bw 1GB/s
fi
