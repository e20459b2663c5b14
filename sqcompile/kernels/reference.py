"""Random quantized weights and the float64 reference the kernel checks compare against (numpy only, so the
GPU host's check script can use it without TVM)."""
from __future__ import annotations

import numpy as np

from ..quant.format import CSR, QuantizedWeight, pack_codes


def random_weight(n: int, k: int, bits: int, density: float, rng: np.random.Generator) -> QuantizedWeight:
    """Random codes, a random sorted per-row LUT and a random CSR part with about ``density * n * k`` nonzeros."""
    codes = rng.integers(0, 1 << bits, size=(n, k))
    lut = np.sort(rng.standard_normal((n, 1 << bits)), axis=1).astype(np.float16)
    nnz = int(round(density * n * k))
    flat = rng.choice(n * k, size=nnz, replace=False) if nnz else np.zeros(0, np.int64)
    sparse = CSR.from_coo(n, flat // k, flat % k, rng.standard_normal(nnz).astype(np.float16))
    w = QuantizedWeight(bits, n, k, pack_codes(codes, bits), lut, sparse)
    w.validate()
    return w


def reference(x: np.ndarray, w: QuantizedWeight) -> np.ndarray:
    """``x @ W.T`` in float64 for the weight the kernel computes with (dense LUT part + sparse part)."""
    return x.astype(np.float64) @ w.dequantize().astype(np.float64).T


def rel_error(out: np.ndarray, ref: np.ndarray) -> float:
    """‖out − ref‖ / ‖ref‖; NaN or inf anywhere gives inf, so poisoned (unwritten) outputs fail."""
    out = out.astype(np.float64)
    if not np.all(np.isfinite(out)):
        return float("inf")
    return float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-30))


def kernel_args(x: np.ndarray, w: QuantizedWeight, sparse: bool, gemm: bool) -> list[np.ndarray]:
    """The kernel's inputs in parameter order (the output comes last, allocated by the caller); a sparse GEMM
    also takes the nonzeros per tile (``layout.takes_tiles``)."""
    args = [x, w.qweight, w.lut]
    if sparse:
        args += [w.sparse.rowptr, w.sparse.col, w.sparse.val]
    if sparse and gemm:
        args.append(w.sparse_tiles())
    return args
