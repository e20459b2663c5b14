"""Decode attention on a GPU host (runtime only): the exported CUDA kernels against a float64 reference, then timed.

    # build host (nvcc, no GPU): python scripts/gpu_check_attention.py export .kbundle/attn --arch sm_90a
    # GPU host:                  . .kbundle/bundle/env.sh && python3 scripts/gpu_check_attention.py check .kbundle/attn

``check`` runs 7B (32 x 128, no GQA), SmolLM2 (9 / 3 heads x 64) and a GQA-8 shape at several context lengths,
each through a view rounded up to 64 rows (as the runtime passes them) whose tail rows hold NaN, with every
output poisoned with NaN first, for each variant of the chunking (the compiler's first; ``split`` is the
same without the one-kernel path for short views); the same for the attention with the rotary folded in
(``rope=True``, the compiler's chunks), which must also write the new token's rotated K and its V into the
caches and nothing else; then times each variant replayed in a CUDA graph over K/V copies rotated past the L2
cache, printing microseconds and the GB/s of the K/V rows read. Exit status 1 on any failure.
"""
from __future__ import annotations

import itertools
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SHAPES = {"llama7b": (32, 32, 128), "smollm2": (9, 3, 64), "gqa8": (32, 4, 128)}  # heads, kv heads, head_dim
TOKENS = (1, 77, 128, 192, 256, 257, 512, 600, 2000, 2048)  # attended rows; views are rounded up to BUCKET
TIMED = (128, 192, 256, 512, 1024, 2048)
# (chunk, short chunk, one-kernel rows): context rows per partial block past / up to SHORT_ROWS, views of up to
# the last in one kernel (0: none); the compiler's comes first
VARIANTS = {"one256": (64, 32, 256), "split": (64, 32, 0), "c32": (32, 32, 0), "c64": (64, 64, 0)}
DEFAULT = "one256"
BUCKET = 64
TOLERANCE = 2e-3


def export(folder: Path, arch: str) -> None:
    """Build every shape's attention variants for ``arch`` into ``folder`` (kernels.so + manifest.json)."""
    from sqcompile.kernels.cuda_host import prepare_cuda_build
    prepare_cuda_build()  # before tvm is imported
    import tvm

    from sqcompile.kernels.attention import CHUNK, ONE_ROWS, SHORT_CHUNK, decode_attention
    from sqcompile.kernels.export import export_kernels
    target = tvm.target.Target({"kind": "cuda", "arch": arch}, host={"kind": "llvm"})
    funcs = {}
    assert VARIANTS[DEFAULT] == (CHUNK, SHORT_CHUNK, ONE_ROWS), "the check's default must be the compiler's chunks"
    for (name, (heads, nkv, d)), (var, (chunk, short, one)) in itertools.product(SHAPES.items(), VARIANTS.items()):
        funcs[f"{name}_{var}"] = decode_attention(heads, nkv, d, "float16", target, chunk=chunk, short_chunk=short,
                                                  one_rows=one)
    for name, (heads, nkv, d) in SHAPES.items():
        funcs[f"{name}_rope"] = decode_attention(heads, nkv, d, "float16", target, rope=True)
    export_kernels(folder, funcs, target, {"arch": arch, "variants": VARIANTS, "default": DEFAULT,
                                           "dtype": "float16", "shapes": {k: list(v) for k, v in SHAPES.items()}})


def reference(q: np.ndarray, keys: np.ndarray, values: np.ndarray, tokens: int) -> np.ndarray:
    """float64 softmax(q K^T / sqrt(d)) V over the first ``tokens`` rows; q [1, H, d], K/V [ctx, nkv, d]."""
    heads, d = q.shape[1:]
    group = heads // keys.shape[1]
    k = np.repeat(keys[:tokens].astype(np.float64), group, axis=1)  # [tokens, H, d]
    v = np.repeat(values[:tokens].astype(np.float64), group, axis=1)
    s = np.einsum("hd,thd->ht", q[0].astype(np.float64), k) * d ** -0.5
    w = np.exp(s - s.max(axis=1, keepdims=True))
    w /= w.sum(axis=1, keepdims=True)
    return np.einsum("ht,thd->hd", w, v).reshape(1, heads * d)


