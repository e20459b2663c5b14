"""Pair-table decoding: one shared-memory lookup yields the fp16 weights of two codes (a ``half2``).

Per row the GEMV keeps a table of ``2**(2*bits)`` half2 entries, entry ``idx`` = (lut[idx & m], lut[idx >> bits])
with m = 2**bits - 1. A 32-code block becomes *index words* whose fields are pair indices, so that a pair costs
one field extraction, one lookup and one HFMA2 instead of two code decodes, two lookups and two FFMAs. At
every width field m of index word j is the pair of codes (8j + 2m, 8j + 2m + 1) (4 bits: 4 fields per word;
2 bits: 8), so x pairs are x itself read as half2.

  * 4 bits: byte m of word j is already the index.
  * 2 bits: nibble m of word j is the index.
  * 3 bits (``format.py``): index word i (i < 3) is word i, codes 8i .. 8i + 7 in its nibbles (bit 3 of each
    nibble belongs to codes 24-31: ``reg_selector`` and ``pair_offsets`` mask it); index word 3 gathers
    codes 24-31 from those bits. A byte of an index word is a pair (code_a | code_b << 4);
    ``pair_offsets`` turns four of them into table byte offsets.

**Register table (3 and 4 bits, ``reg_*``).** The shared pair table costs a shared-memory lookup per pair, and on
the H100 those lookups, not DRAM, bound the GEMV. The register form keeps a row's fp16 entries in registers, four
entries a word: first their low bytes, then their high bytes (3 bits: 8 entries in 4 words; 4 bits: 16 in 8). A
PRMT (``__byte_perm``) whose selector nibbles are four codes picks four low (or high) bytes at once from eight,
and two more PRMTs interleave them into the half2 words of two pairs: 4 PRMTs per 4 codes at 3 bits, all on the
integer pipe, no shared memory. A PRMT sees only 8 bytes, so at 4 bits the low three bits of each code pick from
entries 0-7 and from entries 8-15, and a mask built from the codes' top bits (two more PRMTs in their
sign-replicating mode per 8 codes) keeps one of the two: 2 PRMTs and a LOP3 per four low (or high) bytes.

All helpers take TIR expressions; ``i``/``m``/``j`` may be unrolled loop variables (the results are affine in
them, so they fold to constants after unrolling).
"""
from __future__ import annotations

from tvm import tirx
from tvm.script import tirx as T

from ..quant.format import check_bits

CODES = 0x77777777  # bits 0-2 of every nibble: a code each (3 bits; 4 bits: a code's low three bits)


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
    """Field ``m`` of an index word (uint32): the table index; at 3 bits 4 * index, of ``pair_offsets``' word."""
    w = field_width(bits)
    return (word >> _u(m * w)) & _u((1 << w) - 1)


def pair_codes(bits: int, j, m) -> tuple:
    """Block positions (code_a, code_b) of the pair in field ``m`` of index word ``j``."""
    first = j * 2 * fields_per_word(bits) + 2 * m
    return first, first + 1


def entry_codes(bits: int, idx: tirx.Expr) -> tuple[tirx.Expr, tirx.Expr]:
    """(code_a, code_b) of table entry ``idx`` (an int32 expression)."""
    return idx & ((1 << check_bits(bits)) - 1), idx >> bits


def index_word_3bit(word, i) -> tirx.Expr:
    """Index word ``i`` (0..3) of a 3-bit block whose words ``word(0..2)`` returns: codes 8i .. 8i + 7 in its
    nibbles' bits 0-2. Words 0-2 are index words 0-2 as they are (bit 3 of their nibbles holds codes 24-31);
    index word 3 gathers those bits: bit 3 of nibble q of word b is bit b of code 24 + q. ``i`` may be an
    unrolled loop variable: the select folds away after unrolling."""
    gathered = (((word(0) >> _u(3)) & _u(0x11111111)) | ((word(1) >> _u(2)) & _u(0x22222222))
                | ((word(2) >> _u(1)) & _u(0x44444444)))
    if isinstance(i, int):
        return word(i) if i < 3 else gathered
    return T.if_then_else(i < 3, word(T.min(i, 2)), gathered)


