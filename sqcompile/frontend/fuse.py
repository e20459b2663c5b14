"""Merge the linears that read the same input: q/k/v into ``qkv_proj``, gate/up into ``gate_up_proj``.

Decoding is one GEMV per linear; three launches reading 4096-wide inputs become one over 12288 rows (and
gate/up one over 22016), which fills the GPU better and halves the launches per layer. A quantized weight
is a stack of independent rows (codes, a LUT and CSR entries per row), so merging stacks rows along the
output dimension and the result computes exactly what the separate linears compute.

q/k/v are concatenated. gate/up are *interleaved* (gate row i, then up row i): the decoder reads gate and up
as the even and odd outputs, and so a decode GEMV block that computes rows 2i and 2i + 1 holds both
operands of ``act(gate_i) * up_i`` and can write that product itself (``passes/fuse_silu_into_gemv.py``).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..quant.format import CSR, QuantizedWeight
from .synthetic import is_placeholder, placeholder

# (submodule of a decoder layer, the linears to merge, the merged linear's name, rows interleaved?)
GROUPS = (("self_attn", ("q_proj", "k_proj", "v_proj"), "qkv_proj", False),
          ("mlp", ("gate_proj", "up_proj"), "gate_up_proj", True))


def _stack(parts: list[np.ndarray]) -> np.ndarray:
    """Concatenate along axis 0; zero-stride placeholders stay placeholders (no memory)."""
    if all(is_placeholder(p) or p.size == 0 for p in parts):
        return np.broadcast_to(np.zeros((), parts[0].dtype), (sum(p.shape[0] for p in parts), *parts[0].shape[1:]))
    return np.concatenate(parts)


def _interleave(parts: list[np.ndarray]) -> np.ndarray:
    """Row i of every part, then row i + 1 of every part, ... (parts of one shape)."""
    if all(is_placeholder(p) for p in parts):
        return _stack(parts)
    return np.stack(parts, axis=1).reshape(-1, *parts[0].shape[1:])


def interleave_rows(parts: list[QuantizedWeight]) -> QuantizedWeight:
    """One quantized weight whose row ``len(parts) * i + j`` is row i of ``parts[j]`` (same shapes and bits)."""
    if len({(p.bits, p.out_features, p.in_features) for p in parts}) != 1:
        raise ValueError("only weights of the same shape and bits can be interleaved")
    if all(is_placeholder(p.sparse.rowptr) or p.sparse.nnz == 0 for p in parts):
        sparse = concat_rows(parts).sparse  # placeholders, or no sparse part at all: nothing to reorder
    else:
        n = parts[0].out_features
        rows = [np.repeat(np.arange(n) * len(parts) + j, np.diff(p.sparse.rowptr)) for j, p in enumerate(parts)]
        sparse = CSR.from_coo(n * len(parts), np.concatenate(rows), np.concatenate([p.sparse.col for p in parts]),
                              np.concatenate([p.sparse.val for p in parts]))
    p0 = parts[0]
    return QuantizedWeight(p0.bits, p0.out_features * len(parts), p0.in_features, _interleave([p.qweight for p in parts]),
                           _interleave([p.lut for p in parts]), sparse)


def concat_rows(parts: list[QuantizedWeight]) -> QuantizedWeight:
    """One quantized weight whose rows are those of ``parts`` in order (same bits and input width)."""
    bits, k = parts[0].bits, parts[0].in_features
    if any(p.bits != bits or p.in_features != k for p in parts):
        raise ValueError("only weights with the same bits and input width can be merged")
    n = sum(p.out_features for p in parts)
    if all(is_placeholder(p.sparse.rowptr) or p.sparse.nnz == 0 for p in parts):
        rowptr = np.broadcast_to(np.int32(0), (n + 1,))  # placeholders, or no sparse part at all
    else:
        offsets = np.cumsum([0] + [p.sparse.nnz for p in parts[:-1]])
        rowptr = np.concatenate([[0]] + [p.sparse.rowptr[1:] + o for p, o in zip(parts, offsets)]).astype(np.int32)
    sparse = CSR(rowptr, _stack([p.sparse.col for p in parts]), _stack([p.sparse.val for p in parts]))
    return QuantizedWeight(bits, n, k, _stack([p.qweight for p in parts]),
                           _stack([p.lut for p in parts]), sparse)


def _merged_linear(linears: list[nn.Linear], interleave: bool) -> nn.Linear:
    weights = [m.weight for m in linears]
    out = sum(w.shape[0] for w in weights)
    has_bias = any(m.bias is not None for m in linears)
    merged = nn.Linear(weights[0].shape[1], out, bias=has_bias, device="meta")

    def join(parts: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(parts, dim=1).flatten(0, 1) if interleave else torch.cat(parts)

    if all(is_placeholder(w) for w in weights):
        weight = placeholder((out, weights[0].shape[1]), weights[0].dtype)
    else:
        weight = join([w.detach() for w in weights])
    merged.weight = nn.Parameter(weight, requires_grad=False)
    if has_bias:
        merged.bias = nn.Parameter(join([m.bias.detach() if m.bias is not None else
                                         torch.zeros(m.out_features, dtype=m.weight.dtype)
                                         for m in linears]), requires_grad=False)
    return merged


def fuse_projections(model: nn.Module, quantized: dict[str, QuantizedWeight]) -> dict[str, QuantizedWeight]:
    """Merge each layer's groups in ``model`` (in place); returns ``quantized`` with merged entries.

    A group is merged only when its members are all float or all quantized with the same bits.
    """
    quantized = dict(quantized)
    for i, layer in enumerate(model.model.layers):
        for parent_name, names, merged_name, interleave in GROUPS:
            parent = getattr(layer, parent_name, None)
            linears = [getattr(parent, n, None) for n in names]
            if parent is None or not all(isinstance(m, nn.Linear) for m in linears):
                continue
            keys = [f"model.layers.{i}.{parent_name}.{n}" for n in names]
            found = [k in quantized for k in keys]
            if any(found) and not all(found) or all(found) and len({quantized[k].bits for k in keys}) > 1:
                continue
            if interleave and len({m.weight.shape for m in linears}) > 1:
                continue
            if all(found):
                merge = interleave_rows if interleave else concat_rows
                quantized[f"model.layers.{i}.{parent_name}.{merged_name}"] = merge([quantized.pop(k) for k in keys])
            setattr(parent, merged_name, _merged_linear(linears, interleave))
            for n in names:
                delattr(parent, n)
    return quantized
