"""sqcompile: SqueezeLLM dense-and-sparse quantization compiled to TVM kernels.

The IR passes, targets and the thin runtime live in the repository's top-level ``passes/``, ``targets/``
and ``runtime/`` folders and install as ``sqcompile.passes``, ``sqcompile.targets`` and
``sqcompile.runtime``. In a source checkout (tests, a runtime bundle copied to a GPU host) the same
names resolve to those folders through the extension of ``__path__`` below.
"""
from pathlib import Path as _Path

__version__ = "0.1.0"

_repo_root = _Path(__file__).resolve().parent.parent
if (_repo_root / "runtime" / "__init__.py").is_file() and (_repo_root / "passes").is_dir():
    __path__.append(str(_repo_root))  # noqa: F821 - module attribute of a package
