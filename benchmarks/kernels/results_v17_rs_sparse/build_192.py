"""Build (no GPU) the 192-row prefill space (the new middle tier's records), plus the 4-bit 128-row sparse
11008x4096 GEMM over the shared-operand splits it was not measured with."""
import sys
from dataclasses import replace
from pathlib import Path
from sqcompile.kernels.cuda_host import prepare_cuda_build
prepare_cuda_build()
from sqcompile.kernels.export import Config, build, gemm_space, prefill_configs
from sqcompile.kernels.gemm_mma import WGMMA_KNOBS
from sqcompile.targets.tuning import load

out = Path(sys.argv[1])
cfgs = prefill_configs("sm_90", (192,))
rec = load("sm_90").exact("gemm", 11008, 4096, 4, True, 128)
cfgs.append((Config("gemm", 11008, 4096, 4, True, 128),
             list(dict.fromkeys([WGMMA_KNOBS, rec, *(replace(WGMMA_KNOBS, split_k=s) for s in (2, 3, 4))]))))
print(sum(len(s) for _, s in cfgs), "kernels in", len(cfgs), "configs")
build(out, "sm_90", cfgs)
