"""Random weights for an artifact built with ``sqcompile build --synthetic`` (a model known by its config only).

Run where the artifact will run: ``python -m sqcompile.runtime.synthesize ARTIFACT [--seed 0]``. It writes
``weights.safetensors`` with the shapes and dtypes the manifest lists and records its sha256, so the artifact
then loads like any other. What the values are (say so when quoting speed numbers):

- quantized linears: uniformly random codes (random ``uint32`` words of the packed layout), a sorted LUT per
  row drawn from N(0, 0.02), and a CSR part with the manifest's nonzero count per matrix, spread evenly over
  rows, random distinct sorted columns, values from N(0, 0.02) (and the same nonzeros per tile, ``sparse_tiles.py``);
- RMSNorm weights 1, every other float weight N(0, 0.02).

Speed depends only on shapes and on the sparse part's distribution over rows; the text is of course noise.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path

import numpy as np

from .manifest import MANIFEST_FILE, WEIGHTS_FILE, ArtifactError, Manifest
from .sparse_tiles import sparse_tiles

log = logging.getLogger(__name__)
STD = 0.02


def _csr(n: int, k: int, nnz: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    counts = np.full(n, nnz // n, np.int64)
    counts[rng.choice(n, nnz % n, replace=False)] += 1
    rows = np.repeat(np.arange(n), counts)
    cols = rng.integers(0, k, nnz)
    while True:  # distinct columns within a row, as the quantizer's
        dup = np.ones(nnz, bool)
        dup[np.unique(rows * k + cols, return_index=True)[1]] = False
        if not dup.any():
            break
        cols[dup] = rng.integers(0, k, int(dup.sum()))
    order = np.lexsort((cols, rows))
    rowptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return {"sp_rowptr": rowptr, "sp_col": cols[order].astype(np.int32),
            "sp_val": rng.normal(0, STD, nnz).astype(np.float16)}


def random_weights(manifest: Manifest, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    modules = (manifest.quantization or {}).get("modules", {})
    out: dict[str, np.ndarray] = {}
    for name, spec in manifest.weights.items():
        module, _, suffix = name.rpartition(".")
        shape, dtype = tuple(spec["shape"]), np.dtype(spec["dtype"])
        if suffix == "qweight":
            out[name] = rng.integers(0, 1 << 32, shape, dtype=np.uint32)
        elif suffix == "lut":
            out[name] = np.sort(rng.normal(0, STD, shape), axis=1).astype(dtype)
        elif suffix == "sp_rowptr":
            n, k = shape[0] - 1, int(modules[module]["in_features"])
            csr = _csr(n, k, int(modules[module]["nnz"]), rng)
            out.update({f"{module}.{s}": v for s, v in csr.items()})
            if f"{module}.sp_tiles" in manifest.weights:
                out[f"{module}.sp_tiles"] = sparse_tiles(n, k, csr["sp_rowptr"], csr["sp_col"], csr["sp_val"])
        elif suffix in ("sp_col", "sp_val", "sp_tiles"):
            continue  # made with sp_rowptr
        elif "norm" in module:
            out[name] = np.ones(shape, dtype)
        else:
            out[name] = rng.normal(0, STD, shape).astype(dtype)
    return out


def synthesize(artifact: str | Path, seed: int = 0) -> Path:
    """Write random weights into a synthetic artifact (atomically: the file, then the manifest)."""
    from safetensors.numpy import save_file

    folder = Path(artifact).expanduser()
    manifest = Manifest.read(folder)
    if not manifest.synthetic:
        raise ArtifactError(f"{folder} holds real weights (it was not built with --synthetic); refusing to "
                            "overwrite them")
    if not manifest.weights:
        raise ArtifactError(f"{folder / MANIFEST_FILE} lists no weight shapes")
    weights = random_weights(manifest, seed)
    tmp = folder / f".{WEIGHTS_FILE}.tmp"
    save_file(weights, str(tmp))
    os.replace(tmp, folder / WEIGHTS_FILE)
    manifest.hash_files(folder)
    tmp = folder / f".{MANIFEST_FILE}.tmp"
    tmp.write_text(manifest.to_json())
    os.replace(tmp, folder / MANIFEST_FILE)
    size = (folder / WEIGHTS_FILE).stat().st_size
    log.info("wrote %s: %d tensors, %.2f GB (seed %d)", folder / WEIGHTS_FILE, len(weights), size / 1e9, seed)
    return folder / WEIGHTS_FILE


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sqcompile.runtime.synthesize", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("artifact", help="artifact folder built with `sqcompile build --synthetic`")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path = synthesize(args.artifact, args.seed)
    print(json.dumps({"weights": str(path), "bytes": path.stat().st_size}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
