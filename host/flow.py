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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .flow_config import DEFAULT_FLOW, FlowConfig, FlowError, load_flow
from .flow_report import write_report
from .flow_steps import STEP_NAMES, STEPS, Step

@dataclass
class StepContext:
    flow: "FlowConfig"
    build_dir: Path
    artifacts: dict[str, Path]

    def step_dir(self, name: str) -> Path:
        d = self.build_dir / name
        d.mkdir(parents=True, exist_ok=True)
        return d


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
            artifact, metrics = _resolve(step.run)(ctx)
            rec = {
                "input_hash": h,
                "artifact": str(artifact),
                "artifact_sha256": _sha256_path(artifact),
                "metrics": metrics,
                "seconds": round(time.time() - t0, 2),
            }
            state["steps"][step.name] = rec
            ran.append(step.name)
            log(f"[{step.name}] wrote {artifact} in {rec['seconds']} s")
        artifacts[step.name], hashes[step.name] = Path(rec["artifact"]), rec["artifact_sha256"]
        if step.name in verify and step.verify:
            rec["verification"] = _resolve(step.verify)(ctx)
            log(f"[{step.name}] verified: {json.dumps(rec['verification'])}")
        state_path.write_text(json.dumps(state, indent=1))
    state["ran"] = ran
    state_path.write_text(json.dumps(state, indent=1))
    return state


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
