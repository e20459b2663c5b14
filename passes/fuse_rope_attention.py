"""Fold a decode layer's rotary + KV-write kernel into its attention.

After ``DecodeAttention`` and ``FuseRopeKVWrite`` one attention layer of a one-token step is

    t = call_tir_inplace(rope_kv_write, (qkv, cos, sin, k_cache, v_cache, positions))  # q, caches' = t
    r = call_tir(attention, (t[0], t[1], t[2], positions));  out = r[2]

Both are a few microseconds of latency each on a GPU. Here they become one ``call_tir_inplace`` of the
attention built with ``rope=True`` (``kernels/attention.py``): each block of its first kernel rotates the
query heads it needs from ``qkv``, and the block whose chunk holds the new token rotates that token's K, takes
its V and writes both into the caches, using them directly instead of reading the row back. A match is
rewritten only when the rotated q and the two cache results feed nothing but that attention call.
"""
from __future__ import annotations


import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from sqcompile.kernels.attention import decode_attention

from .bindings import bindings_and_uses, rewrite_module
from .decode_attention import SCALE_ATTR
from .fuse_rope_kv_write import ROPE_KV_PREFIX

CALL_TIR = tvm.ir.Op.get("relax.call_tir")
CALL_TIR_INPLACE = tvm.ir.Op.get("relax.call_tir_inplace")


def _callee(mod: tvm.IRModule, value) -> tuple[str, tvm.tirx.PrimFunc] | None:
    if isinstance(value, relax.Call) and value.op in (CALL_TIR, CALL_TIR_INPLACE):
        func = mod[value.args[0]]
        return value.args[0].name_hint, func
    return None


def _plan(mod: tvm.IRModule, func: relax.Function) -> dict[relax.Var, relax.Var]:
    """attention call's var -> the rope call's var, for every pair that may fuse."""
    bindings, uses = bindings_and_uses(func)
    items = {var: (value.tuple_value, value.index) for var, value in bindings.items()
             if isinstance(value, relax.TupleGetItem)}
    plan = {}
    for var, value in bindings.items():
        callee = _callee(mod, value)
        if callee is None or callee[1].attrs is None or SCALE_ATTR not in callee[1].attrs:
            continue
        args = list(value.args[1].fields)
        got = [items.get(a) for a in args[:3]] if all(isinstance(a, relax.Var) for a in args[:3]) else [None]
        if None in got or len({t for t, _ in got}) != 1 or [i for _, i in got] != [0, 1, 2]:
            continue
        rope = got[0][0]
        rope_callee = _callee(mod, bindings.get(rope))
        if rope_callee is None or not rope_callee[0].startswith(ROPE_KV_PREFIX):
            continue
        if any(uses.get(a, 0) != 1 for a in args[:3]) or uses.get(rope, 0) != 3:
            continue  # the rotated q or a cache result has another user: keep both kernels
        if not args[3].same_as(bindings[rope].args[1].fields[5]):
            continue
        plan[var] = rope
    return plan


@mutator
class _Rewriter(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, target: tvm.target.Target):
        super().__init__(mod)
        self.mod, self.target = mod, target
        self.kernels: dict[str, tvm.ir.GlobalVar] = {}
        self.plan: dict[relax.Var, relax.Var] = {}
        self.bindings: dict[relax.Var, relax.Expr] = {}
        self.fused = 0

    def kernel(self, plain_gv: tvm.ir.GlobalVar, q_ty, k_ty) -> tvm.ir.GlobalVar:
        name = plain_gv.name_hint
        if name not in self.kernels:
            _, heads, d = (int(x) for x in q_ty.shape)
            scale = float(self.mod[plain_gv].attrs[SCALE_ATTR])
            attention = decode_attention(heads, int(k_ty.shape[1]), d, str(q_ty.dtype), self.target, scale, rope=True)
            self.kernels[name] = self.builder_.add_func(attention.with_attr(SCALE_ATTR, scale), f"{name}_rope")
        return self.kernels[name]

    def transform(self, func: relax.Function) -> relax.Function:
        self.plan = _plan(self.mod, func)
        self.bindings = {b.var: b.value for block in func.body.blocks for b in block.bindings}
        return self.visit_expr(func) if self.plan else func

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        if binding.var in self.plan:
            rope = self.bindings[self.plan[binding.var]]
            call = binding.value
            q_ty, k_ty, v_ty = rope.ty.fields
            o_ty, ml_ty, out_ty = call.ty.fields
            gv = self.kernel(call.args[0], q_ty, k_ty)
            fused = self.builder_.emit(relax.call_tir_inplace(
                gv, [self.visit_expr(a) for a in rope.args[1].fields], inplace_indices=[-1, -1, -1, 3, 4],
                out_ty=[o_ty, ml_ty, out_ty, k_ty, v_ty]), "rope_attention")
            self.set_var_remap(binding.var, self.builder_.emit(
                relax.Tuple([relax.TupleGetItem(fused, i) for i in range(3)])))
            self.fused += 1
            return
        if binding.var in self.plan.values() or (
                isinstance(binding.value, relax.TupleGetItem) and binding.value.tuple_value in self.plan.values()):
            return  # the rope call and its items: folded into the attention call above
        super().visit_var_binding_(binding)


@tvm.transform.module_pass(opt_level=0, name="FuseRopeAttention")
class FuseRopeAttention:
    """See the module doc."""

    def __init__(self, target: tvm.target.Target):
        self.target = target

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return rewrite_module(mod, self.target, _Rewriter,
                              lambda r: f"rotary + attention: {r.fused} decode layers in one kernel")
