"""Programmatic dependent launch (``kernels/launch.py``) on a GPU host (runtime only): a chain of decode layers
made of the PDL kernels must give bit for bit what the same kernels without PDL give one launch at a time.

    # build host (nvcc, no GPU): python scripts/gpu_check_pdl.py export .kbundle/pdl --arch sm_90a
    # GPU host:                  . .kbundle/bundle/env.sh && python3 scripts/gpu_check_pdl.py check .kbundle/pdl

A layer is what a 7B decode step runs 32 times: add + RMSNorm, the q/k/v GEMV (3 bits), attention with the
rotary embedding and the KV-cache write (32 heads, as 7B has), the output GEMV. The layers share their buffers
as TVM's memory planner makes them share (each norm overwrites the residual the one before read; the output
GEMV overwrites the delta the norm read; each attention writes the cache row the next one reads), so a kernel
that passes its wait before its predecessor's writes land, or writes before its predecessor has read,
changes the result. Four runs of the chain: the kernels without PDL with a synchronize after each launch (the
reference), the PDL kernels launched back to back, and both replayed in a CUDA graph (timed); at a context of
128 rows (attention in one kernel) and of 640 (partial kernel, then combine). Exit status 1 on any difference.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqcompile.kernels.reference import kernel_args, random_weight  # noqa: E402

HEADS, KV_HEADS, HEAD_DIM, HIDDEN, LAYERS, BITS = 32, 32, 128, 4096, 32, 3  # 7B
CONTEXTS = (128, 640)  # attention.ONE_ROWS: one kernel at 128 rows, partial + combine at 640
QKV = (HEADS + 2 * KV_HEADS) * HEAD_DIM
EPS = 1e-5


def export(folder: Path, arch: str) -> None:
    """The layer's kernels with PDL (``*_pdl``) and without (``*_plain``: the GEMVs with ``pdl=False``, the
    norm and attention as built for sm_80, which has no PDL)."""
    from sqcompile.kernels.cuda_host import prepare_cuda_build
    prepare_cuda_build()  # before tvm is imported
    import tvm

    from sqcompile.kernels.attention import decode_attention
    from sqcompile.kernels.export import export_kernels
    from sqcompile.kernels.matmul import lut_matmul
    from sqcompile.kernels.norm import add_rms_norm
    target = tvm.target.Target({"kind": "cuda", "arch": arch}, host={"kind": "llvm"})
    sm80 = tvm.target.Target({"kind": "cuda", "arch": "sm_80"}, host={"kind": "llvm"})
    funcs = {}
    for tag, t, pdl in (("pdl", target, True), ("plain", sm80, False)):
        for name, n in (("qkv", QKV), ("o", HIDDEN)):
            funcs[f"gemv_{name}_{tag}"] = lut_matmul(n, HIDDEN, BITS, m=1, sparse=False, act_dtype="float16",
                                                     target=target, pdl=pdl)
        funcs[f"norm_{tag}"] = add_rms_norm(HIDDEN, "float16", EPS, t)
        funcs[f"attention_{tag}"] = decode_attention(HEADS, KV_HEADS, HEAD_DIM, "float16", t, rope=True)
    export_kernels(folder, funcs, target, {"arch": arch})


class Chain:
    """The buffers of ``LAYERS`` decode layers and one launch sequence over them."""

    def __init__(self, tvm, lib, rng, ctx: int):
        dev = tvm.cuda()

        def tensor(a):
            return tvm.runtime.tensor(np.ascontiguousarray(a), dev)

        self.lib = lib
        self.weights = {}
        for name, n in (("qkv", QKV), ("o", HIDDEN)):
            w = random_weight(n, HIDDEN, BITS, 0.0, rng)
            _, q, lut = kernel_args(np.zeros((1, HIDDEN), np.float16), w, False, gemm=False)
            self.weights[name] = (tensor(q), tensor((lut / 16).astype(np.float16)))
        angle = 127 * 10000.0 ** (-np.arange(HEAD_DIM // 2) / (HEAD_DIM // 2))
        self.cos = tensor(np.tile(np.cos(angle), 2).reshape(1, 1, HEAD_DIM).astype(np.float16))
        self.sin = tensor(np.tile(np.sin(angle), 2).reshape(1, 1, HEAD_DIM).astype(np.float16))
        self.norm_w = tensor((1 + 0.1 * rng.standard_normal(HIDDEN)).astype(np.float16))
        self.pos = tensor(np.array([ctx - 1], np.int64))
        self.init = {"h": rng.standard_normal((1, HIDDEN)), "d": rng.standard_normal((1, HIDDEN)),
                     "keys": rng.standard_normal((ctx, KV_HEADS, HEAD_DIM)),
                     "values": rng.standard_normal((ctx, KV_HEADS, HEAD_DIM))}
        self.buf = {k: tensor(v.astype(np.float16)) for k, v in self.init.items()}
        for name, shape in (("s", (1, HIDDEN)), ("n", (1, HIDDEN)), ("qkv", (1, QKV)), ("att", (1, HIDDEN))):
            self.buf[name] = tensor(np.zeros(shape, np.float16))
        slots = ctx // 32  # attention.partial_slots: one per short chunk (SHORT_CHUNK)
        group = HEADS // KV_HEADS
        self.buf["o"] = tensor(np.zeros((KV_HEADS, slots, group, HEAD_DIM), np.float32))
        self.buf["ml"] = tensor(np.zeros((KV_HEADS, slots, group, 2), np.float32))

    def reset(self) -> None:
        for k, v in self.init.items():
            self.buf[k].copyfrom(v.astype(np.float16))

    def launches(self, tag: str) -> list:
        b, f = self.buf, lambda name: self.lib[f"{name}_{tag}"]
        calls = []
        for layer in range(LAYERS):
            res, out = (b["h"], b["s"]) if layer % 2 == 0 else (b["s"], b["h"])  # the residual ping-pongs
            calls += [lambda res=res, out=out: f("norm")(res, b["d"], self.norm_w, out, b["n"]),
                      lambda: f("gemv_qkv")(b["n"], *self.weights["qkv"], b["qkv"]),
                      lambda: f("attention")(b["qkv"], self.cos, self.sin, b["keys"], b["values"], self.pos, b["o"],
                                             b["ml"], b["att"]),
                      lambda: f("gemv_o")(b["att"], *self.weights["o"], b["d"])]
        return calls

    def result(self) -> dict[str, np.ndarray]:
        last = "s" if LAYERS % 2 else "h"
        return {k: self.buf[k].numpy() for k in (last, "d", "keys", "values", "att")}


def check(folder: Path, out: Path | None) -> int:
    import torch

    from sqcompile.kernels.export import finish_check, load_export
    from sqcompile.kernels.measure import capture, replay_us
    tvm, manifest, lib = load_export(folder, torch, f", {LAYERS} layers")
    failed, results, timings = 0, [], {}
    for ctx in CONTEXTS:
        chain = Chain(tvm, lib, np.random.default_rng(0), ctx)

        def run(tag: str, sync: bool) -> dict:
            chain.reset()
            for call in chain.launches(tag):
                call()
                if sync:
                    torch.cuda.synchronize()
            torch.cuda.synchronize()
            return chain.result()

        def graph(tag: str) -> tuple[dict, float]:
            g = capture(torch, chain.launches(tag))
            chain.reset()
            torch.cuda.synchronize()
            g.replay()
            torch.cuda.synchronize()
            res = chain.result()  # the first replay's: later ones start from its state
            return res, replay_us(torch, g, reps=20) / LAYERS

        ref = run("plain", sync=True)
        finite = all(np.isfinite(v).all() for v in ref.values())
        runs = {"pdl back to back": run("pdl", sync=False)}
        runs["pdl graph"], pdl_us = graph("pdl")
        runs["plain graph"], plain_us = graph("plain")
        failed += not finite
        print(f"{'ok  ' if finite else 'FAIL'} ctx {ctx}: reference finite")
        for name, res in runs.items():
            diff = {k: int(np.sum(res[k].view(np.uint16) != ref[k].view(np.uint16))) for k in ref}
            ok = not any(diff.values())
            failed += not ok
            results.append({"ctx": ctx, "run": name, "differing_elements": diff})
            print(f"{'ok  ' if ok else 'FAIL'} ctx {ctx}: {name:<18} differing elements: {diff}")
        print(f"ctx {ctx}: graph replay, us per layer: without PDL {plain_us:.2f}, with PDL {pdl_us:.2f} "
              f"({100 * (pdl_us / plain_us - 1):+.1f}%)")
        timings[ctx] = {"plain_graph": plain_us, "pdl_graph": pdl_us}
    return finish_check(out, torch, manifest, failed, layers=LAYERS, runs=results, us_per_layer=timings)


def main() -> int:
    from sqcompile.kernels.export import check_script_main
    return check_script_main(__doc__, export, check)


if __name__ == "__main__":
    sys.exit(main())
