"""What the graph passes ask of a Relax function's bindings: which value a var is bound to, and how often it is read."""
from __future__ import annotations

from tvm import relax


def bindings_and_uses(func: relax.Function) -> tuple[dict[relax.Var, relax.Expr], dict[relax.Var, int]]:
    """(var -> bound value, var -> number of reads), the function's return value counted among the reads."""
    bindings = {b.var: b.value for block in func.body.blocks for b in block.bindings}
    uses: dict[relax.Var, int] = {}
    for value in [*bindings.values(), func.body.body]:
        for v in relax.analysis.free_vars(value) if not isinstance(value, relax.Var) else [value]:
            uses[v] = uses.get(v, 0) + 1
    return bindings, uses
