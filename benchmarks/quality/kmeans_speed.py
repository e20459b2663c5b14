"""Weighted per-row k-means on a whole SmolLM2 matrix: sqcompile against scikit-learn (one run each).

scikit-learn runs as the paper's reference code does: ``KMeans(n_clusters=2**b, n_init="auto",
max_iter=50).fit(row, sample_weight=fisher_row)`` for every row. Weights are the Fisher information of the
matrix from a few calibration windows (or ``--fisher-cache`` from run.py). The total weighted SSE of both
is compared, with the exact 1-D optimum on a sample of rows.

    nice python benchmarks/quality/kmeans_speed.py [--matrix model.layers.0.mlp.gate_proj] [--bits 3]
Writes kmeans_speed.json and kmeans_speed.md beside this file.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from sqcompile import data, models
from sqcompile.quant.fisher import fisher_diagonal
from sqcompile.quant.kmeans import exact_kmeans_1d, optimal_kmeans_1d, weighted_kmeans_1d, weighted_sse

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--matrix", default="model.layers.0.mlp.gate_proj")
    ap.add_argument("--bits", type=int, nargs="*", default=[3, 4])
    ap.add_argument("--fisher-cache", type=Path, default=None)
    ap.add_argument("--exact-rows", type=int, default=32, help="rows checked against the exact optimum")
    ap.add_argument("--kmeans", choices=("optimal", "lloyd"), default="optimal",
                    help="sqcompile's solver: the exact DP (the quantizer's default) or 50 Lloyd steps")
    args = ap.parse_args()

    model, tokenizer, _ = models.load(None)
    module = model.get_submodule(args.matrix)
    if args.fisher_cache and args.fisher_cache.is_file():
        fisher = torch.load(args.fisher_cache, weights_only=True)[args.matrix]
    else:
        tokens = data.tokenize(tokenizer, data.read_text(data.default_calibration()))
        windows = data.calibration_windows(tokens, 4, 512, seed=0)
        fisher = fisher_diagonal(model, {args.matrix: module}, windows, "cpu")[args.matrix]
    x = module.weight.detach().double()
    w = fisher.double()
    n, k = x.shape
    rows = []
    for bits in args.bits:
        t = time.perf_counter()
        ours = (optimal_kmeans_1d(x, w, 2 ** bits) if args.kmeans == "optimal"
                else weighted_kmeans_1d(x, w, 2 ** bits, iters=50, seed=0))
        ours_s = time.perf_counter() - t
        sk_centroids, sk_s = sklearn_rows(x.numpy(), w.numpy(), 2 ** bits)
        sk_sse = weighted_sse(x, w, torch.from_numpy(sk_centroids)).sum().item()
        ours_sse = weighted_sse(x, w, ours.centroids).sum().item()
        sample = np.linspace(0, n - 1, args.exact_rows).astype(int)
        exact = sum(exact_kmeans_1d(x[i].numpy(), w[i].numpy(), 2 ** bits)[1] for i in sample)
        row = {"matrix": args.matrix, "shape": [n, k], "bits": bits, "kmeans": args.kmeans, "sqcompile_s": ours_s, "sklearn_s": sk_s,
               "speedup": sk_s / ours_s, "sqcompile_sse": ours_sse, "sklearn_sse": sk_sse,
               "sse_ratio": ours_sse / sk_sse,
               "exact_sample": {"rows": len(sample), "exact_sse": exact,
                                "sqcompile_sse": ours.sse[sample].sum().item(),
                                "sklearn_sse": weighted_sse(x[sample], w[sample],
                                                            torch.from_numpy(sk_centroids[sample])).sum().item()}}
        rows.append(row)
        print(json.dumps(row))
    md = [f"sqcompile k-means: {args.kmeans}", "", "| matrix | bits | sqcompile s | scikit-learn s | speed-up | SSE sqcompile / sklearn | "
          "sample: exact / sqcompile / sklearn SSE |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        e = r["exact_sample"]
        md.append(f"| {r['matrix']} {r['shape'][0]}x{r['shape'][1]} | {r['bits']} | {r['sqcompile_s']:.2f} | "
                  f"{r['sklearn_s']:.1f} | {r['speedup']:.0f}x | {r['sse_ratio']:.4f} | "
                  f"{e['exact_sse']:.4g} / {e['sqcompile_sse']:.4g} / {e['sklearn_sse']:.4g} |")
    text = "\n".join(md)
    print(text)
    (HERE / "kmeans_speed.md").write_text(text + "\n")
    (HERE / "kmeans_speed.json").write_text(json.dumps(rows, indent=2) + "\n")


def sklearn_rows(x: np.ndarray, w: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    from sklearn.cluster import KMeans

    out = np.empty((x.shape[0], k))
    t = time.perf_counter()
    for i in range(x.shape[0]):
        km = KMeans(n_clusters=k, n_init="auto", max_iter=50, random_state=0)
        km.fit(x[i, :, None], sample_weight=w[i])
        out[i] = np.sort(km.cluster_centers_[:, 0])
    return out, time.perf_counter() - t


if __name__ == "__main__":
    main()
