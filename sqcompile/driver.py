"""``sqcompile build``: model or QDIR -> trace -> passes -> TVM code generation -> artifact folder.

Given a float model it quantizes first (same options as ``sqcompile quantize``), given an official
SqueezeLLM checkpoint and ``--base`` it converts it first. Code generation for CUDA runs in a subprocess whose
environment preloads the stub driver (``sqcompile.kernels.cuda_host``), so that a GPU-less host embeds nvcc
fatbins for the chosen arch, never CUDA source. The artifact is assembled in a temporary folder next to the
target and renamed into place at the end (docs/artifact.md).
"""
from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_MAX_LEN = 2048
DEFAULT_MAX_PREFILL = 512
QUANTIZE_OWN_ARGS = {"help", "model", "output", "force"}  # `quantize` arguments that `build` defines itself


@dataclass
class LoadedModel:
    model: object  # HF causal LM (torch)
    tokenizer: object
    quantized: dict  # HF module name -> QuantizedWeight (empty for a float build)
    quant_config: dict | None
    source: str


@dataclass
class BuildResult:
    artifact: Path
    seconds: dict[str, float] = field(default_factory=dict)


def is_qdir(path: str | None) -> bool:
    return path is not None and (Path(path) / "quant_config.json").is_file()


def load_config(spec: str):
    """A model's HF config from a config.json file, a folder holding one, or a hub id."""
    import json

    from transformers import AutoConfig

    path = Path(spec).expanduser()
    if path.is_file():
        raw = json.loads(path.read_text())
        if "model_type" not in raw:
            raise ValueError(f"{path} has no model_type: not a Hugging Face config.json")
        return AutoConfig.for_model(raw.pop("model_type"), **raw)
    return AutoConfig.from_pretrained(str(path) if path.is_dir() else spec)


def load_synthetic(spec: str | None, quantize_args: argparse.Namespace | None, quantize: bool,
                   dtype: str) -> LoadedModel:
    """A shape-only model (``frontend.synthetic``) from ``spec``'s config, quantized to placeholder weights."""
    import torch

    from .frontend.synthetic import placeholder_quantized, shape_only_model

    if spec is None:
        raise ValueError("--synthetic needs a model config: a config.json, a folder holding one, or a hub id")
    config = load_config(spec)
    model = shape_only_model(config, getattr(torch, dtype))
    tokenizer = None
    if Path(spec).is_dir() and (Path(spec) / "tokenizer.json").is_file():
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(spec)
    if not quantize:
        return LoadedModel(model, tokenizer, {}, None, f"synthetic {spec}")
    bits, sparsity = quantize_args.bits, quantize_args.sparsity
    weights = placeholder_quantized(model, bits, sparsity, quantize_args.include_head)
    modules = {n: {"in_features": q.in_features, "out_features": q.out_features, "nnz": q.sparse.nnz}
               for n, q in weights.items()}
    quant_config = {"format": "sqcompile", "bits": bits, "sparsity": sparsity, "modules": modules,
                    "source": f"synthetic {spec}"}
    return LoadedModel(model, tokenizer, weights, quant_config, f"synthetic {spec}")


def load_model(spec: str | None, *, quantize_args: argparse.Namespace | None, base: str | None,
               workdir: Path, quantize: bool = True) -> LoadedModel:
    """Whatever ``spec`` names, as a model ready to trace (quantizing or converting it first if needed)."""
    from .quant import load_quantized

    if base is not None:  # an official SqueezeLLM checkpoint
        from .quant.official import convert

        qdir = convert(spec, base, str(workdir / "qdir"))
        spec = str(qdir)
    elif not is_qdir(spec) and quantize:
        from .quant.commands import quantize_command

        log.info("%s is not quantized: quantizing it first", spec or "the embedded model")
        ns = argparse.Namespace(**{**vars(quantize_args), "model": spec, "output": str(workdir / "qdir"),
                                   "force": True})
        quantize_command(ns)
        spec = ns.output
    if is_qdir(spec):
        q = load_quantized(spec)
        return LoadedModel(q.model, q.tokenizer, q.weights, asdict(q.config), str(spec))
    from . import models

    model, tokenizer, source = models.load(spec)
    return LoadedModel(model, tokenizer, {}, None, source.describe())


