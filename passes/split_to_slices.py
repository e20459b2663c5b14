"""Replace ``split`` whose parts are only taken out by index with one ``strided_slice`` per part.

A split of the merged q/k/v (or gate/up) output is a single op with a tuple result, so FuseOps cannot fuse
it into the different consumers of its parts (q's rotary, k's rotary, v's cache write): it became its own
kernel writing three copies. Each slice is an injective op that fuses into its consumer, reading the merged
output in place.
"""
from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator, mutator

SPLIT = tvm.ir.Op.get("relax.split")


def _bounds(call: relax.Call) -> list[tuple[int, int]] | None:
    """(begin, end) of every part of a split along a static axis, or None when the extent is symbolic."""
    x = call.args[0]
    axis = int(call.attrs.axis) % len(x.ty.shape)
    extent = x.ty.shape[axis]
    if not isinstance(extent, tvm.tirx.IntImm):
        return None
    extent = int(extent)
    sections = call.attrs.indices_or_sections
    if isinstance(sections, (int, tvm.tirx.IntImm)):
        step = extent // int(sections)
        cuts = [step * i for i in range(1, int(sections))]
    else:
        cuts = [int(c) for c in sections]
    edges = [0, *cuts, extent]
    return list(zip(edges[:-1], edges[1:]))


@mutator
class _Slicer(PyExprMutator):
    def visit_tuple_getitem_(self, op: relax.TupleGetItem) -> relax.Expr:
        op = super().visit_tuple_getitem_(op)
        src = op.tuple_value
        bound = self.lookup_binding(src) if isinstance(src, relax.Var) else None
        if not (isinstance(bound, relax.Call) and bound.op == SPLIT):
            return op
        parts = _bounds(bound)
        if parts is None:
            return op
        begin, end = parts[op.index]
        x = bound.args[0]
        axis = int(bound.attrs.axis) % len(x.ty.shape)
        return relax.op.strided_slice(x, axes=[axis], begin=[begin], end=[end])


@tvm.transform.module_pass(opt_level=0, name="SplitToSlices")
class SplitToSlices:
    """See the module doc. A split also used as a whole tuple keeps that use (and the split); dead code
    elimination drops the splits no longer used."""

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        slicer = _Slicer(mod)
        for gvar, func in list(mod.functions.items()):
            if isinstance(func, relax.Function):
                mod[gvar] = slicer.visit_expr(func)
        return relax.transform.DeadCodeElimination()(mod)
