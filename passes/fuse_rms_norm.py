"""Turn the traced RMSNorm chain back into one ``relax.op.nn.rms_norm``.

HF's RMSNorm traces as ``w * astype(x32 * rsqrt(mean(x32 ** 2) + eps))`` with ``x32 = astype(x, float32)``
(both casts absent in float32 models). FuseOps does not fuse an elementwise producer into a reduction, so
that chain became three kernels per norm on CUDA (cast, power, then mean + scale); ``rms_norm`` legalizes to
one PrimFunc (float32 inside, as the chain computes) that dlight schedules as one reduction kernel. The
rounding differs from the chain only in where the fp16 cast sits (after the weight multiply, not before).
"""
from __future__ import annotations

import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard


def _pattern():
    x, w, eps, two = wildcard(), wildcard(), is_const(), is_const()
    x32 = is_op("relax.astype")(x) | x
    mean = is_op("relax.mean")(is_op("relax.power")(x32, two))
    normed = is_op("relax.multiply")(x32, is_op("relax.rsqrt")(is_op("relax.add")(mean, eps)))
    normed = is_op("relax.astype")(normed) | normed
    out = is_op("relax.multiply")(w, normed) | is_op("relax.multiply")(normed, w)
    return out, x, w, eps, two, mean


@tvm.transform.module_pass(opt_level=0, name="FuseRMSNorm")
class FuseRMSNorm:
    """See the module doc. Only a square (``power`` by 2) averaged over the last axis, with the weight a
    vector of that axis' length and the output in x's dtype, is rewritten."""

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        out, x, w, eps, two, mean = _pattern()

        def rewrite(call: relax.Call, m: dict) -> relax.Expr:
            xv, wv = m[x], m[w]
            axes = m[mean].attrs.axis
            rank = len(xv.ty.shape)
            if (float(m[two].value.numpy()) != 2.0 or axes is None or len(axes) != 1
                    or int(axes[0]) % rank != rank - 1 or len(wv.ty.shape) != 1
                    or wv.ty.dtype != xv.ty.dtype or call.ty.dtype != xv.ty.dtype):
                return call
            epsilon = float(m[eps].value.numpy())
            return relax.op.nn.rms_norm(xv, wv, axes=[-1], epsilon=epsilon)

        for gvar, func in list(mod.functions.items()):
            if isinstance(func, relax.Function):
                mod[gvar] = rewrite_call(out, rewrite, func)
        return relax.transform.DeadCodeElimination()(mod)
