"""Build (no GPU) v19's kernels with whichever tree is on PYTHONPATH, the records read from this checkout:

    PYTHONPATH=TREE python benchmarks/kernels/results_v19_sparse_warpgroup/build.py tune OUT [--tile M,N] [--rows R,..]
        the +0.45% prefill GEMMs at the tuned rows (128, 192, 512) over every register-operand knob, the current
        sparse record first, and the dense record beside each (measured with ``benchmarks/kernels/run.py
        measure``); with --tile only the register knobs of that tile_m, tile_n, for dense GEMMs too
    PYTHONPATH=TREE python benchmarks/kernels/results_v19_sparse_warpgroup/build.py check OUT [--tile M,N]
        the check set's sparse register-operand GEMMs (odd shapes, 100 and 300 rows, 2% and 5% nonzeros) and the
        records' sparse GEMMs inside each tier of rows (``scripts/gpu_check_kernels.py``)"""
import argparse
import itertools
from pathlib import Path

from sqcompile.kernels.cuda_host import prepare_cuda_build

prepare_cuda_build()
from sqcompile.kernels.export import Config, PREFILL_SHAPES, build, check_configs, gemm_space  # noqa: E402
from sqcompile.kernels.knobs import GEMM_TUNED_ROWS  # noqa: E402
from sqcompile.targets.tuning import load  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("which", choices=("tune", "check"))
parser.add_argument("out", type=Path)
parser.add_argument("--tile", help="only the register-operand knobs of this tile_m,tile_n")
parser.add_argument("--rows", default=",".join(map(str, GEMM_TUNED_ROWS)))
args = parser.parse_args()
tile = tuple(map(int, args.tile.split(","))) if args.tile else None
registers = [kn for kn in gemm_space("sm_90") if kn.weights_in_registers and tile in (None, (kn.tile_m, kn.tile_n))]
if args.which == "tune":
    recs = load("sm_90", Path(__file__).resolve().parents[3] / "targets" / "records")
    cfgs = []
    for m, (n, k), bits in itertools.product(map(int, args.rows.split(",")), PREFILL_SHAPES, (3, 4)):
        cfgs.append((Config("gemm", n, k, bits, False, m),
                     list(dict.fromkeys([recs.exact("gemm", n, k, bits, False, m)] + (registers if tile else [])))))
        first = [] if tile else [recs.exact("gemm", n, k, bits, True, m)]
        cfgs.append((Config("gemm", n, k, bits, True, m), list(dict.fromkeys(first + registers))))
else:
    cfgs = [(cfg, [kn for kn in cands if (kn is None and not tile) or kn in registers])
            for cfg, cands in check_configs("sm_90") if cfg.kind == "gemm" and cfg.sparse]
    cfgs = [(cfg, cands) for cfg, cands in cfgs if cands]
print(sum(len(c) for _, c in cfgs), "kernels in", len(cfgs), "configs", flush=True)
build(args.out, "sm_90", cfgs)
