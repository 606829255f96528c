"""The Markdown report of a build: settings, per-step metrics and verification, projection, artifact hashes."""
from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from .flow_config import FlowConfig
from .flow_state import artifact_path


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
        p = json.loads((artifact_path(build_dir, perf_rec) or Path(perf_rec["artifact"])).read_text())
        d = p["decode"]
        lines += ["", f"## Projected on {p['board']} (analytical model, core cycles calibrated on RTL)", "",
                  "| decode token/s | bytes/token | bandwidth limit token/s | achieved/limit | prefill token/s |",
                  "|---|---|---|---|---|",
                  f"| {d['tokens_per_s']:.1f} | {d['bytes_per_token']:.0f} | {d['bandwidth_limit_tokens_per_s']:.1f} | "
                  f"{d['achieved_over_limit']:.2f} | {p['prefill']['tokens_per_s']:.1f} |"]
    lines += ["", "## Artifacts", "", "Paths relative to the build folder; the sha256 of every file is in `state.json`.", "",
              "| step | artifact | sha256 of its files |", "|---|---|---|"]
    for name in flow.steps:
        rec = state["steps"].get(name)
        if rec:
            lines.append(f"| {name} | `{rec['artifact']}` ({len(rec['files'])} files) | `{rec['artifact_sha256'][:16]}…` |")
    path = build_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) + "}"
    return str(v)
