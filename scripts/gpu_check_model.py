"""Check a CUDA artifact against the llvm artifact of the same QDIR: greedy tokens, logits, perplexity.

    # build host: reference numbers from the llvm artifact (and the token ids, so the GPU host needs no text)
    python scripts/gpu_check_model.py reference ARTIFACT_LLVM REF.json
    # GPU host (runtime bundle on the path):
    python3 scripts/gpu_check_model.py check ARTIFACT_CUDA REF.json [--out RESULT.json]

Passes when the 64 greedy tokens are identical, or else when the logits agree within 1e-2 relative (max abs
difference over max abs reference) and the perplexity is within 1% (fp16 rounding can flip a near tie).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

PROMPT = "The history of the city begins in"
GREEDY_TOKENS = 64
LOGITS_TOKENS = 32
PPL_CTX, PPL_WINDOWS = 512, 8


def measure(engine, ref: dict | None) -> dict:
    from sqcompile.eval import perplexity

    prompt_ids = ref["prompt_ids"] if ref else engine.encode(PROMPT)
    tokens = np.asarray(ref["ppl_tokens"]) if ref else None
    if tokens is None:
        from sqcompile import data

        tokens = data.tokenize(_hf_tokenizer(engine), data.read_text(data.default_evaluation()))
        tokens = tokens[: PPL_CTX * PPL_WINDOWS]
    greedy = list(engine.generate_ids(prompt_ids, GREEDY_TOKENS, stop_token_ids=set()))
    logits = engine.logits(tokens[:LOGITS_TOKENS])
    ppl = perplexity(engine.logits, tokens, PPL_CTX, PPL_WINDOWS, progress=False).perplexity
    return {"prompt_ids": list(map(int, prompt_ids)), "greedy": greedy, "ppl": ppl,
            "ppl_tokens": tokens.tolist(), "logits": logits}


def first_non_finite_kernel(engine, ids: list[int]) -> dict | None:
    """Run a prefill of ``ids`` with the VM instrumented; the first call whose tensors hold NaN or inf, with
    the shapes and finiteness of its arguments (outputs come last: destination-passing style)."""
    found: list[dict] = []

    def instrument(_func, name, before_run, _ret, *args):
        if before_run or found:
            return 0
        tensors = [a.numpy() for a in args if hasattr(a, "numpy") and hasattr(a, "shape")]
        tensors = [t for t in tensors if t.dtype.kind == "f" and t.size]
        if any(not np.isfinite(t).all() for t in tensors):
            found.append({"kernel": str(name), "args": [
                {"shape": list(t.shape), "dtype": str(t.dtype), "finite": bool(np.isfinite(t).all())}
                for t in tensors]})
        return 0

    engine.vm.set_instrument(instrument)
    try:
        engine.logits(np.asarray(ids))
    except FloatingPointError:
        pass
    finally:
        engine.vm.set_instrument(lambda *_: 0)
    return found[0] if found else None


def _hf_tokenizer(engine):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(engine.path / "tokenizer"))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=("reference", "check"))
    p.add_argument("artifact", type=Path)
    p.add_argument("ref", type=Path, help="reference JSON (written by `reference`, read by `check`)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    from sqcompile.runtime import Engine

    engine = Engine(args.artifact)
    if args.mode == "reference":
        res = measure(engine, None)
        np.save(args.ref.with_suffix(".logits.npy"), res.pop("logits"))
        args.ref.write_text(json.dumps(res) + "\n")
        print(json.dumps({k: res[k] for k in ("greedy", "ppl")}))
        return 0
    ref = json.loads(args.ref.read_text())
    ref_logits = np.load(args.ref.with_suffix(".logits.npy"))
    try:
        res = measure(engine, ref)
    except FloatingPointError as e:  # the engine refuses non-finite logits: name the kernel that made them
        return _report(args, {"artifact": str(args.artifact), "passed": False, "error": str(e),
                              "first_non_finite_kernel": first_non_finite_kernel(engine, ref["prompt_ids"])})
    logits = res.pop("logits")
    rel = float(np.abs(logits - ref_logits).max() / np.abs(ref_logits).max())
    first_diff = next((i for i, (a, b) in enumerate(zip(res["greedy"], ref["greedy"])) if a != b), None)
    ppl_rel = abs(res["ppl"] - ref["ppl"]) / ref["ppl"]
    report = {"artifact": str(args.artifact), "target": engine.manifest.target,
              "greedy_identical": first_diff is None, "first_different_token": first_diff,
              "logits_rel_err": rel, "ppl": res["ppl"], "ppl_reference": ref["ppl"], "ppl_rel_diff": ppl_rel,
              "text": engine.tokenizer.decode(res["greedy"]),
              "passed": first_diff is None or (rel <= 1e-2 and ppl_rel <= 0.01)}
    return _report(args, report)


def _report(args: argparse.Namespace, report: dict) -> int:
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