class Case:
    """Random inputs for one shape and length, with device buffers (the outputs poisoned by :meth:`run`)."""

    def __init__(self, tvm, lib, name: str, shape, variant: str, short: int, tokens: int, rng, copies: int = 1):
        heads, nkv, d = shape
        view = -(-tokens // BUCKET) * BUCKET
        chunks, group = -(-view // short), heads // nkv  # kernels.attention.partial_slots
        self.attention = lib[f"{name}_{variant}"]
        self.tokens, self.kv_bytes = tokens, 2 * tokens * nkv * d * 2
        self.q = rng.standard_normal((1, heads, d)).astype(np.float16)
        self.keys = rng.standard_normal((view, nkv, d)).astype(np.float16)
        self.values = rng.standard_normal((view, nkv, d)).astype(np.float16)
        self.keys[tokens:], self.values[tokens:] = np.nan, np.nan  # the bucket's tail must never be read
        dev = tvm.cuda()
        self.out_shapes = [((nkv, chunks, group, d), np.float32), ((nkv, chunks, group, 2), np.float32),
                           ((1, heads * d), np.float16)]
        self.outs = [tvm.runtime.tensor(np.empty(s, t), dev) for s, t in self.out_shapes]
        self.args = [[tvm.runtime.tensor(x, dev) for x in (self.q, self.keys, self.values)]
                     + [tvm.runtime.tensor(np.array([tokens - 1], np.int64), dev)] for _ in range(copies)]

    def run(self, i: int = 0) -> None:
        self.attention(*self.args[i], *self.outs)

    def check(self, torch) -> float:
        for buf, (s, t) in zip(self.outs, self.out_shapes):
            buf.copyfrom(np.full(s, np.nan, t))
        self.run()
        torch.cuda.synchronize()  # surfaces a launch or memory error here
        ref = reference(self.q, self.keys, self.values, self.tokens)
        got = self.outs[2].numpy().astype(np.float64)
        return float(np.linalg.norm(got - ref) / np.linalg.norm(ref)) if np.isfinite(got).all() else math.inf


def rotary(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """x * cos + rotate_half(x) * sin over the last axis, in fp16 as the traced graph computes it."""
    half = x.shape[-1] // 2
    return x * cos + np.concatenate([-x[..., half:], x[..., :half]], axis=-1) * sin


def check_rope(tvm, lib, name: str, shape, short: int, tokens: int, rng) -> float:
    """The rope attention against float64 attention over the rotated q and the caches with
    the new row in place; inf unless the caches hold exactly the new row at ``tokens - 1`` and nothing else new."""
    heads, nkv, d = shape
    view, pos = -(-tokens // BUCKET) * BUCKET, tokens - 1
    chunks, group = -(-view // short), heads // nkv
    qkv = rng.standard_normal((1, (heads + 2 * nkv) * d)).astype(np.float16)
    cos, sin = rng.standard_normal((2, d)).astype(np.float16)
    keys = rng.standard_normal((view, nkv, d)).astype(np.float16)
    values = rng.standard_normal((view, nkv, d)).astype(np.float16)
    keys[pos:], values[pos:] = np.nan, np.nan  # row pos is the kernel's to write; later rows are never read
    x = qkv.reshape(heads + 2 * nkv, d)
    k_new, v_new = rotary(x[heads:heads + nkv], cos, sin), x[heads + nkv:]
    dev = tvm.cuda()
    k_t, v_t = tvm.runtime.tensor(keys, dev), tvm.runtime.tensor(values, dev)
    o = tvm.runtime.tensor(np.full((nkv, chunks, group, d), np.nan, np.float32), dev)
    ml = tvm.runtime.tensor(np.full((nkv, chunks, group, 2), np.nan, np.float32), dev)
    out = tvm.runtime.tensor(np.full((1, heads * d), np.nan, np.float16), dev)
    tables = [tvm.runtime.tensor(a, dev) for a in (qkv, cos.reshape(1, 1, d), sin.reshape(1, 1, d))]
    lib[f"{name}_rope"](*tables, k_t, v_t, tvm.runtime.tensor(np.array([pos], np.int64), dev), o, ml, out)
    got_k, got_v = k_t.numpy(), v_t.numpy()
    k = x[heads:heads + nkv].astype(np.float64)
    c64, s64 = cos.astype(np.float64), sin.astype(np.float64)
    # fp16 rounds x * cos, rotate_half(x) * sin and their sum (an FMA skips one): a few ulp of the terms'
    # magnitudes, not of the (possibly cancelled) result
    bound = 2 ** -9 * (np.abs(k * c64) + np.abs(rotary(k, np.zeros_like(c64), s64))) + 2 ** -24
    wrong = {"rotated K row": not (np.abs(got_k[pos].astype(np.float64) - rotary(k, c64, s64)) <= bound).all(),
             "V row": not np.array_equal(got_v[pos], v_new),
             "earlier cache rows": not np.array_equal(got_k[:pos], keys[:pos]),
             "later cache rows": not (np.isnan(got_k[pos + 1:]).all() and np.isnan(got_v[pos + 1:]).all())}
    if any(wrong.values()):
        print(f"     {name} tokens={tokens}: wrong {', '.join(w for w, bad in wrong.items() if bad)}")
        return math.inf
    keys[pos], values[pos] = k_new, v_new
    ref = reference(rotary(x[None, :heads], cos, sin), keys, values, tokens)
    got = out.numpy().astype(np.float64)
    return float(np.linalg.norm(got - ref) / np.linalg.norm(ref)) if np.isfinite(got).all() else math.inf


def check(folder: Path, out: Path | None) -> int:
    import torch

    from sqcompile.kernels.export import finish_check, load_export
    from sqcompile.kernels.measure import copies_past_l2, time_rotated
    tvm, manifest, lib = load_export(folder, torch)
    rng = np.random.default_rng(0)
    failed, rows = 0, []
    variants, default = manifest["variants"], manifest["default"]
    print(f"compiler's chunks {default}")
    for (name, shape), (var, (_, short, _)), tokens in itertools.product(manifest["shapes"].items(),
                                                                         variants.items(), TOKENS):
        err = Case(tvm, lib, name, shape, var, short, tokens, rng).check(torch)
        ok = err <= TOLERANCE
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {name:<8} {var:<7} tokens={tokens:<5} rel_err={err:.2e}")
    for (name, shape), tokens in itertools.product(manifest["shapes"].items(), TOKENS):
        err = check_rope(tvm, lib, name, shape, variants[default][1], tokens, rng)
        ok = err <= TOLERANCE
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {name:<8} rope      tokens={tokens:<5} rel_err={err:.2e}")
    print(f"{'shape':<8} {'chunks':>7} {'ctx':>5} {'us':>8} {'GB/s':>7}")
    for (name, shape), tokens, (var, (_, short, _)) in itertools.product(manifest["shapes"].items(), TIMED,
                                                                         variants.items()):
        probe = Case(tvm, lib, name, shape, var, short, tokens, rng)
        copies = copies_past_l2(probe.kv_bytes, most=64)
        case = Case(tvm, lib, name, shape, var, short, tokens, rng, copies)
        us = time_rotated(torch, case.run, copies, min_calls=64)
        gbps = case.kv_bytes / (us * 1e-6) / 1e9
        rows.append({"shape": name, "heads": shape, "chunks": var, "ctx": tokens, "us": us, "gbps": gbps})
        print(f"{name:<8} {var:>7} {tokens:>5} {us:>8.2f} {gbps:>7.0f}")
    return finish_check(out, torch, manifest, failed, len(manifest["shapes"]) * (len(variants) + 1) * len(TOKENS),
                        timings=rows)


def main() -> int:
    from sqcompile.kernels.export import check_script_main
    return check_script_main(__doc__, export, check)


if __name__ == "__main__":
    sys.exit(main())
