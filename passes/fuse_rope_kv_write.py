"""Fuse a decode step's q/k rotary and its two KV-cache writes into one kernel (``kernels/rope.py``).

After ``SplitToSlices`` and ``KVCacheInplace`` one attention layer of a one-token step reads

    q = rotary(reshape(slice(qkv)));  k = rotary(reshape(slice(qkv)));  v = reshape(slice(qkv))
    k_cache' = call_tir_inplace(kv_write_rows, (k_cache, k, positions)); v_cache' = (the same for v)

with ``rotary(x) = x * cos + concat(-x[.., d/2:], x[.., :d/2]) * sin``: five kernels once fused, each a launch
and a pass over a few KB. Here they become one ``call_tir_inplace`` whose outputs are the rotated q (new) and
both caches (in place). Only these exact shapes, with static heads and one token, are rewritten; anything
else (prefill, a per-head norm before the rotary as in Qwen3) keeps the generic path. The chain is matched
by walking the bindings: Relax's dataflow patterns cannot match through ``concat``'s tuple argument.
"""
from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

from sqcompile.kernels.rope import rope_kv_write

from .bindings import is_op_call, rewrite_module
from .shapes import static_ints

KV_WRITE_PREFIX = "kv_write_rows_"
ROPE_KV_PREFIX = "rope_kv_write_"  # the name of this pass's kernels (fuse_rope_attention.py finds them by it)
CALL_TIR_INPLACE = tvm.ir.Op.get("relax.call_tir_inplace")


def _slice(call: relax.Call) -> tuple[list[int], list[int], list[int]] | None:
    """(axes, begin, end) of a unit-stride ``strided_slice`` with static bounds, else None."""
    def values(arg) -> list[int] | None:
        fields = arg.fields if isinstance(arg, relax.Tuple) else None
        return static_ints([f.value for f in fields]) if fields is not None else None

    axes, begin, end = (values(a) for a in call.args[1:4])
    strides = values(call.args[4]) if len(call.args) > 4 else None
    if axes is None or begin is None or end is None or (strides is not None and set(strides) != {1}):
        return None
    return axes, begin, end


@dataclass
class _Heads:
    qkv: relax.Var
    first: int  # first head of the slice
    count: int


