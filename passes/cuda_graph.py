"""Let TVM capture the whole decode step in CUDA graphs (``relax.transform.RewriteCUDAGraph``).

TVM captures a region only when every buffer it touches keeps its address from call to call: internal
allocations with static sizes, and the parameters after ``num_input`` (the weights). Decode's inputs (the
token, its position and the KV-cache views) are fixed too, by contract with the runtime: ``Engine`` passes the
same two device scalars every step and views that start at the same cache buffers, rounded up to 64-row buckets.
So this pass declares all of decode's parameters static (``num_input = 0``; the count is kept under
``sqcompile.num_input`` for the manifest). The cache length ``ctx`` stays symbolic: TVM keys each graph by its
value, so one capture serves a whole 64-token bucket. Prefill (its length varies per prompt) is not captured.
"""
from __future__ import annotations

import tvm
from tvm import relax

NUM_INPUT = "sqcompile.num_input"


@tvm.transform.module_pass(opt_level=0, name="StaticDecodeInputs")
class StaticDecodeInputs:
    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        func = mod["decode"] if "decode" in [g.name_hint for g in mod.get_global_vars()] else None
        if isinstance(func, relax.Function):
            inputs = int(func.attrs["num_input"])
            mod["decode"] = func.with_attr(NUM_INPUT, inputs).with_attr("num_input", 0)
        return mod


def num_inputs(func: relax.Function) -> int:
    """The entry function's real input count (before :class:`StaticDecodeInputs`)."""
    attrs = func.attrs
    return int(attrs[NUM_INPUT]) if NUM_INPUT in attrs else int(attrs["num_input"])
