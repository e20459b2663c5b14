"""Import the official SqueezeLLM checkpoints (squeeze-ai-lab/sq-llama-*, sq-vicuna-*) without re-quantizing.

Their layout, per quantized linear ``<name>`` of a weight [N out, K in]:
  * ``<name>.qweight`` int32 [K * b / 32, N]: codes packed along K, least significant bits first. 2 and 4 bits:
    ``32 / b`` codes per word. 3 bits (the GPTQ-for-LLaMa layout), 32 codes in 3 words: word 0 holds codes
    0-9 and the low 2 bits of code 10, word 1 the top bit of code 10, codes 11-20 and the low bit of code 21,
    word 2 the top 2 bits of code 21 and codes 22-31;
  * ``<name>.lookup_table`` fp32 [N, 2**b];
  * optional ``<name>.rows`` / ``.cols`` / ``.vals``: CSR of [N, K]; the kernel adds ``vals`` to the LUT value
    of the dense code there (the entry nearest zero), so the weight is ``lut[n, code] + val``;
  * ``quant_config.json``: ``{"wbits": b}``; every other tensor is a plain parameter.
The codes and the LUT carry over as they are (the LUT rounded to fp16); the sparse values are re-based on
the fp16 LUT so that dense + sparse reproduces ``lut[n, code] + val`` of the original.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np

from .format import CSR, QuantizedWeight, check_bits, pack_codes

log = logging.getLogger(__name__)

SUFFIXES = ("qweight", "lookup_table", "rows", "cols", "vals")


def unpack_official(qweight: np.ndarray, bits: int) -> np.ndarray:
    """Codes [N, K] (uint8) from an official ``qweight`` int32 [K * bits / 32, N]."""
    check_bits(bits)
    words = np.asarray(qweight).astype(np.int64) & 0xFFFFFFFF  # int32 bit patterns as unsigned
    rows, n = words.shape
    if rows % bits:
        raise ValueError(f"qweight has {rows} rows, not a multiple of {bits} for {bits}-bit codes")
    blocks = words.reshape(rows // bits, bits, n)  # [K / 32, bits, N]
    if bits == 3:
        w0, w1, w2 = blocks[:, 0], blocks[:, 1], blocks[:, 2]
        s = 3 * np.arange(10)[None, :, None]
        codes = np.concatenate([
            (w0[:, None] >> s) & 7,
            (((w0 >> 30) & 3) | ((w1 & 1) << 2))[:, None],
            (w1[:, None] >> (s + 1)) & 7,
            (((w1 >> 31) & 1) | ((w2 & 3) << 1))[:, None],
            (w2[:, None] >> (s + 2)) & 7,
        ], axis=1)  # [K / 32, 32, N]
    else:
        per_word = 32 // bits
        s = bits * np.arange(per_word)[None, None, :, None]
        codes = ((blocks[:, :, None, :] >> s) & ((1 << bits) - 1)).reshape(rows // bits, 32, n)
    return codes.reshape(-1, n).T.astype(np.uint8)


def convert_linear(tensors: dict[str, np.ndarray], name: str, bits: int) -> QuantizedWeight:
    """One official quantized linear as our :class:`QuantizedWeight`."""
    codes = unpack_official(tensors[f"{name}.qweight"], bits)
    n, k = codes.shape
    lut32 = np.asarray(tensors[f"{name}.lookup_table"], np.float32)
    if lut32.shape != (n, 1 << bits):
        raise ValueError(f"{name}.lookup_table is {list(lut32.shape)}, expected {[n, 1 << bits]}")
    lut16 = lut32.astype(np.float16)
    sparse = CSR.empty(n)
    if f"{name}.vals" in tensors:
        rowptr = np.asarray(tensors[f"{name}.rows"], np.int64)
        col = np.asarray(tensors[f"{name}.cols"], np.int64)
        val = np.asarray(tensors[f"{name}.vals"], np.float32)
        CSR(rowptr.astype(np.int32), col.astype(np.int32), val.astype(np.float16)).validate(n, k)
        row = np.repeat(np.arange(n), np.diff(rowptr))
        code = codes[row, col]
        exact = lut32[row, code] + val  # what the official kernel computes there
        sparse = CSR(rowptr.astype(np.int32), col.astype(np.int32),
                     (exact - lut16[row, code].astype(np.float32)).astype(np.float16))
    q = QuantizedWeight(bits, n, k, pack_codes(codes, bits), lut16, sparse)
    q.validate()
    return q


def load_checkpoint(path: Path) -> dict[str, np.ndarray]:
    """Tensors of a .safetensors or .pt/.bin checkpoint; .pt is read with ``weights_only`` (no arbitrary
    unpickling)."""
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # pickle errors of many kinds: all mean "not a plain tensor checkpoint"
            raise ValueError(f"{path} is not a plain tensor checkpoint (refusing arbitrary unpickling): {e}") from e
    if isinstance(state, dict) and len(state) == 1 and isinstance(next(iter(state.values())), dict):
        state = next(iter(state.values()))  # {"model": state_dict}
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a flat dict of tensors")
    return {k: (v.float() if v.dtype == torch.bfloat16 else v).numpy() for k, v in state.items()}


def find_checkpoint(spec: str) -> tuple[Path, int]:
    """The checkpoint file and its bit width (from ``quant_config.json`` beside it)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(p for ext in ("*.pt", "*.bin", "*.safetensors") for p in path.glob(ext))
        if len(files) != 1:
            raise FileNotFoundError(f"{path} must hold exactly one .pt/.bin/.safetensors checkpoint, found {len(files)}")
        path = files[0]
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    config = path.parent / "quant_config.json"
    if not config.is_file():
        raise FileNotFoundError(f"{config} (with \"wbits\") is missing beside the checkpoint")
    try:
        bits = int(json.loads(config.read_text())["wbits"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{config} does not give \"wbits\": {e}") from e
    return path, check_bits(bits)


def convert(checkpoint: str, base: str, output: str, force: bool = False) -> Path:
    """Write a QDIR from an official checkpoint and the base model's config and tokenizer (``base``: an HF
    folder or hub id). No model is instantiated, so this works for 7B+ checkpoints on a small machine."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoTokenizer

    from .quantize import average_bits
    from .storage import CONFIG_FILE, WEIGHTS_FILE, QuantConfig, check_writable, write_atomically

    check_writable(output, force)
    path, bits = find_checkpoint(checkpoint)
    tensors = load_checkpoint(path)
    names = sorted(k[: -len(".qweight")] for k in tensors if k.endswith(".qweight"))
    if not names:
        raise ValueError(f"{path} has no '<module>.qweight' tensors: not a SqueezeLLM packed checkpoint")
    weights = {name: convert_linear(tensors, name, bits) for name in names}
    out: dict[str, torch.Tensor] = {}
    for name, q in weights.items():
        out.update({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in q.tensors(name).items()})
    owned = {f"{name}.{s}" for name in names for s in SUFFIXES}
    for key, value in tensors.items():
        if key not in owned and not key.endswith("rotary_emb.inv_freq"):
            out[key] = torch.from_numpy(np.ascontiguousarray(value))
    try:
        hf_config = AutoConfig.from_pretrained(base)
        tokenizer = AutoTokenizer.from_pretrained(base)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read the base model's config and tokenizer from {base!r}: {e}") from e
    config = QuantConfig(
        bits=bits, sparsity=100.0 * sum(q.sparse.nnz for q in weights.values())
        / sum(q.in_features * q.out_features for q in weights.values()), sensitive=0.0,
        modules={n: {"in_features": q.in_features, "out_features": q.out_features, "nnz": q.sparse.nnz}
                 for n, q in weights.items()},
        average_bits=average_bits(weights), source_model=f"official:{path}", method="official-import")

    def fill(tmp: Path) -> None:
        hf_config.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        base_dir = Path(base)
        if (base_dir / "generation_config.json").is_file():
            shutil.copy(base_dir / "generation_config.json", tmp)
        save_file(out, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "quantization": "sqcompile"})
        (tmp / CONFIG_FILE).write_text(config.to_json())

    return write_atomically(Path(output), fill, force)
