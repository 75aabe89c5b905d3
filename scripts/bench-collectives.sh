#!/usr/bin/env bash
# bench-collectives.sh: moetrain collectives vs OpenMPI, in one run,
# interleaved (ours, MPI, ours, MPI, ...) so both see the same noise, on
# both transports training uses (docs/collectives.md#benchmarks):
#
#   shm  ranks of one host: ours with training's settings (shared-memory
#        rings) against OpenMPI's default shared-memory transport (btl vader);
#   tcp  ours with --shm=false (training's TCP settings, as between hosts)
#        against OpenMPI's TCP transport over loopback.
#
# Fair settings, printed in the header: both sides run with the same TCP
# congestion control (CC, default cubic: training's DefaultCongestion;
# OpenMPI gets it through scripts/bench/cc_preload.c, as the system's
# default may differ, e.g. BBR, and may not be changeable in a container)
# and the same binding (BIND: core or none; default core when the np ranks
# fit the CPUs, else none; ours --bind, OpenMPI --bind-to).
#
# Prints, per mode, at np=2 and 4, all-reduce and all-to-all busbw (GB/s)
# for 64K, 1M, 16M and 64M buffers, medians over ROUNDS runs, and the ratio
# ours/OpenMPI; then the 4 KiB all-reduce latency at np=2 per mode; then
# all-reduce of 64 MiB at np=4 over links shaped to 1 GB/s per direction, as
# a share of the ring bound (ours only).
#
# Environment: MODES ("shm tcp"), CC (cubic), BIND (auto), ROUNDS (3), ITERS
# (default by size: 2000 up to 64K, 200 up to 1M, 10 up to 16M, else 5),
# WARMUP (3), REPS (5), NPS ("2 4"), SIZES ("64K 1M 16M 64M"), LAT_ITERS
# (2000), SKIP_SHAPED (unset), COORD (a prebuilt coordinator binary;
# default: go build).
# Before/after in one run: BASE (another prebuilt coordinator, e.g. the
# previous commit's) adds a column "base", run interleaved with the others;
# EXTRA (flags for `bench collectives`, e.g. "--engine") adds a column "ours+"
# (COORD with those flags). CPUS (e.g. "0,1") runs every process under
# taskset on those CPUs (BIND then counts those).
# Needs mpicc and mpirun (Debian openmpi-bin + libopenmpi-dev), cc, python3,
# and go unless COORD is set.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODES=${MODES:-"shm tcp"}
CC=${CC:-cubic}
BIND=${BIND:-auto}
ROUNDS=${ROUNDS:-3}
ITERS=${ITERS:-}
WARMUP=${WARMUP:-3}
REPS=${REPS:-5}
NPS=${NPS:-"2 4"}
SIZES=${SIZES:-"64K 1M 16M 64M"}
LAT_ITERS=${LAT_ITERS:-2000}

for tool in mpicc mpirun python3 cc; do
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
if [ -n "${BASE:-}" ]; then
	cp "$BASE" "$TMP/base"
fi
mpicc -O2 -o "$TMP/mpi_coll" "$ROOT/scripts/bench/mpi_coll.c"
cc -O2 -shared -fPIC -o "$TMP/cc_preload.so" "$ROOT/scripts/bench/cc_preload.c" -ldl
PIN=()
if [ -n "${CPUS:-}" ]; then
	PIN=(taskset -c "$CPUS")
fi
NCPU=$(${PIN[@]+"${PIN[@]}"} nproc)

# bind_for NP: core or none (see BIND).
bind_for() {
	if [ "$BIND" != auto ]; then echo "$BIND"
	elif [ "$1" -le "$NCPU" ]; then echo core
	else echo none
	fi
}

