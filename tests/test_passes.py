"""IR-level tests of each Relax pass, and a numeric check of what the rewritten IR computes on llvm."""
from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
from tvm import relax  # noqa: E402

from sqcompile.kernels.reference import random_weight, rel_error, reference  # noqa: E402
from sqcompile.passes import KVCacheInplace, RewriteQuantizedLinear, fuse_elementwise, model_passes  # noqa: E402
from sqcompile.passes.fuse_rms_norm import FuseRMSNorm  # noqa: E402
from sqcompile.passes.split_to_slices import SplitToSlices  # noqa: E402
from sqcompile.targets import TargetDef  # noqa: E402

LLVM = TargetDef("llvm", "generic")


def _calls(mod: tvm.IRModule, func: str = "main") -> list[str]:
    """Op names and called PrimFunc names of the bindings of ``func``, in order."""
    names = []

    def visit(expr):
        if isinstance(expr, relax.Call):
            op = expr.op
            names.append(op.name if isinstance(op, tvm.ir.Op) else op.name_hint)
            if isinstance(op, tvm.ir.Op) and op.name.startswith("relax.call_tir"):
                names.append(expr.args[0].name_hint)

    relax.analysis.post_order_visit(mod[func], visit)
    return names


def linear_module(m, k: int, n_quant: int, n_plain: int) -> tvm.IRModule:
    """main(x [m, k], wq [n_quant, k], wp [n_plain, k]) = (x @ wq.T, x @ wp.T), as the frontend emits linears."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((m, k), "float32"))
    wq = relax.Var("wq", relax.TensorType((n_quant, k), "float32"))
    wp = relax.Var("wp", relax.TensorType((n_plain, k), "float32"))
    with bb.function("main", [x, wq, wp]):
        with bb.dataflow():
            yq = bb.emit(relax.op.matmul(x, bb.emit(relax.op.permute_dims(wq, [1, 0]))))
            yp = bb.emit(relax.op.matmul(x, bb.emit(relax.op.permute_dims(wp, [1, 0]))))
            out = bb.emit_output(relax.Tuple([yq, yp]))
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("rows", [1, None])
@pytest.mark.parametrize("density", [0.0, 0.02])
def test_rewrite_quantized_linear(bits, rows, density):
    rng = np.random.default_rng(bits * 10 + (rows or 0) + int(density * 100))
    n, k, n_plain = 48, 160, 24
    m = rows if rows is not None else tvm.tirx.Var("m", "int64")
    q = random_weight(n, k, bits, density, rng)
    mod = RewriteQuantizedLinear({"wq": q}, LLVM.tvm_target())(linear_module(m, k, n, n_plain))

    params = [p.name for p in mod["main"].params]
    packed = ["wq_qweight", "wq_lut"] + (["wq_sp_rowptr", "wq_sp_col", "wq_sp_val", "wq_sp_tiles"] if density else [])
    assert params == ["x", *packed, "wp"]
    calls = _calls(mod)
    kind = "gemv" if rows == 1 else "gemm"
    kernel = [c for c in calls if c.startswith("lut_")]
    assert kernel == [f"lut_{kind}_{bits}b_{n}x{k}{'_sp' if density else ''}_float32"]
    assert calls.count("relax.matmul") == 1  # the plain weight's matmul is left alone
    assert calls.count("relax.permute_dims") == 1

    ex = tvm.compile(mod, LLVM.tvm_target())
    vm = relax.VirtualMachine(ex, tvm.cpu())
    m_run = 1 if rows == 1 else 5
    x = rng.standard_normal((m_run, k)).astype(np.float32)
    wp = rng.standard_normal((n_plain, k)).astype(np.float32)
    packed_values = [q.qweight, q.lut] + ([q.sparse.rowptr, q.sparse.col, q.sparse.val, q.sparse_tiles()]
                                          if density else [])
    yq, yp = vm["main"](*(tvm.runtime.tensor(a) for a in [x, *packed_values, wp]))
    assert rel_error(yq.numpy(), reference(x, q)) < 1e-5
    np.testing.assert_allclose(yp.numpy(), x @ wp.T, rtol=1e-5, atol=1e-5)


def test_rewrite_refuses_a_weight_used_elsewhere():
    """A quantized weight also read by a non-matmul op (e.g. a tied embedding) cannot be dropped."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 128), "float32"))
    w = relax.Var("w", relax.TensorType((32, 128), "float32"))
    with bb.function("main", [x, w]):
        with bb.dataflow():
            y = bb.emit(relax.op.matmul(x, bb.emit(relax.op.permute_dims(w, [1, 0]))))
            out = bb.emit_output(relax.Tuple([y, bb.emit(relax.op.sum(w))]))
        bb.emit_func_output(out)
    q = random_weight(32, 128, 4, 0.0, np.random.default_rng(0))
    with pytest.raises(ValueError, match="other than a matmul"):
        RewriteQuantizedLinear({"w": q}, LLVM.tvm_target())(bb.get())


