"""`sqcompile build` on a tiny random QDIR: artifact layout, manifest, atomic writes, and compiled logits and
greedy tokens equal to the PyTorch reference of the same quantized weights."""
from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("tvm")

from conftest import make_tiny_model  # noqa: E402
from sqcompile import driver  # noqa: E402
from sqcompile.kernels.reference import random_weight  # noqa: E402


def make_tiny_qdir(folder, tokenizer, bits: int = 3, density: float = 0.01, arch: str = "llama"):
    """A QDIR whose linears carry random codes, LUTs and CSR parts (format-exact, no quantizer run)."""
    from transformers import AutoModelForCausalLM

    from sqcompile.quant.quantize import average_bits
    from sqcompile.quant.storage import QuantConfig, save_quantized

    hf = make_tiny_model(folder / "hf", arch, seed=1, tokenizer=tokenizer)
    model = AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32)
    rng = np.random.default_rng(bits)
    weights = {name: random_weight(m.out_features, m.in_features, bits, density, rng)
               for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and name != "lm_head"}
    for q in weights.values():  # keep activations in a sane range
        q.lut[:] = (q.lut.astype(np.float32) * 0.05).astype(np.float16)
        q.sparse.val[:] = (q.sparse.val.astype(np.float32) * 0.05).astype(np.float16)
    config = QuantConfig(bits=bits, sparsity=100 * density, sensitive=0.0,
                         modules={n: {"in_features": q.in_features, "out_features": q.out_features,
                                      "nnz": q.sparse.nnz} for n, q in weights.items()},
                         average_bits=average_bits(weights))
    return save_quantized(folder / "qdir", model, tokenizer, weights, config)


@pytest.fixture(scope="module")
def tiny_artifact(tmp_path_factory, tiny_tokenizer_obj):
    root = tmp_path_factory.mktemp("build")
    qdir = make_tiny_qdir(root, tiny_tokenizer_obj)
    return qdir, driver.build(str(qdir), root / "artifact", max_len=96).artifact


def test_artifact_layout_and_manifest(tiny_artifact):
    _, art = tiny_artifact
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["format"] == "sqcompile-artifact" and manifest["format_version"] == 2
    assert manifest["target"]["name"] == "llvm" and manifest["quantization"]["bits"] == 3
    assert set(manifest["entry_functions"]) == {"prefill", "decode", "greedy"}
    params = manifest["entry_functions"]["decode"]["params"]
    assert "model.layers.0.self_attn.qkv_proj.qweight" in params and "model.layers.0.self_attn.q_proj.weight" not in params
    for name in ("model.so", "weights.safetensors", "tokenizer/tokenizer.json"):
        assert name in manifest["files"] and (art / name).is_file()
    assert not [p for p in art.parent.iterdir() if p.name.startswith(".artifact.")]  # no temp leftovers


def test_logits_and_greedy_match_pytorch_reference(tiny_artifact):
    from sqcompile.quant import load_quantized
    from sqcompile.runtime import Engine

    qdir, art = tiny_artifact
    ref_model = load_quantized(qdir).model
    engine = Engine(art)
    ids = np.random.default_rng(5).integers(0, ref_model.config.vocab_size, 40)
    with torch.no_grad():
        ref = ref_model(torch.from_numpy(ids)[None]).logits[0].numpy()
    got = engine.logits(ids)
    assert np.abs(got - ref).max() / np.abs(ref).max() <= 1e-4
    prompt = ids[:6].tolist()
    with torch.no_grad():
        hf = ref_model.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False,
                                eos_token_id=None, pad_token_id=0)[0, 6:].tolist()
    ours = list(engine.generate_ids(prompt, 24, stop_token_ids=set()))
    assert ours == hf


