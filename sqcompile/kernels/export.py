"""Build candidate CUDA kernels on the build host (no GPU needed) into an export folder for measuring.

``export_candidates(folder, arch, configs)`` writes the candidates as functions of ``PART_KERNELS``-kernel
modules (``kernels_0.so`` ..., each an nvcc fatbin for ``arch``; ``manifest.json`` lists them). The build runs in a
subprocess whose environment carries the stub driver (``cuda_host``), so that the modules embed fatbins and no
CUDA source.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from .knobs import GEMM_TUNED_ROWS, SHARED_LIMIT, GemmKnobs, GemvKnobs, knobs_to_dict

log = logging.getLogger(__name__)

LLAMA7B_SHAPES = ((4096, 4096), (11008, 4096), (4096, 11008), (12288, 4096), (22016, 4096))
PREFILL_SHAPES = ((11008, 4096), (4096, 11008))
PREFILL = tuple((m, n, k) for m in GEMM_TUNED_ROWS for n, k in PREFILL_SHAPES)
# Kernels per compiled module of an export: nvcc's front end held 18 GB for the 551 of the check set in one module
# (44 minutes on a 2-core host, benchmarks/kernels/NOTES.md v18); parts bound that by the largest part.
PART_KERNELS = 64


@dataclass(frozen=True)
class Config:
    kind: str  # "gemv" | "gemm"
    n: int
    k: int
    bits: int
    sparse: bool
    m: int  # rows of x to measure with (the gemm kernel itself takes any m)
    density: float | None = None  # of the random sparse part; None: SqueezeLLM's 0.45% (measure.SPARSE_DENSITY)


def threads_per_row(k: int) -> tuple[int, ...]:
    """128 and 64 threads per row, and where K is not a multiple of 4096 the warps that give every thread
    exactly one 32-code block: at K = 11008 (344 blocks) 128 threads take three blocks each, the third one
    on 88 of them, so 11% of the work is padding and x for three blocks sits in registers (94-128 of them);
    352 threads take one each."""
    nblocks = -(-k // 128) * 4
    whole = -(-nblocks // 32) * 32
    return (128, 64) + ((whole,) if whole not in (128, 64) and whole <= 512 else ())


def gemv_space(n: int, k: int, bits: int, sparse: bool = False) -> list[GemvKnobs]:
    """The GEMV search space for one shape; the untuned default comes first. Its LUT placement, the one that won
    the H100 explorations (NOTES.md), gets the full grid: at 3 bits the register table (``reg_words=4``), at 2 bits
    the pair table, at 4 bits the float32 table; the others a few points (at 4 bits also the register table's
    winners there), dense 3 bits also the lane_rows layout."""
    from .gemv_cuda import fit_gemv_knobs, gemv_shared_bytes
    nblocks = -(-k // 128) * 4
    primary = GemvKnobs.default(bits)
    others = [GemvKnobs(pairs=bits >= 4)] + ([GemvKnobs()] if bits == 3 else [])
    grid = [replace(primary, threads_k=tk, rows_inner=ri, steps=steps) for tk in threads_per_row(k)
            for ri, steps in ((2, 2), (4, 2), (2, 4), (1, 2), (8, 2), (4, 4), (8, 1), (4, 1))]
    grid += [replace(kn, threads_k=128, rows_inner=ri, steps=steps) for kn in others
             for ri, steps in ((2, 2), (4, 2), (2, 4))]
    if bits == 4:
        grid += [GemvKnobs(tk, 1, ri, steps, reg_words=4) for tk in threads_per_row(k) if tk != 64
                 for ri, steps in ((2, 2), (4, 1), (2, 8))]
    out = [fit_gemv_knobs(k, bits, GemvKnobs.default(bits), sparse)]
    for kn in grid:
        if -(-nblocks // kn.threads_k) * kn.rows_inner > 16 or -(-n // kn.rows_per_block) < 132:
            continue  # too many registers, or too few blocks to fill the GPU
        kn = fit_gemv_knobs(k, bits, kn, sparse)
        if kn not in out and gemv_shared_bytes(k, bits, kn) <= SHARED_LIMIT:
            out.append(kn)
    lanes = GemvKnobs(threads_k=128, steps=1, layout="lane_rows")
    if bits == 3 and not sparse and gemv_shared_bytes(k, bits, lanes) <= SHARED_LIMIT:
        out.append(lanes)
    return out


def gemm_space(arch: str) -> list[GemmKnobs]:
    """The arch's untuned default first and the rule it replaced second (sm_90: wgmma, then mma; elsewhere mma,
    then dlight's tensor-core schedule), then tile shapes of the tensor-core rules, then the SIMT tiles."""
    from sqcompile.targets.registry import nvcc_arch

    from .gemm_mma import WGMMA_ARCH, WGMMA_KNOBS
    mma = [GemmKnobs(), GemmKnobs(tile_k=32, stages=4), GemmKnobs(warps_n=2),
           GemmKnobs(128, 64, warps_n=2, stages=4), GemmKnobs(warps_n=2, tile_k=32, stages=6),
           GemmKnobs(warps_m=4, warps_n=2, tile_k=32, stages=4), GemmKnobs(256, 128, warps_m=4, warps_n=2, tile_k=32)]
    simt = [GemmKnobs(64, 64, 8, 4, "simt"), GemmKnobs(128, 64, 8, 4, "simt"), GemmKnobs(64, 128, 4, 8, "simt")]
    if nvcc_arch(arch) != WGMMA_ARCH:
        return [mma[0], GemmKnobs(rule="wmma"), *mma[1:], *simt]
    wgmma = [WGMMA_KNOBS, replace(WGMMA_KNOBS, stages=3),
             GemmKnobs(64, 128, rule="wgmma", warps_m=4, warps_n=1, stages=6),
             GemmKnobs(128, 256, rule="wgmma", warps_m=8, warps_n=1, stages=3),
             replace(WGMMA_KNOBS, weights_in_registers=True), replace(WGMMA_KNOBS, weights_in_registers=True, stages=3),
             *(replace(WGMMA_KNOBS, tile_m=256, weights_in_registers=True, split_k=split) for split in (1, 2, 3, 4)),
             # one warpgroup of 64 weight rows: at 128 rows of x, 2-4 times the blocks of the 128-row tiles
             *(GemmKnobs(128, 64, rule="wgmma", warps_m=4, warps_n=1, stages=4, weights_in_registers=True,
                         split_k=split) for split in (2, 3, 4)),
             # the shared-operand default split over a cluster: the sparse GEMM, one x tile at 128 rows
             *(replace(WGMMA_KNOBS, split_k=split) for split in (2, 3, 4))]
    return [wgmma[0], mma[0], *wgmma[1:], *mma[1:], GemmKnobs(rule="wmma"), *simt]


