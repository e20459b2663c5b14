#!/usr/bin/env bash
# A CUDA toolkit folder that is this machine's (nvcc, headers, nvvm) with the ptxas of the nvidia-cuda-nvcc wheel
# (13.5 by default). The sm_90 weights-in-registers prefill GEMM needs ptxas 13.3 or later: older ones may reuse
# a register-operand wgmma's A registers before it has read them, and sqcompile then builds the slower
# shared-operand kernel (benchmarks/kernels/NOTES.md, v14). Use it by putting DIR/bin first on PATH:
#
#     bash scripts/newer_ptxas.sh ~/.cache/sqcompile/cuda-ptxas && export PATH=~/.cache/sqcompile/cuda-ptxas/bin:$PATH
set -euo pipefail
dest=${1:?usage: $0 DIR [CUDA_HOME] [WHEEL_VERSION]}
cuda=${2:-/usr/local/cuda}
version=${3:-13.5.*}
[ -x "$cuda/bin/nvcc" ] || { echo "no nvcc in $cuda/bin (give the CUDA toolkit folder as the second argument)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download -q --no-deps -d "$tmp" "nvidia-cuda-nvcc==$version"
python3 -m zipfile -e "$tmp"/nvidia_cuda_nvcc-*.whl "$tmp/wheel"
ptxas=$(find "$tmp/wheel" -path '*/bin/ptxas' | head -n 1)
[ -n "$ptxas" ] || { echo "the wheel holds no bin/ptxas" >&2; exit 1; }
rm -rf "$dest.partial" && mkdir -p "$dest.partial/bin"
for f in "$cuda"/*; do [ "$(basename "$f")" = bin ] || ln -s "$(readlink -f "$f")" "$dest.partial/$(basename "$f")"; done
for f in "$cuda"/bin/*; do ln -s "$(readlink -f "$f")" "$dest.partial/bin/$(basename "$f")"; done
# nvcc finds its tools next to itself (nvcc.profile's _HERE_), so nvcc and its profile are copies, not links
rm "$dest.partial/bin/nvcc" "$dest.partial/bin/nvcc.profile" "$dest.partial/bin/ptxas"
cp "$cuda/bin/nvcc" "$cuda/bin/nvcc.profile" "$dest.partial/bin/"
install -m 755 "$ptxas" "$dest.partial/bin/ptxas"
rm -rf "$dest" && mv "$dest.partial" "$dest"
"$dest/bin/ptxas" --version | tail -n 2
echo "ready: export PATH=$dest/bin:\$PATH"
