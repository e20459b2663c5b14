"""Correctness of the CUDA kernels on a GPU host (runtime only): every candidate of an export folder against
a float64 reference on fresh random inputs, output poisoned with NaN first. Exit status 1 on any failure.

    # build host:  python -c "from sqcompile.kernels.export import export_candidates as e; e('.kbundle/check', 'sm_90', 'check')"
    # GPU host:    . .kbundle/bundle/env.sh && python3 scripts/gpu_check_kernels.py .kbundle/check
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqcompile.kernels.measure import TOLERANCE, measure_export  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="export folder (compiled modules + manifest.json)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    doc = measure_export(args.folder, time_it=False)
    failed = 0
    print(f"{doc['device']} ({doc['arch']} kernels)")
    for cfg in doc["configs"]:
        for c in cfg["candidates"]:
            ok = c["rel_err"] <= TOLERANCE
            failed += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {c['name']:<40} m={cfg['m']:<4} rel_err={c['rel_err']:.2e}")
    if args.out:
        args.out.write_text(json.dumps(doc, indent=1))
    print(f"{failed} failed of {sum(len(c['candidates']) for c in doc['configs'])}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
