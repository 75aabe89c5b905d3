#!/usr/bin/env bash
# Training throughput of the reference MoE model (9,644,288 parameters, batch
# 8x256): PyTorch CPU (scripts/bench/torch_moe.py, the identical model,
# torch.set_num_threads(1), OpenBLAS's core type and cache size left to its
# own detection) against moetrain's
# BenchmarkTrainStep with 1 and 2 kernel threads. Rounds alternate torch,
# moetrain 1 thread, moetrain 2 threads, so a shared, noisy machine hurts all
# alike; prints medians over rounds and the ratios.
#
# torch.set_num_threads(1) does not reach OpenBLAS's own thread pool (a
# Debian torch spawns one OpenBLAS thread per core regardless), so torch runs
# twice per round: "torch" with OPENBLAS_NUM_THREADS=1 (truly one thread,
# the anchor) and "torch-blas-pool" with OpenBLAS's default pool.
#
#   scripts/bench-train.sh [-r ROUNDS] [-s STEPS]     (defaults: 3 rounds, 8 timed steps)
#
# Needs Go and a python3 with torch (Debian: python3-torch); set PYTHON to
# choose the interpreter.
set -euo pipefail

rounds=3
steps=8
while getopts "r:s:h" opt; do
	case "$opt" in
	r) rounds=$OPTARG ;;
	s) steps=$OPTARG ;;
	h) sed -n '2,12p' "$0"; exit 0 ;;
	*) echo "usage: $0 [-r ROUNDS] [-s STEPS]" >&2; exit 2 ;;
	esac
done
for v in "$rounds" "$steps"; do
	if ! [[ "$v" =~ ^[1-9][0-9]*$ ]]; then
		echo "bench-train.sh: -r and -s want positive integers, got '$v'" >&2
		exit 2
	fi
done

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
py=${PYTHON:-}
if [[ -z "$py" ]]; then
	for cand in python3 /usr/bin/python3; do
		if "$cand" -c 'import torch' 2>/dev/null; then
			py=$cand
			break
		fi
	done
fi
if [[ -z "$py" ]]; then
	echo "bench-train.sh: no python3 with torch found (install python3-torch or set PYTHON)" >&2
	exit 1
fi

bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
go test -c -o "$bin/train.test" ./train

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
gotps() { awk '{for (i = 1; i < NF; i++) if ($(i+1) == "tokens/s") print $i}'; }

torch_runs=() pool_runs=() go1_runs=() go2_runs=()
torchtps() { awk '/tokens\/s:/ {print $3}'; }
for r in $(seq "$rounds"); do
	t=$(env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OPENBLAS_NUM_THREADS=1 "$py" scripts/bench/torch_moe.py --threads 1 --steps "$steps" | torchtps)
	g1=$("$bin/train.test" -test.run '^$' -test.bench 'TrainStep/threads=1$' -test.benchtime "${steps}x" | gotps)
	tp=$(env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE -u OPENBLAS_NUM_THREADS "$py" scripts/bench/torch_moe.py --threads 1 --steps "$steps" | torchtps)
	g2=$("$bin/train.test" -test.run '^$' -test.bench 'TrainStep/threads=2$' -test.benchtime "${steps}x" | gotps)
	echo "round $r: torch $t, torch-blas-pool $tp, moetrain 1 thread $g1, 2 threads $g2 tokens/s"
	torch_runs+=("$t") pool_runs+=("$tp") go1_runs+=("$g1") go2_runs+=("$g2")
done
t=$(printf '%s\n' "${torch_runs[@]}" | median)
tp=$(printf '%s\n' "${pool_runs[@]}" | median)
g1=$(printf '%s\n' "${go1_runs[@]}" | median)
g2=$(printf '%s\n' "${go2_runs[@]}" | median)
echo "median tokens/s: torch $t, torch-blas-pool $tp, moetrain 1 thread $g1, moetrain 2 threads $g2"
awk -v t="$t" -v tp="$tp" -v a="$g1" -v b="$g2" 'BEGIN {
	printf "moetrain 1 thread / torch 1 thread: %.2fx\n", a / t
	printf "moetrain 1 thread / torch-blas-pool: %.2fx\n", a / tp
	printf "moetrain 2 threads / 1 thread: %.2fx\n", b / a
}'
