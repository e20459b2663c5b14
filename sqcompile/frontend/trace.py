"""torch.export a :class:`KVDecoder` twice (prefill: T symbolic; decode: T = 1) and import both into Relax.

Weights stay function parameters (``keep_params_as_input``) so that passes can swap a quantized weight for
its packed tensors and the artifact can store weights apart from the compiled module.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..quant.format import QuantizedWeight
from .decoder import KVDecoder, UnsupportedModelError, check_supported
from .fuse import fuse_projections
from .synthetic import is_placeholder

log = logging.getLogger(__name__)

ENTRY_FUNCTIONS = ("prefill", "decode")


@dataclass
class ModelSpec:
    """What the runtime needs to know to drive the entry functions."""

    model_type: str
    num_layers: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_len: int
    dtype: str  # activation and KV-cache dtype
    max_prefill: int  # most tokens one prefill call takes (the runtime feeds longer prompts in chunks)

    def kv_shape(self, length: int) -> tuple[int, int, int]:
        return (length, self.num_kv_heads, self.head_dim)


@dataclass
class TracedModel:
    mod: "tvm.IRModule"  # noqa: F821 - functions "prefill" and "decode"
    spec: ModelSpec
    params: dict[str, np.ndarray | None]  # Relax parameter name -> value (None: a shape-only placeholder)
    hf_names: dict[str, str]  # Relax parameter name -> Hugging Face state-dict name
    quantized: dict[str, QuantizedWeight] = field(default_factory=dict)  # Relax parameter name -> weight

    @property
    def synthetic(self) -> bool:
        """Traced from placeholders (``frontend.synthetic``): the weights come later, on the serving host."""
        return any(v is None for v in self.params.values())


def _plain_linears(model: nn.Module, quantized: dict[str, QuantizedWeight]) -> None:
    """Replace quantized modules with ``nn.Linear`` holding the dequantized weight.

    The traced graph then has an ordinary matmul on a parameter named after the module, which the rewrite
    pass recognises, and the unrewritten graph computes exactly what the PyTorch reference computes.
    """
    for name, q in quantized.items():
        old = model.get_submodule(name)
        if is_placeholder(old.weight):
            continue  # shape-only model: the placeholder already has the weight's shape
        bias = getattr(old, "bias", None)
        linear = nn.Linear(q.in_features, q.out_features, bias=bias is not None)
        linear.weight = nn.Parameter(torch.from_numpy(q.dequantize()), requires_grad=False)
        if bias is not None:
            linear.bias = nn.Parameter(bias.detach().float().clone(), requires_grad=False)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, linear)


def _export(wrapper: KVDecoder, max_len: int, max_prefill: int, dtype: torch.dtype):
    """Export with symbolic new-token count ``seq`` (<= max_prefill) and context length ``ctx`` (<= max_len).

    The bounds size TVM's static memory plan: activations scale with ``seq``, attention scores with
    ``seq * ctx``, so a prefill bound of 512 rather than max_len keeps them a fraction of the KV cache.
    """
    from torch.export import Dim

    n_kv = 2 * wrapper.num_layers
    seq = Dim("seq", min=1, max=max_prefill)
    ids = torch.zeros(1, 2, dtype=torch.long)
    positions = torch.arange(3, 5)
    kv = [torch.zeros(5, wrapper.num_kv_heads, wrapper.head_dim, dtype=dtype) for _ in range(n_kv)]
    dims = ({1: seq}, {0: seq}, [{0: Dim("ctx", min=1, max=max_len)}] * n_kv)
    with torch.no_grad():
        return torch.export.export(wrapper, (ids, positions, kv), dynamic_shapes=dims)


def _matmul_in_torch_dtype(node, importer):
    """``mm``/``bmm``/``matmul`` as torch computes them: fp32 accumulation, the output in the inputs' dtype.

    TVM 0.27's importer gives every matmul a float32 output, so an fp16 graph mixes dtypes (and fails at the
    first op that requires equal ones); the cast back is fused into the matmul's epilogue.
    """
    from tvm import relax

    a, b = importer.env[node.args[0]], importer.env[node.args[1]]
    out = importer.block_builder.emit(relax.op.matmul(a, b, out_dtype="float32"))
    dtype = str(node.meta["val"].dtype).removeprefix("torch.")
    return out if dtype == "float32" else importer.block_builder.emit(relax.op.astype(out, dtype))


MATMUL_CONVERTERS = {op: _matmul_in_torch_dtype for op in ("mm.default", "bmm.default", "matmul.default")}


def _import(ep, model_type: str):
    import tvm
    from tvm.relax.frontend.torch.exported_program_translator import ExportedProgramImporter

    class Importer(ExportedProgramImporter):
        @staticmethod
        def _convert_pytorch_tensor_to_tvm(tensor_value: torch.Tensor):
            if is_placeholder(tensor_value):  # never materialized: its value is made on the serving host
                return tvm.runtime.empty((0,), str(tensor_value.dtype).removeprefix("torch."))
            return ExportedProgramImporter._convert_pytorch_tensor_to_tvm(tensor_value)

    try:
        return Importer().from_exported_program(ep.run_decompositions(), keep_params_as_input=True,
                                                unwrap_unit_return_tuple=False, no_bind_return_tuple=False,
                                                custom_convert_map=MATMUL_CONVERTERS)
    except (AssertionError, NotImplementedError, KeyError) as e:
        raise UnsupportedModelError(f"model type {model_type!r}: TVM cannot import an op of its graph: {e}") from e


def _is_placeholder_value(var, value) -> bool:
    """The importer's stand-in for a placeholder: an empty tensor where the (static) parameter is not empty."""
    return tuple(value.shape) == (0,) and tuple(int(d) for d in var.ty.shape) != (0,)


