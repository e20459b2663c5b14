"""The CUDA prefill rule (m > 1 or symbolic) on tensor cores, written out: a pipelined ``mma.sync`` GEMM that
decodes each weight tile once per CUDA block, with the sparse part folded into the decoded tile.

TVM 0.27's own tensor-core schedule (dlight ``gpu.Matmul``, ``gemm_tc.py``) takes 2.9-3.3x cuBLAS' time on an
H100 even on plain fp16 weights (``benchmarks/kernels/NOTES.md``): no multi-stage pipeline, no ``ldmatrix``.
This kernel is the usual Ampere-class design with the weight side replaced by the LUT decode:

  * A block computes a ``tile_m x tile_n`` tile of y; ``warps_m x warps_n`` warps own ``16 MT x 8 NT`` pieces.
    Per K-tile (``tile_k`` = 32 or 64 codes), each warp loads its fragments with ``ldmatrix.x4`` and issues
    ``mma.sync.m16n8k16`` (fp16 in, float32 accumulators).
  * x tiles stream into shared memory with ``cp.async`` (zero-filled past m and k), ``stages`` tiles in
    flight, one commit group per tile.
  * The weight tile is decoded by the block's threads into a double-buffered fp16 tile: each thread owns one
    row of the tile and 8-32 codes of it for the whole K loop, so its row's LUT sits in registers as the
    PRMT register table of the GEMV (``pairs.reg_*``). The code words travel with x: the commit group of x
    tile t also copies the codes of tile t + 1 into a ring of ``stages`` slots, because tile t + 1 is decoded
    while tile t's MMAs run. One barrier per K-tile. (Code words loaded into registers a few tiles ahead
    instead left the DRAM latency exposed: ~1 us per K-tile on an H100.)
  * The +0.45% sparse part is added into the decoded fp16 tile before the MMAs read it, from ``sp_tiles``
    (``runtime/sparse_tiles.py``: the nonzeros listed per 32 x 32 tile of the weight). A warp decodes 32 rows x
    8-64 columns of the tile; after ``__syncwarp`` its lane ``i`` adds the ``i``-th nonzero of those (then
    ``i + 32`` ...). The offsets and first entries are loaded a K-tile ahead, by coherent loads (ptxas may sink
    ``ld.global.nc`` past a barrier to its use). No second kernel, no second pass over x, no block barrier.
    On the 7B shapes at 512 rows this costs +10-22% over the dense GEMM; each thread walking its own row's CSR
    entries, a divergent loop before every K-tile's barrier, cost +32-71% (``benchmarks/kernels/NOTES.md``, v13).
  * Shared tiles are rows of ``tile_k`` fp16 (64 or 128 bytes) whose 16-byte chunks are XOR-swizzled by the row
    (``swizzled``), so the eight rows an ``ldmatrix`` (or a warp's 16-byte stores) touch hit eight different
    bank groups.
  * Short prompts (m <= ``SHORT_ROWS``) would leave most rows of the tuned tiles empty and the GPU with few
    blocks, so the PrimFunc holds a second kernel with narrow tiles (``SHORT_KNOBS``) and the host picks one by
    the call's row count.

Rule ``"wgmma"`` (sm_90a) is the same kernel with Hopper's warpgroup MMA in place of ``ldmatrix`` + ``mma.sync``:
each warpgroup of four warps issues ``wgmma.mma_async m64 x tile_n x k16`` on its 64 rows of x and the whole
decoded tile, both read by the tensor cores straight from shared memory through descriptors. The tiles' XOR
swizzle on 128-byte rows is the hardware's 128-byte swizzle, so the copies and the decode write them unchanged;
the tiles are shifted to a 1024-byte boundary at run time (the swizzle repeats every 8 rows). The MMAs run
asynchronously while the same threads decode the next K-tile; ``wgmma.wait_group`` and a proxy fence (the
decoded tile and landed copies are generic-proxy writes, wgmma reads through the async proxy) precede the
K-tile's barrier. On an H200 the 512-row 7B GEMMs take 122-132 us against the mma rule's 182-198 (cuBLAS fp16:
63): the mma rule's threads moved every fragment through ``ldmatrix`` and registers.

With ``weights_in_registers`` (sm_90a) the roles swap: the weights are the wgmma's A operand, y^T = W x^T.
Each thread decodes its own A fragments into registers (rows g and g + 8 of its warp's 16; ``pairs.quad_word``
gathers exactly its codes, byte q of each index word) while the previous K-tile's wgmmas run (two fragment sets
alternate, so that a K-tile's MMAs stay queued while the threads wait at the next barrier), and x is the B
operand from shared memory. The decoded weights never touch shared memory, whose bandwidth bounded the
shared-operand kernel (Nsight Compute: L1 84% busy once its barrier was taken away; ``benchmarks/kernels/NOTES.md``,
v14). Its x tiles come by the Tensor Memory Accelerator: thread 0 copies a whole tile (the hardware applies the
same 128-byte swizzle and the zero fill past m and K) described by a tensor map that the host encodes per call
(``encode_x_map``), and the wgmmas wait on the stage's mbarrier. The threads, latency-bound with one block of eight
warps per SM, then issue no copy instructions for x: 6-18% faster than with eight 16-byte ``cp.async`` a thread per
K-tile. The shared-operand kernel, bound by shared-memory bandwidth, lost up to 5% with the TMA and keeps its copies
(NOTES.md, v16). Built with a ptxas older than 13.3 it would be wrong (``cuda_host.WGMMA_RS_PTXAS``), so
``matmul.py`` falls back there. Up to 256 rows of x feed one ``m64n256k16`` per decoded fragment, half the decode
per multiply-add of 128; at M = 512 such tiles leave half the SMs idle at N = 4096, so ``split_k`` blocks of a
thread-block cluster take one K range each and add their accumulators through distributed shared memory (each block
finishes an equal share of the tile's columns), with no second kernel and no workspace in global memory. The
shared-operand kernel splits K the same way (its groups are 8 weight columns): a sparse GEMM of 128 rows has one x
tile, 32 blocks at N = 4096, and split 3 took it from 136 to 51 us on an H200 (NOTES.md, v16).

A sparse weight's nonzeros cannot be added into registers by the lanes that read them, as the shared-operand kernel
adds them into its decoded tile: a fragment register is private to one thread and cannot be indexed at run time. So
each K-tile's nonzeros go through a small shared buffer laid out as the threads' fragments, written by a warpgroup
of their own (``SPARSE_THREADS``; no MMAs). Two K-tiles ahead of its decode it zeroes the K-tile's buffer and stores
each nonzero of the block's ``sp_tiles`` tiles at the 16-bit slot of the thread and register that hold that weight
(``a_fragment``, ``delta_half``); after decoding, each MMA thread adds its 64 bytes of slots to its fragments (four
16-byte loads, sixteen ``add.f16x2``). One buffer per K-tile parity, 16 KB per 128 weight rows. When the MMA warps
walked the lists themselves (offsets, prefetches, slot addresses, zeroing: ~80 of a warp's ~270 instructions per
K-tile in SASS) that walk sat on their critical path, and the +0.45% GEMMs at 512 rows of the 7B shapes ran 19-21%
behind dense on an H200; with the sparse warpgroup, 6-10% (NOTES.md, v19). It needs few registers and hands the rest
of its share to the MMA warpgroups (``setmaxnreg``, as warp-specialized Hopper GEMMs do): ptxas would give every
thread only 168 beside two of them, and beside one it would leave room for one block per SM where the dense kernel
runs two (``sparse_blocks_per_sm``, ``__launch_bounds__(256, 2)``).

Needs sm_80 (cp.async, m16n8k16), fp16 activations, 3 or 4 bits (the register table) and K a multiple of 8
(16-byte rows of x); ``applies`` says so, and ``matmul.py`` falls back to the dlight rule elsewhere.
"""
from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

from . import pairs as P
from .gemv_cuda import CP_ASYNC_COMMIT, cp_async_wait
from .knobs import GemmKnobs
from .layout import BLOCK, lut_matmul_signature, packed_words, padded_k, rows_dim
from ..runtime.sparse_tiles import TILE, entry_col, entry_row, tile_counts

MIN_ARCH = 80
# Dynamic shared memory a block may opt into on every arch from sm_80 (sm_86 / sm_89 allow 99 KB); the runtime
# raises the kernel's limit at load time.
SHARED_LIMIT = 96 * 1024
WGMMA_ARCH = "sm_90a"
WGMMA_SHARED_LIMIT = 227 * 1024  # sm_90's opt-in maximum per block

# Inline PTX as immediately-invoked lambdas, as the GEMV's helpers (gemv_cuda.py): fragments are passed by pointer
# into unrolled local arrays, which nvcc keeps in registers.
MMA_16816 = ('[](float* c, unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned b0, unsigned b1) { '
             'asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, '
             '{%8,%9}, {%0,%1,%2,%3};" : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3]) : "r"(a0), "r"(a1), '
             '"r"(a2), "r"(a3), "r"(b0), "r"(b1)); return 0; }')
LDMATRIX_X4 = ('[](unsigned* r, const void* p) { asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 '
               '{%0,%1,%2,%3}, [%4];" : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : '
               '"r"((unsigned)__cvta_generic_to_shared(p))); return 0; }')
# 16 (or 4) bytes global -> shared; ``n`` source bytes are read and the rest zero-filled (0: all zeros).
CP_ASYNC_ZFILL = ('[](void* dst, const void* src, unsigned n) { asm volatile("cp.async.cg.shared.global [%0], '
                  '[%1], 16, %2;" :: "r"((unsigned)__cvta_generic_to_shared(dst)), "l"(src), "r"(n) : "memory"); '
                  'return 0; }')
# The same, from ``base`` plus ``off`` halves: a block's x rows are one 64-bit base and 32-bit offsets, where a
# clamped 64-bit (row, column) index per copy cost ~18 instructions (benchmarks/kernels/NOTES.md, v15).
CP_ASYNC_ZFILL_AT = ('[](void* dst, const void* base, unsigned off, unsigned n) { asm volatile("cp.async.cg.shared.global '
                     '[%0], [%1], 16, %2;" :: "r"((unsigned)__cvta_generic_to_shared(dst)), '
                     '"l"((const unsigned short*)base + off), "r"(n) : "memory"); return 0; }')
