"""The flow file (FLOW.yaml) as a validated schema: every key, its type and range, and the combinations that
cannot work, refused when the file is loaded with a message naming the key."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, computed_field, field_validator, model_validator

from .flow_steps import STEP_NAMES

DEFAULT_FLOW = Path(__file__).parent / "flows" / "demo.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class FlowError(ValueError):
    """A flow file that cannot be run; the message names the key path."""


class Compression(_Strict):
    """Settings of ``accllm.quant.quantize.CompressionSettings`` (same names, same meaning)."""

    sparsity: str = "2:4"
    weight_bits: int = 2
    group_size: int = Field(32, gt=0)
    weight_method: str = "rtn"
    prune_method: str = "wanda"          # 2:4 mask: wanda, or sparsegpt (mask + weight update)
    calib_text: str = "python"           # calibration / fine-tune text: python, or python+english
    act_bits: int = 8
    kv_bits: int = 4
    lambda_attention: bool = True
    sinks: int = Field(4, ge=0)
    window: int = Field(124, gt=0)
    positions: str = "cache"
    calib_samples: int = Field(16, gt=0)
    calib_seqlen: int = Field(128, gt=1)
    # distillation from the float model (accllm.quant.qat.distill); qat_steps 0: none
    qat_steps: int = Field(0, ge=0)
    qat_lr: float = Field(1e-4, gt=0)
    qat_batch: int = Field(16, gt=0)      # sequences of calib_seqlen tokens per step
    qat_seconds: float = Field(0.0, ge=0)  # stop the distillation after this long (0: run all qat_steps)
    qat_generated: int = Field(0, ge=0)  # teacher-generated sequences mixed into the distillation
    qat_learn_masks: bool = False        # re-choose the 2:4 masks during the distillation (SR-STE)
    seed: int = 0

    @model_validator(mode="after")
    def _generated_needs_distillation(self):
        if self.qat_generated and not self.qat_steps:
            raise ValueError(f"qat_generated ({self.qat_generated}) needs qat_steps > 0: the generated sequences "
                             "are distillation data")
        return self

    def settings(self):
        from accllm.quant.quantize import CompressionSettings

        s = CompressionSettings(**self.model_dump())
        s.validate()
        return s


class Engine(_Strict):
    lanes: int = Field(16, gt=0)
    group_size: int = Field(32, gt=0)
    sinks: int = Field(4, ge=0)
    window: int = Field(124, gt=0)

    @field_validator("lanes")
    @classmethod
    def _lanes_power_of_two(cls, v):
        if v & (v - 1):
            raise ValueError(f"lanes must be a power of two, got {v}")
        return v


class Evaluation(_Strict):
    prompts: list[str] = Field(default_factory=lambda: ["The return statement", "A list comprehension consists of"],
                               min_length=1)
    max_new_tokens: int = Field(16, gt=0)
    perplexity_tokens: int = Field(2048, ge=0)


# What an existing checkpoint fixes: the compression keys the engine runs, which the flow must agree with. The other
# compression keys say how a checkpoint is made and are not read with `checkpoint:` (the compress step records the
# checkpoint's own settings).
CHECKPOINT_FIXES = ("sparsity", "weight_bits", "group_size", "act_bits", "kv_bits", "lambda_attention", "sinks",
                    "window", "positions")


class FlowConfig(_Strict):
    name: str = "flow"
    model: str = "bundled"
    checkpoint: str | None = None  # a compressed checkpoint folder: the compress step takes it instead of compressing
    compression: Compression = Field(default_factory=Compression)
    engine: Engine = Field(default_factory=Engine)
    board: str = "kv260"
    steps: list[str] = Field(default_factory=lambda: list(STEP_NAMES))
    verify: list[str] = Field(default_factory=list)
    evaluation: Evaluation = Field(default_factory=Evaluation)

    @field_validator("board")
    @classmethod
    def _known_board(cls, v):
        from accllm.sim.boards import load_boards

        if v.lower() not in load_boards():
            raise ValueError(f"unknown board {v!r}; known boards: {', '.join(sorted(load_boards()))}")
        return v.lower()

    @field_validator("steps", "verify")
    @classmethod
    def _known_steps(cls, v):
        unknown = [s for s in v if s not in STEP_NAMES]
        if unknown:
            raise ValueError(f"unknown step(s) {unknown}; steps are {', '.join(STEP_NAMES)}")
        return v

    @model_validator(mode="after")
    def _engine_matches_compression(self):
        c, e = self.compression, self.engine
        for key in ("group_size", "sinks", "window"):
            if getattr(c, key) != getattr(e, key):
                raise ValueError(f"engine.{key} ({getattr(e, key)}) differs from compression.{key} "
                                 f"({getattr(c, key)}): the engine runs what the compression produced")
        try:
            c.settings()
        except ValueError as err:
            raise ValueError(f"compression: {err}") from None
        if self.checkpoint is not None:
            self._checkpoint_agrees()
        if set(self.steps) - {"compress"} or "compress" in self.verify:
            self._engine_can_run()
        return self

    def _checkpoint_agrees(self) -> None:
        """The checkpoint's compression.json against the flow's compression section (the CHECKPOINT_FIXES keys)."""
        from accllm.quant.checkpoint import SETTINGS_FILE
        from accllm.quant.quantize import CompressionSettings

        f = Path(self.checkpoint) / SETTINGS_FILE
        if not f.is_file():
            raise ValueError(f"checkpoint: {self.checkpoint} is not a compressed checkpoint folder (no {SETTINGS_FILE}); "
                             "make one with `accllm quantize` or remove the key")
        try:
            made = CompressionSettings.from_json(json.loads(f.read_text())["settings"])
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"checkpoint: {f} has no readable settings ({err})") from None
        c = self.compression
        for key in CHECKPOINT_FIXES:
            if getattr(made, key) != getattr(c, key):
                raise ValueError(f"compression.{key} is {getattr(c, key)!r} but checkpoint {self.checkpoint} was made "
                                 f"with {key} {getattr(made, key)!r} ({SETTINGS_FILE}): make the flow agree with the "
                                 "checkpoint or remove the checkpoint key")

    @computed_field
    @property
    def checkpoint_sha256(self) -> str | None:
        """sha256 of the checkpoint's file manifest (its content): the compress step reruns when it changes."""
        if self.checkpoint is None:
            return None
        from accllm.quant.integrity import MANIFEST

        m = Path(self.checkpoint) / MANIFEST
        return hashlib.sha256(m.read_bytes()).hexdigest() if m.is_file() else None

    def _engine_can_run(self) -> None:
        """What the engine (golden model, compiler, RTL core) cannot run, refused before any step runs."""
        from accllm.sim.core_stream import check_lanes, group_beats
        from accllm.sim.dims import engine_bits_problem
        from accllm.sim.golden_core import MODE_SPARSE

        c, e = self.compression, self.engine
        problem = engine_bits_problem(c)
        if problem:
            raise ValueError(f"compression.{problem}; keep the steps after compress out of the flow to study other "
                             "widths")
        if not c.lambda_attention:
            raise ValueError("compression.lambda_attention is false: the engine's KV cache is the Λ layout")
        try:
            check_lanes(e.lanes)
            # The core closes a group on whole 2:4 beats (2 x lanes inputs), dense or sparse.
            group_beats(MODE_SPARSE, e.group_size, e.lanes)
        except ValueError as err:
            raise ValueError(f"engine.lanes ({e.lanes}) and engine.group_size ({e.group_size}): {err}") from None


def _format_validation_error(e: ValidationError, source: str) -> str:
    lines = []
    for err in e.errors():
        where = ".".join(str(x) for x in err["loc"]) or "(top level)"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"{source}: {where}: {msg}")
    return "\n".join(lines)


def load_flow(path: Path) -> FlowConfig:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise FlowError(f"flow file {path} does not exist") from None
    except yaml.YAMLError as e:
        raise FlowError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise FlowError(f"{path}: a flow file is a mapping of keys, got {type(raw).__name__}")
    try:
        return FlowConfig.model_validate(raw)
    except ValidationError as e:
        raise FlowError(_format_validation_error(e, str(path))) from None
