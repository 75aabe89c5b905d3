#!/usr/bin/env bash
# launch-ssh.sh — run a moetrain job on several machines over ssh.
#
# The hostfile has one line per machine, `host slots=N` (N workers there;
# slots defaults to 1; # comments and blank lines are ignored). The
# coordinator runs on --coordinator-host (default: the first host) and
# listens on --port; every slot runs `worker --join` with a kernel thread
# budget of cores/slots. The job token goes to the remote processes on stdin,
# never on a command line. Ctrl-C asks the coordinator to stop the job on
# every worker (then the ssh sessions are closed).
#
# usage: scripts/launch-ssh.sh --hostfile FILE [--config job.toml] [--steps N]
#          [--port 7070] [--coordinator-host HOST] [--bin-dir DIR] [--copy]
#          [--run-dir DIR] [--ssh "ssh -o BatchMode=yes"]
#   --bin-dir  remote directory holding the coordinator and worker binaries
#              (default: moetrain/bin under the remote home directory)
#   --copy     build both binaries here (go build, linux) and copy them there
#   --run-dir  remote run directory on the coordinator host (default runs/<ts>)
# Exit status: the coordinator's (0 = job succeeded).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

hostfile="" config="" steps="" port=7070 coord_host="" bin_dir="moetrain/bin" copy=0
run_dir="runs/$(date -u +%Y%m%d-%H%M%S)" ssh_cmd="ssh -o BatchMode=yes"
die() { echo "launch-ssh: $*" >&2; exit 2; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --hostfile) hostfile="$2"; shift 2 ;;
    --config) config="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --coordinator-host) coord_host="$2"; shift 2 ;;
    --bin-dir) bin_dir="$2"; shift 2 ;;
    --copy) copy=1; shift ;;
    --run-dir) run_dir="$2"; shift 2 ;;
    --ssh) ssh_cmd="$2"; shift 2 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
[[ -n "$hostfile" ]] || die "--hostfile FILE is required"
[[ -r "$hostfile" ]] || die "cannot read hostfile $hostfile"
[[ "$port" =~ ^[0-9]+$ ]] || die "--port $port: want a number"
[[ -z "$config" || -r "$config" ]] || die "cannot read config $config"

hosts=() slots=()
lineno=0
while IFS= read -r line || [[ -n "$line" ]]; do
  lineno=$((lineno + 1))
  line=${line%%#*}
  read -r -a f <<<"$line" || true
  [[ ${#f[@]} -eq 0 ]] && continue
  n=1
  for extra in "${f[@]:1}"; do
    case "$extra" in
      slots=*) n=${extra#slots=} ;;
      *) die "$hostfile:$lineno: unknown field '$extra' (want: host slots=N)" ;;
    esac
  done
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "$hostfile:$lineno: slots=$n: want a positive integer"
  hosts+=("${f[0]}") slots+=("$n")
done <"$hostfile"
[[ ${#hosts[@]} -gt 0 ]] || die "$hostfile lists no hosts"
total=0
for n in "${slots[@]}"; do total=$((total + n)); done
coord_host=${coord_host:-${hosts[0]}}
addr="$coord_host:$port"

read -r -a SSH <<<"$ssh_cmd"
remote() { local h=$1; shift; "${SSH[@]}" "$h" "$@"; }

if ((copy)); then
  tmp=$(mktemp -d)
  root=$(cd "$(dirname "$0")/.." && pwd)
  (cd "$root" && GOOS=linux go build -o "$tmp/coordinator" ./cmd/coordinator && GOOS=linux go build -o "$tmp/worker" ./cmd/worker)
  for h in $(printf '%s\n' "$coord_host" "${hosts[@]}" | sort -u); do
    remote "$h" "mkdir -p '$bin_dir'"
    for b in coordinator worker; do remote "$h" "cat > '$bin_dir/$b.tmp' && chmod +x '$bin_dir/$b.tmp' && mv '$bin_dir/$b.tmp' '$bin_dir/$b'" <"$tmp/$b"; done
  done
  rm -rf "$tmp"
fi

token=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
remote_config=""
if [[ -n "$config" ]]; then
  remote_config="$run_dir/job.toml"
  remote "$coord_host" "mkdir -p '$run_dir' && cat > '$remote_config'" <"$config"
fi

pids=()
stopped=0
on_interrupt() {
  ((stopped)) && return
  stopped=1
  echo "launch-ssh: interrupted; asking the coordinator to stop the job" >&2
  printf '%s\n' "$token" | remote "$coord_host" \
    "read -r MOETRAIN_TOKEN; export MOETRAIN_TOKEN; '$bin_dir/coordinator' stop --addr 127.0.0.1:$port --reason 'launch-ssh interrupted'" || true
}
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
}
trap on_interrupt INT TERM
trap cleanup EXIT

serve="'$bin_dir/coordinator' serve --listen 0.0.0.0:$port --workers $total --run-dir '$run_dir'"
[[ -n "$remote_config" ]] && serve+=" --config '$remote_config'"
[[ -n "$steps" ]] && serve+=" --steps $steps"
echo "launch-ssh: coordinator on $addr, $total workers on ${#hosts[@]} hosts" >&2
printf '%s\n' "$token" | remote "$coord_host" "read -r MOETRAIN_TOKEN; export MOETRAIN_TOKEN; exec $serve" &
coord_pid=$!
pids+=("$coord_pid")
for i in "${!hosts[@]}"; do
  h=${hosts[$i]} n=${slots[$i]}
  for ((s = 0; s < n; s++)); do
    printf '%s\n' "$token" | remote "$h" \
      "read -r MOETRAIN_TOKEN; export MOETRAIN_TOKEN; exec '$bin_dir/worker' --join '$addr' --host '$h' --threads \$(( \$(nproc) / $n > 0 ? \$(nproc) / $n : 1 ))" \
      2>&1 | sed -u "s/^/[$h#$s] /" &
    pids+=("$!")
  done
done
set +e
while true; do
  wait "$coord_pid"
  rc=$?
  # wait returns >128 when a trapped signal interrupts it; keep waiting then.
  if ((rc > 128)) && kill -0 "$coord_pid" 2>/dev/null; then continue; fi
  break
done
wait_exit 200 "${pids[@]:1}"
echo "launch-ssh: coordinator exited with $rc (run directory $run_dir on $coord_host)" >&2
exit $rc
