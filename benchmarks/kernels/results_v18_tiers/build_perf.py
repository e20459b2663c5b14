"""Build (no GPU) the records' prefill GEMMs at a static 128, 192 and 512 rows with whichever tree is on
PYTHONPATH, the knobs read from this checkout's records: the same kernels from two trees (before and after the
opaque store bounds, and the marks experiment), measured with ``benchmarks/kernels/run.py measure OUT``.

    PYTHONPATH=TREE python benchmarks/kernels/results_v18_tiers/build_perf.py OUT"""
import sys
from pathlib import Path
from sqcompile.kernels.cuda_host import prepare_cuda_build
prepare_cuda_build()
from sqcompile.kernels.export import build, Config, PREFILL_SHAPES
from sqcompile.targets.tuning import load

recs = load("sm_90", Path(__file__).resolve().parents[3] / "targets" / "records")
cfgs = []
for m in (128, 192, 512):
    for (n, k) in PREFILL_SHAPES:
        for bits in (3, 4):
            for sparse in (False, True):
                cfgs.append((Config("gemm", n, k, bits, sparse, m), [recs.exact("gemm", n, k, bits, sparse, m)]))
assert all(s[0] is not None for _, s in cfgs)
print(len(cfgs), "configs")
build(Path(sys.argv[1]), "sm_90", cfgs)
