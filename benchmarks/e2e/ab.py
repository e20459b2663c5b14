"""A/B of two artifact folders on one GPU host: the same systems measured alternately, in rounds.

    python3 benchmarks/e2e/ab.py BEFORE AFTER sq-3bit,sq-4bit --rounds 2 --out ab.json

BEFORE and AFTER each hold artifacts named like ``run.py build``'s (``sq-3bit`` ...), or any artifact folders of
one name on both sides (a real model's, with its weights; measured at the contexts its ``max_len`` holds). Synthetic
weights are generated here where missing (same seed: the same weights on both sides), so only the code differs. Each
round measures every system in both folders with ``run.py one`` (decode tok/s at context 128 and 2048, prefill,
decode-vs-prefill argmax); alternating within a round keeps drift between the two sides small, and the spread
between rounds shows what a difference must beat. Then the greedy tokens of both sides are compared (random
weights give near-flat logits, so fp16 rounding flips a near-tie early when the kernels change).

Build each side inside its own tree (``cd TREE && python -m sqcompile build ...``): ``-m`` puts the working
directory first on ``sys.path``, so run from another checkout with ``PYTHONPATH=TREE`` it builds that checkout's
code instead (both sides of one A/B were once the same code that way: ``../kernels/NOTES.md`` v20).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
GREEDY = """
import json, sys, numpy as np
from sqcompile.runtime import Engine
from sqcompile.runtime.loader import import_tvm, load_cuda_runtime
tvm = import_tvm(); load_cuda_runtime(tvm)
e = Engine(sys.argv[1], max_len=512)
ids = np.random.default_rng(1).integers(3, 32000, 100).tolist()
print(json.dumps(list(e.generate_ids(ids, 64, stop_token_ids=set()))))
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("systems", help="comma-separated artifact names, e.g. sq-3bit,sq-4bit")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("ab.json"))
    args = parser.parse_args()
    sides, systems = (args.before, args.after), args.systems.split(",")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    for system in systems:
        for side in sides:
            if not (side / system / "weights.safetensors").is_file():
                subprocess.run([sys.executable, "-m", "sqcompile.runtime.synthesize", str(side / system)],
                               check=True, capture_output=True)
    out: dict = {"rows": [], "greedy": {}}
    for r in range(args.rounds):
        for system in systems:
            for side in sides:
                p = subprocess.run([sys.executable, str(HERE / "run.py"), "one", system, str(side)],
                                   capture_output=True, text=True, env=env)
                row = {"round": r, "system": system, "side": str(side)}
                row.update(json.loads(p.stdout.strip().splitlines()[-1]) if p.returncode == 0
                           else {"error": p.stderr[-1500:]})
                out["rows"].append(row)
                print(json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()
                                  if "bytes" not in k}), flush=True)
    for system in systems:
        tokens = [json.loads(subprocess.run([sys.executable, "-c", GREEDY, str(side / system)], capture_output=True,
                                            text=True, check=True, env=env).stdout.strip().splitlines()[-1])
                  for side in sides]
        same = next((i for i, (a, b) in enumerate(zip(*tokens)) if a != b), len(tokens[0]))
        out["greedy"][system] = {"equal_prefix": same, "of": len(tokens[0])}
        print(f"{system}: greedy tokens equal for the first {same} of {len(tokens[0])}", flush=True)
    args.out.write_text(json.dumps(out, indent=1))
    return 1 if any("error" in row for row in out["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
