"""As run on the H100 (thirteenth session, first call): decode tok/s of one artifact with the host reading
tokens every 16, 64 or 8 steps, with the bundle's engine or (argument "repo") the working tree's. That call's engine read with a synchronize;
the pinned landing rows of the final engine are sized by DEVICE_STEPS when an Engine is made."""
import json, sys, statistics
if sys.argv[2:] == ["repo"]:
    sys.path.insert(0, ".")
import numpy as np
from sqcompile.runtime import engine as E
from sqcompile.runtime.loader import import_tvm, load_cuda_runtime
tvm = import_tvm(); load_cuda_runtime(tvm)
e = E.Engine(sys.argv[1], max_len=512)
print(E.__file__)
ids = np.random.default_rng(0).integers(3, 32000, 128).tolist()
out = {}
for r in range(2):
    for steps in (16, 64, 8):
        E.DEVICE_STEPS = steps
        runs = []
        for _ in range(4):
            list(e.generate_ids(ids, 65, stop_token_ids=set()))
            runs.append(e.last_stats.decode_tokens_per_s)
        out[f"r{r}_steps{steps}"] = statistics.median(runs[1:])
        print(steps, [round(x, 1) for x in runs], flush=True)
print(json.dumps(out))
