"""What the graph passes share: a Relax function's bindings (which value a var is bound to, how often it is
read), and rewriting every Relax function of a module with one mutator."""
from __future__ import annotations

from typing import Callable

import tvm
from tvm import relax
from tvm.relax.expr_functor import PyExprMutator


def bindings_and_uses(func: relax.Function) -> tuple[dict[relax.Var, relax.Expr], dict[relax.Var, int]]:
    """(var -> bound value, var -> number of reads), the function's return value counted among the reads."""
    bindings = {b.var: b.value for block in func.body.blocks for b in block.bindings}
    uses: dict[relax.Var, int] = {}
    for value in [*bindings.values(), func.body.body]:
        for v in relax.analysis.free_vars(value) if not isinstance(value, relax.Var) else [value]:
            uses[v] = uses.get(v, 0) + 1
    return bindings, uses


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
