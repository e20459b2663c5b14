"""Shape-only models: compile a model from its config alone, with no weight in memory.

A Llama-2-7B in fp16 is 13.5 GB; the module that runs it depends only on shapes. Here every parameter is
a *placeholder*, a zero-stride view of one scalar (``torch.zeros(()).expand(shape)``): torch.export traces
it like any weight, and the importer keeps its Relax parameter without reading it. Quantized linears get
placeholder codes, LUTs and CSR arrays of the sizes the requested bits and sparsity give. The artifact then
lists its weights' shapes instead of holding them, and ``sqcompile.runtime.synthesize`` fills them with random
values on the machine that runs it (docs/artifact.md, "Synthetic weights").
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..quant.format import CSR, QuantizedWeight, check_bits, packed_words


def placeholder(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.zeros((), dtype=dtype).expand(shape)


def is_placeholder(t: torch.Tensor | np.ndarray) -> bool:
    """A zero-stride view of one scalar (torch tensor or numpy array): shape without memory."""
    size, strides = (t.size, t.strides) if isinstance(t, np.ndarray) else (t.numel(), t.stride())
    return size > 1 and all(s == 0 for s in strides)


def shape_only_model(config, dtype: torch.dtype = torch.float16) -> nn.Module:
    """The HF causal LM of ``config`` with placeholder parameters (ties kept) and real rotary buffers."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    swapped: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            if id(p) not in swapped:
                swapped[id(p)] = nn.Parameter(placeholder(tuple(p.shape), dtype), requires_grad=False)
            setattr(module, name, swapped[id(p)])
    inner = model.model
    inner.rotary_emb = type(inner.rotary_emb)(config=config)  # its buffers are computed, not loaded
    return model.eval()


def placeholder_quantized(model: nn.Module, bits: int, sparsity: float, include_head: bool = False
                          ) -> dict[str, QuantizedWeight]:
    """Placeholder quantized weights for every decoder linear, as the quantizer picks them (the LM head only
    with ``include_head``, as ``sqcompile quantize --include-head``).

    ``sparsity`` (percent) sets each matrix's nonzero count the way ``sqcompile quantize --sparsity`` would.
    """
    from ..quant.quantize import find_linears

    check_bits(bits)
    if not 0 <= sparsity < 100:
        raise ValueError(f"sparsity is a percentage in [0, 100), got {sparsity}")
    out = {}
    for name, m in find_linears(model, include_head).items():
        n, k = m.out_features, m.in_features
        nnz = int(round(n * k * sparsity / 100))
        sparse = CSR(np.broadcast_to(np.int32(0), (n + 1,)), np.broadcast_to(np.int32(0), (nnz,)),
                     np.broadcast_to(np.float16(0), (nnz,)))
        out[name] = QuantizedWeight(bits, n, k, np.broadcast_to(np.uint32(0), (n, packed_words(k, bits))),
                                    np.broadcast_to(np.float16(0), (n, 1 << bits)), sparse)
    return out