def kv_module(heads: int, dim: int, tail: bool) -> tvm.IRModule:
    """main(positions [t], cache [ctx, h, d], new [t, h, d]) = sum of slice_scatter(cache, new at ctx - t (tail)
    or 0); ``positions`` is the frontend's input of that name (``ctx - t .. ctx - 1`` for exact views)."""
    ctx, t = tvm.tirx.Var("ctx", "int64"), tvm.tirx.Var("t", "int64")
    bb = relax.BlockBuilder()
    positions = relax.Var("positions", relax.TensorType((t,), "int64"))
    cache = relax.Var("cache", relax.TensorType((ctx, heads, dim), "float32"))
    new = relax.Var("new", relax.TensorType((t, heads, dim), "float32"))
    start, end = (ctx - t, ctx) if tail else (0, t)
    with bb.function("main", [positions, cache, new]):
        with bb.dataflow():
            updated = bb.emit(relax.op.slice_scatter(cache, new, start, end, 1, axis=0))
            out = bb.emit_output(relax.op.sum(updated, axis=[1, 2]))
        bb.emit_func_output(out)
    return bb.get()


def test_kv_cache_inplace_rewrites_tail_writes_only():
    mod = KVCacheInplace()(kv_module(2, 8, tail=True))
    calls = _calls(mod)
    assert "relax.call_tir_inplace" in calls and "relax.slice_scatter" not in calls
    untouched = KVCacheInplace()(kv_module(2, 8, tail=False))  # a write at row 0 is not the cache pattern
    assert "relax.slice_scatter" in _calls(untouched)


@pytest.mark.parametrize("view", [7, 12])  # exact, or rounded up to a bucket past the new rows
def test_kv_cache_inplace_writes_into_the_callers_buffer(view):
    """The new rows land at their positions in the runtime's buffer (through a view); other rows are untouched."""
    rng = np.random.default_rng(1)
    max_len, heads, dim, ctx, t = 16, 2, 8, 7, 3
    ex = tvm.compile(KVCacheInplace()(kv_module(heads, dim, tail=True)), LLVM.tvm_target())
    vm = relax.VirtualMachine(ex, tvm.cpu())
    initial = rng.standard_normal((max_len, heads, dim)).astype(np.float32)
    new = rng.standard_normal((t, heads, dim)).astype(np.float32)
    buf = tvm.runtime.tensor(initial)
    positions = tvm.runtime.tensor(np.arange(ctx - t, ctx, dtype=np.int64))
    sums = vm["main"](positions, buf._create_view((view, heads, dim)), tvm.runtime.tensor(new)).numpy()
    expected = initial.copy()
    expected[ctx - t:ctx] = new
    np.testing.assert_array_equal(buf.numpy(), expected)
    np.testing.assert_allclose(sums, expected[:view].sum(axis=(1, 2)), rtol=1e-5)


