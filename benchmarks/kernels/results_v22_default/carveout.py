"""Is the state a GEMV inherits from the kernel before it the L1 / shared-memory split? (GPU host, runtime bundle)

    python3 benchmarks/kernels/results_v22_default/carveout.py kernels EXPORT --out carveout_kernels.json
    python3 benchmarks/kernels/results_v22_default/carveout.py e2e ARTIFACT [--cache-config l1] --out e2e.json

``kernels``: ``build.py``'s 4096x4096 configs, each register-table candidate timed after one launch of a
predecessor: the cuBLAS GEMV of the shape (what ``measure`` does since v22), a 4096^3 fp16 GEMM (cuBLAS' tiles
fill most of an SM's shared memory; it also stands in for the cuBLAS baseline's timing), and the GEMM again with
the context's cache preference set to L1 (``cuCtxSetCacheConfig``). ``e2e``: ``benchmarks/e2e/run.py``'s measure
of one artifact after setting the context's preference (``--cache-config``: none, shared, l1 or equal)."""
import argparse
import ctypes
import json
import sys
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks/e2e"))
CACHE_CONFIGS = {"none": 0, "shared": 1, "l1": 2, "equal": 3}  # CUfunc_cache


def set_cache_config(config: int) -> None:
    """The current context's preference (created and made current by a first CUDA call before this)."""
    rc = ctypes.CDLL("libcuda.so.1").cuCtxSetCacheConfig(ctypes.c_int(config))
    if rc:
        raise RuntimeError(f"cuCtxSetCacheConfig({config}) returned CUresult {rc}")


def kernels(args) -> dict:
    import torch

    from sqcompile.kernels import measure
    from sqcompile.kernels.export import load_export
    tvm, manifest, lib = load_export(args.folder, torch)
    a = torch.randn(4096, 4096, dtype=torch.float16, device="cuda")
    original = torch.nn.functional.linear
    rows = []
    for i, cfg in enumerate(manifest["configs"][:2]):  # 4096x4096 dense and +0.45%
        cands = [c for c in cfg["candidates"] if c["knobs"]["reg_words"]]
        for trial in range(3):
            for before in ("cublas_gemv", "gemm", "gemm_prefer_l1"):
                set_cache_config(CACHE_CONFIGS["l1" if before.endswith("prefer_l1") else "none"])
                if before.startswith("gemm"):  # the GEMV that measure_config runs before each candidate, replaced
                    torch.nn.functional.linear = lambda x, w: a @ a
                try:
                    res = asdict(measure.measure_config(torch, tvm, lib, {**cfg, "candidates": cands}, i))
                finally:
                    torch.nn.functional.linear = original
                for c in res["candidates"]:
                    rows.append({"n": cfg["n"], "sparse": cfg["sparse"], "trial": trial, "before": before,
                                 "knobs": c["knobs"], "us": c["us"]})
                print(cfg["sparse"], trial, before, [(c["knobs"]["rows_inner"], c["knobs"]["steps"], round(c["us"], 2))
                                                     for c in res["candidates"]], flush=True)
    set_cache_config(CACHE_CONFIGS["none"])
    return {"device": torch.cuda.get_device_name(0), "rows": rows}


def e2e(args) -> dict:
    import run  # benchmarks/e2e/run.py
    from sqcompile.runtime.loader import import_tvm, load_cuda_runtime
    tvm = import_tvm()
    load_cuda_runtime(tvm)
    tvm.runtime.empty((1,), "float16", tvm.cuda(0))  # the context, current on this thread
    set_cache_config(CACHE_CONFIGS[args.cache_config])
    return {"artifact": str(args.folder), "cache_config": args.cache_config, **run.measure_ours(args.folder)}


parser = argparse.ArgumentParser()
parser.add_argument("what", choices=("kernels", "e2e"))
parser.add_argument("folder", type=Path)
parser.add_argument("--cache-config", choices=tuple(CACHE_CONFIGS), default="none",
                    help="e2e: the context's cache preference before the artifact loads")
parser.add_argument("--out", type=Path, required=True)
args = parser.parse_args()
doc = kernels(args) if args.what == "kernels" else e2e(args)
args.out.write_text(json.dumps(doc, indent=1))
print(json.dumps({k: v for k, v in doc.items() if k != "rows"}))
