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