def test_fuse_elementwise_makes_rmsnorm_one_kernel():
    rng = np.random.default_rng(2)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((4, 64), "float32"))
    w = relax.Var("w", relax.TensorType((64,), "float32"))
    with bb.function("main", [x, w]):
        with bb.dataflow():
            var = bb.emit(relax.op.mean(relax.op.power(x, relax.const(2.0, "float32")), axis=[-1], keepdims=True))
            normed = bb.emit(relax.op.multiply(x, relax.op.rsqrt(relax.op.add(var, relax.const(1e-6, "float32")))))
            out = bb.emit_output(relax.op.multiply(w, normed))
        bb.emit_func_output(out)
    fused = fuse_elementwise()(bb.get())
    assert len([g for g, f in fused.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]) == 1
    ex = tvm.compile(fused, LLVM.tvm_target())
    xv, wv = rng.standard_normal((4, 64)).astype(np.float32), rng.standard_normal(64).astype(np.float32)
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(xv), tvm.runtime.tensor(wv)).numpy()
    ref = wv * xv / np.sqrt((xv.astype(np.float64) ** 2).mean(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def _prim_funcs(mod: tvm.IRModule) -> list[str]:
    return [g.name_hint for g, f in mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]


def test_fp16_rmsnorm_chain_becomes_rms_norm():
    """HF's fp16 RMSNorm (cast up, square, mean, rsqrt, scale, cast down, weight) is one rms_norm op and one
    kernel, equal to a float64 reference within fp16 rounding; a cube instead of a square is left alone."""
    rng = np.random.default_rng(3)

    def chain(power: float) -> tvm.IRModule:
        bb = relax.BlockBuilder()
        x = relax.Var("x", relax.TensorType((3, 96), "float16"))
        w = relax.Var("w", relax.TensorType((96,), "float16"))
        with bb.function("main", [x, w]):
            with bb.dataflow():
                x32 = bb.emit(relax.op.astype(x, "float32"))
                square = relax.op.power(x32, relax.const(power, "float32"))
                var = bb.emit(relax.op.mean(square, axis=[-1], keepdims=True))
                inv = bb.emit(relax.op.rsqrt(relax.op.add(var, relax.const(1e-5, "float32"))))
                normed = bb.emit(relax.op.astype(relax.op.multiply(x32, inv), "float16"))
                out = bb.emit_output(relax.op.multiply(w, normed))
            bb.emit_func_output(out)
        return bb.get()

    rewritten = FuseRMSNorm()(chain(2.0))
    assert [c for c in _calls(rewritten) if c != "relax.nn.rms_norm"] == []
    assert "relax.power" in _calls(FuseRMSNorm()(chain(3.0)))
    fused = fuse_elementwise()(chain(2.0))
    assert len(_prim_funcs(fused)) == 1
    xv = (3 * rng.standard_normal((3, 96))).astype(np.float16)
    wv = rng.standard_normal(96).astype(np.float16)
    vm = relax.VirtualMachine(tvm.compile(fused, LLVM.tvm_target()), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(xv), tvm.runtime.tensor(wv)).numpy()
    x64 = xv.astype(np.float64)
    ref = wv * x64 / np.sqrt((x64 ** 2).mean(-1, keepdims=True) + 1e-5)
    assert rel_error(got, ref) < 2e-3


def test_split_parts_become_slices_fused_into_their_consumers():
    """A split of a merged projection used part by part: no split kernel, each part's slice fused into its
    consumer, the same numbers."""
    rng = np.random.default_rng(4)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((2, 40), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            parts = bb.emit(relax.op.split(x, [16, 28], axis=-1))
            q = bb.emit(relax.op.multiply(relax.TupleGetItem(parts, 0), relax.const(2.0, "float32")))
            k = bb.emit(relax.op.negative(relax.TupleGetItem(parts, 1)))
            v = bb.emit(relax.op.exp(relax.TupleGetItem(parts, 2)))
            out = bb.emit_output(relax.Tuple([q, k, v]))
        bb.emit_func_output(out)
    calls = _calls(SplitToSlices()(bb.get()))
    assert "relax.split" not in calls and calls.count("relax.strided_slice") == 3
    fused = fuse_elementwise()(bb.get())
    assert len(_prim_funcs(fused)) == 3 and not [f for f in _prim_funcs(fused) if f == "split"]
    xv = rng.standard_normal((2, 40)).astype(np.float32)
    vm = relax.VirtualMachine(tvm.compile(fused, LLVM.tvm_target()), tvm.cpu())
    got = [t.numpy() for t in vm["main"](tvm.runtime.tensor(xv))]
    for g, r in zip(got, [2 * xv[:, :16], -xv[:, 16:28], np.exp(xv[:, 28:])]):
        np.testing.assert_allclose(g, r, rtol=1e-6)


@pytest.fixture(scope="module")
def tiny_fp16_decoder(tmp_path_factory):
    """A 2-layer fp16 Llama (GQA, 3 bits +0.45%) traced from its config: placeholder weights, real graph."""
    import argparse
    import json

    from sqcompile.driver import load_synthetic
    from sqcompile.frontend import trace_decoder

    config = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 200, "max_position_embeddings": 64,
              "tie_word_embeddings": False}
    path = tmp_path_factory.mktemp("tiny") / "config.json"
    path.write_text(json.dumps(config))
    loaded = load_synthetic(str(path), argparse.Namespace(bits=3, sparsity=0.45, include_head=False), True, "float16")
    return trace_decoder(loaded.model, loaded.quantized, max_len=32, dtype="float16", max_prefill=8)


def _graph_kernels(traced, target: TargetDef, skip: set[str]) -> dict[str, list[str]]:
    """Kernels each entry calls after the graph passes but ``skip`` (no dlight schedules: not needed here),
    named without TVM's numbering (cast3, multiply2, ...), which shifts when other kernels go."""
    import re

    skip = skip | {q.info.name for q in target.schedule_passes()}
    with target.tvm_target():
        mod = tvm.transform.Sequential([p for p in model_passes(target, traced.quantized)
                                        if p.info.name not in skip])(traced.mod)
    return {f: [re.sub(r"\d+(?=_|$)", "", c) for c in _calls(mod, f) if not c.startswith("relax.")]
            for f in ("decode", "prefill")}


def test_tiny_decode_launches_fewer_kernels(tiny_fp16_decoder):
    """The kernels a 2-layer fp16 decode step calls, with TVM's plain legalize-and-fuse and with ours: the
    RMSNorm rewrite and the split slices cut at least 5 per layer (2 x 2 norm kernels, the q/k/v split)."""
    plain = tvm.transform.Sequential([relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
                                      relax.transform.FoldConstant(), relax.transform.FuseOps(),
                                      relax.transform.FuseTIR()])

    def kernels(use_plain: bool) -> list[str]:
        passes = model_passes(LLVM, tiny_fp16_decoder.quantized)
        if use_plain:
            passes = [plain if p.info.name == "FuseElementwise" else p for p in passes]
        with LLVM.tvm_target():
            out = tvm.transform.Sequential(passes)(tiny_fp16_decoder.mod)
        return [c for c in _calls(out, "decode") if not c.startswith("relax.")]

    before, after = kernels(True), kernels(False)
    assert len(after) <= len(before) - 5 * 2, (before, after)
    assert not [k for k in after if k.startswith(("split", "power", "cast"))]


def test_gated_mlp_folds_into_the_decode_gate_up_gemv_on_cuda(tiny_fp16_decoder):
    """On CUDA, decode's SiLU(gate) * up (gate/up rows interleaved by frontend.fuse) is stored by the gate/up
    GEMV itself: one kernel fewer per layer. Prefill keeps its kernel, and llvm is left as it was."""
    from sqcompile.targets import get_target

    cuda = get_target("cuda", "sm_90")
    norm = {"FuseNormIntoGEMV"}  # its own test, below
    before = _graph_kernels(tiny_fp16_decoder, cuda, norm | {"FuseSiluIntoGEMV"})
    after = _graph_kernels(tiny_fp16_decoder, cuda, norm)
    assert len([c for c in after["decode"] if c.endswith("_m_silu")]) == 2
    assert not [c for c in after["decode"] if "sigmoid" in c] and [c for c in before["decode"] if "sigmoid" in c]
    assert len(after["decode"]) == len(before["decode"]) - 2
    assert after["prefill"] == before["prefill"]
    assert _graph_kernels(tiny_fp16_decoder, LLVM, norm) == _graph_kernels(tiny_fp16_decoder, LLVM, norm | {"FuseSiluIntoGEMV"})


def test_residual_add_and_rms_norm_fold_into_the_decode_gemvs_on_cuda(tiny_fp16_decoder):
    """On CUDA, each decode add + RMSNorm between two LUT GEMVs becomes a GEMV that adds the residual (and
    writes the weighted copy and its block sums of squares) and a GEMV that scales its rows by 1/rms; layer 0's
    norm of the embeddings and the final norm before the fp16 head keep their kernels. Prefill and llvm are
    left as they were."""
    from sqcompile.targets import get_target

    cuda = get_target("cuda", "sm_90")
    before = _graph_kernels(tiny_fp16_decoder, cuda, {"FuseNormIntoGEMV"})
    after = _graph_kernels(tiny_fp16_decoder, cuda, set())
    assert len([c for c in after["decode"] if c.endswith("_res")]) == 3
    assert len([c for c in after["decode"] if c.endswith("_rms")]) == 3
    assert len([c for c in after["decode"] if c.endswith("_silu_rms")]) == 2
    norms = [c for c in after["decode"] if c.startswith("add_rms_norm")]
    assert len(norms) == 1 and len([c for c in before["decode"] if c.startswith("add_rms_norm")]) == 4
    assert len(after["decode"]) == len(before["decode"]) - 3
    assert after["prefill"] == before["prefill"]
    assert _graph_kernels(tiny_fp16_decoder, LLVM, set()) == _graph_kernels(tiny_fp16_decoder, LLVM, {"FuseNormIntoGEMV"})


def test_residual_add_fuses_with_the_rms_norm_that_reads_it():
    """add -> rms_norm (the sum also used later, as a residual) is one add_rms_norm kernel with two outputs,
    the same numbers as the separate ops within fp16 rounding; a broadcasting add is left alone."""
    rng = np.random.default_rng(7)
    rows = tvm.tirx.Var("t", "int64")

    def layer(b_rows) -> tvm.IRModule:
        bb = relax.BlockBuilder()
        a = relax.Var("a", relax.TensorType((rows, 96), "float16"))
        b = relax.Var("b", relax.TensorType((b_rows, 96), "float16"))
        w = relax.Var("w", relax.TensorType((96,), "float16"))
        with bb.function("main", [a, b, w]):
            with bb.dataflow():
                s = bb.emit(relax.op.add(a, b))
                n = bb.emit(relax.op.nn.rms_norm(s, w, axes=[-1], epsilon=1e-5))
                out = bb.emit_output(relax.op.add(s, n))  # s has a second user, as the residual does
            bb.emit_func_output(out)
        return bb.get()

    fused = fuse_elementwise(LLVM.tvm_target())(layer(rows))
    names = _calls(fused)
    assert names.count("add_rms_norm_96_float16") == 1 and "relax.nn.rms_norm" not in names
    assert "add_rms_norm_96_float16" in _prim_funcs(fused)
    assert "add_rms_norm_96_float16" not in _prim_funcs(fuse_elementwise(LLVM.tvm_target())(layer(1)))
    av, bv = (rng.standard_normal((2, 5, 96)) * 3).astype(np.float16)
    wv = rng.standard_normal(96).astype(np.float16)
    vm = relax.VirtualMachine(tvm.compile(fused, LLVM.tvm_target()), tvm.cpu())
    got = vm["main"](*(tvm.runtime.tensor(v) for v in (av, bv, wv))).numpy()
    s = (av + bv).astype(np.float64)
    ref = s + wv * s / np.sqrt((s ** 2).mean(-1, keepdims=True) + 1e-5)
    assert rel_error(got, ref) < 2e-3


@pytest.mark.skipif(__import__("shutil").which("nvcc") is None, reason="needs nvcc")
def test_norm_kernels_compile_for_cuda():
    from sqcompile.kernels.norm import add_rms_norm, embed_rms_norm_rope
    t = tvm.target.Target({"kind": "cuda", "arch": "sm_90"}, host={"kind": "llvm"})
    for hidden, head_dim in ((576, 64), (4096, 128), (100, 10)):
        funcs = {"add": add_rms_norm(hidden, "float16", 1e-5, t),
                 "prologue": embed_rms_norm_rope(300, hidden, head_dim, "float16", 1e-5, 1.0, t)}
        with t:
            tvm.compile(tvm.IRModule({k: f.with_attr("global_symbol", k) for k, f in funcs.items()}), target=t)


@pytest.mark.parametrize("kind", ["cuda", "llvm"])
def test_prologue_is_one_kernel(tiny_fp16_decoder, kind):
    """Embedding gather, layer 0's RMSNorm and the rotary cos/sin: one kernel per call, prefill and decode, on
    both targets; without the pass they are six or seven."""
    from sqcompile.targets import get_target

    target = get_target("cuda", "sm_90") if kind == "cuda" else LLVM
    before = _graph_kernels(tiny_fp16_decoder, target, {"FusePrologue"})
    after = _graph_kernels(tiny_fp16_decoder, target, set())
    for entry in ("decode", "prefill"):
        assert [c.startswith("embed_rms_norm_rope") for c in after[entry]].count(True) == 1, after[entry]
        assert not [c for c in after[entry] if c.startswith(("take", "rms_norm")) or "cos" in c or "sin" in c]
        assert len(after[entry]) <= len(before[entry]) - 5, (before[entry], after[entry])
