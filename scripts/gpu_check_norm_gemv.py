"""The residual add and RMSNorm folded into the decode GEMVs around them (``GemvFusion(residual=True)`` then
``GemvFusion(rms_parts=...)``), on a GPU host (runtime only): each kernel against float64 on fresh random
inputs (a random norm weight) with its outputs poisoned first, the pair chained with programmatic dependent launch in a CUDA graph
against the same pair synchronized after every launch (bit for bit), then the pair timed against the three
kernels it replaces (plain GEMV, add + RMSNorm, plain GEMV), over weight copies rotated past the L2.

    # build host (nvcc, no GPU): python scripts/gpu_check_norm_gemv.py export .kbundle/norm --arch sm_90a
    # GPU host:                  . .kbundle/bundle/env.sh && python3 scripts/gpu_check_norm_gemv.py check .kbundle/norm

Pairs: the 7B layer's o_proj -> gate/up (SiLU) and down_proj -> q/k/v, SmolLM2's, and odd shapes (also with
an odd producer schedule), at 2-4 bits, dense and +0.45%. Exit status 1 on any failure.
"""
from __future__ import annotations

import itertools
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqcompile.kernels.reference import kernel_args, random_weight, reference, rel_error  # noqa: E402
from sqcompile.quant.format import QuantizedWeight  # noqa: E402

# name -> (producer N x K, consumer rows, consumer has the SiLU epilogue); the consumer's K is the producer's N
PAIRS = {"llama7b_mlp": ((4096, 4096), 22016, True), "llama7b_attn": ((4096, 11008), 12288, False),
         "smol_mlp": ((576, 576), 3072, True), "smol_attn": ((576, 1536), 960, False),
         "odd_mlp": ((1000, 300), 666, True), "odd_attn": ((1000, 300), 333, False)}
TIMED = ("llama7b_mlp", "llama7b_attn")
EPS = 1e-5
TOLERANCE = 1e-2
DENSITY = 0.0045
ODD_KNOBS = dict(rows_inner=1, steps=3)  # 3 rows per block: the last block of 1000 rows is partial


def _cases():
    for (name, _), bits, sparse in itertools.product(PAIRS.items(), (2, 3, 4), (False, True)):
        if bits != 2 or name.startswith("odd"):
            yield name, bits, sparse


def _tag(name: str, bits: int, sparse: bool) -> str:
    return f"{name}_{bits}b{'_sp' if sparse else ''}"


def export(folder: Path, arch: str) -> None:
    """Per case the fused producer and consumer, the plain ones and the add + RMSNorm kernel."""
    from sqcompile.kernels.cuda_host import prepare_cuda_build
    prepare_cuda_build()  # before tvm is imported
    import tvm

    from sqcompile.kernels.export import export_kernels
    from sqcompile.kernels.gemv_cuda import GemvFusion
    from sqcompile.kernels.knobs import GemvKnobs
    from sqcompile.kernels.matmul import lut_matmul
    from sqcompile.kernels.norm import add_rms_norm
    target = tvm.target.Target({"kind": "cuda", "arch": arch}, host={"kind": "llvm"})
    funcs, blocks = {}, {}
    for name, bits, sparse in _cases():
        (n, k), rows, silu = PAIRS[name]
        tag = _tag(name, bits, sparse)
        knobs = GemvKnobs(pairs=bits < 4, **ODD_KNOBS) if name.startswith("odd") else None
        common = dict(m=1, sparse=sparse, act_dtype="float16", target=target)
        funcs[f"{tag}_res"] = lut_matmul(n, k, bits, knobs=knobs, fusion=GemvFusion(residual=True), **common)
        blocks[tag] = int(funcs[f"{tag}_res"].params[-1].ty.shape[0])
        funcs[f"{tag}_rms"] = lut_matmul(rows, n, bits, fusion=GemvFusion(silu=silu, rms_parts=blocks[tag],
                                                                          rms_eps=EPS), **common)
        funcs[f"{tag}_plain_producer"] = lut_matmul(n, k, bits, knobs=knobs, **common)
        funcs[f"{tag}_plain_consumer"] = lut_matmul(rows, n, bits, fusion=GemvFusion(silu=silu), **common)
    for n in sorted({PAIRS[name][0][0] for name, _, _ in _cases()}):
        funcs[f"add_rms_norm_{n}"] = add_rms_norm(n, "float16", EPS, target)
    export_kernels(folder, funcs, target, {"arch": arch, "blocks": blocks})


