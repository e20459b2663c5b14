"""Weighted 1-D k-means per output row, batched over all rows of a matrix.

In one dimension the clusters of a Lloyd step are contiguous runs of the sorted values, cut at the midpoints
between neighbouring centroids. Sorting each row once and keeping prefix sums of ``w`` and ``w * x`` turns a
Lloyd step into ``k - 1`` binary searches plus ``k`` differences of prefix sums per row: ``O(k log n)``
instead of the ``O(k n)`` distance matrix of a general k-means. All rows advance together as tensors.

On the CPU the per-row work runs in a small C kernel (``kmeans1d.c``, compiled once with the system C
compiler into the cache folder): batched tensor ops pay a sweep over all rows for every tiny step, which
dominates on a few shared cores. The batched torch version runs on GPUs and wherever no C compiler exists;
both do the same algorithm with their own random streams, so each is deterministic for a seed.

``optimal_kmeans_1d`` is the globally optimal solution of the same objective (dynamic programming over the
sorted values with the divide-and-conquer speed-up, C kernel), the quantizer's default: its lower weighted SSE
gives lower perplexity (benchmarks/quality/results.md). ``exact_kmeans_1d`` is the plain O(k n^2) DP in
numpy, the reference the tests check both against.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import math
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)


@dataclass
class KMeansResult:
    centroids: torch.Tensor  # float64 [N, k], ascending per row
    sse: torch.Tensor  # float64 [N]: sum of w * (x - nearest centroid)**2 per row
    iterations: int


def weighted_kmeans_1d(x: torch.Tensor, w: torch.Tensor, k: int, iters: int = 50, n_init: int = 3,
                       seed: int = 0, rows_per_chunk: int = 2048, backend: str = "auto") -> KMeansResult:
    """Weighted Lloyd k-means of each row of ``x`` [N, K] with sample weights ``w`` [N, K] >= 0.

    Each row is clustered from ``n_init`` greedy k-means++ seedings (as scikit-learn seeds; random draws
    come from ``seed`` alone, never from the device or thread count) and keeps its best result:
    with fat-tailed Fisher weights one seeding often lands in a poor local optimum, and the restarts cost
    little next to the sort. Empty clusters keep their centroid. Entries of weight zero neither seed nor
    pull a centroid (the quantizer uses that to exclude the sparse part); a row whose weights are all zero
    is clustered with uniform weights. Rows go in chunks of ``rows_per_chunk`` to bound memory.
    ``backend``: "c", "torch" or "auto" (C for CPU tensors when the kernel builds, torch otherwise).
    """
    _check_shapes(x, w, k)
    if n_init < 1:
        raise ValueError(f"n_init must be positive, got {n_init}")
    lib = None
    if backend in ("auto", "c") and x.device.type == "cpu":
        lib = _c_library()
        if lib is None and backend == "c":
            raise RuntimeError("the C k-means kernel could not be built (see the log)")
    elif backend not in ("auto", "torch", "c"):
        raise ValueError(f"unknown k-means backend {backend!r}")
    gen = torch.Generator().manual_seed(seed)
    parts = [_kmeans_chunk(x[i:i + rows_per_chunk], w[i:i + rows_per_chunk], k, iters, n_init, gen, lib,
                           seed * 1_000_003 + i)
             for i in range(0, x.shape[0], rows_per_chunk)]
    return KMeansResult(torch.cat([p.centroids for p in parts]), torch.cat([p.sse for p in parts]),
                        max((p.iterations for p in parts), default=0))


def optimal_kmeans_1d(x: torch.Tensor, w: torch.Tensor, k: int, rows_per_chunk: int = 2048) -> KMeansResult:
    """The globally optimal weighted k-means of each row of ``x`` [N, K] (weights ``w`` >= 0), on the CPU.

    Dynamic programming over the sorted values with the divide-and-conquer speed-up (``O(k K log K)`` per
    row, C kernel): the same objective Lloyd descends, without its local optima. Same conventions as
    :func:`weighted_kmeans_1d` for zero weights; ``iterations`` is 0.
    """
    _check_shapes(x, w, k)
    lib = _c_library()
    if lib is None:
        raise RuntimeError("the optimal k-means needs the C kernel, which could not be built (see the log); "
                           "install a C compiler or use --kmeans lloyd")
    x, w = x.cpu(), w.cpu()
    parts = []
    for i in range(0, x.shape[0], rows_per_chunk):
        xs, prefix = _sorted_prefix(x[i:i + rows_per_chunk], w[i:i + rows_per_chunk])
        rows, n = xs.shape
        centroids = torch.empty(rows, k, dtype=torch.float64)
        sse = torch.empty(rows, dtype=torch.float64)
        arrays = [t.contiguous() for t in (xs, *prefix)]
        rc = lib.kmeans1d_optimal(*(t.data_ptr() for t in arrays), rows, n, k, torch.get_num_threads(),
                                  centroids.data_ptr(), sse.data_ptr())
        if rc != 0:
            raise (MemoryError if rc == -2 else ValueError)(f"C optimal k-means failed for k={k}, n={n}")
        parts.append(KMeansResult(centroids.sort(dim=1).values, sse, 0))
    return KMeansResult(torch.cat([p.centroids for p in parts]), torch.cat([p.sse for p in parts]), 0)


def _check_shapes(x: torch.Tensor, w: torch.Tensor, k: int) -> None:
    if x.shape != w.shape or x.dim() != 2:
        raise ValueError(f"x and w must be 2-D of the same shape, got {tuple(x.shape)} and {tuple(w.shape)}")
    if k < 1:
        raise ValueError(f"k must be positive, got {k}")


def _sorted_prefix(x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Rows sorted ascending (float64) and the prefix sums of w, w x, w x^2 with a leading zero; a row
    whose weights are all zero gets uniform weights."""
    if not bool(torch.all(w >= 0)):  # False for NaN too
        raise ValueError("k-means weights must be finite and non-negative")
    # sorting in the input precision is exact and moves half the bytes of a float64 sort
    xs, order = torch.sort(x, dim=1)
    xs, ws = xs.double(), w.gather(1, order).double()
    if not bool(torch.all(torch.isfinite(ws.sum(1)))):
        raise ValueError("k-means weights must be finite and non-negative")
    ws = torch.where(ws.sum(1, keepdim=True) > 0, ws, torch.ones_like(ws))
    zero = torch.zeros(xs.shape[0], 1, dtype=torch.float64, device=xs.device)
    wx = ws * xs
    return xs, [torch.cat([zero, t.cumsum(1)], 1) for t in (ws, wx, wx * xs)]


