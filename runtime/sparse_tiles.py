"""The sparse part regrouped for the prefill GEMM: one list of nonzeros per 32 x 32 tile of the weight.

The decode GEMV walks the CSR (``sp_rowptr``, ``sp_col``, ``sp_val``) row by row. The prefill GEMM decodes
its weight tile warp by warp, each warp 32 rows x 8-64 columns of it, and has to add those weights' nonzeros
before the tensor cores read them; each thread walking its own row's CSR entries there put a divergent loop
on every K-tile's critical path (+32-70% on the 7B shapes at 0.45%). ``sp_tiles`` lists each 32 x 32 tile's
nonzeros contiguously, so that lane ``i`` of the warp that decoded the tile adds entry ``i`` (then ``i + 32``
...): one load and one add per nonzero, and only the warp has to agree that its decode is done.

Layout (uint32): ``bands * chunks + 1`` offsets, then the entries. Tile (b, c) covers rows ``[32 b, 32 b + 32)``
and columns ``[32 c, 32 c + 32)``; its entries are ``tiles[tiles[b * chunks + c] .. tiles[b * chunks + c + 1])``
(offsets count from the array's start). An entry packs the value's fp16 bits in bits 0-15, the column within
the tile in bits 16-20 and the row within the tile in bits 21-25. Positions are unique (a CSR that lists one
twice gets one entry with the sum), so no two lanes add into one weight.

Derived from the CSR when an artifact is written (or synthesized), so both the builder and the runtime host
compute it here, with numpy only.
"""
from __future__ import annotations

import numpy as np

TILE = 32  # rows and columns of a tile: a decoding warp's rows, and a divisor of the GEMM's K-tiles
COL_SHIFT, ROW_SHIFT = 16, 21


def entry_row(entry):
    """An entry's row within its tile (a Python int or a uint32 TIR expression: the kernel decodes with these)."""
    return entry >> ROW_SHIFT


def entry_col(entry):
    """An entry's column within its tile."""
    return (entry >> COL_SHIFT) % TILE


def tile_counts(n: int, k: int) -> tuple[int, int]:
    """(row bands, column chunks) of an ``n x k`` weight."""
    return -(-n // TILE), -(-k // TILE)


def tiles_length(n: int, k: int, nnz: int) -> int:
    """Length of ``sp_tiles`` for ``nnz`` distinct positions."""
    bands, chunks = tile_counts(n, k)
    return bands * chunks + 1 + nnz


def sparse_tiles(n: int, k: int, rowptr: np.ndarray, col: np.ndarray, val: np.ndarray) -> np.ndarray:
    """The ``sp_tiles`` array of the CSR part (rowptr int32 [n+1], col int32 [nnz], val float16 [nnz])."""
    bands, chunks = tile_counts(n, k)
    rows = np.repeat(np.arange(n, dtype=np.int64), np.diff(rowptr.astype(np.int64)))
    col = col.astype(np.int64)
    key = rows * k + col
    unique, where = np.unique(key, return_inverse=True)
    if len(unique) < len(key):  # a position twice: one entry with the sum (two threads must not add to one weight)
        summed = np.zeros(len(unique), np.float64)
        np.add.at(summed, where, val.astype(np.float64))
        rows, col, val = unique // k, unique % k, summed.astype(np.float16)
    tile = rows // TILE * chunks + col // TILE
    order = np.argsort(tile, kind="stable")  # CSR order (row, then column) within a tile
    counts = np.bincount(tile, minlength=bands * chunks)
    head = bands * chunks + 1
    out = np.empty(head + len(col), np.uint32)
    out[0] = head
    out[1:head] = head + np.cumsum(counts)
    bits = np.ascontiguousarray(val, np.float16).view(np.uint16).astype(np.uint32)
    out[head:] = ((rows % TILE) << ROW_SHIFT | (col % TILE) << COL_SHIFT | bits)[order].astype(np.uint32)
    return out
