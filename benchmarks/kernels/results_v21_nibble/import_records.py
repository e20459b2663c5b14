"""v21's measurements into ``targets/records/sm_90.json``: the 3-bit decode GEMVs of the 7B shapes, dense and
+0.45%, each candidate timed by the mean of its two rounds (``tune.import_results``; ``tune_round1_h200.json`` and
``tune_round2_h200.json``, two calls, the tree before the change measured in each). The prefill GEMMs in those
runs are the records' own kernels (their knobs did not change), so they are left out. ``build.py`` put each
shape's old record first, where an export marks the untuned default: the default is marked here by its knobs.

    python benchmarks/kernels/results_v21_nibble/import_records.py"""
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))
from sqcompile.kernels.export import gemv_space  # noqa: E402
from sqcompile.kernels.knobs import knobs_to_dict  # noqa: E402
from sqcompile.kernels.tune import import_results  # noqa: E402


def with_default(cfg: dict) -> dict:
    default = knobs_to_dict(gemv_space(cfg["n"], cfg["k"], cfg["bits"], cfg["sparse"])[0])
    return {**cfg, "candidates": [{**c, "default": c["knobs"] == default} for c in cfg["candidates"]]}


rounds = [json.loads((HERE / f"tune_round{r}_h200.json").read_text()) for r in (1, 2)]
gemvs = [{**doc, "configs": [with_default(cfg) for cfg in doc["configs"] if cfg["kind"] == "gemv"]} for doc in rounds]
print("records written to", import_results(gemvs))
