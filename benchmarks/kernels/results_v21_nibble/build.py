"""Build (no GPU) v21's 3-bit kernels with whichever tree is on PYTHONPATH, the records read from that tree:

    PYTHONPATH=TREE python benchmarks/kernels/results_v21_nibble/build.py tune OUT
        the Llama-2-7B GEMV shapes at 3 bits, dense and +0.45%: the record first, then the whole search space
        (``export.gemv_space``); and the 3-bit prefill GEMMs as an artifact builds them (the records' knobs).
    PYTHONPATH=TREE python benchmarks/kernels/results_v21_nibble/build.py records OUT
        the records alone (the tree before the change: its side of the A/B, measured in the same call).
    PYTHONPATH=TREE python benchmarks/kernels/results_v21_nibble/build.py check OUT
        the check set's 3-bit configs (odd shapes, dense and sparse, every LUT placement, every GEMM rule), for
        ``scripts/gpu_check_kernels.py``.
All are measured with ``benchmarks/kernels/run.py measure`` (tune, records) on the GPU host. ``--bits 4 --dense``:
the same for the 4-bit dense GEMVs alone (their kernels did not change; the records were the H100's)."""
import argparse
import itertools
from pathlib import Path

from sqcompile.kernels.cuda_host import prepare_cuda_build

prepare_cuda_build()
from sqcompile.kernels.export import (LLAMA7B_SHAPES, PREFILL, Config, build, check_configs,  # noqa: E402
                                      gemv_space)
from sqcompile.targets.tuning import load  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("which", choices=("tune", "records", "check"))
parser.add_argument("out", type=Path)
parser.add_argument("--bits", type=int, default=3)
parser.add_argument("--dense", action="store_true", help="dense GEMVs only, no +0.45%% and no prefill GEMMs")
args = parser.parse_args()
BITS = args.bits
if args.which == "check":
    cfgs = [(cfg, cands) for cfg, cands in check_configs("sm_90") if cfg.bits == BITS]
else:
    recs = load("sm_90")
    cfgs = []
    for (n, k), sparse in itertools.product(LLAMA7B_SHAPES, (False,) if args.dense else (False, True)):
        rec = recs.exact("gemv", n, k, BITS, sparse)
        space = [] if args.which == "records" else gemv_space(n, k, BITS, sparse)
        cfgs.append((Config("gemv", n, k, BITS, sparse, 1), list(dict.fromkeys([rec] + space))))
    cfgs += [] if args.dense else [(Config("gemm", n, k, BITS, sparse, m), [None])
                                   for (m, n, k), sparse in itertools.product(PREFILL, (False, True))]
print(sum(len(c) for _, c in cfgs), "kernels in", len(cfgs), "configs", flush=True)
build(args.out, "sm_90", cfgs)
