"""LUT-dequant matmul kernels against a float64 reference (llvm here; scripts/gpu_check_kernels.py runs the
CUDA rules on a GPU), plus build-only checks of the CUDA rules and the tuning records."""
from __future__ import annotations

import itertools
import shutil
from dataclasses import replace

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from sqcompile.kernels import GemmKnobs, GemvKnobs, lut_matmul  # noqa: E402
from sqcompile.kernels.gemv_cuda import GemvFusion  # noqa: E402
from sqcompile.kernels.reference import kernel_args, random_weight, reference, rel_error  # noqa: E402

LLVM = tvm.target.Target("llvm")
CUDA = tvm.target.Target({"kind": "cuda", "arch": "sm_90"}, host={"kind": "llvm"})


def run_llvm(n, k, bits, m_static, m_rows, sparse, act_dtype, seed):
    rng = np.random.default_rng(seed)
    w = random_weight(n, k, bits, 0.02 if sparse else 0.0, rng)
    x = rng.standard_normal((m_rows, k)).astype(act_dtype)
    func = lut_matmul(n, k, bits, m=m_static, sparse=sparse, act_dtype=act_dtype, target=LLVM)
    lib = tvm.compile(tvm.IRModule({"main": func}), target=LLVM)
    dev = tvm.cpu()
    y = tvm.runtime.tensor(np.full((m_rows, n), np.nan, act_dtype), dev)  # poisoned: unwritten -> NaN
    lib["main"](*[tvm.runtime.tensor(a, dev) for a in kernel_args(x, w, sparse, gemm=m_static != 1)], y)
    return rel_error(y.numpy(), reference(x, w))


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("m_static,m_rows", [(1, 1), (None, 5)])
def test_llvm_matches_float64(bits, sparse, m_static, m_rows):
    err = run_llvm(37, 300, bits, m_static, m_rows, sparse, "float16", seed=bits * 10 + sparse)
    assert err < 1e-2


def test_llvm_float32_activations_and_aligned_shape():
    assert run_llvm(64, 256, 3, None, 2, True, "float32", seed=7) < 1e-5


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="bits"):
        lut_matmul(8, 8, 5, m=1, sparse=False, act_dtype="float16", target=LLVM)
    with pytest.raises(ValueError, match="act_dtype"):
        lut_matmul(8, 8, 3, m=1, sparse=False, act_dtype="int8", target=LLVM)
    with pytest.raises(ValueError, match="shared memory"):
        lut_matmul(8, 8, 3, m=1, sparse=False, act_dtype="float16", target=CUDA,
                   knobs=GemvKnobs(threads_k=1024, rows_y=1, rows_inner=4, steps=8))
    with pytest.raises(ValueError, match="multiple of 32"):
        GemvKnobs(threads_k=48).validate()


@pytest.mark.parametrize("m,n,k,act_dtype,knobs", [
    (13, 77, 300, "float16", dict(tile_m=4, chunk_k=64, threads=32, rows=2)),  # tails everywhere, 5 k-chunks
    (1, 40, 96, "float32", dict(tile_m=8, chunk_k=96, threads=32, rows=1)),  # one chunk, m < tile_m
    (9, 64, 128, "float16", dict()),  # the CUDA defaults (chunk_k clipped to k)
])
def test_csr_add_matches_float64(m, n, k, act_dtype, knobs):
    """The CUDA CSR add's TIR run on llvm (threads serial, sparse_cuda.py): y += x @ S^T in place. x columns
    no nonzero uses are NaN (a stray read poisons y), rows without nonzeros must keep y bit-exact."""
    from sqcompile.kernels.sparse_cuda import CsrKnobs, csr_add
    from sqcompile.quant.format import CSR
    rng = np.random.default_rng(m * 1000 + n)
    s = np.where(rng.random((n, k)) < 0.04, rng.standard_normal((n, k)).astype(np.float16), 0).astype(np.float64)
    s[rng.integers(0, n, 3)] = 0  # a few empty rows
    rows, cols = np.nonzero(s)
    sp = CSR.from_coo(n, rows, cols, s[rows, cols].astype(np.float16))
    x = rng.standard_normal((m, k)).astype(act_dtype)
    x[:, ~s.any(axis=0)] = np.nan
    y0 = rng.standard_normal((m, n)).astype(act_dtype)
    func = csr_add(n, k, act_dtype, CsrKnobs(**knobs), emulate=True)
    lib = tvm.compile(tvm.IRModule({"main": func}), target=LLVM)
    dev = tvm.cpu()
    y = tvm.runtime.tensor(y0, dev)
    lib["main"](*[tvm.runtime.tensor(a, dev) for a in (x, sp.rowptr, sp.col, sp.val)], y)
    ref = y0.astype(np.float64) + np.nan_to_num(x.astype(np.float16).astype(np.float64)) @ s.T  # x staged as fp16
    out = y.numpy()
    assert rel_error(out, ref) < (1e-3 if act_dtype == "float16" else 1e-6)
    empty = ~s.any(axis=1)
    assert empty.any() and np.array_equal(out[:, empty], y0[:, empty])


def test_csr_add_knobs_are_checked():
    from sqcompile.kernels.sparse_cuda import CsrKnobs
    with pytest.raises(ValueError, match="multiple of 32"):
        CsrKnobs(threads=48).validate()
    with pytest.raises(ValueError, match="shared memory"):
        CsrKnobs(tile_m=16, chunk_k=4096).validate()


@pytest.mark.parametrize("m", [1, None])
def test_cuda_rules_are_marked_scheduled(m):
    func = lut_matmul(100, 1000, 3, m=m, sparse=True, act_dtype="float16", target=CUDA)
    assert func.attrs["tirx.is_scheduled"]


def _is_mma(func) -> bool:
    return "mma.sync.aligned.m16n8k16" in func.script()


def _is_wgmma(func) -> bool:
    return "wgmma.mma_async" in func.script()


def test_prefill_rule_choice():
    """The mma rule where it applies (sm_80+, 3/4 bits, fp16, K % 8 == 0); dlight's tensor-core rule elsewhere."""
    sm80 = tvm.target.Target({"kind": "cuda", "arch": "sm_80"}, host={"kind": "llvm"})
    sm75 = tvm.target.Target({"kind": "cuda", "arch": "sm_75"}, host={"kind": "llvm"})
    for bits, sparse in ((3, False), (3, True), (4, True)):
        assert _is_mma(lut_matmul(96, 1000, bits, m=None, sparse=sparse, act_dtype="float16", target=CUDA))
    assert _is_mma(lut_matmul(96, 1000, 4, m=7, sparse=False, act_dtype="float16", target=sm80))
    for n, k, bits, act, target in ((96, 1000, 2, "float16", CUDA), (96, 1004, 3, "float16", CUDA),
                                    (96, 1000, 3, "float32", CUDA), (96, 1000, 3, "float16", sm75)):
        func = lut_matmul(n, k, bits, m=None, sparse=True, act_dtype=act, target=target)
        assert not _is_mma(func) and func.attrs["tirx.is_scheduled"]
    wmma = lut_matmul(96, 1000, 3, m=None, sparse=False, act_dtype="float16", target=CUDA,
                      knobs=GemmKnobs(rule="wmma"))
    assert not _is_mma(wmma)


