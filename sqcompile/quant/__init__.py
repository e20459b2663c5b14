"""The SqueezeLLM quantizer: Fisher sensitivity, weighted k-means, dense-and-sparse split, storage.

Names resolve lazily so that importing the package (the CLI does) does not import torch.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "QuantizeOptions": "quantize", "QuantizeReport": "quantize", "quantize_model": "quantize",
    "QuantConfig": "storage", "QuantizedModel": "storage", "save_quantized": "storage",
    "load_quantized": "storage", "QuantLinear": "reference", "QuantizedWeight": "format", "CSR": "format",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