def pair_offsets(index_word: tirx.Expr) -> tirx.Expr:
    """3 bits: byte m of the result is 4 * (code_a | code_b << 3) for the pair (code_a, code_b) in nibbles
    2m, 2m + 1 of an index word: the byte offset of its entry in the shared pair table."""
    return ((index_word & _u(0x07070707)) << _u(2)) | ((index_word & _u(0x70707070)) << _u(1))


REG_BITS = (3, 4)  # widths with a register table
# PTX prmt as an extern call: CUDA's ``__byte_perm`` is defined on the low 3 bits of each selector nibble, so
# nvcc masks every non-constant selector with 0x7777 first (one LOP3 per selector); our selectors have bit 3
# clear already. Not volatile: nvcc may still merge or drop it like any pure expression.
PRMT_U32 = ('[](unsigned a, unsigned b, unsigned s) { unsigned r; asm("prmt.b32 %0, %1, %2, %3;" : "=r"(r) : '
            '"r"(a), "r"(b), "r"(s)); return r; }')
# Interleave four low bytes (word a) and four high bytes (word b) into the half2 of entries 0, 1 (h = 0) or
# 2, 3 (h = 1): selector INTERLEAVE + h * INTERLEAVE_STEP.
INTERLEAVE, INTERLEAVE_STEP = 0x5140, 0x2222
# 4 bits: a byte per code of codes 0-3 (g = 0) or 4-7 (g = 1) that is 0xFF where the code's top bit is set: the
# PRMT of (word << 4, word) whose sign-replicating nibbles pick the byte holding each code's bit 3 in its bit 7;
# selector TOP_BITS + g * TOP_BITS_STEP.
TOP_BITS, TOP_BITS_STEP = 0xD9C8, 0x2222


def reg_table_words(bits: int) -> int:
    """Words of a row's register table: four entries' low (or high) bytes a word."""
    if bits not in REG_BITS:
        raise ValueError(f"the register table is for {REG_BITS} bits, got {bits}")
    return (1 << bits) // 2


def byte_perm(a: tirx.Expr, b: tirx.Expr, sel, extern: bool = True) -> tirx.Expr:
    """PTX ``prmt.b32`` (CUDA's ``__byte_perm``): byte i of the result is byte ``(sel >> 4i) & 7`` of the eight
    bytes (a's four, then b's); where bit 3 of the nibble is set, that byte's top bit replicated (0x00 or 0xFF:
    ``reg_mask``; code selectors keep bit 3 clear). ``extern=False`` spells it out in plain TIR, for running the
    same decode on llvm."""
    if extern:
        return T.call_pure_extern("uint32", PRMT_U32, a, b, _u(sel))
    out = _u(0)
    for i in range(4):
        if isinstance(sel, int):  # a constant selector picks its bytes here (TIR's folding trips on it)
            s = sel >> 4 * i & 15
            src, shift = (a if s & 7 < 4 else b), _u(s % 4 * 8)
            byte = (src >> shift) & _u(0xFF)
            if s & 8:
                byte = T.if_then_else(byte >= _u(0x80), _u(0xFF), _u(0))
        else:
            s = (sel >> _u(4 * i)) & _u(15)
            src, shift = T.if_then_else((s & _u(7)) < _u(4), a, b), (s & _u(3)) * _u(8)
            byte = (src >> shift) & _u(0xFF)
            byte = T.if_then_else((s & _u(8)) == _u(0), byte, T.if_then_else(byte >= _u(0x80), _u(0xFF), _u(0)))
        out = out | (byte << _u(8 * i))
    return out


