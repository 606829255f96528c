"""A build described once as data (FLOW.yaml) and run as ordered, named, resumable steps.

The builder only orders steps and decides which must run: each step function lives in the folder
that owns its work and is named here by import path. A step is skipped only when the hash of its inputs —
the flow-file sections it reads, the artifacts of the steps it consumes and the source of the package folders its
code lives in (``accllm.quant.integrity.source_hash``) — equals the one recorded when its
artifact was made *and* every file of that artifact still has its recorded sha256 (``state.json``, see
:mod:`accllm.host.flow_state`). A step writes into a temporary folder beside its own, renamed into place when
it returns: a killed step leaves no half-written artifact under the step's name. A step's verification is
cached with it, keyed by its inputs and artifact.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import time
import warnings
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from accllm.quant.integrity import source_hash as code_hash  # a step's code: its folder and those below

from .flow_config import DEFAULT_FLOW, FlowConfig, FlowError, load_flow
from .flow_report import write_report
from .flow_state import artifact_files, artifact_path, files_digest, intact, read_state, write_state
from .flow_steps import STEP_NAMES, STEPS, Step, step_layers

@dataclass
class StepContext:
    flow: "FlowConfig"
    build_dir: Path
    artifacts: dict[str, Path]
    staging: dict[str, Path] = field(default_factory=dict)  # step -> the temporary folder it writes into

    def step_dir(self, name: str) -> Path:
        d = self.staging.get(name, self.build_dir / name)
        d.mkdir(parents=True, exist_ok=True)
        return d


def _resolve(path: str) -> Callable:
    module, _, fn = path.partition(":")
    return getattr(importlib.import_module(module), fn)


def _lookup(d: dict, dotted: str):
    for part in dotted.split("."):
        d = d[part]
    return d


def input_hash(step: Step, flow: "FlowConfig", artifact_hashes: dict[str, str]) -> str:
    data = {
        "step": step.name,
        "reads": {k: _lookup(flow.model_dump(mode="json"), k) for k in step.reads},
        "consumes": {c: artifact_hashes.get(c) for c in step.consumes + step.uses},
        "code": code_hash(step_layers(step)),
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _staging(build_dir: Path, name: str) -> Path:
    # A sibling of the step's folder (same depth: relative paths a step writes stay valid after the rename).
    return build_dir / f".{name}.partial"


def _run_step(step: Step, ctx: StepContext) -> tuple[Path, dict]:
    """Run ``step`` into its staging folder and rename that into place; returns the final artifact path."""
    tmp, final = _staging(ctx.build_dir, step.name), ctx.build_dir / step.name
    shutil.rmtree(tmp, ignore_errors=True)
    ctx.staging[step.name] = tmp
    try:
        artifact, metrics = _resolve(step.run)(ctx)
    finally:
        ctx.staging.pop(step.name, None)
    artifact = Path(artifact)
    try:
        inner = artifact.resolve().relative_to(tmp.resolve())
    except ValueError:
        return artifact, metrics  # written elsewhere by the step itself
    old = ctx.build_dir / f".{step.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final / inner, metrics


@contextmanager
def warnings_summarised(name: str, log):
    """Third-party warnings (qonnx's shape inference alone gives hundreds per export check) summarised in one
    line per step; accllm's own are shown once each. ``ACCLLM_WARNINGS=1`` shows them all as they come."""
    if os.environ.get("ACCLLM_WARNINGS"):
        yield
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    own, others = {}, Counter()
    for w in caught:
        if issubclass(w.category, (ResourceWarning, ImportWarning, PendingDeprecationWarning)):
            continue  # ignored by Python's default filters too
        parts = Path(w.filename).parts
        if "site-packages" in parts and parts.index("site-packages") + 1 < len(parts):
            others[parts[parts.index("site-packages") + 1].removesuffix(".py")] += 1
        else:
            msg = f"{w.category.__name__}: {str(w.message).splitlines()[0]}"
            own.setdefault(msg if len(msg) <= 160 else msg[:159] + "…", None)
    for msg in own:
        log(f"[{name}] warning: {msg}")
    if others:
        log(f"[{name}] {sum(others.values())} third-party warnings not shown ("
            + ", ".join(f"{k} {n}" for k, n in others.most_common()) + "); ACCLLM_WARNINGS=1 shows them")


def _relative(path: Path, build_dir: Path) -> str:
    try:
        return path.resolve().relative_to(build_dir.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())  # outside the build folder: never trusted as fresh (artifact_path)


def _verification_key(step: Step, rec: dict) -> str:
    return hashlib.sha256(f"{step.verify} {rec['input_hash']} {rec['artifact_sha256']}".encode()).hexdigest()


def run_flow(flow, build_dir: Path, start: str | None = None, stop: str | None = None,
             verify: list[str] | None = None, log=print) -> dict:
    """Run the flow's steps in order from ``start`` to ``stop``; returns the build state (also saved
    as ``build_dir/state.json``)."""
    build_dir = Path(build_dir)
    build_dir.mkdir(parents=True, exist_ok=True)
    state = read_state(build_dir)
    for leftover in [*build_dir.glob(".*.partial"), *build_dir.glob(".*.old")]:
        shutil.rmtree(leftover, ignore_errors=True)  # of a killed run: never trusted, never reused
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
        if name in names and intact(build_dir, rec):
            artifacts[name], hashes[name] = artifact_path(build_dir, rec), rec["artifact_sha256"]
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
        if rec is not None and rec["input_hash"] == h and step.name in artifacts:
            log(f"[{step.name}] unchanged, skipped ({rec['artifact']}: every file matches its recorded sha256)")
        else:
            log(f"[{step.name}] running")
            t0 = time.time()
            with warnings_summarised(step.name, log):
                artifact, metrics = _run_step(step, ctx)
            files = artifact_files(artifact)
            rec = {"input_hash": h, "artifact": _relative(artifact, build_dir), "files": files,
                   "artifact_sha256": files_digest(files), "metrics": metrics, "seconds": round(time.time() - t0, 2)}
            state["steps"][step.name] = rec
            ran.append(step.name)
            log(f"[{step.name}] wrote {artifact} in {rec['seconds']} s")
        artifacts[step.name] = artifact_path(build_dir, rec) or Path(rec["artifact"])
        hashes[step.name] = rec["artifact_sha256"]
        if step.name in verify and step.verify:
            key = _verification_key(step, rec)
            if rec.get("verification_key") == key and "verification" in rec:
                log(f"[{step.name}] verified earlier, same inputs and artifact: {json.dumps(rec['verification'])}")
            else:
                log(f"[{step.name}] verifying")
                with warnings_summarised(step.name, log):
                    rec["verification"] = _resolve(step.verify)(ctx)
                rec["verification_key"] = key
                log(f"[{step.name}] verified: {json.dumps(rec['verification'])}")
        write_state(build_dir, state)
    state["ran"] = ran
    write_state(build_dir, state)
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
