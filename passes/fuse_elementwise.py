"""Lower ordinary Relax ops to TIR and fuse chains of them into single kernels.

This is where RMSNorm (square, mean, rsqrt, scale), rotary embedding (multiply, rotate, add) and the SiLU
gate (silu, multiply) each become one loop nest instead of several passes over memory. TVM's own
LegalizeOps / FuseOps / FuseTIR do the work; our scheduled kernels are marked opaque so they stay whole.
"""
from __future__ import annotations

import tvm
from tvm import relax


def fuse_elementwise() -> tvm.transform.Pass:
    return tvm.transform.Sequential([
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ], name="FuseElementwise")
