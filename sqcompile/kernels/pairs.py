"""Pair-table decoding: one shared-memory lookup yields the fp16 weights of two codes (a ``half2``).

Per row the GEMV keeps a table of ``2**(2*bits)`` half2 entries, entry ``idx`` = (lut[idx & m], lut[idx >> bits])
with m = 2**bits - 1. A 32-code block becomes *index words* whose fields are pair indices, so that a pair costs
one field extraction, one lookup and one HFMA2 instead of two code decodes, two lookups and two FFMAs. At
every width field m of index word j is the pair of codes (8j + 2m, 8j + 2m + 1) (4 bits: 4 fields per word;
2 bits: 8), so x pairs are x itself read as half2.

  * 4 bits: byte m of word j is already the index.
  * 2 bits: nibble m of word j is the index.
  * 3 bits (``format.py``): bits 2-7 of byte m of word i are the index of pair 4i + m (i < 3): masked with
    0xFCFCFCFC, word i is index word i with every field 4 * idx, the table entry's byte offset. Index word 3
    (pairs 12-15) gathers the three words' low two bits of each byte.

**Register table (3 bits, ``reg_*``).** The shared pair table costs a shared-memory lookup per pair, and on the
H100 those lookups, not DRAM, bound the GEMV. The register form keeps a row's eight fp16 entries in four words:
the low bytes of entries 0-3 and 4-7, then their high bytes. A PRMT (``__byte_perm``) whose selector nibbles
are four codes picks four low (or high) bytes at once, and two more PRMTs interleave them into the half2
words of two pairs: 4 PRMTs per 4 codes, all on the integer pipe, no shared memory.

All helpers take TIR expressions; ``i``/``m``/``j`` may be unrolled loop variables (the results are affine in
them, so they fold to constants after unrolling).
"""
from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

from ..quant.format import check_bits

OFFSETS = 0xFCFCFCFC  # bits 2-7 of every byte: 4 * index of pairs 0-11
SPARE = 0x03030303  # bits 0-1 of every byte: pieces of the indices of pairs 12-15


def _u(v) -> tirx.Expr:
    return tirx.const(v, "uint32") if isinstance(v, int) else tirx.Cast("uint32", v)


def index_words(bits: int) -> int:
    """Index words per 32-code block."""
    return 4 if check_bits(bits) == 3 else bits


def fields_per_word(bits: int) -> int:
    return 4 if check_bits(bits) == 3 else 16 // bits


def field_width(bits: int) -> int:
    return 8 if check_bits(bits) == 3 else 2 * bits


def table_size(bits: int) -> int:
    return 1 << (2 * check_bits(bits))


def field(bits: int, word: tirx.Expr, m) -> tirx.Expr:
    """Field ``m`` of an index word (uint32): the table index, times 4 at 3 bits (see ``index_word_3bit``)."""
    w = field_width(bits)
    return (word >> _u(m * w)) & _u((1 << w) - 1)


def pair_codes(bits: int, j, m) -> tuple:
    """Block positions (code_a, code_b) of the pair in field ``m`` of index word ``j``."""
    first = j * 2 * fields_per_word(bits) + 2 * m
    return first, first + 1


def entry_codes(bits: int, idx: tirx.Expr) -> tuple[tirx.Expr, tirx.Expr]:
    """(code_a, code_b) of table entry ``idx`` (an int32 expression)."""
    return idx & ((1 << check_bits(bits)) - 1), idx >> bits


def index_word_3bit(word, i, masked: bool = True) -> tirx.Expr:
    """Index word ``i`` (0..3) of a 3-bit block whose words ``word(0..2)`` returns: byte m = 4 * idx of pair
    4i + m. ``i`` may be an unrolled loop variable: the select folds away after unrolling. ``masked=False``
    leaves the spare bits 0-1 of words 0-2 in place, for ``reg_selector`` (which ignores them)."""
    spare = _u(SPARE)
    gathered = ((word(0) & spare) << _u(2)) | ((word(1) & spare) << _u(4)) | ((word(2) & spare) << _u(6))
    if isinstance(i, int):
        return (word(i) & _u(OFFSETS) if masked else word(i)) if i < 3 else gathered
    own = word(T.min(i, 2))
    return T.if_then_else(i < 3, own & _u(OFFSETS) if masked else own, gathered)


