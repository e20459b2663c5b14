"""Named compilation targets: ``llvm`` (this CPU) and ``cuda`` with an ``--arch`` (sm_80, sm_86, sm_89, sm_90).

A :class:`TargetDef` says everything the build needs about a target: the TVM Target, the activation dtype
the model is traced in, the schedule passes for the kernels TVM legalizes itself (dlight rules), the device
the runtime must find, and where the per-architecture tuning records live. Importing this module does not
import TVM, so the runtime can check an artifact's target without the compiler.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CUDA_ARCHS = ("sm_80", "sm_86", "sm_89", "sm_90")
TARGET_NAMES = ("llvm", "cuda")
RECORDS_DIR = Path(__file__).with_name("records")


@dataclass(frozen=True)
class TargetDef:
    name: str  # "llvm" | "cuda"
    arch: str  # CUDA: sm_XX; llvm: the LLVM CPU name (mcpu), "generic" for any x86-64
    cuda_graph: bool = True  # CUDA: capture decode in CUDA graphs (passes/cuda_graph.py)

    @property
    def device(self) -> str:
        """The TVM runtime device type the compiled module runs on."""
        return "cuda" if self.name == "cuda" else "cpu"

    @property
    def act_dtype(self) -> str:
        """Default activation and KV-cache dtype: fp16 on GPUs (half the activation and KV traffic, what
        cuBLAS baselines use), fp32 on CPUs (no fast fp16 arithmetic there). Matmuls accumulate in fp32."""
        return "float16" if self.name == "cuda" else "float32"

    @property
    def records_path(self) -> Path:
        """Tuning records of this architecture (written by ``sqcompile tune``; may not exist)."""
        return RECORDS_DIR / f"{self.arch}.json"

    def tvm_target(self):
        import tvm

        if self.name == "cuda":
            # Limits common to sm_80..sm_90 (dlight reads them; without them TVM warns and guesses).
            return tvm.target.Target({"kind": "cuda", "arch": nvcc_arch(self.arch),
                                      "max_shared_memory_per_block": 49152, "max_threads_per_block": 1024,
                                      "thread_warp_size": 32, "registers_per_block": 65536}, host=self._llvm_host())
        return tvm.target.Target(self._llvm_host())

    def _llvm_host(self) -> dict:
        host = {"kind": "llvm", "num-cores": os.cpu_count() or 1}
        if self.name == "llvm" and self.arch != "generic":
            host["mcpu"] = self.arch
        return host

    def schedule_passes(self) -> list:
        """Passes that schedule the TIR functions legalized from ordinary Relax ops (not our kernels)."""
        from tvm.s_tir import dlight as dl

        if self.name == "cuda":
            import tvm

            from sqcompile.kernels.gemm_tc import dlight_target, import_tensor_intrinsics
            import_tensor_intrinsics()
            schedule = dl.ApplyDefaultSchedule(dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(),
                                               dl.gpu.GeneralReduction(), dl.gpu.Fallback())
            target = dlight_target(self.tvm_target())

            @tvm.transform.module_pass(opt_level=0, name="DlightSchedule")
            def dlight(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
                with target:  # sm_90, not sm_90a: dlight's tensor-core rules would turn themselves off
                    return schedule(mod)

            return [dlight]
        return []


def nvcc_arch(arch: str) -> str:
    """The arch nvcc builds for: sm_90 as ``sm_90a``, whose arch-specific features (wgmma) the prefill GEMM uses.
    Its SASS runs only on sm_90 devices, which is all an sm_90 artifact promises anyway (the manifest checks)."""
    return "sm_90a" if arch == "sm_90" else arch


def host_cpu() -> str:
    import tvm

    return str(tvm.target.codegen.llvm_get_system_cpu())


def get_target(name: str, arch: str | None = None, cuda_graph: bool = True) -> TargetDef:
    """The named target; ``arch`` is required for cuda and defaults to this host's CPU for llvm."""
    if name not in TARGET_NAMES:
        raise ValueError(f"unknown target {name!r}: choose one of {', '.join(TARGET_NAMES)}")
    if name == "cuda":
        if arch is None:
            raise ValueError(f"--target cuda needs --arch, one of {', '.join(CUDA_ARCHS)}")
        if arch not in CUDA_ARCHS:
            raise ValueError(f"unknown CUDA arch {arch!r}: choose one of {', '.join(CUDA_ARCHS)}")
        return TargetDef(name, arch, cuda_graph=cuda_graph)
    return TargetDef(name, arch or host_cpu(), cuda_graph=False)
