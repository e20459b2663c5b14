"""v19's measurements into ``targets/records/sm_90.json`` (``tune.import_results``): the +0.45% prefill GEMMs at
128, 192 and 512 rows from the runs of this folder over the register knobs. The one-warpgroup register kernels
(tile_n 64) count only from ``tune_tile64_h200.json``: the first two runs built them one block an SM, and
``tune_warp64_h200.json`` with a sparse warp instead of the warpgroup, both since replaced by the warpgroup at two
blocks an SM. ``tune_tile128_h200.json`` tried two-warpgroup split knobs at 128 rows, which no shape took (they are
not in ``gemm_space``).

    python benchmarks/kernels/results_v19_sparse_warpgroup/import_records.py"""
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))
from sqcompile.kernels.tune import import_results  # noqa: E402

RUNS = ("tune_h200.json", "tune2_h200.json", "tune_tile64_h200.json")
BEFORE_TILE64 = ("tune_h200.json", "tune2_h200.json")


def kept(run: str, cfg: dict) -> dict | None:
    cands = [c for c in cfg["candidates"] if not (run in BEFORE_TILE64 and c["knobs"].get("weights_in_registers")
                                                  and c["knobs"]["tile_n"] == 64)]
    if not cfg["sparse"] or not cands:
        return None
    return {**cfg, "candidates": [{**c, "default": False} for c in cands]}  # none of them is the untuned default


docs = []
for run in RUNS:
    doc = json.loads((HERE / run).read_text())
    docs.append({**doc, "configs": [c for c in (kept(run, cfg) for cfg in doc["configs"]) if c]})
print("records written to", import_results(docs))
