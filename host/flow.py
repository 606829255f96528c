"""A build described once as data (FLOW.yaml) and run as ordered, named, resumable steps.

The builder only orders steps and decides which must run: each step function lives in the folder
that owns its work and is named here by import path. A step reruns when the hash of its inputs —
the flow-file sections it reads plus the artifacts of the steps it consumes — differs from the hash
recorded when its artifact was made; otherwise it is skipped.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_FLOW = Path(__file__).parent / "flows" / "demo.yaml"


@dataclass(frozen=True)
class Step:
    name: str
    run: str  # "module:function" taking a StepContext, returning a StepResult
    reads: tuple[str, ...]  # flow-file sections the step depends on
    consumes: tuple[str, ...] = ()  # earlier steps whose artifacts it needs
    uses: tuple[str, ...] = ()  # earlier steps whose artifacts it takes when the flow has them
    verify: str | None = None  # "module:function" checking the artifact against the golden model


@dataclass
class StepResult:
    artifact: Path
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepContext:
    flow: "FlowConfig"
    build_dir: Path
    artifacts: dict[str, Path]

    def step_dir(self, name: str) -> Path:
        d = self.build_dir / name
        d.mkdir(parents=True, exist_ok=True)
        return d


# The ordered steps. ``reads`` names flow-file sections or dotted keys; a step reruns when any of them,
# or the artifact of a step it consumes, changes.
STEPS: list[Step] = [
    Step("compress", "accllm.quant.steps:compress", ("model", "compression", "evaluation.perplexity_tokens"),
         verify="accllm.quant.steps:verify_compress"),
    Step("export", "accllm.hls.steps:export", (), ("compress",), verify="accllm.hls.steps:verify_export"),
    Step("compile", "accllm.hls.steps:compile", ("engine.lanes", "board"), ("export",),
         verify="accllm.hls.steps:verify_compile"),
    Step("csim", "accllm.hls.steps:csim", ("evaluation.prompts", "evaluation.max_new_tokens"), ("compile",),
         verify="accllm.hls.steps:verify_csim"),
    Step("rtlsim", "accllm.sim.steps:rtlsim", ("evaluation.prompts", "evaluation.max_new_tokens"), ("compile",),
         verify="accllm.sim.steps:verify_rtlsim"),
    Step("perf", "accllm.sim.steps:perf", ("engine", "board"), ("compress",)),
    Step("bitstream", "accllm.hls.steps:bitstream", ("board",), ("compile",)),
    Step("deploy", "accllm.host.steps:deploy", ("board",), ("compress", "compile"), uses=("bitstream",)),
]
STEP_NAMES: tuple[str, ...] = tuple(s.name for s in STEPS)


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
    act_bits: int = 8
    kv_bits: int = 4
    lambda_attention: bool = True
    sinks: int = Field(4, ge=0)
    window: int = Field(124, gt=0)
    positions: str = "cache"
    calib_samples: int = Field(16, gt=0)
    calib_seqlen: int = Field(128, gt=1)
    qat_steps: int = Field(0, ge=0)
    seed: int = 0

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


class FlowConfig(_Strict):
    name: str = "flow"
    model: str = "bundled"
    compression: Compression = Field(default_factory=Compression)
    engine: Engine = Field(default_factory=Engine)
    board: str = "kv260"
    steps: list[str] = Field(default_factory=lambda: list(STEP_NAMES))
    verify: list[str] = Field(default_factory=list)
    evaluation: Evaluation = Field(default_factory=Evaluation)

    @field_validator("board")
    @classmethod
    def _known_board(cls, v):
        from accllm.sim.perf import load_boards

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
        return self


def _resolve(path: str) -> Callable:
    module, _, fn = path.partition(":")
    return getattr(importlib.import_module(module), fn)


def _sha256_path(path: Path) -> str:
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        h.update(str(p.relative_to(path) if path.is_dir() else p.name).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def _format_validation_error(e: ValidationError, source: str) -> str:
    lines = []
    for err in e.errors():
        where = ".".join(str(x) for x in err["loc"]) or "(top level)"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"{source}: {where}: {msg}")
    return "\n".join(lines)


def _lookup(d: dict, dotted: str):
    for part in dotted.split("."):
        d = d[part]
    return d


def input_hash(step: Step, flow: "FlowConfig", artifact_hashes: dict[str, str]) -> str:
    data = {
        "step": step.name,
        "reads": {k: _lookup(flow.model_dump(mode="json"), k) for k in step.reads},
        "consumes": {c: artifact_hashes.get(c) for c in step.consumes + step.uses},
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


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


def run_flow(flow, build_dir: Path, start: str | None = None, stop: str | None = None,
             verify: list[str] | None = None, log=print) -> dict:
    """Run the flow's steps in order from ``start`` to ``stop``; returns the build state (also saved
    as ``build_dir/state.json``)."""
    build_dir = Path(build_dir)
    build_dir.mkdir(parents=True, exist_ok=True)
    state_path = build_dir / "state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {"steps": {}}
    selected = [s for s in STEPS if s.name in flow.steps]
    names = [s.name for s in selected]
    for bound in (start, stop):
        if bound is not None and bound not in names:
            raise FlowError(f"step {bound!r} is not among this flow's steps {names}")
    lo = names.index(start) if start else 0
    hi = names.index(stop) if stop else len(names) - 1
    verify = set(verify if verify is not None else flow.verify)
    artifacts: dict[str, Path] = {}
    hashes: dict[str, str] = {}
    for name, rec in state["steps"].items():
        if name in names and Path(rec["artifact"]).exists():
            artifacts[name], hashes[name] = Path(rec["artifact"]), rec["artifact_sha256"]
    ctx = StepContext(flow=flow, build_dir=build_dir, artifacts=artifacts)
    ran = []
    for i, step in enumerate(selected):
        if i < lo or i > hi:
            continue
        missing = [c for c in step.consumes if c not in artifacts]
        if missing:
            how = "add it to the flow's steps" if any(c not in names for c in missing) else "run from an earlier step"
            raise FlowError(f"step {step.name!r} needs the artifact of {missing}: {how}")
        h = input_hash(step, flow, hashes)
        rec = state["steps"].get(step.name)
        fresh = rec is not None and rec["input_hash"] == h and Path(rec["artifact"]).exists()
        if fresh:
            log(f"[{step.name}] unchanged, skipped ({rec['artifact']})")
        else:
            log(f"[{step.name}] running")
            t0 = time.time()
            result: StepResult = _resolve(step.run)(ctx)
            rec = {
                "input_hash": h,
                "artifact": str(result.artifact),
                "artifact_sha256": _sha256_path(result.artifact),
                "metrics": result.metrics,
                "seconds": round(time.time() - t0, 2),
            }
            state["steps"][step.name] = rec
            ran.append(step.name)
            log(f"[{step.name}] wrote {result.artifact} in {rec['seconds']} s")
        artifacts[step.name], hashes[step.name] = Path(rec["artifact"]), rec["artifact_sha256"]
        if step.name in verify and step.verify:
            rec["verification"] = _resolve(step.verify)(ctx)
            log(f"[{step.name}] verified: {json.dumps(rec['verification'])}")
        state_path.write_text(json.dumps(state, indent=1))
    state["ran"] = ran
    state_path.write_text(json.dumps(state, indent=1))
    return state


def write_report(flow: FlowConfig, state: dict, build_dir: Path) -> Path:
    """A Markdown report of a build: settings, per-step metrics and verification, artifact hashes."""
    lines = [f"# accllm build report: {flow.name}", "",
             f"Board `{flow.board}`, model `{flow.model}`, build directory `{os.path.relpath(build_dir)}`.", "",
             "## Settings", "", "```yaml", yaml.safe_dump(flow.model_dump(mode="json"), sort_keys=False).strip(), "```", "",
             "## Steps", "", "| step | ran this time | seconds | metrics | verification |", "|---|---|---|---|---|"]
    for name in flow.steps:
        rec = state["steps"].get(name)
        if rec is None:
            lines.append(f"| {name} | not run | | | |")
            continue
        metrics = ", ".join(f"{k}={_fmt(v)}" for k, v in rec["metrics"].items())
        ver = ", ".join(f"{k}={_fmt(v)}" for k, v in rec.get("verification", {}).items()) or "—"
        lines.append(f"| {name} | {'yes' if name in state.get('ran', []) else 'no (unchanged)'} | {rec['seconds']} | "
                     f"{metrics} | {ver} |")
    perf_rec = state["steps"].get("perf")
    if perf_rec:
        p = json.loads(Path(perf_rec["artifact"]).read_text())
        d = p["decode"]
        lines += ["", f"## Projected on {p['board']} (analytical model, core cycles calibrated on RTL)", "",
                  "| decode token/s | bytes/token | bandwidth limit token/s | achieved/limit | prefill token/s |",
                  "|---|---|---|---|---|",
                  f"| {d['tokens_per_s']:.1f} | {d['bytes_per_token']:.0f} | {d['bandwidth_limit_tokens_per_s']:.1f} | "
                  f"{d['achieved_over_limit']:.2f} | {p['prefill']['tokens_per_s']:.1f} |"]
    lines += ["", "## Artifacts", "", "| step | artifact | sha256 |", "|---|---|---|"]
    for name in flow.steps:
        rec = state["steps"].get(name)
        if rec:
            lines.append(f"| {name} | `{os.path.relpath(rec['artifact'], build_dir)}` | `{rec['artifact_sha256'][:16]}…` |")
    path = build_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) + "}"
    return str(v)


def build(flow_path: Path, build_dir: Path | None = None, start=None, stop=None, verify=None) -> tuple[dict, Path]:
    flow = load_flow(flow_path)
    build_dir = Path(build_dir or Path("builds") / flow.name).resolve()
    state = run_flow(flow, build_dir, start, stop, verify)
    report = write_report(flow, state, build_dir)
    print(f"wrote {report} and {build_dir / 'state.json'}")
    return state, report


def build_command(a) -> int:
    verify = [v for v in a.verify.split(",") if v] if a.verify is not None else None
    if verify:
        unknown = [v for v in verify if v not in STEP_NAMES]
        if unknown:
            raise FlowError(f"--verify: unknown step(s) {unknown}; steps are {', '.join(STEP_NAMES)}")
    build(a.flow, a.out, a.start, a.stop, verify)
    return 0


def register(sub) -> None:
    p = sub.add_parser("build", help="run a flow file's steps (compress ... deploy), skipping unchanged ones")
    p.add_argument("flow", type=Path, help=f"flow YAML (example: {DEFAULT_FLOW})")
    p.add_argument("-o", "--out", type=Path, default=None, help="build directory (default builds/NAME)")
    p.add_argument("--from", dest="start", default=None, help="first step to run")
    p.add_argument("--to", dest="stop", default=None, help="last step to run")
    p.add_argument("--verify", default=None, help="comma-separated steps to check against the golden model "
                                                  "(default: the flow file's verify list; '' for none)")
    p.set_defaults(func=build_command)
