"""Decode attention: the kernels (llvm) against a float64 reference, and the pass that puts them in the graph."""
from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
from tvm import relax  # noqa: E402

from sqcompile.kernels.attention import decode_attention, partial_slots  # noqa: E402

LLVM = tvm.target.Target("llvm")


def reference(q: np.ndarray, keys: np.ndarray, values: np.ndarray, pos: int) -> np.ndarray:
    """softmax(q . K[:pos + 1] / sqrt(d)) V[:pos + 1] in float64, query head i on KV head i // group."""
    heads, d = q.shape[1:]
    group = heads // keys.shape[1]
    k, v = keys[:pos + 1].astype(np.float64), values[:pos + 1].astype(np.float64)
    out = np.empty((heads, d))
    for h in range(heads):
        s = k[:, h // group] @ q[0, h].astype(np.float64) * d ** -0.5
        w = np.exp(s - s.max())
        out[h] = (w / w.sum()) @ v[:, h // group]
    return out.reshape(1, heads * d)


def run_llvm(heads: int, nkv: int, d: int, dtype: str, q, keys, values, pos: int) -> np.ndarray:
    attention = decode_attention(heads, nkv, d, dtype, LLVM)
    ex = tvm.compile(tvm.IRModule({"attention": attention.with_attr("global_symbol", "attention")}), LLVM)
    dev, chunks, group = tvm.cpu(), int(partial_slots(attention, keys.shape[0])), heads // nkv
    o = tvm.runtime.tensor(np.full((nkv, chunks, group, d), np.nan, "float32"), dev)  # poisoned outputs
    ml = tvm.runtime.tensor(np.full((nkv, chunks, group, 2), np.nan, "float32"), dev)
    out = tvm.runtime.tensor(np.full((1, heads * d), np.nan, dtype), dev)
    ex["attention"](*(tvm.runtime.tensor(x, dev) for x in (q, keys, values, np.array([pos], "int64"))), o, ml, out)
    return out.numpy()


@pytest.mark.parametrize("heads,nkv,d,dtype,ctx,pos", [
    (9, 3, 64, "float16", 1, 0),  # one row
    (9, 3, 64, "float16", 77, 76),  # odd length, exact view
    (9, 3, 64, "float16", 256, 150),  # bucketed view: a partly and a wholly masked chunk of garbage
    (4, 4, 128, "float16", 192, 129),
    (4, 4, 128, "float32", 130, 129),
    (6, 2, 64, "float32", 64, 40),
    (4, 2, 32, "float16", 576, 530),  # past SHORT_ROWS: 64-row chunks, half the partial slots unused
    (4, 2, 32, "float32", 1024, 700),  # the same with wholly masked chunks
])
def test_kernel_matches_float64_reference(heads, nkv, d, dtype, ctx, pos):
    rng = np.random.default_rng(ctx * 31 + heads)
    q = (rng.standard_normal((1, heads, d)) * 2).astype(dtype)  # sharp softmax: errors in the max show
    keys = rng.standard_normal((ctx, nkv, d)).astype(dtype)
    values = rng.standard_normal((ctx, nkv, d)).astype(dtype)
    keys[pos + 1:], values[pos + 1:] = np.nan, np.inf  # rows past the position must never be read
    got = run_llvm(heads, nkv, d, dtype, q, keys, values, pos).astype(np.float64)
    ref = reference(q, keys, values, pos)
    err = np.linalg.norm(got - ref) / np.linalg.norm(ref)
    assert err < (2e-3 if dtype == "float16" else 1e-5), err


def test_bad_shapes_and_targets_are_refused():
    with pytest.raises(ValueError, match="multiple"):
        decode_attention(9, 2, 64, "float16", LLVM)
    with pytest.raises(ValueError, match="dtype"):
        decode_attention(4, 4, 64, "bfloat16", LLVM)
    with pytest.raises(ValueError, match="head_dim"):  # 96 / 8 lanes is not a power of two
        decode_attention(4, 4, 96, "float16", tvm.target.Target({"kind": "cuda", "arch": "sm_90a"}))
    with pytest.raises(ValueError, match="target kind"):
        decode_attention(4, 4, 64, "float16", tvm.target.Target("c"))


def test_partial_slots_follow_the_kernel():
    """The decode pass sizes the partial results by the kernel's own count: one per 32-row chunk, except where a
    CUDA block reads more rows at once than a short chunk holds (head_dim 16: 64 rows a pass)."""
    cuda = tvm.target.Target({"kind": "cuda", "arch": "sm_90a"})
    ctx = tvm.tirx.Var("ctx", "int64")
    for target, d, rows in ((LLVM, 16, 32), (cuda, 128, 32), (cuda, 64, 32), (cuda, 16, 64)):
        for rope in (False, True):
            attention = decode_attention(4, 2, d, "float16", target, rope=rope)
            assert int(partial_slots(attention, tvm.tirx.const(640, "int64"))) == 640 // rows, (target, d, rope)
            assert str(partial_slots(attention, ctx)) == f"(ctx + T.int64({rows - 1})) // T.int64({rows})"


def test_one_kernel_path_only_where_it_pays():
    """CUDA views of up to ONE_ROWS rows take one kernel where there are enough KV heads for the SMs and the
    block's per-warp sums fit the shared memory; otherwise (and on llvm) attention is always split."""
    from sqcompile.kernels.attention import ONE_ROWS, AttentionShape, _cuda_shape
    for heads, nkv, d, one in ((32, 32, 128, ONE_ROWS), (64, 16, 128, ONE_ROWS), (9, 3, 64, 0), (32, 8, 128, 0),
                               (128, 16, 128, 0)):  # the last: a group of 8 needs 64 KB of per-warp sums
        assert _cuda_shape(AttentionShape(heads, nkv, d, "float16", 1.0)).one_rows == one, (heads, nkv, d)
    cuda = tvm.target.Target({"kind": "cuda", "arch": "sm_90a"})
    assert "T.int64(512)" in decode_attention(32, 32, 128, "float16", cuda).script()
    assert "T.int64(512)" not in decode_attention(32, 32, 128, "float16", cuda, one_rows=0).script()


def _ops(func: relax.Function) -> list[str]:
    found = []
    relax.analysis.post_order_visit(func.body, lambda e: found.append(
        e.op.name if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) else
        e.op.name_hint if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.GlobalVar) else None))
    return [f for f in found if f]


