"""Import of official SqueezeLLM checkpoints, written here bit by bit in their documented layout."""
import json

import numpy as np
import pytest
import torch

from sqcompile.quant.official import convert, unpack_official


def official_pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """codes [N, K] -> qweight int32 [K * bits / 32, N]: each code's bits placed one at a time in a stream
    along K, least significant first (the GPTQ-for-LLaMa layout is exactly this stream for 3 bits)."""
    n, k = codes.shape
    words = np.zeros((k * bits // 32, n), np.uint64)
    for kk in range(k):
        for b in range(bits):
            pos = kk * bits + b
            words[pos // 32] |= ((codes[:, kk].astype(np.uint64) >> b) & 1) << (pos % 32)
    return words.astype(np.uint32).view(np.int32)


def test_three_bit_layout_matches_the_spec():
    """Word 0: codes 0-9 and the low 2 bits of code 10; word 1: top bit of 10, 11-20, low bit of 21; ..."""
    codes = np.zeros((1, 32), np.uint8)
    codes[0, 10] = 0b101
    codes[0, 21] = 0b110
    q = official_pack(codes, 3).view(np.uint32)[:, 0]
    assert q[0] == 0b01 << 30 and q[1] == (0b1 | (0b0 << 31)) and q[2] == 0b11
    codes[0, 21] = 0b011
    q = official_pack(codes, 3).view(np.uint32)[:, 0]
    assert q[1] >> 31 == 1 and q[2] == 0b01


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_unpack_official(bits):
    rng = np.random.default_rng(bits)
    codes = rng.integers(0, 1 << bits, size=(7, 96)).astype(np.uint8)
    np.testing.assert_array_equal(unpack_official(official_pack(codes, bits), bits), codes)


def write_checkpoint(folder, base_state: dict, bits: int, sparse: bool, suffix: str = ".pt"):
    """An official-style checkpoint of every projection of a tiny model; returns the weights it encodes."""
    rng = np.random.default_rng(0)
    state, expected = {}, {}
    for key, t in base_state.items():
        name = key[: -len(".weight")]
        if not key.endswith("proj.weight"):
            state[key] = t.half()
            continue
        n, k = t.shape
        lut = np.sort(rng.normal(scale=0.05, size=(n, 1 << bits)), 1).astype(np.float32)
        codes = rng.integers(0, 1 << bits, size=(n, k))
        w = lut[np.arange(n)[:, None], codes]
        if sparse:
            zero = np.abs(lut).argmin(1)
            rows, cols = np.nonzero(rng.random((n, k)) < 0.01)
            codes[rows, cols] = zero[rows]
            vals = rng.normal(scale=0.3, size=rows.size).astype(np.float32)
            w = lut[np.arange(n)[:, None], codes]
            w[rows, cols] += vals
            rowptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n))]).astype(np.int32)
            state[f"{name}.rows"] = torch.tensor(rowptr)
            state[f"{name}.cols"] = torch.tensor(cols.astype(np.int32))
            state[f"{name}.vals"] = torch.tensor(vals)
        state[f"{name}.qweight"] = torch.tensor(official_pack(codes, bits))
        state[f"{name}.lookup_table"] = torch.tensor(lut)
        expected[name] = w
    folder.mkdir()
    path = folder / f"packed_w{bits}{suffix}"
    if suffix == ".pt":
        torch.save(state, path)
    else:
        from safetensors.torch import save_file
        save_file(state, str(path))
    (folder / "quant_config.json").write_text(json.dumps({"wbits": bits}))
    return path, expected


@pytest.mark.parametrize("bits,sparse,suffix", [(3, True, ".pt"), (4, False, ".pt"), (3, False, ".safetensors")])
def test_convert_and_load(tmp_path, tiny_llama_dir, bits, sparse, suffix):
    from safetensors.torch import load_file

    from sqcompile.quant import load_quantized

    base = load_file(str(tiny_llama_dir / "model.safetensors"))
    ckpt, expected = write_checkpoint(tmp_path / "ckpt", base, bits, sparse, suffix)
    qdir = convert(str(ckpt.parent), str(tiny_llama_dir), str(tmp_path / "q"))
    q = load_quantized(qdir)
    assert q.config.bits == bits and q.config.method == "official-import"
    assert set(q.weights) == set(expected)
    for name, w in expected.items():
        got = q.weights[name].dequantize()
        # the LUT is stored in fp16 and the sparse part is re-based on it: fp16 accuracy of each weight
        np.testing.assert_allclose(got, w, rtol=2e-3, atol=2e-4)
        if sparse:
            assert q.weights[name].sparse.nnz > 0
    with torch.no_grad():
        logits = q.model(input_ids=torch.arange(10)[None]).logits
    assert torch.isfinite(logits).all()


def test_refuses_arbitrary_pickles(tmp_path, tiny_llama_dir):
    folder = tmp_path / "evil"
    folder.mkdir()
    torch.save({"x": object()}, folder / "packed.pt")  # needs full unpickling
    (folder / "quant_config.json").write_text('{"wbits": 3}')
    with pytest.raises(ValueError, match="unpickling"):
        convert(str(folder), str(tiny_llama_dir), str(tmp_path / "q"))


def test_missing_quant_config(tmp_path, tiny_llama_dir):
    (tmp_path / "c").mkdir()
    torch.save({}, tmp_path / "c" / "p.pt")
    with pytest.raises(FileNotFoundError, match="wbits"):
        convert(str(tmp_path / "c"), str(tiny_llama_dir), str(tmp_path / "q"))
