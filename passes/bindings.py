"""What the graph passes share: a Relax function's bindings (which value a var is bound to, how often it is
read), rewriting every Relax function of a module with one mutator, and the decode GEMV variants that the
fusing passes call instead of a plain GEMV."""
from __future__ import annotations

import logging
from typing import Callable

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator

from sqcompile.kernels.gemv_cuda import GemvFusion
from sqcompile.kernels.matmul import FUSION_ATTR, LUT_ATTR, lut_matmul

log = logging.getLogger(__name__)
OPAQUE = 8  # relax op pattern kOpaque: FuseOps leaves the call alone
CALL_TIR = tvm.ir.Op.get("relax.call_tir")


def bindings_and_uses(func: relax.Function) -> tuple[dict[relax.Var, relax.Expr], dict[relax.Var, int]]:
    """(var -> bound value, var -> number of reads), the function's return value counted among the reads."""
    bindings = {b.var: b.value for block in func.body.blocks for b in block.bindings}
    uses: dict[relax.Var, int] = {}
    for value in [*bindings.values(), func.body.body]:
        for v in relax.analysis.free_vars(value) if not isinstance(value, relax.Var) else [value]:
            uses[v] = uses.get(v, 0) + 1
    return bindings, uses


def binding_readers(bindings: dict[relax.Var, relax.Expr]) -> dict[relax.Var, list[relax.Var]]:
    """var -> the vars whose bound values read it, in binding order."""
    readers: dict[relax.Var, list[relax.Var]] = {}
    for var, value in bindings.items():
        for v in relax.analysis.free_vars(value) if not isinstance(value, relax.Var) else [value]:
            readers.setdefault(v, []).append(var)
    return readers


def is_op_call(value, *names: str) -> bool:
    """Whether ``value`` is a call of one of the Relax operators ``names`` (``"relax.add"`` ...)."""
    return isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) and value.op.name in names


def rewrite_functions(rewriter: PyExprMutator, rewrite: Callable[[relax.Function], relax.Function]) -> tvm.IRModule | None:
    """Each Relax function of ``rewriter``'s module replaced by ``rewrite(func)`` (which returns ``func`` itself
    to leave it), then the PrimFuncs nothing calls any more dropped (DeadCodeElimination: replaced kernels are
    not compiled into the artifact). None when no function changed."""
    changed = False
    for gvar, func in list(rewriter.builder_.get().functions.items()):
        if isinstance(func, relax.Function):
            new = rewrite(func)
            if new is not func:
                rewriter.builder_.update_func(gvar, new)
                changed = True
    return relax.transform.DeadCodeElimination()(rewriter.builder_.get()) if changed else None


def decode_gemv_fusion(mod: tvm.IRModule, value) -> list[int] | None:
    """``[silu, residual, rms_parts]`` of a call of a decode LUT GEMV (m = 1), None for any other value."""
    if not (isinstance(value, relax.Call) and value.op == CALL_TIR):
        return None
    attrs = mod[value.args[0]].attrs
    if attrs is None or LUT_ATTR not in attrs or int(attrs[LUT_ATTR][3]) != 1:
        return None
    return [int(v) for v in attrs[FUSION_ATTR]]


class GemvVariants:
    """The decode LUT GEMVs a pass calls instead of plain ones: ``lut_matmul`` at a plain callee's shape with
    another ``GemvFusion``, each added to the module once."""

    def __init__(self, mod: tvm.IRModule, builder: relax.BlockBuilder, target: tvm.target.Target):
        self.mod, self.builder, self.target = mod, builder, target
        self.kernels: dict[tuple, tvm.ir.GlobalVar] = {}

    def get(self, callee: tvm.ir.GlobalVar, dtype: str, fusion: GemvFusion) -> tvm.ir.GlobalVar:
        n, k, bits, _, sparse = (int(v) for v in self.mod[callee].attrs[LUT_ATTR])
        key = (n, k, bits, sparse, dtype, fusion)
        if key not in self.kernels:
            func = lut_matmul(n, k, bits, m=1, sparse=bool(sparse), act_dtype=dtype, target=self.target,
                              fusion=fusion).with_attr("op_pattern", OPAQUE)
            self.kernels[key] = self.builder.add_func(func, str(func.attrs["global_symbol"]))
        return self.kernels[key]


def rewrite_module(mod: tvm.IRModule, target: tvm.target.Target, make_rewriter,
                   report: Callable[[PyExprMutator], str]) -> tvm.IRModule:
    """``mod`` with every Relax function rewritten by ``make_rewriter(mod, target)`` (a mutator with a
    ``transform(func)``), ``report(rewriter)`` logged where anything changed; ``mod`` itself where nothing did."""
    rewriter = make_rewriter(mod, target)
    out = rewrite_functions(rewriter, rewriter.transform)  # the kernels the rewritten calls replace go with them
    if out is None:
        return mod
    log.info(report(rewriter))
    return out


def rewrite_on_cuda(mod: tvm.IRModule, target: tvm.target.Target, make_rewriter, what: str) -> tvm.IRModule:
    """:func:`rewrite_module` where ``target`` is CUDA (the mutator has a ``variants: GemvVariants``); ``mod``
    unchanged elsewhere."""
    if target.kind.name != "cuda":
        return mod
    return rewrite_module(mod, target, make_rewriter, lambda r: f"{what}: {len(r.variants.kernels)} kernel(s)")
