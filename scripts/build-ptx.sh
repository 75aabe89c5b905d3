#!/usr/bin/env bash
# Compiles cuda/kernels/*.cu (or the .cu files named) to PTX for every
# architecture we target and stamps each PTX with the SHA-256 of its
# sources, which TestPTXMatchesSources checks. Needs nvcc (CUDA 11.8 or
# newer); the generated PTX is committed, so building moetrain does not.
#   scripts/build-ptx.sh                  # all kernels
#   scripts/build-ptx.sh rmsnorm.cu       # one file
set -euo pipefail
cd "$(dirname "$0")/../cuda/kernels"
archs=(80 90)
command -v nvcc >/dev/null || { echo "build-ptx: nvcc not found on PATH" >&2; exit 1; }
if (($#)); then files=("$@"); else files=(*.cu); fi
for f in "${files[@]}"; do
  f=$(basename "$f")
  [[ -f $f ]] || { echo "build-ptx: no such kernel source: $f" >&2; exit 1; }
  name=${f%.cu}
  # The stamp covers the file and every shared header of the folder.
  sum=$(cat "$f" *.cuh | sha256sum | cut -d' ' -f1)
  for a in "${archs[@]}"; do
    out=ptx/$name.sm_$a.ptx
    tmp=$(mktemp)
    nvcc -ptx -O3 -std=c++17 -arch=compute_$a -o "$tmp" "$f"
    { echo "// moetrain source-sha256 $sum"; grep -v '^// Compiler Build ID\|^// Cuda compilation tools\|^// Based on NVVM' "$tmp"; } > "$out"
    rm -f "$tmp"
  done
  echo "build-ptx: $f -> ptx/$name.sm_{$(IFS=,; echo "${archs[*]}")}.ptx"
done