run_coord() { # binary mode np ops sizes iters [extra flags]
	local bin=$1 mode=$2 np=$3 ops=$4 sizes=$5 iters=$6
	shift 6
	local tr=()
	if [ "$mode" = tcp ]; then tr=(--shm=false); fi
	# The output is parsed after the run: a python3 starting in the same
	# pipeline would take a core away from the ranks while they are timed.
	${PIN[@]+"${PIN[@]}"} "$bin" bench collectives --workers "$np" --transport tcp --ops "$ops" --sizes "$sizes" \
		--iters "$iters" --warmup "$WARMUP" --reps "$REPS" --json --tcp-congestion "$CC" --bind "$(bind_for "$np")" \
		${tr[@]+"${tr[@]}"} "$@" >"$TMP/run.json"
	python3 -c 'import sys,json
for l in sys.stdin:
    r=json.loads(l); print(r["Op"], r["Bytes"], r["Time"]/1e3, r["AlgBW"], r["BusBW"], r["Wrong"])' <"$TMP/run.json"
}
mpi() { # mode np ops bytes iters
	local mode=$1 np=$2 btl=(--mca btl vader,self) yield=()
	if [ "$mode" = tcp ]; then btl=(--mca btl tcp,self --mca btl_tcp_if_include lo); fi
	if [ "$np" -gt "$NCPU" ]; then yield=(--mca mpi_yield_when_idle 1); fi
	BENCH_TCP_CC=$CC LD_PRELOAD=$TMP/cc_preload.so ${PIN[@]+"${PIN[@]}"} mpirun --allow-run-as-root --oversubscribe \
		--bind-to "$(bind_for "$np")" "${btl[@]}" ${yield[@]+"${yield[@]}"} -x BENCH_TCP_CC -x LD_PRELOAD \
		-np "$np" "$TMP/mpi_coll" "$3" "$4" "$5" "$WARMUP" "$REPS" 2>"$TMP/mpi.err"
	if grep -q cc_preload "$TMP/mpi.err"; then
		cat "$TMP/mpi.err" >&2
		echo "bench-collectives: OpenMPI could not get congestion control $CC" >&2
		exit 1
	fi
}
# each MODE NP OPS SIZE BYTES ITERS: one line per result and implementation
# (base, ours, ours+, mpi; the first and third when asked for), prefixed with
# the mode, the implementation's name and np.
each() {
	local mode=$1 np=$2 ops=$3 size=$4 b=$5 it=$6
	if [ -n "${BASE:-}" ]; then
		run_coord "$TMP/base" "$mode" "$np" "$ops" "$size" "$it" | sed "s/^/$mode base $np /"
	fi
	run_coord "$TMP/coordinator" "$mode" "$np" "$ops" "$size" "$it" | sed "s/^/$mode ours $np /"
	if [ -n "${EXTRA:-}" ]; then
		# shellcheck disable=SC2086 # EXTRA is a list of flags
		run_coord "$TMP/coordinator" "$mode" "$np" "$ops" "$size" "$it" $EXTRA | sed "s/^/$mode ours+ $np /"
	fi
	mpi "$mode" "$np" "$ops" "$b" "$it" | sed "s/^/$mode mpi $np /"
}

bytes() { # 64K -> 65536
	local s=$1
	case $s in
	*K) echo $((${s%K} * 1024)) ;;
	*M) echo $((${s%M} * 1048576)) ;;
	*G) echo $((${s%G} * 1073741824)) ;;
	*) echo "$s" ;;
	esac
}
# Iterations per timed repetition: enough that a repetition of a small size is
# not a few hundred microseconds of scheduler noise (ITERS overrides).
iters_for() {
	local b=$1
	if [ -n "$ITERS" ]; then echo "$ITERS"
	elif [ "$b" -le 65536 ]; then echo 2000
	elif [ "$b" -le 1048576 ]; then echo 200
	elif [ "$b" -le 16777216 ]; then echo 10
	else echo 5
	fi
}

echo "# $(date -u +%FT%TZ) $(uptime | sed 's/.*load/load/'); $NCPU CPUs${CPUS:+ ($CPUS)}"
echo "# congestion control: ours $CC (--tcp-congestion), OpenMPI $CC (cc_preload.c); shm mode: ours shared-memory rings, OpenMPI btl vader"
for np in $NPS; do
	echo "# np=$np binding: ours --bind $(bind_for "$np"), OpenMPI --bind-to $(bind_for "$np")"
done
"$TMP/coordinator" bench collectives --workers 2 --sizes 4K --iters 1 --reps 1 --warmup 0 | head -n 1 |
	sed 's/^# bench collectives: /# ours, training default settings: /'