CP_ASYNC_ZFILL_4 = ('[](void* dst, const void* src, unsigned n) { asm volatile("cp.async.ca.shared.global [%0], '
                    '[%1], 4, %2;" :: "r"((unsigned)__cvta_generic_to_shared(dst)), "l"(src), "r"(n) : "memory"); '
                    'return 0; }')
# A decoded weight plus the fp16 value in the low half of an ``sp_tiles`` entry. Through a pointer: the barriers
# around it are ours, not TVM's planner's.
ADD_HALF = ('[](void* p, unsigned e) { __half* h = (__half*)p; *h = __hadd(*h, __ushort_as_half((unsigned short)e)); '
            'return 0; }')
# A thread's code words from the shared ring (3: three 32-bit loads; 4: one 128-bit load). Through pointers
# for the same reason as ADD_HALF: the cp.async writes are invisible to the planner, the barriers are ours.
LOAD_WORDS = {3: '[](unsigned* r, const void* p) { const unsigned* s = (const unsigned*)p; r[0] = s[0]; r[1] = s[1]; '
                 'r[2] = s[2]; return 0; }',
              4: '[](unsigned* r, const void* p) { uint4 v = *(const uint4*)p; r[0] = v.x; r[1] = v.y; r[2] = v.z; '
                 'r[3] = v.w; return 0; }'}
# A coherent 32-bit global load: ptxas may sink the ``ld.global.nc`` nvcc emits for a read-only input past
# ``bar.sync`` to its use (benchmarks/kernels/NOTES.md, v12), which would expose the prefetch's latency.
LOAD_U32 = '[](const void* p) { unsigned v; asm volatile("ld.global.u32 %0, [%1];" : "=r"(v) : "l"(p)); return v; }'
SYNC_WARP = '[]() { __syncwarp(); return 0; }'
# A weight's value into the register-operand kernel's shared deltas (an ``sp_tiles`` entry's low 16 bits; the
# slot is zero and no other entry shares it), and a thread's zeroing of its 16 bytes of them.
STORE_U16 = '[](void* p, unsigned e) { *(unsigned short*)p = (unsigned short)e; return 0; }'
ZERO_U4 = '[](void* p) { *(uint4*)p = make_uint4(0u, 0u, 0u, 0u); return 0; }'
STORE_HALF2 = '[](void* p, float a, float b) { *(__half2*)p = __floats2half2_rn(a, b); return 0; }'

# Hopper (sm_90a) warpgroup MMA: operands read by the tensor cores from shared memory through 64-bit descriptors,
# issued asynchronously. Descriptor: start address >> 4, leading byte offset 16 (unused by swizzled K-major
# tiles), stride byte offset 1024 (eight 128-byte rows), 128-byte swizzle (mode 1 in bits 62-63): exactly the
# XOR pattern of ``swizzled`` on 64-code rows, given a tile base aligned to 1024 bytes.
WGMMA_FENCE = '[]() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); return 0; }'
WGMMA_COMMIT = '[]() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); return 0; }'
WGMMA_WAIT = '[]() { asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory"); return 0; }'
# The rows of x as a value nothing can reason about: the register-operand kernel compares its stores against it
# even where its tier of rows proves them in bounds. Without those checks the unsplit 256-row kernel computed 6-9%
# wrong outputs inside a bounded tier (rows <= 256 with a kernel for more rows after it) on an H200, while its CUDA
# differed only in the dropped checks; with them every mix was right (benchmarks/kernels/NOTES.md, v17 and v18).
# Most likely ptxas mis-compiles the unguarded epilogue next to the in-flight wgmma; not confirmed.
OPAQUE_I64 = '[](long long v) { long long r; asm("mov.b64 %0, %1;" : "=l"(r) : "l"(v)); return r; }'
# Orders this thread's generic-proxy shared-memory writes (stores, landed cp.async) before the async proxy's
# (wgmma's) reads; the barrier after it makes that hold for the whole block.
FENCE_PROXY_ASYNC = '[]() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); return 0; }'
# Halves from the dynamic shared buffer's start to the next 1024-byte boundary (the swizzle atom's alignment).
ALIGN_1024 = ('[](const void* p) { unsigned a = (unsigned)__cvta_generic_to_shared(p); '
              'return (int)(((1024u - (a & 1023u)) & 1023u) >> 1); }')
WGMMA_ALIGN = 1024  # bytes a wgmma block allocates beyond its tiles, for ALIGN_1024's shift
# The descriptor of the tile at ``p``; a tile ``b`` bytes further has this plus ``b >> 4`` (start address field).
SMEM_DESC = ('[](const void* p) { return (unsigned long long)((__cvta_generic_to_shared(p) & 0x3FFFF) >> 4) '
             '| (1ull << 16) | (64ull << 32) | (1ull << 62); }')


def wgmma_m64k16(n: int, a_in_registers: bool = False) -> str:
    """``wgmma.mma_async m64 x n x k16`` (fp16 in, float32 accumulators ``d[0 .. n/2)``), B = n rows of a K-major
    128-byte-swizzled tile given by its descriptor. A = 64 rows of the other tile by descriptor too, or with
    ``a_in_registers`` four registers per thread (a warp's 16 rows as ``mma.sync``'s A fragment)."""
    acc = n // 2
    regs = ", ".join(f"%{i}" for i in range(acc))
    outs = ", ".join(f'"+f"(d[{i}])' for i in range(acc))
    if a_in_registers:
        params, ins, a, b, imm = ("unsigned a0, unsigned a1, unsigned a2, unsigned a3, unsigned long long b",
                                  '"r"(a0), "r"(a1), "r"(a2), "r"(a3), "l"(b)',
                                  f"{{%{acc}, %{acc + 1}, %{acc + 2}, %{acc + 3}}}", acc + 4, "1, 1, 0")
    else:
        params, ins, a, b, imm = ("unsigned long long a, unsigned long long b", '"l"(a), "l"(b)', f"%{acc}", acc + 1,
                                  "1, 1, 0, 0")
    return (f'[](float* d, {params}) {{ asm volatile("{{ .reg .pred p; setp.ne.b32 p, %{b + 1}, 0; '
            f'wgmma.mma_async.sync.aligned.m64n{n}k16.f32.f16.f16 {{{regs}}}, {a}, %{b}, p, {imm}; }}" : {outs} : '
            f'{ins}, "r"(1) : "memory"); return 0; }}')


# All but the newest commit group of this thread's wgmmas done: the weights-in-registers kernel keeps one K-tile's
# MMAs in flight while it decodes into the other fragment set.
WGMMA_WAIT_1 = '[]() { asm volatile("wgmma.wait_group.sync.aligned 1;" ::: "memory"); return 0; }'

# Split-K inside a cluster: four partial sums into the same shared address of block ``rank`` of the cluster
# (``mapa`` gives that block's window), the cluster's barrier (release / acquire order those stores before the
# reads), and the received partials added into the accumulators.
STORE_CLUSTER_F32X4 = ('[](const void* p, unsigned rank, const float* v) { unsigned t, s = (unsigned)'
                       '__cvta_generic_to_shared(p); asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(t) : '
                       '"r"(s), "r"(rank)); asm volatile("st.shared::cluster.v4.f32 [%0], {%1, %2, %3, %4};" :: '
                       '"r"(t), "f"(v[0]), "f"(v[1]), "f"(v[2]), "f"(v[3]) : "memory"); return 0; }')
CLUSTER_SYNC = ('[]() { asm volatile("barrier.cluster.arrive.release.aligned;\\n\\tbarrier.cluster.wait.acquire.aligned;" '
                '::: "memory"); return 0; }')
ADD_F32X4 = ('[](float* d, const void* p) { float4 v = *(const float4*)p; d[0] += v.x; d[1] += v.y; d[2] += v.z; '
             'd[3] += v.w; return 0; }')

# The register-operand kernel's x tiles by the Tensor Memory Accelerator: one thread copies a whole tile (tile_k
# columns x tile_m rows, zero-filled past m and K, in the 128-byte swizzle of ``swizzled``) described by a tensor map
# that the host encodes per call; the tile's arrival is counted in bytes on an mbarrier of its stage, whose phase
# the consumers wait on. Per thread and K-tile that replaces eight 16-byte cp.async and their addresses.
MBARRIER_INIT = ('[](void* bar) { asm volatile("mbarrier.init.shared::cta.b64 [%0], 1;" :: '
                 '"r"((unsigned)__cvta_generic_to_shared(bar)) : "memory"); return 0; }')
# The barriers' initialisation, made visible to the async proxy (the copies complete on them).
FENCE_MBARRIER_INIT = '[]() { asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory"); return 0; }'
TMA_LOAD_2D = ('[](void* dst, unsigned long long map, void* bar, int col, int row, unsigned bytes) { unsigned b = '
               '(unsigned)__cvta_generic_to_shared(bar); asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, '
               '[%0], %1;" :: "r"(b), "r"(bytes) : "memory"); asm volatile("cp.async.bulk.tensor.2d.shared::cluster'
               '.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];" :: "r"((unsigned)'
               '__cvta_generic_to_shared(dst)), "l"(map), "r"(col), "r"(row), "r"(b) : "memory"); return 0; }')
# Until the barrier's phase of the given parity has completed (the braces scope the labels of each inlined copy).
MBARRIER_WAIT = ('[](void* bar, unsigned parity) { asm volatile("{ .reg .pred p; WAIT: mbarrier.try_wait.parity'
                 '.shared::cta.b64 p, [%0], %1; @!p bra WAIT; }" :: "r"((unsigned)__cvta_generic_to_shared(bar)), '
                 '"r"(parity) : "memory"); return 0; }')
SWIZZLE_128B, L2_PROMOTION_128B = 3, 2  # CUtensorMapSwizzle / CUtensorMapL2promotion values