def benchmark_configs(arch: str, space_limit: int | None = None, shapes=LLAMA7B_SHAPES, bits_list=(3, 4),
                      prefill: bool = True) -> list[tuple[Config, list]]:
    """Llama-2-7B decode shapes (or ``shapes``, N x K) at 3 and 4 bits (or ``bits_list``), dense and sparse, plus
    the prefill GEMM (``prefill``). With ``space_limit`` (the ``lite`` set) each GEMV measures the untuned default,
    the ``arch`` record's schedule, then the space's next candidates up to the limit: a re-run of what the records
    chose, beside cuBLAS."""
    from sqcompile.targets.tuning import load
    recs = load(arch)
    gemm = gemm_space(arch)
    out = []
    for (n, k), bits, sparse in itertools.product(shapes, bits_list, (False, True)):
        space = gemv_space(n, k, bits, sparse)
        if space_limit:
            rec = recs.exact("gemv", n, k, bits, sparse)
            space = list(dict.fromkeys([space[0], *([rec] if rec else []), *space[1:]]))[:space_limit]
        out.append((Config("gemv", n, k, bits, sparse, 1), space))
    for (m, n, k), bits, sparse in itertools.product(PREFILL if prefill else (), bits_list, (False, True)):
        rec = recs.exact("gemm", n, k, bits, sparse, m)
        out.append((Config("gemm", n, k, bits, sparse, m), list(dict.fromkeys([gemm[0], *([rec] if rec else []),
                                                                              gemm[1]]))))
    return out


