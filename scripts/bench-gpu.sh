#!/usr/bin/env bash
# moetrain on one GPU against PyTorch on the same model and machine, in one
# command (run it on a GPU machine): tokens/s, model TFLOP/s and MFU for
# PyTorch eager, PyTorch torch.compile and moetrain (worker train --device
# cuda, the training path users run, on random tokens), rounds interleaved,
# medians printed; then moetrain's device time per kernel family and its
# peak memory from one profiled run (--profile-gpu).
#
#   scripts/bench-gpu.sh [-c gpu-small|gpu-medium] [-r ROUNDS] [-s STEPS] [-p fp32|bf16]
#       defaults: gpu-small, 1 round, 30 steps (5 warm-up), bf16
#
# FLOPs per token: 6 x active non-embedding parameters (LM head included,
# top-k of the experts) + 6 x layers x seq x d_model (causal attention);
# MFU against 989.4 TFLOP/s (H100 SXM dense bf16; PEAK_TFLOPS overrides).
# Needs python3 with torch and a CUDA GPU, and either Go (the worker is
# built) or WORKER=path/to/worker. TORCH_MODES (default "eager compile")
# picks the PyTorch modes; the ratio is against torch.compile.
set -euo pipefail
cfg=gpu-small rounds=1 steps=30 prec=bf16
modes=${TORCH_MODES:-eager compile}
while getopts "c:r:s:p:h" opt; do
	case "$opt" in
	c) cfg=$OPTARG ;; r) rounds=$OPTARG ;; s) steps=$OPTARG ;; p) prec=$OPTARG ;;
	h) sed -n '2,19p' "$0"; exit 0 ;;
	*) echo "usage: $0 [-c gpu-small|gpu-medium] [-r ROUNDS] [-s STEPS] [-p fp32|bf16]" >&2; exit 2 ;;
	esac
done
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
toml=scripts/bench/$cfg.toml
[[ -f $toml ]] || { echo "bench-gpu.sh: no config $toml" >&2; exit 2; }
worker=${WORKER:-}
if [[ -z $worker ]]; then
	worker=$(mktemp -d)/worker
	go build -o "$worker" ./cmd/worker
fi
py=${PYTHON:-python3}
peak=${PEAK_TFLOPS:-989.4}
warm=5
out=$(mktemp -d)

# moetrain_run LOG: one training run; prints steady tokens/s from the
# cumulative rate logged at the warm-up step and at the last step.
moetrain_run() {
	local log=$1.log
	shift
	"$worker" train --standalone --config "$toml" --precision "$prec" --steps "$steps" --json-logs "$@" 2>"$log" >/dev/null || {
		tail -5 "$log" >&2
		return 1
	}
	"$py" - "$log" "$warm" "$steps" <<'PY'
import json, sys
log, warm, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rate = {}
for line in open(log):
    try:
        e = json.loads(line)
    except ValueError:
        continue
    if e.get("message") == "step":
        rate[e["step"]] = e["tokens_per_sec"]
# cumulative rate r_s over s steps of equal tokens: time(s) = s*tok/r_s
tw, tn = warm / rate[warm], steps / rate[steps]
print(f"{(steps - warm) / (tn - tw):.0f}")
PY
}

# tokens per step, from the config
tok=$("$py" -c "import tomllib;c=tomllib.load(open('$toml','rb'));print(c['data']['seq_len']*c['data']['batch_size'])")
fpt=$("$py" -c "
import sys; sys.path.insert(0,'scripts/bench'); import torch_moe_gpu as t
print(t.flops_per_token(t.CONFIGS['$cfg']))")

declare -A res
for r in $(seq 1 "$rounds"); do
	for mode in $modes; do
		line=$("$py" scripts/bench/torch_moe_gpu.py --config "$cfg" --mode "$mode" --steps $((steps - warm)) --warmup $warm)
		echo "round $r: $line" >&2
		res[torch-$mode]+="$(awk '{print $4}' <<<"$line") "
		res[torch-$mode-mem]=$(awk '{print $8}' <<<"$line")
	done
	m=$(moetrain_run "$out/run$r")
	echo "round $r: moetrain $prec tokens/s $m" >&2
	res[moetrain]+="$m "
done
moetrain_run "$out/prof" --profile-gpu >/dev/null

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
printf '%-16s %12s %10s %8s\n' system tokens/s TFLOP/s MFU
for k in $(for m in $modes; do echo torch-$m; done) moetrain; do
	v=$(median <<<"${res[$k]}")
	awk -v n="$k" -v v="$v" -v f="$fpt" -v p="$peak" 'BEGIN {printf "%-16s %12.0f %10.1f %7.1f%%\n", n, v, v*f/1e12, 100*v*f/1e12/p}'
done
tc=$(median <<<"${res[torch-compile]}")
mt=$(median <<<"${res[moetrain]}")
awk -v a="$mt" -v b="$tc" 'BEGIN {printf "moetrain / torch.compile: %.2fx\n", a/b}'
echo "peak GPU memory (GiB): torch eager ${res[torch-eager-mem]:-not run}, torch compile ${res[torch-compile-mem]}"
"$py" - "$out/prof.log" "$tok" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    try:
        e = json.loads(line)
    except ValueError:
        continue
    if e.get("message") == "step":
        load = e.get("max_load")
    if e.get("message") == "gpu":
        print(f"moetrain routing at the last step: largest expert load over the mean {load:.2f} (PyTorch's: max_load on its lines above)")
        print(f"moetrain peak allocated {e['peak_allocated_gib']:.2f} GiB (device in use {e['in_use_gib']:.2f} GiB)")
        other = ("device_span_ms", "gemm_plan_ms")
        fam = {k[:-3]: v for k, v in e.items() if k.endswith("_ms") and k not in other and isinstance(v, (int, float))}
        tot = sum(fam.values())
        print(f"moetrain device time per step by kernel family ({e.get('profiled_steps', 0)} profiled steps): "
              + ", ".join(f"{k} {v:.1f} ms ({100*v/tot:.0f}%)" for k, v in sorted(fam.items(), key=lambda kv: -kv[1]))
              + f"; total {tot:.1f} ms")
        print(f"moetrain device span per step {e.get('device_span_ms', 0):.1f} ms (first launch to last; minus the families' sum = device waiting for the host); "
              f"cuBLASLt algorithm searches per step {e.get('gemm_plans', 0):.0f} ({e.get('gemm_plan_ms', 0):.1f} ms of host time)")
        print("moetrain top kernels (ms per step): " + "; ".join(e.get("top_kernels_ms", [])))
PY
