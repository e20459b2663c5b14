"""Merge the linears that read the same input: q/k/v into ``qkv_proj``, gate/up into ``gate_up_proj``.

Decoding is one GEMV per linear; three launches reading 4096-wide inputs become one over 12288 rows (and
gate/up one over 22016), which fills the GPU better and halves the launches per layer. A quantized weight
is a stack of independent rows (codes, a LUT and CSR entries per row), so merging is concatenation along
the output dimension and the result computes exactly what the separate linears compute.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..quant.format import CSR, QuantizedWeight
from .synthetic import is_placeholder, placeholder

# (submodule of a decoder layer, the linears to merge in output order, the merged linear's name)
GROUPS = (("self_attn", ("q_proj", "k_proj", "v_proj"), "qkv_proj"),
          ("mlp", ("gate_proj", "up_proj"), "gate_up_proj"))


def _stack(parts: list[np.ndarray]) -> np.ndarray:
    """Concatenate along axis 0; zero-stride placeholders stay placeholders (no memory)."""
    if all(is_placeholder(p) or p.size == 0 for p in parts):
        return np.broadcast_to(np.zeros((), parts[0].dtype), (sum(p.shape[0] for p in parts), *parts[0].shape[1:]))
    return np.concatenate(parts)


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


def _merged_linear(linears: list[nn.Linear]) -> nn.Linear:
    weights = [m.weight for m in linears]
    out = sum(w.shape[0] for w in weights)
    has_bias = any(m.bias is not None for m in linears)
    merged = nn.Linear(weights[0].shape[1], out, bias=has_bias, device="meta")
    if all(is_placeholder(w) for w in weights):
        weight = placeholder((out, weights[0].shape[1]), weights[0].dtype)
    else:
        weight = torch.cat([w.detach() for w in weights])
    merged.weight = nn.Parameter(weight, requires_grad=False)
    if has_bias:
        merged.bias = nn.Parameter(torch.cat([m.bias.detach() if m.bias is not None else
                                              torch.zeros(m.out_features, dtype=m.weight.dtype)
                                              for m in linears]), requires_grad=False)
    return merged


def fuse_projections(model: nn.Module, quantized: dict[str, QuantizedWeight]) -> dict[str, QuantizedWeight]:
    """Merge each layer's groups in ``model`` (in place); returns ``quantized`` with merged entries.

    A group is merged only when its members are all float or all quantized with the same bits.
    """
    quantized = dict(quantized)
    for i, layer in enumerate(model.model.layers):
        for parent_name, names, merged_name in GROUPS:
            parent = getattr(layer, parent_name, None)
            linears = [getattr(parent, n, None) for n in names]
            if parent is None or not all(isinstance(m, nn.Linear) for m in linears):
                continue
            keys = [f"model.layers.{i}.{parent_name}.{n}" for n in names]
            found = [k in quantized for k in keys]
            if any(found) and not all(found) or all(found) and len({quantized[k].bits for k in keys}) > 1:
                continue
            if all(found):
                quantized[f"model.layers.{i}.{parent_name}.{merged_name}"] = concat_rows([quantized.pop(k) for k in keys])
            setattr(parent, merged_name, _merged_linear(linears))
            for n in names:
                delattr(parent, n)
    return quantized
