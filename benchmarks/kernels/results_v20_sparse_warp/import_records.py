"""v20's measurements into ``targets/records/sm_90.json`` (``tune.import_results``): the +0.45% decode GEMVs of
the 7B shapes, each candidate's time the mean of its two rounds (``tune_round1_h200.json``, ``tune_round2_h200.json``:
one call, the tree before the change measured between them). Dense records are left as they are: their kernels
lost one barrier only (within the rounds' spread, NOTES.md v20).

    python benchmarks/kernels/results_v20_sparse_warp/import_records.py"""
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))
from sqcompile.kernels.tune import import_results  # noqa: E402

rounds = [json.loads((HERE / f"tune_round{r}_h200.json").read_text()) for r in (1, 2)]
configs = []
for first, second in zip(rounds[0]["configs"], rounds[1]["configs"]):
    if not first["sparse"]:
        continue
    assert [c["name"] for c in first["candidates"]] == [c["name"] for c in second["candidates"]]
    configs.append({**first, "candidates": [
        {**a, "us": None if None in (a["us"], b["us"]) else (a["us"] + b["us"]) / 2}
        for a, b in zip(first["candidates"], second["candidates"])]})
print("records written to", import_results([{**rounds[0], "configs": configs}]))
