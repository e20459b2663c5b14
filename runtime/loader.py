"""Import the TVM *runtime* only: libtvm_runtime.so, not the 259 MB compiler, and never torch.

With the full ``tvm`` package installed, ``TVM_USE_RUNTIME_LIB=1`` makes ``import tvm`` load the runtime
library alone. ``tvm_ffi`` imports torch whenever it is installed (for faster DLPack exchange); the runtime
does not need it, so torch is hidden while TVM is imported (later imports of torch work as usual). When TVM
is already imported (a process that also compiles), it is used as is.
"""
from __future__ import annotations

import ctypes
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def import_tvm():
    if "tvm" in sys.modules:
        return sys.modules["tvm"]
    os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")
    hidden = "torch" not in sys.modules
    if hidden:
        sys.modules["torch"] = None  # makes `import torch` raise ImportError inside tvm_ffi
    try:
        import tvm
        import tvm.runtime.vm  # noqa: F401
    finally:
        if hidden:
            del sys.modules["torch"]
    return tvm


def load_cuda_runtime(tvm) -> None:
    """The runtime-only import skips TVM's CUDA library; load it (it registers the ``cuda`` device)."""
    if tvm.get_global_func("device_api.cuda", allow_missing=True) is not None:
        return
    lib = Path(tvm.__file__).parent / "lib" / "libtvm_runtime_cuda.so"
    if not lib.is_file():
        raise FileNotFoundError(f"{lib} is missing: this TVM installation has no CUDA runtime")
    ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
