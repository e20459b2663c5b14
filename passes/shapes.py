"""Reading static shapes and integer attributes out of Relax expressions."""
from __future__ import annotations

import tvm


def static_ints(values) -> list[int] | None:
    """``values`` (shape dims, PrimValue contents) as Python ints when every one is a constant, else None."""
    out = []
    for v in values:
        if isinstance(v, tvm.tirx.IntImm):
            out.append(int(v.value))
        elif isinstance(v, int):
            out.append(v)
        else:
            return None
    return out
