"""Build (no GPU) the kernels of the sparse register-operand A/B: checks at odd shapes, and the 7B sparse prefill
GEMMs at 128 and 512 rows over the register-operand candidates beside the shared-operand records and the dense
records."""
import sys
from pathlib import Path
from sqcompile.kernels.cuda_host import prepare_cuda_build
prepare_cuda_build()
from sqcompile.kernels.export import build, check_configs, gemm_space, Config, PREFILL_SHAPES
from sqcompile.targets.tuning import load

which, out = sys.argv[1], Path(sys.argv[2])
arch = "sm_90"
space = gemm_space(arch)
rs = [kn for kn in space if kn.weights_in_registers]
if which == "check":
    cfgs = [(c, [kn for kn in sp if kn.weights_in_registers]) for c, sp in check_configs(arch)
            if c.kind == "gemm" and c.sparse and any(kn.weights_in_registers for kn in sp)]
    # and the dense register kernels at one shape: unchanged code, a control
    cfgs += [(c, sp) for c, sp in check_configs(arch) if c.kind == "gemm" and not c.sparse and c.n == 4096
             and any(kn.weights_in_registers for kn in sp)]
else:
    recs = load(arch)
    cfgs = []
    for m in (128, 512):
        for (n, k) in PREFILL_SHAPES:
            for bits in (3, 4):
                ss = recs.exact("gemm", n, k, bits, True, m)
                dense = recs.exact("gemm", n, k, bits, False, m)
                cfgs.append((Config("gemm", n, k, bits, True, m), list(dict.fromkeys([space[0], ss, *rs]))))
                cfgs.append((Config("gemm", n, k, bits, False, m), [dense]))
print(sum(len(s) for _, s in cfgs), "kernels in", len(cfgs), "configs")
build(out, arch, cfgs)
