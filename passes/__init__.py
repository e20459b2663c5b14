"""Relax passes of sqcompile, one per file, composed in ``pipeline.py``."""
from .fold_weight_transpose import FoldWeightTranspose
from .fuse_elementwise import fuse_elementwise
from .kv_cache_inplace import KVCacheInplace
from .pipeline import build_pipeline, model_passes
from .rewrite_quantized_linear import PACKED_SUFFIXES, RewriteQuantizedLinear, packed_param_types

__all__ = ["FoldWeightTranspose", "KVCacheInplace", "PACKED_SUFFIXES", "RewriteQuantizedLinear", "build_pipeline", "fuse_elementwise",
           "model_passes", "packed_param_types"]
