"""Rotary embedding of one token's q and k, fused with the KV-cache writes of its k and v.

After the merged q/k/v projection of a decode step, five small kernels used to follow: q's rotary, k's
rotary, v's slice and the two cache-row writes. Here one kernel reads the projection once: block ``h`` owns
head ``h`` of the concatenated [q heads, k heads, v heads], thread ``i`` its element ``i``. q heads are
rotated into a new tensor, k heads rotated into row ``positions[0]`` of the K cache, v heads copied into
that row of the V cache (both caches in place). The arithmetic is the traced graph's, in the activation
dtype: ``x * cos + rotate_half(x) * sin`` with ``rotate_half(x) = concat(-x[d/2:], x[:d/2])``.
"""
from __future__ import annotations

from functools import partial

import tvm
from tvm import tirx
from tvm.script import tirx as T

OPAQUE = 8  # relax op pattern kOpaque: FuseOps leaves the call alone


def rope_kv_write(num_heads: int, num_kv_heads: int, head_dim: int, dtype: str,
                  target: tvm.target.Target) -> tirx.PrimFunc:
    """``(qkv [1, (H + 2 Hkv) d], cos [1, 1, d], sin [1, 1, d], k_cache [ctx, Hkv, d], v_cache [ctx, Hkv, d],
    positions int64 [1], q_out [1, H, d])``; ``k_cache`` and ``v_cache`` are written in place (call it with
    ``call_tir_inplace``, inplace indices ``[-1, 3, 4]``)."""
    if head_dim % 2:
        raise ValueError(f"rotary embedding needs an even head_dim, got {head_dim}")
    if target.kind.name not in ("cuda", "llvm"):
        raise ValueError(f"no rotary + KV-write kernel for target kind {target.kind.name!r}")
    heads, nkv, d, half = num_heads, num_kv_heads, head_dim, head_dim // 2
    width = (heads + 2 * nkv) * d

    @T.macro
    def element(qkv, cos, sin, k_cache, v_cache, positions, q_out, h, i):
        if h < heads + nkv:  # q or k: rotate
            rotated = T.if_then_else(i < half, -qkv[0, h * d + i + half], qkv[0, h * d + i - half])
            if h < heads:
                q_out[0, h, i] = qkv[0, h * d + i] * cos[0, 0, i] + rotated * sin[0, 0, i]
            else:
                k_cache[positions[0], h - heads, i] = qkv[0, h * d + i] * cos[0, 0, i] + rotated * sin[0, 0, i]
        else:
            v_cache[positions[0], h - heads - nkv, i] = qkv[0, h * d + i]

    cuda = target.kind.name == "cuda"
    heads_loop = partial(T.thread_binding, thread="blockIdx.x") if cuda else T.parallel
    dim_loop = partial(T.thread_binding, thread="threadIdx.x") if cuda else T.serial

    @T.prim_func(private=True, s_tir=True)
    def rope_kv(qkv: T.Buffer((1, width), dtype), cos: T.Buffer((1, 1, d), dtype), sin: T.Buffer((1, 1, d), dtype),
                k_h: T.handle, v_h: T.handle, positions: T.Buffer((1,), "int64"), q_out: T.Buffer((1, heads, d), dtype)):
        T.func_attr({"tirx.noalias": True, "op_pattern": OPAQUE, "tirx.is_scheduled": True})
        ctx = T.int64()
        k_cache = T.match_buffer(k_h, (ctx, nkv, d), dtype)
        v_cache = T.match_buffer(v_h, (ctx, nkv, d), dtype)
        for h in heads_loop(heads + 2 * nkv):
            for i in dim_loop(d):
                element(qkv, cos, sin, k_cache, v_cache, positions, q_out, h, i)

    return rope_kv
