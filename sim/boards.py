"""Boards and model shapes as data: ``data/boards.json`` (clock, memory channels and bandwidth, power,
fabric) and model dimensions from presets (``data/models``), the bundled model or an HF config."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"
BOARDS_FILE = DATA / "boards.json"
MODELS_DIR = DATA / "models"


@dataclass(frozen=True)
class Board:
    name: str
    title: str
    part: str
    flow: str
    clock_mhz: float
    memory: str
    mem_bandwidth_gbs: float
    mem_ports: int
    port_bits: int
    resources: dict
    power_w: float | None
    power_source: str
    sources: dict
    extra: dict = field(default_factory=dict)  # flow-specific fields (platform, board part pattern)

    @property
    def bytes_per_cycle(self) -> float:
        """Peak bytes per kernel cycle: the memory's bandwidth, or the kernel's ports if they are narrower."""
        return min(self.mem_bandwidth_gbs * 1e9 / (self.clock_mhz * 1e6), self.mem_ports * self.port_bits / 8)


def load_boards(path: Path = BOARDS_FILE) -> dict[str, Board]:
    data = json.loads(Path(path).read_text())
    keys = {f for f in Board.__dataclass_fields__ if f not in ("name", "extra")}
    boards = {}
    for name, b in data["boards"].items():
        boards[name] = Board(name=name, **{k: b.get(k) for k in keys},
                             extra={k: v for k, v in b.items() if k not in keys})
    return boards


def get_board(name: str) -> Board:
    boards = load_boards()
    key = name.lower()
    if key not in boards:
        raise ValueError(f"unknown board {name!r}; known boards: {', '.join(sorted(boards))}")
    return boards[key]


@dataclass(frozen=True)
class ModelShape:
    """The dimensions of a Llama-family decoder that the cost depends on."""

    name: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool

    @classmethod
    def from_config(cls, cfg: dict, name: str) -> "ModelShape":
        need = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
        missing = [k for k in need if k not in cfg]
        if missing:
            raise ValueError(f"{name}: not a Llama-style config.json (missing {', '.join(missing)})")
        heads = cfg["num_attention_heads"]
        return cls(name=name, hidden=cfg["hidden_size"], intermediate=cfg["intermediate_size"],
                   layers=cfg["num_hidden_layers"], heads=heads, kv_heads=cfg.get("num_key_value_heads") or heads,
                   head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads, vocab=cfg["vocab_size"],
                   tied=bool(cfg.get("tie_word_embeddings", False)))

    def linears(self) -> list[tuple[str, int, int]]:
        """(name, N outputs, K inputs) of the linear layers of one decoder layer, in execution order."""
        q, kv, h, i = self.heads * self.head_dim, self.kv_heads * self.head_dim, self.hidden, self.intermediate
        return [("q_proj", q, h), ("k_proj", kv, h), ("v_proj", kv, h), ("o_proj", h, q),
                ("gate_proj", i, h), ("up_proj", i, h), ("down_proj", h, i)]

    def linear_params(self) -> int:
        return self.layers * sum(n * k for _, n, k in self.linears())


def presets() -> list[str]:
    return sorted(p.stem for p in MODELS_DIR.glob("*.json"))


def load_model_shape(spec: str) -> ModelShape:
    """``spec``: ``bundled``, a preset name (see :func:`presets`), or a HF config.json file or its folder."""
    if spec == "bundled":
        from accllm.quant.model import BUNDLED_MODEL

        path = Path(BUNDLED_MODEL) / "config.json"
        name = "bundled"
    elif (MODELS_DIR / f"{spec}.json").is_file():
        path, name = MODELS_DIR / f"{spec}.json", spec
    else:
        path = Path(spec)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"--model {spec!r}: no such config.json, and not 'bundled' or a preset "
                                    f"({', '.join(presets())})")
        name = path.parent.name if path.name == "config.json" else path.stem
    try:
        cfg = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    return ModelShape.from_config(cfg, name)


