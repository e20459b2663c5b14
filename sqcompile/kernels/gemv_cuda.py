"""The CUDA decode GEMV rule (m = 1): y[n] = sum_k x[k] * (lut[n, code[n, k]] + sparse[n, k]).

Decisions fixed by the rule, knobs (``GemvKnobs``) for the rest:
  * x is read once per CUDA block into registers: thread ``tx`` owns the 32-code blocks
    ``tx, tx + threads_k, ...`` of every row, so its slice of x is the same for all rows of the block;
  * codes are copied row-major into shared memory with ``cp.async`` (whole rows: coalesced 16-byte chunks),
    ``rows_inner`` rows per thread group and batch, two batches in flight (double buffering: more buffers
    measured slower on the H100, fewer blocks fit an SM);
  * LUT placement (``pairs`` knob): a per-row pair table of half2 (``pairs.py``: one field extraction, one
    lookup and one HFMA2 per two neighbouring codes, whose x pair is x's own half2 word; the half2 partial
    sums of a 32-code block are added into float32), or a per-row float32 table (one decode, lookup and
    FFMA per code). All lanes of a warp read the same row's table. At 3 and 4 bits ``reg_words`` of a block's
    four index words skip the shared table: the row's entries sit in registers and PRMTs select them
    (``pairs.reg_*``), so the integer pipe and the shared-memory pipe share the lookups;
  * the sparse part is fused, balanced over the block and run by a warp of its own (``SPARSE_WARP``) beside
    the dot products: a block's rows are contiguous, so are their nonzeros in CSR, and lane l takes nonzeros
    l, l + 32, ... of that range, whatever rows they sit in. Its chain of dependent loads (row pointers ->
    (col, val) -> x[col]) then overlaps the dense warps' work; run by the dense threads after their loop, it
    added those round trips to every block (ptxas sinks the CSR loads there whatever the TIR says:
    benchmarks/kernels/NOTES.md, v12 and v20). Each lane adds its products to its own sum of the nonzero's row
    (found among the block's row pointers, kept in shared memory): neighbouring nonzeros share a row, so one sum
    per row, added to atomically, serialized the warp 32-fold. The dense threads sync among themselves (a named
    barrier), and the whole block only once, before the rows are summed;
  * partial sums go to shared memory and are reduced once at the end, one warp per row with shuffles;
  * accumulation is float32 across blocks;
  * epilogues (``GemvFusion``) fold the small kernels around a decode GEMV into it: SiLU(gate) * up, and the
    residual add + RMSNorm split between the GEMV before it (the add, the norm weight, per-block sums of
    squares) and the GEMV after it (the 1/rms factor on its row sums).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from tvm import tirx
from tvm.script import tirx as T

from . import pairs as P
from .knobs import MAX_THREADS, SHARED_LIMIT, GemvKnobs
from .launch import GRID_WAIT, mark
from .layout import BLOCK, code_at, packed_words, padded_k

FULL_MASK = 0xFFFFFFFF
X_VEC = 8  # x elements per vector load (16 bytes of fp16)
# TVM's CUDA codegen splits every half2 operation (and any call returning half2) into two scalar halves; a
# call that returns uint32 is printed as is, so this immediately-invoked lambda keeps the pair one HFMA2.
HFMA2_U32 = ("[](unsigned a, unsigned b, unsigned c) { __half2 r = __hfma2(*(__half2*)&a, *(__half2*)&b, "
             "*(__half2*)&c); return *(unsigned*)&r; }")
# cp.async of 16 bytes global -> shared, and its group commit / waits (inline PTX; see HFMA2_U32 for the lambdas).
CP_ASYNC_16 = ('[](void* dst, const void* src) { asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" :: '
               '"r"((unsigned)__cvta_generic_to_shared(dst)), "l"(src) : "memory"); return 0; }')
CP_ASYNC_COMMIT = '[]() { asm volatile("cp.async.commit_group;" ::: "memory"); return 0; }'
# A table entry by byte offset, so that the offset (4 * index, as ``pairs.pair_offsets`` gives it at 3 bits) needs
# no scaling.
LOAD_AT_BYTE = "[](const unsigned* row, unsigned off) { return *(const unsigned*)((const char*)row + off); }"
HALF2_SUM = "[](unsigned a) { float2 f = __half22float2(*(__half2*)&a); return f.x + f.y; }"
# A store into shared memory that TVM's sync planner does not see (it skips accesses through address_of): the
# GEMV places every barrier itself. The planner knows no named barrier, so in a sparse kernel it would put
# __syncthreads of its own inside the dense threads' branch (TVM refuses to), and in every kernel it put one
# before the partial sums' store, which no access needs (the sums' region is beside the tables and staging buffers).
SHARED_STORE = "[](auto* p, auto v) { *p = v; return 0; }"
SPARSE_WARP = 32  # threads of a sparse kernel's warp that adds the nonzeros
SPARSE_AHEAD = 8  # nonzeros a lane of that warp loads before it uses the first of them


def dense_sync(nthreads: int) -> str:
    """A barrier of a sparse kernel's ``nthreads`` dense threads only (named barrier 1; barrier 0 is
    ``__syncthreads``), so that the sparse warp never waits for the dot products' barriers, nor they for it."""
    return f'[]() {{ asm volatile("bar.sync 1, {nthreads};" ::: "memory"); return 0; }}'


