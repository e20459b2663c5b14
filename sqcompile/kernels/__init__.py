"""TIR kernels for the LUT-dequant matmul (dense codes + CSR sparse part) and their schedule rules.

``lut_matmul`` is the entry point the compiler uses. Importing this package does not import TVM (the CLI
imports ``sqcompile.kernels.tune`` on hosts that only have the runtime); the TVM-using names load lazily.
"""
from __future__ import annotations

__all__ = ["lut_matmul", "GemvKnobs", "GemmKnobs"]


def __getattr__(name: str):
    if name == "lut_matmul":
        from .matmul import lut_matmul
        return lut_matmul
    if name in ("GemvKnobs", "GemmKnobs"):
        from . import knobs
        return getattr(knobs, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
