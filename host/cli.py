"""The ``accllm`` command: one entry point, a subcommand per step of the flow."""
from __future__ import annotations

import argparse
import sys


def _cmd_eval(args) -> int:
    from accllm.quant.evaluate import evaluate_command

    return evaluate_command(args)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="accllm", description="AccLLM-style compression, FPGA engine compilation and simulation")
    sub = ap.add_subparsers(dest="command", required=True)

    from accllm.quant.evaluate import add_eval_arguments

    p = sub.add_parser("eval", help="held-out perplexity of a model (bundled by default), written as JSON")
    add_eval_arguments(p)
    p.set_defaults(func=_cmd_eval)
    return ap


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        return args.func(args) or 0
    except (ValueError, FileNotFoundError) as e:
        print(f"accllm {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
