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
    "accllm.quant.head",
    "accllm.sim.perf_report",
    "accllm.host.flow",
    "accllm.host.run",
    "accllm.host.serve",
    "accllm.host.demo",
    "accllm.host.chat_cli",
]


EXTRA_HINT = "pip install 'accllm[flow]' for the whole toolchain"


def build_parser(unavailable: dict | None = None) -> argparse.ArgumentParser:
    """All commands whose modules import here. A slim install (``accllm[board]``: no torch) lacks some
    third-party packages: those modules are left out and listed in ``unavailable`` (module -> missing package)."""
    ap = argparse.ArgumentParser(prog="accllm", description="AccLLM-style compression, FPGA engine compilation and simulation")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if unavailable is None or not e.name or e.name.split(".")[0] == "accllm":
                raise
            unavailable[name] = e.name.split(".")[0]
            continue
        module.register(sub)
    return ap


def main(argv=None) -> int:
    unavailable: dict[str, str] = {}
    ap = build_parser(unavailable)
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    known = ap._subparsers._group_actions[0].choices  # noqa: SLF001  (argparse keeps no public list)
    if unavailable and command is not None and command not in known:
        missing = ", ".join(sorted(set(unavailable.values())))
        print(f"accllm: command {command!r} is not available in this install (it needs {missing}; {EXTRA_HINT})",
              file=sys.stderr)
        return 2
    args = ap.parse_args(argv)
    try:
        return args.func(args) or 0
    except (ValueError, FileNotFoundError, ImportError) as e:
        # Expected user errors (bad directory, bad flag combination, a missing optional package) get one
        # line, not a traceback.
        print(f"accllm {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
