"""The PyTorch fp16 baselines of benchmarks/e2e: a static-cache Llama decoded under a CUDA graph, and HF eager.

``StaticLlama`` is the gpt-fast recipe in a few lines: fp16 weights, a KV cache preallocated for the run's
context, one decode step captured once in a CUDA graph (``torch.cuda.graph``) and replayed with the new
token and position copied into its static inputs, so kernel-launch overhead is gone. Attention reads the
cache up to the run's length (sized per measurement: context + decode steps), as ours reads only the current
context. Weights are random N(0, 0.02): speed depends on shapes alone.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class StaticLlama:
    def __init__(self, cfg: dict, device: str = "cuda", seed: int = 0):
        g = torch.Generator(device=device).manual_seed(seed)
        self.cfg = cfg
        h, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
        self.nh, self.nkv = cfg["num_attention_heads"], cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
        self.hd = h // self.nh
        self.gqa = self.nh != self.nkv  # a plain bool: torch.compile(dynamic=True) would make the comparison symbolic
        self.eps = cfg.get("rms_norm_eps", 1e-5)

        def w(*shape):
            return (torch.randn(*shape, generator=g, device=device, dtype=torch.float16) * 0.02)

        self.embed, self.lm_head = w(v, h), w(v, h)
        self.norm = torch.ones(h, device=device, dtype=torch.float16)
        self.layers = [dict(wqkv=w((self.nh + 2 * self.nkv) * self.hd, h), wo=w(h, h), w13=w(2 * f, h), w2=w(h, f),
                            n1=torch.ones(h, device=device, dtype=torch.float16),
                            n2=torch.ones(h, device=device, dtype=torch.float16))
                       for _ in range(cfg["num_hidden_layers"])]
        inv = 1.0 / (cfg.get("rope_theta", 10000.0) ** (torch.arange(0, self.hd, 2, device=device).float() / self.hd))
        self.inv_freq = torch.cat([inv, inv])
        self.device = device

    def weight_bytes(self) -> int:
        return sum(t.numel() * 2 for layer in self.layers for t in layer.values()) + 2 * self.embed.numel() * 2

    def alloc_cache(self, length: int) -> None:
        shape = (self.nkv, length, self.hd)
        self.kv = [(torch.zeros(shape, device=self.device, dtype=torch.float16),
                    torch.zeros(shape, device=self.device, dtype=torch.float16)) for _ in self.layers]

    def _rms(self, x, w):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * w

    def _rope(self, x, pos):  # x [T, heads, hd], pos [T]
        ang = pos.float()[:, None, None] * self.inv_freq
        cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
        half = self.hd // 2
        rot = torch.cat((-x[..., half:], x[..., :half]), -1)
        return x * cos + rot * sin

    @torch.no_grad()
    def forward(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """``ids``, ``pos`` int64 [T]; writes K/V at ``pos``; attends to every cache row ``<= pos``."""
        t = ids.shape[0]
        length = self.kv[0][0].shape[1]
        mask = torch.arange(length, device=ids.device)[None, :] <= pos[:, None]  # [T, L]
        x = self.embed[ids]
        for layer, (kc, vc) in zip(self.layers, self.kv):
            y = self._rms(x, layer["n1"]) @ layer["wqkv"].T
            q, k, v = y.split([self.nh * self.hd, self.nkv * self.hd, self.nkv * self.hd], -1)
            q = self._rope(q.view(t, self.nh, self.hd), pos)
            k = self._rope(k.view(t, self.nkv, self.hd), pos)
            kc.index_copy_(1, pos, k.transpose(0, 1))
            vc.index_copy_(1, pos, v.view(t, self.nkv, self.hd).transpose(0, 1))
            o = F.scaled_dot_product_attention(q.transpose(0, 1), kc, vc, attn_mask=mask,
                                               enable_gqa=self.gqa)
            x = x + o.transpose(0, 1).reshape(t, -1) @ layer["wo"].T
            gate, up = (self._rms(x, layer["n2"]) @ layer["w13"].T).chunk(2, -1)
            x = x + (F.silu(gate) * up) @ layer["w2"].T
        return self._rms(x, self.norm) @ self.lm_head.T

    def decode_graph(self, compiled: bool = False):
        """Capture one decode step; returns ``step(token, position) -> logits`` replaying it.

        ``compiled``: the step is ``torch.compile``d first (Inductor fuses RMSNorm, rotary, SiLU-multiply and
        the residual adds into a few Triton kernels; the cache length is a dynamic dimension, so the contexts
        share one compilation), then captured the same way: gpt-fast's recipe.
        """
        forward = self.forward
        if compiled:
            forward = self._compiled = getattr(self, "_compiled", None) or torch.compile(
                self.forward, fullgraph=True, dynamic=True)
        ids = torch.zeros(1, dtype=torch.long, device=self.device)
        pos = torch.zeros(1, dtype=torch.long, device=self.device)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                forward(ids, pos)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = forward(ids, pos)

        def step(token: torch.Tensor, position: int) -> torch.Tensor:
            ids.copy_(token.view(1))
            pos.fill_(position)
            graph.replay()
            return out

        return step


def hf_eager_model(cfg: dict, device: str = "cuda"):
    """transformers' LlamaForCausalLM of ``cfg`` in fp16 with random N(0, 0.02) weights (made on the GPU)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    raw = dict(cfg)
    config = AutoConfig.for_model(raw.pop("model_type"), **raw)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float16)
    model = model.to_empty(device=device)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0, 0.02) if "norm" not in name else p.fill_(1.0)
        inner = model.model
        inner.rotary_emb = type(inner.rotary_emb)(config=config, device=device)
    return model.eval()