def reg_table_word(entry_bits, t: int, bits: int) -> tirx.Expr:
    """Word ``t`` of a row's register table: the low (first half of the words) or high (second half) bytes of
    entries ``4 * (t % quarter) .. + 3``, quarter = ``reg_table_words(bits) // 2``. ``entry_bits(c)`` returns
    entry c's fp16 bits as uint32."""
    quarter = reg_table_words(bits) // 2
    shift = 8 * (t // quarter)
    out = _u(0)
    for b in range(4):
        out = out | (((entry_bits(4 * (t % quarter) + b) >> _u(shift)) & _u(0xFF)) << _u(8 * b))
    return out


def reg_selector(index_word: tirx.Expr) -> tirx.Expr:
    """The eight codes of an index word as PRMT selector nibbles, in code order: pair m's codes are nibbles 2m
    and 2m + 1, bit 3 of every nibble 0. The index word's nibbles are the codes already (3 bits: in bits 0-2,
    bit 3 another code's; 4 bits: their top bits dropped here, ``reg_mask`` keeps them)."""
    return index_word & _u(CODES)


def reg_selector_high(sel: tirx.Expr, extern: bool = True) -> tirx.Expr:
    """The selector of codes 4-7 (``sel``'s high half; PRMT reads only the low 16 bits). A PRMT, not a
    shift: nvcc pushes a shift back through ``reg_selector``'s two masks (4 instructions instead of 1)."""
    return byte_perm(sel, sel, 0x3232, extern)


def reg_mask(index_word: tirx.Expr, g: int, extern: bool = True) -> tirx.Expr:
    """4 bits: byte i is 0xFF where code 4g + i of the index word (nibble 4g + i) is 8 or more, else 0."""
    return byte_perm(index_word << _u(4), index_word, _u(TOP_BITS) + _u(g) * _u(TOP_BITS_STEP), extern)


def reg_bytes(table, sel: tirx.Expr, half, *, bits: int, mask=None, extern: bool = True) -> tirx.Expr:
    """The low (``half`` 0) or high (1) bytes of the entries of the four codes in selector ``sel``'s low
    nibbles; ``table(t)`` returns register table word t. 4 bits: from entries 0-7 where ``mask`` (``reg_mask``)
    is clear, 8-15 where it is set."""
    if bits == 3:
        return byte_perm(table(2 * half), table(2 * half + 1), sel, extern)
    low = byte_perm(table(4 * half), table(4 * half + 1), sel, extern)
    high = byte_perm(table(4 * half + 2), table(4 * half + 3), sel, extern)
    return (low & ~mask) | (high & mask)


def reg_half2(lo: tirx.Expr, hi: tirx.Expr, h: int, extern: bool = True) -> tirx.Expr:
    """half2 bits of the pair h (0 or 1) of ``reg_bytes``' four codes."""
    return byte_perm(lo, hi, _u(INTERLEAVE) + _u(h) * _u(INTERLEAVE_STEP), extern)


def quad_selector(q) -> tirx.Expr:
    """The PRMT selector that puts byte ``q`` of two words into bytes 0 and 1 (and again into 2 and 3)."""
    return _u(q) * _u(0x1111) + _u(0x4040)


def quad_word(word, bits: int, sel: tirx.Expr, extern: bool = True) -> tirx.Expr:
    """Byte j = byte q of index word j of a 32-code block whose words ``word(0 .. bits-1)`` returns (``sel`` =
    ``quad_selector(q)``): the pairs (8 j + 2 q, 8 j + 2 q + 1), j = 0..3, which are exactly lane q's columns of an
    ``mma``/``wgmma`` A fragment (k = 2q, 2q + 1 and 2q + 8, 2q + 9 of each 16-code step). Its selectors
    (``reg_selector``) then decode those eight codes in k order."""
    third = index_word_3bit(word, 3) if bits == 3 else word(3)
    return byte_perm(byte_perm(word(0), word(1), sel, extern), byte_perm(word(2), third, sel, extern), 0x5410, extern)
