"""Greedy decoding on the device: the next token's argmax feeds the next decode step without the host.

Reading each token back before launching the next step leaves the GPU idle while the host samples and
launches (on the H100, 7B shapes: ~0.5 ms of CUDA-graph launch per step, not overlapped). With
``greedy_feed`` after each decode step the runtime queues many steps back to back and reads the tokens once
per chunk. The kernel writes the argmax (the first index of the maximum, as ``numpy.argmax``) into the decode
step's token input, advances its position input and records the token in ``history[position + 1]``. A
non-finite logit records -1 (the runtime raises) and feeds token 0, so a queued step never indexes out of the
embedding table.
"""
from __future__ import annotations

import tvm
from tvm import relax, tirx
from tvm.script import tirx as T

THREADS = 1024  # 32 warps: the second reduction level is exactly one warp
IN_FLIGHT = 16  # logits a thread loads before comparing any: one at a time took 12.7 us a 7B step on the H100
WARP = 32
FULL_MASK = 0xFFFFFFFF
OPAQUE = 8  # relax op pattern kOpaque: FuseOps leaves the call alone


def greedy_feed_func(vocab: int, dtype: str, history_len: int, cuda: bool) -> tirx.PrimFunc:
    """``greedy_feed(logits [1, 1, vocab], ids [1, 1], positions [1], history [history_len])``; all but
    ``logits`` are updated in place. CUDA: one block, a strided scan per thread (``IN_FLIGHT`` loads issued
    before their comparisons), (value, index, bad) reduced
    with warp shuffles, then across warps through shared memory; llvm: the same scan with one thread."""
    threads = THREADS if cuda else 1
    warps = max(threads // WARP, 1)
    per_thread = -(-vocab // threads)
    rounds = -(-per_thread // IN_FLIGHT)

    @T.macro
    def warp_reduce(v, i, b):
        """Lane 0 ends with the warp's best (value, first index) and any-bad flag."""
        for o in T.unroll(5):
            v[1] = T.tvm_warp_shuffle_down(T.uint32(FULL_MASK), v[0], 16 >> o, WARP, WARP)
            i[1] = T.tvm_warp_shuffle_down(T.uint32(FULL_MASK), i[0], 16 >> o, WARP, WARP)
            b[1] = T.tvm_warp_shuffle_down(T.uint32(FULL_MASK), b[0], 16 >> o, WARP, WARP)
            if v[1] > v[0] or (v[1] == v[0] and i[1] < i[0]):
                v[0] = v[1]
                i[0] = i[1]
            b[0] = T.max(b[0], b[1])

    @T.prim_func(private=True, s_tir=True)
    def greedy_feed(logits: T.Buffer((1, 1, vocab), dtype), ids: T.Buffer((1, 1), "int64"),
                    positions: T.Buffer((1,), "int64"), history: T.Buffer((history_len,), "int64")):
        T.func_attr({"tirx.noalias": True, "op_pattern": OPAQUE, "tirx.is_scheduled": True})
        for tx in T.thread_binding(threads, thread="threadIdx.x") if cuda else T.serial(1):
            v = T.alloc_buffer((2,), "float32", scope="local")  # [own, partner's]
            i = T.alloc_buffer((2,), "int32", scope="local")
            b = T.alloc_buffer((2,), "int32", scope="local")
            ld = T.alloc_buffer((IN_FLIGHT,), "float32", scope="local")
            v[0] = T.float32(-3.4e38)
            i[0] = vocab
            b[0] = 0
            for r in range(rounds):  # ascending indices: a strict > keeps the first maximum
                for u in T.unroll(IN_FLIGHT):
                    if (r * IN_FLIGHT + u) * threads + tx < vocab:
                        ld[u] = T.Cast("float32", logits[0, 0, (r * IN_FLIGHT + u) * threads + tx])
                for u in T.unroll(IN_FLIGHT):
                    if (r * IN_FLIGHT + u) * threads + tx < vocab:
                        if not T.isfinite(ld[u]):
                            b[0] = 1
                        elif ld[u] > v[0]:
                            v[0] = ld[u]
                            i[0] = (r * IN_FLIGHT + u) * threads + tx
            if cuda:
                sv = T.alloc_buffer((warps,), "float32", scope="shared")
                si = T.alloc_buffer((warps,), "int32", scope="shared")
                sb = T.alloc_buffer((warps,), "int32", scope="shared")
                warp_reduce(v, i, b)
                if tx % WARP == 0:
                    sv[tx // WARP] = v[0]
                    si[tx // WARP] = i[0]
                    sb[tx // WARP] = b[0]
                T.tvm_storage_sync("shared")
                if tx < WARP:
                    v[0] = sv[tx]
                    i[0] = si[tx]
                    b[0] = sb[tx]
                    warp_reduce(v, i, b)
            if tx == 0:  # thread 0's registers hold the result
                history[positions[0] + 1] = T.if_then_else(b[0] > 0, T.int64(-1), T.Cast("int64", i[0]))
                ids[0, 0] = T.if_then_else(b[0] > 0, T.int64(0), T.Cast("int64", i[0]))
                positions[0] = positions[0] + 1

    return greedy_feed


def add_greedy_function(mod: tvm.IRModule, vocab: int, dtype: str, max_len: int, cuda: bool) -> tvm.IRModule:
    """``mod`` plus the Relax entry function ``greedy(logits, ids, positions, history)`` (history holds
    ``max_len + 1`` tokens: the token after position p goes to ``history[p + 1]``)."""
    bb = relax.BlockBuilder(mod)
    kernel = bb.add_func(greedy_feed_func(vocab, dtype, max_len + 1, cuda), "greedy_feed")
    logits = relax.Var("logits", relax.TensorType((1, 1, vocab), dtype))
    ids = relax.Var("ids", relax.TensorType((1, 1), "int64"))
    positions = relax.Var("positions", relax.TensorType((1,), "int64"))
    history = relax.Var("history", relax.TensorType((max_len + 1,), "int64"))
    with bb.function("greedy", [logits, ids, positions, history], attrs={"num_input": 4}):
        out = bb.emit(relax.call_tir_inplace(kernel, [logits, ids, positions, history], inplace_indices=[1, 2, 3],
                                             out_ty=[ids.ty, positions.ty, history.ty]))
        bb.emit_func_output(out)
    return bb.get()
