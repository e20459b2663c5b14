"""GEMV schedule variants: the lane-per-row layout (``gemv_lanes.py``) and the 3-bit register table
(``reg_words``): knob handling on any host, CUDA codegen where nvcc exists. Their numerics are checked on a GPU
host (scripts/gpu_check_kernels.py): their extern CUDA calls have no llvm form (the register table's decode is
run on llvm in test_kernels.py)."""
import shutil
from dataclasses import replace

import pytest
import tvm

from sqcompile.kernels.gemv_cuda import fit_gemv_knobs
from sqcompile.kernels.gemv_lanes import cuda_lut_gemv_lanes
from sqcompile.kernels.knobs import GemvKnobs, knobs_from_dict

LANES = GemvKnobs(threads_k=128, steps=2, layout="lane_rows")


def test_layout_knob_is_checked_and_round_trips():
    with pytest.raises(ValueError, match="layout"):
        GemvKnobs(layout="diagonal").validate()
    assert knobs_from_dict("gemv", {"threads_k": 256, "layout": "lane_rows"}).layout == "lane_rows"


def test_lane_rows_falls_back_where_it_does_not_apply():
    assert fit_gemv_knobs(4096, 3, LANES) == LANES
    assert fit_gemv_knobs(4096, 4, LANES) == fit_gemv_knobs(4096, 4, GemvKnobs.default(4))
    assert fit_gemv_knobs(40000, 3, LANES).layout == "row_warps"  # x pairs past the shared-memory limit
    assert fit_gemv_knobs(4096, 3, LANES, sparse=True).layout == "row_warps"  # a dense record, a sparse shape


def test_lane_rows_rejects_sparse_and_other_bits():
    with pytest.raises(ValueError, match="dense 3-bit"):
        cuda_lut_gemv_lanes(64, 256, 3, True, "float16", LANES)
    with pytest.raises(ValueError, match="dense 3-bit"):
        cuda_lut_gemv_lanes(64, 256, 4, False, "float16", LANES)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_lane_rows_compiles_for_sm90_with_odd_shape():
    from sqcompile.kernels import lut_matmul
    t = tvm.target.Target({"kind": "cuda", "arch": "sm_90"}, host={"kind": "llvm"})
    f = lut_matmul(37, 300, 3, m=1, sparse=False, act_dtype="float16", target=t, knobs=LANES)
    with t:
        tvm.compile(tvm.IRModule({"gemv": f}), target=t)


def test_reg_words_knob_is_checked_and_dropped_where_it_does_not_apply():
    with pytest.raises(ValueError, match="reg_words"):
        GemvKnobs(reg_words=5).validate()
    reg = GemvKnobs(reg_words=4)
    assert fit_gemv_knobs(4096, 3, reg) == reg
    assert fit_gemv_knobs(4096, 4, reg) == reg
    assert fit_gemv_knobs(4096, 4, replace(reg, pairs=False)).reg_words == 0
    assert fit_gemv_knobs(4096, 2, reg).reg_words == 0  # 2 bits: no register table
    assert knobs_from_dict("gemv", {"reg_words": 2}).reg_words == 2


def test_register_table_frees_the_pair_table():
    from sqcompile.kernels.gemv_cuda import gemv_shared_bytes, row_table_words
    assert row_table_words(3, GemvKnobs()) == (64, 0)
    assert row_table_words(3, GemvKnobs(reg_words=2)) == (64, 4)
    assert row_table_words(3, GemvKnobs(reg_words=4)) == (0, 4)
    assert gemv_shared_bytes(4096, 3, GemvKnobs(reg_words=4)) < gemv_shared_bytes(4096, 3, GemvKnobs())
    assert row_table_words(4, GemvKnobs(reg_words=4)) == (0, 8)  # 16 entries: 8 words, no 256-entry table
    assert row_table_words(4, GemvKnobs(reg_words=1)) == (256, 8)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
