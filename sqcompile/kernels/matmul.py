"""``lut_matmul``: the scheduled TIR PrimFunc for one quantized linear, chosen by target and row count."""
from __future__ import annotations

import logging
from dataclasses import replace

import tvm
from tvm import tirx

from ..quant.format import check_bits
from .cpu import cpu_lut_matmul
from .cuda_host import WGMMA_RS_PTXAS, ptxas_keeps_wgmma_registers, ptxas_version
from .gemm_cuda import cuda_lut_gemm
from .gemm_mma import applies as mma_applies
from .gemm_mma import WGMMA_KNOBS, cuda_lut_gemm_mma, shared_operand, wgmma_applies
from .gemm_tc import cuda_lut_gemm_tc
from .gemv_cuda import GemvFusion, cuda_lut_gemv, fit_gemv_knobs
from .gemv_lanes import cuda_lut_gemv_lanes
from .knobs import GEMM_ROW_TIERS, GemmKnobs, GemvKnobs
from .launch import programmatic_launch, target_arch
from .sparse_cuda import sparse_after_dense

log = logging.getLogger(__name__)

ACT_DTYPES = ("float16", "float32")
LUT_ATTR = "sqcompile.lut_matmul"  # [n, k, bits, m (-1: symbolic), sparse] of the kernel, for later passes
FUSION_ATTR = "sqcompile.gemv_fusion"  # [silu, residual, rms_parts] of its GemvFusion


