"""Why does one kernel time differently in two configs of one call? (GPU host, runtime bundle on the path)

    python3 benchmarks/kernels/results_v22_default/placement.py EXPORT --configs 0,1 --out placement.json

Re-measures configs of an export folder (``build.py``'s) several times in one process: each trial allocates its
inputs anew behind a spacer of a different size (so they land elsewhere in device memory) and times the
candidates in the manifest's order or reversed (so a candidate follows another one). If the same kernel's time
moves with the trial, the spread between calls is where the buffers land or what ran before, not the kernel."""
import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
from sqcompile.kernels.measure import measure_config  # noqa: E402

parser = argparse.ArgumentParser()
parser.add_argument("folder", type=Path)
parser.add_argument("--configs", default="0,1", help="indexes into the manifest's configs")
parser.add_argument("--trials", type=int, default=6)
parser.add_argument("--out", type=Path, default=Path("placement.json"))
args = parser.parse_args()

import torch  # noqa: E402

from sqcompile.kernels.export import load_export  # noqa: E402

tvm, manifest, lib = load_export(args.folder, torch)
rows = []
for i in map(int, args.configs.split(",")):
    cfg = manifest["configs"][i]
    for trial in range(args.trials):
        spacer = torch.empty(int((trial * 37.3 + 1) * 2**20), dtype=torch.uint8, device="cuda")
        order = cfg["candidates"] if trial % 2 == 0 else cfg["candidates"][::-1]
        res = asdict(measure_config(torch, tvm, lib, {**cfg, "candidates": order}, seed=i))
        for c in res["candidates"]:
            rows.append({"config": i, "n": cfg["n"], "k": cfg["k"], "sparse": cfg["sparse"], "trial": trial,
                         "reversed": trial % 2 == 1, "knobs": c["knobs"], "us": c["us"], "rel_err": c["rel_err"]})
        print(cfg["n"], cfg["k"], cfg["sparse"], trial, [(c["knobs"].get("rows_inner"), c["knobs"].get("steps"),
                                                          c["knobs"].get("reg_words"), round(c["us"], 2))
                                                         for c in res["candidates"]], flush=True)
        del spacer
args.out.write_text(json.dumps({"device": torch.cuda.get_device_name(0), "rows": rows}, indent=1))
