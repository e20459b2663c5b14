"""Subcommands ``run`` (one prompt) and ``chat`` (interactive); they load the TVM runtime only."""
from __future__ import annotations

import argparse
import sys


def _add_generation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("artifact", help="artifact folder written by `sqcompile build`")
    p.add_argument("--max-new-tokens", type=int, default=128, help="tokens to generate at most (default 128)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default), else sample")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0 = all)")
    p.add_argument("--top-p", type=float, default=1.0, help="sample within this probability mass (1 = all)")
    p.add_argument("--seed", type=int, default=None, help="sampling seed")
    p.add_argument("--max-len", type=int, default=None, help="KV-cache length (default: the artifact's)")


def register(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("run", help="generate text from a prompt with an artifact",
                       description="Generate with the compiled artifact (TVM runtime only), streaming tokens.")
    _add_generation_args(r)
    r.add_argument("--prompt", required=True, help="the prompt text")
    r.add_argument("--chat-template", action="store_true", help="wrap the prompt in the model's chat template")
    r.add_argument("--no-stream", action="store_true", help="print the text at the end instead of streaming")
    r.set_defaults(func=run_command)
    c = sub.add_parser("chat", help="interactive chat with an artifact",
                       description="Multi-turn chat using the model's chat template; empty line or Ctrl-D ends.")
    _add_generation_args(c)
    c.add_argument("--system", default=None, help="system message")
    c.set_defaults(func=chat_command)


def _engine_and_sampling(args: argparse.Namespace):
    from .engine import Engine
    from .sampling import SamplingParams

    sampling = SamplingParams(args.temperature, args.top_k, args.top_p, args.seed)
    sampling.validate()
    return Engine(args.artifact, max_len=args.max_len), sampling


def run_command(args: argparse.Namespace) -> int:
    engine, sampling = _engine_and_sampling(args)
    if args.no_stream:
        print(engine.generate(args.prompt, args.max_new_tokens, sampling, chat=args.chat_template).text)
    else:
        for piece in engine.stream(args.prompt, args.max_new_tokens, sampling, chat=args.chat_template):
            print(piece, end="", flush=True)
        print()
    print(engine.last_stats.summary(), file=sys.stderr)
    return 0


def chat_command(args: argparse.Namespace) -> int:
    engine, sampling = _engine_and_sampling(args)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    while True:
        try:
            line = input("> ").strip()
        except EOFError:
            break
        if not line:
            break
        messages.append({"role": "user", "content": line})
        ids = engine.encode(engine.apply_chat_template(messages), add_special_tokens=False)
        reply = ""
        for piece in engine.stream_ids(ids, args.max_new_tokens, sampling):
            print(piece, end="", flush=True)
            reply += piece
        print()
        print(f"[{engine.last_stats.summary()}]", file=sys.stderr)
        messages.append({"role": "assistant", "content": reply})
    return 0