def lut_matmul(n: int, k: int, bits: int, *, m: int | None, sparse: bool, act_dtype: str,
               target: tvm.target.Target, knobs: GemvKnobs | GemmKnobs | None = None,
               fusion: GemvFusion = GemvFusion(), pdl: bool | None = None) -> tirx.PrimFunc:
    """y[m, n] = sum_k x[m, k] * (lut[n, code[n, k]] + sparse[n, k]), scheduled for ``target``.

    Params: x [m, k] act_dtype, qweight uint32 [n, packed_words(k, bits)], lut float16 [n, 2**bits], if
    ``sparse`` rowptr int32 [n+1], col int32 [nnz], val float16 [nnz] and, unless m = 1, the same nonzeros per
    tile (uint32 ``sp_tiles``, ``runtime/sparse_tiles.py``), then y [m, n] act_dtype. ``m=None``
    makes the row count symbolic (prefill), ``m=1`` is the decode GEMV. Accumulation is float32.
    ``knobs`` overrides the CUDA schedule; by default the tuning records of the target's arch decide.
    ``fusion`` (CUDA decode GEMV only, ``gemv_cuda.GemvFusion``: its extra inputs and outputs) folds the SiLU
    gate, the residual add or the RMSNorm before it into the kernel (``passes/fuse_*_into_gemv.py``); those
    run on the row-per-warp rule.
    ``pdl`` (decode GEMV only; by default where the target has it, ``launch.py``) lets the kernel start its weight
    copies while the kernel before it drains; the kernel benchmark turns it off to time kernels alone.
    """
    check_bits(bits)
    if n <= 0 or k <= 0 or (m is not None and m <= 0):
        raise ValueError(f"lut_matmul needs positive sizes, got n={n} k={k} m={m}")
    if act_dtype not in ACT_DTYPES:
        raise ValueError(f"act_dtype must be one of {ACT_DTYPES}, got {act_dtype!r}")
    kind = target.kind.name
    fused = fusion != GemvFusion()
    if fused and (kind != "cuda" or m != 1):
        raise ValueError(f"GEMV epilogues ({fusion}) need the CUDA decode GEMV (m = 1), got {kind} with m={m}")
    if kind == "llvm":
        func = cpu_lut_matmul(n, k, bits, m, sparse, act_dtype)
    elif kind == "cuda":
        from ..targets.tuning import lookup
        if m == 1:
            pdl = programmatic_launch(target) if pdl is None else pdl
            if knobs is None:  # records and defaults are fitted to this K; explicit knobs must fit as given
                knobs = fit_gemv_knobs(k, bits, lookup(target_arch(target), "gemv", n, k, bits, sparse)
                                       or GemvKnobs.default(bits), sparse, fusion)
            if fused:
                if knobs.layout == "lane_rows":
                    knobs = fit_gemv_knobs(k, bits, GemvKnobs.default(bits), sparse, fusion)
                if fusion.silu and knobs.rows_per_block % 2:  # a block must hold whole gate/up pairs
                    knobs = replace(knobs, steps=knobs.steps * 2)
                func = cuda_lut_gemv(n, k, bits, sparse, act_dtype, knobs, fusion, pdl=pdl)
            elif knobs.layout == "lane_rows":
                func = cuda_lut_gemv_lanes(n, k, bits, sparse, act_dtype, knobs, pdl=pdl)
            else:
                func = cuda_lut_gemv(n, k, bits, sparse, act_dtype, knobs, pdl=pdl)
        else:
            wgmma = wgmma_applies(k, bits, act_dtype, str(target.attrs.get("arch")))

            fewer: list[tuple[int, GemmKnobs]] = []  # (most rows, knobs) of the tiers below the longest
            if knobs is None:  # the records' knobs for long prompts, and those tuned at fewer rows for the others
                *shorter, (long_rows, _) = GEMM_ROW_TIERS
                knobs = lookup(target_arch(target), "gemm", n, k, bits, sparse, long_rows) or (
                    WGMMA_KNOBS if wgmma else GemmKnobs())
                for tuned, most in shorter:
                    kn = lookup(target_arch(target), "gemm", n, k, bits, sparse, tuned)
                    if kn and kn.rule in ("mma", "wgmma"):
                        fewer.append((most, kn))
            registers_ok = ptxas_keeps_wgmma_registers()
            if not registers_ok and any(kn.weights_in_registers for kn in (knobs, *(kn for _, kn in fewer))):
                log.warning("ptxas %s may reuse a wgmma's A registers before it has read them (fixed in CUDA %d.%d): "
                            "the %dx%d GEMM uses the shared-operand wgmma kernel", ptxas_version(),
                            *WGMMA_RS_PTXAS, n, k)

            def usable(kn: GemmKnobs) -> GemmKnobs:
                if kn.rule == "wgmma" and not wgmma:  # an sm_90a record on a target without it
                    return GemmKnobs()
                return shared_operand(kn) if not registers_ok else kn

            knobs, fewer = usable(knobs), [(most, usable(kn)) for most, kn in fewer]
            func = None
            if knobs.rule in ("mma", "wgmma") and mma_applies(k, bits, act_dtype, int(target_arch(target)[3:])):
                func = cuda_lut_gemm_mma(n, k, bits, m, sparse, knobs, tuple(fewer))
            elif knobs.rule != "simt":  # the dense part on dlight's schedule, then the CSR add (sparse_cuda.py)
                func = cuda_lut_gemm_tc(n, k, bits, act_dtype, target)
                if func is not None and sparse:
                    func = sparse_after_dense(func, n, k, act_dtype)
            if func is None:
                func = cuda_lut_gemm(n, k, bits, m, sparse, act_dtype,
                                     knobs if knobs.rule == "simt" else GemmKnobs(64, 64, 4, 4, "simt"))
    else:
        raise ValueError(f"no lut_matmul rule for target kind {kind!r} (have llvm and cuda)")
    suffix = "".join(tag for on, tag in ((fusion.silu, "_silu"), (fusion.residual, "_res"),
                                        (fusion.rms_parts, "_rms")) if on)
    name = f"lut_matmul_{'s' if sparse else 'd'}{bits}_n{n}_k{k}_m{'dyn' if m is None else m}{suffix}"
    return func.with_attr({"global_symbol": name, "tirx.is_scheduled": True,
                           LUT_ATTR: [n, k, bits, -1 if m is None else m, int(sparse)],
                           FUSION_ATTR: [int(fusion.silu), int(fusion.residual), fusion.rms_parts]})