def test_wgmma_rule_choice(monkeypatch):
    """sm_90 builds as sm_90a, whose untuned prefill rule is wgmma (the short-prompt kernel beside it stays mma);
    without the ``a`` features wgmma knobs fall back to the mma rule; explicit mma knobs are kept."""
    from sqcompile.kernels.gemm_mma import WGMMA_KNOBS
    from sqcompile.targets import tuning
    from sqcompile.targets.registry import get_target
    monkeypatch.setattr(tuning, "lookup", lambda *args: None)  # the untuned defaults, whatever the records say
    sm90a = get_target("cuda", "sm_90").tvm_target()
    assert str(sm90a.attrs["arch"]) == "sm_90a"
    for bits, sparse in ((3, False), (3, True), (4, True)):
        func = lut_matmul(96, 1000, bits, m=None, sparse=sparse, act_dtype="float16", target=sm90a)
        assert _is_wgmma(func) and _is_mma(func)
    assert not _is_wgmma(lut_matmul(96, 1000, 3, m=7, sparse=False, act_dtype="float16", target=sm90a))
    assert not _is_wgmma(lut_matmul(96, 1000, 2, m=None, sparse=False, act_dtype="float16", target=sm90a))
    assert not _is_wgmma(lut_matmul(96, 1000, 3, m=None, sparse=False, act_dtype="float16", target=sm90a,
                                    knobs=GemmKnobs()))
    plain = lut_matmul(96, 1000, 3, m=None, sparse=False, act_dtype="float16", target=CUDA, knobs=WGMMA_KNOBS)
    assert _is_mma(plain) and not _is_wgmma(plain)


def test_weights_in_registers_needs_a_fixed_ptxas(monkeypatch, caplog):
    """The register-operand wgmma GEMM (dense or sparse) is built only with a ptxas that keeps its A registers until
    the wait (13.3 and later); with an older one the shared-operand wgmma kernel runs instead."""
    from dataclasses import replace

    from sqcompile.kernels import matmul
    from sqcompile.kernels.gemm_mma import WGMMA_KNOBS
    from sqcompile.targets.registry import get_target
    sm90a = get_target("cuda", "sm_90").tvm_target()
    registers = replace(WGMMA_KNOBS, weights_in_registers=True)
    split = replace(registers, tile_m=256, split_k=2)

    def register_operand(func) -> bool:  # the RS form: four A registers, then the x descriptor
        return "unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned long long b" in func.script()

    monkeypatch.setattr(matmul, "ptxas_keeps_wgmma_registers", lambda: True)
    dense = lut_matmul(200, 1000, 3, m=None, sparse=False, act_dtype="float16", target=sm90a, knobs=registers)
    assert register_operand(dense) and _is_wgmma(dense)
    wide = lut_matmul(200, 1000, 3, m=None, sparse=False, act_dtype="float16", target=sm90a, knobs=split).script()
    assert "m64n256k16" in wide and "clusterCtaIdx.x" in wide and "st.shared::cluster" in wide
    # x tiles by the TMA, from a tensor map the host encodes per call
    assert "tensormap_encode_tiled" in wide and "cp.async.bulk.tensor.2d" in wide
    sparse = lut_matmul(200, 1000, 3, m=None, sparse=True, act_dtype="float16", target=sm90a, knobs=split)
    assert register_operand(sparse) and "add.rn.f16x2" in sparse.script()  # the nonzeros join the A fragments
    monkeypatch.setattr(matmul, "ptxas_keeps_wgmma_registers", lambda: False)
    with caplog.at_level("WARNING"):
        old = lut_matmul(200, 1000, 4, m=None, sparse=False, act_dtype="float16", target=sm90a, knobs=registers)
        old_split = lut_matmul(200, 1000, 4, m=None, sparse=False, act_dtype="float16", target=sm90a, knobs=split)
    assert _is_wgmma(old) and not register_operand(old) and "shared-operand" in caplog.text
    assert "cp.async.bulk.tensor" not in old.script()  # the shared-operand kernel keeps its cp.async copies of x
    assert not register_operand(old_split) and "clusterCtaIdx" not in old_split.script()


def test_prompts_run_the_knobs_of_their_tier_of_rows():
    """A symbolic-m GEMM holds the short-prompt kernel and one kernel per tier of rows, picked by the call's rows; a
    static m builds only the one that fits; a tier whose knobs equal the next one's merges into it."""
    from sqcompile.kernels.gemm_mma import SHORT_ROWS, WGMMA_KNOBS, cuda_lut_gemm_mma
    medium = replace(WGMMA_KNOBS, weights_in_registers=True, split_k=2)
    split3 = replace(medium, tile_m=256, split_k=3)
    long = replace(medium, tile_m=256, split_k=2)
    tiers = ((128, medium), (256, split3))
    every = cuda_lut_gemm_mma(200, 1000, 3, None, False, long, tiers).script()
    one = {m: cuda_lut_gemm_mma(200, 1000, 3, m, False, long, tiers).script() for m in (100, 200, 512)}
    assert "m64n256k16" not in one[100] and "m64n128k16" in one[100]
    assert 'T.thread_binding(3, thread="clusterCtaIdx.x")' in one[200] and "m64n128k16" not in one[200]
    assert 'T.thread_binding(2, thread="clusterCtaIdx.x")' in one[512] and "m64n128k16" not in one[512]
    assert every.count("m64n256k16") == 2 * one[512].count("m64n256k16")  # the 256-row tiers, split 3 and 2
    assert all(f"m <= T.int64({most})" in every for most in (SHORT_ROWS, 128, 256))
    merged = cuda_lut_gemm_mma(200, 1000, 3, None, False, long, ((128, medium), (256, long))).script()
    assert "m <= T.int64(256)" not in merged and "m <= T.int64(128)" in merged
    merged = cuda_lut_gemm_mma(200, 1000, 3, None, False, long, ((128, split3), (256, split3))).script()
    assert "m <= T.int64(128)" not in merged and "m <= T.int64(256)" in merged
    unsplit = replace(long, split_k=1)
    bounded = cuda_lut_gemm_mma(200, 1000, 3, None, False, long, ((256, unsplit),)).script()
    # every register-operand kernel compares its stores against an opaque rows, the bounded tier's included
    assert "m <= T.int64(256)" in bounded
    assert bounded.count("mov.b64") == 2 and "m64n128k16" not in bounded


