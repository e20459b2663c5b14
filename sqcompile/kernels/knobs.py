"""Schedule knobs of the CUDA rules: a schedule is these numbers plus the rule's fixed decisions.

Pure Python (no TVM), so tuning records can be read and written anywhere.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

SHARED_LIMIT = 48 * 1024  # static shared memory a kernel may use without an opt-in launch attribute
MAX_THREADS = 1024
# The prefill GEMM's tiers of rows of x: (rows its records are tuned at, the most rows those knobs serve; None: any
# more), because the best tile depends on how many blocks the rows give: at 192 rows the 512-row tiles leave most
# SMs idle and the 128-row ones split x in two (benchmarks/kernels/NOTES.md, v17-v18). Prompts up to
# ``gemm_mma.SHORT_ROWS`` rows run fixed narrow tiles before these.
GEMM_ROW_TIERS = ((128, 128), (192, 256), (512, None))
GEMM_TUNED_ROWS = tuple(tuned for tuned, _ in GEMM_ROW_TIERS)


@dataclass(frozen=True)
class GemvKnobs:
    """Decode GEMV (m = 1): ``threads_k`` threads (a multiple of 32) split one row's 32-code blocks;
    ``rows_y`` such thread groups per CUDA block; each thread loads ``rows_inner`` rows at once and runs
    ``steps`` such batches (unrolled, the next batch's loads in flight during the current one's arithmetic);
    a CUDA block covers ``rows_y * rows_inner * steps`` rows, reusing x held in registers. ``pairs`` picks the
    LUT placement: a per-row pair table of half2 in shared memory (one lookup and one HFMA2 per two codes,
    ``pairs.py``) or a per-row float32 table (one lookup and one FFMA per code). ``reg_words`` (3 and 4 bits, pair
    table) decodes that many of a block's four index words from a register table instead (``pairs.reg_*``:
    PRMTs on the integer pipe in place of shared-memory lookups); 4 needs no shared pair table at all.

    ``layout="lane_rows"`` (3 bits, dense; ``gemv_lanes.py``) puts the 32 lanes of a warp on 32 rows with
    transposed pair tables instead; it reads only ``threads_k`` (threads per 32-row block, its warps split K)
    and ``steps`` (128-code groups a lane loads before using them)."""

    threads_k: int = 128
    rows_y: int = 1
    rows_inner: int = 2
    steps: int = 4
    pairs: bool = True
    layout: str = "row_warps"
    reg_words: int = 0

    @property
    def rows_per_block(self) -> int:
        return self.rows_y * self.rows_inner * self.steps

    @staticmethod
    def default(bits: int) -> "GemvKnobs":
        """The untuned schedule, what an arch without records (sm_80, sm_86, sm_89) runs: at 3 bits the register
        table (on an H200 the shared pair table took 15-46% longer: its lookups contend for shared-memory
        bandwidth, which every arch since sm_80 has as much of per SM, 128 bytes a clock, while the PRMTs run on
        the integer pipe), at 2 bits the pair table, at 4 bits the float32 table (benchmarks/kernels/NOTES.md)."""
        return GemvKnobs(pairs=bits < 4, reg_words=4 if bits == 3 else 0)

    def validate(self) -> None:
        if self.threads_k % 32 or self.threads_k <= 0:
            raise ValueError(f"threads_k must be a positive multiple of 32, got {self.threads_k}")
        if self.threads_k * self.rows_y > MAX_THREADS:
            raise ValueError(f"{self.threads_k * self.rows_y} threads per block exceed {MAX_THREADS}")
        if min(self.rows_y, self.rows_inner, self.steps) < 1:
            raise ValueError(f"rows_y, rows_inner and steps must be >= 1: {self}")
        if not 0 <= self.reg_words <= 4:
            raise ValueError(f"reg_words must be 0..4 (index words of a 32-code block), got {self.reg_words}")
        if self.layout not in ("row_warps", "lane_rows"):
            raise ValueError(f"layout must be 'row_warps' or 'lane_rows', got {self.layout!r}")


@dataclass(frozen=True)
class GemmKnobs:
    """Prefill GEMM. A CUDA block computes a ``tile_m x tile_n`` output tile, stepping along K; the weight tile is
    decoded once per block and reused by all ``tile_m`` rows of x. ``rule`` picks the kernel:

    * ``"mma"`` (``gemm_mma.py``, sm_80+, 3 and 4 bits, fp16): ``warps_m x warps_n`` warps on ``mma.sync``,
      K-tiles of ``tile_k`` codes (32 or 64) with ``stages`` of them in flight, the sparse part added into the
      decoded tile. Where it does not apply, the ``"wmma"`` rule runs instead.
    * ``"wgmma"`` (``gemm_mma.py`` too, sm_90a only): the same kernel with Hopper's asynchronous warpgroup MMAs
      reading x and the decoded tile from shared memory, so the next tile's decode overlaps the tensor cores;
      one warpgroup per 64 rows (``warps_m = tile_m / 16``, ``warps_n = 1``), ``tile_k = 64``. Elsewhere the
      ``"mma"`` rule's default runs. ``weights_in_registers`` makes the weights the MMA's A operand,
      decoded by each thread straight into its A fragments (y^T = W x^T), so that decoded weights never pass
      through shared memory (a sparse weight's nonzeros join them through a shared buffer of per-thread slots): a
      warpgroup per 64 weight rows of ``tile_n``, ``tile_m`` (up to 256) rows of x as the MMA's N. It needs ptxas
      13.3 or later (``cuda_host.WGMMA_RS_PTXAS``); elsewhere the shared-operand kernel's default runs.
      ``split_k`` > 1 (either wgmma kernel) splits K over that many blocks of a thread-block cluster, which add
      their partial tiles through distributed shared memory: 256-row x tiles halve the decode per multiply-add but
      leave too few blocks for the SMs at M = 512 without it, and a 128-row prompt gives the shared-operand kernel
      one x tile.
    * ``"wmma"`` (``gemm_tc.py``): TVM's dlight tensor-core schedule of the dense part, then for a sparse weight
      the CSR add of ``sparse_cuda.py``.
    * ``"simt"`` (``gemm_cuda.py``): one thread per ``micro_m x micro_n`` piece, dense and sparse together."""

    tile_m: int = 128
    tile_n: int = 128
    micro_m: int = 4
    micro_n: int = 4
    rule: str = "mma"
    warps_m: int = 2
    warps_n: int = 4
    stages: int = 3
    tile_k: int = 64
    weights_in_registers: bool = False
    split_k: int = 1

    @property
    def threads(self) -> int:
        if self.rule in ("mma", "wgmma"):
            return 32 * self.warps_m * self.warps_n
        return (self.tile_m // self.micro_m) * (self.tile_n // self.micro_n)

    def validate(self) -> None:
        if self.rule not in GEMM_RULES:
            raise ValueError(f"GEMM rule must be one of {GEMM_RULES}, got {self.rule!r}")
        if min(self.tile_m, self.tile_n, self.micro_m, self.micro_n, self.warps_m, self.warps_n, self.stages,
               self.tile_k) < 1:
            raise ValueError(f"GEMM knobs must be positive: {self}")
        if self.split_k not in (1, 2, 3, 4) or (self.split_k > 1 and self.rule != "wgmma"):
            raise ValueError(f"split_k is 1, or 2 to 4 blocks of a wgmma kernel's cluster: {self}")
        if self.rule == "simt" and (self.tile_m % self.micro_m or self.tile_n % self.micro_n):
            raise ValueError(f"tiles must be whole multiples of the micro tiles: {self}")
        if not 32 <= self.threads <= MAX_THREADS or self.threads % 32:
            raise ValueError(f"GEMM knobs give {self.threads} threads per block (want a multiple of 32 "
                             f"up to {MAX_THREADS}): {self}")


GEMM_RULES = ("mma", "wgmma", "wmma", "simt")


def knobs_from_dict(kind: str, values: dict) -> GemvKnobs | GemmKnobs:
    cls = {"gemv": GemvKnobs, "gemm": GemmKnobs}[kind]
    names = {f.name for f in fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"unknown {kind} knobs {sorted(unknown)}; known: {sorted(names)}")
    knobs = cls(**values)
    knobs.validate()
    return knobs


def knobs_to_dict(knobs: GemvKnobs | GemmKnobs) -> dict:
    return asdict(knobs)
