"""``manifest.json`` of an artifact: what was built, for which target, with which files (docs/artifact.md).

Shared by the build driver (writes it) and the runtime (verifies it); numpy-free and TVM-free.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

FORMAT = "sqcompile-artifact"
FORMAT_VERSION = 2  # 2: KV rows are written at `positions` (decode views may be bucketed)
MANIFEST_FILE = "manifest.json"
LIBRARY_FILE = "model.so"
WEIGHTS_FILE = "weights.safetensors"


class ArtifactError(ValueError):
    """An artifact that is incomplete, corrupt, or built for another format, device or architecture."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Manifest:
    sqcompile_version: str
    tvm_version: str
    model: dict  # ModelSpec fields + "hf_config" (the model's config.json)
    quantization: dict | None  # the QDIR's quant_config.json, None for a float build
    target: dict  # {"name": "llvm" | "cuda", "arch": ..., "device": "cpu" | "cuda"}
    entry_functions: dict  # name -> {"inputs": [...], "params": [weight names], "outputs": [...]}
    generation: dict  # {"stop_token_ids": [...], "bos_token_id": ..., "chat_template": ...}
    files: dict = field(default_factory=dict)  # relative path -> sha256
    weights: dict = field(default_factory=dict)  # weight name -> {"shape": [...], "dtype": ...}
    synthetic: bool = False  # built from a config alone: weights.safetensors is made by runtime.synthesize
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    def hash_files(self, folder: Path) -> None:
        """Record the sha256 of every file in ``folder`` except the manifest itself."""
        self.files = {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*"))
                      if p.is_file() and p.name != MANIFEST_FILE}

    @staticmethod
    def read(folder: str | Path) -> "Manifest":
        path = Path(folder) / MANIFEST_FILE
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"artifact folder not found: {folder}")
        if not path.is_file():
            raise ArtifactError(f"{folder} is not a sqcompile artifact: {MANIFEST_FILE} is missing "
                                "(an interrupted build leaves no manifest)")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ArtifactError(f"{path} is not valid JSON: {e}") from e
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise ArtifactError(f"{path} is not a sqcompile artifact manifest (format != {FORMAT!r})")
        if raw.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(f"{path} has format_version {raw.get('format_version')!r}; this runtime reads "
                                f"version {FORMAT_VERSION}: rebuild the artifact with this sqcompile")
        try:
            return Manifest(**{k: raw[k] for k in Manifest.__dataclass_fields__ if k in raw})
        except TypeError as e:
            raise ArtifactError(f"{path} lacks fields: {e}") from e

    def verify_files(self, folder: str | Path) -> None:
        """Every listed file exists and has its recorded sha256."""
        folder = Path(folder)
        if self.synthetic and WEIGHTS_FILE not in self.files:
            raise ArtifactError(f"{folder} was built with --synthetic and has no weights yet: run "
                                f"`python -m sqcompile.runtime.synthesize {folder}` first")
        for name in (LIBRARY_FILE, WEIGHTS_FILE):
            if name not in self.files:
                raise ArtifactError(f"{folder / MANIFEST_FILE} does not list {name}")
        for name, digest in self.files.items():
            path = folder / name
            if not path.is_file():
                raise ArtifactError(f"{folder} is incomplete: {name} is missing")
            if sha256_file(path) != digest:
                raise ArtifactError(f"{path} does not match its sha256 in the manifest: the artifact is corrupt "
                                    "or was modified")

    def verify_target(self, device: str, arch: str | None) -> None:
        """The artifact was built for ``device`` (``cpu`` / ``cuda``) and, on CUDA, for ``arch``."""
        want = self.target.get("device")
        if want != device:
            raise ArtifactError(f"the artifact was built for {self.target.get('name')} ({want}), "
                                f"but this runtime runs on {device}")
        if device == "cuda" and arch is not None and self.target.get("arch") != arch:
            raise ArtifactError(f"the artifact was built for CUDA {self.target.get('arch')}, "
                                f"but this GPU is {arch}: rebuild with --arch {arch}")
