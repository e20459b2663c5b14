"""Replace the generic attention of one new token with the decode-attention kernels (``kernels/attention.py``).

The frontend's attention (``frontend/decoder.py``) imports as a chain of generic ops: transposed (and
broadcast) copies of the K and V cache views, two batched matmuls, the causal ``where``, softmax and casts.
Where the token count is 1 (the decode function) that chain is matched here as one pattern and becomes
one call of the decode-attention function, which reads the cache views in place and masks rows past
``positions[0]`` itself. Prefill (symbolic T) keeps the generic path, where the matmuls get tensor cores.

The match is strict: the query, key and value layouts, the permutations, the mask built from the
function's ``positions`` input and the softmax axis are all checked, and a function where nothing matches
is left as it was (logged), so an unexpected graph costs speed, never correctness. The kernels keep the
scores in float32 where the traced fp16 graph rounds them to fp16 once (torch's matmul output dtype): they
are at least as accurate as the reference path.
"""
from __future__ import annotations

import logging

import tvm
from tvm import relax
from tvm.relax.dpl import is_const, is_op, rewrite_call, wildcard

from sqcompile.kernels.attention import decode_attention, partial_slots

from .shapes import static_ints

SCALE_ATTR = "sqcompile.attention_scale"  # the score scale, on the attention functions (fuse_rope_attention.py)

log = logging.getLogger(__name__)


def _maybe(op: str, x, *extra):
    """``op(x, ...)`` or ``x`` itself: casts and broadcasts that appear only for some dtypes and shapes."""
    return is_op(op)(x, *extra) | x


class _Pattern:
    """The decoder's attention chain from the query (after rotary) to ``[1, H * d]`` before ``o_proj``."""

    def __init__(self):
        self.q, self.keys, self.values = wildcard(), wildcard(), wildcard()
        self.arange, self.positions, self.scale, self.fill = wildcard(), wildcard(), is_const(), is_const()
        self.q_split = is_op("relax.reshape")(self.q, wildcard())
        self.q_perm = is_op("relax.permute_dims")(self.q_split)
        qg = _maybe("relax.broadcast_to", is_op("relax.reshape")(self.q_perm, wildcard()), wildcard())
        self.k_perm = is_op("relax.permute_dims")(self.keys)
        scores = is_op("relax.matmul")(qg, _maybe("relax.broadcast_to", self.k_perm, wildcard()))
        scores = _maybe("relax.astype", _maybe("relax.astype", scores))
        scores = is_op("relax.reshape")(is_op("relax.multiply")(scores, self.scale), wildcard())
        self.mask = is_op("relax.less_equal")(is_op("relax.expand_dims")(self.arange),
                                              is_op("relax.expand_dims")(self.positions))
        self.softmax = is_op("relax.nn.softmax")(is_op("relax.where")(self.mask, scores, self.fill))
        probs = is_op("relax.reshape")(_maybe("relax.astype", self.softmax), wildcard())
        self.v_perm = is_op("relax.permute_dims")(self.values)
        out = is_op("relax.matmul")(_maybe("relax.broadcast_to", probs, wildcard()),
                                    _maybe("relax.broadcast_to", self.v_perm, wildcard()))
        self.o_perm = is_op("relax.permute_dims")(is_op("relax.reshape")(_maybe("relax.astype", out), wildcard()))
        self.root = is_op("relax.reshape")(self.o_perm, wildcard())


def _same_shape(a, b) -> bool:
    analyzer = tvm.sym.Analyzer()
    return len(a) == len(b) and all(analyzer.can_prove_equal(x, y) for x, y in zip(a, b))


def _axes(call: relax.Call) -> list[int]:
    return [int(a) for a in call.attrs.axes]