class _Matcher:
    def __init__(self, bindings: dict):
        self.bindings = bindings

    def call(self, expr, op: str) -> relax.Call | None:
        value = self.bindings.get(expr, expr)
        return value if is_op_call(value, op) else None

    def heads(self, x3) -> _Heads | None:
        """``reshape(strided_slice(qkv, axis 1, [h0 d, (h0 + n) d)), [1, n, d])`` of a [1, width] qkv."""
        reshape = self.call(x3, "relax.reshape")
        shape = static_ints(x3.ty.shape) if isinstance(x3, relax.Var) else None
        sliced = self.call(reshape.args[0], "relax.strided_slice") if reshape is not None else None
        if sliced is None or shape is None or len(shape) != 3 or shape[0] != 1:
            return None
        qkv, d = sliced.args[0], shape[2]
        width, bounds = static_ints(qkv.ty.shape), _slice(sliced)
        if width is None or len(width) != 2 or width[0] != 1 or bounds is None:
            return None
        axes, begin, end = bounds
        if axes not in ([1], [-1]) or begin[0] % d or end[0] - begin[0] != shape[1] * d:
            return None
        return _Heads(qkv, begin[0] // d, shape[1])

    def half(self, expr, x3, begin: int, end: int | None, d: int) -> bool:
        sliced = self.call(expr, "relax.strided_slice")
        if sliced is None or not sliced.args[0].same_as(x3):
            return False
        bounds = _slice(sliced)
        if bounds is None or bounds[0] not in ([2], [-1]) or bounds[1] != [begin]:
            return False
        return bounds[2][0] >= d if end is None else bounds[2][0] == end

    def rotary(self, var) -> tuple[relax.Expr, relax.Expr, relax.Expr] | None:
        """(x3, cos, sin) of ``x3 * cos + concat(-x3[.., d/2:], x3[.., :d/2]) * sin``, or None."""
        add = self.call(var, "relax.add")
        left = self.call(add.args[0], "relax.multiply") if add is not None else None
        right = self.call(add.args[1], "relax.multiply") if add is not None else None
        cat = self.call(right.args[0], "relax.concat") if right is not None else None
        if left is None or cat is None:
            return None
        parts = self.bindings.get(cat.args[0], cat.args[0])
        if not isinstance(parts, relax.Tuple) or len(parts.fields) != 2:
            return None
        x3 = left.args[0]
        shape = static_ints(x3.ty.shape) if isinstance(x3, relax.Var) else None
        neg = self.call(parts.fields[0], "relax.negative")
        if shape is None or len(shape) != 3 or neg is None:
            return None
        d = shape[2]
        if not (self.half(neg.args[0], x3, d // 2, None, d) and self.half(parts.fields[1], x3, 0, d // 2, d)):
            return None
        return x3, left.args[1], right.args[1]


def _plan(func: relax.Function, kernel) -> dict[relax.Var, tuple[relax.Call, int]]:
    """Binding var -> (its layer's fused call, output index) for the q, k-write and v-write vars of every
    layer that matches."""
    bindings = {b.var: b.value for block in func.body.blocks for b in block.bindings
                if isinstance(b, relax.VarBinding)}
    m = _Matcher(bindings)
    writes: dict[relax.Var, dict[str, tuple]] = {}  # qkv -> "k"/"v" -> (write var, cache, positions, x3 info)
    for var, value in bindings.items():
        if not (isinstance(value, relax.Call) and value.op == CALL_TIR_INPLACE
                and isinstance(value.args[0], tvm.ir.GlobalVar) and value.args[0].name_hint.startswith(KV_WRITE_PREFIX)):
            continue
        cache, src, positions = value.args[1].fields
        rot = m.rotary(src)
        heads = m.heads(rot[0] if rot is not None else src)
        if heads is not None:
            writes.setdefault(heads.qkv, {})["k" if rot is not None else "v"] = (var, cache, positions, heads, rot)
    q_rot = {}
    for var in bindings:
        rot = m.rotary(var)
        heads = m.heads(rot[0]) if rot is not None else None
        if heads is not None and heads.first == 0:
            q_rot[heads.qkv] = (var, heads, rot)
    plan = {}
    for qkv, kv in writes.items():
        if set(kv) != {"k", "v"} or qkv not in q_rot:
            continue
        (k_var, k_cache, pos, k_heads, k_rot), (v_var, v_cache, v_pos, v_heads, _) = kv["k"], kv["v"]
        q_var, q_heads, q_rot_parts = q_rot[qkv]
        heads, nkv = q_heads.count, k_heads.count
        d = int(q_var.ty.shape[2])
        width = static_ints(qkv.ty.shape)[1]
        cos, sin = q_rot_parts[1], q_rot_parts[2]
        if (k_heads.first != heads or v_heads.first != heads + nkv or v_heads.count != nkv
                or width != (heads + 2 * nkv) * d or not v_pos.same_as(pos)
                or not (k_rot[1].same_as(cos) and k_rot[2].same_as(sin))
                or static_ints(cos.ty.shape) != [1, 1, d] or static_ints(sin.ty.shape) != [1, 1, d]
                or any(t.ty.dtype != q_var.ty.dtype for t in (qkv, cos, sin, k_cache, v_cache))):
            continue
        call = relax.call_tir_inplace(kernel(heads, nkv, d, q_var.ty.dtype), [qkv, cos, sin, k_cache, v_cache, pos],
                                      inplace_indices=[-1, 3, 4], out_ty=[q_var.ty, k_var.ty, v_var.ty])
        plan.update({q_var: (call, 0), k_var: (call, 1), v_var: (call, 2)})
    return plan


@mutator
class _Rewriter(PyExprMutator):
    """Emits each layer's fused call at its first binding (q's rotary) and binds the three vars to its outputs."""

    def __init__(self, mod: tvm.IRModule, target: tvm.target.Target):
        super().__init__(mod)
        self.target = target
        self.kernels: dict[tuple, tvm.ir.GlobalVar] = {}
        self.plan: dict = {}
        self.emitted: dict[int, relax.Var] = {}
        self.fused = 0

    def kernel(self, heads: int, nkv: int, d: int, dtype: str) -> tvm.ir.GlobalVar:
        key = (heads, nkv, d, dtype)
        if key not in self.kernels:
            self.kernels[key] = self.builder_.add_func(rope_kv_write(heads, nkv, d, dtype, self.target),
                                                       f"{ROPE_KV_PREFIX}{heads}x{nkv}x{d}_{dtype}")
        return self.kernels[key]

    def transform(self, func: relax.Function) -> relax.Function:
        self.plan = _plan(func, self.kernel)
        self.fused += len(self.plan) // 3  # three vars per layer
        return self.visit_expr(func) if self.plan else func

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        if binding.var not in self.plan:
            return super().visit_var_binding_(binding)
        call, index = self.plan[binding.var]
        if id(call) not in self.emitted:
            self.emitted[id(call)] = self.builder_.emit(call, "rope_kv")
        self.set_var_remap(binding.var, self.builder_.emit(relax.TupleGetItem(self.emitted[id(call)], index)))


@tvm.transform.module_pass(opt_level=0, name="FuseRopeKVWrite")
class FuseRopeKVWrite:
    def __init__(self, target: tvm.target.Target):
        self.target = target

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return rewrite_module(mod, self.target, _Rewriter,
                              lambda r: f"rotary + KV write: {r.fused} attention layers fused")
