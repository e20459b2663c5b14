"""Programmatic dependent launch (PDL, sm_90 and later): a kernel's launch overlaps the end of the kernel
before it in the stream.

A 7B decode step is ~290 short kernels in a CUDA graph; without PDL each one is launched only once the
previous one has completed. With the launch attribute ``programmaticStreamSerializationAllowed`` (TVM's runtime
sets it for kernels whose ``tirx.kernel_launch_params`` ask for it) the next kernel is launched as the previous
one's blocks exit, and its blocks do whatever reads no earlier kernel's output (a GEMV issues its first weight
copies and fills its lookup tables) before ``griddepcontrol.wait``, which returns once the previous kernel has
completed and its writes are visible. On an H100 this took 4.6% off a chain of 7B decode layers replayed in a
CUDA graph (``scripts/gpu_check_pdl.py``).

No kernel calls ``griddepcontrol.launch_dependents`` to let its successor launch earlier: in a CUDA graph that
trigger makes only the writes before it visible to the successor's wait (a trigger at kernel start gave wrong
results there, while eager launches were right), and the chain ran 3% slower with it, not faster.

The contract of a kernel marked with :func:`mark`: :data:`GRID_WAIT` runs before its first read of anything an
earlier kernel of the step may write and before its first global write; what runs before it reads only
constants (weights, lookup tables, CSR). Each kernel that passes its wait is then preceded by the completion
of every earlier one, so the buffers TVM's memory planner shares between kernels stay safe. A kernel without
the mark is launched as before. Before sm_90 the instruction does not exist and nothing is marked.
"""
from __future__ import annotations

import tvm
from tvm import tirx

# An immediately-invoked lambda returning int, as the other inline-PTX helpers of the kernels (``gemv_cuda.py``).
GRID_WAIT = '[]() { asm volatile("griddepcontrol.wait;" ::: "memory"); return 0; }'
LAUNCH_PARAMS_ATTR = "tirx.kernel_launch_params"
PDL_TAG = "tirx.use_programtic_dependent_launch"  # sic: TVM's spelling (runtime/thread_storage_scope.h)
FIRST_PDL_ARCH = 90


def target_arch(target: tvm.target.Target) -> str:
    """``sm_XY`` of a CUDA target (``sm_90a`` counts as ``sm_90``)."""
    arch = str(target.attrs.get("arch", "")) if target.kind.name == "cuda" else ""
    if not arch.startswith("sm_"):
        raise ValueError(f"CUDA target {target} names no arch such as sm_90")
    return arch.rstrip("a")


def programmatic_launch(target: tvm.target.Target) -> bool:
    """Whether kernels built for ``target`` use PDL: CUDA on sm_90 or later."""
    return target.kind.name == "cuda" and int(target_arch(target)[3:]) >= FIRST_PDL_ARCH


def mark(func: tirx.PrimFunc, pdl: bool) -> tirx.PrimFunc:
    """``func`` with the launch attribute that lets it start early, where ``pdl`` (its body must keep the
    contract above)."""
    return func.with_attr(LAUNCH_PARAMS_ATTR, [PDL_TAG]) if pdl else func
