"""``sqcompile tune``: search the CUDA schedule knobs per shape and store the best as tuning records.

Where a GPU is present: ``sqcompile tune --arch sm_90`` exports candidates, measures them and imports the
results. Where the build host has none, the same in three steps:
    sqcompile tune --arch sm_90 --export DIR          # build host: candidate kernels (nvcc, stub driver)
    (GPU host, runtime bundle) python3 benchmarks/kernels/run.py measure DIR --out RES
    sqcompile tune --arch sm_90 --import RES/results.json   # build host: best knobs -> targets/records/sm_90.json
``--shapes 960x576,576x576,3072x576,576x1536 --bits 3`` tunes a model's own decode GEMVs instead of Llama-2-7B's
(those four: SmolLM2-135M's, q/k/v and gate/up fused as the build fuses them).
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def import_results(docs: list[dict], folder: Path | None = None) -> Path:
    """Keep the fastest correct candidate of every measured shape as that shape's record. Several documents
    (runs of different candidate sets on the same GPU, or rounds of the same set) are pooled per shape; a
    candidate measured in several is timed by its mean, so that one lucky round does not pick it, and by none
    if any round found it wrong. Where they timed no untuned default (a run of chosen candidates), the shape
    keeps its recorded default time."""
    from sqcompile.targets.tuning import Record, load, save
    if len({d["arch"] for d in docs}) != 1:
        raise ValueError(f"results of different architectures: {sorted({d['arch'] for d in docs})}")
    recs = load(docs[0]["arch"], folder)
    pooled: dict[tuple, dict[str, list[dict]]] = {}
    for doc in docs:
        for cfg in doc["configs"]:
            key = (cfg["kind"], cfg["n"], cfg["k"], cfg["bits"], cfg["sparse"], cfg["m"])
            for c in cfg["candidates"]:
                same = pooled.setdefault(key, {}).setdefault(json.dumps(c["knobs"], sort_keys=True), [])
                same.append({**c, "device": doc.get("device", "")})
    for (kind, n, k, bits, sparse, m), by_knobs in pooled.items():
        cands = []
        for runs in by_knobs.values():
            us = [r["us"] for r in runs]
            cands.append({**runs[0], "us": None if None in us else sum(us) / len(us)})
        timed = [c for c in cands if c["us"] is not None]
        if not timed:
            continue
        best = min(timed, key=lambda c: c["us"])
        default = next((c["us"] for c in cands if c["default"] and c["us"] is not None), None)
        if default is None:
            old = recs.find(kind, n, k, bits, sparse, m)
            default = old.default_us if old else None
        recs.add(Record(kind, n, k, bits, sparse, best["knobs"], best["us"], default, m, best["device"]))
    return save(recs, folder)


def run(args: argparse.Namespace) -> int:
    if args.target != "cuda":
        raise ValueError(f"only --target cuda is tunable, got {args.target!r}")
    if args.import_results:
        path = import_results([json.loads(Path(p).read_text()) for p in args.import_results])
        log.info("tuning records written to %s", path)
        return 0
    from .export import export_candidates, parse_shapes
    from ..quant.format import check_bits
    shapes = parse_shapes(args.shapes) if args.shapes else None
    bits = tuple(check_bits(int(b)) for b in args.bits.split(","))
    if bits != (3, 4) and not shapes:
        raise ValueError("--bits picks the widths of --shapes; the Llama-2-7B set is tuned at 3 and 4 bits")
    if args.export:
        export_candidates(Path(args.export), args.arch, "benchmark", shapes=shapes, bits=bits)
        return 0
    from .cuda_host import gpu_present
    if not gpu_present():
        raise RuntimeError("no GPU here: use --export DIR, measure on the GPU host, then --import (see --help)")
    import tempfile

    from .measure import measure_export
    with tempfile.TemporaryDirectory() as tmp:
        folder = export_candidates(Path(tmp) / "candidates", args.arch, "benchmark", shapes=shapes, bits=bits)
        path = import_results([measure_export(folder)])
    log.info("tuning records written to %s", path)
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("tune", help="autotune the CUDA kernels for a GPU architecture",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="cuda", help="target kind (cuda)")
    p.add_argument("--arch", default="sm_90", help="GPU architecture, e.g. sm_80, sm_86, sm_89, sm_90")
    p.add_argument("--shapes", metavar="NxK,...", help="tune the decode GEMVs of these shapes (out x in features, "
                   "fused ones as the build fuses them, e.g. q+k+v rows) instead of the Llama-2-7B set; prefill "
                   "GEMMs keep the nearest records")
    p.add_argument("--bits", default="3,4", help="with --shapes: the bit widths to tune (default 3,4)")
    p.add_argument("--export", metavar="DIR", help="only build the candidates into DIR (no GPU needed)")
    p.add_argument("--import", dest="import_results", metavar="RESULTS_JSON", nargs="+",
                   help="turn measured results (one or more runs, pooled per shape) into targets/records/<arch>.json")
    p.set_defaults(func=run)