def check_configs(arch: str) -> list[tuple[Config, list]]:
    """Odd shapes (K and N not multiples of 128) for the correctness check: both GEMV LUT placements with a
    few knobs (fitted to the shared-memory limit), the sparse GEMM everywhere (the short-prompt kernel, dlight's
    rule plus the CSR add, and the tuned kernels: mma, and on sm_90 every wgmma tile shape), the dense
    tensor-core GEMM on three of them, on sm_90 the weights-in-registers GEMM at 100 and 300 rows, dense and sparse."""
    from .gemv_cuda import fit_gemv_knobs
    space = gemm_space(arch)
    tuned = [kn for kn in space if kn.rule == "wgmma" and not kn.weights_in_registers] + [GemmKnobs()]
    out = []
    gemv = [GemvKnobs(), GemvKnobs(64, 1, 1, 1), GemvKnobs(64, 2, 1, 4), GemvKnobs(256, 1, 2, 2),
            GemvKnobs(128, 1, 4, 2, pairs=False), GemvKnobs(64, 2, 1, 4, pairs=False),
            GemvKnobs(128, steps=2, layout="lane_rows"), GemvKnobs(reg_words=4), GemvKnobs(64, 2, 1, 4, reg_words=2),
            GemvKnobs(256, 1, 2, 2, reg_words=3), GemvKnobs(64, 1, 4, 4, reg_words=1),
            GemvKnobs(128, 1, 8, 1, reg_words=4), GemvKnobs(352, 1, 2, 2, reg_words=4), GemvKnobs(352, 1, 4, 1, pairs=False)]
    shapes = ((1000, 1000), (333, 4160), (4096, 11008))
    for (n, k), bits in itertools.product(shapes, (2, 3, 4)):
        for sparse in (False, True):
            out.append((Config("gemv", n, k, bits, sparse, 1),
                        list(dict.fromkeys(fit_gemv_knobs(k, bits, kn, sparse) for kn in gemv))))
        out.append((Config("gemm", n, k, bits, True, 37), [space[0], GemmKnobs(rule="wmma")]))  # short prompts
        if bits > 2:
            out.append((Config("gemm", n, k, bits, True, 100), tuned))
    for (n, k), bits in zip(shapes, (3, 4, 2)):
        out.append((Config("gemm", n, k, bits, False, 37), space[:1]))
    registers = [kn for kn in space if kn.weights_in_registers]
    for (n, k), bits, m, sparse in itertools.product(shapes, (3, 4), (100, 300), (False, True)):
        if registers:
            out.append((Config("gemm", n, k, bits, sparse, m), registers))
    # 5%: ~51 nonzeros per 32 x 32 tile of sp_tiles, more than the 32 lanes of the warp that adds them, so a lane
    # takes several; the short-prompt kernel and every tuned tile shape
    out.append((Config("gemm", 333, 4160, 3, True, 37, density=0.05), [space[0]]))
    out.append((Config("gemm", 333, 4160, 4, True, 100, density=0.05), tuned + registers))
    out += records_configs()
    merged: dict[Config, list] = {}  # a shape and rows listed twice is one config: its candidates pooled
    for cfg, cands in out:
        merged[cfg] = list(dict.fromkeys(merged.get(cfg, []) + cands))
    return list(merged.items())


def records_configs(rows: tuple[int, ...] = (100, 200, 300)) -> list[tuple[Config, list]]:
    """The prefill GEMMs as an artifact builds them (``None``: the records' knobs, a kernel per tier of rows in
    one function) at rows inside each tier: each knob checked alone missed a kernel that was wrong only inside a
    bounded tier (``gemm_mma.OPAQUE_I64``)."""
    return [(Config("gemm", n, k, bits, sparse, m), [None])
            for (n, k), bits, sparse, m in itertools.product(PREFILL_SHAPES, (3, 4), (False, True), rows)]


def prefill_configs(arch: str, rows: tuple[int, ...] = GEMM_TUNED_ROWS) -> list[tuple[Config, list]]:
    """The prefill GEMMs at ``rows`` rows of x over the tensor-core part of ``gemm_space`` (the SIMT tiles take
    milliseconds). Rows other than the tuned ones show which knobs prompts between them should run
    (``knobs.GEMM_ROW_TIERS``)."""
    space = [kn for kn in gemm_space(arch) if kn.rule != "simt"]
    return [(Config("gemm", n, k, bits, sparse, m), space)
            for m, (n, k), bits, sparse in itertools.product(rows, PREFILL_SHAPES, (3, 4), (False, True))]


def explore_configs(arch: str) -> list[tuple[Config, list]]:
    """A quick look at the block-balanced sparse GEMV on every 7B shape at 3 and 4 bits: the dense record's
    schedule (the sparse part should cost only its bytes), the current sparse record, and a few batch shapes."""
    from sqcompile.targets.tuning import load

    from .gemv_cuda import fit_gemv_knobs
    recs = load(arch)
    out = []
    for (n, k), bits in itertools.product(LLAMA7B_SHAPES, (3, 4)):
        rec = [recs.exact("gemv", n, k, bits, sparse) for sparse in (False, True)]
        space = [GemvKnobs.default(bits)] + [kn for kn in rec if kn]
        reg = 4 if bits == 3 else 0
        space += [GemvKnobs(tk, 1, ri, st, pairs=bits < 4, reg_words=reg)
                  for tk, ri, st in ((128, 8, 1), (128, 4, 1), (128, 4, 2), (128, 2, 4), (128, 2, 8), (64, 2, 4))]
        out.append((Config("gemv", n, k, bits, True, 1),
                    list(dict.fromkeys(fit_gemv_knobs(k, bits, kn, True) for kn in space))))
    return out


