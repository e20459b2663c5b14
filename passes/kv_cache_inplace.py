"""Turn the KV-cache ``slice_scatter`` into an in-place write into the runtime's cache buffer.

The frontend writes the ``T`` new rows of each layer's K/V at row ``ctx - T`` of a cache parameter
``[ctx, kv_heads, head_dim]`` with an out-of-place ``slice_scatter``; legalized as is, that copies the whole
context every step. Here each such call on a function parameter becomes ``call_tir_inplace`` of a kernel
that writes only the ``T`` new rows into the parameter's own buffer (a view of the runtime's preallocated
cache), so a step costs ``O(T)`` for the write and the cache lives across calls without being returned.

The rows are written at the token ``positions`` (the entry function's input of that name, which the
frontend defines as ``ctx - T .. ctx - 1``), not at ``ctx - T`` computed from the view's length. The two
agree for exact views; a runtime may also pass a view rounded up to a bucket of rows (the attention mask,
also built from ``positions``, hides the rows past the last position), which keeps the shapes of decode
steps constant for 64 tokens at a time so one CUDA graph serves them all.
"""
from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator
from tvm.script import tirx as T

SLICE_SCATTER = tvm.ir.Op.get("relax.slice_scatter")
OPAQUE = 8  # relax op pattern kOpaque: FuseOps leaves the call alone


def write_rows_func(heads: int, dim: int, dtype: str) -> tvm.tirx.PrimFunc:
    """``cache[positions[i], h, d] = new[i, h, d]``; ``cache`` is both input and output."""

    @T.prim_func(private=True, s_tir=True)
    def write_rows(var_cache: T.handle, var_new: T.handle, var_positions: T.handle):
        T.func_attr({"tir.noalias": True, "op_pattern": OPAQUE})
        ctx, t = T.int64(), T.int64()
        cache = T.match_buffer(var_cache, (ctx, heads, dim), dtype)
        new = T.match_buffer(var_new, (t, heads, dim), dtype)
        positions = T.match_buffer(var_positions, (t,), "int64")
        for i, h, d in T.grid(t, heads, dim):
            with T.sblock("write"):
                vi, vh, vd = T.axis.remap("SSS", [i, h, d])
                cache[positions[vi], vh, vd] = new[vi, vh, vd]

    return write_rows


def _is_tail_write(call: relax.Call, params: set) -> bool:
    """``slice_scatter(param, src, ctx - T, ctx, 1, axis=0)`` with ``src`` of ``T`` rows."""
    if call.op != SLICE_SCATTER or int(call.attrs.axis) != 0 or call.args[0] not in params:
        return False
    cache_shape, src_shape = call.args[0].ty.shape, call.args[1].ty.shape
    start, end, step = call.args[2:5]  # PrimExprs
    analyzer = tvm.sym.Analyzer()
    return (analyzer.can_prove_equal(end, cache_shape[0]) and analyzer.can_prove_equal(step, 1)
            and analyzer.can_prove_equal(start, cache_shape[0] - src_shape[0]))


@mutator
class _Rewriter(PyExprMutator):
    def __init__(self, mod: tvm.IRModule):
        super().__init__(mod)
        self.params: set = set()
        self.positions: relax.Var | None = None
        self.kernels: dict[tuple, tvm.ir.GlobalVar] = {}
        self.rewritten = 0

    def _kernel(self, heads: int, dim: int, dtype: str) -> tvm.ir.GlobalVar:
        key = (heads, dim, dtype)
        if key not in self.kernels:
            func = write_rows_func(heads, dim, dtype)
            self.kernels[key] = self.builder_.add_func(func, f"kv_write_rows_{heads}x{dim}_{dtype}")
        return self.kernels[key]

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if not isinstance(call, relax.Call) or not _is_tail_write(call, self.params):
            return call
        cache, src = call.args[0], call.args[1]
        if self.positions is None:
            raise ValueError("a KV-cache write in a function without a `positions` input")
        heads, dim = (int(s) for s in list(cache.ty.shape)[1:])
        self.rewritten += 1
        return relax.call_tir_inplace(self._kernel(heads, dim, cache.ty.dtype), [cache, src, self.positions],
                                      inplace_indices=[0], out_ty=cache.ty)

    def rewrite(self) -> tvm.IRModule:
        for gvar, func in list(self.builder_.get().functions.items()):
            if isinstance(func, relax.Function):
                self.params = set(func.params)
                self.positions = next((p for p in func.params if p.name == "positions"), None)
                self.builder_.update_func(gvar, self.visit_expr(func))
        return self.builder_.get()


@tvm.transform.module_pass(opt_level=0, name="KVCacheInplace")
class KVCacheInplace:
    """Rewrite every tail ``slice_scatter`` of a parameter into an in-place row write (see module doc)."""

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return _Rewriter(mod).rewrite()
