"""The storage format of one quantized linear weight: packed codes, per-row LUT, CSR sparse part.

This module is the single definition of the layout (docs/format.md describes it in prose). The quantizer
writes it, the official-checkpoint importer converts to it, the PyTorch reference and the TVM kernels read it.
It depends on numpy only, so that the thin runtime can use it too.

Layout of ``qweight`` (uint32, shape ``[N, packed_words(K, bits)]``), for a weight ``W[N, K]`` (out, in):
  * each row holds its own codes along K, K zero-padded to a multiple of ``GROUP`` (128) codes, so that a
    row is a whole number of 16-byte vectors at every bit width (a GPU thread loads 128 codes with
    ``bits`` 128-bit loads);
  * codes come in blocks of 32 codes = ``bits`` words, least significant bits first;
  * 2 and 4 bits: word j of a block holds codes ``j*32/bits .. (j+1)*32/bits - 1``, ``bits`` bits each;
  * 3 bits: word i (0-2) holds codes ``8i .. 8i + 7`` in its nibbles, code ``8i + q`` in bits 0-2 of nibble q;
    bit 3 of nibble q of word i is bit i of code ``24 + q``. Why: a GPU decodes codes by PRMT (byte permute)
    instructions whose selector nibbles are the codes themselves, so ``word & 0x77777777`` is the selector
    of codes 8i .. 8i + 7 (one instruction), and codes 24-31 take three shifts and masks
    (``kernels/pairs.py``). Format 2 stored 6-bit pair indices in bits 2-7 of each byte (four more
    instructions per selector); format 1 stored low and high bits in separate words.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..runtime.sparse_tiles import sparse_tiles

SUPPORTED_BITS = (2, 3, 4)
GROUP = 128  # codes per padding unit along K
BLOCK = 32  # codes per block of `bits` words
FORMAT_VERSION = 3  # of the layout below (QDIR config.json: quant/storage.py)
_THREE = np.arange(3, dtype=np.uint32)
_NIBBLES = 4 * np.arange(8, dtype=np.uint32)


def check_bits(bits: int) -> int:
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits must be one of {SUPPORTED_BITS}, got {bits!r}")
    return bits


def padded_k(k: int) -> int:
    return -(-k // GROUP) * GROUP


def packed_words(k: int, bits: int) -> int:
    """uint32 words per row of ``qweight`` for ``k`` input features."""
    return padded_k(k) // BLOCK * check_bits(bits)


def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack integer codes ``[N, K]`` (values < 2**bits) into ``qweight`` ``[N, packed_words(K, bits)]``."""
    check_bits(bits)
    codes = np.asarray(codes)
    n, k = codes.shape
    if codes.size and (codes.min() < 0 or codes.max() >= 1 << bits):
        raise ValueError(f"codes out of range for {bits} bits")
    c = np.zeros((n, padded_k(k)), dtype=np.uint32)
    c[:, :k] = codes
    blocks = c.reshape(n, -1, BLOCK)  # [N, nblocks, 32]
    if bits == 3:
        nib = blocks[..., :24].reshape(n, -1, 3, 8) | ((blocks[..., None, 24:] >> _THREE[:, None]) & 1) << 3
        words = (nib << _NIBBLES).sum(-1, dtype=np.uint64)
    else:
        per_word = 32 // bits
        sub = blocks.reshape(n, -1, bits, per_word)
        shifts = (bits * np.arange(per_word, dtype=np.uint32))
        words = (sub << shifts).sum(-1, dtype=np.uint64)
    return words.astype(np.uint32).reshape(n, -1)


