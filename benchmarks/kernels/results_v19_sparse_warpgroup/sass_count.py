"""The SASS counts of NOTES.md v19 (no GPU needed): the records' 512x4096x11008 3-bit GEMMs, dense and +0.45%, as
CUDA from whichever tree is on PYTHONPATH (its own records), compiled by nvcc to sm_90a cubins and disassembled;
prints each kernel's registers and the instructions of its main K loop (two K-tiles) on the path a 0.45% tile
takes: the entry loop beyond a lane's first nonzero of a tile, rarely run, left out. nvdisasm and cuobjdump come
from the ``nvidia-cuda-nvdisasm`` / ``nvidia-cuda-cuobjdump`` wheels; put their bin folder on PATH, and ptxas 13.3
or later (``scripts/newer_ptxas.sh``) first on PATH too, as for the CUDA builds.

    PYTHONPATH=TREE python benchmarks/kernels/results_v19_sparse_warpgroup/sass_count.py OUT [M N K]

M N K pick another record shape (rows of x, N x K; default 512 4096 11008)."""
import collections
import re
import subprocess
import sys
from pathlib import Path

from sqcompile.kernels.cuda_host import nvcc_path, prepare_cuda_build

prepare_cuda_build()
import tvm  # noqa: E402

from sqcompile.kernels.gemm_mma import cuda_lut_gemm_mma  # noqa: E402
from sqcompile.targets.tuning import load  # noqa: E402

BITS = 3


def op(line: str) -> str:
    return re.sub(r'^@!?U?P\w+\s+', '', line).split()[0].split('.')[0]


def main_loop(sass: str) -> list[str]:
    """The innermost backward-branch loop holding HGMMAs, with the conditional regions after each entry store
    (``STS.U16``: the loop over a lane's further nonzeros) left out."""
    ins, labels = [], {}
    for line in sass.splitlines():
        found = re.match(r'\s*(\.L_x_\d+):', line)
        if found:
            labels[found.group(1)] = len(ins)
            ins.append(found.group(1) + ':')
            continue
        found = re.match(r'\s*/\*[0-9a-f]{4,}\*/\s*(.*?);', line)
        if found:
            ins.append(found.group(1).strip())
    best = None
    for i, text in enumerate(ins):
        found = re.search(r'BRA.*`\((\.L_x_\d+)\)', text)
        if found and labels[found.group(1)] <= i:
            body = ins[labels[found.group(1)]:i + 1]
            if any('HGMMA' in x for x in body) and (best is None or len(body) < len(best)):
                best = body
    out, skip = [], None
    for j, text in enumerate(best):
        if skip:
            skip = None if text == skip + ':' else skip
            continue
        out.append(text)
        if text.startswith('STS.U16'):
            k = next(i for i in range(j + 1, len(best)) if 'BRA' in best[i])
            out.extend(best[j + 1:k + 1])
            skip = re.search(r'`\((\.L_x_\d+)\)', best[k]).group(1)
    return [x for x in out if not x.endswith(':')]


out = Path(sys.argv[1])
M, N, K = map(int, sys.argv[2:5]) if len(sys.argv) > 2 else (512, 4096, 11008)
out.mkdir(parents=True, exist_ok=True)
recs = load("sm_90")
target = tvm.target.Target({"kind": "cuda", "arch": "sm_90a"}, host={"kind": "llvm"})
for sparse in (False, True):
    knobs = recs.exact("gemm", N, K, BITS, sparse, M)
    name = f"gemm_{'sparse' if sparse else 'dense'}"
    f = cuda_lut_gemm_mma(N, K, BITS, M, sparse, knobs)
    with target:
        lib = tvm.compile(tvm.IRModule({name: f.with_attr("global_symbol", name)}), target=target)
    (out / f"{name}.cu").write_text(lib.mod.imports[0].inspect_source())
    subprocess.run([str(nvcc_path()), "-cubin", "-O3", "-arch=sm_90a", "-o", str(out / f"{name}.cubin"),
                    str(out / f"{name}.cu")], check=True, capture_output=True)
    sass = subprocess.run(["nvdisasm", "-c", str(out / f"{name}.cubin")], check=True, capture_output=True,
                          text=True).stdout
    usage = subprocess.run(["cuobjdump", "-res-usage", str(out / f"{name}.cubin")], check=True, capture_output=True,
                           text=True).stdout
    loop = main_loop(sass)
    regs = re.search(r"REG:(\d+) STACK:(\d+)", usage)
    print(f"{name}: {knobs}\n  registers {regs.group(1)} (stack {regs.group(2)} bytes), main loop {len(loop)} "
          f"instructions per warp and two K-tiles: {collections.Counter(map(op, loop)).most_common(8)}")