REG_TABLE_WORDS = 4
# PTX prmt as an extern call: CUDA's ``__byte_perm`` is defined on the low 3 bits of each selector nibble, so
# nvcc masks every non-constant selector with 0x7777 first (one LOP3 per selector); our selectors have bit 3
# clear already. Not volatile: nvcc may still merge or drop it like any pure expression.
PRMT_U32 = ('[](unsigned a, unsigned b, unsigned s) { unsigned r; asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : '
            '"r"(a), "r"(b), "r"(s)); return r; }')
# Interleave four low bytes (word a) and four high bytes (word b) into the half2 of entries 0, 1 (h = 0) or
# 2, 3 (h = 1): selector INTERLEAVE + h * INTERLEAVE_STEP.
INTERLEAVE, INTERLEAVE_STEP = 0x5140, 0x2222


def byte_perm(a: tirx.Expr, b: tirx.Expr, sel, extern: bool = True) -> tirx.Expr:
    """PTX ``prmt.b32`` (CUDA's ``__byte_perm``): byte i of the result is byte ``(sel >> 4i) & 7`` of the eight
    bytes (a's four, then b's). Bit 3 of a nibble would replicate a sign bit instead: callers keep it clear.
    ``extern=False`` spells it out in plain TIR, for running the same decode on llvm."""
    if extern:
        return T.call_pure_extern("uint32", PRMT_U32, a, b, _u(sel))
    out = _u(0)
    for i in range(4):
        if isinstance(sel, int):  # a constant selector picks its bytes here (TIR's folding trips on it)
            s = sel >> 4 * i & 7
            src, shift = (a if s < 4 else b), _u(s % 4 * 8)
        else:
            s = (sel >> _u(4 * i)) & _u(7)
            src, shift = T.if_then_else(s < _u(4), a, b), (s & _u(3)) * _u(8)
        out = out | (((src >> shift) & _u(0xFF)) << _u(8 * i))
    return out


def reg_table_word(entry_bits, t: int) -> tirx.Expr:
    """Word ``t`` (0..3) of a row's register table: byte b = low (t < 2) or high (t >= 2) byte of entry
    ``4 * (t % 2) + b``. ``entry_bits(c)`` returns entry c's fp16 bits as uint32."""
    shift = 8 * (t // 2)
    out = _u(0)
    for b in range(4):
        out = out | (((entry_bits(4 * (t % 2) + b) >> _u(shift)) & _u(0xFF)) << _u(8 * b))
    return out


def reg_selector(index_word: tirx.Expr) -> tirx.Expr:
    """The eight codes of a 3-bit index word (4 * pair index in bits 2-7 of each byte, bits 0-1 ignored) as
    PRMT selector nibbles, in code order: pair m's codes are nibbles 2m and 2m + 1, bit 3 of every nibble 0."""
    return ((index_word >> _u(2)) & _u(0x07070707)) | ((index_word >> _u(1)) & _u(0x70707070))


def reg_selector_high(sel: tirx.Expr, extern: bool = True) -> tirx.Expr:
    """The selector of codes 4-7 (``sel``'s high half; PRMT reads only the low 16 bits). A PRMT, not a
    shift: nvcc pushes a shift back through ``reg_selector``'s two masks (4 instructions instead of 1)."""
    return byte_perm(sel, sel, 0x3232, extern)


def reg_bytes(table, sel: tirx.Expr, half, extern: bool = True) -> tirx.Expr:
    """The low (``half`` 0) or high (1) bytes of the entries of the four codes in selector ``sel``'s low
    nibbles; ``table(t)`` returns register table word t."""
    return byte_perm(table(2 * half), table(2 * half + 1), sel, extern)


def reg_half2(lo: tirx.Expr, hi: tirx.Expr, h: int, extern: bool = True) -> tirx.Expr:
    """half2 bits of the pair h (0 or 1) of ``reg_bytes``' four codes."""
    return byte_perm(lo, hi, _u(INTERLEAVE) + _u(h) * _u(INTERLEAVE_STEP), extern)