def lower(traced, target, kernel=None):
    """Run the Relax pipeline (rewrites, fusion, schedules, VM lowering) for ``target``."""
    import tvm

    from .kernels.greedy import add_greedy_function
    from .passes import build_pipeline

    logits = traced.mod["decode"].ret_ty.fields[0]
    mod = add_greedy_function(traced.mod, int(logits.shape[-1]), str(logits.dtype), traced.spec.max_len,
                              cuda=target.name == "cuda")
    with tvm.transform.PassContext(opt_level=3, config={"relax.backend.use_cuda_graph": target.cuda_graph}):
        return build_pipeline(target, traced.quantized, kernel)(mod)


def export_library(lowered, target, path: Path) -> None:
    """TIR code generation and linking of a lowered module into ``path`` (the shared library)."""
    import tvm

    executable = tvm.compile(lowered, target.tvm_target(), relax_pipeline=None)
    executable.export_library(str(path))


def export_library_cuda(lowered, target, path: Path) -> None:
    """:func:`export_library` in a subprocess that can embed CUDA fatbins without a GPU."""
    import tvm

    from .kernels.cuda_host import check_no_source, cuda_build_env

    ir_file = path.with_suffix(".relax.json")
    ir_file.write_text(tvm.ir.save_json(lowered))
    cmd = [sys.executable, "-m", "sqcompile.driver", "--export", str(ir_file), target.name, target.arch, str(path)]
    proc = subprocess.run(cmd, env=cuda_build_env(), capture_output=True, text=True)
    ir_file.unlink()
    if proc.returncode != 0:
        raise RuntimeError(f"CUDA code generation failed:\n{proc.stderr[-4000:]}")
    check_no_source(path)


def _signature(func, weight_names: list[str], returns_logits: bool = True) -> dict:
    """Inputs (name, shape with symbolic dims as names, dtype), weight names and outputs of an entry function."""
    import tvm

    def describe(name: str, ty) -> dict:
        shape = [int(s) if isinstance(s, tvm.tirx.IntImm) else str(s) for s in ty.shape]
        return {"name": name, "shape": shape, "dtype": str(ty.dtype)}

    from .passes.cuda_graph import num_inputs

    num_input = num_inputs(func)
    inputs = [describe(v.name, v.ty) for v in func.params[:num_input]]
    if not returns_logits:  # greedy: updates its inputs in place
        return {"inputs": inputs, "params": weight_names, "outputs": []}
    out = func.ret_ty.fields[0] if hasattr(func.ret_ty, "fields") else func.ret_ty
    return {"inputs": inputs, "params": weight_names, "outputs": [describe("logits", out)]}


def weight_tensors(traced, func) -> dict:
    """Artifact name -> array for every weight parameter of ``func``, in parameter order.

    Float weights keep their Hugging Face names; a quantized linear ``<module>`` contributes
    ``<module>.qweight``, ``.lut`` and, with a sparse part, ``.sp_rowptr``, ``.sp_col``, ``.sp_val`` and
    ``.sp_tiles`` (derived from the CSR here).
    Placeholders of a synthetic trace come back as zero-stride arrays of the right shape (no memory).
    """
    import numpy as np

    from .frontend.synthetic import is_placeholder
    from .passes import PACKED_SUFFIXES
    from .passes.cuda_graph import num_inputs
    from .runtime.sparse_tiles import tiles_length

    module_of = {relax_name: traced.hf_names[relax_name].removesuffix(".weight") for relax_name in traced.quantized}
    out = {}
    for v in func.params[num_inputs(func):]:
        if v.name in traced.params:
            value = traced.params[v.name]
            if value is None:
                value = np.broadcast_to(np.zeros((), str(v.ty.dtype)), tuple(int(d) for d in v.ty.shape))
            out[traced.hf_names.get(v.name, v.name)] = value
            continue
        suffix = next((s for s in PACKED_SUFFIXES if v.name.endswith("_" + s)), None)
        base = v.name[: -len(suffix) - 1] if suffix else None
        if base not in traced.quantized:
            raise ValueError(f"no value for parameter {v.name}")
        module, q = module_of[base], traced.quantized[base]
        if suffix != "sp_tiles":
            out[f"{module}.{suffix}"] = q.tensors(module)[f"{module}.{suffix}"]
        elif is_placeholder(q.sparse.rowptr):  # synthetic: the runtime host derives it (runtime/synthesize.py)
            out[f"{module}.{suffix}"] = np.broadcast_to(np.uint32(0), (
                tiles_length(q.out_features, q.in_features, q.sparse.nnz),))
        else:
            out[f"{module}.{suffix}"] = q.sparse_tiles()
    return out


