"""The ``sqcompile`` command line: one subcommand per job, each defined beside the code it drives.

Every module listed here exposes ``register(subparsers)``; it must not import torch, transformers or the
TVM compiler at import time, so that ``sqcompile run`` works on a GPU host that has only the runtime.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

# Modules that register subcommands, in the order `--help` lists them.
COMMAND_MODULES = (
    "sqcompile.quant.commands",  # quantize, eval
    "sqcompile.driver",  # build
    "sqcompile.kernels.tune",  # tune
    "sqcompile.runtime.cli",  # run, chat
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sqcompile",
        description="SqueezeLLM dense-and-sparse quantization compiled with TVM: quantize, build, run, eval.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError as e:  # e.g. the runtime-only install has no quantizer
            logging.getLogger(__name__).debug("commands of %s unavailable: %s", name, e)
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError, RuntimeError) as e:
        # Errors of ours carry a message meant for the user; a traceback only with --verbose.
        if args.verbose:
            raise
        print(f"sqcompile {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
