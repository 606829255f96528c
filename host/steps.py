"""Flow step owned by host/: the deploy folder a board runs (see accllm.host.flow)."""
from __future__ import annotations

import shutil
from pathlib import Path

from accllm.quant.integrity import MANIFEST, write_manifest

BITSTREAM_MANIFEST = "manifest.json"  # the deploy folder's own bitstream manifest, which run.sh defaults to

RUN_SCRIPT = """#!/bin/sh
# On the board (accllm[board] installed; U280: XRT's setup.sh sourced): stream tokens from this build.
#   ./run.sh PROMPT...                      e.g. ./run.sh def main
#   ./run.sh --prompt P [accllm run options, e.g. --max-tokens 64 --json /abs/out.json]
# The bitstream is chosen from, and checked against, {manifest} here (sha256, formats, engine parameters);
# ACCLLM_MANIFEST names another one (relative paths are taken from this folder).
cd "$(dirname "$0")" || exit 1
opts="--backend {backend} --board {board} --manifest ${{ACCLLM_MANIFEST:-{manifest}}}"
case "$1" in
  -*) exec accllm run . $opts "$@" ;;
  *)  exec accllm run . $opts --prompt "$*" ;;
esac
"""


def deploy_folder(out: Path, compiled: Path, checkpoint: Path, board: str, entry: dict | None = None,
                  recipes: Path | None = None) -> tuple[list[str], dict]:
    """Write the folder a board runs into ``out``: program + weight blob, the compressed checkpoint (tokenizer;
    golden-model weights for checking on the board), ``manifest.json`` with the bitstream's entry (``entry``, from
    the recipe step) and, once ``make ... record`` has built and recorded it in ``recipes`` (the recipes'
    manifest), its checksummed artifacts; ``run.sh``; ``files.sha256``. Returns (files, metrics)."""
    from accllm.sim.boards import get_board

    out = Path(out)
    for name in ("program.bin", "weights.blob"):
        shutil.copy2(Path(compiled) / name, out / name)
    shutil.copytree(checkpoint, out / "checkpoint", dirs_exist_ok=True)
    files = ["program.bin", "weights.blob", "checkpoint/"]
    flow, metrics = get_board(board).flow, {}
    if entry is not None:
        e, copied = _bitstream_manifest(out, entry, recipes)
        flow = e.flow
        files += [BITSTREAM_MANIFEST, *copied]
        metrics = {"bitstream": e.name, "bitstream_built": e.built}
    script = out / "run.sh"
    script.write_text(RUN_SCRIPT.format(backend="xrt" if flow == "vitis" else "pynq", board=board,
                                        manifest=BITSTREAM_MANIFEST))
    script.chmod(0o755)
    files.append("run.sh")
    write_manifest(out)  # the board checks what it loads against it (accllm.quant.integrity)
    files.append(MANIFEST)
    return files, metrics


def _bitstream_manifest(out: Path, entry: dict, recipes: Path | None):
    """The deploy folder's bitstream manifest: the recorded (built) entry of that name from ``recipes`` with its
    artifacts copied beside it, else the recipe's unbuilt entry (the runtime refuses it, saying how to build)."""
    from accllm.bitstreams.manifest import DEFAULT_MANIFEST, BitstreamEntry, Manifest, load_manifest, save_manifest

    e = BitstreamEntry.model_validate(entry)
    recipes = Path(recipes) if recipes is not None else DEFAULT_MANIFEST
    copied = []
    if recipes.is_file():
        built = next((b for b in load_manifest(recipes).bitstreams if b.name == e.name and b.built), None)
        if built is not None:
            e = built
            for a in e.artifacts.values():
                (out / a.path).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(recipes.parent / a.path, out / a.path)
                copied.append(a.path)
    save_manifest(Manifest(bitstreams=[e]), out / BITSTREAM_MANIFEST)
    return e, copied


def deploy(ctx):
    """The deploy folder (:func:`deploy_folder`) of this flow's compiled build and checkpoint."""
    import json

    out = ctx.step_dir("deploy")
    entry = None
    if "bitstream" in ctx.artifacts:
        entry = json.loads((ctx.artifacts["bitstream"] / "manifest_entry.json").read_text())
    files, metrics = deploy_folder(out, ctx.artifacts["compile"], ctx.artifacts["compress"], ctx.flow.board, entry)
    return out, {"files": files, **metrics}