def _name(cfg: Config, i: int) -> str:
    density = f"_p{round(cfg.density * 10000)}" if cfg.density else ""
    return f"{cfg.kind}_{'s' if cfg.sparse else 'd'}{cfg.bits}_n{cfg.n}_k{cfg.k}_m{cfg.m}{density}_c{i}"


def build(folder: Path, arch: str, configs: list[tuple[Config, list]]) -> None:
    """In-process build; the caller made CUDA builds possible (``cuda_host.prepare_cuda_build``). A candidate of
    ``None`` is what an artifact builds: the records' knobs."""
    import tvm

    from sqcompile.targets.registry import nvcc_arch

    from .matmul import lut_matmul
    target = tvm.target.Target({"kind": "cuda", "arch": nvcc_arch(arch)}, host={"kind": "llvm"})
    funcs, manifest = {}, {"arch": arch, "configs": []}
    for cfg, space in configs:
        cands = []
        for i, kn in enumerate(space):
            name = _name(cfg, i)
            if name in funcs:  # one name, one kernel: a second config of the same name would replace the first
                raise ValueError(f"two export configs are both named {name}")
            # pdl off: launched back to back, PDL kernels would overlap each other and time less than alone
            f = lut_matmul(cfg.n, cfg.k, cfg.bits, m=1 if cfg.kind == "gemv" else None, sparse=cfg.sparse,
                           act_dtype="float16", target=target, knobs=kn, pdl=False)
            funcs[name] = f.with_attr("global_symbol", name)
            cands.append({"name": name, "knobs": knobs_to_dict(kn) if kn else {}, "default": i == 0})
        manifest["configs"].append({**cfg.__dict__, "candidates": cands})
    from .cuda_host import check_no_source
    names = list(funcs)
    parts = [names[i:i + PART_KERNELS] for i in range(0, len(names), PART_KERNELS)]
    folder.mkdir(parents=True, exist_ok=True)
    manifest["libs"] = []
    for i, part in enumerate(parts):
        log.info("building kernels %d-%d of %d for %s", i * PART_KERNELS + 1, i * PART_KERNELS + len(part),
                 len(names), arch)
        with target:
            ex = tvm.compile(tvm.IRModule({name: funcs[name] for name in part}), target=target)
        lib = f"kernels_{i}.so"
        ex.export_library(str(folder / lib))
        check_no_source(folder / lib)
        manifest["libs"].append(lib)
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))


def parse_shapes(text: str) -> tuple[tuple[int, int], ...]:
    """``"960x576,576x1536"`` -> ((960, 576), (576, 1536)): N x K of decode GEMVs (out x in features)."""
    shapes = []
    for item in text.split(","):
        n, sep, k = item.strip().lower().partition("x")
        if not (sep and n.isdigit() and k.isdigit() and int(n) > 0 and int(k) > 0):
            raise ValueError(f"shapes are N x K pairs like 4096x11008, comma-separated; got {item.strip()!r}")
        shapes.append((int(n), int(k)))
    return tuple(dict.fromkeys(shapes))


def export_candidates(folder: Path, arch: str, which: str = "benchmark", space_limit: int | None = None,
                      shapes: tuple[tuple[int, int], ...] | None = None, bits: tuple[int, ...] = (3, 4)) -> Path:
    """Build in a subprocess with the CUDA build environment; write ``folder`` atomically. ``shapes`` (N x K)
    replaces the benchmark's Llama-2-7B GEMVs by those, at ``bits``, with no prefill GEMMs (``sqcompile tune
    --shapes``)."""
    from .cuda_host import cuda_build_env
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    cmd = [sys.executable, "-m", "sqcompile.kernels.export", str(tmp), arch, which, str(space_limit or 0)]
    if shapes:
        cmd += ["--shapes", ",".join(f"{n}x{k}" for n, k in shapes), "--bits", ",".join(map(str, bits))]
    subprocess.run(cmd, env=cuda_build_env(), check=True)
    if folder.exists():
        import shutil
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