def unpack_codes(qweight: np.ndarray, bits: int, k: int) -> np.ndarray:
    """Inverse of :func:`pack_codes`: ``[N, K]`` uint8 codes."""
    check_bits(bits)
    qweight = np.asarray(qweight, dtype=np.uint32)
    n, w = qweight.shape
    if w != packed_words(k, bits):
        raise ValueError(f"qweight has {w} words per row, expected {packed_words(k, bits)} for K={k}, {bits} bits")
    words = qweight.reshape(n, -1, bits)  # [N, nblocks, bits]
    if bits == 3:
        nib = (words[..., None] >> _NIBBLES) & 15  # [N, nb, i, q]
        high = ((nib >> 3) << _THREE[:, None]).sum(-2)  # [N, nb, q]: codes 24-31
        codes = np.concatenate([(nib & 7).reshape(n, -1, 24), high], axis=-1)
    else:
        per_word = 32 // bits
        shifts = bits * np.arange(per_word, dtype=np.uint32)
        codes = (words[..., None] >> shifts) & ((1 << bits) - 1)
    return codes.reshape(n, -1)[:, :k].astype(np.uint8)


def upgrade_qweight(qweight: np.ndarray, bits: int, k: int, version: int) -> np.ndarray:
    """``qweight`` of a QDIR written in format ``version`` repacked in the current layout; 2 and 4 bits never
    changed. 3 bits: version 1 stored the low bits of codes 0-15 / 16-31 in words 0 / 1 and the high bits of all
    32 in word 2; version 2 stored 6-bit pair indices (``code_2p | code_2p+1 << 3``), pair 4i + m in bits 2-7
    of byte m of word i (pairs 0-11) and pair 12 + m's bits 2i, 2i + 1 in bits 0-1 of byte m of word i."""
    if bits != 3 or version == FORMAT_VERSION:
        return qweight
    words = np.asarray(qweight, dtype=np.uint32).reshape(qweight.shape[0], -1, 3)
    if version == 1:
        s2 = 2 * np.arange(16, dtype=np.uint32)
        lo = np.concatenate([(words[..., 0:1] >> s2) & 3, (words[..., 1:2] >> s2) & 3], axis=-1)
        codes = lo | ((words[..., 2:3] >> np.arange(32, dtype=np.uint32)) & 1) << 2
    elif version == 2:
        fields = (words[..., None] >> (8 * np.arange(4, dtype=np.uint32))) & 0xFF  # [N, nb, i, m]
        spare = ((fields & 3) << (2 * _THREE)[:, None]).sum(-2)  # [N, nb, m]: pairs 12-15
        idx = np.concatenate([(fields >> 2).reshape(*words.shape[:2], 12), spare], axis=-1)
        codes = np.stack([idx & 7, idx >> 3], axis=-1)
    else:
        raise ValueError(f"unknown format version {version}")
    return pack_codes(codes.reshape(qweight.shape[0], -1)[:, :k], bits)


@dataclass
class CSR:
    """The sparse part: exact corrections added on top of the dense LUT product.

    ``val[i]`` is the weight minus the LUT value its dense code decodes to, so dense + sparse reproduces the
    kept weight exactly (to fp16). The quantizer gives kept positions the code of the LUT entry nearest
    zero, as the official SqueezeLLM checkpoints do.
    """

    rowptr: np.ndarray  # int32 [N + 1]
    col: np.ndarray  # int32 [nnz]
    val: np.ndarray  # float16 [nnz]

    @property
    def nnz(self) -> int:
        return int(self.col.shape[0])

    @staticmethod
    def empty(n: int) -> "CSR":
        return CSR(np.zeros(n + 1, np.int32), np.zeros(0, np.int32), np.zeros(0, np.float16))

    @staticmethod
    def from_coo(n: int, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray) -> "CSR":
        order = np.lexsort((cols, rows))
        rows, cols, vals = rows[order], cols[order], vals[order]
        rowptr = np.zeros(n + 1, np.int64)
        np.add.at(rowptr, rows.astype(np.int64) + 1, 1)
        return CSR(np.cumsum(rowptr).astype(np.int32), cols.astype(np.int32), vals.astype(np.float16))

    def to_dense(self, n: int, k: int) -> np.ndarray:
        out = np.zeros((n, k), np.float32)
        rows = np.repeat(np.arange(n), np.diff(self.rowptr))
        out[rows, self.col] = self.val.astype(np.float32)
        return out

    def validate(self, n: int, k: int) -> None:
        if self.rowptr.shape != (n + 1,) or self.rowptr[0] != 0 or self.rowptr[-1] != self.nnz:
            raise ValueError("CSR row pointers are inconsistent with the number of nonzeros")
        if np.any(np.diff(self.rowptr) < 0):
            raise ValueError("CSR row pointers decrease")
        if self.nnz and (self.col.min() < 0 or self.col.max() >= k):
            raise ValueError("CSR column index out of range")
        if self.val.shape != self.col.shape:
            raise ValueError("CSR values and columns differ in length")