def cp_async_wait(pending: int) -> str:
    """Wait until at most ``pending`` of this thread's most recent cp.async groups are still in flight."""
    return f'[]() {{ asm volatile("cp.async.wait_group {pending};" ::: "memory"); return 0; }}'


@dataclass(frozen=True)
class GemvFusion:
    """What a decode GEMV computes besides ``y = x W^T``.

    ``silu``: the weight's rows alternate gate and up (``frontend.fuse``); y [1, n / 2] is SiLU(gate) * up,
    stored by the warp that sums the pair.

    ``residual``: the add + RMSNorm after o_proj / down_proj, split between this GEMV and the next. Extra
    inputs ``res`` [1, n] and the norm's weight ``w`` [n]; outputs ``y = res + x W^T`` (the new residual
    stream), ``y * w`` and ``block_sq`` [grid] float32, each CUDA block's sum of y^2 over its rows (y as
    stored). Per row that is one more load of w and one more store, no pass over the row.

    ``rms_parts`` > 0 (with ``rms_eps``): the GEMV after the norm. Its x is ``y * w`` of the GEMV before and
    an extra input ``h_sq`` [rms_parts] that GEMV's ``block_sq``; since rms_norm(y) * w = rsqrt(mean(y^2) +
    eps) * (y * w), the row sums are scaled by that one factor. Every warp adds up the block sums itself (a
    fixed order: deterministic), after its first row's dot product, so nothing runs before the first dot
    product that a plain GEMV would not run (an earlier fold that normalized x first cost more than the
    norm kernel it removed: benchmarks/e2e/runs/tried_not_kept)."""

    silu: bool = False
    residual: bool = False
    rms_parts: int = 0
    rms_eps: float = 0.0

    def validate(self, n: int, knobs: GemvKnobs) -> None:
        if self.silu and (n % 2 or knobs.rows_per_block % 2):
            raise ValueError(f"silu needs an even row count and rows per block, got n={n} and {knobs}")
        if self.silu and self.residual:
            raise ValueError("a GEMV with the SiLU epilogue has no residual add to fold")
        if self.rms_parts < 0 or (self.rms_parts > 0) != (self.rms_eps > 0):
            raise ValueError(f"an RMSNorm fold needs rms_parts > 0 and rms_eps > 0, got {self}")