def _kmeans_chunk(x: torch.Tensor, w: torch.Tensor, k: int, iters: int, n_init: int,
                  gen: torch.Generator, lib, c_seed: int) -> KMeansResult:
    xs, prefix = _sorted_prefix(x, w)
    if lib is not None:
        return _kmeans_c(lib, xs, prefix, k, iters, n_init, c_seed)
    best: KMeansResult | None = None
    for _ in range(n_init):
        run = _lloyd(xs, prefix, _kmeanspp(xs, prefix, k, gen), iters)
        if best is None:
            best = run
        else:
            better = (run.sse < best.sse)[:, None]
            best = KMeansResult(torch.where(better, run.centroids, best.centroids),
                                torch.minimum(run.sse, best.sse), max(run.iterations, best.iterations))
    return best


def _segments(xs: torch.Tensor, prefix: list[torch.Tensor], c: torch.Tensor):
    """For ascending centroid sets ``c`` [N, M, k] over sorted rows ``xs`` [N, n]: the cluster runs
    ``cuts`` [N, M, k+1] and per cluster the sums of w, w x, w x^2 (each [N, M, k])."""
    n_rows, m, k = c.shape
    mids = ((c[..., :-1] + c[..., 1:]) / 2).reshape(n_rows, -1)
    inner = torch.searchsorted(xs, mids.contiguous()).reshape(n_rows, m, k - 1)
    ends = torch.tensor([0, xs.shape[1]], device=xs.device).expand(n_rows, m, 2)
    cuts = torch.cat([ends[..., :1], inner, ends[..., 1:]], -1)
    flat = cuts.reshape(n_rows, -1)
    sums = []
    for p in prefix:
        at = p.gather(1, flat).reshape(n_rows, m, k + 1)
        sums.append(at[..., 1:] - at[..., :-1])
    return cuts, sums


def _cost(c: torch.Tensor, sums: list[torch.Tensor]) -> torch.Tensor:
    """Per-cluster ``sum w (x - c)^2`` from the cluster sums."""
    sw, swx, swxx = sums
    return (swxx - 2 * c * swx + c * c * sw).clamp(min=0)


