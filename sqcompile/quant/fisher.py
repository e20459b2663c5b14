"""Sensitivity: the diagonal of the Fisher information of the LM loss, per weight.

``F = sum over calibration windows of (d loss_window / d W)**2``: each window is one sample, so the gradient
is squared per sample (not the square of a summed gradient). The squares are added in place by a hook that
runs as soon as a weight's gradient is complete, and the gradient is dropped right there, so the peak stays
at the model, one window's activations and the accumulators, with no per-sample copies.
"""
from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

log = logging.getLogger(__name__)


def fisher_diagonal(model: nn.Module, modules: dict[str, nn.Linear], windows: np.ndarray,
                    device: torch.device | str | None = None, progress: bool = True) -> dict[str, torch.Tensor]:
    """Accumulated squared gradients (float32, on the CPU) of each module's weight over ``windows`` [n, L].

    Only the listed weights get gradients; the model's ``requires_grad`` flags are restored afterwards.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    params = {name: m.weight for name, m in modules.items()}
    saved = {p: p.requires_grad for p in model.parameters()}
    fisher = {name: torch.zeros_like(p, dtype=torch.float32, device=device) for name, p in params.items()}
    handles = []
    model_device = next(model.parameters()).device
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for name, p in params.items():
            p.requires_grad_(True)
            handles.append(p.register_post_accumulate_grad_hook(_accumulate(fisher[name])))
        model.to(device)
        with torch.enable_grad():
            for window in tqdm(windows, desc="fisher", unit="window", disable=not progress):
                ids = torch.as_tensor(window, dtype=torch.long, device=device)[None]
                loss = model(input_ids=ids, labels=ids, use_cache=False).loss
                if not torch.isfinite(loss):
                    raise ValueError(f"the model's loss is {loss.item()} on a calibration window")
                loss.backward()
    finally:
        for h in handles:
            h.remove()
        for p, flag in saved.items():
            p.requires_grad_(flag)
            p.grad = None
        model.to(model_device)
    return {name: f.cpu() for name, f in fisher.items()}


def _accumulate(acc: torch.Tensor):
    def hook(p: torch.Tensor) -> None:
        acc.addcmul_(p.grad, p.grad)
        p.grad = None

    return hook