def test_failed_build_leaves_no_artifact(tmp_path, tiny_artifact, monkeypatch):
    qdir, _ = tiny_artifact

    def boom(*args, **kwargs):
        raise RuntimeError("killed halfway")

    monkeypatch.setattr(driver, "export_library", boom)
    with pytest.raises(RuntimeError, match="killed halfway"):
        driver.build(str(qdir), tmp_path / "art", max_len=32)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_needs_force(tmp_path, tiny_artifact):
    qdir, _ = tiny_artifact
    (tmp_path / "art").mkdir()
    with pytest.raises(FileExistsError, match="--force"):
        driver.build(str(qdir), tmp_path / "art", max_len=32)


def test_unknown_target_and_arch_are_refused(tmp_path, tiny_artifact):
    qdir, _ = tiny_artifact
    with pytest.raises(ValueError, match="sm_75"):
        driver.build(str(qdir), tmp_path / "a", target="cuda", arch="sm_75")
    with pytest.raises(ValueError, match="needs --arch"):
        driver.build(str(qdir), tmp_path / "b", target="cuda")


def format_exact_quantize(model, bits: int, sparsity: float) -> dict:
    """Per-row uniform LUT + the largest |w| kept exact: the SqueezeLLM storage format without its k-means
    (seconds instead of minutes; compiled-vs-reference equality does not depend on the codes' quality)."""
    from sqcompile.quant.format import CSR, QuantizedWeight, pack_codes

    out = {}
    for name, m in model.named_modules():
        if not isinstance(m, torch.nn.Linear) or name == "lm_head":
            continue
        w = m.weight.detach().float().numpy()
        n, k = w.shape
        nnz = int(round(sparsity / 100 * w.size))
        flat = np.argpartition(-np.abs(w).ravel(), nnz)[:nnz] if nnz else np.zeros(0, np.int64)
        dense = w.copy()
        dense.ravel()[flat] = 0
        lut = np.linspace(dense.min(1), dense.max(1), 1 << bits, axis=1).astype(np.float16)
        codes = np.abs(dense[:, :, None] - lut[:, None, :].astype(np.float32)).argmin(-1)
        rows, cols = flat // k, flat % k
        vals = (w[rows, cols] - lut[rows, codes[rows, cols]].astype(np.float32)).astype(np.float16)
        out[name] = QuantizedWeight(bits, n, k, pack_codes(codes, bits), lut, CSR.from_coo(n, rows, cols, vals))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("bits,sparsity", [(3, 0.0), (3, 0.45), (4, 0.0), (4, 0.45)])
