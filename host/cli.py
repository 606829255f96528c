"""The ``accllm`` command: one entry point; each folder registers the subcommands it owns.

A module listed in ``COMMAND_MODULES`` defines ``register(subparsers)``, which adds its parsers and
sets ``func`` on each to a callable taking the parsed arguments and returning an exit code.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = [
    "accllm.quant.evaluate",
    "accllm.hls.compiler",
    "accllm.quant.pipeline",
    "accllm.sim.perf_report",
    "accllm.host.flow",
    "accllm.host.run",
    "accllm.host.serve",
    "accllm.host.demo",
]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="accllm", description="AccLLM-style compression, FPGA engine compilation and simulation")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (ValueError, FileNotFoundError) as e:
        # Expected user errors (bad directory, bad flag combination) get one line, not a traceback.
        print(f"accllm {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
