"""The runtime's greedy decode on a GPU host (pinned landing rows, the next batch queued before each read)
against host sampling of the same artifact: equal tokens, a stop token inside a batch, a request continuing from
that cache, and a generator left unfinished when a later request starts. Exit status 1 on any failure.

    # GPU host: . .kbundle/bundle/env.sh && python3 scripts/gpu_check_engine.py ARTIFACT [--out check.json]

ARTIFACT is any CUDA artifact; one without weights gets synthetic ones first (``sqcompile.runtime.synthesize``).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def check(artifact: Path) -> dict:
    """Both engines get the same requests in the same order, so each one reuses its KV cache the same way (a
    request whose prompt is cached gets its first token from a decode step, not a prefill, and on random
    weights, near-flat logits, the two can pick different tokens of a near tie)."""
    from sqcompile.runtime import engine as E
    device, host = E.Engine(artifact, max_len=512), E.Engine(artifact, max_len=512)
    host._history = None  # the host path: logits to the host every step, argmax there
    ids = np.random.default_rng(3).integers(3, int(device.manifest.model["vocab_size"]), 100).tolist()
    n = 2 * E.DEVICE_STEPS + 5

    def both(prompt: list[int], count: int, stops: set[int]) -> tuple[list[int], list[int]]:
        return (list(device.generate_ids(prompt, count, stop_token_ids=stops)),
                list(host.generate_ids(prompt, count, stop_token_ids=stops)))

    out = {"landing": device._landing is not None, "lookahead": device.lookahead_batches == 1}
    got, want = both(ids, n, set())
    out["equal"] = got == want
    stop = want[E.DEVICE_STEPS + 3]
    for engine in (device, host):  # from an empty cache again: the same tokens as above, up to the stop token
        engine.reset()
    got, stopped = both(ids, n, {stop})
    out["stop"] = got == stopped == want[:want.index(stop) + 1]
    prompt = ids + got
    got, want = both(prompt, 8, set())
    out["continue"] = got == want
    left, host_left = (e.generate_ids(ids, n, stop_token_ids=set()) for e in (device, host))
    out["left_head"] = [next(left) for _ in range(3)] == [next(host_left) for _ in range(3)]
    got, want = both(ids, n, set())
    out["after_left"] = got == want
    out["left_ends"] = list(left) == []  # the device generator stops once a later request starts
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    if not (args.artifact / "weights.safetensors").is_file():
        subprocess.run([sys.executable, "-m", "sqcompile.runtime.synthesize", str(args.artifact)], check=True)
    out = check(args.artifact)
    print(json.dumps(out))
    if args.out:
        args.out.write_text(json.dumps({"artifact": str(args.artifact), **out}, indent=1))
    return 0 if all(out.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
