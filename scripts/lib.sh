# Shell functions shared by the scripts beside this file; source it, then call them.

# find_python WHO MODULE HINT sets py to $PYTHON if set, else to the first of
# python3 and /usr/bin/python3 that imports MODULE; without one it prints
# "WHO: no python3 with MODULE found (HINT)" on stderr and exits 1.
find_python() {
	py=${PYTHON:-}
	if [[ -z "$py" ]]; then
		for cand in python3 /usr/bin/python3; do
			if command -v "$cand" >/dev/null && "$cand" -c "import $2" 2>/dev/null; then
				py=$cand
				break
			fi
		done
	fi
	if [[ -z "$py" ]]; then
		echo "$1: no python3 with $2 found ($3)" >&2
		exit 1
	fi
}

# bench_dir ENV PREFIX sets DIR to the directory the environment variable ENV
# names (created if missing; the caller's files in it are its own), else to a
# new temp dir PREFIX.XXXXXX under ${TMPDIR:-/tmp}; cleanup_dir is that temp
# dir, for the caller's exit trap to remove, or "" when ENV named one.
bench_dir() {
	cleanup_dir=""
	if [[ -n "${!1:-}" ]]; then
		DIR=${!1}
		mkdir -p "$DIR"
	else
		DIR=$(mktemp -d "${TMPDIR:-/tmp}/$2.XXXXXX")
		cleanup_dir=$DIR
	fi
}

# checkpoint_test_bin OUT sets BIN to $CHECKPOINT_TEST_BIN if set, else builds
# `go test -c ./checkpoint` of this repository into OUT and sets BIN to OUT.
checkpoint_test_bin() {
	BIN=${CHECKPOINT_TEST_BIN:-}
	if [[ -z "$BIN" ]]; then
		BIN=$1
		(cd "$(dirname "${BASH_SOURCE[0]}")/.." && go test -c -o "$BIN" ./checkpoint)
	fi
}

# median prints the median of the numbers on stdin, one a line; of an even
# count, the mean of the middle two to two decimals.
median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else printf "%.2f\n", (a[NR/2]+a[NR/2+1])/2}'; }

# median_of W... prints the median of the numbers W (median's rounding).
median_of() { printf '%s\n' "$@" | median; }

# medians A... prints the median_of of each bash array named A, in order, on
# one line: `read -r x y <<<"$(medians xs ys)"`.
medians() {
	local a ref out=()
	for a; do
		ref="$a[@]"
		out+=("$(median_of "${!ref}")")
	done
	echo "${out[*]}"
}

# rotated R W... prints the words W one a line, starting with word R modulo
# their count: run in rounds, each round starts with another.
rotated() {
	local r=$1 n i
	shift
	n=$#
	for ((i = 0; i < n; i++)); do
		local k=$(((i + r) % n + 1))
		echo "${!k}"
	done
}

# bench_metric NAME UNIT reads `go test -bench` output on stdin and prints
# the value benchmark NAME (any -P suffix) reports in UNIT (e.g. MB/s).
bench_metric() { awk -v v="$1" -v u="$2" '$1 ~ "^"v"(-[0-9]+)?$" {for (i = 1; i < NF; i++) if ($(i+1) == u) print $i}'; }

# wait_exit N PID... waits up to N tenths of a second for every process PID
# to exit, polling every tenth; it returns 1 if one is still running then.
wait_exit() {
	local n=$1 t pid alive
	shift
	for ((t = 0; t < n; t++)); do
		alive=0
		for pid; do kill -0 "$pid" 2>/dev/null && alive=1; done
		((alive)) || return 0
		sleep 0.1
	done
	return 1
}

# netns_switch SW creates network namespace SW holding the bridge br0 that
# netns_host attaches hosts to; br0 and lo are up.
netns_switch() {
	ip netns add "$1"
	ip -n "$1" link add br0 type bridge
	ip -n "$1" link set br0 up
	ip -n "$1" link set lo up
}

# netns_host NS SW P I ADDR creates network namespace NS as host I on
# netns_switch SW: a veth pair PaI (renamed eth0 in NS, address ADDR/24)
# and PbI (a port of SW's br0); every link up. PaI has at most 15
# characters (the kernel's limit on interface names).
netns_host() {
	local ns=$1 sw=$2 a="$3a$4" b="$3b$4" addr=$5
	ip netns add "$ns"
	ip link add "$a" type veth peer name "$b"
	ip link set "$a" netns "$ns"
	ip link set "$b" netns "$sw"
	ip -n "$ns" link set "$a" name eth0
	ip -n "$ns" addr add "$addr/24" dev eth0
	ip -n "$ns" link set eth0 up
	ip -n "$ns" link set lo up
	ip -n "$sw" link set "$b" master br0
	ip -n "$sw" link set "$b" up
}

# versus_dd ROUNDS BENCH KIND DD_LABEL RUN [UNIT NAME] runs ROUNDS rounds of
# run_dd (which sets dd_mbs) and RUN R (which sets out to the `go test
# -bench` output of every variant in $VARIANTS), each round the other one
# first, and prints a line a round with the MB/s of dd and of each variant's
# benchmark BENCH/VARIANT; then the median of dd ("median dd (DD_LABEL)")
# and of each variant against it ("median KIND VARIANT"). With UNIT, the
# benchmarks' metric in UNIT too, shown as "NAME Nx". A variant without a
# result ends the script.
versus_dd() {
	local rounds=$1 bench=$2 kind=$3 dd_label=$4 run=$5 unit=${6:-} name=${7:-}
	local r v mbs x line dd_med med
	local -A res extra
	for ((r = 1; r <= rounds; r++)); do
		if ((r % 2)); then run_dd; "$run" "$r"; else "$run" "$r"; run_dd; fi
		res[dd]+="$dd_mbs "
		line="round $r: dd ${dd_mbs} MB/s"
		for v in $VARIANTS; do
			mbs=$(echo "$out" | bench_metric "$bench/$v" MB/s)
			[ -n "$mbs" ] || { echo "no result for $v in:"; echo "$out"; exit 1; } >&2
			res[$v]+="$mbs "
			line+=", $v ${mbs} MB/s"
			if [ -n "$unit" ]; then
				x=$(echo "$out" | bench_metric "$bench/$v" "$unit")
				extra[$v]+="$x "
				line+=" ($name ${x}x)"
			fi
		done
		echo "$line"
	done
	dd_med=$(median_of ${res[dd]})
	echo "median dd ($dd_label): ${dd_med} MB/s"
	for v in $VARIANTS; do
		med=$(median_of ${res[$v]})
		line=$(awk -v k="$kind" -v v="$v" -v m="$med" -v d="$dd_med" 'BEGIN {printf "median %s %-13s %8.1f MB/s  = %.2fx dd  (target >= 0.90x)", k, v, m, m / d}')
		[ -z "$unit" ] || line+=$(awk -v n="$name" -v c="$(median_of ${extra[$v]})" 'BEGIN {printf "  %s %.3fx", n, c}')
		echo "$line"
	done
}