def export_kernels(folder: Path, funcs: dict, target, manifest: dict) -> None:
    """Compile ``funcs`` (name -> PrimFunc, each its own global symbol) for ``target`` and write ``folder`` as
    kernels.so + manifest.json, atomically (a temporary folder beside it, then a rename). For the check
    scripts; the caller made CUDA builds possible (``cuda_host.prepare_cuda_build``)."""
    import shutil

    import tvm

    from .cuda_host import check_no_source
    with target:
        ex = tvm.compile(tvm.IRModule({name: f.with_attr("global_symbol", name) for name, f in funcs.items()}),
                         target=target)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    ex.export_library(str(tmp / "kernels.so"))
    check_no_source(tmp / "kernels.so")
    (tmp / "manifest.json").write_text(json.dumps({**manifest, "libs": ["kernels.so"]}, indent=1))
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    print(f"wrote {folder} ({manifest.get('arch')}: {len(funcs)} kernels)")


class ExportKernels:
    """The functions of an export folder's modules by name: ``manifest["libs"]``, or one ``kernels.so`` where it
    names none (folders written before the parts)."""

    def __init__(self, tvm, folder: Path, manifest: dict):
        self.modules = [tvm.runtime.load_module(str(folder / lib)) for lib in manifest.get("libs", ["kernels.so"])]

    def __getitem__(self, name: str):
        for module in self.modules:
            try:
                return module[name]
            except AttributeError:  # not in this part
                continue
        raise KeyError(f"no kernel {name!r} in the export's modules")


def load_export(folder: Path, torch, about: str = ""):
    """(TVM runtime, manifest, kernels by name) of an export folder, on the GPU host; prints the device and
    the kernels' arch (and ``about``) first."""
    from ..bundle import load_tvm_runtime
    tvm = load_tvm_runtime()
    manifest = json.loads((folder / "manifest.json").read_text())
    print(f"{torch.cuda.get_device_properties(0).name} ({manifest['arch']} kernels{about})")
    return tvm, manifest, ExportKernels(tvm, folder, manifest)


def finish_check(out: Path | None, torch, manifest: dict, failed: int, checked: int | None = None, **doc) -> int:
    """The end of a check script's ``check``: ``doc`` with the kernels' arch, the device and the failure count
    as JSON in ``out`` (if given), the count printed, and the exit status (1 on any failure)."""
    if out:
        out.write_text(json.dumps({"arch": manifest["arch"], "device": torch.cuda.get_device_properties(0).name,
                                   "failed": failed, **doc}, indent=1))
    print(f"{failed} failed" + ("" if checked is None else f" of {checked}"))
    return 1 if failed else 0


def check_script_main(doc: str, export, check) -> int:
    """The command line of a ``scripts/gpu_check_*.py``: ``export FOLDER [--arch]`` here (nvcc, no GPU),
    ``check FOLDER [--out]`` on the GPU host; ``export(folder, arch)`` and ``check(folder, out) -> status``."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export", help="build the kernels here (nvcc, no GPU needed)")
    ex.add_argument("folder", type=Path)
    ex.add_argument("--arch", default="sm_90a")
    ck = sub.add_parser("check", help="check and time an export folder on the GPU host")
    ck.add_argument("folder", type=Path)
    ck.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    if args.cmd == "export":
        export(args.folder, args.arch)
        return 0
    return check(args.folder, args.out)


if __name__ == "__main__":
    import argparse

    logging.basicConfig(level=logging.INFO)
    cli = argparse.ArgumentParser(description="build an export folder (export_candidates runs this)")
    cli.add_argument("out", type=Path)
    cli.add_argument("arch")
    cli.add_argument("which", choices=("benchmark", "check", "records", "explore", "prefill", "lite"))
    cli.add_argument("limit", type=int, nargs="?", default=0, help="candidates per GEMV shape (0: all)")
    cli.add_argument("rows", nargs="?", help="prefill: comma-separated rows of x (default: the tuned ones)")
    cli.add_argument("--shapes", type=parse_shapes, help="benchmark: these N x K GEMVs only, no prefill GEMMs")
    cli.add_argument("--bits", default="3,4", help="with --shapes: comma-separated bit widths")
    a = cli.parse_args()
    out, arch_, which_, limit = a.out, a.arch, a.which, a.limit or None
    rows_ = tuple(int(r) for r in a.rows.split(",")) if a.rows else GEMM_TUNED_ROWS
    bench = ((lambda: benchmark_configs(arch_, limit, a.shapes, tuple(int(b) for b in a.bits.split(",")),
                                          prefill=False))
             if a.shapes else (lambda: benchmark_configs(arch_, limit)))
    cfgs = {"benchmark": bench, "check": lambda: check_configs(arch_),
            "records": records_configs,
            "explore": lambda: explore_configs(arch_), "prefill": lambda: prefill_configs(arch_, rows_),
            "lite": lambda: benchmark_configs(arch_, 4)}[which_]()
    build(out, arch_, cfgs)
