"""Dense-and-sparse decomposition: which weights of a matrix stay exact in the sparse part.

The paper keeps two kinds of weights exact: the most sensitive ones (largest Fisher information) and the
outliers beyond a symmetric range threshold ``T = max(|Q1 - r IQR|, |Q3 + r IQR|)``, with ``r`` chosen so the
matrix hits the target share. ``T`` grows monotonically with ``r`` and every ``T`` above the quartiles is
reached by some ``r``, so hitting a share exactly is the same as keeping the largest magnitudes; this module
selects them that way (``topk``) and reports the ``T`` and ``r`` that correspond.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class SparseSelection:
    mask: torch.Tensor  # bool [N, K]: True where the weight goes to the sparse part
    n_sensitive: int
    n_outliers: int
    threshold: float  # T: outliers are the remaining weights with |w| >= T (inf when none)
    range_factor: float  # r such that T = max(|Q1 - r IQR|, |Q3 + r IQR|) (nan when none)


def share_count(numel: int, percent: float) -> int:
    return int(round(numel * percent / 100.0))


def select_sparse(weight: torch.Tensor, fisher: torch.Tensor | None, sparsity: float,
                  sensitive: float) -> SparseSelection:
    """Choose exactly ``sparsity`` percent of ``weight`` [N, K]: the top ``sensitive`` percent by Fisher
    information, then the largest remaining magnitudes. Without Fisher, all of it goes to outliers."""
    if not 0 <= sensitive <= sparsity < 100:
        raise ValueError(f"need 0 <= sensitive ({sensitive}) <= sparsity ({sparsity}) < 100 (percent)")
    flat = weight.detach().reshape(-1).float()
    total = share_count(flat.numel(), sparsity)
    n_sens = share_count(flat.numel(), sensitive) if fisher is not None else 0
    n_sens = min(n_sens, total)
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    if n_sens:
        mask[torch.topk(fisher.reshape(-1).float(), n_sens, sorted=False).indices] = True
    n_out = total - n_sens
    threshold, r = float("inf"), float("nan")
    if n_out:
        mag = flat.abs().masked_fill(mask, -1.0)
        top = torch.topk(mag, n_out, sorted=False)
        mask[top.indices] = True
        threshold = float(top.values.min())
        r = _range_factor(flat, threshold)
    return SparseSelection(mask.reshape(weight.shape), n_sens, n_out, threshold, r)


def _range_factor(flat: torch.Tensor, threshold: float) -> float:
    """The ``r`` of the paper's range threshold that gives ``threshold``."""
    n = flat.numel()
    ranks = [max(1, round(0.25 * n)) - 1, max(1, round(0.75 * n)) - 1]
    q1, q3 = (float(v) for v in np.partition(flat.cpu().numpy(), ranks)[ranks])  # one selection pass
    iqr = q3 - q1
    if iqr <= 0:
        return float("nan")
    # T(r) = max(|q1 - r iqr|, |q3 + r iqr|), both branches increasing: T is reached by the first branch
    return min((threshold + q1) / iqr, (threshold - q3) / iqr)
