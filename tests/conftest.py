"""Shared fixtures: tiny random HF decoders (with a small trained tokenizer) and the real SmolLM2 folder."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TINY_TEXT = SHARED_DATA / "austen" / "persuasion.txt"


def tiny_tokenizer(vocab_size: int = 320):
    """A byte-level BPE trained in well under a second on a slice of real English text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    text = TINY_TEXT.read_text(encoding="utf-8")[:200_000]
    tok.train_from_iterator([text[i:i + 2000] for i in range(0, len(text), 2000)], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


def pack_format_2(codes: np.ndarray) -> np.ndarray:
    """3-bit codes ``[N, K]`` packed bit by bit as QDIR format 2 stored them (docs/format.md): 6-bit pair indices
    ``code_2p | code_2p+1 << 3``, pair 4i + m in bits 2-7 of byte m of word i, pair 12 + m's bits 2i, 2i + 1 in bits
    0-1 of byte m of word i."""
    n, k = codes.shape
    blocks = np.zeros((n, -(-k // 128) * 4, 32), np.uint32)
    blocks.reshape(n, -1)[:, :k] = codes
    words = np.zeros((n, blocks.shape[1], 3), np.uint32)
    for r, b, p in np.ndindex(n, blocks.shape[1], 16):
        idx = int(blocks[r, b, 2 * p]) | int(blocks[r, b, 2 * p + 1]) << 3
        if p < 12:
            words[r, b, p // 4] |= idx << (8 * (p % 4) + 2)
        else:
            for i in range(3):
                words[r, b, i] |= ((idx >> (2 * i)) & 3) << (8 * (p - 12))
    return words.reshape(n, -1)


def make_tiny_model(folder: Path, arch: str = "llama", seed: int = 0, tokenizer=None) -> Path:
    """Save a 2-layer random ``arch`` (llama, mistral, qwen2) causal LM with a tokenizer into ``folder``.

    Hidden 64 and FFN 160: K = 160 is not a multiple of 32, so padding paths are exercised."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

    tokenizer = tokenizer or tiny_tokenizer()
    common = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  tie_word_embeddings=True)
    config = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config}[arch](**common)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_tokenizer_obj():
    return tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, tiny_tokenizer_obj) -> Path:
    """A tiny random Llama HF folder (config.json, model.safetensors, tokenizer)."""
    return make_tiny_model(tmp_path_factory.mktemp("tiny-llama"), "llama", tokenizer=tiny_tokenizer_obj)


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real SmolLM2-135M-Instruct as a HF folder (converted from the embedded GGUF once, cached)."""
    from sqcompile import models

    try:
        return Path(models.hf_folder(models.resolve(None)))
    except models.ModelError as e:
        pytest.skip(f"embedded SmolLM2 unavailable: {e}")
