"""Fold everything a step does before layer 0's first projection into one kernel.

The traced decoder (``frontend/decoder.py``) starts each call with

    h = take(table, astype(reshape(input_ids)), axis=0)             # the embedding rows
    a = expand_dims(astype(positions, float32)) * inv_freq          # rotary angles (a constant vector)
    cos = astype(cos(a) * scale);  sin = astype(sin(a) * scale)     # (scale, astype: where the model has them)
    n = rms_norm(h, w)                                              # layer 0's input norm (``FuseRMSNorm``)

which TVM's fusion leaves as six or seven kernels of 1-2 us each, a launch apiece (a 7B decode step on an
H100: ~10 us of kernel time; folded, 0.6-1.3% more tokens/s, benchmarks/e2e/NOTES.md). Here they become one
``call_tir`` of ``kernels.norm.embed_rms_norm_rope`` with outputs ``(h, n, cos, sin)``; every user of the four
reads the new call's fields. Matched where the ids and positions are the function's own inputs (prefill and
decode alike); anything else is left as traced.
"""
from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm import relax
from tvm.ir.expr import Constant
from tvm.relax.expr_functor import PyExprMutator, mutator

from sqcompile.kernels.norm import embed_rms_norm_rope

from .bindings import binding_readers, bindings_and_uses, is_op_call, rewrite_module
from .shapes import static_ints


def _same(a, b) -> bool:
    return bool(tvm.sym.Analyzer().can_prove_equal(a, b))


@dataclass
class _Prologue:
    ids: relax.Var
    positions: relax.Var
    table: relax.Expr
    weight: relax.Expr
    inv_freq: Constant
    scale: float
    eps: float
    outputs: tuple[relax.Var, relax.Var, relax.Var, relax.Var]  # h, n, cos, sin


class _Graph:
    """A function's bindings, walked along single-input op chains."""

    def __init__(self, func: relax.Function):
        self.params = set(func.params)
        self.bindings, self.uses = bindings_and_uses(func)
        self.readers = binding_readers(self.bindings)

    def root(self, expr, ops: tuple[str, ...]) -> relax.Expr:
        """``expr`` followed back through calls of ``ops`` (first argument) to where the chain starts."""
        while isinstance(expr, relax.Var) and is_op_call(self.bindings.get(expr), *ops):
            expr = self.bindings[expr].args[0]
        return expr

    def rotary_end(self, var: relax.Var) -> tuple[relax.Var, float]:
        """From ``cos(a)`` or ``sin(a)``: the last var of ``* scale`` (a scalar constant) then ``astype``, with the
        scale; each step must be the previous one's only reader."""
        scale = 1.0
        while len(self.readers.get(var, [])) == 1 and self.uses.get(var) == 1:
            nxt = self.readers[var][0]
            value = self.bindings[nxt]
            factor = value.args[1] if is_op_call(value, "relax.multiply") and value.args[0].same_as(var) else None
            if isinstance(factor, Constant) and factor.value.numpy().size == 1:
                scale *= float(factor.value.numpy())
            elif not is_op_call(value, "relax.astype"):
                break
            var = nxt
        return var, scale


def _rotary(graph: _Graph, rows):
    """(positions, inv_freq, scale, cos end, sin end) of the rotary tables, or None."""
    for a, value in graph.bindings.items():
        if not is_op_call(value, "relax.multiply"):
            continue
        x, c = value.args if isinstance(value.args[1], Constant) else value.args[::-1]
        positions = graph.root(x, ("relax.astype", "relax.expand_dims", "relax.reshape"))
        if not (isinstance(c, Constant) and str(c.value.dtype) == "float32" and len(c.value.shape) == 1
                and positions in graph.params and str(positions.ty.dtype) == "int64" and len(positions.ty.shape) == 1
                and str(x.ty.dtype) == "float32" and _same(positions.ty.shape[0], rows)):
            continue
        trig = {graph.bindings[v].op.name: v for v in graph.readers.get(a, [])
                if is_op_call(graph.bindings[v], "relax.cos", "relax.sin")}
        if set(trig) != {"relax.cos", "relax.sin"}:
            continue
        (cos, cos_scale), (sin, sin_scale) = (graph.rotary_end(trig[k]) for k in ("relax.cos", "relax.sin"))
        d = int(c.value.shape[0])
        if cos_scale == sin_scale and all(len(v.ty.shape) == 3 and static_ints([v.ty.shape[1], v.ty.shape[2]]) == [1, d]
                                          and _same(v.ty.shape[0], rows) for v in (cos, sin)):
            return positions, c, cos_scale, cos, sin
    return None


