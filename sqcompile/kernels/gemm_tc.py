"""The fallback CUDA prefill rule on tensor cores (dense part, sm_70+): TVM's own tensor-core matmul schedule
(``tvm.s_tir.dlight.gpu.Matmul``, its wmma path) applied to a LUT-decode block feeding a matmul block. It runs
where the written-out ``mma.sync`` rule (``gemm_mma.py``) does not apply: 2 bits, float32 activations, K not a
multiple of 8, or before sm_80.

The rule inlines the decode into the shared-memory fetch of the weight tile, so one kernel reads the packed
codes, looks each weight up in its row's LUT (fp16) while staging the tile, and runs 16x16x16 fp16 MMAs with
float32 accumulators; the weight is never written out in fp16. float32 activations are rounded to fp16 in
the fetch of x (as an fp16 model would hold them) and the output is cast back.
"""
from __future__ import annotations

import importlib
import inspect
import sys
from contextlib import contextmanager

import tvm
from tvm import tirx
from tvm.script import tirx as T

from .launch import target_arch
from .layout import BLOCK, code_at, packed_words


def dense_matmul(n: int, k: int, bits: int, act_dtype: str) -> tirx.PrimFunc:
    """The unscheduled computation: decode block, matmul block (float32 accumulation), output cast block."""
    words, table, n64, k64 = T.int64(packed_words(k, bits)), T.int64(1 << bits), T.int64(n), T.int64(k)
    blk = T.int64(BLOCK)

    @T.prim_func(s_tir=True)
    def func(x_h: T.handle, q: T.Buffer((n64, words), "uint32"), lut: T.Buffer((n64, table), "float16"),
             y_h: T.handle):
        T.func_attr({"tirx.noalias": True})
        m = T.int64()
        x = T.match_buffer(x_h, (m, k64), act_dtype)
        y = T.match_buffer(y_h, (m, n64), act_dtype)
        xh = T.sblock_alloc_buffer((m, k64), "float16")
        w = T.sblock_alloc_buffer((n64, k64), "float16")
        acc = T.sblock_alloc_buffer((m, n64), "float32")
        for i, c in T.grid(m, k64):
            with T.sblock("x_fp16"):
                vi, vc = T.axis.remap("SS", [i, c])
                xh[vi, vc] = T.Cast("float16", x[vi, vc])
        for j, c in T.grid(n64, k64):
            with T.sblock("decode"):
                vj, vc = T.axis.remap("SS", [j, c])
                w[vj, vc] = lut[vj, T.Cast("int64", code_at(lambda t: q[vj, vc // blk * T.int64(bits) + T.int64(t)],
                                                            bits, vc % blk))]
        for i, j, c in T.grid(m, n64, k64):
            with T.sblock("matmul"):
                vi, vj, vc = T.axis.remap("SSR", [i, j, c])
                with T.init():
                    acc[vi, vj] = T.float32(0)
                acc[vi, vj] = acc[vi, vj] + T.Cast("float32", xh[vi, vc]) * T.Cast("float32", w[vj, vc])
        for i, j in T.grid(m, n64):
            with T.sblock("output"):
                vi, vj = T.axis.remap("SS", [i, j])
                y[vi, vj] = T.Cast(act_dtype, acc[vi, vj])

    return func


@contextmanager
def _frames_without_source():
    """TVMScript's ``prim_func`` calls ``inspect.stack()``, which looks up the source of every frame; for the
    import machinery's frames ("<frozen ...>") that is a scan of all of ``sys.modules`` each time. Importing
    ``tvm.s_tir.tensor_intrin`` (hundreds of prim_funcs, which dlight's tensor-core rule needs) took 3-4
    minutes that way. The parser only needs the frames themselves, so hand it those."""
    from tvm.tirx.script.parser import entry

    def stack(context: int = 1) -> list:
        frame, out = sys._getframe(1), []
        while frame is not None:
            out.append(inspect.FrameInfo(frame, frame.f_code.co_filename, frame.f_lineno, frame.f_code.co_name,
                                         None, None))
            frame = frame.f_back
        return out

    saved = entry.inspect
    entry.inspect = type(sys)("inspect_light")
    entry.inspect.__dict__.update(vars(inspect))
    entry.inspect.stack = stack
    try:
        yield
    finally:
        entry.inspect = saved


def import_tensor_intrinsics() -> None:
    """Import ``tvm.s_tir.tensor_intrin.cuda`` the fast way, before any dlight Matmul rule imports it the slow way
    (the build's own dlight pass on fp16 matmuls, such as the LM head, does: minutes of ``inspect.stack()``)."""
    if "tvm.s_tir.tensor_intrin.cuda" not in sys.modules:
        with _frames_without_source():
            importlib.import_module("tvm.s_tir.tensor_intrin.cuda")


def dlight_target(target: tvm.target.Target) -> tvm.target.Target:
    """``target`` as dlight must see it: its Matmul rule parses the arch as ``sm_<digits>`` and schedules without
    tensor cores where that fails (``check_sm_version``), ``sm_90a`` included. The schedule does not depend on
    the ``a`` features; nvcc still builds for the target's own arch."""
    if target.kind.name != "cuda" or target_arch(target) == str(target.attrs["arch"]):
        return target
    return tvm.target.Target({**target.export(), "arch": target_arch(target)})


def cuda_lut_gemm_tc(n: int, k: int, bits: int, act_dtype: str, target: tvm.target.Target) -> tirx.PrimFunc | None:
    """The dense prefill kernel scheduled by dlight's Matmul rule, or None where the rule declines."""
    import tvm.s_tir.dlight as dl
    import_tensor_intrinsics()
    mod = tvm.IRModule({"main": dense_matmul(n, k, bits, act_dtype)})
    with dlight_target(target):
        mod = dl.ApplyDefaultSchedule(dl.gpu.Matmul())(mod)
    func = mod["main"]
    if not (func.attrs and func.attrs.get("tirx.is_scheduled")):
        return None
    return func
