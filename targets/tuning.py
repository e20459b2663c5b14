"""Per-architecture tuning records: the best schedule knobs measured on a GPU, per kernel shape.

``targets/records/<arch>.json`` holds ``{"arch", "records": [Record, ...]}``, each record with the GPU it was
measured on (an arch's records may come from several cards of it). ``lookup`` returns the
record of the exact shape, else the one of the nearest shape of the same kind and bit width (log-distance
in N and K), else None (the rule's default knobs then apply). Pure Python: no TVM needed.
"""
from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

from sqcompile.kernels.knobs import GemmKnobs, GemvKnobs, knobs_from_dict

log = logging.getLogger(__name__)
_FALLBACKS_LOGGED: set[tuple] = set()

RECORDS_DIR = Path(__file__).with_name("records")
KINDS = ("gemv", "gemm")


@dataclass
class Record:
    kind: str  # "gemv" | "gemm"
    n: int
    k: int
    bits: int
    sparse: bool
    knobs: dict
    us: float  # median time of the best knobs
    default_us: float | None = None  # median time of the default knobs, same run
    m: int | None = None  # rows of x measured (gemm)
    device: str = ""  # the GPU that measured it

    def matches(self, kind: str, bits: int) -> bool:
        return self.kind == kind and self.bits == bits


@dataclass
class Records:
    arch: str
    records: list[Record] = field(default_factory=list)

    def find(self, kind: str, n: int, k: int, bits: int, sparse: bool, m: int | None = None) -> Record | None:
        """The record of exactly this shape, at ``m`` rows if given."""
        return next((r for r in self.records if (r.kind, r.n, r.k, r.bits, r.sparse) == (kind, n, k, bits, sparse)
                     and m in (None, r.m)), None)

    def exact(self, kind: str, n: int, k: int, bits: int, sparse: bool,
              m: int | None = None) -> GemvKnobs | GemmKnobs | None:
        """The knobs recorded for exactly this shape, at ``m`` rows if given (``lookup`` falls back to the nearest
        one)."""
        rec = self.find(kind, n, k, bits, sparse, m)
        return knobs_from_dict(kind, rec.knobs) if rec else None

    def add(self, rec: Record) -> None:
        key = (rec.kind, rec.n, rec.k, rec.bits, rec.sparse, rec.m)
        self.records = [r for r in self.records if (r.kind, r.n, r.k, r.bits, r.sparse, r.m) != key] + [rec]


def records_path(arch: str, folder: Path | None = None) -> Path:
    if not arch.startswith("sm_"):
        raise ValueError(f"arch must look like sm_90, got {arch!r}")
    return (folder or RECORDS_DIR) / f"{arch}.json"


def load(arch: str, folder: Path | None = None) -> Records:
    path = records_path(arch, folder)
    if not path.is_file():
        return Records(arch)
    data = json.loads(path.read_text())
    return Records(data["arch"], [Record(**r) for r in data["records"]])


def save(recs: Records, folder: Path | None = None) -> Path:
    """Write atomically (temp file beside the target, then rename)."""
    path = records_path(recs.arch, folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    recs.records.sort(key=lambda r: (r.kind, r.bits, r.sparse, r.n, r.k, r.m or 0))
    body = {"arch": recs.arch, "records": [asdict(r) for r in recs.records]}
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(body, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)
    return path


@lru_cache(maxsize=None)
def _cached(arch: str) -> Records:
    return load(arch)


def lookup(arch: str, kind: str, n: int, k: int, bits: int, sparse: bool,
           m: int | None = None) -> GemvKnobs | GemmKnobs | None:
    """Knobs for a shape (``m``: rows of x, GEMMs) from the committed records of ``arch``, the nearest one where
    none is exact, or None when there are none."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    candidates = [r for r in _cached(arch).records if r.matches(kind, bits)]
    if not candidates:
        return None

    def distance(r: Record) -> tuple[float, bool]:
        rows = abs(math.log(r.m / m)) if m and r.m else 0.0
        return abs(math.log(r.n / n)) + abs(math.log(r.k / k)) + rows, r.sparse != sparse

    nearest = min(candidates, key=distance)
    if kind == "gemv" and (nearest.n, nearest.k, nearest.sparse) != (n, k, sparse) \
            and (arch, n, k, bits, sparse) not in _FALLBACKS_LOGGED:  # a build asks once per layer: say it once
        _FALLBACKS_LOGGED.add((arch, n, k, bits, sparse))
        log.info("%s has no record for the %d-bit%s GEMV %dx%d: it runs the knobs of %dx%d's (a far shape's schedule "
                 "can cost speed: `sqcompile tune --arch %s --shapes %dx%d` measures its own)", arch, bits,
                 " sparse" if sparse else "", n, k, nearest.n, nearest.k, arch, n, k)
    return knobs_from_dict(kind, nearest.knobs)