@pytest.mark.parametrize("tile,split_k,registers", [(256, 2, True), (256, 3, True), (256, 4, True), (128, 3, True),
                                                     (24, 3, True), (128, 2, False), (128, 4, False)])
def test_split_k_exchange_slots(tile, split_k, registers):
    """Each accumulator group has one finishing block; what every other block of the cluster stores for it lands in
    a slot of its own inside the owner's x stages, and the owner reads back exactly those slots. The groups are 8
    rows of x with the weights in registers (``tile`` = tile_m), 8 weight columns in the shared-operand kernel
    (``tile`` = tile_n)."""
    from dataclasses import replace

    from sqcompile.kernels.gemm_mma import WGMMA_KNOBS, check_mma_knobs, split_exchange_bytes, split_owner, split_slot
    knobs = replace(WGMMA_KNOBS, split_k=split_k, weights_in_registers=registers,
                    **({"tile_m": tile} if registers else {"tile_n": tile}))
    if not registers:
        check_mma_knobs(knobs)
    groups, threads = tile // 8, knobs.threads
    owners = [split_owner(i, knobs) for i in range(groups)]
    assert owners == sorted(owners) and set(owners) == set(range(split_k))
    for owner in range(split_k):
        stored = {split_slot(rank - (rank > owner), i, tid, knobs) for rank in range(split_k) if rank != owner
                  for i in range(groups) if owners[i] == owner for tid in range(threads)}
        read = {split_slot(sender, i, tid, knobs) for sender in range(split_k - 1)
                for i in range(groups) if owners[i] == owner for tid in range(threads)}
        mine = sum(o == owner for o in owners)
        assert stored == read and len(read) == (split_k - 1) * mine * threads
        assert all(s % 4 == 0 and 0 <= s and (s + 4) * 4 <= split_exchange_bytes(knobs) for s in read)


def test_split_k_knobs_are_checked():
    from dataclasses import replace

    from sqcompile.kernels.gemm_mma import WGMMA_KNOBS, check_mma_knobs
    from sqcompile.kernels.knobs import GemmKnobs
    with pytest.raises(ValueError, match="split_k"):
        GemmKnobs(split_k=2).validate()  # the mma rule does not split K
    with pytest.raises(ValueError, match="split_k"):
        replace(WGMMA_KNOBS, weights_in_registers=True, split_k=5).validate()
    with pytest.raises(ValueError, match="8-column groups"):
        check_mma_knobs(replace(WGMMA_KNOBS, tile_m=16, weights_in_registers=True, split_k=3))


def test_dlight_schedules_sm90a_as_sm90():
    """dlight's Matmul rule reads ``sm_90a`` as no tensor cores (its ``check_sm_version`` wants digits), which made
    a 7B prefill's attention matmuls SIMT; both the dlight prefill rule and the build's own dlight pass see sm_90."""
    from sqcompile.kernels.gemm_tc import dlight_target
    from sqcompile.targets.registry import get_target
    sm90a = get_target("cuda", "sm_90").tvm_target()
    assert str(dlight_target(sm90a).attrs["arch"]) == "sm_90" and dlight_target(CUDA).same_as(CUDA)
    two_bit = [lut_matmul(96, 1000, 2, m=None, sparse=False, act_dtype="float16", target=t).script()
               for t in (sm90a, CUDA)]
    assert two_bit[0] == two_bit[1]
    from sqcompile.kernels.gemm_tc import dense_matmul
    target = get_target("cuda", "sm_90")
    with sm90a:
        scheduled = target.schedule_passes()[0](tvm.IRModule({"main": dense_matmul(128, 1024, 4, "float16")}))
    assert "wmma_matrix_a" in scheduled["main"].script()  # the build's dlight pass keeps its tensor cores


def test_mma_knobs_are_checked():
    from sqcompile.kernels.gemm_mma import check_mma_knobs
    check_mma_knobs(GemmKnobs())
    bad = {"rule": GemmKnobs(rule="tensor"), "16-row": GemmKnobs(tile_m=96, warps_m=4),
           "one or two": GemmKnobs(tile_k=48), "threads per weight row": GemmKnobs(tile_n=64, warps_n=4, warps_m=4),
           "2 x stages": GemmKnobs(stages=1), "shared memory": GemmKnobs(256, 256, stages=4)}
    for match, knobs in bad.items():
        with pytest.raises(ValueError, match=match):
            check_mma_knobs(knobs)
    from sqcompile.kernels.export import gemm_space
    for knobs in gemm_space("sm_90"):
        if knobs.rule in ("mma", "wgmma"):
            check_mma_knobs(knobs)
    wg = GemmKnobs(rule="wgmma", warps_m=8, warps_n=1, stages=4)
    for knobs in (replace(wg, warps_n=2, warps_m=4), replace(wg, tile_k=32), replace(wg, tile_m=96, warps_m=6),
                  replace(wg, tile_n=512)):
        with pytest.raises(ValueError, match="warpgroups of 64 rows"):
            check_mma_knobs(knobs)
    with pytest.raises(ValueError, match="shared memory"):
        check_mma_knobs(replace(wg, stages=12))


def test_prefill_configs_at_other_rows():
    """The prefill export measures the tuned rows of x by default and any others on request, dense and sparse over
    the same candidates (both wgmma kernels take a sparse weight)."""
    from sqcompile.kernels.export import prefill_configs
    from sqcompile.kernels.knobs import GEMM_TUNED_ROWS
    assert {cfg.m for cfg, _ in prefill_configs("sm_90")} == set(GEMM_TUNED_ROWS)
    configs = prefill_configs("sm_90", (160, 192))
    assert {cfg.m for cfg, _ in configs} == {160, 192} and len(configs) == 2 * 2 * 2 * 2
    for cfg, space in configs:
        assert any(kn.split_k > 1 for kn in space) and any(kn.weights_in_registers for kn in space)