def _merge_tied_params(func, ep, params: dict):
    """torch.export lifts a tied parameter once per name (embedding and LM head): keep the first, rebind the
    others to it, so the artifact stores the tensor once."""
    sig = ep.graph_signature
    first: dict[int, str] = {}
    binds = {}
    by_name = {v.name: v for v in func.params}
    for placeholder, fqn in sig.inputs_to_parameters.items():
        owner = first.setdefault(id(ep.state_dict[fqn]), placeholder)
        if owner != placeholder and placeholder in by_name:
            binds[by_name[placeholder]] = by_name[owner]
            params.pop(placeholder, None)
    return func.bind_params(binds) if binds else func


def _relax_param_names(ep) -> dict[str, str]:
    """Relax parameter name (the export placeholder) -> HF state-dict name."""
    sig = ep.graph_signature
    names = {**sig.inputs_to_parameters, **sig.inputs_to_buffers}
    return {ph: re.sub(r"^model\.", "", fqn, count=1) for ph, fqn in names.items()}


def trace_decoder(model: nn.Module, quantized: dict[str, QuantizedWeight] | None = None, *,
                  max_len: int | None = None, dtype: str = "float32", fuse: bool = True,
                  max_prefill: int = 512) -> TracedModel:
    """Trace ``model`` (HF causal LM; modified in place) into a Relax module with prefill and decode.

    ``quantized`` maps HF module names to their quantized weights (QDIR); those linears are traced as
    dense matmuls on the dequantized weight, to be rewritten by ``sqcompile.passes``. With ``fuse``, q/k/v and
    gate/up are merged first (``frontend.fuse``): the artifact then holds ``qkv_proj`` and ``gate_up_proj``.
    """
    import tvm
    from tvm import relax
    from tvm.relax.utils import copy_with_new_vars

    config = model.config
    check_supported(config)
    quantized = dict(quantized or {})
    max_len = int(max_len or getattr(config, "max_position_embeddings", 2048))
    window = getattr(config, "sliding_window", None)
    if window and getattr(config, "use_sliding_window", True) and max_len > window:
        raise UnsupportedModelError(f"model type {config.model_type!r}: sliding-window attention "
                                    f"(window {window}) is not supported; use --max-len <= {window}")
    torch_dtype = getattr(torch, dtype)
    _plain_linears(model, quantized)
    if fuse:
        quantized = fuse_projections(model, quantized)
    model.to(torch_dtype).eval()
    wrapper = KVDecoder(model)

    log.info("tracing %s (%d layers) with torch.export", config.model_type, wrapper.num_layers)
    max_prefill = max(2, min(max_prefill, max_len))
    ep = _export(wrapper, max_len, max_prefill, torch_dtype)
    mod, detached = relax.frontend.detach_params(_import(ep, config.model_type))
    prefill = mod["main"].with_attr("global_symbol", "prefill")
    num_input = int(prefill.attrs["num_input"])
    params = {var.name: None if _is_placeholder_value(var, value) else value.numpy()
              for var, value in zip(prefill.params[num_input:], detached["main"])}
    hf_names = _relax_param_names(ep)
    prefill = _merge_tied_params(prefill, ep, params)
    # Decode is prefill with T bound to 1 (one trace, the same parameters, static GEMV shapes), with fresh
    # variables: two functions sharing a Var break FuseOps, and two separate imports break FuseTIR.
    seq = prefill.params[0].ty.shape[1]
    decode = copy_with_new_vars(prefill.bind_symbolic_vars({seq: 1})).with_attr("global_symbol", "decode")
    relax_of_module = {hf.removesuffix(".weight"): r for r, hf in hf_names.items() if hf.endswith(".weight")}
    missing = [m for m in quantized if m not in relax_of_module]
    if missing:
        raise ValueError(f"quantized modules not found in the traced graph: {missing[:5]}")
    spec = ModelSpec(config.model_type, wrapper.num_layers, wrapper.num_kv_heads, wrapper.head_dim,
                     int(config.vocab_size), max_len, dtype, max_prefill)
    return TracedModel(tvm.IRModule({"prefill": prefill, "decode": decode}), spec, params, hf_names,
                       {relax_of_module[m]: q for m, q in quantized.items()})
