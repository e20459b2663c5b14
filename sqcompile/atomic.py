"""Folders that appear whole or not at all: quantized dirs, artifacts and the converted-model cache."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def write_atomically(target: Path, fill, force: bool = False) -> Path:
    """Create folder ``target`` by ``fill(tmp_folder)`` and a rename; an existing one only with ``force``."""
    target = Path(target).expanduser().resolve()
    if target.exists() and not force:
        raise FileExistsError(f"{target} exists; pass --force to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(target.parent, os.W_OK):
        raise PermissionError(f"cannot write into {target.parent}")
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        fill(tmp)
        _usual_permissions(tmp)
        if target.exists():
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
            os.replace(target, old / "x")
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _usual_permissions(folder: Path) -> None:
    """mkdtemp makes 0700 folders (and some writers 0600 files): give the result the umask's defaults."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for f in folder.rglob("*"):
        os.chmod(f, (0o777 if f.is_dir() else 0o666) & ~umask)
