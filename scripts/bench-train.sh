#!/usr/bin/env bash
# Training throughput of the reference MoE model (9,644,288 parameters, batch
# 8x256), against PyTorch on the identical model, interleaved round by round
# so a shared, noisy machine hurts all alike; prints medians over rounds and
# the ratios.
#
# Serial (default): PyTorch CPU (scripts/bench/torch_moe.py,
# torch.set_num_threads(1), OpenBLAS's core type and cache size left to its
# own detection) against moetrain's BenchmarkTrainStep with 1 and 2 kernel
# threads. torch.set_num_threads(1) does not reach OpenBLAS's own thread pool
# (a Debian torch spawns one OpenBLAS thread per core regardless), so torch
# runs twice per round: "torch" with OPENBLAS_NUM_THREADS=1 (truly one
# thread, the anchor) and "torch-blas-pool" with OpenBLAS's default pool.
#
# Data parallel (-d): `coordinator launch --workers 2`
# (2 processes x 1 kernel thread, TCP over loopback, eval off, log_every 1)
# against PyTorch DDP over gloo (scripts/bench/torch_ddp.py: 2 processes,
# torch.set_num_threads(1), OPENBLAS_NUM_THREADS=1, batch 8x256 per rank,
# AdamW); both report tokens/s of the whole job from the median step time
# after the warm-up steps (scripts/bench/dp_steps.py reads the workers'
# logs). Each round also runs BenchmarkTrainStep at 1 thread: twice that is
# the ceiling of 2 one-thread ranks with nothing to communicate.
#
# Scaling (-a), moetrain only: per round, interleaved, the reference job
# (eval off, log_every 1) as `worker train --standalone` with 1 and with 2
# kernel threads, `coordinator launch --workers 2 --threads 1` (DP=2) and
# the same launch with [mesh] dp = 2, ep = 2; tokens/s of the steps after
# the warm-up (scripts/bench/standalone_steps.py for the standalone runs,
# from the trainer's cumulative training time; scripts/bench/dp_steps.py's
# mean for the launches, from the workers' step-log gaps, so the launches
# also pay logging and progress reports). Prints per-round figures, `uptime`
# before each round, medians over rounds and the ratios: 2 threads / 1
# thread, DP=2 / 1 thread, and the DP=2 EP=2 step time against DP=2.
# BENCH_LOCK=FILE runs every round under `flock FILE` (machines shared
# with other benchmarks).
#
#   scripts/bench-train.sh [-d|-a] [-r ROUNDS] [-s STEPS]
#       defaults: 3 rounds; 8 timed steps serial, 60 with -d, 20 with -a
#       (plus 3 warm-up)
#
# Needs Go and a python3 (with torch, except for -a; Debian:
# python3-torch); set PYTHON to choose the interpreter.
set -euo pipefail

rounds=3
steps=
dp=0
scale=0
while getopts "adr:s:h" opt; do
	case "$opt" in
	a) scale=1 ;;
	d) dp=1 ;;
	r) rounds=$OPTARG ;;
	s) steps=$OPTARG ;;
	h) sed -n '2,43p' "$0"; exit 0 ;;
	*) echo "usage: $0 [-d|-a] [-r ROUNDS] [-s STEPS]" >&2; exit 2 ;;
	esac
done
if ((dp && scale)); then
	echo "bench-train.sh: -d and -a are separate modes" >&2
	exit 2
fi
if [[ -z "$steps" ]]; then
	steps=$((dp ? 60 : scale ? 20 : 8))
fi
for v in "$rounds" "$steps"; do
	if ! [[ "$v" =~ ^[1-9][0-9]*$ ]]; then
		echo "bench-train.sh: -r and -s want positive integers, got '$v'" >&2
		exit 2
	fi
done

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
source "$root/scripts/lib.sh"
if ((scale)); then
	find_python bench-train.sh json "set PYTHON"
else
	find_python bench-train.sh torch "install python3-torch or set PYTHON"
fi

bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT

gotps() { awk '{for (i = 1; i < NF; i++) if ($(i+1) == "tokens/s") print $i}'; }
field() { awk -v k="$1" 'index($0, k) == 1 {print $NF}'; }

