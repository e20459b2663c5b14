"""SqueezeLLM quantization of a model: Fisher sensitivity, dense-and-sparse split, weighted k-means per row.

For each linear weight ``W`` [N, K]: the sparse part (top sensitive + largest outliers) is kept exact and
left out of the clustering (weight zero), each row is clustered into ``2**bits`` centroids weighted by the
Fisher information, the centroids are rounded to the fp16 LUT, every weight takes the code of its nearest
LUT entry, and kept weights take the entry nearest zero plus an fp16 correction in CSR.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from . import format as fmt
from .kmeans import assign_nearest, optimal_kmeans_1d, weighted_kmeans_1d
from .sparse import select_sparse

log = logging.getLogger(__name__)


KMEANS_METHODS = ("lloyd", "optimal")


@dataclass
class QuantizeOptions:
    bits: int = 3
    sparsity: float = 0.45  # percent of each matrix kept exact in the sparse part (0: dense only)
    sensitive: float = 0.05  # percent of it chosen by sensitivity, the rest by magnitude
    use_fisher: bool = True  # False: plain (unweighted) k-means and magnitude-only outliers
    calibration: str | None = None  # text file/folder or hf:dataset (default: the Austen novels)
    calib_windows: int = 8  # x 512 tokens: the paper found ~10 samples enough (benchmarks/quality/results.md)
    calib_length: int = 512
    seed: int = 0
    kmeans: str = "optimal"  # "optimal" (exact 1-D optimum, DP in C) or "lloyd" (k-means++ and Lloyd steps)
    iters: int = 50  # Lloyd iterations
    n_init: int = 3  # k-means++ seedings per row, best kept
    include_head: bool = False  # quantize the LM head too
    device: str | None = None  # "cpu", "cuda"; default: cuda when present
    progress: bool = True

    def validate(self) -> None:
        fmt.check_bits(self.bits)
        if not 0 <= self.sparsity < 100:
            raise ValueError(f"sparsity is a percentage in [0, 100), got {self.sparsity}")
        if not 0 <= self.sensitive <= self.sparsity:
            raise ValueError(f"sensitive ({self.sensitive}) must lie between 0 and sparsity ({self.sparsity})")
        if self.calib_windows < 1 or self.calib_length < 2:
            raise ValueError(f"bad calibration size {self.calib_windows} x {self.calib_length}")
        if self.kmeans not in KMEANS_METHODS:
            raise ValueError(f"kmeans must be one of {KMEANS_METHODS}, got {self.kmeans!r}")
        if self.iters < 1 or self.n_init < 1:
            raise ValueError("iters and n_init must be positive")


@dataclass
class QuantizeReport:
    """What a run did and cost; filled by :func:`quantize_model`."""

    seconds: dict[str, float] = field(default_factory=dict)  # stage -> wall time
    calibration_tokens: int = 0
    modules: dict[str, dict] = field(default_factory=dict)  # name -> in/out features, nnz, threshold


def find_linears(model: nn.Module, include_head: bool = False) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` projections to quantize, by HF module name; the LM head only if asked."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    found = {name: m for name, m in model.named_modules()
             if isinstance(m, nn.Linear) and (include_head or m is not head)}
    if not found:
        raise ValueError(f"{type(model).__name__} has no nn.Linear projections to quantize: unsupported architecture")
    return found


def check_finite(modules: dict[str, nn.Linear]) -> None:
    for name, m in modules.items():
        if not torch.all(torch.isfinite(m.weight)):
            raise ValueError(f"{name}.weight contains NaN or inf values")


def quantize_weight(weight: torch.Tensor, fisher: torch.Tensor | None, options: QuantizeOptions
                    ) -> tuple[fmt.QuantizedWeight, dict]:
    """Quantize one weight [N, K]; ``fisher`` None means unweighted. Returns the weight and its stats."""
    bits = options.bits
    w = weight.detach().float()
    n, k = w.shape
    sel = select_sparse(w, fisher, options.sparsity, options.sensitive)
    cluster_w = (fisher.float() if fisher is not None else torch.ones_like(w)).masked_fill(sel.mask, 0.0)
    if options.kmeans == "optimal":
        result = optimal_kmeans_1d(w, cluster_w, 1 << bits)
    else:
        result = weighted_kmeans_1d(w, cluster_w, 1 << bits, iters=options.iters, n_init=options.n_init,
                                    seed=options.seed)
    lut = result.centroids.to(w.device, torch.float16).sort(dim=1).values
    codes = assign_nearest(w, lut)
    rows, cols = sel.mask.nonzero(as_tuple=True)
    if rows.numel():
        zero_code = lut.float().abs().argmin(1)
        codes[rows, cols] = zero_code[rows]
        vals = (w[rows, cols] - lut[rows, zero_code[rows]].float()).to(torch.float16)
        sparse = fmt.CSR.from_coo(n, rows.cpu().numpy(), cols.cpu().numpy(), vals.cpu().numpy())
    else:
        sparse = fmt.CSR.empty(n)
    qw = fmt.QuantizedWeight(bits, n, k, fmt.pack_codes(codes.cpu().numpy().astype(np.uint8), bits),
                             lut.cpu().numpy(), sparse)
    stats = {"in_features": k, "out_features": n, "nnz": sparse.nnz, "sensitive": sel.n_sensitive,
             "outliers": sel.n_outliers, "threshold": sel.threshold, "range_factor": sel.range_factor,
             "weighted_sse": float(result.sse.sum())}
    return qw, stats


def quantize_model(model: nn.Module, tokenizer, options: QuantizeOptions,
                   report: QuantizeReport | None = None) -> dict[str, fmt.QuantizedWeight]:
    """Quantize every projection of ``model`` (weights untouched); fills ``report`` when given."""
    from .. import data

    options.validate()
    report = report if report is not None else QuantizeReport()
    modules = find_linears(model, options.include_head)
    check_finite(modules)

    fisher: dict[str, torch.Tensor | None] = dict.fromkeys(modules)
    if options.use_fisher:
        t = time.perf_counter()
        text = data.read_text(options.calibration or data.default_calibration())
        tokens = data.tokenize(tokenizer, text)
        windows = data.calibration_windows(tokens, options.calib_windows, options.calib_length, options.seed)
        report.calibration_tokens = int(windows.size)
        report.seconds["calibration data"] = time.perf_counter() - t
        t = time.perf_counter()
        from .fisher import fisher_diagonal
        fisher.update(fisher_diagonal(model, modules, windows, options.device, options.progress))
        report.seconds["fisher"] = time.perf_counter() - t

    t = time.perf_counter()
    device = torch.device(options.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    out: dict[str, fmt.QuantizedWeight] = {}
    for name, m in tqdm(modules.items(), desc="k-means", unit="matrix", disable=not options.progress):
        f = fisher[name]
        out[name], report.modules[name] = quantize_weight(m.weight.to(device),
                                                          None if f is None else f.to(device), options)
        fisher[name] = None  # free as we go
    report.seconds["k-means"] = time.perf_counter() - t
    return out


def average_bits(weights: dict[str, fmt.QuantizedWeight]) -> float:
    """Bits per quantized weight, counting codes (padding included), LUTs and the CSR part."""
    numel = sum(q.out_features * q.in_features for q in weights.values())
    return 8 * sum(q.nbytes for q in weights.values()) / max(numel, 1)
