"""Compute ``x @ W.T`` directly from ``W [N, K]`` instead of materializing ``permute_dims(W)`` first.

The frontend's float linears (the LM head, unquantized projections) arrive as ``matmul(x, permute_dims(W))``.
Legalized as is, TVM copies the whole weight into a transposed buffer on every call (113 MB per decode
step for SmolLM2's head), which dominates decode time. This pass turns each such pair into one TE
reduction over contiguous rows of ``W``, which the target's GEMV/matmul schedule rules then parallelize.
"""
from __future__ import annotations

import tvm
from tvm import relax, te
from tvm.relax.expr_functor import PyExprMutator, mutator

MATMUL = tvm.ir.Op.get("relax.matmul")
PERMUTE_DIMS = tvm.ir.Op.get("relax.permute_dims")


def _matmul_nt(x: te.Tensor, w: te.Tensor, out_dtype: str) -> te.Tensor:
    """``y[..., n] = sum_k x[..., k] * w[n, k]`` accumulated in float32."""
    k = te.reduce_axis((0, w.shape[1]), name="k")
    lead = list(x.shape[:-1])
    return te.compute(
        (*lead, w.shape[0]),
        lambda *i: te.sum(x[(*i[:-1], k)].astype("float32") * w[i[-1], k].astype("float32"), axis=k).astype(out_dtype),
        name="matmul_nt")


@mutator
class _Rewriter(PyExprMutator):
    def transposed_weight(self, expr: relax.Expr) -> relax.Expr | None:
        if isinstance(expr, relax.Var):
            bound = self.lookup_binding(expr)
            expr = bound if bound is not None else expr
        if isinstance(expr, relax.Call) and expr.op == PERMUTE_DIMS and len(expr.args[0].ty.shape) == 2:
            axes = expr.attrs.axes
            if axes is None or [int(a) for a in axes] == [1, 0]:
                return expr.args[0]
        return None

    def visit_call_(self, call: relax.Call) -> relax.Expr:
        call = super().visit_call_(call)
        if not isinstance(call, relax.Call) or call.op != MATMUL:
            return call
        w = self.transposed_weight(call.args[1])
        if w is None:
            return call
        out_dtype = call.ty.dtype
        return self.builder_.call_te(_matmul_nt, call.args[0], w, out_dtype, primfunc_name_hint="matmul_nt")

    def rewrite(self, mod: tvm.IRModule) -> tvm.IRModule:
        for gvar, func in list(mod.functions.items()):
            if isinstance(func, relax.Function):
                self.builder_.update_func(gvar, self.visit_expr(func))
        return relax.transform.DeadCodeElimination()(self.builder_.get())


@tvm.transform.module_pass(opt_level=0, name="FoldWeightTranspose")
class FoldWeightTranspose:
    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return _Rewriter(mod).rewrite(mod)
