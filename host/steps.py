"""Flow step owned by host/: the deploy folder a PYNQ board runs (see accllm.host.flow)."""
from __future__ import annotations

import shutil


RUN_SCRIPT = """#!/bin/sh
# On the board (pynq and accllm installed): stream tokens from this build.
# The bitstream is chosen from, and checked against, the manifest (sha256, formats, engine parameters).
cd "$(dirname "$0")" && exec accllm run . --backend pynq --board {board} --manifest "${{ACCLLM_MANIFEST:-manifest.json}}" --prompt "$*"
"""


def deploy(ctx):
    """program + weight blob, the compressed checkpoint (tokenizer; golden-model weights for checking on the
    board), the bitstream's manifest entry when the recipe step ran, and a run script."""
    out = ctx.step_dir("deploy")
    for name in ("program.bin", "weights.blob"):
        shutil.copy2(ctx.artifacts["compile"] / name, out / name)
    shutil.copytree(ctx.artifacts["compress"], out / "checkpoint", dirs_exist_ok=True)
    files = ["program.bin", "weights.blob", "checkpoint/"]
    if "bitstream" in ctx.artifacts:
        shutil.copy2(ctx.artifacts["bitstream"] / "manifest_entry.json", out / "manifest_entry.json")
        files.append("manifest_entry.json")
    script = out / "run.sh"
    script.write_text(RUN_SCRIPT.format(board=ctx.flow.board))
    script.chmod(0o755)
    files.append("run.sh")
    return out, {"files": files}
