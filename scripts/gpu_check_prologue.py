"""The step prologue kernel (``kernels.norm.embed_rms_norm_rope``: embedding rows, layer 0's RMSNorm, rotary
cos/sin) on a GPU host (runtime only): against float64 on fresh random inputs, outputs poisoned with NaN first.

    # build host (nvcc, no GPU): python scripts/gpu_check_prologue.py export .kbundle/prologue --arch sm_90a
    # GPU host: . .kbundle/bundle/env.sh && python3 scripts/gpu_check_prologue.py check .kbundle/prologue

Shapes: 7B's (vocab 32000, hidden 4096, head_dim 128), SmolLM2's (49152, 576, 64) and an odd one (1000, 100,
10, with a rotary scale), each for 1 token (decode) and 7 (prefill), positions up to 4000. Exit status 1 on
any failure.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqcompile.kernels.reference import rel_error  # noqa: E402

SHAPES = {"llama7b": (32000, 4096, 128, 1.0), "smollm2": (49152, 576, 64, 1.0), "odd": (1000, 100, 10, 0.75)}
ROWS = (1, 7)
EPS = 1e-5
TOLERANCE = 1e-2


def export(folder: Path, arch: str) -> None:
    from sqcompile.kernels.cuda_host import prepare_cuda_build
    prepare_cuda_build()  # before tvm is imported
    import tvm

    from sqcompile.kernels.export import export_kernels
    from sqcompile.kernels.norm import embed_rms_norm_rope
    target = tvm.target.Target({"kind": "cuda", "arch": arch}, host={"kind": "llvm"})
    funcs = {name: embed_rms_norm_rope(vocab, hidden, head_dim, "float16", EPS, scale, target)
             for name, (vocab, hidden, head_dim, scale) in SHAPES.items()}
    export_kernels(folder, funcs, target, {"arch": arch})


def check_one(tvm, lib, name: str, rows: int, rng) -> dict:
    vocab, hidden, head_dim, scale = SHAPES[name]
    dev = tvm.cuda()
    ids = rng.integers(0, vocab, (1, rows)).astype(np.int64)
    positions = np.sort(rng.integers(0, 4000, rows)).astype(np.int64)
    table = rng.standard_normal((vocab, hidden)).astype(np.float16)
    w = rng.uniform(0.5, 2.0, hidden).astype(np.float16)
    inv_freq = (10000.0 ** -(np.arange(0, head_dim, 2) / head_dim)).astype(np.float32)
    inv_freq = np.concatenate([inv_freq, inv_freq])
    outs = [tvm.runtime.tensor(np.full(shape, np.nan, np.float16), dev)
            for shape in ((rows, hidden), (rows, hidden), (rows, 1, head_dim), (rows, 1, head_dim))]
    lib[name](*(tvm.runtime.tensor(v, dev) for v in (ids, positions, table, w, inv_freq)), *outs)
    h, n, cos, sin = (o.numpy() for o in outs)  # the copies synchronize: a launch error surfaces here
    e = table[ids[0]].astype(np.float64)
    angles = positions[:, None] * inv_freq.astype(np.float64)
    return {"case": f"{name}_rows{rows}", "embedding_exact": bool(np.array_equal(h, table[ids[0]])),
            "normed": rel_error(n, e / np.sqrt((e ** 2).mean(-1, keepdims=True) + EPS) * w),
            "cos": rel_error(cos[:, 0], np.cos(angles) * scale), "sin": rel_error(sin[:, 0], np.sin(angles) * scale)}


def check(folder: Path, out: Path | None) -> int:
    import torch

    from sqcompile.kernels.export import finish_check, load_export
    tvm, manifest, lib = load_export(folder, torch)
    rng = np.random.default_rng(0)
    failed, results = 0, []
    for name in SHAPES:
        for rows in ROWS:
            r = check_one(tvm, lib, name, rows, rng)
            ok = r["embedding_exact"] and all(r[k] <= TOLERANCE for k in ("normed", "cos", "sin"))
            failed += not ok
            results.append(r)
            print(f"{'ok  ' if ok else 'FAIL'} {r['case']:<16} embedding_exact={r['embedding_exact']} "
                  + " ".join(f"{k}={r[k]:.2e}" for k in ("normed", "cos", "sin")))
    return finish_check(out, torch, manifest, failed, len(results), checks=results)


def main() -> int:
    from sqcompile.kernels.export import check_script_main
    return check_script_main(__doc__, export, check)


if __name__ == "__main__":
    sys.exit(main())
