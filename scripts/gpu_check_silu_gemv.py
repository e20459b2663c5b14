"""The gate/up decode GEMV that stores SiLU(gate) * up itself (``lut_matmul(fusion=GemvFusion(silu=True))``), on a GPU host
(runtime only): against a float64 reference on fresh random inputs, output poisoned with NaN first, then timed
beside the plain GEMV of the same weight (replayed in a CUDA graph over weight copies rotated past the L2).

    # build host (nvcc, no GPU): python scripts/gpu_check_silu_gemv.py export .kbundle/silu --arch sm_90a
    # GPU host:                  . .kbundle/bundle/env.sh && python3 scripts/gpu_check_silu_gemv.py check .kbundle/silu

The weight's rows alternate gate and up (``frontend.fuse``): y = x W^T, z = silu(y[0::2]) * y[1::2]. Shapes:
the 7B MLP (2 x 11008 rows), SmolLM2's (2 x 1536) and an odd one, at 2-4 bits, dense and +0.45%, with the
tuning records' schedule and with one whose rows per block are odd (the rule doubles them). Exit status 1 on
any failure.
"""
from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqcompile.kernels.reference import kernel_args, random_weight, reference, rel_error  # noqa: E402

SHAPES = {"llama7b": (22016, 4096), "smollm2": (3072, 576), "odd": (666, 1000)}  # rows (2 x FFN), K
TIMED = ("llama7b",)
TOLERANCE = 1e-2
DENSITY = 0.0045


def _cases():
    for (name, shape), bits, sparse, odd in itertools.product(SHAPES.items(), (2, 3, 4), (False, True), (False, True)):
        if (bits != 2 or name == "odd") and (not odd or name != "llama7b"):
            yield name, shape, bits, sparse, odd


def _tag(name: str, bits: int, sparse: bool, odd: bool) -> str:
    return f"{name}_{bits}b{'_sp' if sparse else ''}{'_odd' if odd else ''}"


def export(folder: Path, arch: str) -> None:
    """Build every case's plain and SiLU GEMV for ``arch`` into ``folder`` (kernels.so + manifest.json)."""
    from sqcompile.kernels.cuda_host import prepare_cuda_build
    prepare_cuda_build()  # before tvm is imported
    import tvm

    from sqcompile.kernels.export import export_kernels
    from sqcompile.kernels.gemv_cuda import GemvFusion
    from sqcompile.kernels.knobs import GemvKnobs
    from sqcompile.kernels.matmul import lut_matmul
    target = tvm.target.Target({"kind": "cuda", "arch": arch}, host={"kind": "llvm"})
    funcs = {}
    for name, (n, k), bits, sparse, odd in _cases():
        tag = _tag(name, bits, sparse, odd)
        knobs = GemvKnobs(pairs=bits < 4, rows_inner=1, steps=3) if odd else None
        common = dict(m=1, sparse=sparse, act_dtype="float16", target=target, knobs=knobs)
        funcs[f"{tag}_silu"] = lut_matmul(n, k, bits, fusion=GemvFusion(silu=True), **common)
        funcs[f"{tag}_plain"] = lut_matmul(n, k, bits, **common)
    export_kernels(folder, funcs, target, {"arch": arch})


def silu_times(y: np.ndarray) -> np.ndarray:
    gate, up = y[..., 0::2], y[..., 1::2]
    return gate / (1 + np.exp(-gate)) * up


class Case:
    def __init__(self, tvm, lib, name: str, bits: int, sparse: bool, odd: bool, rng, copies: int = 1):
        n, k = SHAPES[name]
        self.tag, self.lib = _tag(name, bits, sparse, odd), lib
        self.weights = [random_weight(n, k, bits, DENSITY if sparse else 0.0, rng) for _ in range(copies)]
        self.x = rng.standard_normal((1, k)).astype(np.float16)
        dev = tvm.cuda()
        self.args = [[tvm.runtime.tensor(a, dev) for a in kernel_args(self.x, w, sparse, gemm=False)]
                     for w in self.weights]
        self.z = tvm.runtime.tensor(np.full((1, n // 2), np.nan, np.float16), dev)
        self.y = tvm.runtime.tensor(np.full((1, n), np.nan, np.float16), dev)

    def run(self, kind: str, i: int = 0) -> None:
        self.lib[f"{self.tag}_{kind}"](*self.args[i], self.z if kind == "silu" else self.y)

    def check(self, torch) -> float:
        self.z.copyfrom(np.full(self.z.shape, np.nan, np.float16))
        self.run("silu")
        torch.cuda.synchronize()  # surfaces a launch or memory error here
        return rel_error(self.z.numpy(), silu_times(reference(self.x, self.weights[0])))


def check(folder: Path, out: Path | None) -> int:
    import torch

    from sqcompile.kernels.export import finish_check, load_export
    from sqcompile.kernels.measure import copies_past_l2, time_rotated
    tvm, manifest, lib = load_export(folder, torch)
    rng = np.random.default_rng(0)
    failed, results, timings = 0, [], []
    for name, _, bits, sparse, odd in _cases():
        err = Case(tvm, lib, name, bits, sparse, odd, rng).check(torch)
        ok = err <= TOLERANCE
        failed += not ok
        results.append({"case": _tag(name, bits, sparse, odd), "rel_err": err})
        print(f"{'ok  ' if ok else 'FAIL'} {_tag(name, bits, sparse, odd):<24} rel_err={err:.2e}")
    print(f"{'case':<24} {'plain GEMV us':>13} {'SiLU GEMV us':>12}")
    for name, _, bits, sparse, odd in _cases():
        if name not in TIMED or bits == 2 or odd:
            continue
        probe = Case(tvm, lib, name, bits, sparse, odd, rng)
        copies = copies_past_l2(probe.weights[0].qweight.nbytes, most=16)
        case = Case(tvm, lib, name, bits, sparse, odd, rng, copies)
        us = {kind: time_rotated(torch, lambda i, kind=kind: case.run(kind, i), copies, min_calls=32)
              for kind in ("plain", "silu")}
        timings.append({"case": case.tag, "plain_us": us["plain"], "silu_us": us["silu"]})
        print(f"{case.tag:<24} {us['plain']:>13.2f} {us['silu']:>12.2f}")
    return finish_check(out, torch, manifest, failed, len(results), checks=results, timings=timings)


def main() -> int:
    from sqcompile.kernels.export import check_script_main
    return check_script_main(__doc__, export, check)


if __name__ == "__main__":
    sys.exit(main())