@dataclass
class QuantizedWeight:
    """One quantized ``nn.Linear`` weight ``[out_features, in_features]`` (bias, if any, stays separate)."""

    bits: int
    out_features: int
    in_features: int
    qweight: np.ndarray  # uint32 [N, packed_words(K, bits)]
    lut: np.ndarray  # float16 [N, 2**bits]
    sparse: CSR

    def validate(self) -> None:
        check_bits(self.bits)
        n, k = self.out_features, self.in_features
        if self.qweight.dtype != np.uint32 or self.qweight.shape != (n, packed_words(k, self.bits)):
            raise ValueError(f"qweight must be uint32 {[n, packed_words(k, self.bits)]}, "
                             f"got {self.qweight.dtype} {list(self.qweight.shape)}")
        if self.lut.dtype != np.float16 or self.lut.shape != (n, 1 << self.bits):
            raise ValueError(f"lut must be float16 {[n, 1 << self.bits]}, got {self.lut.dtype} {list(self.lut.shape)}")
        self.sparse.validate(n, k)

    def codes(self) -> np.ndarray:
        return unpack_codes(self.qweight, self.bits, self.in_features)

    def dequantize_dense(self) -> np.ndarray:
        """The LUT part alone, float32 ``[N, K]``."""
        lut = self.lut.astype(np.float32)
        return np.take_along_axis(lut, self.codes().astype(np.int64), axis=1)

    def dequantize(self) -> np.ndarray:
        """Dense + sparse, float32 ``[N, K]``: the weight the quantized model computes with."""
        return self.dequantize_dense() + self.sparse.to_dense(self.out_features, self.in_features)

    @property
    def nbytes(self) -> int:
        s = self.sparse
        return self.qweight.nbytes + self.lut.nbytes + s.rowptr.nbytes + s.col.nbytes + s.val.nbytes

    # Tensor names inside a safetensors file: "<module>.<suffix>".
    SUFFIXES = ("qweight", "lut", "sp_rowptr", "sp_col", "sp_val")
    # What a compiled model takes besides: the sparse part regrouped by tile for the prefill GEMM, derived from
    # the CSR when an artifact is written (``runtime/sparse_tiles.py``), never stored with a quantized model.
    KERNEL_SUFFIXES = SUFFIXES + ("sp_tiles",)

    def sparse_tiles(self) -> np.ndarray:
        s = self.sparse
        return sparse_tiles(self.out_features, self.in_features, s.rowptr, s.col, s.val)

    def tensors(self, prefix: str) -> dict[str, np.ndarray]:
        return {
            f"{prefix}.qweight": self.qweight,
            f"{prefix}.lut": self.lut,
            f"{prefix}.sp_rowptr": self.sparse.rowptr,
            f"{prefix}.sp_col": self.sparse.col,
            f"{prefix}.sp_val": self.sparse.val,
        }

    @staticmethod
    def from_tensors(tensors: dict[str, np.ndarray], prefix: str, bits: int, out_features: int,
                     in_features: int) -> "QuantizedWeight":
        q = QuantizedWeight(
            bits, out_features, in_features,
            qweight=np.ascontiguousarray(tensors[f"{prefix}.qweight"]),
            lut=np.ascontiguousarray(tensors[f"{prefix}.lut"]),
            sparse=CSR(np.ascontiguousarray(tensors[f"{prefix}.sp_rowptr"]),
                       np.ascontiguousarray(tensors[f"{prefix}.sp_col"]),
                       np.ascontiguousarray(tensors[f"{prefix}.sp_val"])),
        )
        q.validate()
        return q
