"""Prefill tok/s of two artifacts at several prompt lengths, alternating, on one GPU host (runtime bundle).

    python3 benchmarks/e2e/prefill_lengths.py BEFORE/sq-3bit AFTER/sq-3bit --lengths 96,128,160,192,512 --out pl.json

``ab.py`` times one 512-token prompt; the prefill GEMM picks its kernel by the prompt's rows (``gemm_mma.SHORT_ROWS``,
then ``knobs.GEMM_ROW_TIERS``), so a change of those knobs or bounds shows only at other lengths. Both
artifacts stay loaded; per length and round each is timed in turn, best of five prefills after a warm-up (up to the
first token, as a new request). Synthetic weights are generated first where missing, with the same seed on both
sides.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def prefill_tok_s(engine, prompt: list[int], calls: int = 6) -> float:
    seconds = []
    for _ in range(calls):  # the first is a warm-up
        engine.reset()
        list(engine.generate_ids(prompt, 1, stop_token_ids=set()))
        seconds.append(engine.last_stats.prefill_seconds)
    return len(prompt) / min(seconds[1:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--lengths", default="96,128,160,192,512", help="prompt tokens, comma-separated")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    import numpy as np

    from sqcompile.runtime import Engine
    from sqcompile.runtime.loader import import_tvm, load_cuda_runtime
    sides = (args.before, args.after)
    for side in sides:
        if not (side / "weights.safetensors").is_file():
            subprocess.run([sys.executable, "-m", "sqcompile.runtime.synthesize", str(side)], check=True,
                           capture_output=True)
    load_cuda_runtime(import_tvm())
    lengths = [int(t) for t in args.lengths.split(",")]
    engines = [Engine(side, max_len=max(lengths) + 1) for side in sides]
    vocab = int(engines[0].manifest.model["vocab_size"])
    rng = np.random.default_rng(0)
    out = {"before": str(args.before), "after": str(args.after), "tok_s": {}}
    for n in lengths:
        prompt = rng.integers(3, vocab, n).tolist()
        rows = out["tok_s"][str(n)] = {"before": [], "after": []}
        for _ in range(args.rounds):
            for name, engine in zip(("before", "after"), engines):
                rows[name].append(prefill_tok_s(engine, prompt))
        print(n, {name: [round(v) for v in values] for name, values in rows.items()}, flush=True)
    args.out.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