for np in $NPS; do
	for round in $(seq "$ROUNDS"); do
		for s in $SIZES; do
			b=$(bytes "$s")
			for mode in $MODES; do
				each "$mode" "$np" allreduce,alltoall "$s" "$b" "$(iters_for "$b")" >>"$TMP/results"
			done
		done
	done
done
for round in $(seq "$ROUNDS"); do
	for mode in $MODES; do
		each "$mode" 2 allreduce 4K 4096 "$LAT_ITERS" >>"$TMP/latency"
	done
done

python3 - "$TMP/results" "$TMP/latency" <<'EOF'
import sys, statistics as st
def load(path):
    d = {}
    for line in open(path):
        mode, impl, np_, op, size, t, alg, bus, wrong = line.split()
        d.setdefault((mode, impl, int(np_), op, int(size)), []).append((float(t), float(bus), int(wrong)))
    return d
res = load(sys.argv[1])
impls = [i for i in ("base", "ours", "ours+") if any(k[1] == i for k in res)]
print("# busbw GB/s, median of %d rounds; X/mpi = ratio to OpenMPI's median "
      "(wrong = elements differing from exact values, all rounds)" % len(next(iter(res.values()))))
head = "%-5s %-10s %3s %10s" % ("mode", "op", "np", "size")
head += "".join(" %9s" % i for i in impls) + " %9s" % "openmpi"
head += "".join(" %9s" % (i + "/mpi") for i in impls)
print(head + " %6s" % "wrong")
for key in sorted({(k[0],) + k[2:] for k in res}):
    mode, rest = key[0], key[1:]
    m = res.get((mode, "mpi") + rest)
    got = {i: res.get((mode, i) + rest) for i in impls}
    if not m or not all(got.values()):
        continue
    mb = st.median(x[1] for x in m)
    bw = {i: st.median(x[1] for x in got[i]) for i in impls}
    line = "%-5s %-10s %3d %10d" % (mode, rest[1], rest[0], rest[2])
    line += "".join(" %9.3f" % bw[i] for i in impls) + " %9.3f" % mb
    line += "".join(" %9.2f" % (bw[i] / mb if mb else float("nan")) for i in impls)
    print(line + " %6d" % sum(x[2] for i in impls for x in got[i]))
lat = load(sys.argv[2])
key = (2, "allreduce", 4096)
for mode in sorted({k[0] for k in lat}):
    mine = ", ".join("%s %.1f us" % (i, st.median(x[0] for x in lat[(mode, i) + key])) for i in impls)
    print("# %s: 4 KiB all-reduce latency at np=2: %s, OpenMPI %.1f us"
          % (mode, mine, st.median(x[0] for x in lat[(mode, "mpi") + key])))
EOF

if [ -z "${SKIP_SHAPED:-}" ]; then
	echo "# shaped links, 1 GB/s per direction, all-reduce at np=4 (bound% = busbw / link bandwidth; target >= 85)"
	shaped() { # binary [extra flags]: prints bound%
		local bin=$1
		shift
		${PIN[@]+"${PIN[@]}"} "$bin" bench collectives --workers 4 --transport tcp --ops allreduce --sizes 64M \
			--iters 5 --warmup 2 --reps 3 --link-bw 1GB/s --tcp-congestion "$CC" "$@" | tail -n 1 | awk '{print $NF}'
	}
	# ROUNDS interleaved runs of each binary; the median bound% is reported.
	sb=() so=() sx=()
	for ((round = 1; round <= ROUNDS; round++)); do
		if [ -n "${BASE:-}" ]; then sb+=("$(shaped "$TMP/base")"); fi
		so+=("$(shaped "$TMP/coordinator")")
		# shellcheck disable=SC2086 # EXTRA is a list of flags
		if [ -n "${EXTRA:-}" ]; then sx+=("$(shaped "$TMP/coordinator" $EXTRA)"); fi
	done
	med() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }
	if [ -n "${BASE:-}" ]; then echo "base:  all-reduce 64 MiB, median bound% $(med "${sb[@]}") (runs: ${sb[*]})"; fi
	echo "ours:  all-reduce 64 MiB, median bound% $(med "${so[@]}") (runs: ${so[*]})"
	if [ -n "${EXTRA:-}" ]; then echo "ours+: all-reduce 64 MiB, median bound% $(med "${sx[@]}") (runs: ${sx[*]})"; fi
fi