def silu_times(y: np.ndarray) -> np.ndarray:
    gate, up = y[..., 0::2], y[..., 1::2]
    return gate / (1 + np.exp(-gate)) * up


def _quieter(w: QuantizedWeight, by: float = 1 / 16) -> QuantizedWeight:
    """``w`` scaled down: the consumer reads a normalized x, so with N(0, 1) table entries its rows reach
    ~sqrt(K) and SiLU(gate) * up (their product) overflows fp16 in the tails at K = 4096 (seen: one of 11008
    outputs past 65504, in fp16 as in float64)."""
    return replace(w, lut=(w.lut * by).astype(np.float16),
                   sparse=replace(w.sparse, val=(w.sparse.val * by).astype(np.float16)))


class Pair:
    """One case's weights (``copies`` of each, for timing past the L2) and its device buffers."""

    def __init__(self, tvm, lib, manifest: dict, name: str, bits: int, sparse: bool, rng, copies: int = 1):
        (n, k), rows, self.silu = PAIRS[name]
        self.tag, self.lib, self.n = _tag(name, bits, sparse), lib, n
        self.parts = manifest["blocks"][self.tag]
        density = DENSITY if sparse else 0.0
        self.wp = [random_weight(n, k, bits, density, rng) for _ in range(copies)]
        self.wc = [_quieter(random_weight(rows, n, bits, density, rng)) for _ in range(copies)]
        self.x = rng.standard_normal((1, k)).astype(np.float16)
        self.res = rng.standard_normal((1, n)).astype(np.float16)
        self.gamma = rng.uniform(0.5, 2.0, n).astype(np.float16)
        dev = tvm.cuda()

        def tensor(a):
            return tvm.runtime.tensor(a, dev)

        self.tensor = tensor
        self.pw = [[tensor(a) for a in kernel_args(self.x, w, sparse, gemm=False)[1:]] for w in self.wp]
        self.cw = [[tensor(a) for a in kernel_args(self.x, w, sparse, gemm=False)[1:]] for w in self.wc]
        self.x_t, self.res_t, self.gamma_t = tensor(self.x), tensor(self.res), tensor(self.gamma)
        out_rows = rows // 2 if self.silu else rows
        self.h, self.hw = (tensor(np.full((1, n), np.nan, np.float16)) for _ in range(2))
        self.sq = tensor(np.full((self.parts,), np.nan, np.float32))
        self.z = tensor(np.full((1, out_rows), np.nan, np.float16))
        self.y, self.normed = (tensor(np.zeros((1, n), np.float16)) for _ in range(2))

    def fused(self, i: int = 0, z=None) -> None:
        self.lib[f"{self.tag}_res"](self.x_t, *self.pw[i], self.res_t, self.gamma_t, self.h, self.hw, self.sq)
        self.lib[f"{self.tag}_rms"](self.hw, *self.cw[i], self.sq, self.z if z is None else z)

    def plain(self, i: int = 0) -> None:
        self.lib[f"{self.tag}_plain_producer"](self.x_t, *self.pw[i], self.y)
        self.lib[f"add_rms_norm_{self.n}"](self.y, self.res_t, self.gamma_t, self.h, self.normed)
        self.lib[f"{self.tag}_plain_consumer"](self.normed, *self.cw[i], self.z)

    def check(self, torch) -> dict:
        """Each kernel of the fused pair against float64; its outputs poisoned with NaN first."""
        for buf in (self.h, self.hw, self.sq, self.z):
            buf.copyfrom(np.full(buf.shape, np.nan, buf.dtype))
        self.fused()
        torch.cuda.synchronize()  # surfaces a launch or memory error here
        h, hw, sq, z = self.h.numpy(), self.hw.numpy(), self.sq.numpy(), self.z.numpy()
        h_ref = self.res.astype(np.float64) + reference(self.x, self.wp[0])
        rows = -(-self.n // self.parts)
        h64 = h.astype(np.float64)
        sq_ref = np.add.reduceat(h64[0] ** 2, np.arange(0, self.n, rows))  # each block's rows, as stored
        normed = h64 / np.sqrt(np.mean(h64 ** 2) + EPS) * self.gamma.astype(np.float64)
        y_ref = reference(normed, self.wc[0])
        return {"residual": rel_error(h, h_ref), "weighted": rel_error(hw, h64 * self.gamma),
                "block_sq": rel_error(sq, sq_ref), "normed_gemv": rel_error(z, silu_times(y_ref) if self.silu else y_ref)}


def check(folder: Path, out: Path | None) -> int:
    import torch

    from sqcompile.kernels.export import finish_check, load_export
    from sqcompile.kernels.measure import capture, copies_past_l2, time_rotated
    tvm, manifest, lib = load_export(folder, torch)
    rng = np.random.default_rng(0)
    failed, results, timings = 0, [], []
    for name, bits, sparse in _cases():
        pair = Pair(tvm, lib, manifest, name, bits, sparse, rng)
        errs = pair.check(torch)
        expect = pair.z.numpy()
        # The pair replayed as a CUDA graph, 4 times into 4 outputs: with PDL each kernel starts while the one
        # before it drains, so a read of h or the block sums before the producer's writes would show here.
        outs = [pair.tensor(np.full(expect.shape, np.nan, np.float16)) for _ in range(4)]
        g = capture(torch, [lambda o=o: pair.fused(0, o) for o in outs])
        g.replay()
        torch.cuda.synchronize()
        differ = sum(int(np.sum(o.numpy().view(np.uint16) != expect.view(np.uint16))) for o in outs)
        ok = all(e <= TOLERANCE for e in errs.values()) and differ == 0
        failed += not ok
        results.append({"case": pair.tag, **errs, "graph_elements_differ": differ})
        print(f"{'ok  ' if ok else 'FAIL'} {pair.tag:<18} " + " ".join(f"{k}={v:.2e}" for k, v in errs.items())
              + f" graph_differ={differ}")
    print(f"{'case':<18} {'3 kernels us':>12} {'fused pair us':>13}")
    for name, bits, sparse in _cases():
        if name not in TIMED or bits == 2:
            continue
        probe = Pair(tvm, lib, manifest, name, bits, sparse, rng)
        nbytes = sum(a.nbytes for w in (probe.wp[0], probe.wc[0])
                     for a in kernel_args(probe.x, w, sparse, gemm=False)[1:])
        copies = copies_past_l2(nbytes, most=8)
        pair = Pair(tvm, lib, manifest, name, bits, sparse, rng, copies)
        us = {}
        for kind in ("plain", "fused") * 2:  # two interleaved rounds; the second one's times are kept
            us[kind] = time_rotated(torch, lambda i, kind=kind: getattr(pair, kind)(i), copies, min_calls=32)
        timings.append({"case": pair.tag, "plain_us": us["plain"], "fused_us": us["fused"]})
        print(f"{pair.tag:<18} {us['plain']:>12.2f} {us['fused']:>13.2f}")
    return finish_check(out, torch, manifest, failed, len(results), checks=results, timings=timings)


def main() -> int:
    from sqcompile.kernels.export import check_script_main
    return check_script_main(__doc__, export, check)


if __name__ == "__main__":
    sys.exit(main())