def _callees(func: relax.Function) -> list[str]:
    found = []

    def visit(e):
        if isinstance(e, relax.Call) and e.op.name in ("relax.call_tir", "relax.call_tir_inplace"):
            found.append(e.args[0].name_hint)
    relax.analysis.post_order_visit(func.body, visit)
    return found


@pytest.fixture(scope="module")
def traced(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    from sqcompile.frontend.trace import trace_decoder
    from sqcompile.passes import KVCacheInplace
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    return KVCacheInplace()(trace_decoder(model, max_len=128, dtype="float16").mod)


def test_pass_puts_the_kernels_in_decode_only(traced):
    from sqcompile.passes.decode_attention import DecodeAttention
    mod = DecodeAttention(LLVM)(traced)
    decode, prefill = _ops(mod["decode"]), _ops(mod["prefill"])
    callees = _callees(mod["decode"])
    assert sum(c.startswith("decode_attention") for c in callees) == 2  # one per layer
    assert "relax.nn.softmax" not in decode and "relax.where" not in decode
    assert "relax.broadcast_to" not in decode  # no transposed/broadcast copies of the cache
    assert "relax.nn.softmax" in prefill  # prefill stays on the generic (tensor-core) path


def test_pass_leaves_an_unknown_graph_alone(traced, caplog):
    """A softmax over another axis is not the decoder's attention: the function must come back unchanged."""
    from sqcompile.passes.decode_attention import DecodeAttention

    from tvm.relax.expr_functor import PyExprMutator, mutator

    @mutator
    class OtherAxis(PyExprMutator):
        def visit_call_(self, call):
            call = super().visit_call_(call)
            if isinstance(call.op, tvm.ir.Op) and call.op.name == "relax.nn.softmax":
                return relax.op.nn.softmax(call.args[0], axis=2)
            return call

    mod = traced.clone()
    mod["decode"] = OtherAxis().visit_expr(mod["decode"])
    with caplog.at_level("WARNING"):
        out = DecodeAttention(LLVM)(mod)
    assert "softmax is not over the context axis" in caplog.text
    assert not any(c.startswith("decode_attention") for c in _callees(out["decode"]))
    assert "relax.nn.softmax" in _ops(out["decode"])


def test_cuda_kernels_build_for_sm90_without_a_gpu(tmp_path):
    """The export the GPU check loads: 7B, SmolLM2 and GQA-8 shapes at every chunk, one sm_90a fatbin."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from sqcompile.kernels.cuda_host import cuda_build_env
    try:
        env = cuda_build_env()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    if not shutil.which("gcc") and not shutil.which("cc"):
        pytest.skip("no C compiler for the driver stub")
    script = Path(__file__).resolve().parent.parent / "scripts" / "gpu_check_attention.py"
    subprocess.run([sys.executable, str(script), "export", str(tmp_path / "attn"), "--arch", "sm_90a"], env=env,
                   check=True, capture_output=True)
    assert (tmp_path / "attn" / "kernels.so").stat().st_size > 0
    assert (tmp_path / "attn" / "manifest.json").is_file()


def test_rotary_and_kv_writes_fuse_in_decode_only(traced):
    """q/k rotary, v's slice and both cache writes of a decode layer are one rope_kv_write call; prefill keeps
    the generic ops and the row-write kernel."""
    from sqcompile.passes.fuse_rope_kv_write import FuseRopeKVWrite
    from sqcompile.passes.split_to_slices import SplitToSlices
    mod = FuseRopeKVWrite(LLVM)(SplitToSlices()(traced))
    decode, prefill = _callees(mod["decode"]), _callees(mod["prefill"])
    assert sum(c.startswith("rope_kv_write") for c in decode) == 2  # one per layer
    assert not any(c.startswith("kv_write_rows") for c in decode)
    assert "relax.concat" not in _ops(mod["decode"])
    assert sum(c.startswith("kv_write_rows") for c in prefill) == 4


def test_rotary_folds_into_the_attention_kernel_in_decode_only(traced):
    """After DecodeAttention and FuseRopeKVWrite, each decode layer's rope_kv_write call folds into its partial
    attention call (one call_tir_inplace per layer, the plain attention gone); prefill is untouched."""
    from sqcompile.passes.decode_attention import DecodeAttention
    from sqcompile.passes.fuse_rope_attention import FuseRopeAttention
    from sqcompile.passes.fuse_rope_kv_write import FuseRopeKVWrite
    from sqcompile.passes.split_to_slices import SplitToSlices
    before = FuseRopeKVWrite(LLVM)(SplitToSlices()(DecodeAttention(LLVM)(traced)))
    after = FuseRopeAttention(LLVM)(before)
    decode = _callees(after["decode"])
    assert sum(c.endswith("_rope") for c in decode) == 2  # one per layer
    assert not any(c.startswith("rope_kv_write") or c.endswith("_float16") for c in decode)
    assert _callees(after["prefill"]) == _callees(before["prefill"])
    assert not any(g.name_hint.startswith("rope_kv_write") for g in after.get_global_vars())  # dead kernels dropped


def test_rope_kv_write_kernel_matches_numpy():
    """The fused kernel against the graph's own arithmetic (fp16 products and sum), caches written at the
    position only."""
    from sqcompile.kernels.rope import rope_kv_write
    rng = np.random.default_rng(5)
    heads, nkv, d, ctx, pos = 4, 2, 16, 7, 5
    qkv = rng.standard_normal((1, (heads + 2 * nkv) * d)).astype(np.float16)
    cos, sin = (rng.standard_normal((2, 1, 1, d))).astype(np.float16)
    caches = [np.full((ctx, nkv, d), 7, np.float16) for _ in range(2)]
    f = rope_kv_write(heads, nkv, d, "float16", LLVM)
    lib = tvm.compile(tvm.IRModule({"main": f.with_attr("global_symbol", "main")}), target=LLVM)
    args = [tvm.runtime.tensor(a) for a in (qkv, cos, sin, *caches, np.array([pos], np.int64),
                                              np.zeros((1, heads, d), np.float16))]
    lib["main"](*args)
    x = qkv.reshape(heads + 2 * nkv, d)
    rotated = np.concatenate([-x[:, d // 2:], x[:, :d // 2]], axis=1)
    ref = x * cos[0, 0] + rotated * sin[0, 0]  # fp16 throughout, as traced
    np.testing.assert_allclose(args[6].numpy()[0], ref[:heads], rtol=1e-3, atol=1e-3)
    k_out, v_out = args[3].numpy(), args[4].numpy()
    np.testing.assert_allclose(k_out[pos], ref[heads:heads + nkv], rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(v_out[pos], x[heads + nkv:])
    assert (np.delete(k_out, pos, axis=0) == 7).all() and (np.delete(v_out, pos, axis=0) == 7).all()


@pytest.mark.parametrize("heads,nkv,d,dtype,ctx,pos", [(9, 3, 64, "float16", 130, 77), (4, 4, 32, "float32", 64, 0),
                                                     (4, 2, 32, "float32", 640, 600)])
def test_rope_partial_equals_rope_then_partial(heads, nkv, d, dtype, ctx, pos):
    """The attention with the rotary folded in (``rope=True``) gives the same chunks and output as
    rope_kv_write followed by the plain attention, and writes the same cache rows: row ``pos`` only, rows past
    it never read."""
    from sqcompile.kernels.rope import rope_kv_write
    rng = np.random.default_rng(pos + d)
    qkv = rng.standard_normal((1, (heads + 2 * nkv) * d)).astype(dtype)
    cos, sin = rng.standard_normal((2, 1, 1, d)).astype(dtype)
    keys, values = rng.standard_normal((2, ctx, nkv, d)).astype(dtype)
    keys[pos:], values[pos:] = np.nan, np.inf  # row pos is written by the kernels; later rows must stay unread
    plain = decode_attention(heads, nkv, d, dtype, LLVM)
    fused = decode_attention(heads, nkv, d, dtype, LLVM, rope=True)
    chunks, group = int(partial_slots(fused, ctx)), heads // nkv
    ex = tvm.compile(tvm.IRModule({n: f.with_attr("global_symbol", n) for n, f in [
        ("rope", rope_kv_write(heads, nkv, d, dtype, LLVM)), ("plain", plain), ("fused", fused)]}), LLVM)
    t = tvm.runtime.tensor
    pos_t = t(np.array([pos], np.int64))

    def outputs():
        return (t(np.full((nkv, chunks, group, d), np.nan, "float32")),
                t(np.full((nkv, chunks, group, 2), np.nan, "float32")), t(np.full((1, heads * d), np.nan, dtype)))

    k1, v1, q1 = t(keys), t(values), t(np.zeros((1, heads, d), dtype))
    ex["rope"](t(qkv), t(cos), t(sin), k1, v1, pos_t, q1)
    first = outputs()
    ex["plain"](q1, k1, v1, pos_t, *first)
    k2, v2 = t(keys), t(values)
    second = outputs()
    ex["fused"](t(qkv), t(cos), t(sin), k2, v2, pos_t, *second)
    for a, b in zip(second, first):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(k2.numpy()[:pos + 1], k1.numpy()[:pos + 1])
    np.testing.assert_array_equal(v2.numpy()[:pos + 1], v1.numpy()[:pos + 1])
    assert np.isnan(k2.numpy()[pos + 1:]).all() and np.isinf(v2.numpy()[pos + 1:]).all()
