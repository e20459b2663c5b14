"""The thin runtime: runs an artifact with numpy, safetensors, tokenizers and the TVM runtime library only.

``Engine(artifact).generate(prompt)`` / ``.stream(prompt)`` / ``.logits(ids)``. Names load lazily, so that
importing the package (the CLI does) imports neither TVM nor numpy.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "Engine": "engine", "Generation": "engine", "GenerationStats": "engine",
    "SamplingParams": "sampling", "Sampler": "sampling",
    "Manifest": "manifest", "ArtifactError": "manifest",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
