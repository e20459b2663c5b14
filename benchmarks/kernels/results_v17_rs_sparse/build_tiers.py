"""Build (no GPU) symbolic-m GEMMs with chosen tiers of knobs, to check each tier's kernel at rows inside it
(NOTES.md, v17 and v18): ``scripts/gpu_check_kernels.py OUT`` on the GPU host. Before the register-operand kernel
kept its store bounds checks (``gemm_mma.OPAQUE_I64``) the mixes B, F, H and J failed (``tiers_h200.json``); with
them none did (``../results_v18_tiers/tiers_h200.json``). The cluster-of-one variant (L in ``tiers2_h200.json``)
was built with ``_launch`` patched to bind ``clusterCtaIdx.x`` at split 1."""
import json
import sys
from dataclasses import replace
from pathlib import Path

from sqcompile.kernels.cuda_host import prepare_cuda_build

prepare_cuda_build()
import tvm  # noqa: E402

from sqcompile.kernels.export import knobs_to_dict  # noqa: E402
from sqcompile.kernels.gemm_mma import WGMMA_KNOBS, cuda_lut_gemm_mma  # noqa: E402
from sqcompile.kernels.knobs import GemmKnobs  # noqa: E402

out = Path(sys.argv[1])
rs = replace(WGMMA_KNOBS, tile_m=256, weights_in_registers=True)
one = GemmKnobs(128, 64, rule="wgmma", warps_m=4, warps_n=1, stages=4, weights_in_registers=True)
s1, s2, s3 = (replace(rs, split_k=s) for s in (1, 2, 3))
funcs = {  # name: (n, k, bits, knobs for the most rows, (most rows, knobs) tiers below them)
    "A_3tiers": (4096, 11008, 3, s2, ((128, replace(one, split_k=2)), (256, s3))),
    "B_3tiers_split1": (11008, 4096, 3, s2, ((128, replace(one, split_k=2)), (256, s1))),
    "C_s3_then_s2": (4096, 11008, 3, s2, ((256, s3),)),
    "D_s3_alone": (4096, 11008, 3, s3, ()),
    "E_4bit_s4_then_s2": (4096, 11008, 4, s2, ((128, replace(one, split_k=4)),)),
    "F_s1_then_s2": (11008, 4096, 3, s2, ((256, s1),)),
    "G_s1_alone": (11008, 4096, 3, s1, ()),
    "H_s1_then_ss_s2": (11008, 4096, 3, replace(WGMMA_KNOBS, split_k=2), ((256, s1),)),
    "I_ss_s1_then_s2": (11008, 4096, 3, s2, ((256, WGMMA_KNOBS),)),
    "J_s1_then_rs128_s1": (11008, 4096, 3, replace(WGMMA_KNOBS, weights_in_registers=True), ((256, s1),)),
    "K_s2_then_s1": (11008, 4096, 3, s1, ((256, s2),)),
}
target = tvm.target.Target({"kind": "cuda", "arch": "sm_90a"}, host={"kind": "llvm"})
mod, configs = {}, []
for name, (n, k, bits, long, fewer) in funcs.items():
    mod[name] = cuda_lut_gemm_mma(n, k, bits, None, False, long, fewer).with_attr("global_symbol", name)
    configs += [{"kind": "gemm", "n": n, "k": k, "bits": bits, "sparse": False, "m": m, "density": None,
                 "candidates": [{"name": name, "knobs": knobs_to_dict(long), "default": True}]} for m in (100, 200, 300)]
with target:
    ex = tvm.compile(tvm.IRModule(mod), target=target)
out.mkdir(parents=True, exist_ok=True)
ex.export_library(str(out / "kernels.so"))
(out / "manifest.json").write_text(json.dumps({"arch": "sm_90", "configs": configs}, indent=1))
print("built", len(mod))
