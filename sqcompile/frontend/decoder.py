"""A traceable Llama-family decoder with an explicit KV cache, built from a Hugging Face model's own modules.

HF's cache classes do not import into Relax (see shared/notes/tvm-0.27-facts.md), so the layer loop is
written here with the cache as plain tensors: for each layer a K and a V tensor ``[ctx, kv_heads, head_dim]``
holding the first ``ctx`` rows of the runtime's preallocated buffer. The ``T`` new rows are written at row
``ctx - T`` with ``slice_scatter`` (which the ``kv_cache_inplace`` pass turns into an in-place write) and
attention reads all ``ctx`` rows under a causal mask. Prefill and decode are this one function with ``T``
symbolic or 1; the cost of a step grows with ``ctx``, never with the buffer's maximum length.
"""
from __future__ import annotations

import torch
from torch import nn

# model_type -> extra per-layer modules the generic loop understands (q/k/v bias is handled by nn.Linear).
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


class UnsupportedModelError(ValueError):
    """The model's architecture or one of its ops cannot be compiled; the message names both."""


def check_supported(config) -> None:
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"model type {model_type!r} is not supported by the sqcompile frontend "
            f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
    if getattr(config, "hidden_act", "silu") != "silu":
        raise UnsupportedModelError(f"model type {model_type!r}: activation {config.hidden_act!r} is not supported")


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class KVDecoder(nn.Module):
    """``forward(input_ids [1, T], positions [T], kv) -> logits [1, T, vocab]``, ``kv = [k0, v0, k1, ...]``.

    ``positions`` (int64, ``ctx - T .. ctx - 1``) is an input rather than computed from the shapes because
    TVM's FuseTIR fails on arithmetic with the symbolic scalar ``ctx - T`` (seen with TVM 0.27).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        check_supported(model.config)
        self.model = model
        cfg = model.config
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.num_layers = cfg.num_hidden_layers
        rotary = model.model.rotary_emb
        if getattr(rotary, "rope_type", "default") in ("dynamic", "longrope"):
            raise UnsupportedModelError(f"model type {cfg.model_type!r}: rope type {rotary.rope_type!r} "
                                        "(position-dependent frequencies) is not supported")
        # The model's own (possibly scaled) frequencies, duplicated for both halves of a head, so that
        # cos/sin need no concat of a tensor with itself (which TVM's FuseTIR cannot fuse).
        inv_freq = rotary.inv_freq.float()
        self.register_buffer("rope_inv_freq", torch.cat([inv_freq, inv_freq]))
        self.rope_scaling = float(getattr(rotary, "attention_scaling", 1.0))

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, kv: list[torch.Tensor]) -> torch.Tensor:
        inner = self.model.model
        t = input_ids.shape[1]
        ctx = kv[0].shape[0]
        past = ctx - t
        h = inner.embed_tokens(input_ids.reshape(-1))  # [T, hidden]; a reshape is free, `[0]` was a copy kernel
        angles = positions.float()[:, None, None] * self.rope_inv_freq  # [T, 1, head_dim]
        cos = (angles.cos() * self.rope_scaling).to(h.dtype)
        sin = (angles.sin() * self.rope_scaling).to(h.dtype)
        causal = torch.arange(ctx)[None, :] <= positions[:, None]  # [T, ctx]
        for i, layer in enumerate(inner.layers):
            h = h + self._attention(layer.self_attn, layer.input_layernorm(h), kv[2 * i], kv[2 * i + 1],
                                    cos, sin, causal, past)
            h = h + self._mlp(layer.mlp, layer.post_attention_layernorm(h))
        logits = self.model.lm_head(inner.norm(h))
        return logits[None]

    @staticmethod
    def _mlp(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if hasattr(mlp, "gate_up_proj"):  # merged by frontend.fuse, rows interleaved: gate even, up odd
            gate_up = mlp.gate_up_proj(x)
            gate, up = gate_up[..., 0::2], gate_up[..., 1::2]
            return mlp.down_proj(mlp.act_fn(gate) * up)
        return mlp(x)

    def _attention(self, attn: nn.Module, x: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                   cos: torch.Tensor, sin: torch.Tensor, causal: torch.Tensor, past) -> torch.Tensor:
        t, d, nkv = x.shape[0], self.head_dim, self.num_kv_heads
        group = self.num_heads // nkv
        if hasattr(attn, "qkv_proj"):  # merged by frontend.fuse
            q, k, v = attn.qkv_proj(x).split([self.num_heads * d, nkv * d, nkv * d], dim=-1)
        else:
            q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
        q, k, v = q.view(t, self.num_heads, d), k.view(t, nkv, d), v.view(t, nkv, d)
        if hasattr(attn, "q_norm"):  # Qwen3: per-head RMSNorm before rotary
            q, k = attn.q_norm(q), attn.k_norm(k)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        keys = torch.slice_scatter(k_cache, k, dim=0, start=past)  # [ctx, kv_heads, d]
        values = torch.slice_scatter(v_cache, v, dim=0, start=past)
        # Grouped-query attention without repeating K/V: queries of one KV head are stacked along rows.
        qg = q.view(t, nkv, group, d).permute(1, 2, 0, 3).reshape(nkv, group * t, d)
        scores = torch.matmul(qg, keys.permute(1, 2, 0)).float() * (d ** -0.5)  # [nkv, group*T, ctx]
        scores = scores.view(nkv, group, t, -1)
        scores = torch.where(causal, scores, torch.finfo(torch.float32).min)
        probs = scores.softmax(-1).to(x.dtype).view(nkv, group * t, -1)
        out = torch.matmul(probs, values.permute(1, 0, 2))  # [nkv, group*T, d]
        out = out.view(nkv, group, t, d).permute(2, 0, 1, 3).reshape(t, self.num_heads * d)
        return attn.o_proj(out)
