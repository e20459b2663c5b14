"""Fuse each residual add with the ``rms_norm`` that reads it into one kernel (``kernels/norm.py``).

``s = add(a, b); n = rms_norm(s, w)`` becomes ``t = call_tir(add_rms_norm, [a, b, w]) -> (s, n)``: the sum stays
available to its other users (the next residual add) as ``t[0]``. FuseOps cannot do this: an elementwise op
with two consumers stays a kernel of its own. Runs after ``FuseRMSNorm``; only 2-D ``[rows, hidden]``
operands of one dtype, normalized over the last axis by a ``[hidden]`` weight, are rewritten.
"""
from __future__ import annotations

import logging

import tvm
from tvm import relax
from tvm.relax.dpl import PatternContext, is_op, rewrite_bindings, wildcard

from sqcompile.kernels.norm import add_rms_norm

from .shapes import static_ints

log = logging.getLogger(__name__)


@tvm.transform.module_pass(opt_level=0, name="FuseAddRMSNorm")
class FuseAddRMSNorm:
    def __init__(self, target: tvm.target.Target):
        self.target = target

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        builder = relax.BlockBuilder(mod)
        kernels: dict[tuple, tvm.ir.GlobalVar] = {}
        with PatternContext() as ctx:
            a, b, w = wildcard(), wildcard(), wildcard()
            total = is_op("relax.add")(a, b)
            normed = is_op("relax.nn.rms_norm")(total, w)

        def kernel(hidden: int, dtype: str, eps: float) -> tvm.ir.GlobalVar:
            key = (hidden, dtype, eps)
            if key not in kernels:
                kernels[key] = builder.add_func(add_rms_norm(hidden, dtype, eps, self.target),
                                                f"add_rms_norm_{hidden}_{dtype}")
            return kernels[key]

        def rewrite(m: dict, bindings: dict) -> dict:
            av, bv, wv, s_var, n_var = m[a], m[b], m[w], m[total], m[normed]
            call = bindings[n_var]
            shape, dtype = list(s_var.ty.shape), s_var.ty.dtype
            axes = [int(x) for x in call.attrs.axes]
            a_shape, b_shape = list(av.ty.shape), list(bv.ty.shape)
            if (len(shape) != 2 or axes not in ([-1], [1]) or static_ints(shape[1:]) is None
                    or static_ints(list(wv.ty.shape)) != static_ints(shape[1:])
                    or any(v.ty.dtype != dtype for v in (av, bv, wv)) or len(a_shape) != 2 or len(b_shape) != 2
                    or static_ints(a_shape[1:]) != static_ints(b_shape[1:])
                    or not tvm.sym.Analyzer().can_prove_equal(a_shape[0], b_shape[0])):
                return {}
            fused = relax.call_tir(kernel(int(shape[1]), dtype, float(call.attrs.epsilon)), [av, bv, wv],
                                   out_ty=[s_var.ty, n_var.ty])
            return {s_var: relax.TupleGetItem(fused, 0), n_var: relax.TupleGetItem(fused, 1)}

        for gvar, func in list(builder.get().functions.items()):
            if isinstance(func, relax.Function):
                builder.update_func(gvar, rewrite_bindings(ctx, rewrite, func))
        out = builder.get()
        log.info("add + RMSNorm: %d kernels", len(kernels))
        return out