def _generation_info(tokenizer, hf_config) -> dict:
    stop = set()
    for source in (getattr(hf_config, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        stop.update(source if isinstance(source, list) else [source] if source is not None else [])
    return {"stop_token_ids": sorted(stop), "bos_token_id": getattr(tokenizer, "bos_token_id", None),
            "chat_template": getattr(tokenizer, "chat_template", None)}


def write_artifact(output: Path, traced, lowered, target, loaded: LoadedModel, force: bool,
                   seconds: dict[str, float]) -> Path:
    """Assemble the artifact in a temporary folder beside ``output``, then rename it into place."""
    import numpy as np
    import tvm
    from safetensors.numpy import save_file

    from . import __version__
    from .frontend import ENTRY_FUNCTIONS
    from .atomic import write_atomically
    from .runtime.manifest import LIBRARY_FILE, MANIFEST_FILE, WEIGHTS_FILE, Manifest

    def fill(tmp: Path) -> None:
        t = time.perf_counter()
        (export_library_cuda if target.name == "cuda" else export_library)(lowered, target, tmp / LIBRARY_FILE)
        seconds["codegen"] = time.perf_counter() - t
        weights = weight_tensors(traced, lowered["prefill"])
        if not traced.synthetic:
            save_file({k: np.ascontiguousarray(v) for k, v in weights.items()}, str(tmp / WEIGHTS_FILE))
        if loaded.tokenizer is not None:
            loaded.tokenizer.save_pretrained(str(tmp / "tokenizer"))
        hf_config = loaded.model.config
        names = list(weights)
        quantization = loaded.quant_config
        if traced.synthetic and quantization:  # synthesize needs each compiled (merged) matrix's nnz and width
            quantization = {**quantization, "modules": {
                traced.hf_names[r].removesuffix(".weight"): {"in_features": q.in_features,
                                                             "out_features": q.out_features, "nnz": q.sparse.nnz}
                for r, q in traced.quantized.items()}}
        manifest = Manifest(
            sqcompile_version=__version__, tvm_version=tvm.__version__,
            model={**asdict(traced.spec), "source": loaded.source, "hf_config": hf_config.to_dict()},
            quantization=quantization,
            target={"name": target.name, "arch": target.arch, "device": target.device},
            entry_functions={**{name: _signature(lowered[name], names) for name in ENTRY_FUNCTIONS},
                             "greedy": _signature(lowered["greedy"], [], returns_logits=False)},
            generation=_generation_info(loaded.tokenizer, hf_config),
            weights={k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in weights.items()},
            synthetic=traced.synthetic)
        manifest.hash_files(tmp)
        (tmp / MANIFEST_FILE).write_text(manifest.to_json())

    return write_atomically(output, fill, force)


def build(spec: str | None, output: str | Path, *, target: str = "llvm", arch: str | None = None,
          max_len: int = DEFAULT_MAX_LEN, quantize_args: argparse.Namespace | None = None,
          base: str | None = None, quantize: bool = True, force: bool = False, kernel=None,
          dtype: str | None = None, synthetic: bool = False, cuda_graph: bool = True,
          max_prefill: int = DEFAULT_MAX_PREFILL) -> BuildResult:
    """Build an artifact (see the module doc); ``kernel`` overrides the LUT kernel factory (tests)."""
    from .frontend import trace_decoder
    from .targets import get_target

    output = Path(output).expanduser()
    if output.exists() and not force:
        raise FileExistsError(f"{output} exists: pass --force to replace it")
    target_def = get_target(target, arch, cuda_graph)
    dtype = dtype or target_def.act_dtype
    seconds: dict[str, float] = {}
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.name}.work-") as work:
        t = time.perf_counter()
        if synthetic:
            loaded = load_synthetic(spec, quantize_args, quantize, dtype)
        else:
            loaded = load_model(spec, quantize_args=quantize_args, base=base, workdir=Path(work), quantize=quantize)
        seconds["load"] = time.perf_counter() - t
        t = time.perf_counter()
        model_max = getattr(loaded.model.config, "max_position_embeddings", max_len)
        traced = trace_decoder(loaded.model, loaded.quantized, max_len=min(max_len, model_max),
                               dtype=dtype, max_prefill=max_prefill)
        seconds["trace"] = time.perf_counter() - t
        t = time.perf_counter()
        lowered = lower(traced, target_def, kernel)
        seconds["passes"] = time.perf_counter() - t
        write_artifact(output, traced, lowered, target_def, loaded, force, seconds)
    log.info("wrote %s (%s)", output, ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items()))
    return BuildResult(output, seconds)