class _Rewriter:
    def __init__(self, mod: tvm.IRModule, target: tvm.target.Target):
        self.builder, self.target = relax.BlockBuilder(mod), target
        self.kernels: dict[tuple, tvm.ir.GlobalVar] = {}
        self.pattern = _Pattern()
        self.positions: relax.Var | None = None
        self.rewritten = 0

    def _kernel(self, heads: int, nkv: int, d: int, dtype: str, scale: float) -> tvm.ir.GlobalVar:
        key = (heads, nkv, d, dtype, scale)
        if key not in self.kernels:
            attention = decode_attention(heads, nkv, d, dtype, self.target, scale)
            self.kernels[key] = self.builder.add_func(attention.with_attr(SCALE_ATTR, scale),
                                                      f"decode_attention_{heads}x{nkv}x{d}_{dtype}")
        return self.kernels[key]

    def _why_not(self, m: dict) -> str | None:
        """The reason this match is not the decoder's decode attention, or None when it is."""
        p = self.pattern
        q, keys, values, out = m[p.q], m[p.keys], m[p.values], m[p.root]
        q_shape, out_shape = static_ints(q.ty.shape), static_ints(out.ty.shape)
        if q_shape is None or len(q_shape) != 3 or q_shape[0] != 1:
            return f"query shape {q.ty.shape} is not [1, heads, head_dim]"
        _, heads, d = q_shape
        kv = list(keys.ty.shape)
        if len(kv) != 3 or static_ints(kv[1:]) is None or not _same_shape(keys.ty.shape, values.ty.shape):
            return f"K/V shapes {keys.ty.shape}, {values.ty.shape} are not [ctx, kv_heads, head_dim]"
        nkv = int(kv[1])
        if int(kv[2]) != d or heads % nkv or keys.ty.dtype != q.ty.dtype or values.ty.dtype != q.ty.dtype:
            return "query and K/V heads, head_dim or dtypes disagree"
        if out_shape != [1, heads * d] or out.ty.dtype != q.ty.dtype:
            return f"output {out.ty.shape} is not [1, {heads * d}]"
        if (static_ints(m[p.q_split].ty.shape) != [1, nkv, heads // nkv, d] or _axes(m[p.q_perm]) != [1, 2, 0, 3]
                or _axes(m[p.k_perm]) != [1, 2, 0] or _axes(m[p.v_perm]) != [1, 0, 2]
                or _axes(m[p.o_perm]) != [2, 0, 1, 3]):
            return "query/K/V/output permutations are not the decoder's grouped layout"
        if not m[p.positions].same_as(self.positions) or not isinstance(m[p.arange], relax.Call) \
                or m[p.arange].op != tvm.ir.Op.get("relax.arange"):
            return "the mask is not arange(ctx) <= positions"
        if m[p.fill].value.numpy().size != 1 or float(m[p.fill].value.numpy().reshape(())) > -1e30:
            return "masked scores are not filled with a huge negative value"
        if int(m[p.softmax].attrs.axis) not in (-1, 3):
            return "softmax is not over the context axis"
        scale = m[p.scale].value.numpy()
        if scale.size != 1:
            return "the score scale is not a scalar"
        return None

    def _rewrite(self, _call: relax.Call, m: dict) -> relax.Expr:
        why = self._why_not(m)
        if why is not None:
            log.warning("decode attention: a candidate left on the generic path: %s", why)
            return m[self.pattern.root]
        p = self.pattern
        q, keys, values = m[p.q], m[p.keys], m[p.values]
        _, heads, d = (int(s) for s in q.ty.shape)
        nkv, dtype = int(keys.ty.shape[1]), q.ty.dtype
        scale = float(m[p.scale].value.numpy().reshape(()))
        try:
            attention = self._kernel(heads, nkv, d, dtype, scale)
        except ValueError as e:
            log.warning("decode attention: no kernel for %d/%d heads x %d (%s): %s", heads, nkv, d, dtype, e)
            return m[p.root]
        chunks = partial_slots(self.builder.get()[attention], keys.ty.shape[0])
        group = heads // nkv
        call = relax.call_tir(attention, [q, keys, values, self.positions], out_ty=[
            relax.TensorType((nkv, chunks, group, d), "float32"), relax.TensorType((nkv, chunks, group, 2), "float32"),
            relax.TensorType((1, heads * d), dtype)])
        self.rewritten += 1
        return relax.TupleGetItem(call, 2)  # the partial results o, ml are scratch

    def run(self) -> tvm.IRModule:
        for gvar, func in list(self.builder.get().functions.items()):
            if not isinstance(func, relax.Function):
                continue
            self.positions = next((p for p in func.params if p.name == "positions"), None)
            ids = next((p for p in func.params if p.name == "input_ids"), None)
            if self.positions is None or ids is None or static_ints(ids.ty.shape) != [1, 1]:
                continue  # not a one-token entry function: prefill keeps the generic attention
            before = self.rewritten
            new = rewrite_call(self.pattern.root, self._rewrite, func)
            if self.rewritten == before:
                log.warning("decode attention: no attention pattern found in %s; it keeps the generic path",
                            gvar.name_hint)
                continue
            self.builder.update_func(gvar, new)
            log.info("decode attention: %d layers of %s use the in-place kernels", self.rewritten - before,
                     gvar.name_hint)
        return self.builder.get()


@tvm.transform.module_pass(opt_level=0, name="DecodeAttention")
class DecodeAttention:
    """Rewrite the generic one-token attention into the in-place decode-attention kernels (see module doc)."""

    def __init__(self, target: tvm.target.Target):
        self.target = target

    def transform_module(self, mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        return _Rewriter(mod, target=self.target).run()
