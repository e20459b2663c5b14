"""Building CUDA kernels with TVM on a host that has nvcc but no GPU.

TVM's CUDA runtime library links the driver (``libcuda.so.1``). Without it TVM keeps CUDA *source* in an
exported module, which only a host with the full compiler can load. A stub driver (``libcuda_stub.c``: every
call answers "no device") lets the runtime library load, so ``tvm.compile`` embeds the nvcc fatbin.
The stub lives in the cache directory and is never part of an artifact or bundle.
"""
from __future__ import annotations

import ctypes
import functools
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ..models import cache_dir

log = logging.getLogger(__name__)

STUB_SOURCE = Path(__file__).with_name("libcuda_stub.c")
STUB_NAME = "libcuda.so.1"


def nvcc_path() -> Path:
    found = shutil.which("nvcc") or next((str(p) for p in Path("/usr/local").glob("cuda*/bin/nvcc")), None)
    if not found:
        raise FileNotFoundError("nvcc not found on PATH or under /usr/local/cuda*/bin: CUDA builds need the CUDA toolkit")
    return Path(found)


# ptxas before CUDA 13.3 may hand the registers of a register-operand wgmma (A from registers) to the next
# instructions before the wgmma has read them (CUDA 13.3 release notes; github.com/triton-lang/triton/issues/9433).
# On an H200 the 13.0 build of the weights-in-registers GEMM gave intermittent inf outputs, the 13.5 build none.
WGMMA_RS_PTXAS = (13, 3)


@functools.lru_cache(maxsize=None)
def ptxas_version() -> tuple[int, int] | None:
    """(major, minor) of the ptxas that the build's nvcc runs, asked through nvcc (which may be a wrapper script);
    None without a working nvcc."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "empty.cu"
        src.write_text("__global__ void empty() {}\n")
        try:
            out = subprocess.run([str(nvcc_path()), "-cubin", "-arch=sm_80", "-Xptxas", "--version", "-o",
                                  str(Path(tmp) / "empty.cubin"), str(src)], capture_output=True, text=True,
                                 check=True, timeout=120).stdout
        except (FileNotFoundError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
            return None
    found = re.search(r"release (\d+)\.(\d+)", out)
    return (int(found.group(1)), int(found.group(2))) if found else None


def ptxas_keeps_wgmma_registers() -> bool:
    """Whether the build's ptxas keeps a register-operand wgmma's A registers until its wait (13.3 and later)."""
    version = ptxas_version()
    return version is not None and version >= WGMMA_RS_PTXAS


def stub_dir() -> Path:
    """A folder holding the stub ``libcuda.so.1``, built with gcc on first use."""
    folder = cache_dir() / "cuda-stub"
    lib = folder / STUB_NAME
    if lib.is_file() and lib.stat().st_mtime >= STUB_SOURCE.stat().st_mtime:
        return folder
    gcc = shutil.which("gcc") or shutil.which("cc")
    if not gcc:
        raise FileNotFoundError("gcc not found: it is needed once to build the stub libcuda.so.1 for CUDA builds")
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        out = Path(tmp) / STUB_NAME
        subprocess.run([gcc, "-shared", "-fPIC", "-O2", f"-Wl,-soname,{STUB_NAME}", "-o", str(out), str(STUB_SOURCE)],
                       check=True, capture_output=True, text=True)
        os.replace(out, lib)
    log.info("built the build-host CUDA driver stub %s", lib)
    return folder


def gpu_present() -> bool:
    """True when a real CUDA driver with a device is loadable (then no stub is needed)."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    count = ctypes.c_int(0)
    return lib.cuInit(0) == 0 and lib.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0


# TVM compiles CUDA with nvcc --use_fast_math unless told otherwise. Fast math turns powf into
# exp2(y * log2(x)), NaN for every negative base: RMSNorm's x.pow(2) made every SmolLM2 and tiny-Llama CUDA
# build return NaN (found on the H100 by checking every kernel's output; scripts/gpu_check_model.py).
NVCC_ENV = {"TVM_CUDA_COMPILE_MODE": "nvcc", "TVM_CUDA_NVCC_NO_FAST_MATH": "1"}


def cuda_build_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a subprocess that builds CUDA modules with TVM (stub driver preloaded, nvcc, exact math)."""
    env = dict(os.environ if base is None else base)
    env.update(NVCC_ENV)
    env["PATH"] = f"{nvcc_path().parent}{os.pathsep}{env.get('PATH', '')}"
    if not gpu_present():
        stub = stub_dir()
        env["LD_LIBRARY_PATH"] = f"{stub}{os.pathsep}{env.get('LD_LIBRARY_PATH', '')}"
        env["LD_PRELOAD"] = f"{stub / STUB_NAME} {env.get('LD_PRELOAD', '')}".strip()
    return env


def prepare_cuda_build() -> None:
    """Make *this* process able to build CUDA modules: load the stub driver before TVM loads its CUDA runtime.

    Must run before ``import tvm``; afterwards use a subprocess with :func:`cuda_build_env`.
    """
    os.environ.update(NVCC_ENV)
    os.environ["PATH"] = f"{nvcc_path().parent}{os.pathsep}{os.environ.get('PATH', '')}"
    if gpu_present():
        return
    if "tvm" in sys.modules:
        raise RuntimeError("prepare_cuda_build() must run before tvm is imported; build in a subprocess with "
                           "cuda_build_env() instead")
    ctypes.CDLL(str(stub_dir() / STUB_NAME), mode=ctypes.RTLD_GLOBAL)


def check_no_source(lib_path: Path) -> None:
    """Fail loudly if an exported module kept CUDA source instead of a fatbin (the GPU host could not load it)."""
    data = Path(lib_path).read_bytes()
    if b"extern \"C\" __global__" in data and b"__nv_fatbin" not in data and b"\x50\xed\x55\xba" not in data:
        raise RuntimeError(f"{lib_path} holds CUDA source, not a fatbin: the CUDA runtime was not loadable at build "
                           "time (build through sqcompile.kernels.cuda_host)")
