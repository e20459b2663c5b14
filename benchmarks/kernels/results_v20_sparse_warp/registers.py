"""Registers and shared memory of an artifact's decode GEMVs, from the cubin inside its ``model.so`` (no GPU; the
numbers of NOTES.md v20, for the 7B artifacts of ``sqcompile build benchmarks/e2e/llama2-7b.json --synthetic``).
The exported module embeds the fatbin in its own data, not a section cuobjdump reads, so the CUDA ELF images
(e_machine 190) are cut out of it first. cuobjdump comes from the ``nvidia-cuda-cuobjdump`` wheel (on PATH).

    python benchmarks/kernels/results_v20_sparse_warp/registers.py ARTIFACT [ARTIFACT ...]"""
import re
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

CUDA_MACHINE = 190


def cubins(data: bytes):
    """The CUDA ELF64 images in ``data``, each as long as its furthest section or segment."""
    at = data.find(b"\x7fELF")
    while at >= 0:
        if data[at + 4] == 2 and struct.unpack_from("<H", data, at + 18)[0] == CUDA_MACHINE:
            phoff, shoff = struct.unpack_from("<QQ", data, at + 0x20)
            phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", data, at + 0x36)
            end = max(shoff + shentsize * shnum, phoff + phentsize * phnum)
            for s in range(shnum):
                kind = struct.unpack_from("<I", data, at + shoff + s * shentsize + 4)[0]
                off, size = struct.unpack_from("<QQ", data, at + shoff + s * shentsize + 0x18)
                if kind != 8:  # SHT_NOBITS takes no room in the file
                    end = max(end, off + size)
            for p in range(phnum):
                off, = struct.unpack_from("<Q", data, at + phoff + p * phentsize + 8)
                size, = struct.unpack_from("<Q", data, at + phoff + p * phentsize + 0x20)
                end = max(end, off + size)
            yield data[at:at + end]
        at = data.find(b"\x7fELF", at + 1)


for artifact in map(Path, sys.argv[1:]):
    print(artifact)
    for image in cubins((artifact / "model.so").read_bytes()):
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(image)
            f.flush()
            usage = subprocess.run(["cuobjdump", "-res-usage", f.name], check=True, capture_output=True,
                                   text=True).stdout
        for name, regs, shared in re.findall(r"Function (lut_matmul_\w+_m1\w*):\s*\n\s*REG:(\d+).*?SHARED:(\d+)",
                                             usage):
            print(f"  {name}: {regs} registers, {shared} B shared")
