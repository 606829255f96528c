"""A build's ``state.json``: per step, the hash of its inputs, its artifact (a path relative to the build
folder, so a copied build folder is self-contained) and the sha256 of every file of that artifact, its metrics
and its cached verification. Written atomically; read with one-line errors naming the file.

    {"steps": {"<step>": {"input_hash": str, "artifact": "compile", "files": {"program.bin": sha256, ...},
                          "artifact_sha256": sha256 of the files map, "metrics": {...}, "seconds": float,
                          "verification": {...}, "verification_key": str}},
     "ran": [steps run last time]}
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from accllm.quant.integrity import atomic_write, file_sha256, hash_files

STATE_FILE = "state.json"
_RECORD_KEYS = {"input_hash": str, "artifact": str, "files": dict, "artifact_sha256": str, "metrics": dict}


def artifact_files(path: Path) -> dict[str, str]:
    """sha256 of each file of an artifact (a folder: every file under it; a file: itself)."""
    return hash_files(path) if path.is_dir() else {path.name: file_sha256(path)}


def files_digest(files: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()


def artifact_path(build_dir: Path, rec: dict) -> Path | None:
    """The artifact of a record inside ``build_dir``; None for a path that leaves it (an absolute path, or a
    state file copied from elsewhere), which makes the step run again."""
    rel = Path(rec["artifact"])
    if rel.is_absolute() or ".." in rel.parts:
        return None
    return build_dir / rel


def intact(build_dir: Path, rec: dict) -> bool:
    """Every file the record lists is there with the recorded sha256 (a deleted, truncated or half-written
    file, or one left by another run, fails)."""
    art = artifact_path(build_dir, rec)
    if art is None or not art.exists() or not rec["files"]:
        return False
    for rel, want in rec["files"].items():
        f = art / rel if art.is_dir() else art
        if not f.is_file() or file_sha256(f) != want:
            return False
    return True


def read_state(build_dir: Path) -> dict:
    path = Path(build_dir) / STATE_FILE
    if not path.exists():
        return {"steps": {}}
    try:
        state = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a build state file ({e}); delete it to rebuild every step") from None
    if not isinstance(state, dict) or not isinstance(state.get("steps"), dict):
        raise ValueError(f"{path}: not a build state file (no 'steps' mapping); delete it to rebuild every step")
    # A record this version cannot check (older layout, edited by hand) is dropped: its step runs again.
    state["steps"] = {name: rec for name, rec in state["steps"].items()
                      if isinstance(rec, dict) and all(isinstance(rec.get(k), t) for k, t in _RECORD_KEYS.items())}
    return state


def write_state(build_dir: Path, state: dict) -> Path:
    return atomic_write(Path(build_dir) / STATE_FILE, json.dumps(state, indent=1))
