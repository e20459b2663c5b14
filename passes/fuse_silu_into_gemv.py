"""Fold a decode layer's SiLU(gate) * up into the gate/up GEMV that computes both (CUDA).

``frontend.fuse`` interleaves the gate and up rows of the merged weight, so the decoder's gated MLP reads

    y = call_tir(gemv, [x, W...])                        # [1, 2F]: gate_i, up_i alternate
    g = strided_slice(y, begin 0, step 2);  u = strided_slice(y, begin 1, step 2)
    z = astype(astype(g, f32) * sigmoid(astype(g, f32)), f16) * u    # HF's SiLU as traced, times up

A block of the GEMV holds whole gate/up pairs, so the warp that sums rows 2i and 2i + 1 can store z_i itself
(``kernels.gemv_cuda.GemvFusion(silu=True)``, rounded as the separate kernel rounds), and the ~1.6 us
kernel between the two MLP GEMVs, 32 launches a 7B step, goes away. Prefill keeps the separate kernel (its
GEMM writes [T, 2F] and the slices read it with a stride). Runs before ``fuse_elementwise``, on the
Relax ops; anything else, other activations included, is left alone.
"""
from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from sqcompile.kernels.gemv_cuda import GemvFusion

from .bindings import GemvVariants, bindings_and_uses, decode_gemv_fusion, rewrite_on_cuda


def _every_other(call: relax.Call, start: int) -> bool:
    """``call`` (a strided_slice) takes elements ``start``, start + 2, ... to the end of the last axis."""
    axes, begin, end, strides = ([int(v) for v in call.args[i].fields] for i in range(1, 5))
    rank = len(call.args[0].ty.shape)
    if len(axes) != 1 or axes[0] % rank != rank - 1:
        return False
    return begin == [start] and strides == [2] and end[0] >= int(call.args[0].ty.shape[-1])


def _call(bindings: dict, var, op: str) -> relax.Call | None:
    """The value bound to ``var`` if it is a call of ``op``."""
    value = bindings.get(var) if isinstance(var, relax.Var) else None
    return value if isinstance(value, relax.Call) and value.op == tvm.ir.Op.get(op) else None


def _plan(mod: tvm.IRModule, func: relax.Function) -> dict[relax.Var, relax.Call]:
    """z's var -> the gate/up GEMV call, for every ``act(gate) * up`` chain that may fold into its GEMV."""
    bindings, uses = bindings_and_uses(func)
    plan = {}
    for z, value in bindings.items():
        if not (isinstance(value, relax.Call) and value.op == tvm.ir.Op.get("relax.multiply")):
            continue
        c, u = value.args
        down = _call(bindings, c, "relax.astype")
        m = None if down is None else _call(bindings, down.args[0], "relax.multiply")
        if m is None:
            continue
        a, s = m.args if _call(bindings, m.args[1], "relax.sigmoid") is not None else m.args[::-1]
        sig, up32 = _call(bindings, s, "relax.sigmoid"), _call(bindings, a, "relax.astype")
        g_call = None if up32 is None else _call(bindings, up32.args[0], "relax.strided_slice")
        u_call = _call(bindings, u, "relax.strided_slice")
        if sig is None or not sig.args[0].same_as(a) or g_call is None or u_call is None:
            continue
        y = g_call.args[0]
        gemv = bindings.get(y)  # a plain decode LUT GEMV: static [1, 2F] output
        if not y.same_as(u_call.args[0]) or decode_gemv_fusion(mod, gemv) != [0, 0, 0]:
            continue
        if (not _every_other(g_call, 0) or not _every_other(u_call, 1) or a.ty.dtype != "float32"
                or z.ty.dtype != y.ty.dtype or down.attrs.dtype != y.ty.dtype):
            continue
        chain = {y: 2, up32.args[0]: 1, u: 1, a: 2, s: 1, down.args[0]: 1, c: 1}
        if all(uses.get(v, 0) == n for v, n in chain.items()):
            plan[z] = gemv
    return plan


@mutator
class _Rewriter(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, target: tvm.target.Target):
        super().__init__(mod)
        self.mod = mod
        self.variants = GemvVariants(mod, self.builder_, target)
        self.plan: dict[relax.Var, relax.Call] = {}

    def transform(self, func: relax.Function) -> relax.Function:
        self.plan = _plan(self.mod, func)
        return self.visit_expr(func) if self.plan else func

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        gemv = self.plan.get(binding.var)
        if gemv is None:
            return super().visit_var_binding_(binding)
        gv = self.variants.get(gemv.args[0], binding.var.ty.dtype, GemvFusion(silu=True))
        args = [self.visit_expr(a) for a in gemv.args[1].fields]
        self.set_var_remap(binding.var, self.builder_.emit(relax.call_tir(gv, args, out_ty=binding.var.ty), "silu_gemv"))


@tvm.transform.module_pass(opt_level=0, name="FuseSiluIntoGEMV")
class FuseSiluIntoGEMV:
    """See the module doc. A no-op for targets other than CUDA."""

    def __init__(self, target: tvm.target.Target):
        self.target = target

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return rewrite_on_cuda(mod, self.target, _Rewriter, "SiLU(gate) * up folded into the decode GEMV")
