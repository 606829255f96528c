"""A deploy folder for a fake board: the recipe's manifest entry of a compiled build, "built" (placeholder
bitstream files recorded with their sha256, as ``make ... record`` leaves them) and deployed by the real
deploy step. Used by tests/test_board_install.py and bench/board_install.py."""
from __future__ import annotations

from pathlib import Path


def fake_deploy(build: Path, out: Path, board: str = "kv260") -> tuple[Path, dict, Path]:
    """-> (deploy folder, its manifest entry, the build's C-simulation library for the fake device)."""
    from accllm.bitstreams.build import find_hls_top, format_versions, manifest_entry, read_compiled
    from accllm.bitstreams.manifest import BitstreamEntry, Manifest, record_build, save_manifest
    from accllm.hls.csim import build_library
    from accllm.host.steps import deploy_folder
    from accllm.sim.boards import get_board

    build, out = Path(build), Path(out)
    c = read_compiled(build)
    entry = manifest_entry(find_hls_top(), get_board(board), c.lanes, c.group, c.dims, 1, *format_versions(),
                           block=c.block)
    recipes = out / "bitstreams"
    for a in entry["artifacts"].values():
        (recipes / a["path"]).parent.mkdir(parents=True, exist_ok=True)
        (recipes / a["path"]).write_bytes(b"not a real bitstream: " + a["path"].encode())
    m = Manifest(bitstreams=[BitstreamEntry.model_validate(entry)])
    record_build(m, entry["name"], recipes)
    save_manifest(m, recipes / "manifest.json")
    deploy = out / "deploy"
    deploy.mkdir(parents=True)
    files, metrics = deploy_folder(deploy, build, build / "checkpoint", board, entry, recipes / "manifest.json")
    if metrics != {"bitstream": entry["name"], "bitstream_built": True} or not all((deploy / f).exists() for f in files):
        raise AssertionError(f"deploy folder incomplete: {files} {metrics}")
    return deploy, entry, build_library(build / "hls")
