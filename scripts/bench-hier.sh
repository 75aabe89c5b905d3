#!/usr/bin/env bash
# bench-hier.sh: hierarchical against flat all-to-all on network-namespace
# hosts (docs/collectives.md#hierarchical-all-to-all). HOSTS hosts of PER
# ranks each; every host's link to the switch is shaped by tc tbf to RATE
# (shared by all of the host's connections, as a NIC is), and the pairs of
# ranks on different hosts get DELAY one way from the project's link
# shaping (`bench collectives --link-latency` with --hosts; the kernels this
# ran on lack sch_netem); ranks of one host share memory. Runs `bench
# collectives --netns` with and without --hier-alltoall, interleaved, ROUNDS
# times, and prints per size the median busbw of each and their ratio.
#
# Environment: HOSTS (2), PER (2), RATE (1gbit), DELAY (100us), ROUNDS (3),
# SIZES (per-peer blocks: "64K 256K 1M"), ITERS (20), REPS (3), COORD (a
# prebuilt coordinator; default: go build). Needs root, ip and tc (iproute2),
# python3.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
source "$ROOT/scripts/lib.sh"
HOSTS=${HOSTS:-2}
PER=${PER:-2}
RATE=${RATE:-1gbit}
DELAY=${DELAY:-100us}
ROUNDS=${ROUNDS:-3}
SIZES=${SIZES:-"64K 256K 1M"}
ITERS=${ITERS:-20}
REPS=${REPS:-3}

die() { echo "bench-hier: $*" >&2; exit 2; }
[[ $(id -u) -eq 0 ]] || die "needs root (ip netns)"
for tool in ip tc python3; do command -v "$tool" >/dev/null || die "needs $tool"; done

TMP=$(mktemp -d)
p="mh$$"
cleanup() {
	for ((i = 0; i < HOSTS; i++)); do ip netns del "${p}h$i" 2>/dev/null || true; done
	ip netns del "${p}sw" 2>/dev/null || true
	rm -rf "$TMP"
}
trap cleanup EXIT
if [ -n "${COORD:-}" ]; then
	cp "$COORD" "$TMP/coordinator"
else
	(cd "$ROOT" && go build -o "$TMP/coordinator" ./cmd/coordinator)
fi

subnet="10.78.$((RANDOM % 200 + 20))"
netns_switch "${p}sw"
hosts=()
for ((i = 0; i < HOSTS; i++)); do
	ns="${p}h$i"
	netns_host "$ns" "${p}sw" "$p" "$i" "$subnet.$((10 + i))"
	ip netns exec "$ns" tc qdisc add dev eth0 root tbf rate "$RATE" burst 32kb latency 5ms ||
		die "tc tbf failed on $ns"
	for ((k = 0; k < PER; k++)); do hosts+=("$ns"); done
done
list=$(IFS=,; echo "${hosts[*]}")
n=${#hosts[@]}

bytes() { # 64K -> 65536
	local s=$1
	case $s in
	*K) echo $((${s%K} * 1024)) ;;
	*M) echo $((${s%M} * 1048576)) ;;
	*) echo "$s" ;;
	esac
}
sizes=()
for s in $SIZES; do sizes+=($(($(bytes "$s") * n))); done
sizes_csv=$(IFS=,; echo "${sizes[*]}")

echo "# $(date -u +%FT%TZ) $(uptime | sed 's/.*load/load/'); $HOSTS hosts × $PER ranks, host links $RATE (tc tbf), $DELAY one way between hosts (--link-latency)"
"$TMP/coordinator" bench collectives --workers "$n" --hosts "$list" --netns --ops alltoall --sizes 4096 \
	--link-latency "$DELAY" --iters 1 --reps 1 --warmup 0 | head -n 1
for ((round = 1; round <= ROUNDS; round++)); do
	for mode in hier flat; do
		flags=()
		[ "$mode" = hier ] && flags=(--hier-alltoall)
		"$TMP/coordinator" bench collectives --workers "$n" --hosts "$list" --netns --ops alltoall \
			--link-latency "$DELAY" --sizes "$sizes_csv" --iters "$ITERS" --reps "$REPS" --json ${flags[@]+"${flags[@]}"} |
			sed "s/^/$mode /" >>"$TMP/results"
	done
done
python3 - "$TMP/results" "$n" <<'EOF'
import sys, json, statistics as st
res = {}
for line in open(sys.argv[1]):
    mode, js = line.split(" ", 1)
    r = json.loads(js)
    res.setdefault((mode, r["Bytes"]), []).append((r["BusBW"], r["Wrong"]))
n = int(sys.argv[2])
print("# all-to-all busbw GB/s, median of %d rounds (wrong: elements differing from exact values, all rounds)" % len(next(iter(res.values()))))
print("%12s %10s %10s %10s %8s" % ("per peer", "hier", "flat", "hier/flat", "wrong"))
for b in sorted({k[1] for k in res}):
    h, f = res[("hier", b)], res[("flat", b)]
    mh, mf = st.median(x[0] for x in h), st.median(x[0] for x in f)
    print("%12d %10.3f %10.3f %10.2f %8d" % (b // n, mh, mf, mh / mf if mf else float("nan"), sum(x[1] for x in h + f)))
EOF
