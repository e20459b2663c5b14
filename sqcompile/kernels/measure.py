"""Checking and timing exported CUDA kernels on a GPU host with only the TVM runtime (plus PyTorch for
buffers, events, CUDA graphs and the cuBLAS fp16 baseline).

An export folder (``export.py``) holds compiled modules and ``manifest.json``: configs (kind, n, k, bits,
sparse, m) with candidate kernels (name, knobs). For every config this draws a fresh random quantized
weight, checks every candidate against a float64 reference with a NaN-poisoned output, and times it in a
CUDA graph over weight copies rotated past the L2 cache; cuBLAS fp16 on the same shape and a 1 GiB
device copy are timed in the same run. A launch error, or a kernel that does not write all of y, fails loudly.
"""
from __future__ import annotations

import json
import logging
import math
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .reference import kernel_args, random_weight, rel_error

log = logging.getLogger(__name__)

SPARSE_DENSITY = 0.0045
ROTATE_BYTES = 150e6  # 3x the H100's 50 MB L2
TOLERANCE = 1e-2


@dataclass
class Timed:
    name: str
    knobs: dict
    default: bool
    rel_err: float
    us: float | None  # None when the check failed (not timed)


@dataclass
class ConfigResult:
    kind: str
    n: int
    k: int
    bits: int
    sparse: bool
    m: int
    weight_bytes: int  # packed codes + LUT + CSR arrays: what one call must read
    cublas_us: float
    candidates: list[Timed] = field(default_factory=list)


def capture(torch, calls):
    """``calls`` (a list of closures launching TVM kernels) captured as one CUDA graph, not run."""
    import tvm_ffi
    g = torch.cuda.CUDAGraph()
    with tvm_ffi.use_torch_stream(torch.cuda.graph(g)):
        for c in calls:
            c()
    return g


def replay_us(torch, g, reps: int = 5) -> float:
    """Median microseconds of a replay of the CUDA graph ``g`` (the first, warm-up replay not counted)."""
    times = []
    for _ in range(reps + 1):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        g.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return statistics.median(times[1:])


def _time_calls(torch, calls, reps: int = 5) -> float:
    """Median microseconds per call of ``calls`` (a list of closures), replayed as one CUDA graph."""
    for c in calls[:2]:
        c()
    torch.cuda.synchronize()
    return replay_us(torch, capture(torch, calls), reps) / len(calls)


def copies_past_l2(nbytes: float, most: int | None = None) -> int:
    """How many copies of a call's inputs (``nbytes`` each) to cycle through so that every call reads them
    from DRAM, not from L2 (``most`` bounds the device memory this takes)."""
    n = max(1, math.ceil(ROTATE_BYTES / nbytes))
    return min(n, most) if most else n


def time_rotated(torch, run, copies: int, min_calls: int = 20) -> float:
    """Median microseconds of ``run(i)`` (a call on input copy ``i``), the calls cycling through ``copies``."""
    return _time_calls(torch, [lambda i=i: run(i % copies) for i in range(max(min_calls, 2 * copies))])


def copy_bandwidth(torch) -> float:
    """Device-to-device copy of 1 GiB, TB/s counting bytes read plus written."""
    a = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    us = _time_calls(torch, [lambda: b.copy_(a)] * 10)
    return 2 * a.numel() / (us * 1e-6) / 1e12


def measure_config(torch, tvm, lib, cfg: dict, seed: int, time_it: bool = True) -> ConfigResult:
    n, k, bits, sparse, m = cfg["n"], cfg["k"], cfg["bits"], cfg["sparse"], cfg["m"]
    rng = np.random.default_rng(seed)
    density = cfg.get("density") or SPARSE_DENSITY
    w = random_weight(n, k, bits, density if sparse else 0.0, rng)
    x = rng.standard_normal((m, k)).astype(np.float16)
    wd = torch.from_numpy(w.dequantize()).cuda()
    ref = (torch.from_numpy(x).cuda().double() @ wd.double().T).cpu().numpy()
    inputs = kernel_args(x, w, sparse, gemm=cfg["kind"] == "gemm")
    weight_bytes = sum(a.nbytes for a in inputs[1:])
    copies = copies_past_l2(weight_bytes) if time_it else 1
    dev = tvm.cuda()
    x_t = tvm.runtime.tensor(x, dev)
    y = tvm.runtime.tensor(np.empty((m, n), np.float16), dev)
    args = [[x_t, *[tvm.runtime.tensor(a, dev) for a in inputs[1:]], y] for _ in range(copies)]

    cublas_us = float("nan")
    if time_it:
        xh = torch.from_numpy(x).cuda()
        wf16 = [wd.half() for _ in range(copies_past_l2(n * k * 2))]
        cublas_us = _time_calls(torch, [lambda i=i: torch.nn.functional.linear(xh, wf16[i % len(wf16)])
                                        for i in range(max(20, 2 * len(wf16)))])
    del wd
    res = ConfigResult(cfg["kind"], n, k, bits, sparse, m, weight_bytes, cublas_us)
    poison = np.full((m, n), np.nan, np.float16)
    for cand in cfg["candidates"]:
        f = lib[cand["name"]]
        y.copyfrom(poison)
        f(*args[0])
        torch.cuda.synchronize()  # surfaces an asynchronous launch or memory error here, not later
        err = rel_error(y.numpy(), ref)
        us = None
        if err <= TOLERANCE and time_it:
            # Every candidate follows the same kernel: at 4096x4096 one timed right after the shared pair-table
            # kernel ran 6-8% slower than when timed first, whatever its own warm-up (NOTES.md v22).
            torch.nn.functional.linear(xh, wf16[0])
            us = time_rotated(torch, lambda i: f(*args[i]), copies)
        res.candidates.append(Timed(cand["name"], cand["knobs"], cand.get("default", False), err, us))
        log.info("%s: err %.2e, %s us", cand["name"], err, f"{us:.2f}" if us else "-")
    return res


def measure_export(folder: Path, time_it: bool = True, seed: int = 0) -> dict:
    """Check (and time) every candidate of an export folder; returns the results document."""
    import torch

    from ..bundle import load_tvm_runtime
    tvm = load_tvm_runtime()
    folder = Path(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    from .export import ExportKernels
    lib = ExportKernels(tvm, folder, manifest)
    props = torch.cuda.get_device_properties(0)
    doc = {"arch": manifest["arch"], "device": props.name, "sm_count": props.multi_processor_count,
           "copy_tbps": copy_bandwidth(torch) if time_it else None, "configs": []}
    for i, cfg in enumerate(manifest["configs"]):
        doc["configs"].append(asdict(measure_config(torch, tvm, lib, cfg, seed + i, time_it)))
    return doc
