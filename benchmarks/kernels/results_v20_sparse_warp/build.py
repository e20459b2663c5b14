"""Build (no GPU) v20's decode GEMVs with whichever tree is on PYTHONPATH, the records read from this checkout:

    PYTHONPATH=TREE python benchmarks/kernels/results_v20_sparse_warp/build.py tune OUT [--records-only]
        the Llama-2-7B GEMV shapes at 3 and 4 bits: the dense record, and for +0.45% the sparse record, the dense
        record's schedule and the rest of the sparse search space (``export.gemv_space``); with --records-only
        just the two records (the tree before the change: its side of the A/B). Measured with
        ``benchmarks/kernels/run.py measure``.
    PYTHONPATH=TREE python benchmarks/kernels/results_v20_sparse_warp/build.py check OUT
        the check set's GEMVs (odd shapes, 2-4 bits, dense and sparse, every LUT placement), for
        ``scripts/gpu_check_kernels.py``"""
import argparse
import itertools
from pathlib import Path

from sqcompile.kernels.cuda_host import prepare_cuda_build

prepare_cuda_build()
from sqcompile.kernels.export import LLAMA7B_SHAPES, Config, build, check_configs, gemv_space  # noqa: E402
from sqcompile.kernels.gemv_cuda import fit_gemv_knobs  # noqa: E402
from sqcompile.targets.tuning import load  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("which", choices=("tune", "check"))
parser.add_argument("out", type=Path)
parser.add_argument("--records-only", action="store_true")
args = parser.parse_args()
if args.which == "tune":
    recs = load("sm_90", Path(__file__).resolve().parents[3] / "targets" / "records")
    cfgs = []
    for (n, k), bits in itertools.product(LLAMA7B_SHAPES, (3, 4)):
        dense, sparse = (recs.exact("gemv", n, k, bits, sp) for sp in (False, True))
        cfgs.append((Config("gemv", n, k, bits, False, 1), [dense]))
        space = [] if args.records_only else gemv_space(n, k, bits, True)
        cfgs.append((Config("gemv", n, k, bits, True, 1),
                     list(dict.fromkeys([sparse, fit_gemv_knobs(k, bits, dense, True)] + space))))
else:
    cfgs = [(cfg, cands) for cfg, cands in check_configs("sm_90") if cfg.kind == "gemv"]
print(sum(len(c) for _, c in cfgs), "kernels in", len(cfgs), "configs", flush=True)
build(args.out, "sm_90", cfgs)
