"""Trace Hugging Face decoders into TVM Relax: prefill and decode functions with an explicit KV cache."""
from .decoder import SUPPORTED_MODEL_TYPES, KVDecoder, UnsupportedModelError, check_supported
from .trace import ENTRY_FUNCTIONS, ModelSpec, TracedModel, trace_decoder

__all__ = ["ENTRY_FUNCTIONS", "SUPPORTED_MODEL_TYPES", "KVDecoder", "ModelSpec", "TracedModel",
           "UnsupportedModelError", "check_supported", "trace_decoder"]
