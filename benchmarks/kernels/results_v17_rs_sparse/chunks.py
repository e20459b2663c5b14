"""One artifact, one prompt: logits of a one-shot prefill against the same prompt fed in chunks (other GEMM kernels
for other row counts), to tell a wrong kernel from the amplified fp16 noise of a random-weight model."""
import sys
import numpy as np
sys.path.insert(0, ".")
from sqcompile.runtime import Engine
from sqcompile.runtime.loader import import_tvm, load_cuda_runtime
load_cuda_runtime(import_tvm())
e = Engine(sys.argv[1], max_len=512)
chunk = int(sys.argv[3])
for n in map(int, sys.argv[2].split(",")):
    ids = np.random.default_rng(2).integers(3, 32000, n).tolist()
    e.prefill_chunk = 4096
    a = np.asarray(e.logits(ids), np.float32)
    e.prefill_chunk = chunk
    b = np.asarray(e.logits(ids), np.float32)
    print(sys.argv[1], "rows", n, "chunk", chunk, "rel", round(float(np.abs(a - b).max() / np.abs(a).max()), 5),
          "argmax equal", round(float((a.argmax(-1) == b.argmax(-1)).mean()), 3), flush=True)
