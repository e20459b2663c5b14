"""QDIR: save and load a quantized model (docs/format.md).

A QDIR is a Hugging Face folder (config.json, generation_config.json, tokenizer files) plus
``quant_config.json`` and ``model.safetensors`` holding each quantized linear as its five format tensors and
every other parameter under its HF name. It is written into a temporary folder beside the target and renamed
into place, so a run killed halfway leaves no QDIR that looks complete.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..atomic import write_atomically
from .format import FORMAT_VERSION, QuantizedWeight, check_bits, upgrade_qweight

log = logging.getLogger(__name__)

FORMAT = "sqcompile"
READS_VERSIONS = tuple(range(1, FORMAT_VERSION + 1))  # older ones are repacked when loaded (format.upgrade_qweight)
CONFIG_FILE = "quant_config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass
class QuantConfig:
    bits: int
    sparsity: float  # percent kept exact in the sparse part
    sensitive: float  # percent of it chosen by sensitivity
    modules: dict[str, dict]  # name -> {"in_features", "out_features", "nnz", ...}
    average_bits: float  # per quantized weight: codes + LUT + CSR
    source_model: str = ""
    method: str = "squeezellm"  # "squeezellm", "squeezellm-unweighted", "official-import"
    calibration: dict = field(default_factory=dict)  # text, windows, length, seed
    kmeans: dict = field(default_factory=dict)  # iters, n_init, seed
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    sqcompile_version: str = __version__

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False) + "\n"

    @staticmethod
    def from_json(text: str, where: str = CONFIG_FILE) -> "QuantConfig":
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where} is not valid JSON: {e}") from e
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise ValueError(f"{where} is not a sqcompile quantization config (format != {FORMAT!r})")
        if raw.get("format_version") not in READS_VERSIONS:
            raise ValueError(f"{where} has format_version {raw.get('format_version')}, this sqcompile reads "
                             f"{' and '.join(map(str, READS_VERSIONS))}")
        known = set(QuantConfig.__dataclass_fields__)
        try:
            config = QuantConfig(**{k: v for k, v in raw.items() if k in known})
            check_bits(config.bits)
        except TypeError as e:
            raise ValueError(f"{where} is missing fields: {e}") from e
        return config


def check_writable(target: str | os.PathLike, force: bool) -> None:
    """Fail early (before hours of work) on an output that exists or cannot be written."""
    target = Path(target).expanduser().resolve()
    if target.exists() and not force:
        raise FileExistsError(f"{target} exists; pass --force to replace it")
    parent = next((p for p in [target.parent, *target.parent.parents] if p.exists()), None)
    if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK):
        raise PermissionError(f"cannot create {target}: {parent} is not a writable folder")


def model_tensors(model: nn.Module, weights: dict[str, QuantizedWeight]) -> dict[str, torch.Tensor]:
    """Everything ``model.safetensors`` holds: format tensors of quantized linears, other parameters under
    their HF names (a parameter shared by tied modules once, under its first name)."""
    out: dict[str, torch.Tensor] = {}
    for name, q in weights.items():
        q.validate()
        out.update({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in q.tensors(name).items()})
    quantized = {f"{name}.weight" for name in weights}
    seen: set[int] = set()
    for name, t in model.state_dict(keep_vars=False).items():
        if name in quantized or t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        out[name] = t.detach().cpu().contiguous()
    return out


def save_quantized(out_dir: str | os.PathLike, model: nn.Module, tokenizer, weights: dict[str, QuantizedWeight],
                   config: QuantConfig, force: bool = False) -> Path:
    """Write a QDIR for ``model`` (its linears in ``weights`` quantized) atomically."""
    from safetensors.torch import save_file

    tensors = model_tensors(model, weights)

    def fill(tmp: Path) -> None:
        model.config.save_pretrained(tmp)
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "quantization": FORMAT})
        (tmp / CONFIG_FILE).write_text(config.to_json())

    return write_atomically(Path(out_dir), fill, force)


@dataclass
class QuantizedModel:
    model: nn.Module  # HF causal LM whose quantized linears are QuantLinear
    tokenizer: object
    config: QuantConfig
    weights: dict[str, QuantizedWeight]


def read_quant_config(qdir: str | os.PathLike) -> QuantConfig:
    path = Path(qdir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{qdir} is not a quantized model folder: {CONFIG_FILE} is missing")
    return QuantConfig.from_json(path.read_text(), str(path))


def load_quantized(qdir: str | os.PathLike, tokenizer: bool = True) -> QuantizedModel:
    """Load a QDIR into the HF model with reference ``QuantLinear`` modules (CPU, eval mode)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from .reference import replace_linears

    qdir = Path(qdir).expanduser()
    if not qdir.is_dir():
        raise FileNotFoundError(f"quantized model folder not found: {qdir}")
    config = read_quant_config(qdir)
    for needed in ("config.json", WEIGHTS_FILE):
        if not (qdir / needed).is_file():
            raise FileNotFoundError(f"{qdir} is incomplete: {needed} is missing")
    try:
        tensors = load_file(str(qdir / WEIGHTS_FILE))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{qdir / WEIGHTS_FILE} is corrupt or truncated: {e}") from e

    weights: dict[str, QuantizedWeight] = {}
    if config.format_version != FORMAT_VERSION:
        log.info("%s is format version %d: repacking its codes to version %d in memory", qdir,
                 config.format_version, FORMAT_VERSION)
    for name, info in config.modules.items():
        try:
            own = {k: v.numpy() for k, v in tensors.items() if k.startswith(name + ".")}
            own[f"{name}.qweight"] = upgrade_qweight(own[f"{name}.qweight"], config.bits, int(info["in_features"]),
                                                     config.format_version)
            weights[name] = QuantizedWeight.from_tensors(own, name, config.bits, int(info["out_features"]),
                                                         int(info["in_features"]))
        except KeyError as e:
            raise ValueError(f"{qdir / WEIGHTS_FILE} lacks tensor {e} of quantized module {name}") from e
        for suffix in QuantizedWeight.SUFFIXES:
            tensors.pop(f"{name}.{suffix}")
    config.format_version = FORMAT_VERSION  # what the weights in memory are now

    hf_config = AutoConfig.from_pretrained(str(qdir))
    dtype = next((t.dtype for t in tensors.values() if t.is_floating_point()), torch.float32)
    try:
        model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
    except ValueError as e:
        raise ValueError(f"{qdir}: model type {getattr(hf_config, 'model_type', '?')!r} is not supported: {e}") from e
    replace_linears(model, weights)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if unexpected:
        raise ValueError(f"{qdir / WEIGHTS_FILE} has tensors the model does not: {sorted(unexpected)[:5]}")
    tied = _tied_names(model)
    missing = [m for m in missing if m not in tied]
    if missing:
        raise ValueError(f"{qdir / WEIGHTS_FILE} lacks parameters: {sorted(missing)[:5]}")
    model.eval()
    tok = AutoTokenizer.from_pretrained(str(qdir)) if tokenizer else None
    return QuantizedModel(model, tok, config, weights)


def _tied_names(model: nn.Module) -> set[str]:
    """Names of parameters that share storage with an earlier one (tied embeddings)."""
    seen, tied = set(), set()
    for name, t in model.state_dict().items():
        if t.data_ptr() in seen:
            tied.add(name)
        seen.add(t.data_ptr())
    return tied
