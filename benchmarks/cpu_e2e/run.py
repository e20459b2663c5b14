"""CPU end to end: decode tokens/s of a compiled SmolLM2 artifact vs PyTorch eager fp32, at two context
lengths (the KV-cache cost curve), plus build times for llvm and cuda sm_90.

    python benchmarks/cpu_e2e/run.py --qdir QDIR [--contexts 64 1024] [--steps 16]

Writes results.json, results.md and decode.png next to this file.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def time_compiled(engine, contexts: list[int], steps: int) -> dict[int, float]:
    out = {}
    for ctx in contexts:
        engine.logits(np.arange(ctx, dtype=np.int64) % 1000 + 100)  # fill the cache up to ctx
        engine._run(np.array([5]), ctx)
        t = time.perf_counter()
        for i in range(steps):
            engine._run(np.array([5]), ctx + 1 + i)
        out[ctx] = steps / (time.perf_counter() - t)
    return out


def time_torch(model, contexts: list[int], steps: int) -> dict[int, float]:
    import torch

    out = {}
    with torch.no_grad():
        for ctx in contexts:
            ids = torch.arange(ctx)[None] % 1000 + 100
            past = model(ids, use_cache=True).past_key_values
            tok = torch.tensor([[5]])
            past = model(tok, past_key_values=past, use_cache=True).past_key_values
            t = time.perf_counter()
            for _ in range(steps):
                past = model(tok, past_key_values=past, use_cache=True).past_key_values
            out[ctx] = steps / (time.perf_counter() - t)
    return out


def main() -> None:
    from sqcompile import driver
    from sqcompile.quant import load_quantized
    from sqcompile.runtime import Engine

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--qdir", required=True, help="quantized SmolLM2 folder (sqcompile quantize --bits 4)")
    p.add_argument("--contexts", type=int, nargs="+", default=[64, 1024])
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--skip-cuda", action="store_true")
    args = p.parse_args()
    max_len = max(args.contexts) + args.steps + 8
    results = {"qdir": args.qdir, "steps": args.steps, "build_seconds": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for target, arch in [("llvm", None)] + ([] if args.skip_cuda else [("cuda", "sm_90")]):
            t = time.perf_counter()
            r = driver.build(args.qdir, Path(tmp) / target, target=target, arch=arch, max_len=max_len)
            results["build_seconds"][f"{target}{'-' + arch if arch else ''}"] = {
                "total": time.perf_counter() - t, **r.seconds}
        engine = Engine(Path(tmp) / "llvm")
        results["compiled_tok_s"] = time_compiled(engine, args.contexts, args.steps)
    model = load_quantized(args.qdir, tokenizer=False).model  # fp32 eager, dequantized weights
    results["torch_eager_fp32_tok_s"] = time_torch(model, args.contexts, args.steps)
    (HERE / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    lines = ["| context | compiled 4-bit (tok/s) | PyTorch eager fp32 (tok/s) |", "| --- | --- | --- |"]
    for ctx in args.contexts:
        lines.append(f"| {ctx} | {results['compiled_tok_s'][ctx]:.1f} | {results['torch_eager_fp32_tok_s'][ctx]:.1f} |")
    lines += ["", "| build | seconds |", "| --- | --- |"]
    lines += [f"| {k} | {v['total']:.1f} |" for k, v in results["build_seconds"].items()]
    table = "\n".join(lines)
    (HERE / "results.md").write_text(table + "\n")
    print(table)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for key, label in (("compiled_tok_s", "compiled (TVM llvm)"), ("torch_eager_fp32_tok_s", "PyTorch eager fp32")):
        ax.plot(args.contexts, [results[key][c] for c in args.contexts], marker="o", label=label)
    ax.set_xlabel("context length"), ax.set_ylabel("decode tokens/s"), ax.set_xscale("log"), ax.legend()
    fig.tight_layout()
    fig.savefig(HERE / "decode.png", dpi=120)


if __name__ == "__main__":
    main()