def _quantize_parser() -> argparse.ArgumentParser:
    from .quant import commands

    sub = argparse.ArgumentParser(add_help=False).add_subparsers()
    commands.register(sub)
    return sub.choices["quantize"]


def register(sub: argparse._SubParsersAction) -> None:
    from .targets import CUDA_ARCHS, TARGET_NAMES

    b = sub.add_parser("build", help="compile a model or QDIR into an artifact",
                       description="Trace, rewrite quantized linears into LUT kernels, compile with TVM and write "
                                   "an artifact folder (docs/artifact.md). A float model is quantized first.")
    b.add_argument("model", nargs="?", default=None,
                   help="QDIR, official checkpoint (with --base), HF folder, .gguf, hub id or 'smollm2-135m' "
                        "(default: the embedded SmolLM2)")
    b.add_argument("-o", "--output", required=True, help="artifact folder to write")
    b.add_argument("--target", choices=TARGET_NAMES, default="llvm", help="llvm (this CPU) or cuda (default llvm)")
    b.add_argument("--arch", default=None,
                   help=f"CUDA arch, one of {', '.join(CUDA_ARCHS)} (required for cuda); for llvm the LLVM CPU "
                        "name or 'generic' (default: this host's CPU)")
    b.add_argument("--max-len", type=int, default=DEFAULT_MAX_LEN,
                   help=f"longest context (prompt + generated tokens) (default {DEFAULT_MAX_LEN})")
    b.add_argument("--max-prefill", type=int, default=DEFAULT_MAX_PREFILL,
                   help="most prompt tokens per prefill call; longer prompts go in chunks. Bounds the memory "
                        f"TVM plans for activations (default {DEFAULT_MAX_PREFILL})")
    b.add_argument("--dtype", choices=("float16", "float32"), default=None,
                   help="activation and KV-cache dtype (default: float16 for cuda, float32 for llvm)")
    b.add_argument("--synthetic", action="store_true",
                   help="build from MODEL's config alone (a config.json, a folder or a hub id): no weights are "
                        "read or written; `python -m sqcompile.runtime.synthesize ARTIFACT` makes random ones of "
                        "the right shapes (codes, LUTs, CSR at --bits/--sparsity) where the artifact runs")
    b.add_argument("--no-cuda-graph", action="store_true",
                   help="cuda: launch decode's kernels one by one instead of replaying CUDA graphs")
    b.add_argument("--no-quantize", action="store_true", help="compile a float model as is (fp32 / fp16)")
    b.add_argument("--base", default=None, help="base model (HF folder or hub id) of an official SqueezeLLM checkpoint")
    b.add_argument("--force", action="store_true", help="replace an existing artifact")
    group = b.add_argument_group("quantization (when MODEL is not quantized yet; as in `sqcompile quantize`)")
    for action in _quantize_parser()._actions:
        if action.dest not in QUANTIZE_OWN_ARGS:
            group._add_action(action)
    b.set_defaults(func=build_command)


def build_command(args: argparse.Namespace) -> int:
    if args.max_len < 2:
        raise ValueError(f"--max-len must be at least 2, got {args.max_len}")
    if args.max_prefill < 2:
        raise ValueError(f"--max-prefill must be at least 2, got {args.max_prefill}")
    result = build(args.model, args.output, target=args.target, arch=args.arch, max_len=args.max_len,
                   quantize_args=args, base=args.base, quantize=not args.no_quantize, force=args.force,
                   dtype=args.dtype, synthetic=args.synthetic, cuda_graph=not args.no_cuda_graph,
                   max_prefill=args.max_prefill)
    total = sum(result.seconds.values())
    print(f"wrote {result.artifact} in {total:.1f} s ("
          + ", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items()) + ")")
    return 0


def _export_main(argv: list[str]) -> int:
    """Subprocess entry of :func:`export_library_cuda`: ``--export IR_JSON TARGET ARCH OUT``."""
    import tvm

    from .targets import TargetDef

    ir_file, name, arch, out = argv
    lowered = tvm.ir.load_json(Path(ir_file).read_text())
    target = TargetDef(name, arch)
    with target.tvm_target():
        export_library(lowered, target, Path(out))
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--export":
        sys.exit(_export_main(sys.argv[2:]))
    sys.exit("usage: python -m sqcompile.driver --export IR_JSON TARGET ARCH OUT (internal; use `sqcompile build`)")
