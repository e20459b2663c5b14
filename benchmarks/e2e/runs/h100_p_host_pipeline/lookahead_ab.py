"""As run on the H100 (thirteenth session, last call): decode tok/s at context 128 (65 tokens, median of 3
after a warm-up) with the next batch queued before each read (lookahead 1) and without (0), one engine."""
import json, sys, statistics
sys.path.insert(0, ".")
import numpy as np
from sqcompile.runtime import engine as E
from sqcompile.runtime.loader import import_tvm, load_cuda_runtime
tvm = import_tvm(); load_cuda_runtime(tvm)
e = E.Engine(sys.argv[1], max_len=512)
print(E.__file__, "landing", e._landing is not None)
ids = np.random.default_rng(0).integers(3, 32000, 128).tolist()
out = {}
toks = {}
for r in range(2):
    for look in (1, 0):
        e.lookahead_batches = look
        runs = []
        for _ in range(4):
            toks[look] = list(e.generate_ids(ids, 65, stop_token_ids=set()))
            runs.append(e.last_stats.decode_tokens_per_s)
        out[f"r{r}_lookahead{look}"] = statistics.median(runs[1:])
        print(look, [round(x, 1) for x in runs], flush=True)
print("same tokens", toks[0] == toks[1])
stop = toks[1][20]
e.lookahead_batches = 1
got = list(e.generate_ids(ids, 65, stop_token_ids={stop}))
print("stop ok", got == toks[1][:toks[1].index(stop) + 1])
print(json.dumps(out))
