"""Device use of the engine from synthesis results, and the check that a configuration fits a board.

The figures are data: ``data/synth.json``, written by ``bench/synth.py`` (Yosys ``synth_xilinx -family xcup``
through accllm.hw.synth; Yosys's mapping, not Vivado's). Nothing here runs a tool.

How a configuration's use is found, best first:

1. an engine result with exactly its parameters;
2. channel slices (``CHANNELS=1``) of the engine at its LANES, GROUP and W, and the smallest K_MAX at least
   its own (a longer activation RAM bounds it from above): ``CHANNELS x slice(CORES)``, where ``slice(c)`` is
   the line through two slices of different CORES, or one slice plus the core's own figures for each further
   core. The AXI4-Lite control block is then counted once per channel (an over-count);
3. no engine result at all: ``CHANNELS x CORES x core`` — the integer cores only, no readers or control
   (stated in the result's ``basis``). Engine results that match none of the above are an error, not this.

Boards' capacities (LUT, FF, DSP, 36 Kb block RAM, UltraRAM) are ``resources`` in ``data/boards.json``.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from .boards import DATA, Board, ModelShape, get_board
from .weight_stream import CHANNEL_BITS

SYNTH_FILE = DATA / "synth.json"
SYNTH_FORMAT = "accllm-synth-v1"
RESOURCES = ("lut", "ff", "dsp", "bram36", "uram")
CORE_TOP, ENGINE_TOP = "accllm_core", "accllm_engine"


class ResourceError(ValueError):
    """A configuration that does not fit its board, or one the synthesis results cannot size."""


@dataclass(frozen=True)
class EngineConfig:
    """Parameters of ``accllm_engine`` (hw/rtl) that size it."""

    channels: int      # CHANNELS: memory channels (one AXI4 read master each)
    cores: int         # CORES: integer cores per channel
    lanes: int         # LANES
    group: int         # GROUP
    width: int = 256   # W: channel width, bits
    k_max: int = 4096  # K_MAX: longest reduction (each channel's activation RAM)

    @property
    def params(self) -> dict:
        return {"CHANNELS": self.channels, "CORES": self.cores, "LANES": self.lanes, "GROUP": self.group,
                "W": self.width, "K_MAX": self.k_max}

    @property
    def label(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.params.items())


def board_config(board: Board, total_cores: int, lanes: int, group: int, k_max: int = 4096) -> EngineConfig:
    """The board's memory ports as channels, ``total_cores`` spread over them (rounded up per channel), and
    the narrowest channel width of the weight stream that is at least the port's (the widest for a wider port)."""
    width = next((w for w in CHANNEL_BITS if w >= board.port_bits), CHANNEL_BITS[-1])
    return EngineConfig(board.mem_ports, math.ceil(total_cores / board.mem_ports), lanes, group, width, k_max)


def k_max_for(shape: ModelShape, cache_tokens: int = 0) -> int:
    """The longest reduction the engine runs for a model: a linear's inputs, or the attention's cached tokens
    (PV reduces over them)."""
    return max(max(k for _, _, k in shape.linears()), shape.hidden, cache_tokens)


def load_synth(path: Path = SYNTH_FILE) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no synthesis results (run python bench/synth.py)")
    data = json.loads(path.read_text())
    if data.get("format") != SYNTH_FORMAT:
        raise ValueError(f"{path}: format {data.get('format')!r}, expected {SYNTH_FORMAT!r}")
    return data


def _find(results: list[dict], top: str, **params) -> list[dict]:
    return [r for r in results if r["top"] == top and all(r["params"].get(k) == v for k, v in params.items())]


def _scaled(r: dict, n: float) -> dict:
    return {k: r["resources"][k] * n for k in RESOURCES}


