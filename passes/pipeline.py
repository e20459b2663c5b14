"""The compilation pipeline: our rewrites, then fusion, scheduling and TVM's lowering to a VM executable.

Order matters: quantized matmuls and KV-cache writes are rewritten while they are still high-level ops,
before LegalizeOps would turn them into generic (and, for the cache, copying) TIR.
"""
from __future__ import annotations

import tvm
from tvm import relax

from sqcompile.quant.format import QuantizedWeight
from sqcompile.targets import TargetDef

from .cuda_graph import StaticDecodeInputs
from .decode_attention import DecodeAttention
from .fold_weight_transpose import FoldWeightTranspose
from .fuse_elementwise import fuse_elementwise
from .fuse_norm_into_gemv import FuseNormIntoGEMV
from .fuse_prologue import FusePrologue
from .fuse_rms_norm import FuseRMSNorm
from .fuse_rope_attention import FuseRopeAttention
from .fuse_silu_into_gemv import FuseSiluIntoGEMV
from .kv_cache_inplace import KVCacheInplace
from .rewrite_quantized_linear import KernelFactory, RewriteQuantizedLinear


def model_passes(target: TargetDef, quantized: dict[str, QuantizedWeight],
                 kernel: KernelFactory | None = None) -> list[tvm.transform.Pass]:
    """The graph-level passes up to scheduled TIR (what the IR tests inspect)."""
    return [
        RewriteQuantizedLinear(quantized, target.tvm_target(), kernel),
        KVCacheInplace(),
        DecodeAttention(target.tvm_target()),
        FoldWeightTranspose(),
        FuseSiluIntoGEMV(target.tvm_target()),
        FuseRMSNorm(),  # here already (fuse_elementwise starts with it too) for the fold into the GEMVs:
        FuseNormIntoGEMV(target.tvm_target()),  # before FuseAddRMSNorm claims the adds and norms
        FusePrologue(target.tvm_target()),  # layer 0's norm, which FuseNormIntoGEMV leaves
        relax.backend.DispatchSampling(),
        relax.backend.DispatchSortScan(),
        fuse_elementwise(target.tvm_target()),
        FuseRopeAttention(target.tvm_target()),
        *target.schedule_passes(),
    ]


def build_pipeline(target: TargetDef, quantized: dict[str, QuantizedWeight],
                   kernel: KernelFactory | None = None) -> tvm.transform.Pass:
    """The whole Relax pipeline for ``tvm.compile(mod, target, relax_pipeline=...)``."""
    tvm_target = target.tvm_target()
    lowering = [
        relax.transform.RewriteDataflowReshape(),
        relax.transform.ToNonDataflow(),
        relax.transform.RemovePurityChecking(),
        relax.transform.CallTIRRewrite(),
        relax.transform.StaticPlanBlockMemory(),
        *([StaticDecodeInputs(), relax.transform.RewriteCUDAGraph()] if target.cuda_graph else []),
        relax.transform.LowerAllocTensor(),
        relax.transform.KillAfterLastUse(),
        relax.transform.LowerRuntimeBuiltin(),
        relax.transform.ComputePrimValue(),
        relax.transform.VMShapeLower(),
        relax.transform.AttachGlobalSymbol(),
    ]

    @tvm.transform.module_pass(opt_level=0, name="SqcompilePipeline")
    def pipeline(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        with tvm_target:
            return tvm.transform.Sequential(model_passes(target, quantized, kernel) + lowering)(mod)

    return pipeline
