"""Tracing Llama-family decoders into Relax: prefill + decode with the KV cache match Hugging Face's forward."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tvm = pytest.importorskip("tvm")
from tvm import relax  # noqa: E402

from conftest import make_tiny_model  # noqa: E402
from sqcompile.frontend import UnsupportedModelError, trace_decoder  # noqa: E402
from sqcompile.passes import build_pipeline  # noqa: E402
from sqcompile.targets import TargetDef  # noqa: E402

LLVM = TargetDef("llvm", "generic")


def _hf_model(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def run_compiled(traced, ids: np.ndarray, split: int) -> np.ndarray:
    """Prefill ``ids[:split]`` then decode the rest one token at a time; logits of every position."""
    ex = tvm.compile(traced.mod, LLVM.tvm_target(), relax_pipeline=build_pipeline(LLVM, traced.quantized))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    func = traced.mod["prefill"]
    weights = [tvm.runtime.tensor(traced.params[p.name]) for p in func.params[int(func.attrs["num_input"]):]]
    spec = traced.spec
    kv = [tvm.runtime.empty(spec.kv_shape(spec.max_len), spec.dtype, tvm.cpu()) for _ in range(2 * spec.num_layers)]

    def step(name, start, chunk):
        ctx = start + len(chunk)
        out = vm[name](tvm.runtime.tensor(chunk[None].astype(np.int64)),
                       tvm.runtime.tensor(np.arange(start, ctx, dtype=np.int64)),
                       *[b._create_view(spec.kv_shape(ctx)) for b in kv], *weights)
        return (out[0] if not hasattr(out, "numpy") else out).numpy()[0]

    rows = [step("prefill", 0, ids[:split])]
    rows += [step("decode", t, ids[t:t + 1]) for t in range(split, len(ids))]
    return np.concatenate(rows)


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
def test_trace_matches_hf(arch, tmp_path, tiny_tokenizer_obj):
    folder = make_tiny_model(tmp_path / arch, arch, seed=3, tokenizer=tiny_tokenizer_obj)
    model = _hf_model(folder)
    ids = np.random.default_rng(0).integers(0, model.config.vocab_size, 12)
    with torch.no_grad():
        ref = model(torch.from_numpy(ids)[None]).logits[0].numpy()
    traced = trace_decoder(_hf_model(folder), max_len=64)
    assert traced.spec.model_type == arch and traced.spec.num_layers == 2
    assert set(traced.mod.get_global_vars()) and {g.name_hint for g in traced.mod.get_global_vars()} == {
        "prefill", "decode"}
    got = run_compiled(traced, ids, split=9)
    assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-4


def test_weights_stay_parameters_under_their_hf_names(tmp_path, tiny_tokenizer_obj):
    model = _hf_model(make_tiny_model(tmp_path / "q", "qwen2", tokenizer=tiny_tokenizer_obj))
    expected = {name: p.detach().numpy().copy() for name, p in model.state_dict().items()}
    merged = {"self_attn.qkv_proj": ("q_proj", "k_proj", "v_proj"), "mlp.gate_up_proj": ("gate_proj", "up_proj")}
    for name in list(expected):  # what frontend.fuse merges (Qwen2 has q/k/v biases); gate/up rows interleave
        for target, parts in merged.items():
            parent, first = target.split(".")[0], parts[0]
            if f".{parent}.{first}." in name:
                prefix, part = name.split(f"{first}.")
                rows = [expected[f"{prefix}{p}.{part}"] for p in parts]
                expected[f"{prefix}{target.split('.')[1]}.{part}"] = (
                    np.stack(rows, axis=1).reshape(-1, *rows[0].shape[1:]) if parent == "mlp" else np.concatenate(rows))
    traced = trace_decoder(model, max_len=32)
    assert "model.layers.0.self_attn.qkv_proj.bias" in traced.hf_names.values()
    assert "model.layers.0.mlp.gate_up_proj.weight" in traced.hf_names.values()
    for relax_name, value in traced.params.items():
        np.testing.assert_array_equal(value, expected[traced.hf_names[relax_name]])


def test_unsupported_architecture_names_the_model_type():
    from transformers import AutoModelForCausalLM, GPT2Config

    model = AutoModelForCausalLM.from_config(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(UnsupportedModelError, match="'gpt2'"):
        trace_decoder(model, max_len=16)


def test_unsupported_op_names_the_model_type_and_op(tmp_path, tiny_tokenizer_obj):
    model = _hf_model(make_tiny_model(tmp_path / "l", "llama", tokenizer=tiny_tokenizer_obj))

    class Bessel(torch.nn.Module):  # an activation the Relax importer has no converter for
        def forward(self, x):
            return torch.special.i0(x)

    model.model.layers[0].mlp.act_fn = Bessel()
    with pytest.raises(UnsupportedModelError, match=r"'llama'.*i0"):
        trace_decoder(model, max_len=16)


def test_merged_rows_compute_what_the_separate_weights_compute():
    """frontend.fuse: q/k/v (or gate/up) quantized weights stacked by rows, CSR offsets included."""
    from sqcompile.frontend.fuse import concat_rows
    from sqcompile.kernels.reference import random_weight

    rng = np.random.default_rng(3)
    parts = [random_weight(n, 200, 3, 0.02, rng) for n in (64, 16, 16)]
    merged = concat_rows(parts)
    merged.validate()
    np.testing.assert_array_equal(merged.dequantize(), np.concatenate([p.dequantize() for p in parts]))
    with pytest.raises(ValueError, match="same bits"):
        concat_rows([parts[0], random_weight(16, 200, 4, 0.0, rng)])


def test_interleaved_rows_alternate_gate_and_up():
    """gate/up: row 2i of the merged weight is gate row i, row 2i + 1 up row i, CSR entries included."""
    from sqcompile.frontend.fuse import interleave_rows
    from sqcompile.kernels.reference import random_weight

    rng = np.random.default_rng(4)
    gate, up = (random_weight(24, 200, 3, 0.03, rng) for _ in range(2))
    merged = interleave_rows([gate, up])
    merged.validate()
    dense = merged.dequantize()
    np.testing.assert_array_equal(dense[0::2], gate.dequantize())
    np.testing.assert_array_equal(dense[1::2], up.dequantize())
    with pytest.raises(ValueError, match="same shape"):
        interleave_rows([gate, random_weight(16, 200, 3, 0.0, rng)])
