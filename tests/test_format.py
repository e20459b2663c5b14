"""The packed layout: round trips at every bit width, the documented bit positions, CSR, safetensors."""
import numpy as np
import pytest

from conftest import pack_format_2
from sqcompile.quant import format as fmt


def reference_code(qweight: np.ndarray, bits: int, n: int, k: int) -> int:
    """Decode one code bit by bit from the prose of docs/format.md (independent of unpack_codes)."""
    block, j = divmod(k, 32)
    words = qweight[n, block * bits:(block + 1) * bits]
    if bits == 3:  # codes 0-23: nibble j % 8 of word j // 8; code 24 + q: bit i in bit 3 of nibble q of word i
        if j < 24:
            return (int(words[j // 8]) >> (4 * (j % 8))) & 7
        return sum(((int(words[i]) >> (4 * (j - 24) + 3)) & 1) << i for i in range(3))
    per = 32 // bits
    return (int(words[j // per]) >> (bits * (j % per))) & ((1 << bits) - 1)


def test_older_three_bit_layouts_are_repacked():
    """Format 1 stored 3 bits as low bits of codes 0-15 / 16-31 in words 0 / 1, high bits in word 2; format 2 as
    6-bit pair indices (``conftest.pack_format_2``). Both are built from that prose, bit by bit."""
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 8, size=(4, 200)).astype(np.uint32)
    c = np.zeros((4, 256), np.uint32)
    c[:, :200] = codes
    blocks = c.reshape(4, -1, 32)
    s2 = 2 * np.arange(16, dtype=np.uint32)
    v1 = np.stack([((blocks[..., :16] & 3) << s2).sum(-1), ((blocks[..., 16:] & 3) << s2).sum(-1),
                   ((blocks >> 2) << np.arange(32, dtype=np.uint32)).sum(-1)], -1).astype(np.uint32).reshape(4, -1)
    for old, version in ((v1, 1), (pack_format_2(codes), 2)):
        np.testing.assert_array_equal(fmt.unpack_codes(fmt.upgrade_qweight(old, 3, 200, version), 3, 200), codes)
    q3 = fmt.pack_codes(codes, 3)
    assert fmt.upgrade_qweight(q3, 3, 200, fmt.FORMAT_VERSION) is q3
    with pytest.raises(ValueError, match="unknown format version"):
        fmt.upgrade_qweight(q3, 3, 200, 9)


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("k", [1, 31, 32, 100, 128, 200, 576])
def test_pack_round_trip(bits, k):
    rng = np.random.default_rng(k * bits)
    codes = rng.integers(0, 1 << bits, size=(5, k)).astype(np.uint8)
    q = fmt.pack_codes(codes, bits)
    assert q.dtype == np.uint32 and q.shape == (5, fmt.packed_words(k, bits))
    assert q.shape[1] * 32 % (128 * bits) == 0  # whole 128-code groups: 16-byte aligned rows
    np.testing.assert_array_equal(fmt.unpack_codes(q, bits, k), codes)
    for n, kk in zip(rng.integers(0, 5, 20), rng.integers(0, k, 20)):
        assert reference_code(q, bits, n, kk) == codes[n, kk]


def test_pack_rejects_bad_input():
    with pytest.raises(ValueError, match="out of range"):
        fmt.pack_codes(np.full((1, 4), 8), 3)
    with pytest.raises(ValueError, match="bits must be one of"):
        fmt.pack_codes(np.zeros((1, 4)), 5)
    with pytest.raises(ValueError, match="words per row"):
        fmt.unpack_codes(np.zeros((1, 3), np.uint32), 3, 200)


def random_weight(bits=3, n=6, k=100, nnz=9, seed=0) -> fmt.QuantizedWeight:
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 1 << bits, size=(n, k))
    lut = np.sort(rng.normal(size=(n, 1 << bits)), 1).astype(np.float16)
    flat = rng.choice(n * k, nnz, replace=False)
    sparse = fmt.CSR.from_coo(n, flat // k, flat % k, rng.normal(size=nnz))
    return fmt.QuantizedWeight(bits, n, k, fmt.pack_codes(codes, bits), lut, sparse)


def test_csr_from_coo_and_dense():
    rows, cols = np.array([2, 0, 2, 1]), np.array([5, 1, 0, 3])
    vals = np.array([1.5, -2.0, 3.25, 0.5])
    csr = fmt.CSR.from_coo(4, rows, cols, vals)
    np.testing.assert_array_equal(csr.rowptr, [0, 1, 2, 4, 4])
    np.testing.assert_array_equal(csr.col, [1, 3, 0, 5])
    dense = np.zeros((4, 6), np.float32)
    dense[rows, cols] = vals
    np.testing.assert_array_equal(csr.to_dense(4, 6), dense)
    csr.validate(4, 6)
    with pytest.raises(ValueError, match="column index"):
        csr.validate(4, 5)
    with pytest.raises(ValueError, match="inconsistent"):
        fmt.CSR(np.array([0, 1, 2], np.int32), csr.col, csr.val).validate(2, 6)


def test_dequantize_is_lut_plus_sparse():
    q = random_weight()
    q.validate()
    codes = q.codes()
    want = q.lut.astype(np.float32)[np.arange(6)[:, None], codes] + q.sparse.to_dense(6, 100)
    np.testing.assert_array_equal(q.dequantize(), want)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_safetensors_round_trip_is_bit_identical(tmp_path, bits):
    from safetensors.numpy import load_file, save_file

    q = random_weight(bits)
    save_file(q.tensors("layer.proj"), str(tmp_path / "w.safetensors"))
    back = fmt.QuantizedWeight.from_tensors(load_file(str(tmp_path / "w.safetensors")), "layer.proj", bits, 6, 100)
    for name, a in q.tensors("x").items():
        b = back.tensors("x")[name]
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()


def test_validate_names_the_problem():
    q = random_weight()
    q.lut = q.lut.astype(np.float32)
    with pytest.raises(ValueError, match="lut must be float16"):
        q.validate()


@pytest.mark.parametrize("n,k", [(150, 200), (64, 64), (1, 1000)])
def test_sparse_tiles_list_each_nonzero_once_in_its_tile(n, k):
    """``sp_tiles`` (runtime/sparse_tiles.py): every CSR nonzero appears once, in the list of its 32 x 32 tile,
    with its row and column within the tile and its fp16 value bit-exact; offsets are monotone and end at the
    array's end."""
    from sqcompile.runtime.sparse_tiles import TILE, entry_col, entry_row, sparse_tiles, tile_counts, tiles_length
    rng = np.random.default_rng(n + k)
    dense = np.where(rng.random((n, k)) < 0.03, rng.standard_normal((n, k)), 0).astype(np.float16)
    dense[0, k - 1] = 1.5  # a nonzero in the last column
    rows, cols = np.nonzero(dense)
    csr = fmt.CSR.from_coo(n, rows, cols, dense[rows, cols])
    tiles = sparse_tiles(n, k, csr.rowptr, csr.col, csr.val)
    groups, chunks = tile_counts(n, k)
    head = groups * chunks + 1
    assert tiles.dtype == np.uint32 and len(tiles) == tiles_length(n, k, csr.nnz) == head + csr.nnz
    assert tiles[0] == head and tiles[head - 1] == len(tiles) and np.all(np.diff(tiles[:head].astype(np.int64)) >= 0)
    rebuilt = np.zeros((n, k), np.float16)
    for g in range(groups):
        for c in range(chunks):
            for e in tiles[tiles[g * chunks + c]:tiles[g * chunks + c + 1]]:
                r, j = g * TILE + entry_row(int(e)), c * TILE + entry_col(int(e))
                assert rebuilt[r, j] == 0
                rebuilt[r, j] = np.uint16(int(e) & 0xFFFF).view(np.float16)
    assert np.array_equal(rebuilt.view(np.uint16), dense.view(np.uint16))
    empty = fmt.CSR.empty(n)
    assert np.array_equal(sparse_tiles(n, k, empty.rowptr, empty.col, empty.val), np.full(head, head, np.uint32))


def test_sparse_tiles_merge_a_position_listed_twice():
    """Two threads must not add into one decoded weight: a CSR listing (0, 3) twice gives one entry, the sum."""
    from sqcompile.runtime.sparse_tiles import sparse_tiles
    rowptr, col = np.array([0, 3, 3], np.int32), np.array([3, 3, 38], np.int32)
    from sqcompile.runtime.sparse_tiles import COL_SHIFT
    tiles = sparse_tiles(2, 40, rowptr, col, np.array([0.5, 0.25, -1.0], np.float16))
    assert list(tiles[:3]) == [3, 4, 5]  # one row band, two column chunks, one entry each
    assert list(tiles[3:]) == [3 << COL_SHIFT | int(np.float16(0.75).view(np.uint16)),
                               6 << COL_SHIFT | int(np.float16(-1).view(np.uint16))]