def test_export_kernels_finds_each_function_in_its_part(tmp_path):
    """An export's candidates are compiled in parts (``export.PART_KERNELS`` kernels a module, so that nvcc's memory
    stays bounded); the GPU host finds a kernel by name in whichever part holds it, and in the one ``kernels.so``
    of a folder whose manifest names no parts."""
    import tvm
    from tvm.script import tirx as T

    from sqcompile.kernels.export import ExportKernels

    def const(v: float):
        @T.prim_func
        def f(a: T.Buffer((4,), "float32")):
            for i in range(4):
                a[i] = T.float32(v)
        return f

    for lib, names in (("kernels_0.so", ("one", "two")), ("kernels_1.so", ("three",)), ("kernels.so", ("old",))):
        mod = tvm.IRModule({n: const(len(n)).with_attr("global_symbol", n) for n in names})
        tvm.compile(mod, target="llvm").export_library(str(tmp_path / lib))
    kernels = ExportKernels(tvm, tmp_path, {"libs": ["kernels_0.so", "kernels_1.so"]})
    a = tvm.runtime.tensor(np.zeros(4, np.float32))
    for name in ("one", "two", "three"):
        kernels[name](a)
        assert (a.numpy() == len(name)).all()
    with pytest.raises(KeyError, match="old"):
        kernels["old"]
    ExportKernels(tvm, tmp_path, {"arch": "sm_90"})["old"](a)
    assert (a.numpy() == 3).all()


def test_check_set_names_each_kernel_once():
    """The check set lists some shapes twice (the records' tiered GEMMs beside the knobs checked alone); they are one
    config each, their candidates pooled, so that every exported kernel has a name of its own."""
    from sqcompile.kernels.export import Config, _name, check_configs
    configs = check_configs("sm_90")
    names = [_name(cfg, i) for cfg, space in configs for i in range(len(space))]
    assert len(names) == len(set(names))
    pooled = dict(configs)[Config("gemm", 4096, 11008, 3, True, 100)]
    assert None in pooled and any(kn is not None and kn.weights_in_registers for kn in pooled)


@pytest.mark.parametrize("chunks", [4, 8])
def test_mma_swizzle_is_a_conflict_free_permutation(chunks):
    """Each row's chunks permute within the row, and the eight rows an ldmatrix reads at one chunk column (or a
    warp's 16-byte stores of one chunk) sit in eight different 16-byte bank groups."""
    from sqcompile.kernels.gemm_mma import swizzled
    for row in range(64):
        assert sorted(swizzled(row, c, chunks) for c in range(chunks)) == [row * chunks + c for c in range(chunks)]
    for first in range(0, 64, 8):
        for c in range(chunks):
            assert len({swizzled(r, c, chunks) % 8 for r in range(first, first + 8)}) == 8


@pytest.mark.parametrize("knobs", [GemmKnobs(), GemmKnobs(warps_n=2), GemmKnobs(128, 64, warps_n=2),
                                   GemmKnobs(tile_k=32), GemmKnobs(64, 32, warps_m=1, warps_n=2, tile_k=32),
                                   GemmKnobs(rule="wgmma", warps_m=8, warps_n=1, stages=4),
                                   GemmKnobs(64, 128, rule="wgmma", warps_m=4, warps_n=1, stages=6),
                                   GemmKnobs(128, 256, rule="wgmma", warps_m=8, warps_n=1),
                                   pytest.param("short", id="short")])
def test_mma_decode_covers_the_weight_tile_once(knobs):
    """Thread -> (row, part) -> index words: every 16-byte chunk of the decoded tile is written by one thread."""
    from sqcompile.kernels.gemm_mma import SHORT_KNOBS, check_mma_knobs, decode_part, decode_row
    knobs = SHORT_KNOBS if knobs == "short" else knobs
    check_mma_knobs(knobs)
    threads, chunks = knobs.threads, knobs.tile_k // 8
    tpr = threads // knobs.tile_n
    iwp = chunks // tpr
    written = [(decode_row(t, tpr), decode_part(t, tpr) * iwp + j) for t in range(threads) for j in range(iwp)]
    assert sorted(written) == [(r, c) for r in range(knobs.tile_n) for c in range(chunks)]


@pytest.mark.parametrize("knobs", [GemmKnobs(), GemmKnobs(warps_n=2), GemmKnobs(128, 64, warps_n=2),
                                   GemmKnobs(tile_k=32), GemmKnobs(64, 32, warps_m=1, warps_n=2, tile_k=32),
                                   GemmKnobs(warps_m=4, warps_n=2, tile_k=32, stages=4),
                                   GemmKnobs(rule="wgmma", warps_m=8, warps_n=1, stages=4),
                                   GemmKnobs(64, 128, rule="wgmma", warps_m=4, warps_n=1, stages=6),
                                   GemmKnobs(128, 256, rule="wgmma", warps_m=8, warps_n=1),
                                   pytest.param("short", id="short")])
