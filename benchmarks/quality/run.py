"""Quality benchmark: perplexity of SmolLM2-135M under RTN and SqueezeLLM at 3 and 4 bits.

Protocol (issue 2): evaluation = the first 40 non-overlapping 1024-token windows of
shared/data/enwiki-sample.txt, no BOS; calibration = 32 random 512-token windows of the Austen novels
(seed 0); k-means: the exact optimum (default) or, with ``--kmeans lloyd``, k-means++ and 50 Lloyd steps.
The Fisher information is computed once and shared by the SQ rows. SQ rows evaluate the weights that
``QuantLinear`` computes with (``QuantizedWeight.dequantize()``).

    nice python benchmarks/quality/run.py            # ~20 min on 2 idle cores, ~5 min on 16
Writes results.json, results.md and results.png beside this file.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import torch

from sqcompile import data, models
from sqcompile.eval import perplexity, torch_logits_fn
from sqcompile.quant.fisher import fisher_diagonal
from sqcompile.quant.pipeline import peak_rss_mib
from sqcompile.quant.quantize import QuantizeOptions, average_bits, find_linears, quantize_weight
from sqcompile.quant.rtn import rtn_dequantized

HERE = Path(__file__).resolve().parent
# The reference numbers for an independent implementation of the paper on this protocol.
TARGETS = {"FP": 19.78, "RTN-3": 476.8, "RTN-3 g128": 92.3, "SQ-3 dense": 37.0, "SQ-3 +0.45%": 30.5,
           "RTN-4": 34.1, "RTN-4 g128": 26.2, "SQ-4 dense": 22.1, "SQ-4 +0.45%": 21.35,
           "SQ-3 without Fisher": 569.0}
# name -> (kind, bits, group or sparsity)
CONFIGS = {"FP": ("fp", 0, 0), "RTN-3": ("rtn", 3, 0), "RTN-3 g128": ("rtn", 3, 128),
           "SQ-3 dense": ("sq", 3, 0.0), "SQ-3 +0.45%": ("sq", 3, 0.45), "RTN-4": ("rtn", 4, 0),
           "RTN-4 g128": ("rtn", 4, 128), "SQ-4 dense": ("sq", 4, 0.0), "SQ-4 +0.45%": ("sq", 4, 0.45),
           "SQ-3 without Fisher": ("plain", 3, 0.0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=40)
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--calib-windows", type=int, default=32)
    ap.add_argument("--calib-length", type=int, default=512)
    ap.add_argument("--kmeans", choices=["lloyd", "optimal"], default="optimal",
                    help="k-means of the SQ rows: the exact optimum (default) or k-means++ and 50 Lloyd steps")
    ap.add_argument("--only", nargs="*",
                    help="rerun only these rows (names as in the table); the others are kept from results.json")
    ap.add_argument("--fisher-cache", type=Path, default=None, help="reuse/save the Fisher information here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    t = time.perf_counter()
    model, tokenizer, source = models.load(None)
    load_s = time.perf_counter() - t
    modules = find_linears(model)
    original = {n: m.weight.detach().clone() for n, m in modules.items()}
    eval_ids = data.tokenize(tokenizer, data.read_text(data.default_evaluation()))
    names = args.only or list(CONFIGS)
    fisher, fisher_s = None, 0.0
    if any(CONFIGS[n][0] == "sq" for n in names):
        fisher, fisher_s = compute_fisher(model, tokenizer, modules, args)

    kept = kept_rows(names) if args.only else []
    rows = []
    for name in names:
        kind, bits, extra = CONFIGS[name]
        t = time.perf_counter()
        avg_bits = 16.0
        with torch.no_grad():
            for n, m in modules.items():
                m.weight.copy_(original[n])
            if kind == "rtn":
                for m in modules.values():
                    m.weight.copy_(rtn_dequantized(m.weight, bits, extra or None))
                # codes + one fp16 scale and zero point per row or group
                avg_bits = bits + 32 / (extra or modules[next(iter(modules))].in_features)
            elif kind in ("sq", "plain"):
                opts = QuantizeOptions(bits=bits, sparsity=extra, sensitive=min(0.05, extra),
                                       use_fisher=kind == "sq", kmeans=args.kmeans, iters=50, progress=False)
                weights = {}
                for n, m in modules.items():
                    f = fisher[n] if kind == "sq" else None
                    weights[n], _ = quantize_weight(m.weight, f, opts)
                    m.weight.copy_(torch.from_numpy(weights[n].dequantize()))
                avg_bits = average_bits(weights)
        quant_s = time.perf_counter() - t
        res = perplexity(torch_logits_fn(model), eval_ids, args.ctx, args.windows)
        rows.append({"name": name, "perplexity": res.perplexity, "target": TARGETS[name],
                     "avg_bits": avg_bits, "quantize_s": quant_s, "eval_s": res.seconds,
                     "kmeans": args.kmeans if kind in ("sq", "plain") else None})
        logging.info("%s: ppl %.3f (target %.2f), %.2f bits, quantize %.1f s, eval %.1f s", name,
                     res.perplexity, TARGETS[name], avg_bits, quant_s, res.seconds)
        write(ordered(rows + kept), args, source.describe(), load_s, fisher_s)  # partial results survive
    print(table(ordered(rows + kept), args, load_s, fisher_s))


def kept_rows(rerun: list[str]) -> list[dict]:
    """Rows of the last results.json that this run does not redo (deterministic rows such as FP and RTN
    need not be re-evaluated when only the quantizer changed); marked ``kept``."""
    path = HERE / "results.json"
    if not path.is_file():
        return []
    old = json.loads(path.read_text())["rows"]
    return [{**r, "kept": True} for r in old if r["name"] not in rerun]


def ordered(rows: list[dict]) -> list[dict]:
    rank = {name: i for i, name in enumerate(CONFIGS)}
    return sorted(rows, key=lambda r: rank[r["name"]])


def compute_fisher(model, tokenizer, modules, args):
    if args.fisher_cache and args.fisher_cache.is_file():
        return torch.load(args.fisher_cache, weights_only=True), 0.0
    t = time.perf_counter()
    tokens = data.tokenize(tokenizer, data.read_text(data.default_calibration()))
    windows = data.calibration_windows(tokens, args.calib_windows, args.calib_length, seed=0)
    fisher = fisher_diagonal(model, modules, windows, "cpu")
    seconds = time.perf_counter() - t
    if args.fisher_cache:
        torch.save(fisher, args.fisher_cache)
    return fisher, seconds


def table(rows, args, load_s, fisher_s) -> str:
    lines = [f"SmolLM2-135M-Instruct, perplexity on the first {args.windows} x {args.ctx}-token windows of "
             f"enwiki-sample.txt (no BOS); Fisher from {args.calib_windows} x {args.calib_length} Austen tokens",
             "", "| config | perplexity | target | avg bits | k-means | quantize s | eval s |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        note = " (kept from the previous run)" if r.get("kept") else ""
        lines.append(f"| {r['name']}{note} | {r['perplexity']:.2f} | {r['target']:.2f} | {r['avg_bits']:.2f} | "
                     f"{r.get('kmeans') or ('lloyd' if r['name'].startswith('SQ') else '-')} | "
                     f"{r['quantize_s']:.1f} | {r['eval_s']:.1f} |")
    lines += ["", f"model load {load_s:.1f} s; Fisher (shared by the SQ rows) {fisher_s:.1f} s; "
              f"peak RSS {peak_rss_mib():.0f} MiB"]
    return "\n".join(lines)


def write(rows, args, source, load_s, fisher_s) -> None:
    meta = {"model": source, "eval": {"text": "enwiki-sample.txt", "windows": args.windows, "ctx": args.ctx,
                                      "bos": False},
            "calibration": {"text": "austen/*.txt", "windows": args.calib_windows, "length": args.calib_length,
                            "seed": 0},
            "kmeans": args.kmeans, "lloyd_iters": 50, "machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
                                         f"{torch.get_num_threads()} threads",
            "seconds": {"load": load_s, "fisher": fisher_s}, "peak_rss_mib": peak_rss_mib()}
    (HERE / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (HERE / "results.md").write_text(table(rows, args, load_s, fisher_s) + "\n")
    plot(rows)


def plot(rows) -> None:
    try:
        import matplotlib
    except ImportError:  # a bare GPU host: the JSON and markdown are written, redraw the plot elsewhere
        logging.warning("matplotlib missing: results.png not drawn")
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["perplexity"] for r in rows], 0.4, label="sqcompile")
    ax.bar([i + 0.2 for i in x], [r["target"] for r in rows], 0.4, label="target", alpha=0.6)
    ax.set_yscale("log")
    ax.set_xticks(list(x), [r["name"] for r in rows], rotation=30, ha="right")
    ax.set_ylabel("perplexity (log)")
    ax.set_title("SmolLM2-135M on enwiki-sample, 40 x 1024 tokens")
    ax.legend()
    fig.tight_layout()
    fig.savefig(HERE / "results.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