def _plan(func: relax.Function) -> _Prologue | None:
    graph = _Graph(func)
    for n, value in graph.bindings.items():
        if not is_op_call(value, "relax.nn.rms_norm") or [int(a) for a in value.attrs.axes] not in ([-1], [1]):
            continue
        h, weight = value.args
        take = graph.bindings.get(h)
        if not (is_op_call(take, "relax.take") and int(take.attrs.axis) == 0 and len(h.ty.shape) == 2):
            continue
        table, index = take.args
        ids = graph.root(index, ("relax.astype", "relax.reshape"))
        rows = h.ty.shape[0]
        if not (ids in graph.params and str(ids.ty.dtype) == "int64" and len(ids.ty.shape) == 2
                and static_ints([ids.ty.shape[0]]) == [1] and _same(ids.ty.shape[1], rows)
                and len(index.ty.shape) == 1 and "int" in str(index.ty.dtype) and len(table.ty.shape) == 2):
            continue
        rotary = _rotary(graph, rows)
        if rotary is None:
            continue
        positions, inv_freq, scale, cos, sin = rotary
        if cos.ty.dtype != h.ty.dtype or sin.ty.dtype != h.ty.dtype:
            continue
        return _Prologue(ids, positions, table, weight, inv_freq, scale, float(value.attrs.epsilon), (h, n, cos, sin))
    return None


@mutator
class _Rewriter(PyExprMutator):
    def __init__(self, mod: tvm.IRModule, target: tvm.target.Target):
        super().__init__(mod)
        self.target = target
        self.kernels: dict[tuple, tvm.ir.GlobalVar] = {}
        self.plan: _Prologue | None = None
        self.fields: list[relax.Var] | None = None

    def kernel(self, p: _Prologue) -> tvm.ir.GlobalVar:
        (vocab, hidden), head_dim = static_ints(p.table.ty.shape), int(p.inv_freq.value.shape[0])
        dtype = str(p.table.ty.dtype)
        key = (vocab, hidden, head_dim, dtype, p.eps, p.scale)
        if key not in self.kernels:
            func = embed_rms_norm_rope(vocab, hidden, head_dim, dtype, p.eps, p.scale, self.target)
            self.kernels[key] = self.builder_.add_func(func, f"embed_rms_norm_rope_{hidden}_{head_dim}_{dtype}")
        return self.kernels[key]

    def transform(self, func: relax.Function) -> relax.Function:
        self.plan, self.fields = _plan(func), None
        return self.visit_expr(func) if self.plan else func

    def visit_var_binding_(self, binding: relax.VarBinding) -> None:
        p = self.plan
        if binding.var not in p.outputs:
            return super().visit_var_binding_(binding)
        if self.fields is None:  # at the first of the four: all inputs are parameters or constants
            args = [p.ids, p.positions, p.table, p.weight, p.inv_freq]
            call = self.builder_.emit(relax.call_tir(self.kernel(p), [self.visit_expr(a) for a in args],
                                                     out_ty=[v.ty for v in p.outputs]), "prologue")
            self.fields = [self.builder_.emit(relax.TupleGetItem(call, i), name)
                           for i, name in enumerate(("embedded", "normed", "cos", "sin"))]
        self.set_var_remap(binding.var, self.fields[p.outputs.index(binding.var)])


@tvm.transform.module_pass(opt_level=0, name="FusePrologue")
class FusePrologue:
    """See the module doc. Runs after ``FuseRMSNorm``, before ``fuse_elementwise`` lowers the ops it reads."""

    def __init__(self, target: tvm.target.Target):
        self.target = target

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return rewrite_module(mod, self.target, _Rewriter,
                              lambda _: "prologue: embedding, layer 0's RMSNorm and the rotary tables in one kernel")
