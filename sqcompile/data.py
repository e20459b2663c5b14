"""Text for calibration and evaluation: read files (or a dataset where a hub is reachable), tokenize, cut
windows.

Calibration windows are random (fixed seed) spans of the token stream, as in the paper; evaluation windows
are the first non-overlapping spans of the model's context. Tokenization adds no BOS token: the text is one
stream, as in the usual WikiText protocol.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

DATASET_PREFIX = "hf:"  # "hf:NAME[:CONFIG[:SPLIT]]" names a `datasets` dataset instead of a path


def shared_data_dir() -> Path:
    """``$SQCOMPILE_DATA`` or ``../shared/data`` beside the repository (see shared/data/README.md)."""
    env = os.environ.get("SQCOMPILE_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def default_calibration() -> str:
    return str(shared_data_dir() / "austen")


def default_evaluation() -> str:
    return str(shared_data_dir() / "enwiki-sample.txt")


def text_files(spec: str) -> list[Path]:
    """A file, or every ``*.txt`` of a folder (sorted by name)."""
    path = Path(spec).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(path.glob("*.txt"))
        if not files:
            raise FileNotFoundError(f"no .txt files in {path}")
        return files
    raise FileNotFoundError(f"text not found: {path}")


def read_text(spec: str) -> str:
    """The text of a file, a folder of .txt files (joined by blank lines) or ``hf:NAME[:CONFIG[:SPLIT]]``."""
    if spec.startswith(DATASET_PREFIX):
        return _dataset_text(spec[len(DATASET_PREFIX):])
    parts = []
    for f in text_files(spec):
        try:
            parts.append(f.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise ValueError(f"{f} is not UTF-8 text: {e}") from e
    return "\n\n".join(parts)


def _dataset_text(name: str) -> str:
    try:
        import datasets  # lazily: optional, and needs a reachable hub
    except ImportError as e:
        raise ValueError(f"reading the dataset {name!r} needs the `datasets` package: pip install datasets") from e
    dataset, config, split = (name.split(":") + [None, None])[:3]
    try:
        data = datasets.load_dataset(dataset, config, split=split or "train")
    except Exception as e:  # network, unknown name: all end the same way for the user
        raise ValueError(f"cannot load dataset {name!r}: {e}") from e
    column = "text" if "text" in data.column_names else data.column_names[0]
    return "\n\n".join(str(t) for t in data[column])


def tokenize(tokenizer, text: str) -> np.ndarray:
    """Token ids (int64) of ``text`` with no special tokens added; ``tokenizer`` is a transformers
    tokenizer or a ``tokenizers.Tokenizer`` (what the thin runtime has)."""
    if callable(tokenizer):
        ids = tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    else:
        ids = tokenizer.encode(text, add_special_tokens=False).ids
    return np.asarray(ids, dtype=np.int64)


def calibration_windows(tokens: np.ndarray, n: int, length: int, seed: int = 0) -> np.ndarray:
    """``n`` random windows [n, length] of the token stream, start positions drawn with ``seed``."""
    if n < 1 or length < 2:
        raise ValueError(f"need at least 1 calibration window of at least 2 tokens, got {n} x {length}")
    if tokens.size < n * length:
        raise ValueError(f"calibration text too short: {tokens.size} tokens, need at least "
                         f"{n} x {length} = {n * length}")
    starts = np.random.default_rng(seed).integers(0, tokens.size - length + 1, size=n)
    return np.stack([tokens[s:s + length] for s in starts])


def evaluation_windows(tokens: np.ndarray, ctx: int, windows: int | None = None) -> np.ndarray:
    """The first ``windows`` non-overlapping windows [w, ctx] (all complete ones when None)."""
    if ctx < 2:
        raise ValueError(f"context must be at least 2 tokens, got {ctx}")
    available = tokens.size // ctx
    if windows is None:
        windows = available
    if windows < 1 or windows > available:
        raise ValueError(f"evaluation text has {tokens.size} tokens: {available} windows of {ctx}, "
                         f"{windows} requested")
    return tokens[: windows * ctx].reshape(windows, ctx)
