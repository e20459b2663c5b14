"""The SASS counts of NOTES.md v21 (no GPU needed): a 3-bit decode GEMV as CUDA from whichever tree is on PYTHONPATH
(its record for the shape, or ``--knobs``), compiled by nvcc to an sm_90a cubin and disassembled; prints its
instructions by opcode and those of the integer ALU pipe (PRMT, LOP3, SHF, IADD3, LEA, ISETP: a warp instruction
every 2 cycles on sm_80 and sm_90). nvdisasm comes from the ``nvidia-cuda-nvdisasm`` wheel; put its bin folder on
PATH, and ptxas 13.3 or later (``scripts/newer_ptxas.sh``) first on PATH too, as for the CUDA builds.

    PYTHONPATH=TREE python benchmarks/kernels/results_v21_nibble/sass_ops.py OUT N K [--sparse] [--knobs JSON]

e.g. ``22016 4096 --knobs '{"rows_inner": 4, "steps": 1}'`` for the format-2 record's schedule."""
import argparse
import collections
import json
import re
import subprocess
from dataclasses import replace
from pathlib import Path

from sqcompile.kernels.cuda_host import nvcc_path, prepare_cuda_build

prepare_cuda_build()
import tvm  # noqa: E402

from sqcompile.kernels.gemv_cuda import cuda_lut_gemv  # noqa: E402
from sqcompile.targets.tuning import load  # noqa: E402

ALU = ("PRMT", "LOP3", "SHF", "IADD3", "LEA", "ISETP")
parser = argparse.ArgumentParser()
parser.add_argument("out", type=Path)
parser.add_argument("n", type=int)
parser.add_argument("k", type=int)
parser.add_argument("--sparse", action="store_true")
parser.add_argument("--knobs", type=json.loads, default={}, help="knobs replacing the record's")
args = parser.parse_args()
knobs = replace(load("sm_90").exact("gemv", args.n, args.k, 3, args.sparse), **args.knobs)
f = cuda_lut_gemv(args.n, args.k, 3, args.sparse, "float16", knobs).with_attr("global_symbol", "gemv")
target = tvm.target.Target({"kind": "cuda", "arch": "sm_90a"}, host={"kind": "llvm"})
with target:
    lib = tvm.compile(tvm.IRModule({"gemv": f}), target=target)
args.out.mkdir(parents=True, exist_ok=True)
(args.out / "gemv.cu").write_text(lib.mod.imports[0].inspect_source())
subprocess.run([str(nvcc_path()), "-cubin", "-O3", "-arch=sm_90a", "-o", str(args.out / "gemv.cubin"),
                str(args.out / "gemv.cu")], check=True, capture_output=True)
sass = subprocess.run(["nvdisasm", "-c", str(args.out / "gemv.cubin")], check=True, capture_output=True,
                      text=True).stdout
ops = collections.Counter(re.sub(r'^@!?U?P\w+\s+', '', m.group(1)).split()[0].split('.')[0]
                          for m in re.finditer(r'/\*[0-9a-f]{4,}\*/\s*([^;]*);', sass))
print(knobs)
print(sum(ops.values()), "instructions;", sum(ops[o] for o in ALU), "on the ALU pipe")
print(", ".join(f"{o} {c}" for o, c in ops.most_common()))