def _kmeanspp(xs: torch.Tensor, prefix: list[torch.Tensor], k: int, gen: torch.Generator) -> torch.Tensor:
    """Greedy weighted k-means++ seeds [N, k], as scikit-learn seeds: each step draws ``2 + log k``
    candidates with probability proportional to ``w * D^2`` and keeps the one that lowers the potential
    most. Everything comes from the prefix sums: a draw picks a cluster by its cost, then a point inside it
    by binary search on the cluster's cumulative cost, so a step costs O(k log n) per row, not O(n)."""
    n_rows, n = xs.shape
    trials = 2 + int(math.log(k))
    rows = torch.arange(n_rows, device=xs.device)[:, None]
    cw = prefix[0]

    def uniform(t: int) -> torch.Tensor:
        return torch.rand(n_rows, t, generator=gen, dtype=torch.float64).to(xs.device)

    first = torch.searchsorted(cw[:, 1:].contiguous(), (uniform(1) * cw[:, -1:]).contiguous(), right=True)
    seeds = xs.gather(1, first.clamp_(max=n - 1))  # [N, j], ascending
    for _ in range(1, k):
        cuts, sums = _segments(xs, prefix, seeds[:, None, :])
        cost = _cost(seeds[:, None, :], sums)[:, 0]  # [N, j]
        cum = cost.cumsum(1)
        u = uniform(trials) * cum[:, -1:]
        seg = torch.searchsorted(cum, u.contiguous(), right=True).clamp_(max=seeds.shape[1] - 1)
        rest = u - (cum - cost).gather(1, seg)
        start, stop, centre = cuts[:, 0].gather(1, seg), cuts[:, 0].gather(1, seg + 1), seeds.gather(1, seg)
        base = [p.gather(1, start) for p in prefix]
        # smallest i in (start, stop] whose cost over xs[start:i] exceeds `rest`; the draw is xs[i - 1]
        lo, hi = start + 1, stop.clamp(min=start + 1)
        for _ in range(max(1, math.ceil(math.log2(n + 1)))):
            mid = (lo + hi) // 2
            run = [p.gather(1, mid) - b for p, b in zip(prefix, base)]
            over = (run[2] - 2 * centre * run[1] + centre * centre * run[0]) > rest
            hi = torch.where(over, mid, hi)
            lo = torch.where(over, lo, mid + 1)
        cand = xs.gather(1, (hi - 1).clamp_(0, n - 1))  # [N, T]
        sets = torch.cat([seeds[:, None, :].expand(-1, trials, -1), cand[..., None]], -1).sort(-1).values
        _, cand_sums = _segments(xs, prefix, sets)
        pick = _cost(sets, cand_sums).sum(-1).argmin(1, keepdim=True)  # [N, 1]
        seeds = sets[rows, pick][:, 0]
    return seeds


def _lloyd(xs: torch.Tensor, prefix: list[torch.Tensor], c: torch.Tensor, iters: int) -> KMeansResult:
    """Lloyd steps until no centroid moves (or ``iters``). A row whose centroids did not move is at a fixed
    point for good; once half the working rows are there, they leave the working set (one compaction
    copies the arrays, so it waits until it halves the work)."""
    done = c.clone()
    rows = torch.arange(xs.shape[0], device=xs.device)  # working row -> row of xs
    work_xs, work_prefix = xs, prefix
    it = 0
    for it in range(1, iters + 1):
        _, (sw, swx, _) = _segments(work_xs, work_prefix, c[:, None, :])
        new = torch.where(sw[:, 0] > 0, swx[:, 0] / sw[:, 0].clamp(min=1e-300), c).sort(dim=1).values
        moved = (new != c).any(1)
        c = new
        n_moved = int(moved.sum())
        if n_moved == 0:
            break
        if 2 * n_moved <= rows.numel():
            done[rows[~moved]] = c[~moved]
            keep = moved.nonzero()[:, 0]
            rows, c = rows[keep], c[keep]
            work_xs, work_prefix = xs[rows], [p[rows] for p in prefix]
    done[rows] = c
    _, sums = _segments(xs, prefix, done[:, None, :])
    return KMeansResult(done, _cost(done[:, None, :], sums)[:, 0].sum(1), it)


def _kmeans_c(lib, xs: torch.Tensor, prefix: list[torch.Tensor], k: int, iters: int, n_init: int,
              seed: int) -> KMeansResult:
    rows, n = xs.shape
    centroids = torch.empty(rows, k, dtype=torch.float64)
    sse = torch.empty(rows, dtype=torch.float64)
    its = torch.empty(rows, dtype=torch.int32)
    arrays = [t.contiguous() for t in (xs, *prefix)]
    rc = lib.kmeans1d(*(t.data_ptr() for t in arrays), rows, n, k, iters, n_init, seed % 2 ** 64,
                      torch.get_num_threads(), centroids.data_ptr(), sse.data_ptr(), its.data_ptr())
    if rc != 0:
        raise ValueError(f"C k-means rejected k={k}, n={n}")
    return KMeansResult(centroids, sse, int(its.max()) if rows else 0)