def engine_use(config: EngineConfig, synth: dict | None = None) -> dict:
    """Resources of ``config`` on UltraScale+ from the synthesis results: ``{"used": {...}, "basis": str}``."""
    synth = synth if synth is not None else load_synth()
    xs = [r for r in synth["results"] if r.get("family") == "xcup"]
    c = config
    exact = _find(xs, ENGINE_TOP, **c.params)
    if exact:
        return {"used": _scaled(exact[0], 1), "basis": f"Yosys synthesis of {exact[0]['design']}"}
    engines = _find(xs, ENGINE_TOP, CHANNELS=1, LANES=c.lanes, GROUP=c.group, W=c.width)
    # A slice with a longer activation RAM (K_MAX) bounds this one from above; take the closest.
    k_fit = sorted({r["params"]["K_MAX"] for r in engines if r["params"]["K_MAX"] >= c.k_max})
    slices = sorted((r for r in engines if k_fit and r["params"]["K_MAX"] == k_fit[0]),
                    key=lambda r: r["params"]["CORES"])
    if _find(xs, ENGINE_TOP) and not slices:
        have = sorted({(r["params"]["LANES"], r["params"]["GROUP"], r["params"]["W"], r["params"]["K_MAX"])
                       for r in _find(xs, ENGINE_TOP, CHANNELS=1)})
        raise ResourceError(f"no engine slice synthesised for {c.label} (need CHANNELS=1, the same LANES, GROUP, "
                            f"W and K_MAX >= {c.k_max}; have LANES/GROUP/W/K_MAX {have}): run python bench/synth.py")
    cores = _find(xs, CORE_TOP, LANES=c.lanes, GROUP=c.group)
    if len(slices) >= 2:
        a, b = slices[0], slices[-1]
        ca, cb = a["params"]["CORES"], b["params"]["CORES"]
        per_core = {k: (b["resources"][k] - a["resources"][k]) / (cb - ca) for k in RESOURCES}
        one = {k: a["resources"][k] + per_core[k] * (c.cores - ca) for k in RESOURCES}
        basis = f"{c.channels} x channel slice, slice(CORES) fitted through {a['design']} and {b['design']}"
    elif slices and (cores or slices[0]["params"]["CORES"] == c.cores):
        a, ca = slices[0], slices[0]["params"]["CORES"]
        cores = cores or [{"resources": dict.fromkeys(RESOURCES, 0), "design": "core"}]
        one = {k: a["resources"][k] + cores[0]["resources"][k] * (c.cores - ca) for k in RESOURCES}
        basis = f"{c.channels} x ({a['design']} + {c.cores - ca} x {cores[0]['design']})"
    elif cores:
        one = _scaled(cores[0], c.cores)
        basis = (f"{c.channels * c.cores} x {cores[0]['design']}: integer cores only (no engine synthesis: "
                 f"readers and control not counted)")
    else:
        have = sorted({(r["params"].get("LANES"), r["params"].get("GROUP")) for r in xs})
        raise ResourceError(f"no synthesis result for LANES={c.lanes} GROUP={c.group} (have LANES/GROUP "
                            f"{have}); run python bench/synth.py --lanes {c.lanes} --group {c.group}")
    if slices and k_fit[0] != c.k_max:
        basis += f" (slices with K_MAX={k_fit[0]} >= {c.k_max}: an upper bound)"
    return {"used": {k: one[k] * c.channels for k in RESOURCES}, "basis": basis}


def fits(board: Board | str, config: EngineConfig, synth: dict | None = None, reserve: dict | None = None) -> dict:
    """Use, capacity and fraction of each resource of ``config`` on ``board`` (plus ``reserve``, resources
    set aside for logic that was not synthesised); raises :class:`ResourceError` naming every resource over
    capacity."""
    board = get_board(board) if isinstance(board, str) else board
    family = board.extra.get("synth_family")
    if family != "xcup":
        raise ResourceError(f"board {board.name}: no UltraScale+ synthesis family in boards.json "
                            f"(synth_family={family!r})")
    use = engine_use(config, synth)
    used = {k: use["used"][k] + (reserve or {}).get(k, 0) for k in RESOURCES}
    cap = {k: board.resources[k] for k in RESOURCES}
    over = [f"{k} {used[k]:,.0f} > {cap[k]:,} ({used[k] / cap[k]:.0%})" for k in RESOURCES if used[k] > cap[k]]
    if over:
        raise ResourceError(f"engine {config.label} does not fit the {board.name} ({board.part}): "
                            f"{'; '.join(over)} [{use['basis']}]")
    return {"board": board.name, "config": config.label, "engine": asdict(config), "used": used, "available": cap,
            "fraction": {k: used[k] / cap[k] for k in RESOURCES}, "basis": use["basis"],
            "reserve": dict(reserve or {}), "source": "Yosys synth_xilinx (not Vivado)"}
