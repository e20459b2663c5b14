"""Lower ordinary Relax ops to TIR and fuse chains of them into single kernels.

This is where RMSNorm (``fuse_rms_norm.py``: one ``rms_norm``), rotary embedding (multiply, rotate, add, with
its q or k slice of the merged projection: ``split_to_slices.py``) and the SiLU gate (silu, multiply) each
become one loop nest instead of several passes over memory. TVM's own LegalizeOps / FuseOps / FuseTIR do the
work; our scheduled kernels are marked opaque so they stay whole.
"""
from __future__ import annotations

import tvm
from tvm import relax

from .fuse_rms_norm import FuseRMSNorm
from .split_to_slices import SplitToSlices


def fuse_elementwise() -> tvm.transform.Pass:
    return tvm.transform.Sequential([
        FuseRMSNorm(),
        SplitToSlices(),
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ], name="FuseElementwise")
