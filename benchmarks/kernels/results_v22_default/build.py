"""Build (no GPU) v22's A/B of the untuned 3-bit GEMV: the new default (the register table), the old one (the shared
pair table) and the sm_90 record, on the Llama-2-7B GEMV shapes, dense and +0.45%:

    python benchmarks/kernels/results_v22_default/build.py OUT

The first candidate of each config is the new default (what ``run.py`` reports as "untuned"). Measured with
``benchmarks/kernels/run.py measure OUT --out DIR`` on the GPU host, once per round; ``table.py`` prints the table."""
import argparse
import itertools
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from sqcompile.kernels.cuda_host import prepare_cuda_build  # noqa: E402

prepare_cuda_build()
from sqcompile.kernels.export import LLAMA7B_SHAPES, Config, build  # noqa: E402
from sqcompile.kernels.gemv_cuda import fit_gemv_knobs  # noqa: E402
from sqcompile.kernels.knobs import GemvKnobs  # noqa: E402
from sqcompile.targets.tuning import load  # noqa: E402

BITS = 3
OLD_DEFAULT = replace(GemvKnobs.default(BITS), reg_words=0)  # the shared pair table, before v22

parser = argparse.ArgumentParser()
parser.add_argument("out", type=Path)
args = parser.parse_args()
recs = load("sm_90")
cfgs = []
for (n, k), sparse in itertools.product(LLAMA7B_SHAPES, (False, True)):
    cands = [fit_gemv_knobs(k, BITS, kn, sparse) for kn in (GemvKnobs.default(BITS), OLD_DEFAULT)]
    cands.append(recs.exact("gemv", n, k, BITS, sparse))
    cfgs.append((Config("gemv", n, k, BITS, sparse, 1), list(dict.fromkeys(cands))))
print(sum(len(c) for _, c in cfgs), "kernels in", len(cfgs), "configs", flush=True)
build(args.out, "sm_90", cfgs)
