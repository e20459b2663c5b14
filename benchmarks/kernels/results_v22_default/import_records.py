"""v22's controlled re-measure into ``targets/records/sm_90.json``: the 3-bit decode GEMVs at 4096x4096, dense and
+0.45%. ``placement_after_h200.json`` timed each candidate six times in one call, in both orders, each right after
the same cuBLAS kernel (``measure.measure_config`` since v22); every trial is one round for
``tune.import_results`` (a candidate's mean over the rounds). The 4x2 records came from v21's tune, which timed the
record first, where a candidate ran 6-8% faster at this shape than after the shared pair-table kernel.

    python benchmarks/kernels/results_v22_default/import_records.py"""
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))
from sqcompile.kernels.export import gemv_space  # noqa: E402
from sqcompile.kernels.knobs import knobs_to_dict  # noqa: E402
from sqcompile.kernels.tune import import_results  # noqa: E402

SHAPE = (4096, 4096)
doc = json.loads((HERE / "placement_after_h200.json").read_text())
rounds = []
for trial in sorted({r["trial"] for r in doc["rows"]}):
    configs = []
    for sparse in (False, True):
        rows = [r for r in doc["rows"] if r["trial"] == trial and (r["n"], r["k"]) == SHAPE and r["sparse"] == sparse]
        default = knobs_to_dict(gemv_space(*SHAPE, 3, sparse)[0])
        configs.append({"kind": "gemv", "n": SHAPE[0], "k": SHAPE[1], "bits": 3, "sparse": sparse, "m": 1,
                        "candidates": [{"knobs": r["knobs"], "us": r["us"], "default": r["knobs"] == default}
                                       for r in rows]})
    rounds.append({"arch": "sm_90", "device": doc["device"], "configs": configs})
print("records written to", import_results(rounds))