def add_fragment_deltas(steps: int, stride: int) -> str:
    """A thread's deltas of one K-tile, added into its A fragments (``a[4 s .. 4 s + 4)`` per k16 step s, half2
    each): per step one 16-byte load from ``p + s * stride`` (16-byte units; the threads' slots are adjacent, so a
    warp's loads are conflict-free) and four fp16x2 adds (round to nearest, as the shared-operand kernel's add into
    its decoded tile)."""
    adds = " ".join(f'asm("add.rn.f16x2 %0, %0, %1;" : "+r"(a[4 * s + {i}]) : "r"(v.{f}));'
                    for i, f in enumerate("xyzw"))
    return (f'[](unsigned* a, const void* p) {{ const uint4* d = (const uint4*)p; _Pragma("unroll") for (int s = 0; '
            f's < {steps}; ++s) {{ uint4 v = d[s * {stride}]; {adds} }} return 0; }}')


REGISTER_FILE = 64 * 1024  # 32-bit registers of an SM
# The register-operand kernel's sparse warpgroup: it stores the nonzeros into the shared deltas while the MMA
# warpgroups decode, and needs few registers.
SPARSE_THREADS = 128
SPARSE_REGISTERS = 40
MIN_BLOCKS_ATTR = "tirx.launch_bounds_min_blocks_per_sm"  # TVM writes it as __launch_bounds__'s second operand


def sparse_blocks_per_sm(mma_threads: int) -> int:
    """Blocks an SM of the sparse register-operand kernel: two beside one MMA warpgroup, as the dense kernel of that
    tile runs (~160 registers a thread), one beside two."""
    return 2 if mma_threads == 128 else 1


def sparse_registers(mma_threads: int) -> tuple[int, int]:
    """(MMA warpgroups', sparse warpgroup's) registers a thread after ``setmaxnreg``. At launch ptxas gives every
    thread an equal share of the block's part of the register file (at 384 threads 168; at 256 threads and two
    blocks an SM 128), too few for the MMA warpgroups; the sparse warpgroup hands them the rest of its share, as
    warp-specialized Hopper GEMMs do."""
    lane = REGISTER_FILE // sparse_blocks_per_sm(mma_threads) // 128  # the block's registers per warpgroup lane
    return (lane - SPARSE_REGISTERS) // (mma_threads // 128) // 8 * 8, SPARSE_REGISTERS


# The sparse warpgroup's own barrier (the block's barrier 0 is __syncthreads): its zeroing of a buffer of deltas
# before any of its threads stores a nonzero there.
SPARSE_SYNC = f'[]() {{ asm volatile("bar.sync 1, {SPARSE_THREADS};" ::: "memory"); return 0; }}'


def set_max_registers(count: int, more: bool) -> str:
    """Raise (``more``) or lower this warpgroup's registers a thread to ``count`` (a multiple of 8; all its threads
    run it)."""
    return (f'[]() {{ asm volatile("setmaxnreg.{"inc" if more else "dec"}.sync.aligned.u32 {count};"); '
            f'return 0; }}')


def applies(k: int, bits: int, act_dtype: str, arch: int) -> bool:
    """Whether this rule can build the GEMM (see the module doc)."""
    return arch >= MIN_ARCH and act_dtype == "float16" and bits in P.REG_BITS and k % 8 == 0


def wgmma_applies(k: int, bits: int, act_dtype: str, nvcc_arch: str) -> bool:
    """The wgmma kernel needs what the mma one needs and Hopper's arch-specific features (``sm_90a``)."""
    return nvcc_arch == WGMMA_ARCH and applies(k, bits, act_dtype, 90)


def mma_shared_bytes(knobs: GemmKnobs, sparse: bool = False) -> int:
    """x stages and the double-buffered decoded weight tile (fp16; with the weights in registers none, but a
    sparse GEMM's two K-tiles of deltas in the same size), and the ring of code words, sized for 4 bits (the
    larger ring), so that knobs valid at one width are valid at the other; wgmma adds its alignment slack."""
    decoded = 2 * knobs.tile_n if sparse or not knobs.weights_in_registers else 0
    barriers = rs_barrier_words(knobs.stages) * 4 if knobs.weights_in_registers else 0  # the TMA copies' mbarriers
    return ((knobs.stages * knobs.tile_m + decoded) * knobs.tile_k * 2
            + knobs.stages * knobs.tile_n * knobs.tile_k // BLOCK * 4 * 4 + barriers
            + (WGMMA_ALIGN if knobs.rule == "wgmma" else 0))


