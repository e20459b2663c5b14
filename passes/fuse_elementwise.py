"""Lower ordinary Relax ops to TIR and fuse chains of them into single kernels.

This is where RMSNorm (``fuse_rms_norm.py``: one ``rms_norm``), rotary embedding (multiply, rotate, add, with
its q or k slice of the merged projection: ``split_to_slices.py``) and the SiLU gate (silu, multiply) each
become one loop nest instead of several passes over memory; with a target, the residual add joins its
RMSNorm and a decode layer's rotary joins its KV-cache writes (our kernels). TVM's own LegalizeOps / FuseOps / FuseTIR do the
work; our scheduled kernels are marked opaque so they stay whole.
"""
from __future__ import annotations

import tvm
from tvm import relax

from .fuse_add_rms_norm import FuseAddRMSNorm
from .fuse_rms_norm import FuseRMSNorm
from .fuse_rope_kv_write import FuseRopeKVWrite
from .split_to_slices import SplitToSlices


def fuse_elementwise(target: tvm.target.Target | None = None) -> tvm.transform.Pass:
    """With a ``target``, residual adds also fuse with the RMSNorm that reads them (``fuse_add_rms_norm.py``)
    and a decode step's rotary with its KV-cache writes (``fuse_rope_kv_write.py``): kernels per target kind.
    Without, the graph keeps only TVM's own fusion."""
    return tvm.transform.Sequential([
        FuseRMSNorm(),
        *([FuseAddRMSNorm(target)] if target is not None else []),
        SplitToSlices(),
        *([FuseRopeKVWrite(target)] if target is not None else []),
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ], name="FuseElementwise")