def lane_row_stride(bits: int, steps: int) -> int:
    """Words per row in a lane_rows staging buffer: ``steps`` 128-code groups, padded to an odd number of
    16-byte units (conflict-free 16-byte loads by 32 lanes on 32 rows)."""
    words = steps * 4 * bits
    return words + 4 * (words // 4 % 2 == 0)


def row_table_words(bits: int, knobs: GemvKnobs) -> tuple[int, int]:
    """Shared words per row: (pair or float32 table entries, register table words after them)."""
    if not knobs.pairs:
        return 1 << bits, 0
    reg = P.reg_table_words(bits) if knobs.reg_words else 0
    return (0 if knobs.reg_words == P.index_words(bits) else P.table_size(bits)), reg


def fusion_words(knobs: GemvKnobs, fusion: GemvFusion) -> int:
    """Shared words of the epilogues: the residual's sum of y^2 per warp."""
    return knobs.threads_k * knobs.rows_y // 32 if fusion.residual else 0


def sparse_words(knobs: GemvKnobs, sparse: bool) -> int:
    """Shared words of the sparse part: the block's row pointers and each sparse lane's sums of its nonzero
    products per row."""
    return knobs.rows_per_block * (SPARSE_WARP + 1) + 1 if sparse else 0


def gemv_shared_bytes(k: int, bits: int, knobs: GemvKnobs, fusion: GemvFusion = GemvFusion(),
                      sparse: bool = False) -> int:
    if knobs.layout == "lane_rows":  # gemv_lanes.py: 32 rows' pair tables, all x pairs, one sum per thread,
        stage = knobs.threads_k * 2 * lane_row_stride(bits, knobs.steps)  # per warp 2 buffers of 32 rows
        return (32 * P.table_size(bits) + padded_k(k) // 2 + knobs.threads_k + stage) * 4
    table = sum(row_table_words(bits, knobs)) * 4
    stage = stage_buffers(knobs) * knobs.rows_y * knobs.rows_inner * packed_words(k, bits) * 4
    return (knobs.rows_per_block * (knobs.threads_k * 4 + table) + stage
            + 4 * (fusion_words(knobs, fusion) + sparse_words(knobs, sparse)))


def stage_buffers(knobs: GemvKnobs) -> int:
    """Staging buffers of the row_warps schedule: two (double buffering) where there is a next batch to
    load during the current one's arithmetic; a one-batch schedule needs only one, and the shared memory it
    frees lets more blocks share an SM."""
    return min(knobs.steps, 2)


def fit_gemv_knobs(k: int, bits: int, knobs: GemvKnobs, sparse: bool = False,
                   fusion: GemvFusion = GemvFusion()) -> GemvKnobs:
    """``knobs`` made to fit the static shared-memory limit at this K: fewer rows per batch (more steps, the
    same rows per block), then the float32 table (8-16 words per row, not 16-256); a K too large for any
    raises ValueError.
    ``lane_rows`` (dense 3 bits only) falls back to the default row-per-warp schedule where it does not apply;
    ``reg_words`` (3- and 4-bit pair tables only) is dropped elsewhere."""
    if knobs.reg_words and (bits not in P.REG_BITS or not knobs.pairs or knobs.layout != "row_warps"):
        knobs = replace(knobs, reg_words=0)
    if knobs.layout == "lane_rows" and (bits != 3 or sparse or gemv_shared_bytes(k, bits, knobs) > SHARED_LIMIT):
        knobs = GemvKnobs.default(bits)
    while gemv_shared_bytes(k, bits, knobs, fusion, sparse) > SHARED_LIMIT:
        if knobs.rows_inner > 1:
            knobs = replace(knobs, rows_inner=knobs.rows_inner // 2, steps=knobs.steps * 2)
        elif knobs.rows_y > 1:
            knobs = replace(knobs, rows_y=knobs.rows_y // 2, steps=knobs.steps * 2)
        elif knobs.pairs:
            knobs = replace(knobs, pairs=False, reg_words=0)
        else:
            raise ValueError(f"no GEMV schedule fits {SHARED_LIMIT} bytes of shared memory at K={k}, {bits} bits")
    return knobs


def cuda_lut_gemv(n: int, k: int, bits: int, sparse: bool, act_dtype: str, knobs: GemvKnobs,
                  fusion: GemvFusion = GemvFusion(), pdl: bool = False) -> tirx.PrimFunc:
    """y = x W^T with the epilogues of ``fusion``. With ``pdl`` (``launch.py``) a block issues its first weight
    copies and fills its tables before it waits for the previous kernel, whose outputs x, the residual and
    the sums of squares are."""
    knobs.validate()
    fusion.validate(n, knobs)
    silu, residual, rms_parts = fusion.silu, fusion.residual, fusion.rms_parts
    rms = rms_parts > 0
    n_out = n // 2 if silu else n
    if knobs.reg_words and (bits not in P.REG_BITS or not knobs.pairs):
        raise ValueError(f"reg_words needs the 3- or 4-bit pair table, got {bits} bits and {knobs}")
    if sparse and knobs.threads_k * knobs.rows_y + SPARSE_WARP > MAX_THREADS:
        raise ValueError(f"GEMV knobs {knobs} leave no room for the sparse warp under {MAX_THREADS} threads")
    shared = gemv_shared_bytes(k, bits, knobs, fusion, sparse)
    if shared > SHARED_LIMIT:
        raise ValueError(f"GEMV knobs {knobs} need {shared} bytes of shared memory, over the {SHARED_LIMIT} limit")
    words = packed_words(k, bits)
    nblocks = padded_k(k) // BLOCK
    tk, ry, ri, steps, pairs = knobs.threads_k, knobs.rows_y, knobs.rows_inner, knobs.steps, knobs.pairs
    pair_entries, reg_entries = row_table_words(bits, knobs)
    table = pair_entries + reg_entries
    shared_words = P.index_words(bits) - knobs.reg_words  # index words looked up in the shared pair table
    nw, fpw = P.index_words(bits), P.fields_per_word(bits)
    it = -(-nblocks // tk)  # 32-code blocks per thread and row
    rpb = knobs.rows_per_block
    slots = ri * steps  # rows per thread
    grid = -(-n // rpb)
    nthreads = tk * ry
    warps = nthreads // 32
    fused_words = fusion_words(knobs, fusion)
    tab_iters = -(-rpb * table // nthreads)
    red_iters = -(-rpb // warps)
    row_chunks = words // 4  # 16-byte chunks per row (a row is a whole number of them: format.GROUP)
    batch_chunks = ry * ri * row_chunks
    chunk_iters = -(-batch_chunks // nthreads)
    stage_words = stage_buffers(knobs) * ry * ri * words
    sp_words = sparse_words(knobs, sparse)

    def byte_offset(word, m):
        """Byte offset of the table entry named by field m: at 3 bits the field is 4 * index already
        (``pairs.pair_offsets``) and one PRMT (``__byte_perm``) extracts it; otherwise a shift, a mask and a
        scale."""
        if bits == 3:
            return T.call_pure_extern("uint32", "__byte_perm", word, T.uint32(0), T.uint32(0x4440) + T.Cast("uint32", m))
        return P.field(bits, word, m) << T.uint32(2)

    def word(stage, buf, ty, tx, r, j, w):
        """Word w of the thread's j-th block of batch row r, from the shared staging buffer ``buf``."""
        return stage[(buf * ry * ri + ty * ri + r) * words + T.min(j * tk + tx, nblocks - 1) * bits + w]

    @T.macro
    def issue_batch(q, stage, bx, ty, tx, s, buf):
        """cp.async of batch s (its ry * ri rows, whole rows: contiguous 16-byte chunks) into staging buffer
        ``buf``, as one commit group. Loads in registers were sunk by ptxas to just before their use, which
        left ~1 row of loads in flight per thread; async copies stay in flight until the wait. A row past n
        is clamped: computed, never stored."""
        for e in T.unroll(chunk_iters):
            if e * nthreads + ty * tk + tx < batch_chunks:
                T.evaluate(T.call_extern("int32", CP_ASYNC_16, T.address_of(stage[
                    buf * ry * ri * words + (e * nthreads + ty * tk + tx) * 4]), T.address_of(q[
                        T.min(bx * rpb + s * ry * ri + (e * nthreads + ty * tk + tx) // row_chunks, n - 1),
                        (e * nthreads + ty * tk + tx) % row_chunks * 4])))
        T.evaluate(T.call_extern("int32", CP_ASYNC_COMMIT))

    @T.macro
    def store(buf, i, v):
        T.evaluate(T.call_extern("int32", SHARED_STORE, T.address_of(buf[i]), v))

    @T.macro
    def fill_table(lut, tab, bx, ty, tx):
        for e in range(tab_iters):
            if e * nthreads + ty * tk + tx < rpb * table:
                if bx * rpb + (e * nthreads + ty * tk + tx) // table < n:
                    if not pairs:
                        store(tab, e * nthreads + ty * tk + tx, T.Cast(
                            "float32", lut[bx * rpb + (e * nthreads + ty * tk + tx) // table,
                                           (e * nthreads + ty * tk + tx) % table]))
                    else:
                        if (e * nthreads + ty * tk + tx) % table < pair_entries:
                            store(tab, e * nthreads + ty * tk + tx, T.call_pure_extern(
                                "uint32", "__pack_half2",
                                lut[bx * rpb + (e * nthreads + ty * tk + tx) // table,
                                    P.entry_codes(bits, (e * nthreads + ty * tk + tx) % table)[0]],
                                lut[bx * rpb + (e * nthreads + ty * tk + tx) // table,
                                    P.entry_codes(bits, (e * nthreads + ty * tk + tx) % table)[1]]))
                        if reg_entries > 0:  # the register table's words after the pair table (if any)
                            if (e * nthreads + ty * tk + tx) % table >= pair_entries:
                                store(tab, e * nthreads + ty * tk + tx, P.reg_table_word(
                                    lambda c: T.Cast("uint32", T.reinterpret("uint16", lut[
                                        bx * rpb + (e * nthreads + ty * tk + tx) // table, c])),
                                    (e * nthreads + ty * tk + tx) % reg_entries, bits))  # pair_entries: a multiple

    @T.macro
    def load_x(x, xh, tx):
        """The thread's 32-code blocks of x (16-byte loads), zero past k."""
        for j in T.unroll(it):
            if (j * tk + tx + 1) * BLOCK <= k:
                for c in T.unroll(BLOCK // X_VEC):
                    for v in T.vectorized(X_VEC):
                        xh[j * BLOCK + c * X_VEC + v] = x[0, (j * tk + tx) * BLOCK + c * X_VEC + v]
            else:
                for c in T.unroll(BLOCK):
                    if (j * tk + tx) * BLOCK + c < k:
                        xh[j * BLOCK + c] = x[0, (j * tk + tx) * BLOCK + c]
                    else:
                        xh[j * BLOCK + c] = T.Cast(act_dtype, 0)

    @T.macro
    def dot_pairs(tab, stage, xp, iw, cw, rt, sl, lh, mk, acc, acc2, slot, ty, tx, r, a, buf):
        acc[a] = T.float32(0)
        for t in T.unroll(reg_entries):  # the row's register table (uniform shared loads: broadcasts)
            rt[t] = tab[slot * table + pair_entries + t]
        for j in T.unroll(it):
            if bits == 3:
                for w in T.unroll(3):
                    cw[w] = word(stage, buf, ty, tx, r, j, w)
                for i in T.unroll(shared_words):
                    iw[i] = P.pair_offsets(P.index_word_3bit(lambda w: cw[w], i))
                for i in T.unroll(shared_words, nw):
                    iw[i] = P.index_word_3bit(lambda w: cw[w], i)
            else:
                for i in T.unroll(nw):
                    iw[i] = word(stage, buf, ty, tx, r, j, i)
            acc2[0] = T.uint32(0)
            for i in T.unroll(shared_words):
                for m in T.unroll(fpw):
                    acc2[0] = T.call_pure_extern("uint32", HFMA2_U32, xp[j * nw * fpw + i * fpw + m], T.call_extern(
                        "uint32", LOAD_AT_BYTE, T.address_of(tab[slot * table]), byte_offset(iw[i], m)), acc2[0])
            for i in T.unroll(shared_words, nw):
                sl[0] = P.reg_selector(iw[i])
                sl[1] = P.reg_selector_high(sl[0])
                for g in T.unroll(2):
                    if bits == 4:
                        mk[0] = P.reg_mask(iw[i], g)
                    for h in T.unroll(2):
                        lh[h] = P.reg_bytes(lambda t: rt[t], sl[g], h, bits=bits, mask=mk[0])
                    for h in T.unroll(2):
                        acc2[0] = T.call_pure_extern("uint32", HFMA2_U32, xp[j * nw * fpw + i * fpw + 2 * g + h],
                                                     P.reg_half2(lh[0], lh[1], h), acc2[0])
            acc[a] = acc[a] + T.call_pure_extern("float32", HALF2_SUM, acc2[0])

    @T.macro
    def dot_single(tab, stage, xr, acc, slot, ty, tx, r, a, buf):
        acc[a] = T.float32(0)
        for j in T.unroll(it):
            for c in T.unroll(BLOCK):
                acc[a] = acc[a] + xr[j * BLOCK + c] * tab[
                    slot * table + T.Cast("int32", code_at(lambda w: word(stage, buf, ty, tx, r, j, w), bits, c))]

    def row_slot(rptr, idx):
        """The row (within the block) of nonzero ``idx``: the number of the block's later row starts at or
        before it."""
        slot = tirx.const(0, "int32")
        for i in range(1, rpb):
            slot = slot + T.Cast("int32", rptr[i] <= idx)
        return slot

    def nonzero(sb, e, u, lane):
        """Index of the u-th of chunk e's nonzeros that ``lane`` of the sparse warp takes."""
        return sb[0] + (e * SPARSE_AHEAD + u) * SPARSE_WARP + lane

    @T.macro
    def load_nonzeros(col, val, sb, sc, sv, e, lane):
        for u in T.unroll(SPARSE_AHEAD):
            sc[u] = T.if_then_else(nonzero(sb, e, u, lane) < sb[1], col[nonzero(sb, e, u, lane)], 0)
            sv[u] = T.if_then_else(nonzero(sb, e, u, lane) < sb[1], T.Cast("float32", val[nonzero(sb, e, u, lane)]),
                                   T.float32(0))

    @T.macro
    def add_nonzeros(x, rowptr, col, val, rptr, nz, sb, sc, sv, bx, lane):
        """The sparse warp: the block's row pointers into shared memory, the lane's sums ``nz`` (row r at
        ``r * SPARSE_WARP + lane``) zeroed, then its nonzeros' products added to them, ``SPARSE_AHEAD`` loaded
        before the first is used. The first loads read only the CSR, so with PDL they run before the wait for x."""
        for e in T.unroll(-(-(rpb + 1) // SPARSE_WARP)):
            if e * SPARSE_WARP + lane <= rpb:
                store(rptr, e * SPARSE_WARP + lane, rowptr[T.min(bx * rpb + e * SPARSE_WARP + lane, n)])
        for r in T.unroll(rpb):
            store(nz, r * SPARSE_WARP + lane, T.float32(0))
        sb[0] = rowptr[bx * rpb]  # rptr's ends again, from global (cached): read back from shared memory they
        sb[1] = rowptr[T.min(bx * rpb + rpb, n)]  # would put a store, a __syncwarp and a load before the CSR loads
        load_nonzeros(col, val, sb, sc, sv, 0, lane)
        T.evaluate(T.call_extern("int32", "__syncwarp"))
        if pdl:
            T.evaluate(T.call_extern("int32", GRID_WAIT))
        for e in range(T.ceildiv(sb[1] - sb[0], SPARSE_WARP * SPARSE_AHEAD)):
            for u in T.unroll(SPARSE_AHEAD):
                if nonzero(sb, e, u, lane) < sb[1]:
                    store(nz, row_slot(rptr, nonzero(sb, e, u, lane)) * SPARSE_WARP + lane,
                          nz[row_slot(rptr, nonzero(sb, e, u, lane)) * SPARSE_WARP + lane]
                          + sv[u] * T.Cast("float32", x[0, sc[u]]))
            load_nonzeros(col, val, sb, sc, sv, e + 1, lane)

    @T.macro
    def row_sum(red, nz, out, h, slot, tx):
        """The block's partial sums of row ``slot`` (and the sparse lanes' sums ``nz``) added up by one warp into
        ``out[h]`` (lane 0 holds it)."""
        if sparse:
            out[h] = nz[slot * SPARSE_WARP + tx % 32]
        else:
            out[h] = T.float32(0)
        for i in T.unroll(tk // 32):
            out[h] = out[h] + red[slot * tk + i * 32 + tx % 32]
        for o in T.unroll(5):
            out[h] = out[h] + T.tvm_warp_shuffle_down(T.uint32(FULL_MASK), out[h], 16 >> o, 32, 32)

    def scaled(row_sum, scale) -> tirx.Expr:
        """A row sum times the RMSNorm's 1/rms factor (``rms_parts``); plain kernels are left as they were."""
        return row_sum * scale[0] if rms else row_sum

    row_loop = T.unroll if residual or rms else T.serial  # per-row registers (residual) need unrolled indices

    def silu_times(gate, up) -> tirx.Expr:
        """act(gate) * up rounded as the separate kernel rounds it: both rows to the activation dtype, SiLU in
        float32 back to it, then the product in it."""
        g = T.Cast("float32", T.Cast(act_dtype, gate))
        return T.Cast(act_dtype, g * T.sigmoid(g)) * T.Cast(act_dtype, up)

    @T.macro
    def load_h_sq(h_sq, sq, hv, tx):
        """Lane l's share of the producer's block sums: elements l, l + 32, ... (16-byte loads where they
        divide evenly). Every warp reads all of them: with warp sums passed through shared memory instead, the
        7B o_proj -> gate/up pair was 0.46 us slower than the three kernels it replaces, this way 0.14 us
        (H100, two calls: benchmarks/e2e/NOTES.md)."""
        sq[0] = T.float32(0)
        if rms_parts % 128 == 0:
            for e in T.unroll(rms_parts // 128):
                for v in T.vectorized(4):
                    hv[v] = h_sq[(e * 32 + tx % 32) * 4 + v]
                for v in T.unroll(4):
                    sq[0] = sq[0] + hv[v]
        else:
            for e in T.unroll(-(-rms_parts // 32)):
                if e * 32 + tx % 32 < rms_parts:
                    sq[0] = sq[0] + h_sq[e * 32 + tx % 32]

    @T.macro
    def rms_scale(sq, out):
        """rsqrt(mean(h^2) + eps) in lane 0 from the lanes' shares (a fixed order: deterministic). Called after
        the first row's dot product, so that ptxas can overlap the shuffles with the other rows' work; reduced at
        the block's end, every block paid their latency (that 7B pair: 0.62 us slower than the three kernels).
        """
        out[0] = sq[0]
        for o in T.unroll(5):
            out[0] = out[0] + T.tvm_warp_shuffle_down(T.uint32(FULL_MASK), out[0], 16 >> o, 32, 32)
        out[0] = T.rsqrt(out[0] / T.float32(k) + T.float32(fusion.rms_eps))

    @T.macro
    def sync():
        """The dense threads' barrier: the whole block's where no sparse warp runs beside them."""
        if sparse:
            T.evaluate(T.call_extern("int32", dense_sync(nthreads)))
        else:
            T.tvm_storage_sync("shared")

    @T.macro
    def block(x, q, lut, y, rowptr, col, val, res, w, h_sq, yw, block_sq, bx, ty, tx, tid):
        """Thread ``tid`` of block ``bx``: below ``nthreads`` (``ty``, ``tx``) a dense thread, above them a lane of
        the sparse warp."""
        # One shared allocation with its views: separate ones let TVM's storage rewrite overlap the partial sums
        # with the table (it misses the table's uses through address_of), a race when a fast thread stores its
        # sums while others still look up.
        smem = T.alloc_buffer((rpb * table + rpb * tk + stage_words + sp_words + fused_words,), "uint32",
                              scope="shared")
        tab = T.decl_buffer((rpb * table,), "uint32" if pairs else "float32", data=smem.data, scope="shared")
        red = T.decl_buffer((rpb * tk,), "float32", data=smem.data, elem_offset=rpb * table, scope="shared")
        stage = T.decl_buffer((stage_words,), "uint32", data=smem.data, elem_offset=rpb * table + rpb * tk,
                              scope="shared")
        rptr = T.decl_buffer((rpb + 1,), "int32", data=smem.data,  # the block's row pointers (sparse)
                             elem_offset=rpb * table + rpb * tk + stage_words, scope="shared")
        nz = T.decl_buffer((rpb * SPARSE_WARP,), "float32", data=smem.data,  # sparse lanes' sums of products
                           elem_offset=rpb * table + rpb * tk + stage_words + rpb + 1, scope="shared")
        fused = T.decl_buffer((max(fused_words, 1),), "float32", data=smem.data,  # the warps' sums of y^2
                              elem_offset=rpb * table + rpb * tk + stage_words + sp_words, scope="shared")
        xh = T.alloc_buffer((it * BLOCK,), act_dtype, scope="local")
        xr = T.alloc_buffer((it * BLOCK,), "float32", scope="local")
        xp = T.alloc_buffer((it * BLOCK // 2,), "uint32", scope="local")  # x pairs as half2 bits
        iw = T.alloc_buffer((nw,), "uint32", scope="local")
        cw = T.alloc_buffer((3,), "uint32", scope="local")  # a 3-bit block's words
        rt = T.alloc_buffer((max(reg_entries, 1),), "uint32", scope="local")  # register table
        mk = T.alloc_buffer((1,), "uint32", scope="local")  # 4 bits: the codes' top-bit mask
        sl = T.alloc_buffer((2,), "uint32", scope="local")  # PRMT selectors of codes 0-3, 4-7
        lh = T.alloc_buffer((2,), "uint32", scope="local")  # low and high bytes of 4 entries
        acc = T.alloc_buffer((slots,), "float32", scope="local")
        acc2 = T.alloc_buffer((1,), "uint32", scope="local")  # half2 bits
        sb = T.alloc_buffer((2,), "int32", scope="local")  # the block's first and end nonzero
        sc = T.alloc_buffer((SPARSE_AHEAD,), "int32", scope="local")
        sv = T.alloc_buffer((SPARSE_AHEAD,), "float32", scope="local")
        part = T.alloc_buffer((1,), "float32", scope="local")
        pair = T.alloc_buffer((2,), "float32", scope="local")  # gate and up row sums (``silu``)
        sq = T.alloc_buffer((1,), "float32", scope="local")  # h_sq share, or the warp's sum of y^2
        hv = T.alloc_buffer((4,), "float32", scope="local")
        scale = T.alloc_buffer((1,), "float32", scope="local")  # rsqrt(mean(h^2) + eps)
        rres = T.alloc_buffer((red_iters,), act_dtype, scope="local")  # residual of the warp's rows
        rw = T.alloc_buffer((red_iters,), act_dtype, scope="local")  # norm weight of the warp's rows
        yv = T.alloc_buffer((1,), act_dtype, scope="local")
        if tid < nthreads:  # (always, without a sparse warp)
            issue_batch(q, stage, bx, ty, tx, 0, 0)
            if steps > 1:
                issue_batch(q, stage, bx, ty, tx, 1, 1)
            fill_table(lut, tab, bx, ty, tx)
            if pdl:  # everything above read weights only
                T.evaluate(T.call_extern("int32", GRID_WAIT))
            load_x(x, xh, tx)
            if rms:
                load_h_sq(h_sq, sq, hv, tx)
            if residual:  # lane 0 of a warp stores rows e * warps + warp
                for e in T.unroll(red_iters):
                    if tx % 32 == 0 and e * warps + tid // 32 < rpb:
                        rres[e] = res[0, T.min(bx * rpb + e * warps + tid // 32, n - 1)]
                        rw[e] = w[T.min(bx * rpb + e * warps + tid // 32, n - 1)]
            if pairs:  # pair slot q of a block is its codes (2q, 2q + 1): x's own half2 words
                for c in T.unroll(it * BLOCK // 2):
                    xp[c] = T.call_pure_extern("uint32", "__pack_half2", T.Cast("float16", xh[2 * c]),
                                               T.Cast("float16", xh[2 * c + 1]))
            else:
                for c in T.unroll(it * BLOCK):
                    xr[c] = T.Cast("float32", xh[c])
            sync()
            for s in T.unroll(steps):
                if s + 1 < steps:  # batch s landed (s + 1 may still be in flight)
                    T.evaluate(T.call_extern("int32", cp_async_wait(1)))
                else:
                    T.evaluate(T.call_extern("int32", cp_async_wait(0)))
                sync()
                for r in T.unroll(ri):
                    if pairs:
                        dot_pairs(tab, stage, xp, iw, cw, rt, sl, lh, mk, acc, acc2, (s * ry + ty) * ri + r, ty, tx, r,
                                  s * ri + r, s % 2)
                    else:
                        dot_single(tab, stage, xr, acc, (s * ry + ty) * ri + r, ty, tx, r, s * ri + r, s % 2)
                    if rms:
                        if s == 0 and r == 0:
                            rms_scale(sq, scale)
                if s + 2 < steps:  # every thread is done with buffer s % 2: refill it with batch s + 2
                    sync()
                    issue_batch(q, stage, bx, ty, tx, s + 2, s % 2)
            for s in T.unroll(steps):  # after the loop: a store into shared inside it costs two barriers
                for r in T.unroll(ri):
                    store(red, ((s * ry + ty) * ri + r) * tk + tx, acc[s * ri + r])
        else:
            if sparse:
                add_nonzeros(x, rowptr, col, val, rptr, nz, sb, sc, sv, bx, tid - nthreads)
        T.tvm_storage_sync("shared")  # the whole block's one barrier: partial sums and nonzeros stored
        if tid < nthreads:
            if silu:  # a warp sums rows 2p (gate) and 2p + 1 (up) and stores act(gate) * up
                for e in range(-(-rpb // 2 // warps)):
                    if e * warps + tid // 32 < rpb // 2:
                        for h in T.unroll(2):
                            row_sum(red, nz, pair, h, 2 * (e * warps + tid // 32) + h, tx)
                        if tx % 32 == 0 and bx * rpb + 2 * (e * warps + tid // 32) < n:
                            y[0, bx * rpb // 2 + e * warps + tid // 32] = silu_times(
                                scaled(pair[0], scale), scaled(pair[1], scale))
            else:
                if residual:
                    sq[0] = T.float32(0)
                for e in row_loop(red_iters):
                    if e * warps + tid // 32 < rpb:
                        row_sum(red, nz, part, 0, e * warps + tid // 32, tx)
                        if tx % 32 == 0 and bx * rpb + e * warps + tid // 32 < n:
                            yv[0] = T.Cast(act_dtype, scaled(part[0], scale))
                            if residual:  # rounded as the separate add rounds: GEMV output, then sum
                                yv[0] = yv[0] + rres[e]
                                sq[0] = sq[0] + T.Cast("float32", yv[0]) * T.Cast("float32", yv[0])
                            y[0, bx * rpb + e * warps + tid // 32] = yv[0]
                            if residual:  # the norm's weight, in float32 (the 1/rms factor: the next GEMV)
                                yw[0, bx * rpb + e * warps + tid // 32] = T.Cast(
                                    act_dtype, T.Cast("float32", yv[0]) * T.Cast("float32", rw[e]))
                if residual:  # the block's sum of y^2: warps' sums in shared memory, added in order
                    if tx % 32 == 0:
                        store(fused, tid // 32, sq[0])
                    sync()
                    if tid == 0:
                        sq[0] = T.float32(0)
                        for w in T.unroll(warps):
                            sq[0] = sq[0] + fused[w]
                        block_sq[bx] = sq[0]

    @T.macro
    def body(x, q, lut, y, rowptr, col, val, res, w, h_sq, yw, block_sq):
        for bx in T.thread_binding(grid, thread="blockIdx.x"):
            if sparse:  # one flat index: the sparse warp is one warp, whatever ``threads_k`` is
                for tid in T.thread_binding(nthreads + SPARSE_WARP, thread="threadIdx.x"):
                    block(x, q, lut, y, rowptr, col, val, res, w, h_sq, yw, block_sq, bx, tid // tk, tid % tk, tid)
            else:
                for ty in T.thread_binding(ry, thread="threadIdx.y"):
                    for tx in T.thread_binding(tk, thread="threadIdx.x"):
                        block(x, q, lut, y, rowptr, col, val, res, w, h_sq, yw, block_sq, bx, ty, tx, ty * tk + tx)

    return mark(_signature(body, n, k, words, bits, sparse, act_dtype, n_out, fusion, grid), pdl)


def _signature(body, n: int, k: int, words: int, bits: int, sparse: bool, act_dtype: str, n_out: int,
               fusion: GemvFusion, grid: int) -> tirx.PrimFunc:
    """The PrimFunc around ``body``. Parameters: x, qweight, lut, [rowptr, col, val], [res, w (``residual``)],
    [h_sq (``rms_parts``)], y, [y * w, block_sq (``residual``)]: extra inputs after the weight, extra outputs
    last. Absent ones are dropped from the signature; the body never touches them."""
    res_n, sq_n, out_n = (n if fusion.residual else 1), max(fusion.rms_parts, 1), (grid if fusion.residual else 1)

    @T.prim_func
    def full(x: T.Buffer((1, k), act_dtype), q: T.Buffer((n, words), "uint32"),
             lut: T.Buffer((n, 1 << bits), "float16"), rowptr: T.Buffer((n + 1,), "int32"), col_h: T.handle,
             val_h: T.handle, res: T.Buffer((1, res_n), act_dtype), w: T.Buffer((res_n,), act_dtype),
             h_sq: T.Buffer((sq_n,), "float32"), y: T.Buffer((1, n_out), act_dtype),
             yw: T.Buffer((1, res_n), act_dtype), block_sq: T.Buffer((out_n,), "float32")):
        T.func_attr({"tirx.noalias": True})
        nnz = T.int64()
        col = T.match_buffer(col_h, (nnz,), "int32")
        val = T.match_buffer(val_h, (nnz,), "float16")
        body(x, q, lut, y, rowptr, col, val, res, w, h_sq, yw, block_sq)

    res = fusion.residual
    keep = [True, True, True, sparse, sparse, sparse, res, res, fusion.rms_parts > 0, True, res, res]
    return tirx.PrimFunc([p for p, kept in zip(full.params, keep) if kept], full.body, full.ret_type, full.attrs)
