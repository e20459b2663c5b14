"""Subcommands ``quantize``, ``eval`` and ``import-official``; heavy imports stay inside the functions."""
from __future__ import annotations

import argparse
import json
import logging

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    q = sub.add_parser("quantize", help="SqueezeLLM-quantize a model into a QDIR",
                       description="Fisher-weighted per-row k-means with a dense-and-sparse split (SqueezeLLM).")
    q.add_argument("model", nargs="?", default=None,
                   help="HF folder, .gguf file, hub id or 'smollm2-135m' (default: the embedded SmolLM2)")
    q.add_argument("-o", "--output", required=True, help="QDIR to write")
    q.add_argument("--bits", type=int, default=3, help="code bits: 2, 3 or 4 (default 3)")
    q.add_argument("--sparsity", type=float, default=0.45,
                   help="percent of each matrix kept exact in the sparse part; 0 = dense only (default 0.45)")
    q.add_argument("--sensitive", type=float, default=None,
                   help="percent chosen by sensitivity, part of --sparsity (default 0.05, at most --sparsity)")
    q.add_argument("--no-fisher", action="store_true", help="plain k-means: no sensitivity weighting")
    q.add_argument("--calib", default=None,
                   help="calibration text: file, folder of .txt or hf:NAME[:CONFIG[:SPLIT]] (default: Austen)")
    q.add_argument("--calib-windows", type=int, default=8,
                   help="calibration windows (default 8: 3-bit +0.45%% SmolLM2 ppl 30.24 vs 30.10 with 32, "
                        "at a quarter of the Fisher time)")
    q.add_argument("--calib-length", type=int, default=512, help="tokens per calibration window (default 512)")
    q.add_argument("--kmeans", choices=["optimal", "lloyd"], default="optimal",
                   help="optimal: the exact 1-D weighted k-means optimum by dynamic programming; lloyd: "
                        "k-means++ seeding and Lloyd steps (--iters) as the paper's code (default optimal)")
    q.add_argument("--iters", type=int, default=50, help="Lloyd iterations (default 50)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--include-head", action="store_true", help="quantize the LM head too")
    q.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    q.add_argument("--force", action="store_true", help="replace an existing output folder")
    q.set_defaults(func=quantize_command)

    e = sub.add_parser("eval", help="perplexity of a model, QDIR or artifact on a text",
                       description="Perplexity over the first non-overlapping windows of a text (no BOS).")
    e.add_argument("model", nargs="?", default=None, help="model spec, QDIR or ARTIFACT (default: embedded)")
    e.add_argument("--text", default=None, help="text file or folder (default: shared/data/enwiki-sample.txt)")
    e.add_argument("--ctx", type=int, default=1024, help="window length in tokens (default 1024)")
    e.add_argument("--windows", type=int, default=40, help="number of windows; 0 = all (default 40)")
    e.add_argument("--rtn", type=int, default=None, metavar="BITS", help="RTN-quantize a float model first")
    e.add_argument("--group", type=int, default=None, help="RTN group size along K (default: per row)")
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    e.set_defaults(func=eval_command)

    o = sub.add_parser("import-official", help="convert an official SqueezeLLM checkpoint into a QDIR",
                       description="Converts squeeze-ai-lab/sq-* packed checkpoints without re-quantizing.")
    o.add_argument("checkpoint", help="the .pt or .safetensors file, or its folder (with quant_config.json)")
    o.add_argument("--base", required=True, help="HF folder or hub id of the base model (config, tokenizer)")
    o.add_argument("-o", "--output", required=True, help="QDIR to write")
    o.add_argument("--force", action="store_true", help="replace an existing output folder")
    o.set_defaults(func=import_command)


def quantize_command(args: argparse.Namespace) -> int:
    from .pipeline import run_quantize
    from .quantize import QuantizeOptions

    sensitive = min(0.05, args.sparsity) if args.sensitive is None else args.sensitive
    options = QuantizeOptions(bits=args.bits, sparsity=args.sparsity, sensitive=sensitive,
                              use_fisher=not args.no_fisher, calibration=args.calib,
                              calib_windows=args.calib_windows, calib_length=args.calib_length,
                              seed=args.seed, kmeans=args.kmeans, iters=args.iters,
                              include_head=args.include_head, device=args.device)
    summary = run_quantize(args.model, args.output, options, force=args.force)
    print(summary.table())
    return 0


def eval_command(args: argparse.Namespace) -> int:
    from .. import data
    from ..eval import load_for_eval, perplexity

    if args.rtn is not None:
        from .format import check_bits
        check_bits(args.rtn)
    text = data.read_text(args.text or data.default_evaluation())
    logits_fn, tokenizer, desc = load_for_eval(args.model, args.rtn, args.group)
    if tokenizer is None:
        raise ValueError(f"{desc} comes without a tokenizer")
    result = perplexity(logits_fn, data.tokenize(tokenizer, text), args.ctx, args.windows or None)
    if args.json:
        print(json.dumps({"model": desc, **result.to_dict()}))
    else:
        print(f"{desc}: perplexity {result.perplexity:.3f} over {result.windows} windows of {result.ctx} "
              f"tokens ({result.predictions} predictions, {result.seconds:.0f} s)")
    return 0


def import_command(args: argparse.Namespace) -> int:
    from .official import convert

    out = convert(args.checkpoint, args.base, args.output, force=args.force)
    print(f"wrote {out}")
    return 0
