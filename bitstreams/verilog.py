"""Port lists of Verilog / SystemVerilog modules (ANSI-style headers), read from the sources the recipes use."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Port:
    direction: str  # input / output
    name: str
    width: int


def _eval_width(expr: str | None, params: dict[str, int]) -> int:
    if not expr:
        return 1
    hi, lo = expr.split(":")
    env = dict(params)
    if not re.fullmatch(r"[\w\s+\-*/()]+", hi + lo):
        raise ValueError(f"cannot evaluate the port range [{expr}]")
    return int(eval(hi, {"__builtins__": {}}, env)) - int(eval(lo, {"__builtins__": {}}, env)) + 1  # noqa: S307


def module_ports(path: Path, module: str, params: dict[str, int] | None = None) -> tuple[dict[str, int], list[Port]]:
    """(parameter defaults, ports) of ``module`` in a Verilog/SystemVerilog file (ANSI-style header)."""
    text = re.sub(r"\(\*[^()]*?\*\)", "", re.sub(r"//[^\n]*", "", Path(path).read_text()))  # and (* attributes *)
    m = re.search(rf"\bmodule\s+{module}\s*(#\s*\((?P<params>.*?)\))?\s*\((?P<ports>.*?)\)\s*;", text, re.S)
    if not m:
        raise ValueError(f"module {module} not found in {path}")
    defaults = {k: int(v) for k, v in re.findall(r"parameter\s+(?:int\s+)?(\w+)\s*=\s*(\d+)", m.group("params") or "")}
    env = {**defaults, **(params or {})}
    ports = []
    for decl in m.group("ports").split(","):
        pm = re.match(r"\s*(input|output|inout)\s+(?:wire|logic|reg)?\s*(?:signed\s*)?(?:\[([^\]]+)\])?\s*(\w+)\s*$", decl)
        if not pm:
            raise ValueError(f"{path}: cannot parse the port declaration {decl.strip()!r} of {module}")
        ports.append(Port(pm.group(1), pm.group(3), _eval_width(pm.group(2), env)))
    return env, ports
