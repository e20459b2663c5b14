"""SqueezeLLM quantization: Fisher, dense-and-sparse, QDIR round trips, CLI end to end, errors."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sqcompile.quant.quantize import QuantizeOptions, find_linears, quantize_weight
from sqcompile.quant.sparse import select_sparse

from conftest import SHARED_DATA, make_tiny_model, pack_format_2


@pytest.fixture(scope="module")
def calib_text(tmp_path_factory) -> Path:
    """A slice of real text, short enough to tokenize fast with the tiny tokenizer."""
    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text((SHARED_DATA / "austen" / "emma.txt").read_text(encoding="utf-8")[:60_000])
    return path


def load_tiny(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    return AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)


def test_fisher_is_sum_of_per_sample_squared_gradients(tiny_llama_dir):
    from sqcompile.quant.fisher import fisher_diagonal

    model, _ = load_tiny(tiny_llama_dir)
    modules = find_linears(model)
    windows = np.random.default_rng(0).integers(0, model.config.vocab_size, size=(3, 24))
    got = fisher_diagonal(model, modules, windows, "cpu", progress=False)
    assert all(p.grad is None and p.requires_grad for p in model.parameters())  # flags restored, no grads
    want = {n: torch.zeros_like(m.weight) for n, m in modules.items()}
    summed = {n: torch.zeros_like(m.weight) for n, m in modules.items()}
    for w in windows:
        ids = torch.tensor(w)[None]
        model.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        for n, m in modules.items():
            want[n] += m.weight.grad ** 2
            summed[n] += m.weight.grad
    for n in modules:
        torch.testing.assert_close(got[n], want[n], rtol=1e-4, atol=1e-12)
    name = next(iter(modules))
    assert not torch.allclose(got[name], summed[name] ** 2)  # per sample, not the square of the sum


def test_sparse_selection_is_exact_share():
    torch.manual_seed(0)
    w, f = torch.randn(64, 200), torch.rand(64, 200)
    sel = select_sparse(w, f, sparsity=1.0, sensitive=0.25)
    assert int(sel.mask.sum()) == 128 and sel.n_sensitive == 32 and sel.n_outliers == 96
    assert sel.mask.reshape(-1)[torch.topk(f.reshape(-1), 32).indices].all()  # the most sensitive
    rest = ~sel.mask
    assert w[rest].abs().max() <= sel.threshold  # outliers are beyond T
    q1, q3 = torch.quantile(w.reshape(-1), torch.tensor([0.25, 0.75]))
    iqr = q3 - q1
    r = sel.range_factor
    assert max(abs(q1 - r * iqr), abs(q3 + r * iqr)) == pytest.approx(sel.threshold, rel=1e-2)
    assert not select_sparse(w, f, 0.0, 0.0).mask.any()
    with pytest.raises(ValueError, match="sensitive"):
        select_sparse(w, f, 0.1, 0.2)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_quantize_weight(bits):
    torch.manual_seed(bits)
    w = torch.randn(48, 100) * 0.05
    w[3, 7] = 2.0  # an outlier
    f = torch.rand(48, 100) ** 4
    q, stats = quantize_weight(w, f, QuantizeOptions(bits=bits, sparsity=1.0, sensitive=0.2))
    q.validate()
    dq = torch.from_numpy(q.dequantize())
    sparse = torch.from_numpy(q.sparse.to_dense(48, 100)) != 0
    nnz = round(48 * 100 * 0.01)
    assert q.sparse.nnz == stats["nnz"] == nnz
    assert sparse[3, 7]
    # kept weights are reproduced to fp16 accuracy; the others decode to their nearest LUT entry
    torch.testing.assert_close(dq[sparse], w[sparse], rtol=1e-3, atol=1e-4)
    lut = torch.from_numpy(q.lut.astype(np.float32))
    nearest = (w[:, :, None] - lut[:, None, :]).abs().amin(-1)
    torch.testing.assert_close((dq - w).abs()[~sparse], nearest[~sparse], rtol=0, atol=1e-6)
    # kept positions carry the code of the LUT entry nearest zero
    codes = torch.from_numpy(q.codes().astype(np.int64))
    rows, cols = sparse.nonzero(as_tuple=True)
    assert torch.equal(codes[rows, cols], lut.abs().argmin(1)[rows])
    # Fisher weighting lowers the Fisher-weighted error against plain k-means
    plain, _ = quantize_weight(w, None, QuantizeOptions(bits=bits, sparsity=0.0, sensitive=0.0))
    weighted, _ = quantize_weight(w, f, QuantizeOptions(bits=bits, sparsity=0.0, sensitive=0.0))
    err = lambda qq: float((f * (torch.from_numpy(qq.dequantize()) - w) ** 2).sum())
    assert err(weighted) < err(plain)


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
def test_quantize_cli_end_to_end(tmp_path, arch, calib_text, tiny_tokenizer_obj):
    from safetensors.numpy import load_file

    from sqcompile.cli import main
    from sqcompile.eval import perplexity, torch_logits_fn
    from sqcompile.quant import QuantLinear, load_quantized

    src = make_tiny_model(tmp_path / arch, arch, tokenizer=tiny_tokenizer_obj)
    out = tmp_path / "q"
    args = ["quantize", str(src), "-o", str(out), "--bits", "3", "--sparsity", "0.45", "--calib", str(calib_text),
            "--calib-windows", "4", "--calib-length", "64"]
    assert main(args) == 0
    q = load_quantized(out)
    names = set(find_linears(load_tiny(src)[0]))
    assert set(q.weights) == names == set(q.config.modules)
    assert q.config.format == "sqcompile" and q.config.format_version == 3 and q.config.bits == 3
    assert 3 < q.config.average_bits < 16
    stored = load_file(str(out / "model.safetensors"))
    for name, qw in q.weights.items():
        for key, arr in qw.tensors(name).items():  # loading gives bit-identical tensors
            assert stored[key].dtype == arr.dtype and stored[key].tobytes() == arr.tobytes()
        mod = q.model.get_submodule(name)
        assert isinstance(mod, QuantLinear)
        x = torch.randn(3, mod.in_features)
        want = x @ torch.from_numpy(qw.dequantize()).T + (0 if mod.bias is None else mod.bias)
        torch.testing.assert_close(mod(x), want)
    if arch == "qwen2":
        assert q.model.get_submodule("model.layers.0.self_attn.q_proj").bias is not None
    # the quantized model's perplexity stays close to the float one (random model: close to the vocab)
    fp, _ = load_tiny(src)
    ids = np.random.default_rng(0).integers(0, fp.config.vocab_size, 4 * 64)
    p_fp = perplexity(torch_logits_fn(fp), ids, 64, progress=False).perplexity
    p_q = perplexity(torch_logits_fn(q.model), ids, 64, progress=False).perplexity
    assert math.isfinite(p_q) and abs(math.log(p_q / p_fp)) < 0.1
    assert main(args) == 2  # exists without --force
    assert main(args + ["--force", "--no-fisher", "--bits", "2", "--sparsity", "0"]) == 0
    assert load_quantized(out).config.bits == 2


def test_a_format_2_qdir_is_repacked_when_loaded(tmp_path, tiny_llama_dir, calib_text):
    """A 3-bit QDIR written before the nibble layout (format 2) loads to the same weights: its codes are repacked in
    memory, the files stay as they are."""
    import json

    from safetensors.numpy import load_file, save_file

    from sqcompile.cli import main
    from sqcompile.quant import load_quantized

    out = tmp_path / "q"
    assert main(["quantize", str(tiny_llama_dir), "-o", str(out), "--bits", "3", "--sparsity", "0.45", "--calib",
                 str(calib_text), "--calib-windows", "2", "--calib-length", "64"]) == 0
    want = {name: qw.dequantize() for name, qw in load_quantized(out).weights.items()}
    tensors = load_file(str(out / "model.safetensors"))
    for name, qw in load_quantized(out).weights.items():
        tensors[f"{name}.qweight"] = pack_format_2(qw.codes())
    save_file(tensors, str(out / "model.safetensors"))
    config = json.loads((out / "quant_config.json").read_text())
    (out / "quant_config.json").write_text(json.dumps({**config, "format_version": 2}))
    old = load_quantized(out)
    assert old.config.format_version == 3 and set(old.weights) == set(want)
    for name, qw in old.weights.items():
        np.testing.assert_array_equal(qw.dequantize(), want[name])
    assert json.loads((out / "quant_config.json").read_text())["format_version"] == 2


def test_bad_input_gives_clear_errors(tmp_path, tiny_llama_dir, calib_text, capsys):
    from sqcompile.cli import main

    base = ["quantize", str(tiny_llama_dir), "-o", str(tmp_path / "q"), "--calib", str(calib_text),
            "--calib-length", "64", "--calib-windows", "2"]
    cases = {
        "bits must be one of": ["--bits", "5"],
        "sparsity is a percentage": ["--sparsity", "100"],
        "sensitive": ["--sparsity", "0.1", "--sensitive", "0.2"],
        "calibration text too short": ["--calib-windows", "10000"],
    }
    for message, extra in cases.items():
        assert main(base + extra) == 2
        assert message in capsys.readouterr().err
    assert main(["quantize", str(tmp_path / "nowhere"), "-o", str(tmp_path / "q")]) == 2
    assert "no model at" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()


def test_nan_weights_rejected(tiny_llama_dir):
    from sqcompile.quant import quantize_model

    model, tok = load_tiny(tiny_llama_dir)
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="up_proj.weight contains NaN"):
        quantize_model(model, tok, QuantizeOptions(use_fisher=False, progress=False))


def test_output_is_atomic(tmp_path, tiny_llama_dir, monkeypatch):
    """A save that dies halfway leaves neither the QDIR nor temporary folders behind."""
    import safetensors.torch

    from sqcompile.quant import quantize_model, save_quantized
    from sqcompile.quant.storage import QuantConfig

    model, tok = load_tiny(tiny_llama_dir)
    weights = quantize_model(model, tok, QuantizeOptions(use_fisher=False, progress=False, sparsity=0.0, sensitive=0.0))
    config = QuantConfig(bits=3, sparsity=0.0, sensitive=0.0, modules={}, average_bits=3.0)

    def die(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", die)
    with pytest.raises(KeyboardInterrupt):
        save_quantized(tmp_path / "q", model, tok, weights, config)
    assert list(tmp_path.iterdir()) == []


def test_load_rejects_broken_qdir(tmp_path, tiny_llama_dir):
    from sqcompile.quant import load_quantized, quantize_model, save_quantized
    from sqcompile.quant.quantize import average_bits
    from sqcompile.quant.storage import QuantConfig

    with pytest.raises(FileNotFoundError, match="quant_config.json"):
        load_quantized(tiny_llama_dir)
    model, tok = load_tiny(tiny_llama_dir)
    weights = quantize_model(model, tok, QuantizeOptions(use_fisher=False, progress=False))
    modules = {n: {"in_features": q.in_features, "out_features": q.out_features, "nnz": q.sparse.nnz}
               for n, q in weights.items()}
    qdir = save_quantized(tmp_path / "q", model, tok, weights,
                          QuantConfig(bits=3, sparsity=0.45, sensitive=0.0, modules=modules,
                                      average_bits=average_bits(weights)))
    data = (qdir / "model.safetensors").read_bytes()
    (qdir / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_quantized(qdir)
    (qdir / "quant_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_quantized(qdir)


@pytest.mark.slow
def test_real_smollm2_first_layers(smollm2_dir):
    """SmolLM2 cut to 2 layers: SqueezeLLM beats RTN on the Fisher-weighted error, and QuantLinear
    reproduces the dequantized weight on real activations."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sqcompile import data
    from sqcompile.quant import quantize_model
    from sqcompile.quant.fisher import fisher_diagonal
    from sqcompile.quant.reference import replace_linears
    from sqcompile.quant.rtn import rtn_dequantized

    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    model.model.layers = model.model.layers[:2]
    model.config.num_hidden_layers = 2
    opts = QuantizeOptions(bits=3, sparsity=0.45, sensitive=0.05, calibration=str(calib_path()),
                           calib_windows=2, calib_length=128, progress=False)
    weights = quantize_model(model, tok, opts)
    assert len(weights) == 14
    tokens = data.tokenize(tok, calib_path().read_text()[:20_000])
    fisher = fisher_diagonal(model, find_linears(model), tokens[None, :128], progress=False)
    for name, q in weights.items():
        w = model.get_submodule(name).weight.detach()
        f = fisher[name]
        err_sq = float((f * (torch.from_numpy(q.dequantize()) - w) ** 2).sum())
        err_rtn = float((f * (rtn_dequantized(w, 3) - w) ** 2).sum())
        assert err_sq < err_rtn, name
    ids = torch.tensor(tokens[:64])[None]
    with torch.no_grad():
        fp_logits = model(input_ids=ids).logits
        replace_linears(model, weights)
        q_logits = model(input_ids=ids).logits
    assert torch.isfinite(q_logits).all()
    # 2 layers at 3 bits: the next-token distribution moves but stays close
    agree = (fp_logits.argmax(-1) == q_logits.argmax(-1)).float().mean()
    assert agree > 0.6


def calib_path() -> Path:
    return SHARED_DATA / "austen" / "persuasion.txt"
