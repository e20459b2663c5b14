"""Round-to-nearest baselines: asymmetric min-max uniform quantization per output row or per group of K.

They exist to be compared against (``sqcompile eval --rtn BITS [--group 128]``), so they only simulate the
quantization (weights replaced by their dequantized values) and are not stored.
"""
from __future__ import annotations

import torch
from torch import nn

from .format import check_bits


def rtn_dequantized(weight: torch.Tensor, bits: int, group: int | None = None) -> torch.Tensor:
    """``weight`` [N, K] quantized to ``2**bits`` uniform levels between each row's (or group's) min and max,
    zero point rounded to an integer, and dequantized (float32)."""
    check_bits(bits)
    w = weight.detach().float()
    n, k = w.shape
    if group:
        if group < 1:
            raise ValueError(f"group size must be positive, got {group}")
        pad = -k % group  # a short last group is padded with its last value, which leaves min and max alone
        w = torch.cat([w, w[:, -1:].expand(n, pad)], 1).reshape(n, -1, group)
    else:
        w = w.reshape(n, 1, k)
    qmax = (1 << bits) - 1
    lo = w.amin(-1, keepdim=True)
    hi = w.amax(-1, keepdim=True)
    scale = ((hi - lo) / qmax).clamp(min=1e-12)
    zero = torch.round(-lo / scale)
    q = torch.clamp(torch.round(w / scale) + zero, 0, qmax)
    return ((q - zero) * scale).reshape(n, -1)[:, :k]


@torch.no_grad()
def apply_rtn(modules: dict[str, nn.Linear], bits: int, group: int | None = None) -> None:
    """Replace each module's weight by its RTN-dequantized version, in place."""
    for m in modules.values():
        m.weight.copy_(rtn_dequantized(m.weight, bits, group).to(m.weight.dtype))
