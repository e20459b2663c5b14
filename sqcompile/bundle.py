"""A runtime bundle: everything a GPU host needs to run TVM-built CUDA modules without the TVM compiler.

Made on the build host (``make_bundle``), copied to the GPU host, used there with ``load_tvm_runtime``:

    bundle/
      wheels/apache_tvm_ffi-<ver>-cp312-...whl   the FFI for the GPU host's Python (pip download)
      site/tvm/                                   the tvm Python package without libtvm_compiler.so
      site/tvm/lib/libtvm_runtime{,_cuda}.so      the runtime and its CUDA part (+ libcudart.so.13)
      site/sqcompile/, site/runtime/, ...         sqcompile itself (its runtime needs no torch or compiler)
      env.sh                                      PYTHONPATH / TVM_USE_RUNTIME_LIB for a shell

The GPU host installs the wheel (``pip install --no-index --target``), puts ``site`` on its path and calls
:func:`load_tvm_runtime`, which imports tvm in runtime-only mode and loads the CUDA runtime library that
runtime-only mode skips.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

FFI_VERSION = "0.1.14.post1"
PYTHON_VERSION = "3.12"
MANYLINUX = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
# Parts of the tvm package a runtime-only import never touches (sources, headers, the web runtime, and
# the vendored third-party trees); the compiler library is the 259 MB part.
TVM_SKIP = ("lib/libtvm_compiler.so", "3rdparty", "src", "include", "web", "cmake", "licenses")
REPO = Path(__file__).resolve().parent.parent
SQCOMPILE_PARTS = ("sqcompile", "runtime", "targets", "passes")


def _ignore_pycache(folder: str, names: list[str]) -> list[str]:
    return [n for n in names if n == "__pycache__" or n.endswith((".pyc", ".so"))]


def _copy_tvm(site: Path) -> None:
    import importlib.util
    spec = importlib.util.find_spec("tvm")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the tvm package is not installed here: a bundle is made on the build host")
    src = Path(list(spec.submodule_search_locations)[0])
    skip = {src / s for s in TVM_SKIP}

    def ignore(folder: str, names: list[str]) -> list[str]:
        return [n for n in names if Path(folder, n) in skip or n == "__pycache__"]

    shutil.copytree(src, site / "tvm", ignore=ignore)
    cudart = _find_cudart()
    shutil.copy2(cudart, site / "tvm" / "lib" / cudart.name)


def _find_cudart() -> Path:
    for root in [Path(p) for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p] + sorted(
            Path("/usr/local").glob("cuda*/lib64")):
        if (root / "libcudart.so.13").is_file():
            return (root / "libcudart.so.13").resolve()
    raise FileNotFoundError("libcudart.so.13 not found (CUDA 13 toolkit under /usr/local/cuda*/lib64)")


def _download_ffi_wheel(dest: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version",
           PYTHON_VERSION, "--implementation", "cp", *[a for p in MANYLINUX for a in ("--platform", p)],
           "-d", str(dest), f"apache-tvm-ffi=={FFI_VERSION}"]
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def make_bundle(out: Path, wheel_cache: Path | None = None) -> Path:
    """Write the bundle folder ``out`` atomically; ``wheel_cache`` may already hold the FFI wheel."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}-") as tmp:
        tmp = Path(tmp)
        site = tmp / "site"
        site.mkdir()
        wheels = tmp / "wheels"
        wheels.mkdir()
        cached = sorted(Path(wheel_cache).glob(f"apache_tvm_ffi-{FFI_VERSION}-cp312-*.whl")) if wheel_cache else []
        if cached:
            shutil.copy2(cached[0], wheels / cached[0].name)
        else:
            _download_ffi_wheel(wheels)
        _copy_tvm(site)
        for part in SQCOMPILE_PARTS:
            if (REPO / part).is_dir():
                shutil.copytree(REPO / part, site / part, ignore=_ignore_pycache)
        (tmp / "env.sh").write_text(
            'B="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"\n'
            'python3 -m pip install -q --no-index --no-deps --no-compile --target "$B/ffi" "$B"/wheels/*.whl\n'
            'export PYTHONPATH="$B/ffi:$B/site:$PYTHONPATH" TVM_USE_RUNTIME_LIB=1\n')
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
        tmp.mkdir()  # TemporaryDirectory cleans up a path that exists
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    log.info("runtime bundle %s: %.1f MB", out, size / 1e6)
    return out


def load_tvm_runtime():
    """Import tvm runtime-only (no compiler) and load its CUDA runtime library; returns the tvm module."""
    os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")
    import ctypes

    import tvm
    lib = Path(tvm.__file__).parent / "lib"
    ctypes.CDLL(str(lib / "libcudart.so.13"), mode=ctypes.RTLD_GLOBAL) if (lib / "libcudart.so.13").is_file() else None
    ctypes.CDLL(str(lib / "libtvm_runtime_cuda.so"), mode=ctypes.RTLD_GLOBAL)
    if not tvm.runtime.enabled("cuda"):
        raise RuntimeError("loaded libtvm_runtime_cuda.so but TVM reports no CUDA support")
    return tvm


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    make_bundle(Path(sys.argv[1] if len(sys.argv) > 1 else "bundle"))
