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

    from .passes import build_pipeline

    with tvm.transform.PassContext(opt_level=3):
        return build_pipeline(target, traced.quantized, kernel)(traced.mod)


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


def _signature(func, weight_names: list[str]) -> dict:
    """Inputs (name, shape with symbolic dims as names, dtype), weight names and outputs of an entry function."""
    import tvm

    def describe(name: str, ty) -> dict:
        shape = [int(s) if isinstance(s, tvm.tirx.IntImm) else str(s) for s in ty.shape]
        return {"name": name, "shape": shape, "dtype": str(ty.dtype)}

    num_input = int(func.attrs["num_input"])
    out = func.ret_ty.fields[0] if hasattr(func.ret_ty, "fields") else func.ret_ty
    return {"inputs": [describe(v.name, v.ty) for v in func.params[:num_input]], "params": weight_names,
            "outputs": [describe("logits", out)]}


def weight_tensors(traced, func) -> dict:
    """Artifact name -> array for every weight parameter of ``func``, in parameter order.

    Float weights keep their Hugging Face names; a quantized linear ``<module>`` contributes
    ``<module>.qweight``, ``.lut`` and, with a sparse part, ``.sp_rowptr``, ``.sp_col``, ``.sp_val``.
    """
    import numpy as np

    from .passes import PACKED_SUFFIXES

    module_of = {relax_name: traced.hf_names[relax_name].removesuffix(".weight") for relax_name in traced.quantized}
    out = {}
    for v in func.params[int(func.attrs["num_input"]):]:
        if v.name in traced.params:
            out[traced.hf_names.get(v.name, v.name)] = traced.params[v.name]
            continue
        suffix = next((s for s in PACKED_SUFFIXES if v.name.endswith("_" + s)), None)
        base = v.name[: -len(suffix) - 1] if suffix else None
        if base not in traced.quantized:
            raise ValueError(f"no value for parameter {v.name}")
        module = module_of[base]
        out[f"{module}.{suffix}"] = np.ascontiguousarray(traced.quantized[base].tensors(module)[f"{module}.{suffix}"])
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
        save_file(weights, str(tmp / WEIGHTS_FILE))
        loaded.tokenizer.save_pretrained(str(tmp / "tokenizer"))
        hf_config = loaded.model.config
        names = list(weights)
        manifest = Manifest(
            sqcompile_version=__version__, tvm_version=tvm.__version__,
            model={**asdict(traced.spec), "source": loaded.source, "hf_config": hf_config.to_dict()},
            quantization=loaded.quant_config,
            target={"name": target.name, "arch": target.arch, "device": target.device},
            entry_functions={name: _signature(lowered[name], names) for name in ENTRY_FUNCTIONS},
            generation=_generation_info(loaded.tokenizer, hf_config))
        manifest.hash_files(tmp)
        (tmp / MANIFEST_FILE).write_text(manifest.to_json())

    return write_atomically(output, fill, force)


def build(spec: str | None, output: str | Path, *, target: str = "llvm", arch: str | None = None,
          max_len: int = DEFAULT_MAX_LEN, quantize_args: argparse.Namespace | None = None,
          base: str | None = None, quantize: bool = True, force: bool = False, kernel=None) -> BuildResult:
    """Build an artifact (see the module doc); ``kernel`` overrides the LUT kernel factory (tests)."""
    from .frontend import trace_decoder
    from .targets import get_target

    output = Path(output).expanduser()
    if output.exists() and not force:
        raise FileExistsError(f"{output} exists: pass --force to replace it")
    target_def = get_target(target, arch)
    seconds: dict[str, float] = {}
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.name}.work-") as work:
        t = time.perf_counter()
        loaded = load_model(spec, quantize_args=quantize_args, base=base, workdir=Path(work), quantize=quantize)
        seconds["load"] = time.perf_counter() - t
        t = time.perf_counter()
        model_max = getattr(loaded.model.config, "max_position_embeddings", max_len)
        traced = trace_decoder(loaded.model, loaded.quantized, max_len=min(max_len, model_max),
                               dtype=target_def.act_dtype)
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
    result = build(args.model, args.output, target=args.target, arch=args.arch, max_len=args.max_len,
                   quantize_args=args, base=args.base, quantize=not args.no_quantize, force=args.force)
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