def rs_barrier_words(stages: int) -> int:
    """32-bit words of the register-operand kernel's mbarriers, a multiple of four so that the deltas after them
    stay 16-byte aligned."""
    return -(-2 * stages // 4) * 4


def check_mma_knobs(knobs: GemmKnobs, sparse: bool = False) -> None:
    knobs.validate()
    if knobs.weights_in_registers and knobs.rule != "wgmma":
        raise ValueError(f"weights in registers need the wgmma rule: {knobs}")
    # the MMA's M side is split into warpgroups; with the weights in registers that is the weight tile
    wg_rows, mma_n = (knobs.tile_n, knobs.tile_m) if knobs.weights_in_registers else (knobs.tile_m, knobs.tile_n)
    if knobs.rule == "wgmma" and (wg_rows % 64 or knobs.warps_m != wg_rows // 16 or knobs.warps_n != 1
                                  or knobs.tile_k != 2 * BLOCK or mma_n % 8 or not 16 <= mma_n <= 256):
        raise ValueError(f"wgmma tiles are warpgroups of 64 rows (of x, or with the weights in registers of the "
                         f"weight; warps_m = rows / 16, warps_n = 1) and up to 256 columns over 64-code K-tiles: "
                         f"{knobs}")
    warps = knobs.warps_m * knobs.warps_n
    threads = 32 * warps
    if knobs.split_k > 1 and (knobs.rule != "wgmma" or split_groups(knobs) < knobs.split_k
                              or split_exchange_bytes(knobs) > 2 * knobs.stages * knobs.tile_m * knobs.tile_k):
        raise ValueError(f"split-K blocks (wgmma) each finish 8-column groups of the accumulators, and receive the "
                         f"others' partials into their x stages: {knobs}")
    if not knobs.weights_in_registers and (knobs.tile_m % (16 * knobs.warps_m)
                                           or knobs.tile_n % (16 * knobs.warps_n)):
        raise ValueError(f"mma tiles need 16-row warp pieces in M and 16-column ones in N: {knobs}")
    if knobs.tile_k not in (BLOCK, 2 * BLOCK):
        raise ValueError(f"mma K-tiles are one or two 32-code blocks, got tile_k={knobs.tile_k}: {knobs}")
    if threads % knobs.tile_n or threads // knobs.tile_n not in (1, 2, 4) or warps % (threads // knobs.tile_n):
        raise ValueError(f"mma tiles need 1, 2 or 4 threads per weight row ({threads} threads, tile_n "
                         f"{knobs.tile_n}): {knobs}")
    if knobs.tile_m * knobs.tile_k // 8 % threads:
        raise ValueError(f"the x tile ({knobs.tile_m} rows) must split evenly over {threads} threads: {knobs}")
    if knobs.stages < 2 + knobs.weights_in_registers:
        raise ValueError(f"mma needs at least 2 x stages (3 with the weights in registers: their copies run "
                         f"stages - 2 ahead): {knobs}")
    limit = WGMMA_SHARED_LIMIT if knobs.rule == "wgmma" else SHARED_LIMIT
    if mma_shared_bytes(knobs, sparse) > limit:
        raise ValueError(f"{knobs.rule} knobs {knobs} need up to {mma_shared_bytes(knobs, sparse)} bytes of shared "
                         f"memory{' (sparse)' if sparse else ''}, over the {limit} limit")


def split_groups(knobs: GemmKnobs) -> int:
    """Accumulator groups of a thread, four floats each: 8 columns of the MMA's N (rows of x with the weights in
    registers, columns of the weight tile in the shared-operand kernel)."""
    return (knobs.tile_m if knobs.weights_in_registers else knobs.tile_n) // 8


def split_owner(i, knobs: GemmKnobs):
    """The block of a split-K cluster that finishes accumulator group ``i``, in contiguous equal shares; ``i`` an
    int or a TIR expression."""
    return i * knobs.split_k // split_groups(knobs)


def split_share(knobs: GemmKnobs) -> int:
    """The most groups one block of a split-K cluster finishes."""
    owners = [split_owner(i, knobs) for i in range(split_groups(knobs))]
    return max(map(owners.count, range(knobs.split_k)))


def split_slot(sender, i, tid, knobs: GemmKnobs):
    """Where thread ``tid``'s group ``i`` from the ``sender``-th other block of the cluster (0 .. split_k - 2, in
    rank order without the owner) lands in the owner's x stages, in floats from their start: 16 bytes a thread,
    threads adjacent, so the stores and loads are conflict-free."""
    first = (split_owner(i, knobs) * split_groups(knobs) + knobs.split_k - 1) // knobs.split_k  # owner's first group
    return ((sender * split_share(knobs) + i - first) * knobs.threads + tid) * 4


def split_exchange_bytes(knobs: GemmKnobs) -> int:
    """Shared memory a split-K block receives the other blocks' partials into."""
    return (knobs.split_k - 1) * split_share(knobs) * knobs.threads * 16


def _k_range(knobs: GemmKnobs, ntiles: int):
    """A block's place in split-K: ``(x_tile, rank, first, end)``, functions of blockIdx.x (the x tile times
    ``split_k`` plus the block's rank in its cluster) giving its x tile, rank and K-tiles [first, end). Python ints
    without split-K, so that the K loop keeps static bounds: run-time ones cost the register-operand 128 x 128
    kernel 21 registers (149, one block per SM instead of two) and 20% of its speed at 512 x 11008 x 4096 on an
    H200."""
    split = knobs.split_k
    per_block = -(-ntiles // split)  # K-tiles a block takes (the last may take fewer)

    def x_tile(bx):
        return bx // split if split > 1 else bx

    def rank(bx):
        return T.Cast("int32", bx % split) if split > 1 else 0

    def first(bx):
        return rank(bx) * per_block

    def end(bx):
        return T.min(first(bx) + per_block, ntiles) if split > 1 else ntiles

    return x_tile, rank, first, end


def _launch(n: int, knobs: GemmKnobs, nthreads: int, block, min_blocks: int = 1):
    """The grid of both wgmma/mma kernels as ``launch(x, q, lut, y, tiles, rows)``: ``block(x, q, lut, y, tiles,
    rows, bx, by, tid)`` per x tile (times ``split_k``: a cluster's blocks are consecutive blockIdx.x) and weight
    tile. ``min_blocks`` > 1 has ptxas fit that many blocks on an SM (``__launch_bounds__``)."""
    split = knobs.split_k

    @T.macro
    def tile(x, q, lut, y, tiles, rows, bx, by, tid):
        if split > 1:
            for _ in T.thread_binding(split, thread="clusterCtaIdx.x"):
                block(x, q, lut, y, tiles, rows, bx, by, tid)
        else:
            block(x, q, lut, y, tiles, rows, bx, by, tid)

    @T.macro
    def launch(x, q, lut, y, tiles, rows):
        for bx in T.thread_binding(T.ceildiv(rows, knobs.tile_m) * split, thread="blockIdx.x"):
            for by in T.thread_binding(-(-n // knobs.tile_n), thread="blockIdx.y"):
                for tid in T.thread_binding(nthreads, thread="threadIdx.x"):
                    if min_blocks > 1:
                        with T.attr(0, MIN_BLOCKS_ATTR, min_blocks):
                            tile(x, q, lut, y, tiles, rows, bx, by, tid)
                    else:
                        tile(x, q, lut, y, tiles, rows, bx, by, tid)

    return launch


def _split_exchange(knobs: GemmKnobs):
    """Split-K's ``exchange(red, acc, base, rank, tid)``: the accumulator groups other blocks finish, into their x
    stages ``red`` (every block is past its K loop: the first cluster barrier); the groups this block finishes,
    plus what it received (the second). Group i is ``acc[4 i .. 4 i + 4)`` in both wgmma kernels."""
    groups, split = split_groups(knobs), knobs.split_k

    def owner(i):
        return split_owner(i, knobs)

    @T.macro
    def exchange(red, acc, base, rank, tid):
        T.evaluate(T.call_extern("int32", cp_async_wait(0)))
        T.evaluate(T.call_extern("int32", CLUSTER_SYNC))
        for i in T.unroll(groups):
            if owner(i) != rank:
                T.evaluate(T.call_extern("int32", STORE_CLUSTER_F32X4, T.address_of(red[base + split_slot(
                    rank - T.if_then_else(rank > owner(i), 1, 0), i, tid, knobs)]), T.Cast("uint32", owner(i)),
                    T.address_of(acc[4 * i])))
        T.evaluate(T.call_extern("int32", CLUSTER_SYNC))
        for i in T.unroll(groups):
            if owner(i) == rank:
                for sender in T.unroll(split - 1):
                    T.evaluate(T.call_extern("int32", ADD_F32X4, T.address_of(acc[4 * i]),
                                             T.address_of(red[base + split_slot(sender, i, tid, knobs)])))

    return exchange


def shared_operand(knobs: GemmKnobs) -> GemmKnobs:
    """What runs where the weights-in-registers kernel cannot (a sparse weight, an old ptxas): the shared-operand
    wgmma kernel's default."""
    return WGMMA_KNOBS if knobs.weights_in_registers else knobs


def swizzled(row, chunk, chunks: int):
    """16-byte chunk index of (row, chunk) in a tile of ``chunks`` (4 or 8) chunks a row: the eight rows one
    ``ldmatrix`` reads at one chunk column land in eight different 16-byte bank groups."""
    return row * chunks + (chunk ^ ((row >> (1 if chunks == 4 else 0)) & (chunks - 1)))


def decode_row(tid, tpr: int):
    """The weight-tile row thread ``tid`` decodes: warp-major groups of 32 rows, ``tpr`` warps per group, so a
    warp's 32 lanes take 32 rows and the same chunks of them (its part is warp-uniform)."""
    return tid // (32 * tpr) * 32 + tid % 32


def sparse_band(by, tid, tile_n: int, tpr: int):
    """The 32-row band of the weight (a row of ``sp_tiles``' tiles) that thread ``tid`` of block ``by`` decodes
    with its warp (``decode_row``)."""
    return by * (tile_n // TILE) + tid // (32 * tpr)


def sparse_first_col(tid, t, tile_k: int, tpr: int):
    """The first of the columns of the weight that the thread's warp decodes in K-tile ``t``."""
    return t * tile_k + decode_part(tid, tpr) * (tile_k // tpr)


def decode_part(tid, tpr: int):
    """Which of its row's ``tpr`` parts (consecutive index words, one 16-byte chunk each) the thread decodes."""
    return tid // 32 % tpr


# Short prompts: at m <= SHORT_ROWS a block of the tuned tile would leave most of its rows empty and the GPU
# with ceil(N / tile_n) blocks (32 at N = 4096), each walking K alone, latency-bound. These narrow tiles give
# 2-4x the blocks, and their small x tiles afford a deeper pipeline.
SHORT_ROWS = 64
# Longer prompts run the knobs of their tier of rows (``knobs.GEMM_ROW_TIERS``): at 128 rows a 256-row split-K tile
# wastes half its MMAs (11008 x 4096: 72 us on an H200 against 45 for the 128 x 128 tile, NOTES.md v15), while past
# 128 rows the 128-row tiles split x into a second, partly empty tile (a 192-token 7B prefill lost 15% with them,
# NOTES.md v16).
SHORT_KNOBS = GemmKnobs(32, 64, warps_m=1, warps_n=4, stages=6, tile_k=64)
# The untuned wgmma tiles (sm_90a): two warpgroups on 128 x 128, four x stages. Measured on the 7B prefill shapes
# against 64 x 128 (one warpgroup), 128 x 256 and split-N warpgroups (benchmarks/kernels/NOTES.md, v11).
WGMMA_KNOBS = GemmKnobs(128, 128, rule="wgmma", warps_m=8, warps_n=1, stages=4, tile_k=64)


def cuda_lut_gemm_mma(n: int, k: int, bits: int, m: int | None, sparse: bool, knobs: GemmKnobs,
                      fewer_rows: tuple[tuple[int, GemmKnobs], ...] = ()) -> tirx.PrimFunc:
    """The GEMM with ``knobs``; ``fewer_rows`` are (most rows, knobs) tiers for shorter prompts, ascending. For a
    symbolic m the kernels with ``SHORT_KNOBS``, each tier's knobs (where they differ from the next tier's) and
    ``knobs`` sit side by side, picked on the host by the row count of the call. For a static m only the one that
    fits is built."""
    if not applies(k, bits, "float16", MIN_ARCH):
        raise ValueError(f"the mma GEMM needs 3 or 4 bits and K a multiple of 8, got {bits} bits, K={k}")

    def tuned_body(kn: GemmKnobs):
        if kn.weights_in_registers:
            return _rs_body(n, k, bits, sparse, kn)
        return _mma_body(n, k, bits, sparse, kn)

    tiers: list[tuple[int, GemmKnobs]] = []  # a tier whose knobs equal the next one's merges into it
    for most, kn in reversed(((SHORT_ROWS, SHORT_KNOBS), *fewer_rows)):
        following = tiers[0][1] if tiers else knobs
        if kn != following:
            tiers.insert(0, (most, kn))
    if m is not None:
        body = tuned_body(next((kn for most, kn in tiers if m <= most), knobs))
        return lut_matmul_signature(n, k, bits, m, "float16", sparse, body)
    pick = tuned_body(knobs)
    for most, kn in reversed(tiers):  # the first tier outermost: rows <= its most, else the next tier's test ...
        pick = _by_rows(most, tuned_body(kn), pick)
    return lut_matmul_signature(n, k, bits, rows_dim(m), "float16", sparse, pick)


def _by_rows(most: int, fewer, more):
    """A kernel macro that runs ``fewer`` for calls of at most ``most`` rows of x, else ``more``."""

    @T.macro
    def pick(x, q, lut, y, rowptr, col, val, tiles, rows):
        if rows <= most:
            fewer(x, q, lut, y, rowptr, col, val, tiles, rows)
        else:
            more(x, q, lut, y, rowptr, col, val, tiles, rows)

    return pick


def encode_x_map(x_map, x, rows, k: int, knobs: GemmKnobs):
    """The host call that describes x to the TMA: (K, m) halves, rows of 2 K bytes, boxes of one x tile
    (``tile_k`` x ``tile_m``) in the 128-byte swizzle of ``swizzled``, zero-filled past m and K."""
    return T.tensormap_encode_tiled(x_map, x.data, k, T.max(rows, 1), k * 2, knobs.tile_k, knobs.tile_m, 1, 1,
                                    descriptor_dtype="float16", rank=2, swizzle=SWIZZLE_128B,
                                    l2_promotion=L2_PROMOTION_128B)


def _copies(n: int, k: int, bits: int, knobs: GemmKnobs, nthreads: int, tma: bool = False):
    """The copy macros of both wgmma/mma kernels: ``issue_tile(t)`` is one commit group holding x tile t
    (``tile_m`` rows, zero-filled past m and k) and the code words of K-tile t + 1 of the block's ``tile_n``
    weight rows (zeros past the row) in ring slot (t + 1) % stages, each if it comes before K-tile ``end`` (the
    block's last, exclusive); ``issue_codes`` copies one K-tile's codes (those of the first tile join the first
    group). With ``tma`` (the register-operand kernel), ``x`` is the tensor map of ``encode_x_map``: thread 0
    copies x tile t by the TMA, counted on the stage's mbarrier in ``bars`` (``init_x`` sets them up), and
    ``wait_x`` waits for it."""
    bm, bn, bk, stages = knobs.tile_m, knobs.tile_n, knobs.tile_k, knobs.stages
    kbt, ch, words = bk // BLOCK, bk // 8, bits
    row_words, tile_words = packed_words(k, bits), kbt * words
    x_iters = bm * ch // nthreads
    c_vec = 4 if bits == 4 else 1  # words per code copy: 16 bytes where a block is 16-byte aligned
    c_iters = -(-bn * tile_words // c_vec // nthreads)

    def x_row(tid, e):  # the tile row of x a thread's e-th copy fills (16 bytes of it)
        return tid // ch + e * (nthreads // ch)

    def x_col(tid, t):
        return t * bk + tid % ch * 8

    @T.macro
    def init_x(bars, tid):
        if tid == 0:
            for s in T.unroll(stages):
                T.evaluate(T.call_extern("int32", MBARRIER_INIT, T.address_of(bars[s])))
            T.evaluate(T.call_extern("int32", FENCE_MBARRIER_INIT))

    @T.macro
    def wait_x(bars, t, first):
        """Until x tile t has landed: the stage's barrier completes a phase per tile, so this is its
        ((t - first) // stages)-th, for a block whose first K-tile is ``first``."""
        T.evaluate(T.call_extern("int32", MBARRIER_WAIT, T.address_of(bars[t % stages]),
                                 T.Cast("uint32", (t - first) // stages % 2)))

    @T.macro
    def issue_x_tma(x_map, xs, bars, base, bx, tid, t):
        if tid == 0:
            T.evaluate(T.call_extern("int32", TMA_LOAD_2D, T.address_of(xs[base + t % stages * bm * bk]),
                                     T.address_of(x_map), T.address_of(bars[t % stages]), t * bk,
                                     T.Cast("int32", bx * bm), T.uint32(bm * bk * 2)))

    @T.macro
    def issue_x(x, xs, base, bx, tid, t, rows):
        for e in T.unroll(x_iters):
            T.evaluate(T.call_extern(
                "int32", CP_ASYNC_ZFILL_AT, T.address_of(xs[base + (t % stages * bm * ch + swizzled(
                    x_row(tid, e), tid % ch, ch)) * 8]), T.address_of(x[bx * bm, 0]),
                T.if_then_else(bx * bm + x_row(tid, e) < rows and x_col(tid, t) < k, T.Cast("uint32", x_row(tid, e) * k + x_col(tid, t)), T.uint32(0)),
                T.if_then_else(bx * bm + x_row(tid, e) < rows and x_col(tid, t) < k, T.uint32(16), T.uint32(0))))

    @T.macro
    def issue_codes(q, cs, base, by, tid, t):
        for e in T.unroll(c_iters):
            if (e * nthreads + tid) * c_vec < bn * tile_words:
                T.evaluate(T.call_extern(
                    "int32", CP_ASYNC_ZFILL if c_vec == 4 else CP_ASYNC_ZFILL_4,
                    T.address_of(cs[base // 2 + t % stages * bn * tile_words + (e * nthreads + tid) * c_vec]),
                    T.address_of(q[T.min(by * bn + (e * nthreads + tid) * c_vec // tile_words, n - 1),
                                   T.min(t * tile_words + (e * nthreads + tid) * c_vec % tile_words,
                                         row_words - c_vec)]),
                    T.if_then_else(t * tile_words + (e * nthreads + tid) * c_vec % tile_words < row_words,
                                   T.uint32(4 * c_vec), T.uint32(0))))

    @T.macro
    def issue_tile(x, q, xs, cs, bars, base, bx, by, tid, t, rows, end):
        if t < end:
            if tma:
                issue_x_tma(x, xs, bars, base, bx, tid, t)
            else:
                issue_x(x, xs, base, bx, tid, t, rows)
        if t + 1 < end:
            issue_codes(q, cs, base, by, tid, t + 1)
        T.evaluate(T.call_extern("int32", CP_ASYNC_COMMIT))

    return issue_codes, issue_tile, init_x, wait_x


def _sparse_lists(n: int, k: int, nsub: int, band, chunk, add_entry, lanes: int = 32):
    """The walk over ``sp_tiles`` of both wgmma/mma kernels: per K-tile a thread takes ``nsub`` tiles (row band
    ``band(by, tid)``, column chunk ``chunk(tid, t, s)``) shared with the ``lanes`` threads beside it (a warp, or
    a part of one), and the i-th of them the i-th entry of each (then i + lanes ...), handed to
    ``add_entry(buf, base, e, tid, t, s)``. The offsets are loaded two K-tiles ahead and the first
    entries one, by coherent loads (ptxas may sink ``ld.global.nc`` past a barrier to its use). ``sr`` per tile s:
    ``[8 s, 8 s + 3)`` start, end and the lane's first entry of the K-tile to add, ``[8 s + 3, 8 s + 6)`` the same
    of the next (its entry loaded during this one), ``[8 s + 6, 8 s + 8)`` the offsets of the one after; ``sr[8
    nsub]`` holds a further entry. Returns ``start`` (the state for a block's first K-tile), ``prefetch`` (the
    loads to issue while K-tile t is added), ``add_sparse`` and ``shift`` (on to the next K-tile)."""
    bands, chunks = tile_counts(n, k)

    @T.macro
    def load_offsets(tiles, sr, at, by, tid, t):
        """sr[8 s + at], sr[8 s + at + 1] = where the nonzeros of the warp's tile s of K-tile t start and end."""
        for s in T.unroll(nsub):
            if band(by, tid) < bands and chunk(tid, t, s) < chunks:
                for e in T.unroll(2):
                    sr[8 * s + at + e] = T.call_extern("uint32", LOAD_U32, T.address_of(
                        tiles[band(by, tid) * chunks + chunk(tid, t, s) + e]))
            else:
                sr[8 * s + at] = T.uint32(0)
                sr[8 * s + at + 1] = T.uint32(0)

    @T.macro
    def load_first(tiles, sr, at, tid):
        """sr[8 s + at + 2] = the lane's first nonzero among sr[8 s + at] .. sr[8 s + at + 1]."""
        for s in T.unroll(nsub):
            if sr[8 * s + at] + T.uint32(tid % lanes) < sr[8 * s + at + 1]:
                sr[8 * s + at + 2] = T.call_extern("uint32", LOAD_U32, T.address_of(
                    tiles[T.Cast("int32", sr[8 * s + at]) + tid % lanes]))

    @T.macro
    def add_sparse(tiles, buf, base, sr, tid, t):
        """K-tile t's nonzeros of the thread's tiles: per tile the prefetched first one, then every lanes-th."""
        for s in T.unroll(nsub):
            if sr[8 * s] + T.uint32(tid % lanes) < sr[8 * s + 1]:
                add_entry(buf, base, sr[8 * s + 2], tid, t, s)
                for i in range(T.Cast("int32", (sr[8 * s + 1] - sr[8 * s] - T.uint32(tid % lanes) - T.uint32(1))
                                      // T.uint32(lanes))):
                    sr[8 * nsub] = T.call_extern("uint32", LOAD_U32, T.address_of(
                        tiles[T.Cast("int32", sr[8 * s]) + tid % lanes + (i + 1) * lanes]))
                    add_entry(buf, base, sr[8 * nsub], tid, t, s)

    @T.macro
    def shift(sr):
        """On to the next K-tile: its start, end and entry, and the offsets of the one after."""
        for s in T.unroll(nsub):
            for e in T.unroll(5):
                sr[8 * s + e] = sr[8 * s + e + 3]

    @T.macro
    def start(tiles, sr, by, tid, t):
        """The state for a block whose first K-tile is t: its offsets and first entries, t + 1's offsets."""
        load_offsets(tiles, sr, 0, by, tid, t)
        load_offsets(tiles, sr, 3, by, tid, t + 1)
        load_first(tiles, sr, 0, tid)

    @T.macro
    def prefetch(tiles, sr, by, tid, t):
        """Issued before K-tile t's nonzeros are added: t + 1's first entries and t + 2's offsets."""
        load_first(tiles, sr, 3, tid)
        load_offsets(tiles, sr, 6, by, tid, t + 2)

    return start, prefetch, add_sparse, shift


def _mma_body(n: int, k: int, bits: int, sparse: bool, knobs: GemmKnobs):
    """The kernel as a ``T.macro(x, q, lut, y, rowptr, col, val, tiles, rows)`` (it reads the sparse part from
    ``tiles`` alone)."""
    check_mma_knobs(knobs)
    bm, bn, bk, stages = knobs.tile_m, knobs.tile_n, knobs.tile_k, knobs.stages
    wn_count = knobs.warps_n
    nthreads = 32 * knobs.warps_m * knobs.warps_n
    mt, nt = bm // knobs.warps_m // 16, bn // knobs.warps_n // 8  # m16 / n8 pieces per warp (wgmma: 1, tile_n / 8)
    kbt = bk // BLOCK  # 32-code blocks per K-tile
    wg = knobs.rule == "wgmma"  # warpgroup MMAs from shared memory instead of ldmatrix + mma.sync
    slack = WGMMA_ALIGN // 4 if wg else 0  # uint32 words
    ch = bk // 8  # 16-byte chunks of a shared tile row
    tpr = nthreads // bn  # threads per weight row
    iwp = 4 * kbt // tpr  # index words (8 codes, one chunk each) a thread decodes per K-tile
    tblocks = max(1, iwp // 4)  # code blocks whose words a thread loads
    cpt = bk // tpr  # columns of a K-tile a thread decodes
    ntiles = -(-(padded_k(k) // BLOCK) // kbt)
    rt_words = P.reg_table_words(bits)
    words = bits  # code words of a 32-code block (3 bits: three nibble words, format.py)
    tile_words = kbt * words  # code words of a row per K-tile
    x_halves, w_halves, c_words = stages * bm * bk, 2 * bn * bk, stages * bn * tile_words
    nsub = max(1, cpt // TILE)  # sp_tiles tiles a warp's part of a K-tile spans (sparse)
    issue_codes, issue_tile, _, _ = _copies(n, k, bits, knobs, nthreads)
    split = knobs.split_k
    x_tile, rank, first, end = _k_range(knobs, ntiles)
    exchange = _split_exchange(knobs)

    def tiles_at(off):
        """Where the tiles start in the shared buffer, in halves: wgmma's run-time 1024-byte alignment, else 0."""
        return off[0] if wg else 0

    def drow(tid):
        return decode_row(tid, tpr)

    def warp_row0(tid):
        """First row of the warp's accumulator fragments in the block tile (wgmma: warpgroups of 64 rows x
        tile_n columns, four warps of 16 rows each)."""
        if wg:
            return tid // 128 * 64 + tid % 128 // 32 * 16
        return tid // 32 // wn_count * mt * 16

    def warp_col0(tid):
        return 0 if wg else tid // 32 % wn_count * nt * 8

    def part(tid):
        return decode_part(tid, tpr)

    @T.macro
    def decode(ws32, cs, base, cw, rt, iw, sl, lh, mk, hw, tid, t):
        """K-tile t's codes -> the thread's chunks of decoded tile t % 2 (a warp-uniform branch on the part)."""
        for pt in T.unroll(tpr):
            if part(tid) == pt:
                for b in T.unroll(tblocks):
                    T.evaluate(T.call_extern("int32", LOAD_WORDS[words], T.address_of(cw[b * words]), T.address_of(
                        cs[base // 2 + (t % stages * bn + drow(tid)) * tile_words + (pt * iwp // 4 + b) * words])))
                for j in T.unroll(iwp):
                    if bits == 3:
                        iw[0] = P.index_word_3bit(lambda w: cw[j // 4 * words + w], (pt * iwp + j) % 4)
                    else:
                        iw[0] = cw[j // 4 * words + (pt * iwp + j) % 4]
                    sl[0] = P.reg_selector(iw[0])
                    sl[1] = P.reg_selector_high(sl[0])
                    for g in T.unroll(2):
                        if bits == 4:
                            mk[0] = P.reg_mask(iw[0], g)
                        for h in T.unroll(2):
                            lh[h] = P.reg_bytes(lambda r: rt[r], sl[g], h, bits=bits, mask=mk[0])
                        for h in T.unroll(2):
                            hw[2 * g + h] = P.reg_half2(lh[0], lh[1], h)
                    for v in T.vectorized(4):
                        ws32[base // 2 + (t % 2 * bn * ch + swizzled(drow(tid), pt * iwp + j, ch)) * 4 + v] = hw[v]

    def chunk_of(tid, t, s):
        """The column chunk of ``sp_tiles`` holding sub-tile s of the warp's part of K-tile t."""
        return sparse_first_col(tid, t, bk, tpr) // TILE + s

    @T.macro
    def add_entry(ws, base, e, tid, t, s):
        """Add the nonzero ``e`` (an ``sp_tiles`` entry of the warp's sub-tile s) into K-tile t's decoded tile, if
        it is in the warp's columns (a part narrower than a tile takes its slice)."""
        if cpt >= TILE or T.Cast("int32", entry_col(e)) // cpt == sparse_first_col(tid, t, bk, tpr) % TILE // cpt:
            # the sub-tile's first column in the K-tile: K-tiles are whole tiles of sp_tiles (bk = 32, 64)
            T.evaluate(T.call_extern("int32", ADD_HALF, T.address_of(ws[base + (t % 2 * bn * ch + swizzled(
                tid // (32 * tpr) * 32 + T.Cast("int32", entry_row(e)),
                (decode_part(tid, tpr) * cpt // TILE * TILE + s * TILE + T.Cast("int32", entry_col(e))) // 8, ch))
                * 8 + T.Cast("int32", entry_col(e)) % 8]), e))

    start, prefetch, add_sparse, shift = _sparse_lists(
        n, k, nsub, lambda by, tid: sparse_band(by, tid, bn, tpr), chunk_of, add_entry)

    @T.macro
    def decode_tile(tiles, ws, ws32, cs, base, cw, rt, iw, sl, lh, mk, hw, sr, by, tid, t):
        """K-tile t's decoded tile, with its nonzeros added. Per sub-tile, sr holds t's offsets and first entry
        (0-2) and t + 1's offsets (3-4); the loads for t + 1 and t + 2 are issued before the decode."""
        if sparse:
            prefetch(tiles, sr, by, tid, t)
        decode(ws32, cs, base, cw, rt, iw, sl, lh, mk, hw, tid, t)
        if sparse:
            T.evaluate(T.call_extern("int32", SYNC_WARP))  # the warp's decoded weights, before its lanes add
            add_sparse(tiles, ws, base, sr, tid, t)
            shift(sr)

    @T.macro
    def mma_tile(xs, ws, acc, af, bf, tid, t):
        for s in T.unroll(2 * kbt):  # k16 steps of the K-tile
            for i in T.unroll(mt):
                T.evaluate(T.call_extern("int32", LDMATRIX_X4, T.address_of(af[i * 4]), T.address_of(xs[(
                    t % stages * bm * ch + swizzled(warp_row0(tid) + i * 16 + tid % 16,
                                                    2 * s + tid % 32 // 16, ch)) * 8])))
            for j in T.unroll(nt // 2):
                T.evaluate(T.call_extern("int32", LDMATRIX_X4, T.address_of(bf[j * 4]), T.address_of(ws[(
                    t % 2 * bn * ch + swizzled(warp_col0(tid) + j * 16 + tid % 32 // 16 * 8
                                               + tid % 8, 2 * s + tid % 16 // 8, ch)) * 8])))
            for i in T.unroll(mt):
                for j in T.unroll(nt):
                    T.evaluate(T.call_extern("int32", MMA_16816, T.address_of(acc[(i * nt + j) * 4]),
                                             af[i * 4], af[i * 4 + 1], af[i * 4 + 2], af[i * 4 + 3],
                                             bf[j * 2], bf[j * 2 + 1]))

    @T.macro
    def wgmma_tile(acc, dsc, tid, t):
        """K-tile t's MMAs, issued: the warpgroup's 64 rows of x times its columns of the decoded tile; waited at
        the K-tile's end."""
        T.evaluate(T.call_extern("int32", WGMMA_FENCE))
        for s in T.unroll(2 * kbt):
            T.evaluate(T.call_extern("int32", wgmma_m64k16(bn), T.address_of(acc[0]), dsc[0] + T.Cast(
                "uint64", ((t % stages * bm + tid // 128 * 64) * bk * 2 + s * 32) // 16), dsc[0] + T.Cast(
                "uint64", (x_halves * 2 + t % 2 * bn * bk * 2 + s * 32) // 16)))
        T.evaluate(T.call_extern("int32", WGMMA_COMMIT))

    @T.macro
    def store_piece(y, acc, bx, by, tid, rows, i, j, hh):
        """Rows g (hh = 0) or g + 8 (hh = 1) of the thread's accumulator piece (i, j) into y."""
        if bx * bm + warp_row0(tid) + i * 16 + hh * 8 + tid % 32 // 4 < rows:
            if n % 2 == 0:
                if by * bn + warp_col0(tid) + j * 8 + tid % 4 * 2 < n:
                    T.evaluate(T.call_extern("int32", STORE_HALF2, T.address_of(y[
                        bx * bm + warp_row0(tid) + i * 16 + hh * 8 + tid % 32 // 4,
                        by * bn + warp_col0(tid) + j * 8 + tid % 4 * 2]),
                        acc[(i * nt + j) * 4 + 2 * hh], acc[(i * nt + j) * 4 + 2 * hh + 1]))
            else:
                for v in T.unroll(2):
                    if by * bn + warp_col0(tid) + j * 8 + tid % 4 * 2 + v < n:
                        y[bx * bm + warp_row0(tid) + i * 16 + hh * 8 + tid % 32 // 4,
                          by * bn + warp_col0(tid) + j * 8 + tid % 4 * 2 + v] = T.Cast(
                            "float16", acc[(i * nt + j) * 4 + 2 * hh + v])

    @T.macro
    def store_y(y, acc, bx, by, tid, rows, rank):
        """The accumulators into y; with split-K only the groups (8 columns, j) this block finishes."""
        for i in T.unroll(mt):
            for j in T.unroll(nt):
                for hh in T.unroll(2):  # the fragment's rows g and g + 8
                    if split == 1:
                        store_piece(y, acc, bx, by, tid, rows, i, j, hh)
                    else:
                        if split_owner(j, knobs) == rank:
                            store_piece(y, acc, bx, by, tid, rows, i, j, hh)

    @T.macro
    def tile_done():
        """Wait for K-tile kt's MMAs (wgmma) and the copies of tile kt + 1, then one barrier for all of them."""
        if wg:
            T.evaluate(T.call_extern("int32", WGMMA_WAIT))
        T.evaluate(T.call_extern("int32", cp_async_wait(stages - 2)))
        if wg:
            T.evaluate(T.call_extern("int32", FENCE_PROXY_ASYNC))
        T.tvm_storage_sync("shared")

    @T.macro
    def block(x, q, lut, y, tiles, rows, bx, by, tid):
        """x tile ``x_tile(bx)``, weight tile by, K-tiles [``first(bx)``, ``end(bx)``) (split-K: see ``_rs_body``)."""
        # One allocation, three views: TVM's storage rewrite does not see uses through address_of.
        smem = T.alloc_buffer(((x_halves + w_halves) // 2 + c_words + slack,), "uint32", scope="shared.dyn")
        xs = T.decl_buffer((x_halves,), "float16", data=smem.data, scope="shared.dyn")
        red = T.decl_buffer((x_halves // 2,), "float32", data=smem.data, scope="shared.dyn")
        ws = T.decl_buffer((w_halves,), "float16", data=smem.data, elem_offset=x_halves, scope="shared.dyn")
        ws32 = T.decl_buffer((w_halves // 2,), "uint32", data=smem.data, elem_offset=x_halves // 2,
                             scope="shared.dyn")
        cs = T.decl_buffer((c_words,), "uint32", data=smem.data, elem_offset=(x_halves + w_halves) // 2,
                           scope="shared.dyn")
        acc = T.alloc_buffer((mt * nt * 4,), "float32", scope="local")
        af = T.alloc_buffer((mt * 4,), "uint32", scope="local")
        bf = T.alloc_buffer((nt * 2,), "uint32", scope="local")
        cw = T.alloc_buffer((tblocks * words,), "uint32", scope="local")
        rt = T.alloc_buffer((rt_words,), "uint32", scope="local")
        iw = T.alloc_buffer((1,), "uint32", scope="local")
        sl = T.alloc_buffer((2,), "uint32", scope="local")
        lh = T.alloc_buffer((2,), "uint32", scope="local")
        mk = T.alloc_buffer((1,), "uint32", scope="local")
        hw = T.alloc_buffer((4,), "uint32", scope="local")
        # sparse, per sub-tile: K-tile t's start, end and first entry, t + 1's, t + 2's start and end; then one
        # more entry
        sr = T.alloc_buffer((8 * nsub + 1,), "uint32", scope="local")
        off = T.alloc_buffer((1,), "int32", scope="local")  # wgmma: halves up to the aligned tiles
        dsc = T.alloc_buffer((1,), "uint64", scope="local")  # wgmma: the x tiles' descriptor
        if wg:
            off[0] = T.call_extern("int32", ALIGN_1024, T.address_of(smem[0]))
            dsc[0] = T.call_extern("uint64", SMEM_DESC, T.address_of(xs[off[0]]))
        issue_codes(q, cs, tiles_at(off), by, tid, first(bx))
        for s in T.unroll(stages - 1):
            issue_tile(x, q, xs, cs, None, tiles_at(off), x_tile(bx), by, tid, first(bx) + s, rows, end(bx))
        for r in T.unroll(rt_words):
            rt[r] = P.reg_table_word(lambda c: T.Cast("uint32", T.reinterpret(
                "uint16", lut[T.min(by * bn + drow(tid), n - 1), c])), r, bits)
        for i in T.unroll(mt * nt * 4):
            acc[i] = T.float32(0)
        if sparse:
            start(tiles, sr, by, tid, first(bx))
        T.evaluate(T.call_extern("int32", cp_async_wait(stages - 2)))  # x tile first, codes first and first + 1
        T.tvm_storage_sync("shared")
        if first(bx) < end(bx):
            decode_tile(tiles, ws, ws32, cs, tiles_at(off), cw, rt, iw, sl, lh, mk, hw, sr, by, tid, first(bx))
        if wg:
            T.evaluate(T.call_extern("int32", FENCE_PROXY_ASYNC))
        T.tvm_storage_sync("shared")
        for j in range(end(bx) - first(bx)):
            if wg:  # issued before the copies, which then run beside the tensor cores
                wgmma_tile(acc, dsc, tid, first(bx) + j)
            issue_tile(x, q, xs, cs, None, tiles_at(off), x_tile(bx), by, tid, first(bx) + j + stages - 1, rows,
                       end(bx))
            if not wg:
                mma_tile(xs, ws, acc, af, bf, tid, first(bx) + j)
            if first(bx) + j + 1 < end(bx):
                decode_tile(tiles, ws, ws32, cs, tiles_at(off), cw, rt, iw, sl, lh, mk, hw, sr, by, tid,
                            first(bx) + j + 1)
            tile_done()
        if split > 1:
            exchange(red, acc, tiles_at(off) // 2, rank(bx), tid)
        store_y(y, acc, x_tile(bx), by, tid, rows, rank(bx))

    launch = _launch(n, knobs, nthreads, block)

    @T.macro
    def body(x, q, lut, y, rowptr, col, val, tiles, rows):
        launch(x, q, lut, y, tiles, rows)

    return body


def a_fragment(r, c):
    """Which thread of the register-operand kernel's block holds weight (r, c) of its tile (row r of ``tile_n``,
    column c of the K-tile), in which of its A registers of the K-tile (``afr`` index: k16 step, then column half
    j, then row half h) and which half of it: wgmma's A layout, each warp 16 rows, lane 4 g + q holding rows g and
    g + 8 at columns 2 q, 2 q + 1 and 2 q + 8, 2 q + 9 of each k16 step. Ints or TIR expressions."""
    return r // 16 * 32 + r % 8 * 4 + c % 8 // 2, c // 16 * 4 + c % 16 // 8 * 2 + r % 16 // 8, c % 2


def delta_half(r, c, nthreads: int, kbt: int, buf):
    """The half of weight (r, c)'s slot among the register-operand kernel's shared deltas (buffer ``buf`` of two):
    per buffer and k16 step, 16 bytes a thread (``add_fragment_deltas``' loads), threads adjacent."""
    tid, a, half = a_fragment(r, c)
    return (((buf * 2 * kbt + a // 4) * nthreads + tid) * 4 + a % 4) * 2 + half


def _rs_body(n: int, k: int, bits: int, sparse: bool, knobs: GemmKnobs):
    """The wgmma kernel with the weights as the A operand, decoded straight into registers: y^T = W x^T. A block
    owns ``tile_n`` weight rows (a warpgroup per 64) and ``tile_m`` rows of x (the MMA's N); per K-tile each
    thread decodes its A fragments (rows g and g + 8 of its warp's 16, byte q of each index word of a block:
    ``pairs``' layouts put exactly that thread's codes there) while the previous K-tile's wgmmas run. The decoded
    weights never touch shared memory (the shared-operand kernel wrote and read every decoded tile there).

    With ``split_k`` > 1 the ``split_k`` consecutive blocks of a cluster (``blockIdx.x``: the x tile times
    ``split_k`` plus the block's rank) take consecutive K ranges of one output tile. After the K loop each block
    stores the accumulator groups that the others finish (``split_owner``) into their x stages, and after the
    cluster's barrier adds those it received to its own and writes them.

    A sparse weight's nonzeros reach the fragments through shared memory: two K-tiles ahead of its decode, the
    sparse threads (``nthreads`` ..., ``SPARSE_THREADS / tiles`` of them per ``sp_tiles`` tile of the block's
    K-tile) zero the K-tile's buffer (one per K-tile parity, 16 bytes a thread per k16 step) and store each nonzero
    at its slot of the owning thread (``delta_half``), and the owner, after decoding, adds its slots to its
    fragments (``add_fragment_deltas``). The K-tile's barrier, which the sparse threads join, orders the stores
    before the owner's loads, and the owner's loads before the zeroing for the K-tile two later."""
    check_mma_knobs(knobs, sparse)
    bm, bn, bk, stages, split = knobs.tile_m, knobs.tile_n, knobs.tile_k, knobs.stages, knobs.split_k
    nthreads = 2 * bn  # a warpgroup (128 threads) per 64 weight rows
    kbt = bk // BLOCK
    ntiles = -(-(padded_k(k) // BLOCK) // kbt)
    rt_words = P.reg_table_words(bits)
    words = bits
    tile_words = kbt * words
    x_halves, c_words = stages * bm * bk, stages * bn * tile_words
    slack = WGMMA_ALIGN // 4
    groups = bm // 8  # 8-column groups of the accumulators (rows of x)
    steps = 2 * kbt  # k16 steps of a K-tile
    bar_words = rs_barrier_words(stages)
    delta_words = 2 * steps * nthreads * 4 if sparse else 0  # two K-tiles of every thread's A fragments

    def wrow(tid, h):
        """Weight row (in the block) of the thread's A fragment rows g (h = 0) and g + 8 (h = 1)."""
        return tid // 32 * 16 + tid % 32 // 4 + 8 * h

    def owner(i):
        return split_owner(i, knobs)

    x_tile, rank_of, first_tile, end_tile = _k_range(knobs, ntiles)
    exchange = _split_exchange(knobs)
    issue_codes, issue_tile, init_x, wait_x = _copies(n, k, bits, knobs, nthreads, tma=True)

    chunks = bk // TILE  # sp_tiles tiles of the block's K-tile per 32-row band
    per_tile = SPARSE_THREADS // (bn // TILE * chunks)  # sparse threads per sp_tiles tile of the block's K-tile
    mma_regs, sparse_regs = sparse_registers(nthreads)

    def sparse_tile(tid):
        """The sparse thread's tile of the block's K-tile: band (row) major, as the sparse walk's band and
        chunk."""
        return (tid - nthreads) // per_tile

    @T.macro
    def put_entry(dh, base, e, tid, t, s):
        """The nonzero ``e`` of the lane's tile into its owner's slot for K-tile t."""
        T.evaluate(T.call_extern("int32", STORE_U16, T.address_of(dh[delta_half(
            sparse_tile(tid) // chunks * TILE + T.Cast("int32", entry_row(e)),
            sparse_tile(tid) % chunks * TILE + T.Cast("int32", entry_col(e)), nthreads, kbt, t % 2)]), e))

    start, prefetch, add_sparse, shift = _sparse_lists(
        n, k, 1, lambda by, tid: by * (bn // TILE) + sparse_tile(tid) // chunks,
        lambda tid, t, s: t * chunks + sparse_tile(tid) % chunks, put_entry, lanes=per_tile)

    @T.macro
    def scatter(tiles, dh, sr, by, tid, t, end):
        """K-tile t's nonzeros into their owners' slots, the loads for t + 1 and t + 2 issued first."""
        prefetch(tiles, sr, by, tid, t)
        if t < end:
            add_sparse(tiles, dh, 0, sr, tid, t)
        shift(sr)

    @T.macro
    def zero(dl, tid, buf):
        """Buffer ``buf`` of the deltas zeroed by the sparse threads, then their own barrier: none stores a
        nonzero there before every zero has."""
        for i in T.unroll(delta_words // 2 // 4 // SPARSE_THREADS):
            T.evaluate(T.call_extern("int32", ZERO_U4, T.address_of(
                dl[buf * (delta_words // 2) + (i * SPARSE_THREADS + tid - nthreads) * 4])))
        T.evaluate(T.call_extern("int32", SPARSE_SYNC))

    @T.macro
    def produce(tiles, dl, dh, sr, bx, by, tid):
        """The sparse threads: both buffers zeroed and the first two K-tiles' nonzeros stored before the block's
        first barrier; then after K-tile t's barrier (the MMA warpgroups have added t's deltas) t's buffer zeroed
        and t + 2's nonzeros stored in it. Its barriers mirror the MMA warpgroups' one for one, split-K's cluster
        barriers too."""
        for u in T.unroll(2):
            zero(dl, tid, u)
        start(tiles, sr, by, tid, first_tile(bx))
        for u in T.unroll(2):
            scatter(tiles, dh, sr, by, tid, first_tile(bx) + u, end_tile(bx))
        T.tvm_storage_sync("shared")
        for t in range(first_tile(bx), end_tile(bx)):
            T.tvm_storage_sync("shared")
            zero(dl, tid, t % 2)
            scatter(tiles, dh, sr, by, tid, t + 2, end_tile(bx))
        if split > 1:
            for _ in T.unroll(2):
                T.evaluate(T.call_extern("int32", CLUSTER_SYNC))

    @T.macro
    def decode(cs, base, cw, rt, tw, sl, lh, mk, afr, dl, tid, t):
        """K-tile t's A fragments into afr: per row h and block b, the thread word (byte j = byte q of
        index word j, pairs (8 j + 2 q, + 1)), then the register-table decode of its eight codes; sparse, plus
        the thread's deltas."""
        for h in T.unroll(2):
            for b in T.unroll(kbt):
                T.evaluate(T.call_extern("int32", LOAD_WORDS[words], T.address_of(cw[0]), T.address_of(
                    cs[base // 2 + (t % stages * bn + wrow(tid, h)) * tile_words + b * words])))
                tw[0] = P.quad_word(lambda w: cw[w], bits, sl[2])
                sl[0] = P.reg_selector(tw[0])
                sl[1] = P.reg_selector_high(sl[0])
                for g in T.unroll(2):  # pairs 2 g and 2 g + 1: k16 step 2 b + g, columns 2q and 2q + 8
                    if bits == 4:
                        mk[0] = P.reg_mask(tw[0], g)
                    for hb in T.unroll(2):
                        lh[hb] = P.reg_bytes(lambda r: rt[h * rt_words + r], sl[g], hb, bits=bits, mask=mk[0])
                    for j in T.unroll(2):
                        afr[(2 * b + g) * 4 + 2 * j + h] = P.reg_half2(lh[0], lh[1], j)
        if sparse:
            T.evaluate(T.call_extern("int32", add_fragment_deltas(steps, nthreads), T.address_of(afr[0]),
                                     T.address_of(dl[(t % 2 * steps * nthreads + tid) * 4])))

    @T.macro
    def mma(acc, afr, dsc, t):
        """K-tile t's wgmmas, issued: the warpgroup's 64 weight rows (afr) times the x tile in slot t % stages."""
        T.evaluate(T.call_extern("int32", WGMMA_FENCE))
        for s in T.unroll(2 * kbt):
            T.evaluate(T.call_extern("int32", wgmma_m64k16(bm, a_in_registers=True), T.address_of(acc[0]),
                                     afr[s * 4], afr[s * 4 + 1], afr[s * 4 + 2], afr[s * 4 + 3],
                                     dsc[0] + T.Cast("uint64", (t % stages * bm * bk * 2 + s * 32) // 16)))
        T.evaluate(T.call_extern("int32", WGMMA_COMMIT))

    @T.macro
    def store_y(y, acc, bx, by, tid, rows, i):
        """Group i of the accumulators, which hold y^T: row = weight row (g, g + 8), column = row of x
        (8 i + 2 q, + 1)."""
        for h in T.unroll(2):
            for v in T.unroll(2):
                if T.Cast("int64", bx * bm + i * 8 + tid % 4 * 2 + v) < T.call_pure_extern(
                        "int64", OPAQUE_I64, T.Cast("int64", rows)) and by * bn + wrow(tid, h) < n:
                    y[bx * bm + i * 8 + tid % 4 * 2 + v, by * bn + wrow(tid, h)] = T.Cast(
                        "float16", acc[4 * i + 2 * h + v])

    @T.macro
    def k_tile(x_map, q, xs, cs, bars, dl, acc, fa, fb, cw, rt, tw, sl, lh, mk, off, dsc, bx, by, tid, t):
        """K-tile t: its wgmmas on fragment set fa once its x tile has landed, the copies of K-tile
        t + stages - 2 into the slot that t - 2's wgmmas read (every warpgroup waited for them before the
        barrier), then once t - 1's wgmmas are done (the last to read fb), t + 1 decoded into fb. So the tensor
        cores still hold t's MMAs while the threads wait at the next barrier."""
        T.evaluate(T.call_extern("int32", cp_async_wait(stages - 3)))  # codes t + 1
        T.tvm_storage_sync("shared")
        wait_x(bars, t, first_tile(bx))
        mma(acc, fa, dsc, t)
        issue_tile(x_map, q, xs, cs, bars, off[0], x_tile(bx), by, tid, t + stages - 2, 0, end_tile(bx))
        T.evaluate(T.call_extern("int32", WGMMA_WAIT_1))
        if t + 1 < end_tile(bx):
            decode(cs, off[0], cw, rt, tw, sl, lh, mk, fb, dl, tid, t + 1)

    @T.macro
    def block(x_map, q, lut, y, tiles, rows, bx, by, tid):
        """x tile ``x_tile(bx)``, weight tile by, K-tiles [``first_tile(bx)``, ``end_tile(bx)``)."""
        smem = T.alloc_buffer((x_halves // 2 + c_words + slack + bar_words + delta_words,), "uint32",
                              scope="shared.dyn")
        xs = T.decl_buffer((x_halves,), "float16", data=smem.data, scope="shared.dyn")
        red = T.decl_buffer((x_halves // 2,), "float32", data=smem.data, scope="shared.dyn")
        cs = T.decl_buffer((c_words,), "uint32", data=smem.data, elem_offset=x_halves // 2, scope="shared.dyn")
        # past the alignment slack, which the run-time shift of the tiles may take
        bars = T.decl_buffer((stages,), "uint64", data=smem.data, elem_offset=(x_halves // 2 + c_words + slack) // 2,
                             scope="shared.dyn")
        dl = T.decl_buffer((max(delta_words, 4),), "uint32", data=smem.data,
                           elem_offset=x_halves // 2 + c_words + slack + bar_words, scope="shared.dyn")
        dh = T.decl_buffer((max(delta_words, 4) * 2,), "uint16", data=smem.data,
                           elem_offset=(x_halves // 2 + c_words + slack + bar_words) * 2, scope="shared.dyn")
        acc = T.alloc_buffer((bm // 2,), "float32", scope="local")
        fa = T.alloc_buffer((4 * 2 * kbt,), "uint32", scope="local")  # A fragments of the even K-tiles (of the block)
        fb = T.alloc_buffer((4 * 2 * kbt,), "uint32", scope="local")  # of the odd ones
        cw = T.alloc_buffer((4,), "uint32", scope="local")
        rt = T.alloc_buffer((2 * rt_words,), "uint32", scope="local")
        tw = T.alloc_buffer((1,), "uint32", scope="local")
        sl = T.alloc_buffer((3,), "uint32", scope="local")
        lh = T.alloc_buffer((2,), "uint32", scope="local")
        mk = T.alloc_buffer((1,), "uint32", scope="local")
        sr = T.alloc_buffer((9,), "uint32", scope="local")  # the sparse warpgroup's _sparse_lists state
        off = T.alloc_buffer((1,), "int32", scope="local")
        dsc = T.alloc_buffer((1,), "uint64", scope="local")
        if tid < nthreads:  # the MMA warpgroups
            if sparse:
                T.evaluate(T.call_extern("int32", set_max_registers(mma_regs, True)))
            off[0] = T.call_extern("int32", ALIGN_1024, T.address_of(smem[0]))
            dsc[0] = T.call_extern("uint64", SMEM_DESC, T.address_of(xs[off[0]]))
            init_x(bars, tid)
            if first_tile(bx) < end_tile(bx):
                issue_codes(q, cs, off[0], by, tid, first_tile(bx))
            for s in T.unroll(stages - 2):
                issue_tile(x_map, q, xs, cs, bars, off[0], x_tile(bx), by, tid, first_tile(bx) + s, 0, end_tile(bx))
            for h in T.unroll(2):
                for r in T.unroll(rt_words):
                    rt[h * rt_words + r] = P.reg_table_word(lambda c: T.Cast("uint32", T.reinterpret(
                        "uint16", lut[T.min(by * bn + wrow(tid, h), n - 1), c])), r, bits)
            sl[2] = P.quad_selector(tid % 4)
            for i in T.unroll(bm // 2):
                acc[i] = T.float32(0)
            T.evaluate(T.call_extern("int32", cp_async_wait(stages - 3)))
            T.tvm_storage_sync("shared")
            if first_tile(bx) < end_tile(bx):
                decode(cs, off[0], cw, rt, tw, sl, lh, mk, fa, dl, tid, first_tile(bx))
            for j2 in range((end_tile(bx) - first_tile(bx) + 1) // 2):  # unrolled by two: the sets alternate
                for u in T.unroll(2):
                    if j2 * 2 + u < end_tile(bx) - first_tile(bx):
                        if u == 0:
                            k_tile(x_map, q, xs, cs, bars, dl, acc, fa, fb, cw, rt, tw, sl, lh, mk, off, dsc, bx, by,
                                   tid, first_tile(bx) + j2 * 2)
                        else:
                            k_tile(x_map, q, xs, cs, bars, dl, acc, fb, fa, cw, rt, tw, sl, lh, mk, off, dsc, bx, by,
                                   tid, first_tile(bx) + j2 * 2 + 1)
            T.evaluate(T.call_extern("int32", WGMMA_WAIT))
            if split > 1:
                exchange(red, acc, off[0] // 2, rank_of(bx), tid)
            for i in T.unroll(groups):
                if owner(i) == rank_of(bx):
                    store_y(y, acc, x_tile(bx), by, tid, rows, i)
        else:
            if sparse:
                T.evaluate(T.call_extern("int32", set_max_registers(sparse_regs, False)))
                produce(tiles, dl, dh, sr, bx, by, tid)

    launch = _launch(n, knobs, nthreads + (SPARSE_THREADS if sparse else 0), block,
                     sparse_blocks_per_sm(nthreads) if sparse else 1)

    @T.macro
    def body(x, q, lut, y, rowptr, col, val, tiles, rows):
        x_map: T.let[T.handle("tensormap")] = T.tvm_stack_alloca("tensormap", 1)
        T.evaluate(encode_x_map(x_map, x, rows, k, knobs))
        launch(x_map, q, lut, y, tiles, rows)

    return body
