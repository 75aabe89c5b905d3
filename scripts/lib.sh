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