if ((scale)); then
	warm=3
	go build -o "$bin/worker" ./cmd/worker
	go build -o "$bin/coordinator" ./cmd/coordinator
	printf '[train]\nsteps = %d\neval_every = 0\nlog_every = 1\n' $((steps + warm)) >"$bin/job.toml"
	printf '[train]\nsteps = %d\neval_every = 0\nlog_every = 1\n[mesh]\ndp = 2\nep = 2\n' $((steps + warm)) >"$bin/ep.toml"
	standalone() { # THREADS: tokens/s after the warm-up
		"$bin/worker" train --standalone --config "$bin/job.toml" --threads "$1" --json-logs 2>"$bin/standalone.log" ||
			{ cat "$bin/standalone.log" >&2; return 1; }
		"$py" scripts/bench/standalone_steps.py "$bin/standalone.log" --warmup "$warm" | field "standalone tokens/s:"
	}
	launch2() { # CONFIG: mean tokens/s of the job and mean step ms after the warm-up
		local out
		rm -rf "$bin/run"
		"$bin/coordinator" launch --workers 2 --threads 1 --config "$1" --run-dir "$bin/run" --no-bar \
			>"$bin/launch.out" 2>&1 || { cat "$bin/launch.out" >&2; return 1; }
		out=$("$py" scripts/bench/dp_steps.py "$bin/run" --warmup "$warm") || return 1
		echo "$(field "moetrain mean tokens/s:" <<<"$out")" \
			"$(awk '/^moetrain step_s:/ {for (i = 3; i <= NF; i++) s += $i; printf "%.1f", 1000 * s / (NF - 2)}' <<<"$out")"
	}
	round() {
		uptime
		s1=$(standalone 1) && s2=$(standalone 2) && d=$(launch2 "$bin/job.toml") && e=$(launch2 "$bin/ep.toml") &&
			echo "$s1 $s2 $d $e"
		uptime
	}
	s1_runs=() s2_runs=() dp_runs=() ep_runs=() dms_runs=() ems_runs=()
	for r in $(seq "$rounds"); do
		if [[ -n "${BENCH_LOCK:-}" ]]; then
			out=$(export -f round standalone launch2 field; export bin py warm; flock "$BENCH_LOCK" bash -c round)
		else
			out=$(round)
		fi
		if [[ $(wc -l <<<"$out") -ne 3 ]]; then
			echo "bench-train.sh: round $r failed" >&2
			exit 1
		fi
		read -r s1 s2 d dms e ems <<<"$(sed -n 2p <<<"$out")"
		echo "round $r: standalone 1 thread $s1, 2 threads $s2, DP=2 $d ($dms ms/step), DP=2 EP=2 $e ($ems ms/step) tokens/s"
		echo "  before:$(sed -n 1p <<<"$out" | sed 's/.*load/ load/')  after:$(sed -n 3p <<<"$out" | sed 's/.*load/ load/')"
		s1_runs+=("$s1") s2_runs+=("$s2") dp_runs+=("$d") ep_runs+=("$e") dms_runs+=("$dms") ems_runs+=("$ems")
	done
	read -r s1 s2 d e dms ems <<<"$(medians s1_runs s2_runs dp_runs ep_runs dms_runs ems_runs)"
	echo "median tokens/s: standalone 1 thread $s1, 2 threads $s2, DP=2 $d, DP=2 EP=2 $e"
	awk -v a="$s1" -v b="$s2" -v d="$d" -v dms="$dms" -v ems="$ems" 'BEGIN {
		printf "standalone 2 threads / 1 thread: %.2fx\n", b / a
		printf "DP=2 / standalone 1 thread: %.2fx\n", d / a
		printf "median step time: DP=2 %.1f ms, DP=2 EP=2 %.1f ms (%.2fx of DP=2)\n", dms, ems, ems / dms
	}'
	exit 0
fi

go test -c -o "$bin/train.test" ./train

if ((dp)); then
	warm=3
	go build -o "$bin/coordinator" ./cmd/coordinator
	printf '[train]\nsteps = %d\neval_every = 0\nlog_every = 1\n' $((steps + warm)) >"$bin/job.toml"
	ddp_runs=() ours_runs=() ceil_runs=() ddp_mean=() ours_mean=() ours_job=()
	for r in $(seq "$rounds"); do
		out=$(env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE OPENBLAS_NUM_THREADS=1 "$py" scripts/bench/torch_ddp.py \
			--world 2 --threads 1 --steps "$steps" --warmup "$warm")
		d=$(field "ddp tokens/s:" <<<"$out") dm=$(field "ddp mean tokens/s:" <<<"$out")
		rm -rf "$bin/run"
		"$bin/coordinator" launch --workers 2 --threads 1 --config "$bin/job.toml" --run-dir "$bin/run" --no-bar \
			>"$bin/launch.out" 2>&1 || { cat "$bin/launch.out" >&2; exit 1; }
		out=$("$py" scripts/bench/dp_steps.py "$bin/run" --warmup "$warm")
		o=$(field "moetrain tokens/s:" <<<"$out") om=$(field "moetrain mean tokens/s:" <<<"$out")
		oj=$(field "moetrain job tokens/s:" <<<"$out")
		c=$("$bin/train.test" -test.run '^$' -test.bench 'TrainStep/threads=1$' -test.benchtime 6x | gotps)
		c=$(awk -v c="$c" 'BEGIN {printf "%.0f", 2 * c}')
		echo "round $r: torch DDP $d (mean $dm), moetrain DP=2 $o (mean $om, job-reported $oj), 2 x serial 1 thread $c tokens/s"
		ddp_runs+=("$d") ours_runs+=("$o") ceil_runs+=("$c") ddp_mean+=("$dm") ours_mean+=("$om") ours_job+=("$oj")
	done
	read -r d o c dm om oj <<<"$(medians ddp_runs ours_runs ceil_runs ddp_mean ours_mean ours_job)"
	echo "median tokens/s: torch DDP $d (mean $dm), moetrain DP=2 $o (mean $om, job-reported $oj), 2 x serial $c"
	awk -v d="$d" -v o="$o" -v c="$c" -v dm="$dm" -v om="$om" 'BEGIN {
		printf "moetrain DP=2 / torch DDP: %.2fx (by mean step time %.2fx)\n", o / d, om / dm
		printf "moetrain DP=2 / 2 x serial 1 thread: %.2fx; torch DDP / that: %.2fx\n", o / c, d / c
	}'
	exit 0
fi

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
read -r t tp g1 g2 <<<"$(medians torch_runs pool_runs go1_runs go2_runs)"
echo "median tokens/s: torch $t, torch-blas-pool $tp, moetrain 1 thread $g1, moetrain 2 threads $g2"
awk -v t="$t" -v tp="$tp" -v a="$g1" -v b="$g2" 'BEGIN {
	printf "moetrain 1 thread / torch 1 thread: %.2fx\n", a / t
	printf "moetrain 1 thread / torch-blas-pool: %.2fx\n", a / tp
	printf "moetrain 2 threads / 1 thread: %.2fx\n", b / a
}'
