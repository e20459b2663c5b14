"""End-to-end decoding on a GPU: sqcompile artifacts of a Llama-2-7B-shaped model against PyTorch fp16.

    python benchmarks/e2e/run.py build .e2e --arch sm_90          # build host (no GPU needed): artifacts + bundle
    . .e2e/bundle/env.sh && python3 benchmarks/e2e/run.py measure .e2e --out DIR        # GPU host, one command

``build`` compiles ``llama2-7b.json`` (32 layers, hidden 4096, FFN 11008, 32 heads, vocab 32000) with
``sqcompile build --synthetic`` at 3 bits, 3 bits +0.45%, 4 bits, and 3 bits with the LM head quantized too
(``sq-3bit-head``; the others keep it fp16, as SqueezeLLM does): no 7B checkpoint exists here, so the
artifacts hold the compiled module and the weights' shapes; ``measure`` fills them on the GPU host with random
codes, LUTs and CSR (``sqcompile.runtime.synthesize``; speed depends on shapes only). Each system runs in its
own process: our artifacts through ``sqcompile.runtime.Engine`` (the TVM runtime, no torch), the same
7B shapes in PyTorch fp16 with a CUDA-graph decode step (``torch_llama.StaticLlama``, as written and
``torch.compile``d) and in eager HF transformers. Measured: decode tokens/s at context 128 and 2048 (greedy, the prompt's length is the context,
then ``DECODE_STEPS`` steps, median of ``DECODE_REPEATS`` runs after a warm-up that captures the CUDA graphs),
prefill tokens/s of a 512-token prompt, and peak GPU memory above the CUDA
context (NVML) against weights + KV cache. Writes results.json, results.md and results.png into --out.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIG = HERE / "llama2-7b.json"
ARTIFACTS = {"sq-3bit": ["--bits", "3", "--sparsity", "0"], "sq-3bit-0.45%": ["--bits", "3", "--sparsity", "0.45"],
             "sq-4bit": ["--bits", "4", "--sparsity", "0"],
             # the LM head quantized too (`--include-head`), as MLC's q3f16_1 / q4f16_1 do (llama.cpp's K-quants
             # keep it at 6 bits); SqueezeLLM and the rows above keep it fp16
             "sq-3bit-head": ["--bits", "3", "--sparsity", "0", "--include-head"]}
CONTEXTS = (128, 2048)
PREFILL_TOKENS = 512
DECODE_STEPS = 64
DECODE_REPEATS = 3  # timed decode runs per context; the median is reported
MAX_LEN = CONTEXTS[-1] + DECODE_STEPS + 64
# PyTorch fp16 decode steps captured in CUDA graphs: as written (unfused), and torch.compile'd first.
TORCH_GRAPHS = ("torch-fp16-cudagraph", "torch-fp16-compiled")
SYSTEMS = [*ARTIFACTS, *TORCH_GRAPHS, "hf-eager"]  # an unknown name is refused, not measured as something else


# -- build host ----------------------------------------------------------------------------------------------
def build(out: Path, arch: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, flags in ARTIFACTS.items():
        cmd = ["sqcompile", "build", str(CONFIG), "--synthetic", *flags, "--target", "cuda", "--arch", arch,
               "--max-len", str(MAX_LEN), "-o", str(out / name), "--force"]
        print("+", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    subprocess.run([sys.executable, "-m", "sqcompile.bundle", str(out / "bundle")], check=True)


# -- GPU host: one system per process ---------------------------------------------------------------------------
class GpuMemory:
    """Device memory in use (NVML), relative to the moment the CUDA context exists."""

    def __init__(self):
        import pynvml

        pynvml.nvmlInit()
        self.nvml, self.handle = pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)
        self.base = self.used()
        self.peak = 0

    def used(self) -> int:
        return self.nvml.nvmlDeviceGetMemoryInfo(self.handle).used

    def sample(self) -> None:
        self.peak = max(self.peak, self.used() - self.base)


def kv_bytes(cfg: dict, length: int) -> int:
    hd = cfg["hidden_size"] // cfg["num_attention_heads"]
    nkv = cfg.get("num_key_value_heads") or cfg["num_attention_heads"]
    return 2 * cfg["num_hidden_layers"] * length * nkv * hd * 2


def measure_ours(artifact: Path) -> dict:
    import numpy as np

    from sqcompile.runtime import Engine
    from sqcompile.runtime.loader import import_tvm, load_cuda_runtime
    from sqcompile.runtime.manifest import Manifest

    tvm = import_tvm()
    load_cuda_runtime(tvm)
    tvm.runtime.empty((1,), "float16", tvm.cuda(0))  # create the CUDA context before the baseline reading
    mem = GpuMemory()
    # a real model's artifact (``ab.py`` on any two artifacts) may hold less context than MAX_LEN
    engine = Engine(artifact, max_len=min(MAX_LEN, int(Manifest.read(artifact).model["max_len"])))
    cfg = engine.manifest.model["hf_config"]
    rng = np.random.default_rng(0)
    vocab = int(engine.manifest.model["vocab_size"])
    result = {"weights_bytes": (artifact / "weights.safetensors").stat().st_size,
              "kv_bytes": kv_bytes(cfg, MAX_LEN)}
    prompt = rng.integers(3, vocab, PREFILL_TOKENS).tolist()
    times = []
    for _ in range(4):  # the first is a warm-up (first calls load kernels)
        engine.reset()  # prefill the whole prompt, as a new request: up to its first token
        list(engine.generate_ids(prompt, 1, stop_token_ids=set()))
        times.append(engine.last_stats.prefill_seconds)
        mem.sample()
    result["prefill_tok_s"] = PREFILL_TOKENS / min(times[1:])
    for ctx in (c for c in CONTEXTS if c + DECODE_STEPS + 1 <= engine.max_len):
        ids = rng.integers(3, vocab, ctx).tolist()
        runs = []
        for _ in range(1 + DECODE_REPEATS):  # the first run captures the CUDA graphs of the cache buckets it
            # crosses (once per engine, as the PyTorch decoders capture theirs before their timing)
            generated = list(engine.generate_ids(ids, DECODE_STEPS + 1, stop_token_ids=set()))
            runs.append(engine.last_stats.decode_tokens_per_s)
        result[f"decode_tok_s@{ctx}"] = statistics.median(runs[1:])
        mem.sample()
        # Decode steps (CUDA graphs, bucketed cache views) against one prefill of the same tokens.
        full = engine.logits(np.asarray(ids + generated[:-1]))[ctx - 1:]
        result[f"decode_equals_prefill_argmax@{ctx}"] = float(np.mean(full.argmax(-1) == np.asarray(generated)))
    result["peak_bytes"] = mem.peak
    return result


def measure_torch(kind: str, cfg: dict) -> dict:
    import torch

    from torch_llama import StaticLlama, hf_eager_model

    from sqcompile.runtime.engine import DEVICE_STEPS

    torch.zeros(1, device="cuda")
    mem = GpuMemory()
    g = torch.Generator(device="cuda").manual_seed(0)
    vocab = cfg["vocab_size"]
    result: dict = {}
    if kind in TORCH_GRAPHS:
        model = StaticLlama(cfg)
        result["weights_bytes"] = model.weight_bytes()
        model.alloc_cache(PREFILL_TOKENS)
        prompt = torch.randint(3, vocab, (PREFILL_TOKENS,), device="cuda", generator=g)
        pos = torch.arange(PREFILL_TOKENS, device="cuda")
        result["prefill_tok_s"] = PREFILL_TOKENS / _cuda_time(lambda: model.forward(prompt, pos), 3)
        mem.sample()
        for ctx in CONTEXTS:
            del model.kv
            torch.cuda.empty_cache()
            model.alloc_cache(ctx + DECODE_STEPS + 1)
            ids = torch.randint(3, vocab, (ctx,), device="cuda", generator=g)
            logits = model.forward(ids, torch.arange(ctx, device="cuda"))[-1]
            step = model.decode_graph(compiled=kind == "torch-fp16-compiled")
            runs = []
            for _ in range(DECODE_REPEATS):
                token = logits.argmax()
                torch.cuda.synchronize()
                t = time.perf_counter()
                for i in range(DECODE_STEPS):
                    token = step(token, ctx + i).argmax()  # fed to the next step on the device
                    if (i + 1) % DEVICE_STEPS == 0:
                        token.item()  # tokens reach the host as often as our runtime reads them
                runs.append(DECODE_STEPS / (time.perf_counter() - t))
            result[f"decode_tok_s@{ctx}"] = statistics.median(runs)
            result["kv_bytes"] = kv_bytes(cfg, ctx + DECODE_STEPS + 1)
            mem.sample()
    else:  # eager transformers with its dynamic cache
        model = hf_eager_model(cfg)
        result["weights_bytes"] = sum(p.numel() * 2 for p in model.parameters())
        prompt = torch.randint(3, vocab, (1, PREFILL_TOKENS), device="cuda", generator=g)
        with torch.no_grad():
            result["prefill_tok_s"] = PREFILL_TOKENS / _cuda_time(lambda: model(prompt, use_cache=False), 3)
            mem.sample()
            for ctx in CONTEXTS:
                ids = torch.randint(3, vocab, (1, ctx), device="cuda", generator=g)
                out = model(ids, use_cache=True)
                past, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
                torch.cuda.synchronize()
                t = time.perf_counter()
                for _ in range(DECODE_STEPS):
                    out = model(token, past_key_values=past, use_cache=True)
                    past, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
                    token.item()
                result[f"decode_tok_s@{ctx}"] = DECODE_STEPS / (time.perf_counter() - t)
                result["kv_bytes"] = kv_bytes(cfg, ctx + DECODE_STEPS)
                mem.sample()
                del out, past
    result["peak_bytes"] = mem.peak
    return result


def _cuda_time(fn, repeats: int) -> float:
    import torch

    fn()
    torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def profile(system: str, carry: Path, ctx: int = 128, steps: int = 16, prefill: bool = False) -> list[dict]:
    """CUDA kernels of ``steps`` decode steps at context ``ctx`` (torch.profiler/CUPTI sees TVM's kernels and
    those inside CUDA graphs too), largest total time first; with ``prefill``, of one ``ctx``-token prefill
    up to its first token instead."""
    import numpy as np

    cfg = json.loads(CONFIG.read_text())
    if system in ARTIFACTS:
        from sqcompile.runtime import Engine

        engine = Engine(carry / system, max_len=MAX_LEN)
        prompt = np.random.default_rng(0).integers(3, cfg["vocab_size"], ctx).tolist()
        list(engine.generate_ids(prompt, steps + 1, stop_token_ids=set()))  # warm-up: captures the graphs

        def run():
            if prefill:  # the whole prompt, as a new request
                engine.reset()
                list(engine.generate_ids(prompt, 1, stop_token_ids=set()))
            else:  # the prompt is cached: its last token is re-fed, then steps - 1 decode steps
                list(engine.generate_ids(prompt, steps, stop_token_ids=set()))
    elif prefill:
        import torch

        from torch_llama import StaticLlama

        model = StaticLlama(cfg)
        model.alloc_cache(ctx)
        prompt = torch.randint(3, cfg["vocab_size"], (ctx,), device="cuda")

        def run():
            model.forward(prompt, torch.arange(ctx, device="cuda"))
    else:
        import torch

        from torch_llama import StaticLlama

        model = StaticLlama(cfg)
        model.alloc_cache(ctx + steps + 1)
        step = model.decode_graph(compiled=system == "torch-fp16-compiled")

        def run():
            token = torch.zeros((), dtype=torch.long, device="cuda")
            for i in range(steps):
                token = step(token, ctx + i).argmax()
            token.item()
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    run()
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        run()
        torch.cuda.synchronize()
    rows = [{"kernel": e.key[:90], "calls": e.count, "total_us": e.device_time_total}
            for e in prof.key_averages() if e.device_time_total > 0]
    rows.sort(key=lambda r: -r["total_us"])
    total = sum(r["total_us"] for r in rows)
    per, unit, what = ((1, "us", f"one {ctx}-token prefill") if prefill else
                       (steps, "us/step", f"decode step at context {ctx}"))
    print(f"{system}: {total / per:.0f} us of kernels per {what}")
    for r in rows[:25]:
        print(f"{r['total_us'] / per:9.1f} {unit} {r['calls'] // per:4d}x  {r['kernel']}")
    return rows


# -- GPU host: driver ---------------------------------------------------------------------------------------------
def measure(carry: Path, out: Path, systems: list[str]) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for system in systems:
        if system in ARTIFACTS:
            art = carry / system
            if not (art / "weights.safetensors").is_file():
                subprocess.run([sys.executable, "-m", "sqcompile.runtime.synthesize", str(art)], check=True)
        cmd = [sys.executable, __file__, "one", system, str(carry)]
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(HERE), os.environ.get("PYTHONPATH", "")])})
        row = {"system": system, "seconds": round(time.perf_counter() - t, 1)}
        if proc.returncode:
            row["error"] = proc.stderr[-2000:]
            print(f"{system}: FAILED\n{proc.stderr[-2000:]}", flush=True)
        else:
            row.update(json.loads(proc.stdout.strip().splitlines()[-1]))
        rows.append(row)
        print(json.dumps(row), flush=True)
    import torch

    report(rows, out, torch.cuda.get_device_name(0))
    return rows


def merge(parts: list[Path], out: Path) -> None:
    """One report from the results.json of several ``measure`` runs on the same device (e.g. systems split
    over calls that each fit a time limit)."""
    docs = [json.loads((p / "results.json").read_text()) for p in parts]
    devices = {d["device"] for d in docs}
    if len(devices) != 1:
        raise ValueError(f"results from different devices cannot share a table: {sorted(devices)}")
    out.mkdir(parents=True, exist_ok=True)
    report([r for d in docs for r in d["rows"]], out, devices.pop())


def report(rows: list[dict], out: Path, device: str) -> None:
    from sqcompile.runtime.engine import DEVICE_STEPS

    torch_rows = [r for r in rows if r["system"] in TORCH_GRAPHS and "error" not in r]
    base = max((r[f"decode_tok_s@{CONTEXTS[0]}"] for r in torch_rows), default=None)
    head = ["system", *[f"decode tok/s @{c}" for c in CONTEXTS], f"prefill tok/s ({PREFILL_TOKENS})",
            f"x fastest fp16 graphs @{CONTEXTS[0]}", "peak GB", "weights+KV GB", "peak / (w+KV)"]
    lines = [f"# Llama-2-7B-shaped decoding on {device}", "",
             f"Greedy decode of {DECODE_STEPS} tokens after a prompt as long as the context (median of "
             f"{DECODE_REPEATS} runs; ours after a warm-up run that captures the CUDA graphs, as the PyTorch "
             "graphs are captured before their timing); prefill = one "
             f"{PREFILL_TOKENS}-token prompt up to its first token (ours: the runtime's prefill, which copies only the "
             "last position's logits to the host; PyTorch: one forward, logits left on the device); peak = NVML device memory above the CUDA context. Random weights "
             "(ours: random codes/LUTs/CSR, sqcompile.runtime.synthesize; PyTorch: N(0, 0.02) fp16). Each step's "
             f"argmax feeds the next on the device and the host reads tokens every {DEVICE_STEPS} steps (ours: the "
             "artifact's `greedy` function, the next steps queued before the tokens are read from pinned memory; "
             "PyTorch graphs: argmax in torch, `.item()`, whose graph replays cost the host ~20 us; eager HF: every "
             "step). "
             "x = decode tok/s over the faster PyTorch fp16 CUDA-graph decoder's.", "",
             "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['system']} | failed |" + " |" * (len(head) - 2))
            continue
        wkv = r["weights_bytes"] + r["kv_bytes"]
        cells = [r["system"], *[f"{r[f'decode_tok_s@{c}']:.1f}" for c in CONTEXTS], f"{r['prefill_tok_s']:.0f}",
                 f"{r[f'decode_tok_s@{CONTEXTS[0]}'] / base:.2f}" if base else "-",
                 f"{r['peak_bytes'] / 1e9:.2f}", f"{wkv / 1e9:.2f}", f"{r['peak_bytes'] / wkv:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    print(text)
    (out / "results.md").write_text(text)
    (out / "results.json").write_text(json.dumps({"device": device, "rows": rows}, indent=2) + "\n")
    _plot(rows, out / "results.png", device)


def _plot(rows: list[dict], path: Path, device: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if "error" not in r]
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(CONTEXTS)
    for i, ctx in enumerate(CONTEXTS):
        ax.bar([j + i * width for j in range(len(ok))], [r[f"decode_tok_s@{ctx}"] for r in ok], width,
               label=f"context {ctx}")
    ax.set_xticks([j + width * (len(CONTEXTS) - 1) / 2 for j in range(len(ok))], [r["system"] for r in ok],
                  rotation=15)
    ax.set_ylabel("decode tokens/s (batch 1)")
    ax.set_title(f"Llama-2-7B shapes, {device}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build host: the 7B artifacts and a runtime bundle into DIR")
    b.add_argument("dir", type=Path)
    b.add_argument("--arch", default="sm_90")
    m = sub.add_parser("measure", help="GPU host: measure every system, write results into --out")
    m.add_argument("dir", type=Path, help="the folder `build` wrote")
    m.add_argument("--out", type=Path, default=HERE)
    m.add_argument("--systems", nargs="+", default=SYSTEMS, choices=SYSTEMS)
    pr = sub.add_parser("profile", help="GPU host: the CUDA kernels of a system's decode step (or prefill)")
    pr.add_argument("system", choices=SYSTEMS)
    pr.add_argument("dir", type=Path)
    pr.add_argument("--ctx", type=int, default=128, help="context of the decode steps; prompt length with --prefill")
    pr.add_argument("--prefill", action="store_true", help="profile one prefill up to its first token")
    g = sub.add_parser("merge", help="one report from several measure runs' folders (same device)")
    g.add_argument("parts", type=Path, nargs="+")
    g.add_argument("--out", type=Path, default=HERE)
    o = sub.add_parser("one", help=argparse.SUPPRESS)
    o.add_argument("system")
    o.add_argument("dir", type=Path)
    args = p.parse_args()
    if args.cmd == "build":
        build(args.dir, args.arch)
    elif args.cmd == "measure":
        measure(args.dir, args.out, args.systems)
    elif args.cmd == "merge":
        merge(args.parts, args.out)
    elif args.cmd == "profile":
        profile(args.system, args.dir, args.ctx, prefill=args.prefill)
    else:
        cfg = json.loads(CONFIG.read_text())
        ours = args.system in ARTIFACTS or (args.dir / args.system / "manifest.json").is_file()
        res = measure_ours(args.dir / args.system) if ours else measure_torch(args.system, cfg)
        print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
