"""Perplexity over non-overlapping windows, for any model that maps token ids to logits.

Each window of ``ctx`` tokens is scored on its own (no state carried across windows): the logits at
position t predict token t + 1, so a window contributes ``ctx - 1`` predictions. Perplexity is
``exp(mean negative log-likelihood)`` over all predictions.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from . import data

log = logging.getLogger(__name__)

LogitsFn = Callable[[np.ndarray], object]  # ids int64 [T] -> logits [T, vocab] (numpy or torch)


@dataclass
class PerplexityResult:
    perplexity: float
    nll: float  # mean negative log-likelihood (nats per token)
    predictions: int  # scored tokens: windows * (ctx - 1)
    windows: int
    ctx: int
    seconds: float

    def to_dict(self) -> dict:
        return asdict(self)


def perplexity(logits_fn: LogitsFn, token_ids: np.ndarray, ctx: int, windows: int | None = None,
               progress: bool = True) -> PerplexityResult:
    """Perplexity of ``logits_fn`` on the first ``windows`` non-overlapping ``ctx``-token windows of
    ``token_ids`` (all complete windows when None)."""
    import torch

    chunks = data.evaluation_windows(np.asarray(token_ids, dtype=np.int64), ctx, windows)
    t0 = time.perf_counter()
    total = 0.0
    for ids in tqdm(chunks, desc="perplexity", unit="window", disable=not progress):
        logits = torch.as_tensor(logits_fn(ids)).float().cpu()
        if logits.shape[0] != ctx:
            raise ValueError(f"logits_fn returned {tuple(logits.shape)} for {ctx} tokens")
        logp = torch.log_softmax(logits[:-1], dim=-1)
        nll = -logp.gather(1, torch.as_tensor(ids[1:])[:, None]).double().sum().item()
        if not math.isfinite(nll):
            raise ValueError("the model produced non-finite log-probabilities")
        total += nll
    n = len(chunks) * (ctx - 1)
    return PerplexityResult(math.exp(total / n), total / n, n, len(chunks), ctx, time.perf_counter() - t0)


def torch_logits_fn(model) -> LogitsFn:
    """Wrap a HF causal LM (on its current device) as a ``logits_fn``."""
    import torch

    device = next(model.parameters()).device

    @torch.no_grad()
    def fn(ids: np.ndarray):
        x = torch.as_tensor(ids, dtype=torch.long, device=device)[None]
        return model(input_ids=x, use_cache=False).logits[0]

    return fn


def load_for_eval(spec: str | None, rtn_bits: int | None = None, rtn_group: int | None = None):
    """``(logits_fn, tokenizer-or-None, description)`` for an artifact, a QDIR or any model spec of
    :func:`sqcompile.models.load` (optionally RTN-quantized on the fly)."""
    path = Path(spec).expanduser() if spec else None
    if path is not None and (path / "manifest.json").is_file():
        if rtn_bits:
            raise ValueError("--rtn applies to a float model, not to a compiled artifact")
        try:
            from sqcompile.runtime import Engine
        except ImportError as e:
            raise RuntimeError(f"evaluating an artifact needs sqcompile.runtime.Engine, which is not available: {e}") from e
        engine = Engine(str(path))
        return engine.logits, engine.tokenizer, f"artifact:{path}"
    if path is not None and (path / "quant_config.json").is_file():
        if rtn_bits:
            raise ValueError("--rtn applies to a float model, not to an already quantized folder")
        from .quant.storage import load_quantized

        q = load_quantized(path)
        return torch_logits_fn(q.model), q.tokenizer, f"qdir:{path}"
    from . import models

    model, tokenizer, source = models.load(spec)
    desc = source.describe()
    if rtn_bits:
        from .quant.quantize import find_linears
        from .quant.rtn import apply_rtn

        apply_rtn(find_linears(model), rtn_bits, rtn_group)
        desc += f" rtn{rtn_bits}" + (f"-g{rtn_group}" if rtn_group else "")
    return torch_logits_fn(model), tokenizer, desc
