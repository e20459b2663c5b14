"""LUT-dequant GEMV/GEMM on a GPU against fp16 cuBLAS (Llama-2-7B shapes, 3/4 bits, dense and +0.45% sparse).

Two steps, because the GPU host has no TVM compiler:
    python benchmarks/kernels/run.py build .kbundle/bench --arch sm_90 [--space 8]    # build host (nvcc)
    . .kbundle/bundle/env.sh && python3 benchmarks/kernels/run.py measure .kbundle/bench --out DIR   # GPU host
    python benchmarks/kernels/run.py report DIR/results.json                           # anywhere
``measure`` checks every candidate, times it, and writes results.json, results.md and results.png to --out
(default: this folder). "tuned" is the fastest candidate of a shape, "default" the untuned knobs.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

HERE = Path(__file__).resolve().parent


def summarize(doc: dict) -> list[dict]:
    rows = []
    for cfg in doc["configs"]:
        timed = [c for c in cfg["candidates"] if c["us"] is not None]
        best = min(timed, key=lambda c: c["us"]) if timed else None
        default = next((c for c in cfg["candidates"] if c["default"]), None)
        us = best["us"] if best else float("nan")
        rows.append({
            "kind": cfg["kind"], "m": cfg["m"], "n": cfg["n"], "k": cfg["k"], "bits": cfg["bits"],
            "sparse": cfg["sparse"], "us": us, "default_us": default["us"] if default else None,
            "cublas_us": cfg["cublas_us"], "bytes": cfg["weight_bytes"],
            "tbps": cfg["weight_bytes"] / (us * 1e-6) / 1e12, "speedup": cfg["cublas_us"] / us,
            "pct_copy": 100 * cfg["weight_bytes"] / (us * 1e-6) / 1e12 / doc["copy_tbps"] if doc["copy_tbps"] else None,
            "best_knobs": best["knobs"] if best else None,
            "max_rel_err": max(c["rel_err"] for c in cfg["candidates"]),
            "failed": sum(c["rel_err"] > 1e-2 for c in cfg["candidates"]),
        })
    return rows


def markdown(doc: dict, rows: list[dict]) -> str:
    lines = [f"# LUT-dequant kernels on {doc['device']} ({doc['arch']})", "",
             f"Device copy bandwidth in the same run: {doc['copy_tbps']:.2f} TB/s. Times are medians of CUDA-graph "
             "replays over weight copies rotated past L2; bytes = packed codes + LUT + CSR (GEMMs: + the "
             "same nonzeros per 32 x 32 tile, which they read instead).", "",
             "| kind | m x N x K | bits | sparse | ours us | untuned us | cuBLAS fp16 us | MB | TB/s | % copy | x fp16 | failed |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        du = f"{r['default_us']:.2f}" if r["default_us"] else "-"
        pc = f"{r['pct_copy']:.0f}" if r["pct_copy"] is not None else "-"
        lines.append(f"| {r['kind']} | {r['m']}x{r['n']}x{r['k']} | {r['bits']} | {'0.45%' if r['sparse'] else '-'} | "
                     f"{r['us']:.2f} | {du} | {r['cublas_us']:.2f} | {r['bytes'] / 1e6:.1f} | {r['tbps']:.2f} | {pc} | "
                     f"{r['speedup']:.2f} | {r['failed']} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    gemv = [r for r in rows if r["kind"] == "gemv"]
    labels = [f"{r['n']}x{r['k']}\n{r['bits']}b{' sp' if r['sparse'] else ''}" for r in gemv]
    fig, ax = plt.subplots(figsize=(max(8, len(gemv) * 0.6), 4))
    ax.bar(range(len(gemv)), [r["speedup"] for r in gemv])
    ax.set_xticks(range(len(gemv)), labels, fontsize=6)
    ax.set_ylabel("speed-up over fp16 cuBLAS GEMV")
    ax.axhline(1, color="k", lw=0.5)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def report(doc: dict, out: Path) -> None:
    rows = summarize(doc)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({**doc, "summary": rows}, indent=1))
    md = markdown(doc, rows)
    (out / "results.md").write_text(md)
    plot(rows, out / "results.png")
    print(md)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    b = sub.add_parser("build", help="build candidate kernels (build host, nvcc)")
    b.add_argument("folder", type=Path)
    b.add_argument("--arch", default="sm_90")
    b.add_argument("--space", type=int, default=0, help="candidates per GEMV shape (0: the whole space)")
    m = sub.add_parser("measure", help="check and time them (GPU host, runtime only)")
    m.add_argument("folder", type=Path)
    m.add_argument("--out", type=Path, default=HERE)
    r = sub.add_parser("report", help="tables and plot from a results.json")
    r.add_argument("results", type=Path)
    r.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.step == "build":
        from sqcompile.kernels.export import export_candidates
        export_candidates(args.folder, args.arch, "benchmark", args.space or None)
    elif args.step == "measure":
        from sqcompile.kernels.measure import measure_export
        report(measure_export(args.folder), args.out)
    else:
        report(json.loads(args.results.read_text()), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
