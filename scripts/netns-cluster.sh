#!/usr/bin/env bash
# netns-cluster.sh — run a moetrain job across network-namespace "hosts" on
# this machine: host 0 runs the coordinator, hosts 1..N one worker each. The
# hosts hang off a bridge in a private "switch" namespace (the root namespace's
# networking is not touched); optional tc netem delay/rate on every host link.
# Everything is removed on exit (also on Ctrl-C or failure).
#
# Needs root, iproute2 (ip) and, for --delay/--rate, tc with netem.
#
# usage: scripts/netns-cluster.sh [--workers N] [--config job.toml] [--steps N]
#          [--delay 2ms] [--rate 1gbit] [--coordinator BIN] [--worker BIN]
#          [--run-dir DIR] [--subnet 10.77.0] [--cut I --cut-after SECONDS]
# --cut I takes worker host I (1..N) off the network (link down) after
# --cut-after seconds, to exercise failure detection.
# Binaries default to fresh go builds of ./cmd/coordinator and ./cmd/worker.
# Exit status: the coordinator's (0 = job succeeded).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

workers=2 config="" steps="" delay="" rate="" run_dir="" subnet="10.77.$((RANDOM % 200 + 20))"
coord_bin="" worker_bin="" cut="" cut_after=3
while [[ $# -gt 0 ]]; do
  case "$1" in
    --workers) workers="$2"; shift 2 ;;
    --config) config="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --delay) delay="$2"; shift 2 ;;
    --rate) rate="$2"; shift 2 ;;
    --coordinator) coord_bin="$2"; shift 2 ;;
    --worker) worker_bin="$2"; shift 2 ;;
    --run-dir) run_dir="$2"; shift 2 ;;
    --subnet) subnet="$2"; shift 2 ;;
    --cut) cut="$2"; shift 2 ;;
    --cut-after) cut_after="$2"; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "netns-cluster: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

die() { echo "netns-cluster: $*" >&2; exit 2; }
[[ $(id -u) -eq 0 ]] || die "needs root (ip netns)"
command -v ip >/dev/null || die "needs iproute2 (ip)"
[[ "$workers" =~ ^[1-9][0-9]*$ ]] || die "--workers $workers: want a positive integer"
(( workers <= 200 )) || die "--workers $workers: at most 200"
if [[ -n "$cut" ]]; then
  [[ "$cut" =~ ^[0-9]+$ ]] && (( cut >= 1 && cut <= workers )) || die "--cut $cut: want a worker host 1..$workers"
fi
if [[ -n "$delay$rate" ]]; then command -v tc >/dev/null || die "--delay/--rate need tc"; fi

tmp=$(mktemp -d)
if [[ -z "$coord_bin" || -z "$worker_bin" ]]; then
  root=$(cd "$(dirname "$0")/.." && pwd)
  echo "netns-cluster: building coordinator and worker" >&2
  (cd "$root" && go build -o "$tmp/coordinator" ./cmd/coordinator && go build -o "$tmp/worker" ./cmd/worker)
  coord_bin=${coord_bin:-$tmp/coordinator} worker_bin=${worker_bin:-$tmp/worker}
fi
run_dir=${run_dir:-runs/netns-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$run_dir"

p="m$$"          # name prefix: unique per run, short (interface names ≤ 15 chars)
sw="${p}sw"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  sleep 0.5
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  for ((i = 0; i <= workers; i++)); do ip netns del "${p}h$i" 2>/dev/null || true; done
  ip netns del "$sw" 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

netns_switch "$sw"
for ((i = 0; i <= workers; i++)); do
  ns="${p}h$i"
  netns_host "$ns" "$sw" "$p" "$i" "$subnet.$((10 + i))"
  if [[ -n "$delay$rate" ]]; then
    args=(netem)
    [[ -n "$delay" ]] && args+=(delay "$delay")
    [[ -n "$rate" ]] && args+=(rate "$rate")
    ip netns exec "$ns" tc qdisc add dev eth0 root "${args[@]}" ||
      die "tc netem failed on $ns (is the sch_netem kernel module available? try modprobe sch_netem)"
  fi
done

token=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
addr="$subnet.10:7070"
coord_args=(serve --listen "$addr" --workers "$workers" --run-dir "$run_dir" --join-timeout 60s)
[[ -n "$config" ]] && coord_args+=(--config "$config")
[[ -n "$steps" ]] && coord_args+=(--steps "$steps")
echo "netns-cluster: coordinator on ${p}h0 ($addr), $workers workers on ${p}h1..${p}h$workers${delay:+, delay $delay}${rate:+, rate $rate}" >&2
MOETRAIN_TOKEN=$token ip netns exec "${p}h0" "$coord_bin" "${coord_args[@]}" &
coord_pid=$!
pids+=("$coord_pid")
for ((i = 1; i <= workers; i++)); do
  MOETRAIN_TOKEN=$token ip netns exec "${p}h$i" "$worker_bin" --join "$addr" --host "${p}h$i" \
    --log-file "$run_dir/worker-$i.log" >"$run_dir/worker-$i.out" 2>&1 &
  pids+=("$!")
done
if [[ -n "$cut" ]]; then
  ( sleep "$cut_after"
    echo "netns-cluster: cutting host ${p}h$cut off the network at $(date -u +%Y-%m-%dT%H:%M:%S.%NZ)" >&2
    ip -n "${p}h$cut" link set eth0 down ) &
  pids+=("$!")
fi
set +e
wait "$coord_pid"
rc=$?
# Workers exit once the coordinator has ended the job; give them 20 s.
wait_exit 200 "${pids[@]:1}" || echo "netns-cluster: workers still running 20 s after the coordinator; killing them" >&2
echo "netns-cluster: coordinator exited with $rc; logs in $run_dir" >&2
exit $rc
