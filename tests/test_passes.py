"""IR-level tests of each Relax pass, and a numeric check of what the rewritten IR computes on llvm."""
from __future__ import annotations

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")
from tvm import relax  # noqa: E402

from sqcompile.kernels.reference import random_weight, rel_error, reference  # noqa: E402
from sqcompile.passes import KVCacheInplace, RewriteQuantizedLinear, fuse_elementwise  # noqa: E402
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
    packed = ["wq_qweight", "wq_lut"] + (["wq_sp_rowptr", "wq_sp_col", "wq_sp_val"] if density else [])
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
    packed_values = [q.qweight, q.lut] + ([q.sparse.rowptr, q.sparse.col, q.sparse.val] if density else [])
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
    assert len([g for g, f in fused.functions.items() if isinstance(f, tvm.tirx.PrimFunc)]) < 3
    ex = tvm.compile(fused, LLVM.tvm_target())
    xv, wv = rng.standard_normal((4, 64)).astype(np.float32), rng.standard_normal(64).astype(np.float32)
    got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(xv), tvm.runtime.tensor(wv)).numpy()
    ref = wv * xv / np.sqrt((xv.astype(np.float64) ** 2).mean(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