_C_SOURCE = Path(__file__).with_name("kmeans1d.c")
_c_lib: list = []  # [library or None] once tried


def _c_library():
    """The compiled C kernel (built once per source version into the cache folder), None if impossible."""
    if _c_lib:
        return _c_lib[0]
    lib = None
    try:
        from ..models import cache_dir

        source = _C_SOURCE.read_bytes()
        target = cache_dir() / "kernels" / f"kmeans1d-{hashlib.sha256(source).hexdigest()[:16]}.so"
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".so")
            os.close(fd)
            cc = os.environ.get("CC", "cc")
            cmd = [cc, "-O3", "-fPIC", "-shared", "-fopenmp", str(_C_SOURCE), "-o", tmp, "-lm"]
            try:
                subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)
                os.replace(tmp, target)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        lib = ctypes.CDLL(str(target))
        p, i64 = ctypes.c_void_p, ctypes.c_int64
        lib.kmeans1d.argtypes = [p, p, p, p, i64, i64, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                 ctypes.c_uint64, ctypes.c_int, p, p, p]
        lib.kmeans1d.restype = ctypes.c_int
        lib.kmeans1d_optimal.argtypes = [p, p, p, p, i64, i64, ctypes.c_int, ctypes.c_int, p, p]
        lib.kmeans1d_optimal.restype = ctypes.c_int
    except (OSError, subprocess.SubprocessError) as e:
        detail = getattr(e, "stderr", "") or e
        log.warning("C k-means kernel unavailable, using the torch version: %s", detail)
        lib = None
    _c_lib.append(lib)
    return lib


def assign_nearest(x: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """Index of the nearest entry of each row's ascending ``lut`` [N, k] for every entry of ``x`` [N, K]."""
    lut = lut.to(torch.float64)
    mids = ((lut[:, :-1] + lut[:, 1:]) / 2).contiguous()
    return torch.searchsorted(mids, x.to(torch.float64).contiguous())


def weighted_sse(x: torch.Tensor, w: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Per-row ``sum w * (x - nearest centroid)**2`` (direct evaluation, for checks)."""
    c = centroids.to(torch.float64).sort(dim=1).values
    q = c.gather(1, assign_nearest(x, c))
    return (w.double() * (x.double() - q) ** 2).sum(1)


def exact_kmeans_1d(x: np.ndarray, w: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    """Optimal weighted 1-D k-means of one row by dynamic programming, ``O(k n^2)``: (centroids, SSE)."""
    order = np.argsort(x, kind="stable")
    xs, ws = np.asarray(x, np.float64)[order], np.asarray(w, np.float64)[order]
    n = xs.size
    cw = np.concatenate([[0.0], np.cumsum(ws)])
    cwx = np.concatenate([[0.0], np.cumsum(ws * xs)])
    cwxx = np.concatenate([[0.0], np.cumsum(ws * xs * xs)])

    i = np.arange(n + 1)
    lo, hi = np.meshgrid(i, i, indexing="ij")  # cost of the run xs[lo:hi]
    sw, swx = cw[hi] - cw[lo], cwx[hi] - cwx[lo]
    with np.errstate(divide="ignore", invalid="ignore"):
        cost = np.where(sw > 0, (cwxx[hi] - cwxx[lo]) - swx * swx / np.where(sw > 0, sw, 1), 0.0)
    cost = np.where(hi >= lo, np.maximum(cost, 0), np.inf)

    k = min(k, n)
    best = cost[0].copy()  # best[j]: optimum for xs[:j] with one cluster
    back = np.zeros((k, n + 1), np.int64)
    for m in range(1, k):
        total = best[:, None] + cost  # [split, end]
        back[m] = total.argmin(0)
        best = total[back[m], i]
    centroids, end = [], n
    for m in range(k - 1, -1, -1):
        start = back[m, end] if m else 0
        s = cw[end] - cw[start]
        centroids.append((cwx[end] - cwx[start]) / s if s > 0 else (xs[start] if start < n else xs[-1]))
        end = start
    return np.sort(np.array(centroids)), float(best[n])