def test_smollm2_greedy_and_perplexity_match_reference(smollm2_dir, tmp_path, bits, sparsity):
    """Real SmolLM2 weights, tokenizer and text, reduced to 4 layers so that CI stays fast: 32 greedy tokens
    identical to the PyTorch reference, perplexity through the artifact within 0.5% of the reference's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sqcompile import data
    from sqcompile.eval import perplexity, torch_logits_fn
    from sqcompile.quant.quantize import average_bits
    from sqcompile.quant.reference import replace_linears
    from sqcompile.quant.storage import QuantConfig, save_quantized
    from sqcompile.runtime import Engine

    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    model.model.layers = model.model.layers[:4]
    model.config.num_hidden_layers = 4
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    weights = format_exact_quantize(model, bits, sparsity)
    config = QuantConfig(bits=bits, sparsity=sparsity, sensitive=0.0, average_bits=average_bits(weights),
                         modules={n: {"in_features": q.in_features, "out_features": q.out_features,
                                      "nnz": q.sparse.nnz} for n, q in weights.items()})
    qdir = save_quantized(tmp_path / "qdir", model, tokenizer, weights, config)
    art = driver.build(str(qdir), tmp_path / "art", max_len=64).artifact
    prompt = tokenizer("The capital of France is").input_ids
    replace_linears(model, weights)
    with torch.no_grad():
        ref = model.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False, eos_token_id=None,
                             pad_token_id=0)[0, len(prompt):].tolist()
    engine = Engine(art)
    assert list(engine.generate_ids(prompt, 32, stop_token_ids=set())) == ref
    text = data.read_text(data.default_evaluation())[:20000]
    tokens = data.tokenize(tokenizer, text)
    ours = perplexity(engine.logits, tokens, 64, 6, progress=False).perplexity
    theirs = perplexity(torch_logits_fn(model), tokens, 64, 6, progress=False).perplexity
    assert abs(ours - theirs) / theirs <= 0.005


@pytest.mark.slow
def test_cuda_build_without_gpu_embeds_a_fatbin(tiny_artifact, tmp_path):
    """`--target cuda --arch sm_90` on this GPU-less host: precompiled kernels, no CUDA source."""
    from sqcompile.kernels.cuda_host import cuda_build_env, nvcc_path

    try:
        nvcc_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    qdir, _ = tiny_artifact
    art = driver.build(str(qdir), tmp_path / "cuda", target="cuda", arch="sm_90", max_len=64).artifact
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["target"] == {"name": "cuda", "arch": "sm_90", "device": "cuda"}
    assert b'extern "C" __global__' not in (art / "model.so").read_bytes()  # check_no_source ran too
    # nvcc --use_fast_math turns RMSNorm's powf(x, 2) into exp2(2 * log2(x)): NaN for x < 0 (cuda_host.NVCC_ENV)
    assert cuda_build_env({})["TVM_CUDA_NVCC_NO_FAST_MATH"] == "1"


def test_fp16_build_matches_reference_within_fp16_rounding(tiny_artifact, tmp_path):
    """The dtype CUDA builds use, compiled for llvm here: fp16 activations and KV cache, fp32 accumulation."""
    from sqcompile.quant import load_quantized
    from sqcompile.runtime import Engine

    qdir, _ = tiny_artifact
    art = driver.build(str(qdir), tmp_path / "fp16", max_len=64, dtype="float16").artifact
    assert json.loads((art / "manifest.json").read_text())["model"]["dtype"] == "float16"
    ids = np.random.default_rng(6).integers(0, 300, 40)
    with torch.no_grad():
        ref = load_quantized(qdir).model(torch.from_numpy(ids)[None]).logits[0].numpy()
    got = Engine(art).logits(ids)
    assert np.abs(got - ref).max() / np.abs(ref).max() <= 5e-3


def test_synthetic_build_gets_its_weights_where_it_runs(tmp_path):
    """`build --synthetic` from a config alone; `runtime.synthesize` makes weights of the recorded shapes. With
    ``include_head`` the LM head is a LUT weight too (``sqcompile quantize --include-head``)."""
    import argparse

    from sqcompile.runtime import Engine
    from sqcompile.runtime.manifest import ArtifactError
    from sqcompile.runtime.synthesize import synthesize

    config = {"model_type": "llama", "hidden_size": 128, "intermediate_size": 200, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 500, "max_position_embeddings": 256,
              "tie_word_embeddings": False}
    (tmp_path / "config.json").write_text(json.dumps(config))
    args = argparse.Namespace(bits=3, sparsity=0.45, include_head=True)
    art = driver.build(str(tmp_path / "config.json"), tmp_path / "art", synthetic=True, quantize_args=args,
                       max_len=64).artifact
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["synthetic"] and not (art / "weights.safetensors").exists()
    gate_up = manifest["weights"]["model.layers.0.mlp.gate_up_proj.sp_col"]["shape"]
    assert gate_up == [round(400 * 128 * 0.45 / 100)]  # gate and up merged: 400 rows
    assert manifest["weights"]["lm_head.lut"]["shape"] == [500, 8] and "lm_head.weight" not in manifest["weights"]
    with pytest.raises(ArtifactError, match="synthesize"):
        Engine(art)
    synthesize(art)
    logits = Engine(art).logits(np.arange(20))
    assert logits.shape == (20, 500) and np.isfinite(logits).all()
    real = tmp_path / "real"
    real.mkdir()
    (real / "manifest.json").write_text(json.dumps({**manifest, "synthetic": False}))
    with pytest.raises(ArtifactError, match="real weights"):
        synthesize(real)
