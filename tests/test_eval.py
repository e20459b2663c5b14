"""Perplexity, text windows and the RTN baselines."""
import math

import numpy as np
import pytest
import torch

from sqcompile import data
from sqcompile.eval import perplexity
from sqcompile.quant.rtn import rtn_dequantized


def test_perplexity_matches_direct_computation():
    rng = np.random.default_rng(0)
    vocab, ctx = 50, 16
    table = torch.tensor(rng.normal(size=(vocab, vocab)), dtype=torch.float32)  # a bigram "model"
    tokens = rng.integers(0, vocab, size=5 * ctx + 7)
    res = perplexity(lambda ids: table[ids], tokens, ctx, windows=4, progress=False)
    nll = []
    for w in range(4):
        ids = tokens[w * ctx:(w + 1) * ctx]
        logp = table[ids[:-1]].double().log_softmax(-1).numpy()
        nll += [-logp[t, ids[t + 1]] for t in range(ctx - 1)]
    assert res.predictions == 4 * (ctx - 1) and res.windows == 4
    assert res.perplexity == pytest.approx(math.exp(np.mean(nll)), rel=1e-5)


def test_uniform_model_has_perplexity_vocab():
    res = perplexity(lambda ids: np.zeros((len(ids), 37), np.float32), np.arange(100) % 37, 10, None, False)
    assert res.windows == 10 and res.perplexity == pytest.approx(37, rel=1e-6)


def test_windows():
    tokens = np.arange(1000)
    ev = data.evaluation_windows(tokens, 100, 3)
    np.testing.assert_array_equal(ev[1], np.arange(100, 200))
    with pytest.raises(ValueError, match="10 windows of 100"):
        data.evaluation_windows(tokens, 100, 11)
    a = data.calibration_windows(tokens, 4, 50, seed=1)
    np.testing.assert_array_equal(a, data.calibration_windows(tokens, 4, 50, seed=1))
    assert a.shape == (4, 50) and np.all(np.diff(a, axis=1) == 1)
    with pytest.raises(ValueError, match="too short"):
        data.calibration_windows(tokens, 30, 50)


def test_read_text(tmp_path):
    (tmp_path / "b.txt").write_text("second")
    (tmp_path / "a.txt").write_text("first")
    assert data.read_text(str(tmp_path)) == "first\n\nsecond"
    with pytest.raises(FileNotFoundError):
        data.read_text(str(tmp_path / "missing.txt"))


def test_default_texts_exist():
    assert data.text_files(data.default_calibration())
    assert data.text_files(data.default_evaluation())


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("group", [None, 128])
def test_rtn(bits, group):
    w = torch.randn(8, 300) * torch.rand(8, 1)
    q = rtn_dequantized(w, bits, group)
    g = group or 300
    for start in range(0, 300, g):
        blk, qb = w[:, start:start + g], q[:, start:start + g]
        scale = (blk.amax(1) - blk.amin(1)) / (2 ** bits - 1)
        assert torch.all((qb - blk).abs().amax(1) <= scale * 0.5 + 1e-6)  # round to nearest level
        for row in qb:
            assert torch.unique(row).numel() <= 2 ** bits


def test_eval_cli_on_tiny_model(tiny_llama_dir, tmp_path, capsys):
    import json

    from sqcompile.cli import main

    text = tmp_path / "t.txt"
    text.write_text(" ".join(["It is a truth universally acknowledged."] * 200))
    assert main(["eval", str(tiny_llama_dir), "--text", str(text), "--ctx", "64", "--windows", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["windows"] == 3 and out["ctx"] == 64 and math.isfinite(out["perplexity"])
    assert main(["eval", str(tiny_llama_dir), "--text", str(text), "--ctx", "64", "--windows", "3",
                 "--rtn", "5"]) == 2
