"""Compilation targets (``registry``) and their per-architecture tuning records (``records/``)."""
from .registry import CUDA_ARCHS, TARGET_NAMES, TargetDef, get_target

__all__ = ["CUDA_ARCHS", "TARGET_NAMES", "TargetDef", "get_target"]