def test_mma_sparse_adds_each_nonzero_once_in_its_warps_part(knobs):
    """The sparse GEMM's use of ``sp_tiles`` as the kernel does it: a warp (``decode_row``/``decode_part``: 32
    rows, tile_k / tpr columns) reads the tiles its part spans, lane i every 32nd entry from i, keeping those in
    its columns. Each nonzero lands once, at its own row and column, and only in the warp that decoded that
    weight (so ``__syncwarp`` suffices); N and K are not multiples of the tiles, K-tiles run past K."""
    from sqcompile.kernels.gemm_mma import (SHORT_KNOBS, decode_part, decode_row, sparse_band,
                                            sparse_first_col)
    from sqcompile.kernels.layout import BLOCK, padded_k
    from sqcompile.runtime.sparse_tiles import TILE, entry_col, entry_row, sparse_tiles, tile_counts
    knobs = SHORT_KNOBS if knobs == "short" else knobs
    n, k = 333, 4160
    w = random_weight(n, k, 3, 0.02, np.random.default_rng(5))
    tiles = sparse_tiles(n, k, w.sparse.rowptr, w.sparse.col, w.sparse.val)
    bands, chunks = tile_counts(n, k)
    bn, bk, threads = knobs.tile_n, knobs.tile_k, knobs.threads
    tpr = threads // bn
    cpt = bk // tpr
    added = []
    for by in range(-(-n // bn)):
        for tid in range(threads):
            band, lane = sparse_band(by, tid, bn, tpr), tid % 32
            for t in range(-(-(padded_k(k) // BLOCK) // (bk // BLOCK))):
                first = sparse_first_col(tid, t, bk, tpr)
                for c in range(first // TILE, first // TILE + max(1, cpt // TILE)):
                    if band >= bands or c >= chunks:
                        continue
                    start, end = tiles[band * chunks + c], tiles[band * chunks + c + 1]
                    for e in (int(v) for v in tiles[start + lane:end:32]):
                        col = c * TILE + entry_col(e)
                        if first <= col < first + cpt:
                            row = by * bn + tid // (32 * tpr) * 32 + entry_row(e)
                            decoder = [u for u in range(tid - lane, tid - lane + 32)
                                       if decode_row(u, tpr) == row - by * bn
                                       and decode_part(u, tpr) == (col - t * bk) // cpt]
                            assert len(decoder) == 1 and row < n
                            added.append((row, col, e & 0xFFFF))
    rows = np.repeat(np.arange(n), np.diff(w.sparse.rowptr))
    assert sorted(added) == sorted(zip(rows.tolist(), w.sparse.col.tolist(), w.sparse.val.view(np.uint16).tolist()))


@pytest.mark.parametrize("tile_n", [128, 64])
def test_register_operand_sparse_slots_reach_each_nonzeros_fragment(tile_n):
    """The register-operand GEMM's use of ``sp_tiles`` as the kernel does it: its sparse warpgroup's thread p (after
    the MMA warpgroups' threads) stores every (128 / tiles)-th entry, from the (p % that)-th, of tile s = p // that
    of each K-tile (band s // 2, chunk s % 2) at ``delta_half``; the slot must be the one that the owning
    thread adds to its A register holding that weight (wgmma's layout, written out here independently), every
    nonzero once. N and K are not multiples of the tiles, K-tiles run past K."""
    from sqcompile.kernels.gemm_mma import SPARSE_THREADS, check_mma_knobs, delta_half
    from sqcompile.kernels.layout import BLOCK, padded_k
    from sqcompile.runtime.sparse_tiles import TILE, entry_col, entry_row, sparse_tiles, tile_counts
    knobs = GemmKnobs(128, tile_n, rule="wgmma", warps_m=tile_n // 16, warps_n=1, stages=4, weights_in_registers=True)
    check_mma_knobs(knobs, sparse=True)
    n, k = 333, 4160
    w = random_weight(n, k, 3, 0.02, np.random.default_rng(6))
    tiles = sparse_tiles(n, k, w.sparse.rowptr, w.sparse.col, w.sparse.val)
    bands, chunks = tile_counts(n, k)
    threads, steps = knobs.threads, 4
    ntiles = -(-(padded_k(k) // BLOCK) // 2)
    # thread tid's register a = 4 s + 2 j + h of K-tile t holds rows g + 8 h of its warp's 16, columns 16 s + 8 j +
    # 2 q (+ 1 in its high half), g = lane // 4, q = lane % 4; its slots: 16 bytes per step, threads adjacent
    slot_weight = {}
    for tid, s, j, h, half in itertools.product(range(threads), range(steps), range(2), range(2), range(2)):
        row = tid // 32 * 16 + tid % 32 // 4 + 8 * h
        col = 16 * s + 8 * j + 2 * (tid % 4) + half
        slot_weight[((s * threads + tid) * 4 + 2 * j + h) * 2 + half] = (row, col)
    added = []
    share = SPARSE_THREADS // (tile_n // TILE * 2)
    for by, t, p in itertools.product(range(-(-n // tile_n)), range(ntiles), range(SPARSE_THREADS)):
        s = p // share
        band, c = by * (tile_n // TILE) + s // 2, t * 2 + s % 2
        if band >= bands or c >= chunks:
            continue
        for e in (int(v) for v in tiles[tiles[band * chunks + c] + p % share:tiles[band * chunks + c + 1]:share]):
            r, col = s // 2 * TILE + entry_row(e), s % 2 * TILE + entry_col(e)
            at = delta_half(r, col, threads, 2, t % 2)
            assert at // (steps * threads * 8) == t % 2  # the K-tile's buffer
            assert slot_weight[at % (steps * threads * 8)] == (r, col)
            added.append((by * tile_n + r, t * 64 + col, e & 0xFFFF))
    rows = np.repeat(np.arange(n), np.diff(w.sparse.rowptr))
    assert sorted(added) == sorted(zip(rows.tolist(), w.sparse.col.tolist(), w.sparse.val.view(np.uint16).tolist()))


def test_sparse_warpgroup_register_budget():
    """The sparse warpgroup hands the MMA warpgroups registers: after ``setmaxnreg`` the block fits its share of the
    register file (all of it beside two MMA warpgroups; half beside one, two blocks an SM, as the dense kernel),
    every count a multiple of 8 in setmaxnreg's range, the MMA ones above ptxas' share at launch (168 at 384
    threads, 128 at 256 threads and two blocks)."""
    from sqcompile.kernels.gemm_mma import REGISTER_FILE, SPARSE_THREADS, sparse_blocks_per_sm, sparse_registers
    for mma_threads, launch in ((256, 168), (128, 128)):
        mma, sparse = sparse_registers(mma_threads)
        assert (mma_threads * mma + SPARSE_THREADS * sparse) * sparse_blocks_per_sm(mma_threads) <= REGISTER_FILE
        assert mma % 8 == 0 and sparse % 8 == 0 and 24 <= sparse < launch < mma <= 256


@pytest.mark.parametrize("tile_n,threads,mma_regs,min_blocks", [(128, 384, 232, False), (64, 256, 216, True)])
def test_sparse_register_kernel_launches_its_warpgroup(tile_n, threads, mma_regs, min_blocks):
    """A sparse register-operand GEMM launches the sparse warpgroup beside the MMA warpgroups, which raise their
    registers while it lowers its own; beside one MMA warpgroup the block asks for two blocks an SM. The dense
    kernel of the same knobs has neither."""
    from sqcompile.kernels.gemm_mma import MIN_BLOCKS_ATTR, cuda_lut_gemm_mma
    knobs = GemmKnobs(128, tile_n, rule="wgmma", warps_m=tile_n // 16, warps_n=1, stages=4, weights_in_registers=True,
                      split_k=2)
    sparse = cuda_lut_gemm_mma(333, 4160, 3, 100, True, knobs).script()
    assert f'T.thread_binding({threads}, thread="threadIdx.x")' in sparse
    assert f"setmaxnreg.inc.sync.aligned.u32 {mma_regs};" in sparse and "setmaxnreg.dec.sync.aligned.u32 40;" in sparse
    assert (MIN_BLOCKS_ATTR in sparse) == min_blocks
    dense = cuda_lut_gemm_mma(333, 4160, 3, 100, False, knobs).script()
    assert f'T.thread_binding({threads - 128}, thread="threadIdx.x")' in dense
    assert "setmaxnreg" not in dense and MIN_BLOCKS_ATTR not in dense


def test_cuda_schedule_passes_import_the_tensor_intrinsics_the_fast_way(tmp_path):
    """dlight's Matmul rule imports ``tvm.s_tir.tensor_intrin.cuda`` itself when it first meets an fp16 matmul
    (the LM head); imported that way it took minutes of ``inspect.stack()`` per build. The CUDA target's schedule
    passes import it first, in a fresh interpreter here so that no earlier test has done it."""
    import subprocess
    import sys
    code = ("import sys\n"
            "from sqcompile.targets.registry import get_target\n"
            "assert 'tvm.s_tir.tensor_intrin.cuda' not in sys.modules\n"
            "get_target('cuda', 'sm_90').schedule_passes()\n"
            "assert 'tvm.s_tir.tensor_intrin.cuda' in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300, cwd=tmp_path)


def test_archs_without_records_run_the_register_table_at_3_bits():
    """An arch without tuning records (only sm_90 has them) runs ``GemvKnobs.default``: at 3 bits the register
    table's PRMTs, no shared pair-table lookups (on an H200 those took 15-46% longer: benchmarks/kernels/NOTES.md
    v22); at 2 bits the pair table."""
    from sqcompile.kernels.gemv_cuda import LOAD_AT_BYTE
    from sqcompile.targets.tuning import lookup

    sm86 = tvm.target.Target({"kind": "cuda", "arch": "sm_86"}, host={"kind": "llvm"})

    def kernel_text(bits: int, sparse: bool) -> str:  # with the empty loops of the unused placement removed
        func = lut_matmul(4096, 4096, bits, m=1, sparse=sparse, act_dtype="float16", target=sm86)
        return tvm.tirx.transform.RemoveNoOp()(tvm.IRModule({"f": func}))["f"].script()

    assert lookup("sm_86", "gemv", 4096, 4096, 3, False) is None
    for sparse in (False, True):
        three = kernel_text(3, sparse)
        assert "prmt.b32" in three and LOAD_AT_BYTE not in three
    two = kernel_text(2, False)
    assert "prmt.b32" not in two and LOAD_AT_BYTE in two


def test_programmatic_launch_marks_sm90_decode_kernels_only():
    """PDL (``kernels/launch.py``): on sm_90 the decode GEMV, the add + RMSNorm and both attention kernels carry
    the launch attribute; the GEMV issues its first weight copies before it waits for the kernel that writes x,
    and reads x only after. Before sm_90, for prefill and with ``pdl=False`` nothing is marked."""
    from sqcompile.kernels.attention import decode_attention
    from sqcompile.kernels.launch import LAUNCH_PARAMS_ATTR, PDL_TAG
    from sqcompile.kernels.norm import add_rms_norm

    sm80 = tvm.target.Target({"kind": "cuda", "arch": "sm_80"}, host={"kind": "llvm"})

    def marked(func):
        return list(func.attrs.get(LAUNCH_PARAMS_ATTR, [])) == [PDL_TAG]

    gemv = lut_matmul(100, 1000, 3, m=1, sparse=True, act_dtype="float16", target=CUDA)
    text = gemv.script()
    assert marked(gemv)
    assert text.count("griddepcontrol.wait") == 2  # the dense threads', then the sparse warp's
    wait = text.find("griddepcontrol.wait")
    assert text.find("cp.async.cg") < wait < text.find("x[0,") < text.find("griddepcontrol.wait", wait + 1)
    walk = text[text.rfind("rowptr[", 0, text.find("griddepcontrol.wait", wait + 1)):]
    assert walk.find("col[") < walk.find("griddepcontrol.wait") < walk.find("x[0,")  # the CSR read before it
    assert "launch_dependents" not in text  # an early trigger broke CUDA graphs (launch.py)
    assert marked(add_rms_norm(4096, "float16", 1e-5, CUDA))
    attention = decode_attention(16, 16, 64, "float16", CUDA, rope=True)
    assert marked(attention)
    assert attention.script().count("griddepcontrol.wait") == 4  # one kernel, short and long partial, combine
    for func in (lut_matmul(100, 1000, 3, m=1, sparse=True, act_dtype="float16", target=sm80),
                 lut_matmul(100, 1000, 3, m=1, sparse=True, act_dtype="float16", target=CUDA, pdl=False),
                 lut_matmul(100, 1000, 3, m=None, sparse=True, act_dtype="float16", target=CUDA),
                 add_rms_norm(4096, "float16", 1e-5, sm80), decode_attention(8, 2, 64, "float16", sm80)):
        assert not marked(func)
        assert "griddepcontrol" not in func.script()


def test_silu_gemv_writes_half_the_rows_and_is_cuda_decode_only():
    """The gate/up GEMV with the SiLU epilogue returns [1, n / 2]; a schedule with odd rows per block gets twice
    the rows (a block must hold whole gate/up pairs); llvm, prefill and odd n are refused."""
    from sqcompile.kernels.knobs import GemvKnobs

    func = lut_matmul(100, 1000, 3, m=1, sparse=True, act_dtype="float16", target=CUDA, fusion=GemvFusion(silu=True),
                      knobs=GemvKnobs(rows_inner=1, steps=3))
    assert [int(d) for d in func.params[-1].ty.shape] == [1, 50]
    assert str(func.attrs["global_symbol"]).endswith("_silu")
    for kwargs in ({"m": 1, "target": LLVM}, {"m": None, "target": CUDA}):
        with pytest.raises(ValueError, match="epilogues"):
            lut_matmul(100, 1000, 3, sparse=False, act_dtype="float16", fusion=GemvFusion(silu=True), **kwargs)
    with pytest.raises(ValueError, match="even"):
        lut_matmul(101, 1000, 3, m=1, sparse=False, act_dtype="float16", target=CUDA, fusion=GemvFusion(silu=True))


def test_gemv_fusion_parameters_and_refusals():
    """The residual epilogue takes the residual and the norm weight after the weight and returns y, y * w and
    one sum of squares per CUDA block; the RMSNorm fold takes the producer's block sums after the weight. Contradictory fusions, and
    fusions outside the CUDA decode GEMV, are refused."""
    res = lut_matmul(100, 1000, 3, m=1, sparse=True, act_dtype="float16", target=CUDA,
                     fusion=GemvFusion(residual=True), knobs=GemvKnobs(rows_inner=1, steps=3))
    assert [p.name for p in res.params] == ["x", "q", "lut", "rowptr", "col", "val", "res", "w", "y", "yw",
                                             "block_sq"]
    assert [int(d) for d in res.params[-1].ty.shape] == [34]  # ceil(100 / 3) blocks
    rms = lut_matmul(100, 1000, 4, m=1, sparse=False, act_dtype="float16", target=CUDA,
                     fusion=GemvFusion(rms_parts=34, rms_eps=1e-6))
    assert [p.name for p in rms.params] == ["x", "q", "lut", "h_sq", "y"]
    assert [int(d) for d in rms.params[3].ty.shape] == [34]
    assert str(rms.attrs["global_symbol"]).endswith("_rms")
    for bad in (GemvFusion(silu=True, residual=True), GemvFusion(rms_parts=34), GemvFusion(rms_eps=1e-6)):
        with pytest.raises(ValueError):
            lut_matmul(100, 1000, 3, m=1, sparse=False, act_dtype="float16", target=CUDA, fusion=bad)
    with pytest.raises(ValueError, match="epilogues"):
        lut_matmul(100, 1000, 3, m=1, sparse=False, act_dtype="float16", target=LLVM,
                   fusion=GemvFusion(residual=True))


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_cuda_codegen_with_nvcc_in_subprocess(tmp_path):
    import subprocess
    import sys

    from sqcompile.kernels.cuda_host import check_no_source, cuda_build_env
    code = (
        "import tvm, sys\n"
        "from sqcompile.kernels import lut_matmul\n"
        "from sqcompile.kernels.gemv_cuda import GemvFusion\n"
        "t = tvm.target.Target({'kind': 'cuda', 'arch': 'sm_90'}, host={'kind': 'llvm'})\n"
        "mod = tvm.IRModule({'gemv': lut_matmul(100, 1000, 3, m=1, sparse=True, act_dtype='float16', target=t),\n"
        "                    'gemm': lut_matmul(100, 1000, 4, m=None, sparse=False, act_dtype='float16', target=t),\n"
        "                    'gemm_sp': lut_matmul(100, 1000, 3, m=None, sparse=True, act_dtype='float16',\n"
        "                                          target=t),\n"
        "                    'gemv_silu': lut_matmul(100, 1000, 3, m=1, sparse=True, act_dtype='float16',\n"
        "                                            target=t, fusion=GemvFusion(silu=True)),\n"
        "                    'gemv_res': lut_matmul(100, 1000, 3, m=1, sparse=True, act_dtype='float16', target=t,\n"
        "                                           fusion=GemvFusion(residual=True)),\n"
        "                    'gemv_rms': lut_matmul(100, 1000, 4, m=1, sparse=False, act_dtype='float16', target=t,\n"
        "                                           fusion=GemvFusion(silu=True, rms_parts=7, rms_eps=1e-5))})\n"
        "with t:\n"
        "    tvm.compile(mod, target=t).export_library(sys.argv[1])\n"
        "t = tvm.target.Target({'kind': 'cuda', 'arch': 'sm_90a'}, host={'kind': 'llvm'})\n"
        "from dataclasses import replace\n"
        "from sqcompile.kernels.gemm_mma import WGMMA_KNOBS, cuda_lut_gemm_mma\n"
        "split = replace(WGMMA_KNOBS, tile_m=256, weights_in_registers=True, split_k=2)\n"
        "mod = tvm.IRModule({'wgmma': lut_matmul(100, 1000, 4, m=None, sparse=False, act_dtype='float16', target=t),\n"
        "                    'wgmma_sp': lut_matmul(333, 4160, 3, m=None, sparse=True, act_dtype='float16',\n"
        "                                           target=t),\n"
        "                    'wgmma_rs': cuda_lut_gemm_mma(333, 4160, 3, None, False, split)\n"
        "                        .with_attr('global_symbol', 'wgmma_rs'),\n"
        "                    'wgmma_rs_sp': cuda_lut_gemm_mma(333, 4160, 4, None, True, split)\n"
        "                        .with_attr('global_symbol', 'wgmma_rs_sp')})\n"
        "with t:\n"
        "    tvm.compile(mod, target=t).export_library(sys.argv[2])\n"
    )
    out = [tmp_path / "k.so", tmp_path / "wgmma.so"]
    subprocess.run([sys.executable, "-c", code, *map(str, out)], env=cuda_build_env(), check=True, timeout=900)
    for lib in out:
        check_no_source(lib)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_pair_index_words_decode_every_code(bits):
    """The CUDA GEMV's pair decoding (``pairs.py``), run on llvm: index words -> fields -> table entries must
    give back every code of the packed layout, each exactly once."""
    from tvm.script import tirx as T

    from sqcompile.kernels import pairs as P
    from sqcompile.quant.format import pack_codes, packed_words
    n, k = 3, 96
    nblk, nw, fpw = k // 32, P.index_words(bits), P.fields_per_word(bits)
    scale = 4 if bits == 3 else 1

    @T.prim_func
    def decode(q: T.Buffer((n, packed_words(k, bits)), "uint32"), out: T.Buffer((n, k), "int32")):
        iw = T.alloc_buffer((nw,), "uint32")
        for r in range(n):
            for b in range(nblk):
                if bits == 3:
                    for i in range(nw):
                        iw[i] = P.pair_offsets(P.index_word_3bit(lambda w: q[r, b * 3 + w], i))
                else:
                    for i in range(nw):
                        iw[i] = q[r, b * bits + i]
                for i in range(nw):
                    for m in range(fpw):
                        out[r, b * 32 + P.pair_codes(bits, i, m)[0]] = P.entry_codes(
                            bits, T.Cast("int32", P.field(bits, iw[i], m)) // scale)[0]
                        out[r, b * 32 + P.pair_codes(bits, i, m)[1]] = P.entry_codes(
                            bits, T.Cast("int32", P.field(bits, iw[i], m)) // scale)[1]

    codes = np.random.default_rng(bits).integers(0, 1 << bits, size=(n, k))
    lib = tvm.compile(tvm.IRModule({"main": decode}), target=LLVM)
    out = tvm.runtime.tensor(np.full((n, k), -1, np.int32), tvm.cpu())
    lib["main"](tvm.runtime.tensor(pack_codes(codes, bits), tvm.cpu()), out)
    np.testing.assert_array_equal(out.numpy(), codes)


@pytest.mark.parametrize("bits", [3, 4])
def test_register_table_decodes_every_code_and_every_lane(bits):
    """The register table (``pairs.reg_*``), with ``__byte_perm`` spelled out in TIR and run on llvm: the
    selectors of every index word (4 bits: and the masks of the codes' top bits), the table words built from
    the fp16 LUT and the interleave must give back lut[code] for every code of the packed layout (``out``).
    The weights-in-registers GEMM's decode (``lanes``): lane q of a quad gathers byte q of each index word of a
    block (``pairs.quad_word``), which the same table turns into the half2 of codes (8 j + 2 q, 8 j + 2 q + 1),
    j = 0..3: the columns an ``mma``/``wgmma`` A fragment gives that lane (2q, 2q + 1, 2q + 8, 2q + 9 of each
    16-code step)."""
    from tvm.script import tirx as T

    from sqcompile.kernels import pairs as P
    from sqcompile.quant.format import pack_codes, packed_words
    n, k, words = 3, 96, P.reg_table_words(bits)

    def index_word(q, r, b, i):
        if bits == 3:
            return P.index_word_3bit(lambda w: q[r, b * 3 + w], i)
        return q[r, b * 4 + i]

    def mask(word, g):
        return P.reg_mask(word, g, extern=False) if bits == 4 else T.uint32(0)

    @T.prim_func
    def decode(q: T.Buffer((n, packed_words(k, bits)), "uint32"), lut: T.Buffer((n, 1 << bits), "float16"),
               out: T.Buffer((n, k // 2), "uint32"), lanes: T.Buffer((n, k // 32, 4, 4), "uint32")):
        rt = T.alloc_buffer((words,), "uint32")
        sl = T.alloc_buffer((2,), "uint32")
        lh = T.alloc_buffer((2,), "uint32")
        tw = T.alloc_buffer((1,), "uint32")
        for r in range(n):
            for t in T.unroll(words):
                rt[t] = P.reg_table_word(lambda c: T.Cast("uint32", T.reinterpret("uint16", lut[r, c])), t, bits)
            for b in range(k // 32):
                for i in T.unroll(8):  # index words 0-3, then lanes 0-3
                    if i < 4:
                        tw[0] = index_word(q, r, b, i)
                    else:
                        tw[0] = P.quad_word(lambda w: q[r, b * bits + w], bits, P.quad_selector(i % 4), extern=False)
                    sl[0] = P.reg_selector(tw[0])
                    sl[1] = P.reg_selector_high(sl[0], extern=False)
                    for g in T.unroll(2):
                        for h in T.unroll(2):
                            lh[h] = P.reg_bytes(lambda t: rt[t], sl[g], h, extern=False, bits=bits, mask=mask(tw[0], g))
                        for h in T.unroll(2):
                            if i < 4:
                                out[r, b * 16 + i * 4 + 2 * g + h] = P.reg_half2(lh[0], lh[1], h, extern=False)
                            else:
                                lanes[r, b, i % 4, 2 * g + h] = P.reg_half2(lh[0], lh[1], h, extern=False)

    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 1 << bits, size=(n, k))
    lut = rng.standard_normal((n, 1 << bits)).astype(np.float16)
    lib = tvm.compile(tvm.IRModule({"main": decode}), target=LLVM)
    out = tvm.runtime.tensor(np.zeros((n, k // 2), np.uint32), tvm.cpu())
    lanes = tvm.runtime.tensor(np.zeros((n, k // 32, 4, 4), np.uint32), tvm.cpu())
    lib["main"](tvm.runtime.tensor(pack_codes(codes, bits), tvm.cpu()), tvm.runtime.tensor(lut, tvm.cpu()), out,
                lanes)
    weights = np.take_along_axis(lut, codes, axis=1)
    np.testing.assert_array_equal(out.numpy().view(np.float16).reshape(n, k), weights)  # half2 of codes 2p, 2p + 1
    cols = (np.arange(k // 32)[:, None, None, None] * 32 + np.arange(4)[None, :, None, None] * 2
            + np.arange(4)[None, None, :, None] * 8 + np.arange(2)[None, None, None, :])
    np.testing.assert_array_equal(lanes.numpy().view(np.float16).reshape(n, k // 32, 4, 4, 2), weights[:, cols])


def test_greedy_feed_takes_the_first_maximum_and_flags_non_finite_logits():
    """The on-device argmax (llvm: one thread, the same rounds of ``IN_FLIGHT`` loads) over a vocab that leaves
    a partial last round: the first of two equal maxima wins, the position advances and the token lands in
    ``history[position + 1]``; a NaN logit records -1 and feeds token 0."""
    from sqcompile.kernels.greedy import IN_FLIGHT, greedy_feed_func
    vocab = 1000
    assert vocab % IN_FLIGHT
    ex = tvm.compile(tvm.IRModule({"main": greedy_feed_func(vocab, "float16", 8, cuda=False).with_attr(
        "global_symbol", "main")}), LLVM)
    rng = np.random.default_rng(5)
    for top, bad in ((997, False), (3, False), (500, True)):
        logits = rng.standard_normal((1, 1, vocab)).astype(np.float16)
        logits[0, 0, top] = logits[0, 0, vocab - 1] = 9.0  # a tie: the first index must win
        if bad:
            logits[0, 0, 17] = np.nan
        ids, pos = tvm.runtime.tensor(np.zeros((1, 1), np.int64)), tvm.runtime.tensor(np.array([4], np.int64))
        history = tvm.runtime.tensor(np.full(8, -7, np.int64))
        ex["main"](tvm.runtime.tensor(logits), ids, pos, history)
        assert int(pos.numpy()[0]) == 5
        assert int(history.numpy()[5]) == (-1 if bad else top)
        assert int(ids.numpy()[0, 0]) == (0 if bad else top)


@pytest.mark.parametrize("hidden, head_dim, scale", [(72, 16, 1.0), (100, 10, 0.75)])
def test_embed_rms_norm_rope_matches_float64(hidden, head_dim, scale):
    """The step prologue on llvm (the CUDA body is the same math; scripts/gpu_check_norm_gemv.py runs it on a
    GPU): the gathered rows exactly, the norm and the cos/sin (positions up to 2000) against float64, outputs
    poisoned with NaN first."""
    from sqcompile.kernels.norm import embed_rms_norm_rope

    vocab, rows, eps = 50, 3, 1e-5
    rng = np.random.default_rng(hidden)
    f = embed_rms_norm_rope(vocab, hidden, head_dim, "float16", eps, scale, LLVM)
    mod = tvm.compile(tvm.IRModule({"main": f.with_attr("global_symbol", "main")}), target=LLVM)
    ids = rng.integers(0, vocab, (1, rows)).astype(np.int64)
    positions = np.array([0, 77, 2000], np.int64)
    table = rng.standard_normal((vocab, hidden)).astype(np.float16)
    w = rng.standard_normal(hidden).astype(np.float16)
    inv_freq = (10000.0 ** -(np.arange(0, head_dim, 2) / head_dim)).astype(np.float32)
    inv_freq = np.concatenate([inv_freq, inv_freq])
    outs = [tvm.runtime.tensor(np.full(shape, np.nan, np.float16))
            for shape in ((rows, hidden), (rows, hidden), (rows, 1, head_dim), (rows, 1, head_dim))]
    mod["main"](*(tvm.runtime.tensor(v) for v in (ids, positions, table, w, inv_freq)), *outs)
    h, n, cos, sin = (o.numpy() for o in outs)
    e = table[ids[0]].astype(np.float64)
    angles = positions[:, None] * inv_freq.astype(np.float64)
    assert np.array_equal(h, table[ids[0]])
    assert rel_error(n, e / np.sqrt((e ** 2).mean(-1, keepdims=True) + eps) * w) < 2e-3
    assert rel_error(cos[:, 0], np.cos(angles) * scale) < 2e-3 and rel_error(sin[:, 0], np.sin(angles) * scale) < 2e-3