@pytest.mark.parametrize("bits,reg_words", [(3, 2), (3, 4), (4, 4)])
def test_register_table_compiles_for_sm90_with_odd_shape(bits, reg_words):
    from sqcompile.kernels import lut_matmul
    t = tvm.target.Target({"kind": "cuda", "arch": "sm_90"}, host={"kind": "llvm"})
    f = lut_matmul(37, 300, bits, m=1, sparse=True, act_dtype="float16", target=t,
                   knobs=GemvKnobs(threads_k=64, reg_words=reg_words))
    with t:
        src = tvm.compile(tvm.IRModule({"gemv": f}), target=t).mod.imports[0].inspect_source()
    assert src.count("prmt.b32") > 0


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
@pytest.mark.parametrize("fusion", ["plain", "residual"])
def test_sparse_gemv_adds_its_nonzeros_on_a_warp_of_its_own(fusion):
    """A sparse GEMV launches one warp (``SPARSE_WARP``) beside its dense threads. They sync among themselves with
    a named barrier of their count, never with it but at the block's one ``__syncthreads`` before the rows are
    summed; the dense GEMV of the same knobs keeps its thread groups and block-wide barriers. Neither gets a
    barrier of TVM's sync planner (``SHARED_STORE``): the plain kernel has one per batch and one after the
    table fill, plus one (the residual's block sum) with that epilogue."""
    from sqcompile.kernels import lut_matmul
    from sqcompile.kernels.gemv_cuda import SPARSE_WARP, GemvFusion
    t = tvm.target.Target({"kind": "cuda", "arch": "sm_90"}, host={"kind": "llvm"})
    knobs = GemvKnobs(threads_k=64, rows_inner=2, steps=3, reg_words=4)
    fused = GemvFusion(residual=fusion == "residual")

    def source(sparse):
        f = lut_matmul(37, 300, 3, m=1, sparse=sparse, act_dtype="float16", target=t, knobs=knobs, fusion=fused)
        with t:
            return tvm.compile(tvm.IRModule({"gemv": f}), target=t).mod.imports[0].inspect_source()

    barriers = 1 + knobs.steps + (knobs.steps - 2) + fused.residual  # table fill, each batch, each refill, epilogue
    sparse = source(True)
    assert f"__launch_bounds__({64 + SPARSE_WARP})" in sparse
    assert sparse.count("bar.sync 1, 64;") == barriers and sparse.count("__syncthreads()") == 1
    assert "atomicAdd" not in sparse and "__syncwarp()" in sparse  # each sparse lane adds into sums of its own
    dense = source(False)
    assert "__launch_bounds__(64)" in dense and "bar.sync" not in dense
    assert dense.count("__syncthreads()") == barriers + 1


def test_sparse_gemv_counts_its_warp_and_shared_sums():
    """A sparse GEMV's shared memory holds the block's row pointers and 32 lanes' sums per row, and its block the
    sparse warp besides the dense threads: knobs that leave it no room are refused, not launched."""
    from sqcompile.kernels import lut_matmul
    from sqcompile.kernels.gemv_cuda import SPARSE_WARP, gemv_shared_bytes
    knobs = GemvKnobs(threads_k=128, rows_inner=2, steps=4)
    extra = gemv_shared_bytes(4096, 3, knobs, sparse=True) - gemv_shared_bytes(4096, 3, knobs)
    assert extra == 4 * (knobs.rows_per_block * (SPARSE_WARP + 1) + 1)
    t = tvm.target.Target({"kind": "cuda", "arch": "sm_90"}, host={"kind": "llvm"})
    full = GemvKnobs(threads_k=1024, rows_inner=1, steps=1, pairs=False)
    lut_matmul(64, 1024, 4, m=1, sparse=False, act_dtype="float16", target=t, knobs=full)  # dense: 1024 threads fit
    with pytest.raises(ValueError, match="sparse warp"):
        lut_matmul(64, 1024, 4, m=1, sparse=True, act_dtype="float16", target=t, knobs=full)
