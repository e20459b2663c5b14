"""Shared-memory wavefront model of the decode GEMV's LUT placements (no GPU): why 3 and 4 bits take the
same time per row in v4, and what the lane-per-row layout (``lane_rows``, NOTES.md) would save.

A warp's LDS costs max over banks of the *distinct* words it touches there (equal words broadcast). Counts
are per warp and 1024 weights (32 lanes x one 32-code block each); cp.async writes of the codes count too.
Run: ``python benchmarks/kernels/bank_model.py``.
"""
from __future__ import annotations

import numpy as np

BANKS = 32
LANES = 32


def lookup_wavefronts(entries: int, trials: int = 4000, seed: int = 0) -> float:
    """Mean wavefronts of one LDS where all 32 lanes pick uniform random entries of ONE row's table."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, entries, size=(trials, LANES))
    total = 0
    for row in idx:
        total += np.bincount(np.unique(row) % BANKS, minlength=BANKS).max()
    return total / trials


def per_1024(bits: int, table_lds: int, table_cost: float, x_wavefronts: float) -> float:
    code_words = bits  # words per 32-code block: one LDS per word (conflict-free strides) + the cp.async write
    return table_lds * table_cost + 2 * code_words + x_wavefronts


def main() -> None:
    pair = lookup_wavefronts(64)
    flt = lookup_wavefronts(16)
    rows = [
        ("v4 3-bit pair table (one row per warp)", per_1024(3, 16, pair, 0.0)),
        ("v4 4-bit float table (one row per warp)", per_1024(4, 32, flt, 0.0)),
        ("lane_rows 3-bit (x pairs in registers)", per_1024(3, 16, 1.0, 0.0)),
        ("lane_rows 3-bit (x pairs: uniform LDS.128)", per_1024(3, 16, 1.0, 4.0)),
    ]
    clock, sms, weights = 1.755e9, 132, 22016 * 4096
    print(f"pair-table lookup: {pair:.2f} wavefronts, float table: {flt:.2f}")
    print(f"{'layout':46s} {'wavefronts/1024 w':>18s} {'LSU-bound us @22016x4096':>26s}")
    for name, wf in rows:
        print(f"{name:46s} {wf:18.1f} {weights / (sms * clock * 1024 / wf) * 1e6:26.1f}")


if __name__ == "__main__":
    main()
