"""The PyTorch reference of a quantized linear: dequantize (LUT + sparse) and matmul.

Evaluation runs it, and the compiled kernels are checked against it. The dense weight is decoded once, at
construction, in float32; forward casts it to the input's dtype.
"""
from __future__ import annotations

import torch
from torch import nn

from .format import QuantizedWeight


class QuantLinear(nn.Module):
    def __init__(self, qweight: QuantizedWeight, bias: torch.Tensor | None = None):
        super().__init__()
        qweight.validate()
        self.qweight = qweight
        self.in_features, self.out_features = qweight.in_features, qweight.out_features
        self.register_buffer("weight", torch.from_numpy(qweight.dequantize()), persistent=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return nn.functional.linear(x, self.weight.to(x.dtype), bias)

    def extra_repr(self) -> str:
        q = self.qweight
        return f"in_features={q.in_features}, out_features={q.out_features}, bits={q.bits}, nnz={q.sparse.nnz}"


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def replace_linears(model: nn.Module, weights: dict[str, QuantizedWeight]) -> nn.Module:
    """Swap each named ``nn.Linear`` of ``model`` for a :class:`QuantLinear` of its quantized weight."""
    for name, q in weights.items():
        old = model.get_submodule(name)
        if (old.out_features, old.in_features) != (q.out_features, q.in_features):
            raise ValueError(f"{name}: quantized weight is {q.out_features}x{q.in_features}, "
                             f"the module is {old.out_features}x{old.in_features}")
        set_module(model, name, QuantLinear(q, getattr(old, "bias", None)))
    return model
